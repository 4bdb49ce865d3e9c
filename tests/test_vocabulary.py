"""LXMERT's bundled label vocabularies (refimpl/data/lxmert-vocab) and decoding scores to strings.

Expected entries come from the original files, read when they were vendored from
airsplay/lxmert @ 0db1182 (``trainval_ans2label.json``, the inverse map the same repository
ships, gives "yes" 425 / "no" 1403 for VQA and "yes" 1773 / "no" 441 for GQA; ``all_ans.json``
has "yes" at record 9471 and "no" at 5291) and airsplay/py-bottom-up-attention @ 85ec9b7
(``objects_vocab.txt`` line 17 is "stop sign,stopsign", ``attributes_vocab.txt`` line 1
"gray,grey"; 1-based line numbers as ``grep -n`` prints them). The sha256 are the ones
README.md records for the upstream files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re

import numpy as np
import pytest

from refimpl import data
from refimpl.files import CheckpointError
from refimpl.lxmert import LxmertForPreTraining, decode_top, vocabulary
from refimpl.lxmert.labels import VOCABULARIES, VOCABULARY_SIZES, _answers, _gunzip, vocabulary_for

VOCAB_DIR = data.path("lxmert-vocab")


# ------------------------------------------------------------------------------------ provenance
def _provenance_rows() -> list[tuple[str, str]]:
    """(bundled file, sha256 of the original) from README.md's table."""
    rows = []
    with open(os.path.join(VOCAB_DIR, "README.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|\s*$", line)
            if m:
                rows.append((m.group(1), m.group(2)))
    return rows


def test_provenance_table_lists_every_bundled_file():
    listed = {name for name, _ in _provenance_rows()}
    bundled = set(os.listdir(VOCAB_DIR)) - {"README.md"}
    assert listed == bundled


@pytest.mark.parametrize("name,sha", _provenance_rows())
def test_bundled_file_sha256_equals_provenance(name, sha):
    """Each bundled file (all_ans.json decompressed) hashes to the sha256 README.md records."""
    with open(os.path.join(VOCAB_DIR, name), "rb") as f:
        raw = f.read()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert hashlib.sha256(raw).hexdigest() == sha, name


def test_compressed_file_sha256_equals_provenance():
    readme = open(os.path.join(VOCAB_DIR, "README.md"), encoding="utf-8").read()
    m = re.search(r"`lxmert_all_ans\.json\.gz` \(47,214 bytes.*?sha256 `([0-9a-f]{64})`", readme, re.DOTALL)
    assert m is not None
    blob = open(os.path.join(VOCAB_DIR, "lxmert_all_ans.json.gz"), "rb").read()
    assert len(blob) == 47214 and hashlib.sha256(blob).hexdigest() == m.group(1)


def test_package_data_is_small():
    """The vocabularies add well under 200 kB to the package (all_ans.json is stored gzipped)."""
    total = sum(os.path.getsize(os.path.join(VOCAB_DIR, n)) for n in os.listdir(VOCAB_DIR))
    assert total < 200_000


# ------------------------------------------------------------------------------------ vocabularies
@pytest.mark.parametrize(
    "name,size", [("vqa", 3129), ("gqa", 1842), ("pretrain", 9500), ("objects", 1600), ("attributes", 400)]
)
def test_sizes(name, size):
    words = vocabulary(name)
    assert len(words) == size == VOCABULARY_SIZES[name]
    assert all(isinstance(w, str) for w in words)


@pytest.mark.parametrize(
    "name,index,word",
    [
        ("vqa", 0, ""),  # VQA's label 0 is the empty answer
        ("vqa", 1, "woods"),
        ("vqa", 425, "yes"),
        ("vqa", 1403, "no"),
        ("gqa", 0, "cat food"),
        ("gqa", 1773, "yes"),
        ("gqa", 441, "no"),
        ("pretrain", 0, '"stop"'),  # with its quotes, as the file has it
        ("pretrain", 94, "2"),
        ("pretrain", 5291, "no"),
        ("pretrain", 9471, "yes"),
        ("pretrain", 9499, "zucchini"),
        ("objects", 0, "yolk"),
        ("objects", 16, "stop sign"),  # "stop sign,stopsign": the first synonym
        ("objects", 43, "television"),  # "television,tv"
        ("objects", 50, "man"),
        ("objects", 1599, "buoy"),
        ("attributes", 0, "gray"),  # "gray,grey"
        ("attributes", 1, "multi colored"),  # "multi colored,multi-colored,multicolored"
        ("attributes", 4, "red"),
        ("attributes", 399, "leaning"),
    ],
)
def test_known_entries(name, index, word):
    assert vocabulary(name)[index] == word


def test_pretrain_order_is_all_ans_file_order():
    """AnswerTable(None) of the original: label i is record i's "ans" (read here with plain json)."""
    records = json.loads(
        gzip.decompress(open(os.path.join(VOCAB_DIR, "lxmert_all_ans.json.gz"), "rb").read())
    )
    assert vocabulary("pretrain") == [r["ans"] for r in records]
    # every record names only the pre-training QA sets, so --qaSets vqa,gqa,visual7w keeps all 9500
    assert set().union(*(r["dsets"] for r in records)) == {"vqa", "gqa", "visual7w"}
    assert vocabulary("pretrain") == sorted(vocabulary("pretrain"))  # the file is sorted by answer


def test_vqa_gqa_are_the_json_lists():
    for name, file in (("vqa", "vqa_trainval_label2ans.json"), ("gqa", "gqa_trainval_label2ans.json")):
        assert vocabulary(name) == json.load(open(os.path.join(VOCAB_DIR, file), encoding="utf-8"))


def test_objects_attributes_first_synonym_of_each_line():
    """The original demo: ``line.split(',')[0].lower().strip()`` for every line of the file."""
    for name, file in (("objects", "objects_vocab.txt"), ("attributes", "attributes_vocab.txt")):
        with open(os.path.join(VOCAB_DIR, file), encoding="utf-8") as f:
            want = [line.split(",")[0].lower().strip() for line in f.readlines()]
        assert vocabulary(name) == want
        assert len(set(want)) == len(want)  # no two lines share a name


def test_vocabulary_returns_a_fresh_list():
    words = vocabulary("gqa")
    words[0] = "changed"
    assert vocabulary("gqa")[0] == "cat food"


@pytest.mark.parametrize("bad", ["VQA", "answers", "", None, 3])
def test_unknown_vocabulary_lists_allowed(bad):
    with pytest.raises(ValueError) as e:
        vocabulary(bad)
    for name in VOCABULARIES:
        assert repr(name) in str(e.value)


def test_vocabulary_for_sizes():
    assert [vocabulary_for(n) for n in (3129, 1842, 9500)] == ["vqa", "gqa", "pretrain"]
    assert vocabulary_for(1600, "obj") == "objects" and vocabulary_for(400, "attr") == "attributes"
    assert vocabulary_for(1600) is None and vocabulary_for(3129, "obj") is None
    assert vocabulary_for(10) is None
    with pytest.raises(ValueError, match="head="):
        vocabulary_for(3129, "qa")


# ------------------------------------------------------------------------------------ decoding
def test_decode_top_hand_made_scores():
    scores = np.zeros((2, 3129))
    scores[0, 425], scores[0, 1403], scores[0, 841] = 5.0, 3.0, -1.0  # yes, no, "2"
    scores[1, 1403] = 2.5
    got = decode_top(scores, "vqa", k=3)
    assert got[0] == [("yes", 5.0), ("no", 3.0), ("", 0.0)]  # then the first of the zeros: label 0
    assert got[1] == [("no", 2.5), ("", 0.0), ("woods", 0.0)]


def test_decode_top_ties_keep_label_order_and_all_ranks():
    got = decode_top(np.zeros(400), "attributes", k=400)  # one row [n] -> one list of pairs
    assert [w for w, _ in got] == vocabulary("attributes")


def test_decode_top_visual_head_shape():
    rng = np.random.default_rng(0)
    obj = rng.normal(size=(2, 3, 1600)).astype(np.float32)
    got = decode_top(obj, "objects", k=2)
    assert len(got) == 2 and all(len(row) == 3 for row in got)
    words = vocabulary("objects")
    for b in range(2):
        for r in range(3):
            best = int(np.argmax(obj[b, r]))
            assert got[b][r][0] == (words[best], float(obj[b, r, best]))
            assert got[b][r][0][1] >= got[b][r][1][1]


def test_decode_top_width_mismatch_names_both_sizes():
    with pytest.raises(ValueError) as e:
        decode_top(np.zeros((1, 9500)), "vqa")
    assert "9500" in str(e.value) and "3129" in str(e.value)


def test_bundled_tiny_checkpoint_has_no_known_vocabulary():
    """The bundled tiny LXMERT's answer head is 10 wide: decoding it as VQA is refused."""
    model = LxmertForPreTraining.from_pretrained(data.path("lxmert-tiny"))
    assert vocabulary_for(model.config.num_qa_labels) is None
    scores = np.zeros((1, model.config.num_qa_labels))
    with pytest.raises(ValueError, match=r"10 labels.*'vqa' has 3129"):
        decode_top(scores, "vqa")


@pytest.mark.parametrize("k", [0, -1, 3130, 2.0, True, None])
def test_decode_top_bad_k(k):
    with pytest.raises(ValueError, match=r"k=.*\[1, 3129\]"):
        decode_top(np.zeros((1, 3129)), "vqa", k=k)


def test_decode_top_nan_names_position():
    scores = np.zeros((2, 3, 400))
    scores[1, 2, 7] = np.nan
    with pytest.raises(ValueError, match=r"scores\[1, 2, 7\] is NaN"):
        decode_top(scores, "attributes")


def test_decode_top_rank0_and_non_numeric():
    with pytest.raises(ValueError, match="0-d"):
        decode_top(np.float64(1.0), "vqa")
    with pytest.raises(ValueError, match="real numbers"):
        decode_top(np.zeros((1, 400), dtype=complex), "attributes")
    with pytest.raises(ValueError, match="unknown"):
        decode_top(np.zeros((1, 400)), "attrs")


# ------------------------------------------------------------------------------------ reading
def test_gunzip_refuses_damaged_and_oversized():
    good = gzip.compress(b"[1, 2]", mtime=0)
    assert _gunzip(good, "x", 100) == b"[1, 2]"
    with pytest.raises(CheckpointError, match="truncated"):
        _gunzip(good[:-6], "x", 100)
    with pytest.raises(CheckpointError, match="not a readable gzip"):
        _gunzip(b"not gzip at all", "x", 100)
    with pytest.raises(CheckpointError, match="limit of 1000"):
        _gunzip(gzip.compress(b"0" * 100_000), "x", 1000)
    with pytest.raises(CheckpointError, match="after its end"):
        _gunzip(good + b"junk", "x", 100)


def test_answers_refuses_wrong_records():
    assert _answers([{"ans": "a", "dsets": []}], "f") == ["a"]
    with pytest.raises(CheckpointError, match="record 1"):
        _answers([{"ans": "a"}, {"answer": "b"}], "f")
    with pytest.raises(CheckpointError, match="list"):
        _answers({"ans": "a"}, "f")


# ------------------------------------------------------------------------------------ the docs page
DOCS_PAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "lxmert-labels.md"
)


