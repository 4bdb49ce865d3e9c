"""Model configs read from a checkpoint's ``config.json``.

Defaults are transformers 4.56.2's (``LiltConfig``, ``LxmertConfig`` and the
``PretrainedConfig`` fields they inherit). Unknown keys are kept as attributes, so anything a
real checkpoint carries survives a round trip. Impossible values raise ``ValueError`` naming
the field.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from .ops import ACT2FN

__all__ = ["PretrainedConfig", "LiltConfig", "LxmertConfig", "load_config", "CONFIG_CLASSES"]

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")


class PretrainedConfig:
    """Attribute bag with transformers' shared defaults.

    Attributes that matter here: ``architectures``, ``num_labels`` (from ``id2label`` when
    present, else 2), ``problem_type``, ``pad_token_id``, ``tie_word_embeddings``.
    """

    model_type: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    _common: ClassVar[dict[str, Any]] = {
        "architectures": None,
        "problem_type": None,
        "tie_word_embeddings": True,
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "id2label": None,
        "label2id": None,
    }

    def __init__(self, **kwargs: Any):
        values = {**self._common, **self.defaults, **kwargs}
        num_labels = values.pop("num_labels", None)
        for k, v in values.items():
            setattr(self, k, v)
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                # transformers keeps id2label and ignores a disagreeing num_labels
                pass
            self.num_labels = len(self.id2label)
        else:
            self.num_labels = 2 if num_labels is None else int(num_labels)
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.validate()

    # -- validation helpers -----------------------------------------------------------------
    def _positive(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"config.{n} must be a positive integer, got {v!r}")

    def _activation(self, name: str) -> None:
        v = getattr(self, name)
        if v not in ACT2FN:
            raise ValueError(f"config.{name} = {v!r} is not a supported activation; supported: {sorted(ACT2FN)}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible field."""
        if self.problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ValueError(f"config.problem_type = {self.problem_type!r} is not a known problem type")

    def to_dict(self) -> dict[str, Any]:
        """All attributes, JSON-serialisable, with ``model_type``."""
        d = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["model_type"] = self.model_type
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        d.pop("model_type", None)
        return cls(**d)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        return cls.from_dict(read_config_json(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True, default=str)})"


class LiltConfig(PretrainedConfig):
    """transformers.LiltConfig. Defaults are the library's, not those of the hub checkpoints
    (``SCUT-DLVCLab/lilt-roberta-en-base`` has vocab 50265, 514 positions, type vocab 1,
    pad id 1, eps 1e-5: its ``config.json`` says so and wins)."""

    model_type = "lilt"
    defaults = {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "classifier_dropout": None,
        "channel_shrink_ratio": 4,
        "max_2d_position_embeddings": 1024,
    }

    def validate(self) -> None:
        super().validate()
        self._positive(
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "channel_shrink_ratio",
            "max_2d_position_embeddings",
        )
        self._activation("hidden_act")
        h, n, r = self.hidden_size, self.num_attention_heads, self.channel_shrink_ratio
        if h % n:
            raise ValueError(f"config.hidden_size ({h}) is not a multiple of config.num_attention_heads ({n})")
        if h % 6:
            raise ValueError(f"config.hidden_size ({h}) must split into 6 box embeddings (a multiple of 6)")
        if h % r or (h // n) % r:
            raise ValueError(
                f"config.channel_shrink_ratio ({r}) must divide config.hidden_size ({h}) and the head size ({h // n})"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"config.position_embedding_type = {self.position_embedding_type!r}; "
                f"allowed: {POSITION_EMBEDDING_TYPES}"
            )
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"config.pad_token_id = {self.pad_token_id!r} must be in [0, {self.vocab_size - 1}] (LiLT needs it)"
            )
        if self.layer_norm_eps is None or not self.layer_norm_eps > 0:
            raise ValueError(f"config.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")


class LxmertConfig(PretrainedConfig):
    """transformers.LxmertConfig. Note the oracle's LayerNorms use eps 1e-12 whatever
    ``layer_norm_eps`` says (the field is read but never used)."""

    model_type = "lxmert"
    defaults = {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_qa_labels": 9500,
        "num_object_labels": 1600,
        "num_attr_labels": 400,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "l_layers": 9,
        "x_layers": 5,
        "r_layers": 5,
        "visual_feat_dim": 2048,
        "visual_pos_dim": 4,
        "visual_loss_normalizer": 6.67,
        "task_matched": True,
        "task_mask_lm": True,
        "task_obj_predict": True,
        "task_qa": True,
        "visual_obj_loss": True,
        "visual_attr_loss": True,
        "visual_feat_loss": True,
    }

    def __init__(self, **kwargs: Any):
        kwargs.pop("num_hidden_layers", None)  # derived, as in transformers
        super().__init__(**kwargs)
        self.num_hidden_layers = {"vision": self.r_layers, "cross_encoder": self.x_layers, "language": self.l_layers}

    def validate(self) -> None:
        super().validate()
        self._positive(
            "vocab_size",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "visual_feat_dim",
            "visual_pos_dim",
            "num_qa_labels",
            "num_object_labels",
            "num_attr_labels",
        )
        for n in ("l_layers", "x_layers", "r_layers"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"config.{n} must be a non-negative integer, got {v!r}")
        self._activation("hidden_act")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.hidden_size ({self.hidden_size}) is not a multiple of "
                f"config.num_attention_heads ({self.num_attention_heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("num_hidden_layers", None)
        return d


CONFIG_CLASSES = {"lilt": LiltConfig, "lxmert": LxmertConfig}


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse ``config.json`` (``path`` is the checkpoint directory or the file)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "config.json")
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no config.json at {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p} must hold a JSON object")
    return d


def load_config(path: str | os.PathLike) -> PretrainedConfig:
    """Read ``config.json`` and return the config class its ``model_type`` names."""
    d = read_config_json(path)
    mt = d.get("model_type")
    if mt not in CONFIG_CLASSES:
        raise ValueError(f"config.model_type = {mt!r} is not supported; supported: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[mt].from_dict(d)
