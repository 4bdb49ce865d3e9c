"""Nothing a user owns is ever lost (issue 20): one test per finding, named after what it
protects.

Writes are atomic (a kill, a SIGTERM or a full disk leaves the old bytes), never over an
input (same inode: symlinks and hardlinks caught), never over a FIFO or device, and never
over a file that is not this project's output without ``--force``; resume verifies the data;
every input is bounded as a whole before any work (the memory-bound cases run in a subprocess
under a 1.5 GB address-space limit and must finish in under 5 s); and no bad input gives a
silent wrong result. Each test asserts that the bytes the user had are unchanged."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from _safety import (
    EXAMPLE,
    LILT_TINY,
    bin_with_huge_deflated_storage,
    fuse_inputs,
    npz_of_zero_members,
    raw_zip,
    run_bounded,
    small_filesystem,
    snapshot,
    start_slow_writer,
    stored,
    wait_for_new_file,
)

import refimpl
from refimpl import checkpoints as W
from refimpl import files as F
from refimpl import golden
from refimpl.cli import main

FORM = os.path.join(EXAMPLE, "form.json")
LXMERT_TINY = os.path.join(os.path.dirname(refimpl.__file__), "data", "lxmert-tiny")


def cli(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, err


def refused(rc: int, err: str, *needles: str) -> None:
    """Exit 2 with one line on stderr holding every needle."""
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def form_golden(tmp_path_factory) -> str:
    """A golden file of the bundled form (to stand for the user's existing file)."""
    p = tmp_path_factory.mktemp("golden") / "form.safetensors"
    assert main(["golden", LILT_TINY, "--inputs", FORM, "--out", str(p), "-q"]) == 0
    return str(p)


def form_case(tmp_path, **changes) -> str:
    with open(FORM) as f:
        case = json.load(f)
    case.update(changes)
    p = tmp_path / "case.json"
    p.write_text(json.dumps(case))
    return str(p)


def bin_of_lilt_tiny(path) -> None:
    sd = {k: torch.from_numpy(np.array(v)) for k, v in W.load_state_dict(LILT_TINY, dtype=None).items()}
    torch.save(sd, path)


# ---------------------------------------------------------------------------------------------
# fuse-lilt: never over an input, nothing half-written
# ---------------------------------------------------------------------------------------------
def test_fuse_lilt_refuses_out_equal_to_layout_input(tmp_path, capsys):
    text, layout = fuse_inputs(tmp_path)
    before = snapshot(layout)
    for force in ((), ("--force",)):
        rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", layout, *force)
        refused(rc, err, layout, "input")
    assert snapshot(layout) == before


def test_fuse_lilt_refuses_out_equal_to_text_input_and_writes_nothing(tmp_path, capsys):
    text, layout = fuse_inputs(tmp_path)
    before = snapshot(text)
    for force in ((), ("--force",)):
        rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", text, *force)
        refused(rc, err, text, "input")
        assert snapshot(text) == before


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_fuse_lilt_refuses_an_out_file_linked_to_an_input(tmp_path, capsys, link):
    text, layout = fuse_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    src = os.path.join(layout, "model.safetensors")
    (os.link if link == "hardlink" else os.symlink)(src, out / "model.safetensors")
    before = snapshot(layout)
    for force in ((), ("--force",)):
        rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", out, *force)
        refused(rc, err, "model.safetensors", "input")
    assert snapshot(layout) == before


def test_fuse_lilt_replaces_existing_out_files_only_with_force(tmp_path, capsys):
    text, layout = fuse_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("my notes")
    rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", out)
    refused(rc, err, "config.json", "--force")
    assert (out / "config.json").read_text() == "my notes" and not (out / "model.safetensors").exists()
    rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", out, "--force")
    assert rc == 0, err
    fused = W.load_state_dict(out, dtype=None)
    base = W.load_state_dict(LILT_TINY, dtype=None)
    assert set(fused) == {k for k in base if k.startswith("lilt.")} | {
        "lilt.pooler.dense.weight",
        "lilt.pooler.dense.bias",
    }
    for k, v in base.items():
        if k.startswith("lilt."):
            np.testing.assert_array_equal(fused[k], v)


def test_fuse_lilt_on_a_full_disk_leaves_the_out_dir_as_it_was(tmp_path, capsys, monkeypatch):
    text, layout = fuse_inputs(tmp_path)
    with small_filesystem(tmp_path / "fs", 512 << 10, monkeypatch) as (fs, _):
        out = os.path.join(fs, "out")
        rc, err = cli(capsys, "fuse-lilt", "--text", text, "--layout", layout, "--out", out)
        refused(rc, err, os.path.join(out, "model.safetensors"), "no space left", "left as it was")
        assert os.listdir(out) == []  # no config.json beside a partial model, no temp


# ---------------------------------------------------------------------------------------------
# golden --out: never an input, never a device, never a file that is not ours
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "vocab.json"])
def test_golden_refuses_out_equal_to_a_checkpoint_file(tmp_path, capsys, victim):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(LILT_TINY, ckpt)
    before = snapshot(ckpt)
    for force in ((), ("--force",)):
        rc, err = cli(capsys, "golden", ckpt, "--inputs", FORM, "--out", ckpt / victim, *force)
        refused(rc, err, victim, "input")
    assert snapshot(ckpt) == before
    assert refimpl.from_pretrained(ckpt) is not None


