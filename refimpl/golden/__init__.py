"""Golden files: one ``.safetensors`` per case with the inputs, every traced intermediate and
the outputs of a forward pass, plus a JSON manifest.

A golden file is an ordinary safetensors file (see ``docs/golden-format.md``):

    inputs.input_ids                                   int64   [batch, seq]
    lilt.embeddings.word_embeddings                    float64 [batch, seq, hidden]
    ...                                                (every intermediate, forward order)
    outputs.logits                                     float64 [batch, seq, num_labels]
    outputs.hidden_states.0 ... outputs.hidden_states.L

Its ``__metadata__`` holds one key, ``refimpl_manifest``: a JSON object with the versions, the
model's config, the sha256 of every weight file, dtype/device, where the inputs came from,
and per tensor (in forward order) its role, shape, dtype, recommended tolerance and which
mask positions a comparison should skip. A port is checked against it with
`refimpl.compare.compare`.

Modules, bottom-up: `format` (names, dtype codes, tolerances), `selection` (``--select``),
`masks` (which positions a comparison skips), `manifest` (building and validating it),
`reader` (`read`, `Golden`, `is_golden_file`), `capture` (a traced forward pass as named tensors), `writer`
(`GoldenWriter`, `write`, `write_case`: the one place that writes a golden file), `grads`
(``write_case(grads=True)``: the gradients of one scalar ``L``, ``grad.*`` and ``upstream.*``).

Typical use:

    model = refimpl.from_pretrained(ckpt, dtype="float64")
    golden.write_case("case.safetensors", model, {"input_ids": ids, "bbox": boxes}, checkpoint=ckpt)
    result = refimpl.compare.compare("case.safetensors", "my_port.safetensors")
    print(result.table()); assert result.ok
"""

from ..files import sha256_file
from .capture import flatten_outputs, prepare_inputs, trace_forward
from .format import DIGEST_KEY, FORMAT, FORMAT_VERSION, MANIFEST_KEY, recommended_tolerance
from .grads import DEFAULT_SEED, GRAD_PREFIX, GRADIENT_TOLERANCE, UPSTREAM_PREFIX, gradient_tolerance
from .manifest import build_manifest, inputs_hash, validate_manifest, weight_entries
from .masks import keep_mask, mask_specs_for
from .reader import Golden, is_golden_file, read
from .selection import PRESETS, SelectionError, check_selection, is_selected, selection_spec, wants_attentions
from .writer import GoldenWriter, write, write_case

__all__ = [
    "DEFAULT_SEED",
    "GRAD_PREFIX",
    "GRADIENT_TOLERANCE",
    "UPSTREAM_PREFIX",
    "gradient_tolerance",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "DIGEST_KEY",
    "Golden",
    "SelectionError",
    "check_selection",
    "is_golden_file",
    "GoldenWriter",
    "PRESETS",
    "selection_spec",
    "is_selected",
    "wants_attentions",
    "validate_manifest",
    "weight_entries",
    "inputs_hash",
    "prepare_inputs",
    "flatten_outputs",
    "trace_forward",
    "recommended_tolerance",
    "mask_specs_for",
    "build_manifest",
    "write",
    "write_case",
    "read",
    "sha256_file",
    "keep_mask",
]
