"""The small shared pieces: trace recorder, output records, dispatch, config errors, architecture choice."""

import json

import numpy as np
import pytest

import refimpl
from refimpl import backend, trace
from refimpl.config import LiltConfig, LxmertConfig, load_config
from refimpl.outputs import BaseModelOutputWithPooling, SequenceClassifierOutput


def test_trace_off_records_nothing():
    x = np.arange(3.0)
    assert trace.active() is None
    assert trace.record("a", x) is None  # a statement, never wrapped around an expression
    trace.output(x)
    with trace.scope("s"):
        assert trace.current_name("a") == "a"


def test_trace_names_follow_scopes_and_copy_values():
    x = np.zeros(2)
    with trace.tracing() as rec:
        with trace.scope("encoder.layer.0"):
            with trace.scope("attention.self"):
                trace.record("query", x)
            trace.output(x)
        x += 1  # later in-place work must not change what was recorded
    assert list(rec.tensors) == ["encoder.layer.0.attention.self.query", "encoder.layer.0"]
    assert rec.tensors["encoder.layer.0"].sum() == 0
    assert trace.active() is None


def test_trace_per_call_scopes_and_aliases():
    x = np.ones(2)
    with trace.tracing() as rec:
        with trace.scope("x_layers.0.visual_attention", call="lang"):
            with trace.scope("att"):
                trace.record("query", x)
            with trace.scope("output"):
                trace.output(x, also="LayerNorm")
        with trace.scope("self"):
            trace.record("attention_probs", x, also="layout_attention_probs")
    assert list(rec.tensors) == [
        "x_layers.0.visual_attention.att.query@lang",
        "x_layers.0.visual_attention.output.LayerNorm@lang",
        "x_layers.0.visual_attention.output@lang",
        "self.attention_probs",
        "self.layout_attention_probs",
    ]


def test_trace_wants_any_asks_the_recorder_with_full_names():
    class Picky(trace.Recorder):
        def wants(self, name):
            return name == "m.b@lang"

    assert trace.wants_any(["a"]) is False  # tracing off: nothing is wanted
    with trace.tracing() as rec:
        assert rec.wants("anything") and trace.wants_any(["a"])  # the default recorder keeps all
    with trace.tracing(recorder=Picky()):
        with trace.scope("m", call="lang"):
            assert trace.wants_any(["a", "b"]) and not trace.wants_any(["a"])


def test_trace_is_per_thread_and_nests():
    import threading

    seen = {}

    def worker():
        seen["active"] = trace.active()

    with trace.tracing() as outer:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        with trace.tracing() as inner:
            trace.record("a", np.zeros(1))
        assert trace.active() is outer
    assert seen["active"] is None  # a new thread starts with tracing off
    assert list(inner.tensors) == ["a"] and outer.tensors == {}


def test_trace_refuses_a_name_recorded_twice():
    with trace.tracing():
        trace.record("a", np.zeros(1))
        with pytest.raises(KeyError, match="recorded twice"):
            trace.record("a", np.zeros(1))


def test_output_record_is_dict_and_tuple_like():
    out = SequenceClassifierOutput(logits=np.ones(2), hidden_states=(np.zeros(1),))
    assert out.keys() == ["logits", "hidden_states"]
    assert out["logits"] is out.logits and out[0] is out.logits
    assert "loss" not in out and len(out.to_tuple()) == 2
    with pytest.raises(KeyError):
        out["loss"]
    assert BaseModelOutputWithPooling().to_tuple() == ()


def test_namespace_is_numpy_for_numpy_arrays_and_cupy_is_not_imported():
    import sys

    assert backend.get_namespace(np.zeros(1), None, 3.0) is np
    assert "cupy" not in sys.modules
    with pytest.raises(ValueError, match="device"):
        backend.to_device(np.zeros(1), "tpu")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_size", 100, "num_attention_heads"),
        ("hidden_act", "nope", "hidden_act"),
        ("position_embedding_type", "rotary", "position_embedding_type"),
        ("num_hidden_layers", 0, "num_hidden_layers"),
        ("channel_shrink_ratio", 5, "channel_shrink_ratio"),
    ],
)
def test_impossible_lilt_configs_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        LiltConfig(**{field: value})


def test_lxmert_config_keeps_unknown_keys_and_derives_layers():
    c = LxmertConfig(l_layers=2, x_layers=1, r_layers=0, my_key=7)
    assert c.my_key == 7
    assert c.num_hidden_layers == {"vision": 0, "cross_encoder": 1, "language": 2}


def test_from_pretrained_names_unknown_architectures(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "lilt", "architectures": ["LiltForMagic"]})
    )
    with pytest.raises(ValueError, match="LiltForMagic"):
        refimpl.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        refimpl.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bert"):
        load_config(tmp_path)


def test_architecture_falls_back_to_the_base_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "lxmert"}))
    assert refimpl.architecture_of(tmp_path) == "LxmertModel"


def test_bare_import_reaches_the_families_lazily():
    import subprocess
    import sys

    code = (
        "import sys, refimpl; "
        "assert 'refimpl.lilt' not in sys.modules and 'refimpl.lxmert' not in sys.modules; "
        "print(refimpl.lilt.LiltModel.__name__, refimpl.lxmert.LxmertModel.__name__, "
        "refimpl.data.path('lilt-tiny').endswith('lilt-tiny'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["LiltModel", "LxmertModel", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        refimpl.nope  # noqa: B018