def test_golden_refuses_out_equal_to_its_inputs_file_even_through_a_hardlink(tmp_path, capsys):
    case = form_case(tmp_path)
    os.link(case, tmp_path / "link.safetensors")
    before = snapshot(case)
    for out in (case, tmp_path / "link.safetensors"):
        for force in ((), ("--force",)):
            rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", case, "--out", out, *force)
            refused(rc, err, "input")
    assert snapshot(case) == before


def test_golden_replaces_a_file_that_is_not_golden_only_with_force(tmp_path, capsys, form_golden):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes, not a golden file")
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", notes)
    refused(rc, err, str(notes), "--force")
    assert notes.read_text() == "my notes, not a golden file"
    assert cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", notes, "--force", "-q")[0] == 0
    assert not golden.read(notes).verify()
    # a golden file refimpl wrote is replaced without --force
    mine = tmp_path / "mine.safetensors"
    shutil.copy(form_golden, mine)
    assert cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", mine, "-q")[0] == 0


def _device_or_skip(tmp_path) -> str:
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot make a device node here (not root)")
    return str(dev)


@pytest.mark.parametrize("kind", ["fifo", "symlink-to-dev-null", "device", "directory"])
def test_golden_refuses_a_destination_that_is_not_a_regular_file(tmp_path, capsys, kind):
    dest = tmp_path / "dest"
    if kind == "fifo":
        os.mkfifo(dest)
    elif kind == "symlink-to-dev-null":
        os.symlink("/dev/null", dest)
    elif kind == "device":
        dest = _device_or_skip(tmp_path)
    else:
        dest.mkdir()
    mode = os.lstat(dest).st_mode
    for force in ((), ("--force",)):
        rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", dest, *force)
        refused(rc, err, "refusing to replace it")
    assert os.lstat(dest).st_mode == mode  # still a FIFO / link / device / directory
    assert os.stat("/dev/null").st_mode & stat.S_IFCHR


def test_demo_replaces_a_foreign_file_only_with_force(tmp_path, capsys):
    (tmp_path / "lilt-form.safetensors").write_text("mine")
    rc, err = cli(capsys, "demo", "-q", "--out", tmp_path)
    refused(rc, err, "lilt-form.safetensors", "--force")
    assert (tmp_path / "lilt-form.safetensors").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["lilt-form.safetensors"]


