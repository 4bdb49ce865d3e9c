"""Hostile and broken files (issue 15): every case the issue measured is a named test here.

Each file ends in the documented error, ``refimpl.CheckpointError`` (or ``OSError`` for a
genuine I/O failure), naming the file and, where there is one, the tensor or field; memory
stays bounded; nothing blocks; and no file changes the loader for the next one. Valid files
come from torch.save / the safetensors library / json; the hostile ones are those bytes
edited by the builders in ``_hostile.py``."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from _hostile import Reduce, build_pickle_bytes, patch_member, rezip, st_bytes, torch_bytes, zip_with_pickle

import refimpl
from refimpl import checkpoints as W
from refimpl import files as F
from refimpl.checkpoints import unpickle
from refimpl.cli import main
from refimpl.config import ConfigError, LiltConfig, load_config

CheckpointError = refimpl.CheckpointError
LILT_TINY = os.path.join(os.path.dirname(refimpl.__file__), "data", "lilt-tiny")


@contextmanager
def must_not_block(seconds: int = 10):
    """Fail (instead of hanging the suite) when the body blocks, e.g. on a FIFO."""

    def _alarm(signum, frame):
        raise AssertionError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def copy_ckpt(
    tmp_path, weights: bytes | None = None, name: str = "model.safetensors", config: dict | None = None
):
    """The bundled lilt-tiny checkpoint, with its weights or config replaced."""
    d = tmp_path / "ckpt"
    shutil.copytree(LILT_TINY, d)
    if weights is not None:
        (d / "model.safetensors").unlink()
        (d / name).write_bytes(weights)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return d


def tiny_config() -> dict:
    with open(os.path.join(LILT_TINY, "config.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# loader state poisoned
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "state",
    [(None, {"__defaults__": (None, None)}), {"__defaults__": (None, None)}, {"__kwdefaults__": {"x": 1}}],
    ids=["slotstate", "dict-state", "kwdefaults"],
)
def test_build_on_an_allowed_global_is_refused_and_the_next_load_still_works(tmp_path, state):
    before = unpickle._rebuild_tensor_v2.__defaults__
    hostile = tmp_path / "hostile.bin"
    hostile.write_bytes(zip_with_pickle(build_pickle_bytes("torch._utils", "_rebuild_tensor_v2", state)))
    with pytest.raises(CheckpointError, match=re.escape(str(hostile)) + ".*BUILD"):
        W.load_state_dict(hostile)
    assert unpickle._rebuild_tensor_v2.__defaults__ == before
    valid = tmp_path / "valid.bin"
    valid.write_bytes(torch_bytes({"w": torch.arange(6.0).reshape(2, 3)}))
    np.testing.assert_array_equal(
        W.load_state_dict(valid)["w"], np.arange(6.0, dtype=np.float32).reshape(2, 3)
    )


@pytest.mark.parametrize(
    "target", [("collections", "OrderedDict"), ("_codecs", "encode"), ("torch", "FloatStorage")]
)
def test_build_on_any_allowed_global_is_refused(tmp_path, target):
    hostile = tmp_path / "hostile.bin"
    hostile.write_bytes(zip_with_pickle(build_pickle_bytes(*target, {"x": 1})))
    with pytest.raises(CheckpointError, match=re.escape(str(hostile))):
        W.load_state_dict(hostile)
    valid = tmp_path / "valid.bin"
    valid.write_bytes(torch_bytes(collections.OrderedDict(w=torch.ones(2))))
    assert W.load_state_dict(valid)["w"].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# memory and hangs
# ---------------------------------------------------------------------------------------------
def zip_bomb() -> bytes:
    """A valid torch zip, re-deflated, whose storage member then declares 4 GiB - 1."""
    good = rezip(torch_bytes({"w": torch.zeros(4096)}))
    return patch_member(good, "data/0", file_size=0xFFFFFFFF)


def test_zip_bomb_member_is_refused_before_inflating(tmp_path, capsys):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(zip_bomb())
    assert path.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*data/0.*ratio"):
        W.load_state_dict(path)
    ckpt = copy_ckpt(tmp_path, zip_bomb(), "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="zip bomb"):
        refimpl.from_pretrained(ckpt)
    rc, err = cli(capsys, "inspect", ckpt)
    assert rc == 2 and "zip bomb" in err, err
    rc, err = cli(capsys, "convert", path, tmp_path / "out.safetensors")
    assert rc == 2 and "zip bomb" in err, err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_valid_deflated_bin_still_loads(tmp_path):
    # control for the bomb: the same archive re-deflated but honest loads bit for bit
    t = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "x.bin"
    path.write_bytes(rezip(torch_bytes({"w": t, "z": torch.zeros(5000)})))
    sd = W.load_state_dict(path)
    np.testing.assert_array_equal(sd["w"], t.numpy())
    assert not sd["z"].any() and sd["z"].shape == (5000,)


def test_deflated_member_inflating_past_its_declared_size_is_cut_at_the_declared_size(tmp_path):
    good = rezip(torch_bytes({"w": torch.ones(64)}))
    path = tmp_path / "x.bin"
    path.write_bytes(patch_member(good, "data/0", file_size=16))  # inflates to 256, declares 16
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        W.load_state_dict(path)


def test_stride0_tensor_of_2_33_elements_is_refused_not_copied(tmp_path):
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.ones(1).untyped_storage(), dtype=torch.float32, _internal=True
    )
    big = Reduce(torch._utils._rebuild_tensor_v2, typed, 0, (2**33,), (0,), False, collections.OrderedDict())
    path = tmp_path / "x.bin"
    torch.save({"w": big}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*'w'.*expand"):
        W.load_state_dict(path)


def test_small_stride0_views_still_load_like_torch(tmp_path):
    t = torch.arange(3.0).reshape(3, 1).expand(3, 1000)  # what .expand() checkpoints hold
    path = tmp_path / "x.bin"
    torch.save({"w": t}, path)
    np.testing.assert_array_equal(W.load_state_dict(path)["w"], t.numpy())


def test_num_labels_of_1e8_is_refused_before_id2label_is_built(tmp_path, monkeypatch):
    built = []
    real = LiltConfig._create_id_label_maps

    def spy(self, n):
        built.append(n)
        return real(self, n)

    monkeypatch.setattr(LiltConfig, "_create_id_label_maps", spy)
    cfg = {k: v for k, v in tiny_config().items() if k not in ("id2label", "label2id")}
    ckpt = copy_ckpt(tmp_path, config={**cfg, "num_labels": 10**8})
    with pytest.raises(ConfigError, match=re.escape(str(ckpt / "config.json")) + ".*num_labels.*1000000"):
        load_config(ckpt)
    assert built == [10**8]  # the check ran inside, before the dict comprehension
    with pytest.raises(CheckpointError, match="num_labels"):
        refimpl.from_pretrained(ckpt)


def test_config_symlink_to_dev_zero_is_refused(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").unlink()
    os.symlink("/dev/zero", ckpt / "config.json")
    with must_not_block(), pytest.raises(CheckpointError, match=r"config\.json.*character device"):
        load_config(ckpt)
    with must_not_block(), pytest.raises(CheckpointError, match="character device"):
        refimpl.from_pretrained(ckpt)


def test_weights_symlink_to_dev_zero_is_refused(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "model.safetensors").unlink()
    os.symlink("/dev/zero", ckpt / "model.safetensors")
    with must_not_block(), pytest.raises(CheckpointError, match=r"model\.safetensors.*character device"):
        W.load_state_dict(ckpt)


def test_symlink_to_a_regular_file_is_followed(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    os.rename(ckpt / "config.json", tmp_path / "real.json")
    os.symlink(tmp_path / "real.json", ckpt / "config.json")
    assert load_config(ckpt).hidden_size == tiny_config()["hidden_size"]


@pytest.mark.parametrize("which", ["config.json", "model.safetensors"])
def test_fifo_in_a_checkpoint_is_refused_without_blocking(tmp_path, which):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / which).unlink()
    os.mkfifo(ckpt / which)
    with must_not_block(), pytest.raises(CheckpointError, match=re.escape(which) + ".*FIFO"):
        refimpl.from_pretrained(ckpt)


def test_fifo_inputs_file_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "in.json"
    os.mkfifo(fifo)
    with must_not_block():
        rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", fifo, "--out", tmp_path / "o.safetensors")
    assert rc == 2 and "FIFO" in err, err


def test_socket_is_refused(tmp_path):
    path = str(tmp_path / "s.safetensors")
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(path)
        with must_not_block(), pytest.raises(CheckpointError, match="socket"):
            W.read_safetensors(path)
    finally:
        s.close()


def test_regular_file_is_checked_before_open(tmp_path, monkeypatch):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    opened = []
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(CheckpointError, match="FIFO"):
        F.open_regular(fifo, "config")
    assert opened == []


# ---------------------------------------------------------------------------------------------
# wrong exception kinds
# ---------------------------------------------------------------------------------------------
def test_deeply_nested_json_config_is_a_checkpoint_error(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").write_text('{"model_type": "lilt", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match=r"config\.json.*nested 100001 deep"):
        load_config(ckpt)


def test_deeply_nested_safetensors_header_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_bytes(b'{"w": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*nested"):
        W.read_safetensors(path)


def test_brackets_inside_strings_do_not_count_as_nesting():
    assert F.read_json(json.dumps({"a": "[" * 1000}).encode(), "x") == {"a": "[" * 1000}
    with pytest.raises(CheckpointError, match="nested 33 deep"):
        F.read_json(b"[" * 33 + b"]" * 33, "x")
    assert F.read_json(b"[" * 32 + b"]" * 32, "x") == [
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
    ]


def test_deeply_nested_pickle_key_does_not_recurse_in_our_message(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(zip_with_pickle(b"\x80\x02}" + b")" + b"\x85" * 100_000 + b"K\x01s."))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + r".*entry \(\(\(\(.*not a tensor"):
        W.load_state_dict(path)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 3, None, True, [], {}, 1.5])
def test_safetensors_dtype_of_the_wrong_json_type_is_a_checkpoint_error(tmp_path, dtype):
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_bytes({"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*'w'.*dtype"):
        W.read_safetensors(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(method=99), "compression method 99"),
        (dict(method=12), "compression method 12"),  # bzip2: zipfile reads it, torch never writes it
        (dict(flags=0x1), "encrypted"),
        (dict(flags=0x41), "encrypted"),  # strong encryption
    ],
)
@pytest.mark.parametrize("member", ["data.pkl", "data/0"])
def test_zip_unknown_compression_or_encryption_is_a_checkpoint_error(tmp_path, capsys, edit, message, member):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(patch_member(torch_bytes({"w": torch.ones(3)}), member, **edit))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
        W.load_state_dict(path)
    rc, err = cli(capsys, "convert", path, tmp_path / "o.safetensors")
    assert rc == 2 and message in err, err


# ---------------------------------------------------------------------------------------------
# errors that name the file
# ---------------------------------------------------------------------------------------------
def test_integers_of_thousands_of_digits_name_the_file(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").write_text('{"model_type": "lilt", "hidden_size": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt / "config.json")) + ".*5000 digits"):
        load_config(ckpt)
    path = tmp_path / "x.safetensors"
    path.write_bytes(
        st_bytes(b'{"w": {"dtype": "U8", "shape": [' + b"1" * 3000 + b'], "data_offsets": [0, 1]}}', b"\0")
    )
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*3000 digits"):
        W.read_safetensors(path)


@pytest.mark.parametrize(
    "shape, message",
    [([1] * 100, "rank 100"), ([0, 2**62, 2**62], "elements"), ([0] + [2**40] * 3, "elements")],
    ids=["rank-100", "zero-size-huge", "zero-size-rank4"],
)
def test_numpy_shape_limits_become_checkpoint_errors_naming_file_and_tensor(tmp_path, shape, message):
    count = int(np.prod(shape, dtype=object))
    path = tmp_path / "x.safetensors"
    path.write_bytes(
        st_bytes({"w": {"dtype": "U8", "shape": shape, "data_offsets": [0, count]}}, b"\0" * count)
    )
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*'w'.*" + message):
        W.read_safetensors(path)


@pytest.mark.parametrize("size", [(1,) * 100, (0, 2**61, 2**61)], ids=["rank-100", "zero-size-huge"])
def test_numpy_shape_limits_in_a_bin_name_file_and_tensor(tmp_path, size):
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.ones(1).untyped_storage(), dtype=torch.float32, _internal=True
    )
    bad = Reduce(
        torch._utils._rebuild_tensor_v2, typed, 0, size, (1,) * len(size), False, collections.OrderedDict()
    )
    path = tmp_path / "x.bin"
    torch.save({"w": bad}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        W.load_state_dict(path)


def test_non_utf8_config_names_the_file_and_offset(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").write_bytes(b'{"model_type": "lilt", "x": "\xff"}')
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt / "config.json")) + ".*UTF-8.*offset 29"):
        load_config(ckpt)


def test_inspect_uses_the_loaders_header_parser(tmp_path, capsys):
    header = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    ckpt = copy_ckpt(tmp_path, st_bytes(header, b"\0"))
    rc, err = cli(capsys, "inspect", ckpt)
    assert rc == 2 and "duplicate JSON key 'w'" in err and "model.safetensors" in err, err
    ckpt2 = copy_ckpt(
        tmp_path / "b", st_bytes({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    )
    rc, err = cli(capsys, "inspect", ckpt2)
    assert rc == 2 and "dtype ['F32'] is not supported" in err, err


def test_inspect_refuses_a_bin_the_loader_refuses(tmp_path, capsys):
    ckpt = copy_ckpt(
        tmp_path,
        zip_with_pickle(build_pickle_bytes("torch._utils", "_rebuild_tensor_v2", {"a": 1})),
        "pytorch_model.bin",
    )
    rc, err = cli(capsys, "inspect", ckpt)
    assert rc == 2 and "BUILD" in err, err


# ---------------------------------------------------------------------------------------------
# accepted when it should be refused
# ---------------------------------------------------------------------------------------------
def test_duplicate_tensor_names_in_a_safetensors_header_are_refused(tmp_path):
    header = (
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
        b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    )
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_bytes(header, b"\1\2"))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*duplicate JSON key 'w'"):
        W.read_safetensors(path)


def test_duplicate_keys_are_refused_in_config_and_shard_index(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    (ckpt / "config.json").write_text('{"model_type": "lilt", "hidden_size": 12, "hidden_size": 24}')
    with pytest.raises(CheckpointError, match=r"config\.json.*duplicate JSON key 'hidden_size'"):
        load_config(ckpt)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "x.safetensors"}, "weight_map": {}}')
    with pytest.raises(CheckpointError, match=re.escape(str(index)) + ".*duplicate JSON key 'weight_map'"):
        W.load_state_dict(index)


@pytest.mark.parametrize("text", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_layer_norm_eps_infinity_and_other_non_finite_values_are_refused(tmp_path, text):
    ckpt = copy_ckpt(tmp_path)
    raw = json.dumps({k: v for k, v in tiny_config().items() if k != "initializer_range"})
    (ckpt / "config.json").write_text(raw[:-1] + f', "initializer_range": {text}}}')
    with pytest.raises(CheckpointError, match=r"config\.json.*initializer_range.*non-finite"):
        load_config(ckpt)
    cfg = {**tiny_config(), "layer_norm_eps": 1.0}
    cfg_text = json.dumps(cfg).replace('"layer_norm_eps": 1.0', f'"layer_norm_eps": {text}')
    (ckpt / "config.json").write_text(cfg_text)
    with pytest.raises(CheckpointError, match=r"config\.json.*layer_norm_eps"):
        refimpl.from_pretrained(ckpt)


def test_non_finite_values_are_refused_from_python_too():
    with pytest.raises(ConfigError, match="layer_norm_eps"):
        LiltConfig(layer_norm_eps=float("inf"))
    with pytest.raises(ConfigError, match="initializer_range"):
        LiltConfig(initializer_range=float("nan"))


def test_transformers_own_non_finite_field_is_kept(tmp_path):
    # Mamba2Config.time_step_limit defaults to (0.0, inf): a config.json may carry Infinity there
    from transformers import Mamba2Config

    assert Mamba2Config().time_step_limit[1] == float("inf")
    ckpt = copy_ckpt(tmp_path)
    raw = json.dumps(tiny_config())
    (ckpt / "config.json").write_text(raw[:-1] + ', "time_step_limit": [0.0, Infinity]}')
    assert load_config(ckpt).time_step_limit == [0.0, float("inf")]


def test_config_fields_that_would_replace_methods_are_refused(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    for field in ("validate", "to_dict", "__class__", "__dict__"):
        (ckpt / "config.json").write_text(json.dumps({**tiny_config(), field: 1}))
        with pytest.raises(ConfigError, match=re.escape(field)):
            load_config(ckpt)


def test_mistyped_model_type_and_architectures_name_the_field(tmp_path):
    ckpt = copy_ckpt(tmp_path)
    for field, value in (
        ("model_type", ["lilt"]),
        ("architectures", {"a": 1}),
        ("architectures", "LiltModel"),
    ):
        (ckpt / "config.json").write_text(json.dumps({**tiny_config(), field: value}))
        with pytest.raises(ConfigError, match=field):
            refimpl.from_pretrained(ckpt)


def test_safetensors_offsets_gap_and_out_of_order_are_refused(tmp_path):
    gap = {
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]},
    }
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_bytes(gap, b"\0" * 3))
    with pytest.raises(CheckpointError, match="gap"):
        W.read_safetensors(path)
    backwards = {"w": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}
    path.write_bytes(st_bytes(backwards, b"\0"))
    with pytest.raises(CheckpointError, match="data_offsets"):
        W.read_safetensors(path)


@pytest.mark.parametrize(
    "case, field",
    [
        ({"words": ["a", 3], "boxes": [[0, 0, 1, 1], [0, 0, 1, 1]]}, "words"),
        ({"words": ["a"], "boxes": [[0, 0, 1]]}, "boxes"),
        ({"words": ["a"], "boxes": [[0, 0, 1, 1.5]]}, "boxes"),
        ({"words": ["a"], "boxes": [[0, 0, 1, 1]], "question": 7}, "question"),
        ({"words": ["a"], "boxes": [[0, 0, 1, 1]], "labels": ["x"]}, "labels"),
    ],
)
def test_inputs_case_fields_of_the_wrong_type_are_named(tmp_path, capsys, case, field):
    from refimpl.cli import main
    from refimpl.data import path

    f = tmp_path / "case.json"
    f.write_text(json.dumps(case))
    rc = main(["golden", path("lilt-tiny"), "--inputs", str(f), "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and f"case field {field!r}" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_unsupported_architecture_is_a_config_error_naming_the_file(tmp_path):
    import refimpl
    from refimpl.config import ConfigError

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"config\.json: architectures\[0\] = 'BertModel'"):
        refimpl.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(refimpl.CheckpointError, match=r"config\.json: model_type = 'bert'"):
        refimpl.architecture_of(tmp_path)
