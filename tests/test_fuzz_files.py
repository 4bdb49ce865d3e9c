"""Bounded mutation fuzz of the file readers (issue 15).

Valid files (a safetensors file written by the safetensors library, zip ``.bin`` written by
torch.save as it is and re-deflated, a legacy ``.bin``, a ``config.json``) are mutated by
byte flips, truncation, header-JSON edits and zip-entry edits. Every outcome must be either
success with valid data or ``refimpl.CheckpointError`` / ``OSError``; anything else (a
TypeError, a RecursionError, a MemoryError, a hang) fails the test. Hypothesis runs
derandomized with a fixed budget (``EXAMPLES`` per file kind); crashes it found are kept as
named regression tests in ``test_hostile.py``.
"""

from __future__ import annotations

import collections
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from _hostile import patch_member, rezip, torch_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

import refimpl
from refimpl import checkpoints as W
from refimpl.checkpoints import raw
from refimpl.config import load_config

CheckpointError = refimpl.CheckpointError
EXAMPLES = int(os.environ.get("REFIMPL_FUZZ_EXAMPLES", "1000"))  # per file kind: ~60 s in all on 2 cores
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
#: outcome counts per file kind, printed at the end (``pytest -s``) for the record
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
LILT_TINY = os.path.join(os.path.dirname(refimpl.__file__), "data", "lilt-tiny")


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "t": base.t(),
        "row": base[1],
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.arange(6),
        "b": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
    }


def _seeds() -> dict[str, bytes]:
    t = _tensors()
    return {
        "safetensors": st_save({k: v.float().contiguous().numpy() for k, v in t.items() if k != "bf16"}),
        "zip-bin": torch_bytes(t),
        "deflated-bin": rezip(torch_bytes(t)),
        "legacy-bin": torch_bytes(t, zip_format=False),
        "config": open(os.path.join(LILT_TINY, "config.json"), "rb").read(),
    }


SEEDS = _seeds()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["F32", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "__metadata__"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=8,
)


@st.composite
def byte_edits(draw, data: bytes) -> bytes:
    """Up to 8 flipped/overwritten bytes, then maybe a truncation."""
    b = bytearray(data)
    for _ in range(draw(st.integers(0, 8)) if b else 0):
        i = draw(st.integers(0, len(b) - 1))
        b[i] = draw(
            st.sampled_from([b[i] ^ (1 << draw(st.integers(0, 7))), 0, 0xFF, draw(st.integers(0, 255))])
        )
    if draw(st.booleans()) and draw(st.booleans()):
        b = b[: draw(st.integers(0, len(b)))]
    return bytes(b)


@st.composite
def safetensors_edits(draw) -> bytes:
    data = SEEDS["safetensors"]
    if draw(st.booleans()):
        return draw(byte_edits(data))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = draw(st.sampled_from(sorted(header)))
    if name != "__metadata__" and draw(st.booleans()):
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][field] = draw(json_values)
    elif draw(st.booleans()):
        header[name] = draw(json_values)
    else:
        header[draw(st.text(max_size=6))] = draw(json_values)
    h = json.dumps(header).encode()
    if draw(st.booleans()):
        h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + data[8 + n :]


@st.composite
def zip_edits(draw, kind: str) -> bytes:
    data = SEEDS[kind]
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(byte_edits(data))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
    member = draw(st.sampled_from(names))
    if choice == 1:
        return patch_member(
            data,
            member,
            file_size=draw(st.none() | st.integers(0, 2**32 - 1)),
            method=draw(st.none() | st.sampled_from([0, 8, 9, 12, 14, 99])),
            flags=draw(st.none() | st.sampled_from([0, 1, 8, 0x41, 0x800])),
        )
    # replace a member's content (stored or deflated, as torch or a zip tool would write it)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        content = z.read(member)
    return rezip(
        data,
        draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])),
        replace={member: draw(byte_edits(content))},
    )


@st.composite
def config_edits(draw) -> bytes:
    data = SEEDS["config"]
    if draw(st.booleans()):
        return draw(byte_edits(data))
    cfg = json.loads(data)
    key = draw(st.sampled_from(sorted(cfg) + ["num_labels", "validate", "layer_norm_eps", "time_step_limit"]))
    cfg[key] = draw(json_values)
    return json.dumps(cfg, allow_nan=True).encode()


def _check_state(state: dict, size: int) -> None:
    """A successful load: names -> arrays of bounded total size."""
    assert isinstance(state, dict)
    total = 0
    for k, v in state.items():
        assert isinstance(k, str) and isinstance(v, W.RawTensor), (k, type(v))
        assert isinstance(v.array, np.ndarray) and v.dtype in raw._CODES
        total += v.array.nbytes
    assert total <= size + len(state) * refimpl.files.MAX_VIEW_EXPANSION


def _outcome(kind: str, fn) -> object:
    try:
        result = fn()
    except CheckpointError:
        OUTCOMES[kind]["CheckpointError"] += 1
        return None
    except OSError:
        OUTCOMES[kind]["OSError"] += 1
        return None
    OUTCOMES[kind]["success"] += 1
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    yield d
    print("\nfuzz outcomes:", {k: dict(v) for k, v in sorted(OUTCOMES.items())})


def _weights_case(kind: str, data: bytes, workdir) -> None:
    path = workdir / ("model.safetensors" if kind == "safetensors" else "pytorch_model.bin")
    path.write_bytes(data)
    state = _outcome(kind, lambda: W.load_raw_state_dict(path))
    if state is not None:
        _check_state(state, len(data))


@FUZZ
@given(data=safetensors_edits())
def test_fuzz_safetensors(workdir, data):
    _weights_case("safetensors", data, workdir)


@pytest.mark.parametrize("kind", ["zip-bin", "deflated-bin"])
@FUZZ
@given(st.data())
def test_fuzz_zip_bin(workdir, kind, data):
    _weights_case(kind, data.draw(zip_edits(kind)), workdir)


@FUZZ
@given(data=st.data())
def test_fuzz_legacy_bin(workdir, data):
    _weights_case("legacy-bin", data.draw(byte_edits(SEEDS["legacy-bin"])), workdir)


@FUZZ
@given(data=config_edits())
def test_fuzz_config(workdir, data):
    (workdir / "config.json").write_bytes(data)
    cfg = _outcome("config", lambda: load_config(workdir))
    if cfg is not None:
        cfg.validate()  # a config that loaded is a valid one
        assert cfg.num_labels <= refimpl.config.MAX_NUM_LABELS


def test_fuzz_seeds_load_as_their_writers_wrote_them(tmp_path):
    # the unmutated seeds load, and equal what torch / safetensors wrote
    t = _tensors()
    for kind in ("zip-bin", "deflated-bin", "legacy-bin"):
        (tmp_path / "x.bin").write_bytes(SEEDS[kind])
        sd = W.read_state_dict(tmp_path / "x.bin")
        for k, v in t.items():
            np.testing.assert_array_equal(
                sd[k], v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            )
    (tmp_path / "x.safetensors").write_bytes(SEEDS["safetensors"])
    assert sorted(W.read_state_dict(tmp_path / "x.safetensors")) == sorted(k for k in t if k != "bf16")