@pytest.mark.parametrize("cmd", ["golden", "convert", "fuse-lilt", "demo"])
def test_help_of_every_writing_command_mentions_force(cmd, capsys):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    assert "--force" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# convert: never over the source, atomic
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_convert_refuses_a_destination_linked_to_the_source(tmp_path, link):
    src = tmp_path / "pytorch_model.bin"
    bin_of_lilt_tiny(src)
    before = snapshot(src)
    dst = tmp_path / "model.safetensors"
    (os.symlink if link == "symlink" else os.link)(src, dst)
    for force in ([], ["--force"]):  # in a subprocess: a self-overwrite once died of SIGBUS
        p = subprocess.run(
            [sys.executable, "-m", "refimpl.cli", "convert", str(src), str(dst), *force],
            capture_output=True,
            text=True,
            timeout=120,
        )
        refused(p.returncode, p.stderr, "input")
    assert snapshot(src) == before


def test_convert_replaces_an_existing_destination_only_with_force(tmp_path, capsys):
    src = tmp_path / "pytorch_model.bin"
    bin_of_lilt_tiny(src)
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"my own file")
    rc, err = cli(capsys, "convert", src, dst)
    refused(rc, err, str(dst), "--force")
    assert dst.read_bytes() == b"my own file"
    assert cli(capsys, "convert", src, dst, "--force")[0] == 0
    np.testing.assert_array_equal(
        W.load_state_dict(dst)["lilt.embeddings.word_embeddings.weight"],
        W.load_state_dict(LILT_TINY)["lilt.embeddings.word_embeddings.weight"],
    )


def test_convert_killed_mid_write_leaves_the_old_destination_and_the_next_run_cleans_up(tmp_path, capsys):
    src = tmp_path / "pytorch_model.bin"
    bin_of_lilt_tiny(src)
    dst = tmp_path / "model.safetensors"
    shutil.copy(os.path.join(LILT_TINY, "model.safetensors"), dst)  # the user's valid file
    before = snapshot(dst)
    names = set(os.listdir(tmp_path))
    proc = start_slow_writer("convert", src, dst, "--force")
    temp = wait_for_new_file(tmp_path, names, proc)
    proc.kill()  # kill -9, mid-write
    proc.wait()
    assert temp is not None, "no temp file appeared: the destination was written in place"
    assert snapshot(dst) == before
    assert F.is_refimpl_temp(temp) and os.path.exists(tmp_path / temp)
    # the next write into the directory removes the dead process's temp
    assert cli(capsys, "convert", src, tmp_path / "other.safetensors")[0] == 0
    assert not os.path.exists(tmp_path / temp)


def test_convert_on_a_full_disk_names_the_file_and_keeps_its_bytes(tmp_path, capsys, monkeypatch):
    src = tmp_path / "pytorch_model.bin"
    bin_of_lilt_tiny(src)
    with small_filesystem(tmp_path / "fs", 1800 << 10, monkeypatch) as (fs, _):
        dst = os.path.join(fs, "model.safetensors")
        shutil.copy(os.path.join(LILT_TINY, "model.safetensors"), dst)
        before = snapshot(dst)
        rc, err = cli(capsys, "convert", src, dst, "--force")
        refused(rc, err, dst, "no space left", "left as it was")
        assert snapshot(dst) == before
        assert os.listdir(fs) == ["model.safetensors"]  # no temp left


# ---------------------------------------------------------------------------------------------
# golden: atomic, killed, terminated, full disk, threads, fsync
# ---------------------------------------------------------------------------------------------
def _start_golden_over(tmp_path, form_golden, case_changes):
    out = tmp_path / "g.safetensors"
    shutil.copy(form_golden, out)
    before = snapshot(out)
    case = form_case(tmp_path, **case_changes)
    names = set(os.listdir(tmp_path))
    proc = start_slow_writer("golden", LILT_TINY, "--inputs", case, "--out", out, "-q")
    return out, before, names, proc


def test_golden_terminated_mid_write_removes_its_temp_and_keeps_the_old_file(tmp_path, form_golden):
    out, before, names, proc = _start_golden_over(tmp_path, form_golden, {"question": "what total?"})
    temp = wait_for_new_file(tmp_path, names, proc)
    assert temp is not None, "no temp file appeared"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert snapshot(out) == before
    assert set(os.listdir(tmp_path)) == names, "a temp file was left behind"


