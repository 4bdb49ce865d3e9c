"""Model configs read from a checkpoint's ``config.json``.

Defaults are transformers 4.56.2's (``LiltConfig``, ``LxmertConfig`` and the
``PretrainedConfig`` fields they inherit). Unknown keys are kept as attributes, so anything a
real checkpoint carries survives a round trip. Impossible values raise ``ValueError`` naming
the field.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, ClassVar

from .ops import ACT2FN

__all__ = ["PretrainedConfig", "LiltConfig", "LxmertConfig", "load_config", "CONFIG_CLASSES"]

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class PretrainedConfig:
    """Attribute bag with transformers' shared defaults (``PretrainedConfig.__init__``).

    Label semantics are transformers': ``num_labels`` is derived from ``id2label`` (a
    disagreeing ``num_labels`` argument is ignored); without ``id2label``, ``num_labels``
    (default 2) creates ``{i: "LABEL_i"}`` and its inverse ``label2id`` (replacing any
    ``label2id`` given); with ``id2label`` but no ``label2id``, ``label2id`` stays ``None``.
    Setting ``config.num_labels`` to a new value recreates both maps. ``torch_dtype`` is
    read as ``dtype`` (a string here: no torch).
    """

    model_type: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    #: transformers 4.56.2 ``PretrainedConfig.__init__`` defaults (generation-era keys are
    #: kept only when a config carries them).
    _common: ClassVar[dict[str, Any]] = {
        "return_dict": True,
        "output_hidden_states": False,
        "output_attentions": False,
        "torchscript": False,
        "dtype": None,
        "pruned_heads": {},
        "tie_word_embeddings": True,
        "chunk_size_feed_forward": 0,
        "is_encoder_decoder": False,
        "is_decoder": False,
        "cross_attention_hidden_size": None,
        "add_cross_attention": False,
        "tie_encoder_decoder": False,
        "architectures": None,
        "finetuning_task": None,
        "id2label": None,
        "label2id": None,
        "task_specific_params": None,
        "problem_type": None,
        "tokenizer_class": None,
        "prefix": None,
        "bos_token_id": None,
        "pad_token_id": None,
        "eos_token_id": None,
        "sep_token_id": None,
        "decoder_start_token_id": None,
        "transformers_version": None,
        "tf_legacy_loss": False,
        "use_bfloat16": False,
    }

    def __init__(self, **kwargs: Any):
        num_labels = kwargs.pop("num_labels", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        values = copy.deepcopy({**self._common, **self.defaults})
        values.update(kwargs)
        if values["dtype"] is None and torch_dtype is not None:
            values["dtype"] = torch_dtype  # transformers' backward-compatible spelling
        if values["pruned_heads"] is None:
            values["pruned_heads"] = {}
        for name in ("id2label", "label2id"):
            if values[name] is not None and not isinstance(values[name], dict):
                raise ValueError(f"config.{name} must be a dictionary, got {type(values[name]).__name__}")
        for k, v in values.items():
            setattr(self, k, v)
        if self.id2label is None:
            n = 2 if num_labels is None else num_labels
            if not _is_int(n) or n < 0:
                raise ValueError(f"config.num_labels must be a non-negative integer, got {n!r}")
            self._create_id_label_maps(n)
        else:
            # JSON keys are strings; transformers keeps id2label and ignores a disagreeing num_labels.
            try:
                self.id2label = {int(k): v for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(
                    f"config.id2label keys must be integers, got {list(self.id2label)!r}"
                ) from None
        self.validate()

    def _create_id_label_maps(self, num_labels: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        """Number of classification labels: ``len(id2label)``."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if self.id2label is None or self.num_labels != num_labels:
            self._create_id_label_maps(num_labels)

    # -- validation helpers -----------------------------------------------------------------
    def _positive(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if not _is_int(v) or v <= 0:
                raise ValueError(f"config.{n} must be a positive integer, got {v!r}")

    def _probability(self, *names: str, optional: bool = False) -> None:
        # torch.nn.Dropout refuses p outside [0, 1] when the oracle builds the model.
        for n in names:
            v = getattr(self, n)
            if v is None and optional:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"config.{n} must be a probability in [0, 1], got {v!r}")

    def _activation(self, name: str) -> None:
        v = getattr(self, name)
        if not isinstance(v, str) or v not in ACT2FN:
            raise ValueError(
                f"config.{name} = {v!r} is not a supported activation; supported: {sorted(ACT2FN)}"
            )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first impossible field."""
        if self.problem_type not in (
            None,
            "regression",
            "single_label_classification",
            "multi_label_classification",
        ):
            raise ValueError(
                f"config.problem_type = {self.problem_type!r} is not one of 'regression', "
                "'single_label_classification', 'multi_label_classification'"
            )
        if self.pruned_heads:
            raise ValueError(
                f"config.pruned_heads = {self.pruned_heads!r}: pruned attention heads are not supported "
                "(the oracle would build smaller weights)"
            )
        v = self.chunk_size_feed_forward
        if not _is_int(v) or v < 0:
            raise ValueError(f"config.chunk_size_feed_forward must be a non-negative integer, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """All attributes, JSON-serialisable (``id2label`` keys as strings), with ``num_labels``
        and ``model_type``; ``type(self).from_dict(config.to_dict())`` gives an equal config."""
        d = {k: v for k, v in vars(self).items() if not k.startswith("_") or k == "_name_or_path"}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["num_labels"] = self.num_labels
        d["model_type"] = self.model_type
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a ``config.json`` dict (``model_type`` is dropped; unknown keys are kept)."""
        d = dict(d)
        d.pop("model_type", None)
        return cls(**d)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        return cls.from_dict(read_config_json(path))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

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
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        self._probability("classifier_dropout", optional=True)
        h, n, r = self.hidden_size, self.num_attention_heads, self.channel_shrink_ratio
        if h % n:
            raise ValueError(
                f"config.hidden_size ({h}) is not a multiple of config.num_attention_heads ({n})"
            )
        if h % 6:
            # six box embeddings of hidden_size // 6 are concatenated into box_linear_embeddings
            # (in_features = hidden_size)
            raise ValueError(f"config.hidden_size ({h}) must split into 6 box embeddings (a multiple of 6)")
        d = h // n
        if d // r < 1 or h // r != n * (d // r):
            # the layout stream is hidden_size // r wide and is viewed as n heads of d // r
            raise ValueError(
                f"config.channel_shrink_ratio ({r}) does not fit: the layout stream of hidden_size // ratio "
                f"= {h // r} must split into {n} heads of head size // ratio = {d // r} (>= 1)"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"config.position_embedding_type = {self.position_embedding_type!r}; "
                f"allowed: {POSITION_EMBEDDING_TYPES}"
            )
        pad = self.pad_token_id
        top = min(self.vocab_size, self.max_position_embeddings) - 1
        if not _is_int(pad) or not 0 <= pad <= top:
            # the word, position and box-position embeddings all use it as padding_idx
            raise ValueError(
                f"config.pad_token_id = {pad!r} must be in [0, {top}] (below vocab_size and "
                "max_position_embeddings: LiLT uses it as their padding index)"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"config.layer_norm_eps must be a number > 0, got {eps!r}")


class LxmertConfig(PretrainedConfig):
    """transformers.LxmertConfig. Note the oracle's LayerNorms use eps 1e-12 whatever
    ``layer_norm_eps`` says (the field is read but never used), and its embeddings use
    padding index 0 whatever ``pad_token_id`` says (default ``None``). ``num_hidden_layers``
    is derived from ``l_layers`` / ``x_layers`` / ``r_layers`` (a stored value is ignored)."""

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
        self.num_hidden_layers = {
            "vision": self.r_layers,
            "cross_encoder": self.x_layers,
            "language": self.l_layers,
        }

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
            if not _is_int(v) or v < 0:
                raise ValueError(f"config.{n} must be a non-negative integer, got {v!r}")
        self._activation("hidden_act")
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config.hidden_size ({self.hidden_size}) is not a multiple of "
                f"config.num_attention_heads ({self.num_attention_heads})"
            )


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
