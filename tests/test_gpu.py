"""CuPy (device="cuda") runs equal CPU runs: 1e-5 in float32, 1e-10 in float64, for both models.

Marked ``gpu``; skipped cleanly (at collection, before anything is built) unless CuPy imports
and sees a CUDA device. Select them with ``pytest -m gpu``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from refimpl import backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA device"),
]

TOL = {"float32": 1e-5, "float64": 1e-10}


def _fields(out) -> dict:
    """Array fields of an output record (tuples flattened to name.i)."""
    items = {}
    for f in dataclasses.fields(out):
        v = getattr(out, f.name)
        if isinstance(v, (tuple, list)):
            items.update({f"{f.name}.{i}": a for i, a in enumerate(v)})
        elif v is not None:
            items[f.name] = v
    return items


def _compare(cpu_out, gpu_out, atol: float) -> None:
    from _oracle import assert_close

    cpu, gpu = _fields(cpu_out), _fields(gpu_out)
    assert cpu.keys() == gpu.keys()
    assert cpu, "the model returned no arrays"
    for name, a in gpu.items():
        assert backend.is_device_array(a), f"{name} did not stay on the device"
        assert_close(name, backend.to_numpy(a), cpu[name], atol=atol)


@pytest.fixture(scope="module")
def lilt_dir(tmp_path_factory):
    from _oracle import build, save
    from transformers import LiltConfig, LiltForTokenClassification

    config = LiltConfig(
        vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, max_2d_position_embeddings=128, channel_shrink_ratio=2, num_labels=3,
    )  # fmt: skip
    return save(build(LiltForTokenClassification, config, seed=1), tmp_path_factory.mktemp("lilt"))


@pytest.fixture(scope="module")
def lxmert_dir(tmp_path_factory):
    from _oracle import build, save
    from transformers import LxmertConfig, LxmertForPreTraining

    config = LxmertConfig(
        vocab_size=99, hidden_size=24, num_attention_heads=2, intermediate_size=37, l_layers=2, x_layers=1,
        r_layers=1, visual_feat_dim=16, visual_pos_dim=4, num_qa_labels=5, num_object_labels=7,
        num_attr_labels=4,
    )  # fmt: skip
    return save(build(LxmertForPreTraining, config, seed=2), tmp_path_factory.mktemp("lxmert"))


def _lilt_inputs(rng, batch=2, seq=11):
    x0 = rng.integers(0, 60, (batch, seq, 1))
    y0 = rng.integers(0, 60, (batch, seq, 1))
    bbox = np.concatenate(
        [x0, y0, x0 + rng.integers(0, 60, x0.shape), y0 + rng.integers(0, 60, y0.shape)], -1
    )
    mask = np.ones((batch, seq), np.int64)
    mask[1, -3:] = 0
    return {"input_ids": rng.integers(2, 99, (batch, seq)), "bbox": bbox, "attention_mask": mask}


def _lxmert_inputs(rng, dtype, batch=2, seq=7, boxes=5):
    mask = np.ones((batch, seq), np.int64)
    mask[0, -2:] = 0
    return {
        "input_ids": rng.integers(0, 99, (batch, seq)),
        "attention_mask": mask,
        "visual_feats": rng.standard_normal((batch, boxes, 16)).astype(dtype),
        "visual_pos": rng.random((batch, boxes, 4)).astype(dtype),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lilt_gpu_equals_cpu(lilt_dir, dtype):
    import refimpl

    inputs = _lilt_inputs(np.random.default_rng(0))
    cpu = refimpl.from_pretrained(lilt_dir, dtype=dtype, device="cpu")
    gpu = refimpl.from_pretrained(lilt_dir, dtype=dtype, device="cuda")
    assert all(backend.is_device_array(v) for v in gpu.params.values())
    kw = {"output_attentions": True, "output_hidden_states": True}
    want = cpu(**inputs, **kw)
    got = gpu(**{k: backend.to_device(v, "cuda") for k, v in inputs.items()}, **kw)
    _compare(want, got, TOL[dtype])


def test_lilt_to_cuda_and_back(lilt_dir):
    import refimpl

    inputs = _lilt_inputs(np.random.default_rng(1))
    model = refimpl.from_pretrained(lilt_dir, dtype="float64")
    want = model(**inputs)
    got = model.to("cuda")(**inputs)  # host inputs are moved to the model's device
    _compare(want, got, TOL["float64"])
    back = model.to("cpu")(**inputs)
    assert not backend.is_device_array(back.logits)
    np.testing.assert_allclose(back.logits, want.logits, rtol=0, atol=TOL["float64"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lxmert_gpu_equals_cpu(lxmert_dir, dtype):
    import refimpl

    inputs = _lxmert_inputs(np.random.default_rng(0), dtype)
    cpu = refimpl.from_pretrained(lxmert_dir, dtype=dtype, device="cpu")
    gpu = refimpl.from_pretrained(lxmert_dir, dtype=dtype, device="cuda")
    kw = {"output_attentions": True, "output_hidden_states": True}
    want = cpu(**inputs, **kw)
    got = gpu(**{k: backend.to_device(v, "cuda") for k, v in inputs.items()}, **kw)
    _compare(want, got, TOL[dtype])


def test_to_device_round_trip():
    x = np.random.default_rng(0).standard_normal((3, 4))
    d = backend.to_device(x, "cuda")
    assert backend.is_device_array(d)
    assert backend.get_namespace(d).__name__ == "cupy"
    np.testing.assert_array_equal(backend.to_numpy(d), x)
