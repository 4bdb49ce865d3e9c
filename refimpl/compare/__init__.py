"""Checking a port against a golden file: ``refimpl compare GOLDEN CANDIDATE``.

What a porter gets:

- **Never a pass on nothing.** The reference must be a golden file (manifest and ``format``
  checked); a candidate that shares no tensor with it fails; coverage is always reported.
- **Name help.** A systematic naming difference (a missing or extra prefix, ``/`` for ``.``,
  a suffix) is detected and reported with the option that fixes it; `NameMap`
  renames candidate tensors without rewriting the dump.
- **Candidate formats, detected by content:** safetensors (with or without a manifest),
  ``.npz``, or a directory of ``.npy`` files (file name = tensor name + ``.npy``).
- **Dtype-aware tolerances** (`dtype_tolerance`) from the candidate tensor's own
  precision, and four pass rules (`RULES`): max-abs, relative, NMSE and cosine.
- **Isolation** (`isolate`): every block whose inputs and output the candidate holds is
  recomputed in float64 from the candidate's own inputs, so a block's local error is told
  apart from the error it inherited; the verdict is ``culprit: <block>`` or accumulated drift.

Modules, bottom-up: `errors`, `rules` (tolerances and the per-tensor check), `candidates`
(reading the reference and the candidate), `names` (matching names and models), `report`
(the results and their text), `check` (`compare`, the plain check) and `isolation`
(`isolate`, on the block lists each family exports: `refimpl.lilt.blocks`,
`refimpl.lxmert.blocks`).

Typical use:

    res = compare.compare("case.safetensors", "my_port.npz")
    print(res.report()); assert res.ok
    iso = compare.isolate("case.safetensors", "my_port.npz", checkpoint="path/to/ckpt")
    print(iso.report())
"""

from .candidates import CANDIDATE_DTYPES, Candidate, read_candidate, read_reference
from .check import compare, prepare
from .errors import CompareError
from .isolation import check_checkpoint, isolate, precision_stat
from .matching import NameMatch, match_names, matchable_names
from .names import NameMap, models_differ, name_hint
from .precision import PRECISION_FACTOR, emulating, exact_dtype, round_to
from .report import EXIT_CODES, BlockRow, CompareResult, IsolationResult
from .rules import RULES, UNIT_ROUNDOFF, CompareRow, dtype_tolerance

__all__ = [
    "RULES",
    "EXIT_CODES",
    "CANDIDATE_DTYPES",
    "PRECISION_FACTOR",
    "NameMatch",
    "match_names",
    "matchable_names",
    "prepare",
    "check_checkpoint",
    "precision_stat",
    "emulating",
    "exact_dtype",
    "round_to",
    "UNIT_ROUNDOFF",
    "CompareError",
    "Candidate",
    "NameMap",
    "CompareRow",
    "CompareResult",
    "BlockRow",
    "IsolationResult",
    "read_reference",
    "read_candidate",
    "dtype_tolerance",
    "name_hint",
    "models_differ",
    "compare",
    "isolate",
]