def test_golden_killed_mid_write_keeps_the_old_file_and_the_next_run_removes_the_temp(
    tmp_path, form_golden, capsys
):
    out, before, names, proc = _start_golden_over(tmp_path, form_golden, {"question": "what total?"})
    temp = wait_for_new_file(tmp_path, names, proc)
    proc.kill()
    proc.wait()
    assert temp is not None
    assert snapshot(out) == before and golden.read(out).verify() == []
    assert F.is_refimpl_temp(temp)
    assert cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", out, "-q")[0] == 0
    assert set(os.listdir(tmp_path)) == names  # the stale temp is gone


def test_golden_on_a_full_disk_names_the_file_and_keeps_its_bytes(tmp_path, form_golden, capsys, monkeypatch):
    case = form_case(tmp_path, question="what total?")
    with small_filesystem(tmp_path / "fs", 1600 << 10, monkeypatch) as (fs, _):
        out = os.path.join(fs, "g.safetensors")
        shutil.copy(form_golden, out)
        before = snapshot(out)
        rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", case, "--out", out)
        refused(rc, err, out, "no space left")
        assert snapshot(out) == before
        assert os.listdir(fs) == ["g.safetensors"]


def test_two_threads_writing_one_golden_path_always_leave_a_valid_file(tmp_path):
    model = refimpl.from_pretrained(LILT_TINY, dtype="float64")
    ids = np.array([[0, 40, 41, 42, 2]])
    bbox = np.array([[[0, 0, 0, 0]] + [[10, 20, 30, 40]] * 3 + [[0, 0, 0, 0]]])
    out = tmp_path / "g.safetensors"
    problems: list[str] = []

    def one(seed: int, start: threading.Barrier) -> None:
        try:
            start.wait()  # both threads trace and write at the same moment
            golden.write_case(out, model, {"input_ids": ids, "bbox": bbox + seed})
        except ValueError as e:  # documented (CheckpointError, DestinationError) if it names the path
            if str(out) not in str(e):
                problems.append(f"{type(e).__name__}: {e}")
        except BaseException as e:  # noqa: BLE001 - anything else is a crash
            problems.append(f"crash {type(e).__name__}: {e}")

    for _ in range(50):
        start = threading.Barrier(2)
        threads = [threading.Thread(target=one, args=(s, start)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not problems, problems[:3]
        g = golden.read(out)  # always a whole, valid file of one of the two cases
        assert all(np.all(np.isfinite(g.tensors[n])) for n in g.tensors if g.info(n)[0].kind == "f")
        assert int(g.inputs["bbox"][0, 1, 0]) in (10, 11)
    assert golden.read(out).verify() == []
    assert os.listdir(tmp_path) == ["g.safetensors"]


def test_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    W.save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(3)})
    assert synced == ["file", "dir"]