def test_docs_example_runs_and_prints_what_the_page_shows(capsys):
    """docs/lxmert-labels.md's "Example" section: its python block prints its text block."""
    page = open(DOCS_PAGE, encoding="utf-8").read()
    section = page.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (shown,) = re.findall(r"```text\n(.*?)```", section, flags=re.S)
    exec(compile(code, "docs/lxmert-labels.md example", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out == shown


def test_docs_visual_head_recipe_equals_the_oracle():
    """The page's recipe (visual_obj_head on vision_hidden_states[-1]) gives transformers'
    obj_predict_head output on the bundled tiny checkpoint, float64, to 1e-10."""
    torch = pytest.importorskip("torch")
    from transformers import LxmertForPreTraining as HFLxmertForPreTraining

    from refimpl.lxmert import LxmertTokenizer
    from refimpl.lxmert.heads import visual_losses, visual_obj_head

    path = data.path("lxmert-tiny")
    feats = np.load(data.path("example", "feats.npy"))[None]
    boxes = np.load(data.path("example", "boxes.npy"))[None]
    enc = LxmertTokenizer.from_pretrained(path)("what color is the car on the left?", return_tensors="np")
    model = LxmertForPreTraining.from_pretrained(path, dtype="float64")
    out = model(**enc, visual_feats=feats, visual_pos=boxes, output_hidden_states=True)
    ours = visual_obj_head(
        out.vision_hidden_states[-1],
        **model.weights["obj_predict_head"],
        hidden_act=model.config.hidden_act,
        keys=list(visual_losses(model.config)),
    )
    hf = HFLxmertForPreTraining.from_pretrained(path, dtype=torch.float64).eval()
    with torch.no_grad():
        base = hf.lxmert(
            **{k: torch.tensor(v) for k, v in enc.items()},
            visual_feats=torch.tensor(feats, dtype=torch.float64),
            visual_pos=torch.tensor(boxes, dtype=torch.float64),
        )
        want = hf.obj_predict_head(base.vision_output)
    assert sorted(ours) == sorted(want) == ["attr", "feat", "obj"]
    for key in want:
        assert ours[key].shape == tuple(want[key].shape), key
        assert np.abs(ours[key] - want[key].numpy()).max() <= 1e-10, key
