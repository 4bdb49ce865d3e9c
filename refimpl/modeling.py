"""The thin class layer shared by both families: config + weights + a call of layer functions.

A model class declares

* ``config_class`` and ``base_model_prefix`` (``"lilt"`` / ``"lxmert"``),
* ``expected_shapes(config) -> {checkpoint key: shape}`` with the prefixed key names a
  ``save_pretrained`` of the oracle's class of the same name writes,
* optionally ``tied_keys`` (``{key: source key}``: weights the oracle ties and safetensors
  drops) and ``ignored_unexpected`` (regexes of checkpoint keys the oracle ignores),
* ``forward(**inputs)``.

``from_pretrained`` reads ``config.json`` and the weights, matches keys strictly (see
:func:`refimpl.checkpoints.match_state_dict`) and keeps a flat ``params`` dict keyed by the
checkpoint's own names, in the requested dtype and on the requested device.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from . import backend, checkpoints
from .config import PretrainedConfig

__all__ = ["PreTrainedModel", "nest", "resolve_dtype"]


def resolve_dtype(dtype: Any) -> np.dtype:
    """Map ``"float32"``/``"float64"`` (or the NumPy types) to a NumPy dtype; anything else is an error."""
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in backend.DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(key)


def nest(params: dict[str, Any]) -> dict[str, Any]:
    """Turn flat checkpoint keys into nested dicts: ``"a.b.weight"`` -> ``{"a": {"b": {"weight": ...}}}``.

    The arrays are shared, not copied; a model nests its weights once, at load.
    """
    tree: dict[str, Any] = {}
    for key, value in params.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class PreTrainedModel:
    """Base of every model class. Holds ``config``, ``params`` (checkpoint key -> array),
    ``weights`` (the same arrays nested by key path, see :func:`nest`), ``dtype``, ``device``."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    base_model_prefix: ClassVar[str] = ""
    is_base_model: ClassVar[bool] = False
    tied_keys: ClassVar[dict[str, str]] = {}
    ignored_unexpected: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, config: PretrainedConfig, params: dict[str, Any], dtype="float32", device: str = "cpu"
    ):
        self.config = config
        self.dtype = resolve_dtype(dtype)
        self.device = device
        self.params = params
        self.weights = nest(params)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def expected_shapes(cls, config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape of every weight the class needs, named as the oracle class's ``save_pretrained`` writes them."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", device: str = "cpu", config=None):
        """Load a checkpoint directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``
        / sharded sets).

        Args:
            path: the checkpoint directory.
            dtype: "float32" or "float64"; float16/bfloat16 weights are upcast.
            device: "cpu" or "cuda" (CuPy).
            config: a config to use instead of ``config.json``.

        Raises:
            refimpl.checkpoints.CheckpointError: listing every missing, unexpected or misshaped key.
        """
        dt = resolve_dtype(dtype)
        if device not in backend.DEVICES:
            raise ValueError(f"device must be one of {backend.DEVICES}, got {device!r}")
        if config is None:
            config = cls.config_class.from_pretrained(path)
        state = checkpoints.load_state_dict(path, dtype=dt)
        params = checkpoints.match_state_dict(
            state,
            cls.expected_shapes(config),
            prefix=cls.base_model_prefix,
            is_base_model=cls.is_base_model,
            tied=cls.tied_keys_for(config),
            ignored_unexpected=cls.ignored_unexpected,
            source=os.fspath(path),
        )
        if device != "cpu":
            params = {k: backend.to_device(v, device) for k, v in params.items()}
        return cls(config, params, dtype=dt, device=device)

    @classmethod
    def tied_keys_for(cls, config: PretrainedConfig) -> dict[str, str]:
        """Tied weights for this config (``{key: source key}``); default ``tied_keys``."""
        return dict(cls.tied_keys)

    def to(self, device: str):
        """Move every weight to ``device`` ("cpu" or "cuda") and return ``self``."""
        self.params = {k: backend.to_device(v, device) for k, v in self.params.items()}
        self.weights = nest(self.params)  # the nested view must hold the moved arrays
        self.device = device
        return self

    def _array(self, x):
        """Lists/scalars -> arrays; host arrays -> the model's device. Arrays already there pass through."""
        if x is None:
            return None
        if not hasattr(x, "shape"):
            x = np.asarray(x)
        if self.device != "cpu" and not backend.is_device_array(x):
            x = backend.to_device(x, self.device)
        return x

    def _flags(self, output_attentions, output_hidden_states) -> tuple[bool, bool]:
        """The output flags, an unset one taking the config's value (config.json may set it), as the oracle."""
        c = self.config
        if output_attentions is None:
            output_attentions = getattr(c, "output_attentions", False)
        if output_hidden_states is None:
            output_hidden_states = getattr(c, "output_hidden_states", False)
        return bool(output_attentions), bool(output_hidden_states)

    def num_parameters(self) -> int:
        """Number of scalar weights (tied weights counted once)."""
        return int(sum(int(np.prod(v.shape)) for v in self.params.values()))

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, **kwargs):  # pragma: no cover - abstract
        """Run the model on transformers' keyword inputs (arrays); each class documents its own."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dtype={self.dtype.name}, device={self.device!r}, params={len(self.params)})"