def test_stale_temp_cleanup_spares_live_writers_and_other_files(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = F.writing._host()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        dead_pid = int(dead.stdout)
        names = {
            "dead": f".x.safetensors.refimpl-{host}-{dead_pid}-1-0123abcd.tmp",
            "live": f".x.safetensors.refimpl-{host}-{sleeper.pid}-1-0123abcd.tmp",
            "self": f".x.safetensors.refimpl-{host}-{os.getpid()}-1-0123abcd.tmp",
            "user": "x.safetensors.1234.tmp",
        }
        for n in names.values():
            (tmp_path / n).write_bytes(b"partial")
        removed = F.clean_stale_temps(tmp_path)
        assert [os.path.basename(r) for r in removed] == [names["dead"]]
        assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")
        # a temp nobody touched for a day is stale whoever made it
        later = time.time() + F.STALE_TEMP_SECONDS + 10
        assert {os.path.basename(r) for r in F.clean_stale_temps(tmp_path, now=later)} == {
            names["live"],
            names["self"],
        }
        assert os.listdir(tmp_path) == [names["user"]]
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------------------------------
# resume verifies the data
# ---------------------------------------------------------------------------------------------
def _zero_data(path) -> None:
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        size = os.fstat(f.fileno()).st_size
        f.seek(8 + n)
        f.write(bytes(size - 8 - n))


def test_resume_rewrites_a_case_whose_data_was_zeroed(tmp_path, capsys):
    with open(FORM) as f:
        case = json.load(f)
    jl = tmp_path / "cases.jsonl"
    jl.write_text(json.dumps(case) + "\n" + json.dumps({**case, "question": "total?"}) + "\n")
    out = tmp_path / "out"
    rc, _ = cli(capsys, "golden", LILT_TINY, "--inputs", jl, "--out", out)
    assert rc == 0
    good = snapshot(out)
    _zero_data(out / "case-0000.safetensors")
    rc = main(["golden", str(LILT_TINY), "--inputs", str(jl), "--out", str(out)])
    assert rc == 0
    assert "wrote 1, skipped 1" in capsys.readouterr().out
    assert snapshot(out) == good
    assert golden.read(out / "case-0000.safetensors").verify() == []


def test_inspect_verify_names_the_damaged_tensor(tmp_path, capsys, form_golden):
    p = tmp_path / "g.safetensors"
    shutil.copy(form_golden, p)
    rc, err = cli(capsys, "inspect", "--verify", p)
    assert rc == 0, err
    g = golden.read(p)
    name = next(
        e["name"] for e in g.manifest["tensors"] if e["role"] == "intermediate" and e["name"] not in g.aliases
    )
    _, _, begin, end = g.tensors._table[name]
    with open(p, "r+b") as f:
        f.seek(begin)
        f.write(b"\0" * (end - begin))
    rc, err = cli(capsys, "inspect", "--verify", p)
    refused(rc, err, str(p), repr(name), "tensor_sha256")


# ---------------------------------------------------------------------------------------------
# no silent wrong result
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [99999999999999999999, 2**63], ids=["20-digits", "2**63"])
def test_golden_refuses_a_box_coordinate_that_does_not_fit_int64(tmp_path, capsys, value):
    with open(FORM) as f:
        boxes = json.load(f)["boxes"]
    boxes[0] = [value, 1, 2, 3]
    case = form_case(tmp_path, boxes=boxes)
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", case, "--out", tmp_path / "g.safetensors")
    refused(rc, err, "'boxes'[0][0]", str(value), "64-bit integer")
    assert not (tmp_path / "g.safetensors").exists()


def test_golden_refuses_a_label_id_that_does_not_fit_int64(tmp_path, capsys):
    with open(FORM) as f:
        n = len(json.load(f)["words"])
    case = form_case(tmp_path, labels=[0] * (n - 1) + [2**64])
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", case, "--out", tmp_path / "g.safetensors")
    refused(rc, err, f"'labels'[{n - 1}]", "64-bit integer")


@pytest.mark.parametrize("select", ["nomatch*", "["])
def test_golden_select_that_matches_nothing_or_is_invalid_is_an_error_naming_it(tmp_path, capsys, select):
    out = tmp_path / "g.safetensors"
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", FORM, "--out", out, "--select", select)
    refused(rc, err, "--select", repr(select))
    assert not out.exists()


@pytest.mark.parametrize(
    "pattern",
    ["pp/{index.__class__.__mro__}{index}", "pp/{index[0]}", "pp/{index!r}", "pp/{0}", "pp/{index:>300}"],
)
def test_out_pattern_allows_only_index_with_a_plain_spec(tmp_path, capsys, monkeypatch, pattern):
    jl = tmp_path / "cases.jsonl"
    with open(FORM) as f:
        jl.write_text(f.read().replace("\n", "") + "\n")
    monkeypatch.chdir(tmp_path)
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", jl, "--out", pattern)
    refused(rc, err, "--out pattern", "{index")
    assert sorted(os.listdir(tmp_path)) == ["cases.jsonl"]


