"""Checkpoint reading: bit-exact against torch / safetensors, safe against malicious pickles,
loud on corrupt files, strict on keys. Expected values come from torch.load / safetensors."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import mmap
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from _oracle import build, save
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file
from transformers import LiltConfig, LiltForTokenClassification, LxmertConfig, LxmertForPreTraining

from refimpl import checkpoints as W
from refimpl.checkpoints import CheckpointError, UnsafeCheckpointError, loading, pytorch

LILT_TINY = dict(
    vocab_size=50, hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
    max_position_embeddings=40, max_2d_position_embeddings=64, num_labels=3, pad_token_id=1,
)  # fmt: skip
LXMERT_TINY = dict(
    vocab_size=50, hidden_size=24, num_attention_heads=2, intermediate_size=16, max_position_embeddings=40,
    l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=8, num_qa_labels=5, num_object_labels=7, num_attr_labels=3,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def bits(a: np.ndarray) -> np.ndarray:
    """The raw bytes of an array as unsigned ints, so NaN payloads, -0.0 and inf compare exactly."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def tbytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes in C order."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def torch_ref(t: torch.Tensor) -> np.ndarray:
    """What a tensor should load as with ``dtype=None``: its values, bfloat16 widened by torch."""
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def assert_same(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != {theirs.dtype}"
    assert np.array_equal(bits(ours), bits(theirs)), f"{name}: values differ"


def special_state_dict() -> collections.OrderedDict:
    """Tensors of every supported dtype, with views, offsets, strides and a shared storage."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 12, generator=g, dtype=torch.float64)
    base[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=torch.float64)
    sd = collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g),
        transposed=base.t(),
        strided=base[2:5, 1::3],
        row_of_shared=base[4],  # shares base's storage with the two above
        expanded=torch.randn(3, 1, generator=g).expand(3, 4),  # stride 0
        f16=torch.randn(5, generator=g).half(),
        bf16=(torch.randn(6, 2, generator=g) * 1e3).bfloat16(),
        bf16_special=torch.tensor([float("nan"), float("inf"), -0.0, 1e-40], dtype=torch.bfloat16),
        i64=torch.arange(7),
        i32=torch.arange(-3, 3, dtype=torch.int32),
        i16=torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
        i8=torch.tensor([-128, 127], dtype=torch.int8),
        u8=torch.tensor([0, 255], dtype=torch.uint8),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    )
    sd._metadata = {"": {"version": 1}}  # as module.state_dict() carries
    return sd


# ---------------------------------------------------------------------------------------------
# torch.save formats
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_is_read_bit_for_bit(tmp_path, zip_format):
    sd = special_state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    ref = torch.load(path, weights_only=True)
    ours = W.load_state_dict(path, dtype=None)
    assert list(ours) == list(ref)
    assert all(a.flags.aligned for a in ours.values())  # legacy storages sit at odd offsets: copied
    for k, t in ref.items():
        assert_same(k, ours[k], torch_ref(t))
    assert all(np.array_equal(bits(ours[k]), bits(v)) for k, v in W.read_state_dict(path).items())
    raw = W.load_raw_state_dict(path)
    assert raw["bf16"].dtype == "BF16" and raw["f16"].dtype == "F16" and raw["i8"].dtype == "I8"
    assert_same("bf16 bits", raw["bf16"].array, ref["bf16"].view(torch.int16).numpy().view(np.uint16))
    # float dtypes cast to the request, integers and bools keep theirs
    for dtype in (np.float32, np.float64):
        cast = W.load_state_dict(path, dtype=dtype)
        for k, t in ref.items():
            want = (
                t.detach().to(torch.float64 if dtype == np.float64 else torch.float32)
                if t.is_floating_point()
                else t
            )
            assert_same(f"{k} as {np.dtype(dtype)}", cast[k], want.numpy())


def test_new_unsigned_dtypes_use_rebuild_tensor_v3(tmp_path):
    path = tmp_path / "u.bin"
    t = torch.tensor([1, 2, 65535], dtype=torch.uint16)
    torch.save({"u16": t, "u32": torch.tensor([7, 2**32 - 1], dtype=torch.uint32)}, path)
    assert b"_rebuild_tensor_v3" in zipfile.ZipFile(path).read("u/data.pkl")
    ours = W.load_state_dict(path)
    assert_same("u16", ours["u16"], np.array([1, 2, 65535], np.uint16))
    assert_same("u32", ours["u32"], np.array([7, 2**32 - 1], np.uint32))


@pytest.mark.parametrize(
    "make, rebuilder",
    [
        (lambda t: torch.nn.Parameter(t), "_rebuild_parameter_with_state"),
        (lambda t: t, "_rebuild_from_type_v2"),
    ],
    ids=["parameter", "tensor"],
)
def test_tensors_carrying_python_state_load(tmp_path, make, rebuilder):
    t = make(torch.arange(6.0).reshape(2, 3))
    t.note = "python state"  # makes torch pickle it through another rebuild function
    path = tmp_path / "p.bin"
    torch.save({"p": t}, path)
    assert rebuilder.encode() in zipfile.ZipFile(path).read("p/data.pkl")
    assert_same("p", W.load_state_dict(path)["p"], np.arange(6.0, dtype=np.float32).reshape(2, 3))


@settings(max_examples=10)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    zip_format=st.booleans(),
)
def test_any_view_of_a_storage_is_rebuilt_like_torch(tmp_path_factory, shape, data, zip_format):
    full = torch.arange(int(np.prod(shape)) * 2, dtype=torch.float32).reshape(*shape[:-1], shape[-1] * 2)
    perm = data.draw(st.permutations(range(len(shape))))
    view = full[..., data.draw(st.integers(0, shape[-1])) :: 2].permute(*perm)
    path = tmp_path_factory.mktemp("views") / "v.bin"
    torch.save({"v": view, "full": full}, path, _use_new_zipfile_serialization=zip_format)
    ref = torch.load(path, weights_only=True)
    ours = W.load_state_dict(path)
    assert_same("v", ours["v"], ref["v"].numpy())
    assert_same("full", ours["full"], ref["full"].numpy())


# ---------------------------------------------------------------------------------------------
# save_pretrained checkpoints of the oracle's classes
# ---------------------------------------------------------------------------------------------
def _reference(directory) -> dict[str, torch.Tensor]:
    """The tensors transformers wrote, read back with torch / safetensors."""
    st_file = os.path.join(directory, "model.safetensors")
    if os.path.exists(st_file):
        return torch_load_file(st_file)
    return torch.load(os.path.join(directory, "pytorch_model.bin"), weights_only=True)


@pytest.fixture(scope="module")
def oracle_models():
    lilt = build(LiltForTokenClassification, LiltConfig(**LILT_TINY), seed=1)
    lxmert = build(LxmertForPreTraining, LxmertConfig(**LXMERT_TINY), seed=2)
    return {"lilt": lilt, "lxmert": lxmert}


@pytest.mark.parametrize("family", ["lilt", "lxmert"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("torch_dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_save_pretrained_checkpoints_load_exactly(tmp_path, oracle_models, family, safe, torch_dtype):
    model = oracle_models[family].to(torch_dtype)
    save(model, tmp_path, safe=safe)
    ref = _reference(tmp_path)
    assert ref, "the oracle wrote no tensors"
    ours = W.load_state_dict(tmp_path, dtype=None)
    assert set(ours) == set(ref)
    for k, t in ref.items():
        assert_same(k, ours[k], torch_ref(t))
    # upcast to float64: exactly torch's own widening
    ours64 = W.load_state_dict(tmp_path, dtype=np.float64)
    for k, t in ref.items():
        assert_same(k, ours64[k], t.double().numpy() if t.is_floating_point() else t.numpy())


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_checkpoints_read_each_shard_once(tmp_path, oracle_models, monkeypatch, safe):
    model = oracle_models["lxmert"].to(torch.float32)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=safe, max_shard_size="20KB")
    model.save_pretrained(tmp_path / "whole", safe_serialization=safe)
    index = (
        tmp_path / "sharded" / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    )
    shards = set(json.loads(index.read_text())["weight_map"].values())
    assert len(shards) > 2
    calls: list[str] = []
    real = loading._read_file
    monkeypatch.setattr(loading, "_read_file", lambda p: calls.append(os.path.basename(p)) or real(p))
    ours = W.load_state_dict(tmp_path / "sharded")
    assert sorted(calls) == sorted(shards)
    assert W.weight_files(tmp_path / "sharded")[0] == str(index)
    whole = W.load_state_dict(tmp_path / "whole")
    assert set(ours) == set(whole)
    for k in whole:
        assert_same(k, ours[k], whole[k])


def test_shard_lacking_a_key_named_in_its_index_is_an_error(tmp_path):
    np_save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "s1.safetensors"))
    index = {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"s1\.safetensors.*lacks.*\bb\b"):
        W.load_state_dict(tmp_path)
    index["weight_map"]["b"] = "../elsewhere.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="same directory"):
        W.load_state_dict(tmp_path)


# ---------------------------------------------------------------------------------------------
# directory resolution
# ---------------------------------------------------------------------------------------------
def test_directory_prefers_safetensors_and_names_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        W.load_state_dict(tmp_path)
    for name in W.WEIGHT_FILES:
        assert name in str(e.value)
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert W.weight_files(tmp_path) == [str(tmp_path / "pytorch_model.bin")]
    np_save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    assert W.weight_files(tmp_path) == [str(tmp_path / "model.safetensors")]
    assert_same("w", W.load_state_dict(tmp_path)["w"], np.zeros(2, np.float32))
    with pytest.raises(FileNotFoundError, match="nope"):
        W.load_state_dict(tmp_path / "nope")


def test_dtype_argument_must_be_a_float_dtype(tmp_path):
    np_save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="dtype"):
        W.load_state_dict(tmp_path, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# zero-copy memory mapping
# ---------------------------------------------------------------------------------------------
def _base_chain(a):
    """The array, its bases, and the object a memoryview base exposes."""
    while a is not None:
        yield a
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)


def test_safetensors_float32_is_a_read_only_view_of_the_mapped_file(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    np_save_file({"w": w, "b": w[0].copy()}, str(tmp_path / "model.safetensors"))
    arr = W.load_state_dict(tmp_path, dtype=np.float32)["w"]
    assert_same("w", arr, w)
    assert not arr.flags.owndata and not arr.flags.writeable
    maps = [b for b in _base_chain(arr) if isinstance(b, mmap.mmap)]
    assert maps, "the array is not backed by a memory map"
    assert np.shares_memory(arr, np.frombuffer(maps[0], dtype=np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        arr[0, 0] = 1.0
    # a cast is a private, writeable copy
    arr64 = W.load_state_dict(tmp_path, dtype=np.float64)["w"]
    assert arr64.flags.owndata and arr64.flags.writeable and arr64.dtype == np.float64


def test_zip_bin_contiguous_tensors_are_mapped_too(tmp_path):
    torch.save({"w": torch.ones(16, 16)}, tmp_path / "pytorch_model.bin")
    arr = W.load_state_dict(tmp_path)["w"]
    assert not arr.flags.writeable and any(isinstance(b, mmap.mmap) for b in _base_chain(arr))


# ---------------------------------------------------------------------------------------------
# malicious pickles
# ---------------------------------------------------------------------------------------------
class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint would do on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_running_a_command_is_refused_before_it_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save(
        {"w": torch.ones(2), "evil": _Reduce(os.system, f"touch {marker}")},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpointError) as e:
        W.load_state_dict(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and re.search(r"(posix|os)\.system", msg), msg
    assert not marker.exists()
    # control: an unrestricted load really would have run the command
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_pickle_calling_eval_and_load_from_bytes_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        "builtins.eval": _Reduce(eval, f"open({str(marker)!r}, 'w').close()"),
        "torch.storage._load_from_bytes": _Reduce(torch.storage._load_from_bytes, b"not even read"),
    }
    for name, obj in cases.items():
        path = tmp_path / "x.bin"
        torch.save({"w": torch.ones(1), "x": obj}, path)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(name)):
            W.load_state_dict(path)
        assert not marker.exists()


def test_disallowed_global_hidden_deep_inside_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    import subprocess

    hidden = collections.OrderedDict(a=torch.ones(3), b=torch.zeros(2))
    # A tensor whose backward-hooks dict carries a call; it sits after the legitimate ones.
    hidden["c"] = _Reduce(
        torch._utils._rebuild_tensor_v2,
        torch.ones(1).untyped_storage(),
        0,
        (1,),
        (1,),
        False,
        collections.OrderedDict(hook=_Reduce(subprocess.call, ["touch", str(marker)])),
    )
    path = tmp_path / "x.bin"
    buf = io.BytesIO()
    torch.save(hidden, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError, match=r"subprocess\.call") as e:
        W.load_state_dict(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_raw_pickle_with_a_global_is_refused_at_find_class(tmp_path):
    # Hand-written protocol-0 pickle in the legacy layout: GLOBAL 'builtins exec' then REDUCE.
    path = tmp_path / "legacy.bin"
    with open(path, "wb") as f:
        pickle.dump(pytorch._TORCH_MAGIC, f, protocol=2)
        pickle.dump(pytorch._TORCH_PROTOCOL, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(b"cbuiltins\nexec\n(Vopen('" + str(tmp_path / "pwned").encode() + b"','w')\ntR.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec"):
        W.load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# corrupt and truncated files
# ---------------------------------------------------------------------------------------------
def _st_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


SAFETENSORS_CORRUPTIONS = {
    "too short": (b"\x01\x02", "truncated"),
    "garbage header": (len(b"not json!").to_bytes(8, "little") + b"not json!", "JSON"),
    "header length beyond file": ((10**6).to_bytes(8, "little") + b"{}", "past the end"),
    "offsets beyond file": (
        _st_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        "outside",
    ),
    "shape disagrees with bytes": (
        _st_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16),
        "shape",
    ),
    "unknown dtype": (
        _st_bytes({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        "F8",
    ),
    "negative dimension": (
        _st_bytes({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0"),
        "non-negative",
    ),
    "overlapping tensors": (
        _st_bytes(
            {
                "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
            },
            b"\0" * 3,
        ),
        "overlaps",
    ),
    "trailing bytes": (
        _st_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0\0"),
        "after",
    ),
    "header not an object": (_st_bytes([1, 2], b""), "object"),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CORRUPTIONS))
def test_corrupt_safetensors_raise_naming_the_file(tmp_path, case):
    content, message = SAFETENSORS_CORRUPTIONS[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
        W.load_state_dict(tmp_path)


def test_truncated_safetensors_made_by_the_library(tmp_path):
    np_save_file({"w": np.ones((8, 8), np.float32)}, str(tmp_path / "model.safetensors"))
    full = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(full[:-10])
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "model.safetensors"))):
        W.load_state_dict(tmp_path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.999])
def test_truncated_bin_raises_naming_the_file(tmp_path, zip_format, keep):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(64, 64), "b": torch.ones(3)}, path, _use_new_zipfile_serialization=zip_format)
    full = path.read_bytes()
    path.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        W.load_state_dict(path)


def test_garbage_bin_raises_naming_the_file(tmp_path):
    for content in (b"", b"hello world", b"\x80\x02garbage", b"PK\x03\x04junk"):
        path = tmp_path / "pytorch_model.bin"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            W.load_state_dict(path)


def test_bin_storage_geometry_outside_the_storage_is_refused(tmp_path):
    # size x stride reaching past the storage: as_strided would read foreign memory.
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.ones(4).untyped_storage(), dtype=torch.float32, _internal=True
    )
    bad = _Reduce(torch._utils._rebuild_tensor_v2, typed, 2, (3,), (1,), False, collections.OrderedDict())
    path = tmp_path / "x.bin"
    torch.save({"w": bad}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*reach element 4"):
        W.load_state_dict(path)


def test_bin_holding_something_other_than_tensors_is_refused(tmp_path):
    path = tmp_path / "x.bin"
    torch.save({"w": torch.ones(1), "step": 3}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*'step'"):
        W.load_state_dict(path)


# ---------------------------------------------------------------------------------------------
# conversion and hashing
# ---------------------------------------------------------------------------------------------
def test_convert_bin_to_safetensors_keeps_dtypes_and_bits(tmp_path):
    sd = special_state_dict()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    out = tmp_path / "model.safetensors"
    assert W.convert_bin_to_safetensors(tmp_path, out) == str(out)
    back = torch_load_file(str(out))  # the safetensors library reads what we wrote
    for k, t in sd.items():
        t = t.detach()
        assert back[k].dtype == t.dtype, k
        assert back[k].shape == t.shape, k
        assert torch.equal(tbytes(back[k]), tbytes(t)), k
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(n))["__metadata__"] == {"format": "pt"}
    with pytest.raises(ValueError, match="overwrite"):
        W.convert_bin_to_safetensors(tmp_path / "pytorch_model.bin", tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        W.convert_bin_to_safetensors(tmp_path, tmp_path / "again.safetensors")


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(1).bytes(3 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert W.sha256_file(tmp_path / "f", chunk_size=1000) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# strict key matching
# ---------------------------------------------------------------------------------------------
EXPECTED = {"lilt.a.weight": (2, 3), "lilt.b.weight": (4,), "classifier.weight": (3, 2)}


def test_missing_unexpected_and_misshaped_keys_are_reported_together():
    state = {
        "lilt.a.weight": np.zeros((2, 2)),
        "classifier.weight": np.zeros((3, 2)),
        "lilt.extra": np.zeros(1),
    }
    with pytest.raises(CheckpointError) as e:
        W.match_state_dict(state, EXPECTED, prefix="lilt", source="/ckpt")
    msg = str(e.value)
    assert "/ckpt" in msg
    assert "missing (1):\n    lilt.b.weight" in msg
    assert "unexpected (1):\n    lilt.extra" in msg
    assert "lilt.a.weight: checkpoint (2, 2) != model (2, 3)" in msg


def test_prefixed_and_unprefixed_checkpoints_both_load():
    base_expected = {"a.weight": (2, 3), "b.weight": (4,)}
    head_ckpt = {
        "lilt.a.weight": np.ones((2, 3)),
        "lilt.b.weight": np.ones(4),
        "classifier.weight": np.ones((3, 2)),
    }
    base_ckpt = {"a.weight": np.ones((2, 3)), "b.weight": np.ones(4)}
    # base model from a head checkpoint: prefix removed, head weights ignored
    got = W.match_state_dict(head_ckpt, base_expected, prefix="lilt", is_base_model=True)
    assert set(got) == set(base_expected) and got["a.weight"] is head_ckpt["lilt.a.weight"]
    # base model from a base checkpoint
    assert set(W.match_state_dict(base_ckpt, base_expected, prefix="lilt", is_base_model=True)) == set(
        base_expected
    )
    # head model from a base checkpoint: prefix added, the head is missing
    with pytest.raises(CheckpointError, match=r"missing \(1\):\n    classifier\.weight"):
        W.match_state_dict(base_ckpt, EXPECTED, prefix="lilt")
    got = W.match_state_dict({**base_ckpt, "classifier.weight": np.ones((3, 2))}, EXPECTED, prefix="lilt")
    assert set(got) == set(EXPECTED)


def test_tied_keys_are_filled_from_their_source_and_reported_when_both_absent():
    expected = {"emb.weight": (5, 2), "decoder.weight": (5, 2)}
    tied = {"decoder.weight": "emb.weight"}
    emb = np.arange(10.0).reshape(5, 2)
    got = W.match_state_dict({"emb.weight": emb}, expected, tied=tied)
    assert got["decoder.weight"] is emb
    # a stored tied copy loses to its source, as the oracle re-ties after loading
    got = W.match_state_dict({"emb.weight": emb, "decoder.weight": np.zeros((5, 2))}, expected, tied=tied)
    assert got["decoder.weight"] is emb
    with pytest.raises(CheckpointError) as e:
        W.match_state_dict({}, expected, tied=tied)
    assert "emb.weight" in str(e.value) and "decoder.weight" in str(e.value)


def test_ignored_unexpected_keys():
    expected = {"a.weight": (1,)}
    got = W.match_state_dict(
        {"a.weight": np.ones(1), "a.position_ids": np.ones(1)},
        expected,
        ignored_unexpected=(r"position_ids$",),
    )
    assert set(got) == {"a.weight"}


def test_subtree_strips_the_prefix():
    p = {"lilt.pooler.dense.weight": 1, "lilt.pooler.dense.bias": 2, "lilt.poolerx": 3}
    assert W.subtree(p, "lilt.pooler") == {"dense.weight": 1, "dense.bias": 2}


def test_legacy_storage_views_are_resolved_against_their_root(tmp_path):
    """Old torch wrote storage views: (view_key, offset, size) into a root storage. Hand-built file:
    root = arange(10) float32, view = root[2:7], tensor = view[1:4] -> [3, 4, 5]."""

    class StorageRef:
        def __init__(self, view):
            self.view = view

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                return ("storage", torch.FloatStorage, "root", "cpu", 10, obj.view)
            return None

    tensor = _Reduce(
        torch._utils._rebuild_tensor_v2,
        StorageRef(("v1", 2, 5)),
        1,
        (3,),
        (1,),
        False,
        collections.OrderedDict(),
    )
    path = tmp_path / "old.bin"
    with open(path, "wb") as f:
        for obj in (pytorch._TORCH_MAGIC, pytorch._TORCH_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        LegacyPickler(f, protocol=2).dump({"t": tensor})
        pickle.dump(["root"], f, protocol=2)
        f.write((10).to_bytes(8, "little") + np.arange(10, dtype="<f4").tobytes())
    assert_same("t", W.load_state_dict(path)["t"], np.array([3.0, 4.0, 5.0], np.float32))
