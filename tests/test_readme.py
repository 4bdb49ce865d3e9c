"""The README promises exactly two set-up commands; CI must run the second one word for word."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert all("\n" not in c for c in cmds), "each set-up command is one line"
    assert "refimpl demo" in cmds[0]
    assert "torch==2.13.0" in cmds[1] and "pytest" in cmds[1]
    # the CPU build of torch is installed before anything that depends on torch
    assert cmds[1].index("torch==2.13.0") < cmds[1].index(".[test")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _readme_commands()[1] in ci


def _python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return block


def test_readme_gradients_example_equals_torch_autograd():
    """The README's gradient snippet, run after its LiLT example, gives torch's gradient of the
    same loss on the same bundled checkpoint (the oracle: transformers 4.56.2 autograd)."""
    import numpy as np
    import torch
    from transformers import LiltForTokenClassification

    ns = {"__name__": "__readme__"}
    exec(compile(_python_block("Example: LiLT"), "README LiLT", "exec"), ns)
    exec(compile(_python_block("Gradients"), "README gradients", "exec"), ns)
    enc, grads = ns["enc"], ns["grads"]

    ref = LiltForTokenClassification.from_pretrained(ns["ckpt"]).double().eval()
    out = ref(
        input_ids=torch.from_numpy(enc["input_ids"]),
        bbox=torch.from_numpy(enc["bbox"]),
        attention_mask=torch.from_numpy(enc["attention_mask"]),
        labels=torch.from_numpy(ns["labels"]),
    )
    out.loss.backward()
    want = ref.classifier.weight.grad.numpy()
    got = np.asarray(grads.params["classifier.weight"])
    assert abs(float(grads.loss) - out.loss.item()) <= 1e-12
    assert np.max(np.abs(got - want)) <= 1e-10 * max(1.0, np.max(np.abs(want)))
    word = ref.lilt.embeddings.word_embeddings.weight.grad.numpy()
    got_word = np.asarray(grads.params["lilt.embeddings.word_embeddings.weight"])
    assert np.max(np.abs(got_word - word)) <= 1e-10 * max(1.0, np.max(np.abs(word)))