def test_out_pattern_that_leaves_its_directory_is_refused(tmp_path, capsys, monkeypatch):
    jl = tmp_path / "cases.jsonl"
    with open(FORM) as f:
        jl.write_text(f.read().replace("\n", "") + "\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    rc, err = cli(capsys, "golden", LILT_TINY, "--inputs", jl, "--out", "pp/../../{index}/x.safetensors")
    refused(rc, err, "--out pattern", "..")
    assert sorted(os.listdir(tmp_path)) == ["a", "cases.jsonl"] and os.listdir(tmp_path / "a") == ["b"]


def test_bin_geometry_errors_name_the_tensor_key(tmp_path):
    from _hostile import Reduce

    typed = torch.storage.TypedStorage(
        wrap_storage=torch.ones(4).untyped_storage(), dtype=torch.float32, _internal=True
    )
    import collections

    for size, stride in (((-1,), (1,)), ((1,) * 100, (1,) * 100)):
        bad = Reduce(
            torch._utils._rebuild_tensor_v2, typed, 0, size, stride, False, collections.OrderedDict()
        )
        path = tmp_path / "x.bin"
        torch.save({"my.weight": bad}, path)
        with pytest.raises(refimpl.CheckpointError, match=r"x\.bin: tensor 'my\.weight'"):
            W.load_state_dict(path)


# ---------------------------------------------------------------------------------------------
# every input bounded as a whole, before the work (1.5 GB address space, < 5 s each)
# ---------------------------------------------------------------------------------------------
def test_npz_inputs_bounded_as_a_whole_before_inflating(tmp_path):
    p = tmp_path / "in.npz"
    p.write_bytes(npz_of_zero_members(4, 1 << 30))  # 4 MB declaring four 1 GiB members
    assert p.stat().st_size < 5 << 20
    rc, err, seconds = run_bounded("golden", LILT_TINY, "--inputs", p, "--out", tmp_path / "g.safetensors")
    refused(rc, err, str(p), "together", "whole file")
    assert seconds < 5
    with pytest.raises(refimpl.CheckpointError, match="together"):  # compare's candidates read it so too
        F.read_npz(p, "candidate")


def test_npz_of_2m_pad_ids_is_refused_before_any_work(tmp_path):
    p = tmp_path / "in.npz"
    np.savez_compressed(p, input_ids=np.ones((1, 2_000_000), np.int64))
    assert p.stat().st_size < 100_000
    rc, err, seconds = run_bounded("golden", LILT_TINY, "--inputs", p, "--out", tmp_path / "g.safetensors")
    refused(rc, err, "input_ids", "2000000", "max_position_embeddings")
    assert seconds < 5


@pytest.mark.parametrize(
    "kind, case",
    [
        ("lilt", {"words": ["a" * 5_000_000], "boxes": [[0, 0, 10, 10]]}),
        ("lilt", {"words": ["Total"], "boxes": [[0, 0, 10, 10]], "question": "why " * 1_250_000}),
        ("lxmert", {"question": "a" * 5_000_000, "features": "feats.npy", "boxes": "boxes.npy"}),
    ],
    ids=["lilt-word", "lilt-question", "lxmert-question"],
)
def test_a_5m_character_text_is_refused_before_tokenizing(tmp_path, kind, case):
    for n in ("feats.npy", "boxes.npy"):
        shutil.copy(os.path.join(EXAMPLE, n), tmp_path / n)
    p = tmp_path / "case.json"
    p.write_text(json.dumps(case))
    ckpt = LILT_TINY if kind == "lilt" else LXMERT_TINY
    rc, err, seconds = run_bounded("golden", ckpt, "--inputs", p, "--out", tmp_path / "g.safetensors")
    refused(rc, err, "characters", "max_position_embeddings")
    assert seconds < 5


def test_a_manifest_with_a_huge_selection_is_refused_quickly(tmp_path, form_golden):
    g = golden.read(form_golden)
    m = dict(g.manifest)
    huge = "|".join(f"x{i}" for i in range(1_500_000))
    m["selection"] = {"select": ["x"], "terms": [{"include": [huge], "exclude": []}]}
    tensors = {e["name"]: g.tensors[e["name"]] for e in m["tensors"] if e["name"] not in m.get("aliases", {})}
    bad = tmp_path / "bad.safetensors"
    W.save_safetensors(bad, tensors, metadata={golden.MANIFEST_KEY: json.dumps(m)})
    rc, err, seconds = run_bounded("inspect", bad, timeout=30)
    refused(rc, err, str(bad), "selection", "limit")
    assert seconds < 5


def test_out_pattern_width_is_bounded_before_any_allocation(tmp_path):
    jl = tmp_path / "cases.jsonl"
    with open(FORM) as f:
        jl.write_text(f.read().replace("\n", "") + "\n")
    rc, err, seconds = run_bounded(
        "golden", LILT_TINY, "--inputs", jl, "--out", f"{tmp_path}/x{{index:>300000000}}"
    )
    refused(rc, err, "--out pattern")
    assert seconds < 5


def test_a_50_mb_config_json_is_refused_before_parsing(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(LILT_TINY, ckpt)
    with open(ckpt / "config.json", "w") as f:
        f.write('{"model_type": "lilt", "x": [' + "{}," * (50_000_000 // 3) + "{}]}")
    rc, err, seconds = run_bounded("inspect", ckpt)
    refused(rc, err, "config.json", "limit of 8388608")
    assert seconds < 5


def test_a_deflated_storage_declaring_2_gib_for_4_floats_is_never_inflated(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "pytorch_model.bin").write_bytes(bin_with_huge_deflated_storage(1 << 31))
    assert (ckpt / "pytorch_model.bin").stat().st_size < 3 << 20
    code = (
        "import sys, time\n"
        "from refimpl import checkpoints as W\n"
        "t = time.perf_counter()\n"
        "w = W.load_state_dict(sys.argv[1])['w']\n"
        "print(w.tolist(), time.perf_counter() - t)\n"
    )
    import resource

    from _safety import AS_LIMIT, _env

    p = subprocess.run(
        [sys.executable, "-c", code, str(ckpt)],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT)),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert p.returncode == 0, p.stderr
    values, seconds = p.stdout.rsplit(" ", 1)
    assert values == "[0.0, 0.0, 0.0, 0.0]" and float(seconds) < 5
    rc, err, seconds = run_bounded("convert", ckpt / "pytorch_model.bin", tmp_path / "out.safetensors")
    assert rc == 0 and seconds < 5, err
    assert W.load_state_dict(tmp_path / "out.safetensors")["w"].tolist() == [0.0] * 4


def test_a_zip_declaring_too_many_members_is_refused_before_its_directory_is_parsed(tmp_path, monkeypatch):
    data = bytearray(raw_zip([stored("a.npy", b"x")]))
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8 : eocd + 12] = (0xFFFF).to_bytes(2, "little") * 2  # 65535 entries, no zip64
    p = tmp_path / "x.npz"
    p.write_bytes(bytes(data))
    monkeypatch.setattr(F.arrays, "MAX_ZIP_MEMBERS", 1000)  # the module that checks it
    with pytest.raises(refimpl.CheckpointError, match="65535 members, over the limit of 1000"):
        F.read_npz(p)


def test_the_loading_page_documents_the_write_guarantees_and_every_limit():
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "loading.md")) as f:
        page = f.read()
    for needle in (
        "--force",
        "tensor_sha256",
        "atomic",
        "fsync",
        "SIGTERM",
        "MAX_CONFIG_BYTES",
        "MAX_CASE_BYTES",
        "MAX_CHARS_PER_TOKEN",
        "MAX_SELECTION_TERMS",
        "MAX_SELECTION_CHARS",
        "MAX_ZIP_MEMBERS",
        "STALE_TEMP_SECONDS",
        "8 MiB",
        "max_position_embeddings",
    ):
        assert needle in page, needle
