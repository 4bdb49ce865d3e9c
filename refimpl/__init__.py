"""refimpl: a NumPy-only reference implementation of LiLT and LXMERT, equal to transformers 4.56.2.

Examples:
    >>> import refimpl
    >>> model = refimpl.from_pretrained("path/to/checkpoint", dtype="float64")  # doctest: +SKIP
    >>> out = model(input_ids=ids, bbox=boxes, attention_mask=mask)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
import warnings

from . import fast as _fast  # noqa: F401  (registers the fast kernels: the default mode)
from .files import CheckpointError as CheckpointError  # every problem with a file raises it
from .switch import reference as reference  # run the plain formulas: ``with refimpl.reference(): ...``

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "from_pretrained",
    "SUPPORTED_ARCHITECTURES",
    "BASE_MODELS",
    "CheckpointError",
    "reference",
    "lilt",
    "lxmert",
    "data",
]

#: Subpackages reachable as attributes after a bare ``import refimpl``, imported on first use
#: (``refimpl.lilt.LiltModel``), so that ``import refimpl`` itself stays cheap.
_LAZY_SUBMODULES = ("lilt", "lxmert", "data", "golden", "trace", "ops", "checkpoints", "config")


def __getattr__(name: str):
    """Import a subpackage of `_LAZY_SUBMODULES` when it is first used as an attribute."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: architecture name (``config.json``'s ``architectures[0]``) -> "module:Class".
SUPPORTED_ARCHITECTURES = {
    "LiltModel": "refimpl.lilt:LiltModel",
    "LiltForSequenceClassification": "refimpl.lilt:LiltForSequenceClassification",
    "LiltForTokenClassification": "refimpl.lilt:LiltForTokenClassification",
    "LiltForQuestionAnswering": "refimpl.lilt:LiltForQuestionAnswering",
    "LxmertModel": "refimpl.lxmert:LxmertModel",
    "LxmertForPreTraining": "refimpl.lxmert:LxmertForPreTraining",
    "LxmertForQuestionAnswering": "refimpl.lxmert:LxmertForQuestionAnswering",
    # the original LiLT repository's classes (github.com/jpWang/LiLT, LiLTfinetune/models/LiLTRobertaLike)
    "LiLTRobertaLikeModel": "refimpl.lilt:LiltModel",
    "LiLTRobertaLikeForTokenClassification": "refimpl.lilt.original:LiLTRobertaLikeForTokenClassification",
    "LiLTRobertaLikeForRelationExtraction": "refimpl.lilt.original:LiLTRobertaLikeForRelationExtraction",
}

#: model_type -> base architecture, used when ``architectures`` is absent.
BASE_MODELS = {"lilt": "LiltModel", "lxmert": "LxmertModel", "liltrobertalike": "LiltModel"}


def model_class(name: str):
    """Import and return the class for an architecture name (see ``SUPPORTED_ARCHITECTURES``)."""
    if name not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architecture {name!r} is not supported; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    module, cls = SUPPORTED_ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def architecture_of(path: str | os.PathLike) -> str:
    """The architecture ``from_pretrained`` would build for a checkpoint directory.

    Raises:
        refimpl.config.ConfigError: (a ``CheckpointError``, so a ``ValueError``) naming
            ``config.json`` and the field, for an architecture or model type refimpl lacks.
    """
    # lazy: config imports the ops and their kernels; a bare `import refimpl` stays cheap
    from .config import MODEL_TYPE_ALIASES, CheckpointWarning, ConfigError, _config_path, read_config_json

    d = read_config_json(path)
    where = _config_path(path)
    archs = d.get("architectures") or []
    mt = d.get("model_type")
    if archs:
        if archs[0] in SUPPORTED_ARCHITECTURES:
            return archs[0]
        if mt in MODEL_TYPE_ALIASES and mt in BASE_MODELS and not archs[0].lower().startswith("lilt"):
            # gen_weight_roberta_like.py copies the text model's config.json (RobertaForMaskedLM's,
            # XLMRobertaForMaskedLM's), architectures included; a LiLT class we lack is an error
            base = BASE_MODELS[mt]
            warnings.warn(
                f"{where}: architectures[0] = {archs[0]!r} is the text model's, copied into this "
                f"model_type {mt!r} config by the original LiLT recipe; loading {base}",
                CheckpointWarning,
                stacklevel=3,
            )
            return base
        raise ConfigError(
            f"{where}: architectures[0] = {archs[0]!r} is not supported; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    if mt not in BASE_MODELS:
        raise ConfigError(f"{where}: model_type = {mt!r} is not supported; supported: {sorted(BASE_MODELS)}")
    return BASE_MODELS[mt]


def from_pretrained(
    path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", strict: bool = False
):
    """Load a checkpoint directory as the class its ``config.json`` names.

    Picks ``architectures[0]``, falling back to the base model of ``model_type``. A checkpoint
    of the original LiLT recipe (``model_type: "liltrobertalike"``, the text model's
    ``architectures`` left in) loads as ``LiltModel``, with a `refimpl.config.CheckpointWarning`.

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
            (or a sharded set with its ``*.index.json``).
        dtype: "float32" or "float64".
        device: "cpu" or "cuda" (needs CuPy).
        strict: refuse checkpoint weights the model does not use (a text model's ``lm_head``,
            a pooler a head model does not build, another class's head), instead of ignoring
            them with one warning line as transformers does.
    """
    return model_class(architecture_of(path)).from_pretrained(path, dtype=dtype, device=device, strict=strict)
