"""Model configs read from a checkpoint's ``config.json``.

Defaults are transformers 4.56.2's (``LiltConfig``, ``LxmertConfig`` and the
``PretrainedConfig`` fields they inherit). Unknown keys are kept as attributes, so anything a
real checkpoint carries survives a round trip. Impossible values raise `ConfigError`
(a `refimpl.files.CheckpointError`, hence a ``ValueError``) naming the field, and the
file when the config was read from one.

``config.json`` is read strictly (`refimpl.files.read_json`): UTF-8, no duplicate keys,
bounded size, depth and integers; a regular file only. Non-finite numbers (``NaN``,
``Infinity``) are refused except in the fields transformers' own configs fill with them
(``NONFINITE_FIELDS``). ``num_labels`` is capped at ``MAX_NUM_LABELS`` before ``id2label``
is built, and every size at ``refimpl.files.MAX_ELEMENTS``; the weights must then hold
exactly the shapes the sizes imply (strict key matching).
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from typing import Any, ClassVar

from .files import MAX_ELEMENTS, CheckpointError, read_json, short_repr
from .ops import ACT2FN

__all__ = [
    "PretrainedConfig",
    "LiltConfig",
    "LxmertConfig",
    "ConfigError",
    "load_config",
    "read_config_json",
    "CONFIG_CLASSES",
    "MODEL_TYPE_ALIASES",
    "CheckpointWarning",
    "MAX_NUM_LABELS",
    "MAX_CONFIG_BYTES",
    "NONFINITE_FIELDS",
]

POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")

#: The most labels a config may ask for: checked before ``id2label`` is built.
MAX_NUM_LABELS = 1_000_000
#: The most bytes a ``config.json`` may hold (the largest published configs, with an
#: ``id2label`` of 21,841 ImageNet-22k classes, are about 2 MB): parsing one costs at most
#: ~20 times its size, so 8 MiB stays far below a gigabyte.
MAX_CONFIG_BYTES = 8 << 20
#: Top-level config fields where transformers' own configs carry non-finite numbers
#: (``Mamba2Config.time_step_limit`` defaults to ``(0.0, inf)``); refused everywhere else.
NONFINITE_FIELDS = frozenset({"time_step_limit"})


class ConfigError(CheckpointError):
    """An impossible or hostile config value; the message names the field (and the file)."""


class CheckpointWarning(UserWarning):
    """A checkpoint loads, but not exactly as written: another ``model_type`` read as ours, a
    default filled in, weights the model does not use. One line each, naming the file."""


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
        for k in kwargs:
            if (
                not isinstance(k, str)
                or k.startswith("__")
                or (k not in values and k != "model_type" and hasattr(type(self), k))
            ):
                raise ConfigError(
                    f"config field {short_repr(k)} is not allowed: it would replace a method or "
                    "attribute of the config class"
                )
        values.update(kwargs)
        if values["dtype"] is None and torch_dtype is not None:
            values["dtype"] = torch_dtype  # transformers' backward-compatible spelling
        if values["pruned_heads"] is None:
            values["pruned_heads"] = {}
        for name in ("id2label", "label2id"):
            if values[name] is not None and not isinstance(values[name], dict):
                raise ConfigError(f"config.{name} must be a dictionary, got {type(values[name]).__name__}")
        for k, v in values.items():
            setattr(self, k, v)
        if self.id2label is None:
            n = 2 if num_labels is None else num_labels
            self._create_id_label_maps(n)
        else:
            # JSON keys are strings; transformers keeps id2label and ignores a disagreeing num_labels.
            try:
                self.id2label = {int(k): v for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                raise ConfigError(
                    f"config.id2label keys must be integers, got {short_repr(list(self.id2label))}"
                ) from None
        self.validate()

    def _create_id_label_maps(self, num_labels: int) -> None:
        if not _is_int(num_labels) or not 0 <= num_labels <= MAX_NUM_LABELS:
            raise ConfigError(
                f"config.num_labels must be an integer in [0, {MAX_NUM_LABELS}], got {short_repr(num_labels)}"
            )
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
            if not _is_int(v) or not 0 < v <= MAX_ELEMENTS:
                raise ConfigError(
                    f"config.{n} must be a positive integer up to {MAX_ELEMENTS}, got {short_repr(v)}"
                )

    def _probability(self, *names: str, optional: bool = False) -> None:
        # torch.nn.Dropout refuses p outside [0, 1] when the oracle builds the model.
        for n in names:
            v = getattr(self, n)
            if v is None and optional:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"config.{n} must be a probability in [0, 1], got {short_repr(v)}")

    def _activation(self, name: str) -> None:
        v = getattr(self, name)
        if not isinstance(v, str) or v not in ACT2FN:
            raise ConfigError(
                f"config.{name} = {short_repr(v)} is not a supported activation; supported: {sorted(ACT2FN)}"
            )

    def _finite(self) -> None:
        for k, v in vars(self).items():
            if k not in NONFINITE_FIELDS and _nonfinite(v):
                raise ConfigError(f"config.{k} holds a non-finite number ({short_repr(v)})")

    def validate(self) -> None:
        """Raise `ConfigError` (a ``ValueError``) naming the first impossible field."""
        self._finite()
        if self.problem_type not in (
            None,
            "regression",
            "single_label_classification",
            "multi_label_classification",
        ):
            raise ConfigError(
                f"config.problem_type = {short_repr(self.problem_type)} is not one of 'regression', "
                "'single_label_classification', 'multi_label_classification'"
            )
        if self.pruned_heads:
            raise ConfigError(
                f"config.pruned_heads = {short_repr(self.pruned_heads)}: pruned attention heads are not supported "
                "(the oracle would build smaller weights)"
            )
        v = self.chunk_size_feed_forward
        if not _is_int(v) or v < 0:
            raise ConfigError(
                f"config.chunk_size_feed_forward must be a non-negative integer, got {short_repr(v)}"
            )

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
    def loading_notes(cls, d: dict[str, Any]) -> list[str]:
        """What reading the ``config.json`` dict ``d`` as this class changes, one line each
        (warned by `from_pretrained` and `load_config`): a ``model_type`` of
        `MODEL_TYPE_ALIASES` read as ``cls.model_type``."""
        mt = d.get("model_type")
        if mt is not None and mt != cls.model_type and MODEL_TYPE_ALIASES.get(mt) == cls.model_type:
            return [
                f"model_type {mt!r} ({MODEL_TYPE_SOURCES[mt]}) is read as {cls.model_type!r}, "
                f"as transformers' {cls.__name__}.from_pretrained reads it"
            ]
        return []

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike):
        """Read ``config.json`` from a checkpoint directory (or the file itself).

        Raises:
            FileNotFoundError: no config.json.
            ConfigError: naming the file and the field (see `read_config_json`).
        """
        return _from_file(cls, read_config_json(path), _config_path(path))

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
            raise ConfigError(
                f"config.hidden_size ({h}) is not a multiple of config.num_attention_heads ({n})"
            )
        if h % 6:
            # six box embeddings of hidden_size // 6 are concatenated into box_linear_embeddings
            # (in_features = hidden_size)
            raise ConfigError(f"config.hidden_size ({h}) must split into 6 box embeddings (a multiple of 6)")
        d = h // n
        if d // r < 1 or h // r != n * (d // r):
            # the layout stream is hidden_size // r wide and is viewed as n heads of d // r
            raise ConfigError(
                f"config.channel_shrink_ratio ({r}) does not fit: the layout stream of hidden_size // ratio "
                f"= {h // r} must split into {n} heads of head size // ratio = {d // r} (>= 1)"
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ConfigError(
                f"config.position_embedding_type = {short_repr(self.position_embedding_type)}; "
                f"allowed: {POSITION_EMBEDDING_TYPES}"
            )
        pad = self.pad_token_id
        top = min(self.vocab_size, self.max_position_embeddings) - 1
        if not _is_int(pad) or not 0 <= pad <= top:
            # the word, position and box-position embeddings all use it as padding_idx
            raise ConfigError(
                f"config.pad_token_id = {short_repr(pad)} must be in [0, {top}] (below vocab_size and "
                "max_position_embeddings: LiLT uses it as their padding index)"
            )
        _check_eps(self.layer_norm_eps)

    @classmethod
    def loading_notes(cls, d: dict[str, Any]) -> list[str]:
        """The model-type note, and one for a ``config.json`` without ``pad_token_id``: LiLT
        numbers its positions from ``pad_token_id + 1``, so the default changes every output."""
        notes = super().loading_notes(d)
        if "pad_token_id" not in d:
            pad = cls.defaults["pad_token_id"]
            notes.append(
                f"no pad_token_id: using {pad}, transformers' LiltConfig default; LiLT derives its position "
                f"ids from it (padding index, then pad_token_id + 1, + 2, ...), and RoBERTa-based "
                f"checkpoints use 1 (RobertaConfig's default, which the original LiLT code inherits): "
                f'add "pad_token_id" to config.json if {pad} is not what the checkpoint was trained with'
            )
        return notes


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
            if not _is_int(v) or not 0 <= v <= MAX_ELEMENTS:
                raise ConfigError(f"config.{n} must be a non-negative integer, got {short_repr(v)}")
        self._activation("hidden_act")
        _check_eps(self.layer_norm_eps)  # unused by the oracle, but an absurd value is a broken file
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config.hidden_size ({self.hidden_size}) is not a multiple of "
                f"config.num_attention_heads ({self.num_attention_heads})"
            )


def _nonfinite(v: Any, depth: int = 0) -> bool:
    """Whether a config value holds a non-finite float anywhere (JSON nesting is bounded)."""
    if isinstance(v, float):
        return not math.isfinite(v)
    if depth > 64:
        return False
    if isinstance(v, dict):
        return any(_nonfinite(x, depth + 1) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_nonfinite(x, depth + 1) for x in v)
    return False


def _check_eps(eps: Any) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ConfigError(f"config.layer_norm_eps must be a finite number > 0, got {short_repr(eps)}")


CONFIG_CLASSES = {"lilt": LiltConfig, "lxmert": LxmertConfig}

#: Other ``model_type`` names read as one of ours (with a `CheckpointWarning`), as
#: transformers' ``LiltConfig.from_pretrained`` reads them: the original LiLT repository
#: (github.com/jpWang/LiLT) writes "liltrobertalike" in the checkpoints its recipe makes.
MODEL_TYPE_ALIASES = {"liltrobertalike": "lilt"}
MODEL_TYPE_SOURCES = {
    "liltrobertalike": "the original LiLT repository's, jpWang/LiLT, written by its gen_weight_roberta_like.py"
}


def _config_path(path: str | os.PathLike) -> str:
    p = os.fspath(path)
    return os.path.join(p, "config.json") if os.path.isdir(p) else p


def _from_file(cls: type[PretrainedConfig], d: dict[str, Any], path: str) -> PretrainedConfig:
    """``cls.from_dict(d)`` with any error naming the file it came from; each of
    ``cls.loading_notes(d)`` is warned as one `CheckpointWarning` line naming the file."""
    try:
        config = cls.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (TypeError, ValueError) as e:  # e.g. a field a class constructor cannot take
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    for note in cls.loading_notes(d):
        warnings.warn(f"{path}: {note}", CheckpointWarning, stacklevel=3)
    return config


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse ``config.json`` strictly (``path`` is the checkpoint directory or the file).

    Returns:
        the JSON object. ``model_type`` is a string when present; ``architectures`` a list of
        strings or null.

    Raises:
        FileNotFoundError: no config.json.
        ConfigError: naming the file and the position or field: not a regular file, over
            ``MAX_CONFIG_BYTES`` (8 MiB), not UTF-8, not JSON, a duplicate key, too
            deep, an integer of more than 20 digits, a non-finite number outside
            ``NONFINITE_FIELDS``, not an object, a mistyped ``model_type`` / ``architectures``.
    """
    p = _config_path(path)
    if not os.path.lexists(p):
        raise FileNotFoundError(f"no config.json at {p}")
    try:
        d = read_json(p, p, max_bytes=MAX_CONFIG_BYTES, allow_nonfinite=True)
    except ConfigError:
        raise
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p} must hold a JSON object, not {type(d).__name__}")
    for k, v in d.items():
        if k not in NONFINITE_FIELDS and _nonfinite(v):
            raise ConfigError(f"{p}: config.{k} holds a non-finite number ({short_repr(v)})")
    if "model_type" in d and not isinstance(d["model_type"], str):
        raise ConfigError(f"{p}: config.model_type must be a string, got {short_repr(d['model_type'])}")
    archs = d.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{p}: config.architectures must be a list of strings, got {short_repr(archs)}")
    return d


def load_config(path: str | os.PathLike) -> PretrainedConfig:
    """Read ``config.json`` and return the config class its ``model_type`` names.

    Raises:
        FileNotFoundError: no config.json.
        ConfigError: naming the file and the field.
    """
    d = read_config_json(path)
    mt = d.get("model_type")
    mt = MODEL_TYPE_ALIASES.get(mt, mt)
    if mt not in CONFIG_CLASSES:
        raise ConfigError(
            f"{_config_path(path)}: config.model_type = {short_repr(mt)} is not supported; "
            f"supported: {sorted(CONFIG_CLASSES)}"
        )
    return _from_file(CONFIG_CLASSES[mt], d, _config_path(path))
