"""The thin class layer shared by both families: config + weights + a call of layer functions.

A model class declares

* ``config_class`` and ``base_model_prefix`` (``"lilt"`` / ``"lxmert"``),
* ``expected_shapes(config) -> {checkpoint key: shape}`` with the prefixed key names a
  ``save_pretrained`` of the oracle's class of the same name writes,
* optionally ``tied_keys`` (``{key: source key}``: weights the oracle ties and safetensors
  drops), ``ignored_unexpected`` (regexes of checkpoint keys the oracle ignores silently) and
  ``unused_unexpected`` (regexes of weights the oracle ignores with a warning),
* ``forward(**inputs)``.

``from_pretrained`` reads ``config.json`` and the weights, matches keys strictly (see
`refimpl.checkpoints.match_state_dict`) and keeps a flat ``params`` dict keyed by the
checkpoint's own names, in the requested dtype and on the requested device.

What the match lets through, as transformers 4.56.2 does:

* buffers the oracle regenerates (`REGENERATED_BUFFERS`: LiLT's ``embeddings.position_ids``,
  which older checkpoints saved) are dropped silently;
* weights the model does not use but transformers ignores (`UNUSED_WEIGHTS`: a text model's
  ``lm_head`` that the original LiLT recipe keeps, a pooler a head model does not build; and,
  for a base model, another class's head) are dropped with one `CheckpointWarning` line that
  lists them. ``strict=True`` refuses them instead, naming every key;
* everything else unexpected, every missing weight and every shape mismatch is an error.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, ClassVar

import numpy as np

from . import backend, checkpoints, gradients
from .config import CheckpointWarning, PretrainedConfig
from .files import CheckpointError

__all__ = ["PreTrainedModel", "nest", "resolve_dtype", "REGENERATED_BUFFERS", "UNUSED_WEIGHTS"]

#: Checkpoint keys of buffers the oracle rebuilds and drops from a checkpoint silently (its
#: ``model.named_buffers()``), by ``config_class.model_type``.
REGENERATED_BUFFERS: dict[str, tuple[str, ...]] = {"lilt": (r"(^|\.)embeddings\.position_ids$",)}

#: Weights a checkpoint of a family may carry that transformers ignores (with a warning) and
#: refimpl drops with one warning line (``strict=False``), by ``config_class.model_type``:
#: a RoBERTa-like text model's masked-LM head (``gen_weight_roberta_like.py`` of the original
#: LiLT keeps it) and a pooler that a head model, built without one, does not use.
UNUSED_WEIGHTS: dict[str, tuple[str, ...]] = {"lilt": (r"^lm_head\.", r"^(lilt\.)?pooler\.")}


def _listing(title: str, keys: list[str]) -> str:
    """One section of a key-matching error, formatted as `refimpl.checkpoints.match_state_dict` does."""
    return "\n".join([f"  {title} ({len(keys)}):", *(f"    {k}" for k in keys)])


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
    ``weights`` (the same arrays nested by key path, see `nest`), ``dtype``, ``device``."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    base_model_prefix: ClassVar[str] = ""
    is_base_model: ClassVar[bool] = False
    tied_keys: ClassVar[dict[str, str]] = {}
    ignored_unexpected: ClassVar[tuple[str, ...]] = ()
    unused_unexpected: ClassVar[tuple[str, ...]] = ()

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
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype="float32",
        device: str = "cpu",
        config=None,
        strict: bool = False,
    ):
        """Load a checkpoint directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``
        / sharded sets).

        Args:
            path: the checkpoint directory.
            dtype: "float32" or "float64"; float16/bfloat16 weights are upcast.
            device: "cpu" or "cuda" (CuPy).
            config: a config to use instead of ``config.json``.
            strict: refuse weights the model does not use that transformers would ignore (see
                `UNUSED_WEIGHTS`; for a base model, also another class's head). By default
                they are dropped with one `refimpl.config.CheckpointWarning` line listing them.

        Raises:
            refimpl.checkpoints.CheckpointError: listing every missing, unexpected or misshaped key.
        """
        dt = resolve_dtype(dtype)
        if device not in backend.DEVICES:
            raise ValueError(f"device must be one of {backend.DEVICES}, got {device!r}")
        if config is None:
            config = cls.config_class.from_pretrained(path)
        source = os.fspath(path)
        state = checkpoints.load_state_dict(path, dtype=dt)
        expected = cls.expected_shapes(config)
        unused, others = cls._unused_keys(state, expected)
        if not strict:
            dropped = set(unused)
            state = {k: v for k, v in state.items() if k not in dropped}
            others = []
        # under strict, the matcher reports the `UNUSED_WEIGHTS` keys itself; another class's
        # weights it drops (a base model keeps only prefixed keys), so those are reported here
        kwargs = dict(
            prefix=cls.base_model_prefix,
            is_base_model=cls.is_base_model,
            tied=cls.tied_keys_for(config),
            ignored_unexpected=cls.ignored_unexpected
            + REGENERATED_BUFFERS.get(cls.config_class.model_type, ()),
            source=source,
        )
        try:
            params = checkpoints.match_state_dict(state, expected, **kwargs)
        except CheckpointError as e:
            if others:
                raise CheckpointError(f"{e}\n{_listing('unexpected, another class', others)}") from None
            raise
        if others:
            raise CheckpointError(
                f"checkpoint {source} does not fit the model (strict=True):\n{_listing('unexpected', others)}"
            )
        if unused and not strict:
            warnings.warn(
                f"{source}: {cls.__name__} does not use {len(unused)} checkpoint weights, ignored as "
                f"transformers ignores them (strict=True refuses them): {', '.join(unused)}",
                CheckpointWarning,
                stacklevel=2,
            )
        if device != "cpu":
            params = {k: backend.to_device(v, device) for k, v in params.items()}
        return cls(config, params, dtype=dt, device=device)

    @classmethod
    def _unused_keys(cls, state: dict[str, Any], expected: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Checkpoint keys the model does not use and transformers ignores.

        Keys are compared as `refimpl.checkpoints.match_state_dict` renames them (the base prefix
        added or removed).

        Returns:
            ``(unused, other_class)``: every such key (those matching `UNUSED_WEIGHTS` or
            ``unused_unexpected`` that name no expected weight, and another class's), and the
            part of them that is another class's: for a base model, the unprefixed keys of a
            checkpoint that has prefixed ones (``lm_head.*`` beside ``lilt.*``).
        """
        patterns = [
            re.compile(p) for p in UNUSED_WEIGHTS.get(cls.config_class.model_type, ()) + cls.unused_unexpected
        ]
        pre = cls.base_model_prefix + "." if cls.base_model_prefix else ""
        has_prefixed = bool(pre) and any(k.startswith(pre) for k in state)
        unused, other_class = [], []
        for k in state:
            if cls.is_base_model and pre and k.startswith(pre):
                model_key = k[len(pre) :]
            elif cls.is_base_model and has_prefixed:
                unused.append(k)  # the matcher drops it: a head weight of a head-model checkpoint
                other_class.append(k)
                continue
            elif pre and not has_prefixed and (pre + k) in expected:
                model_key = pre + k
            else:
                model_key = k
            if model_key not in expected and any(p.search(k) for p in patterns):
                unused.append(k)
        return unused, other_class

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

    def backward(
        self, upstream=None, seed: int = 0, tensor_grads: bool = False, **inputs
    ) -> gradients.Gradients:
        """One forward and its hand-written backward: the gradients of one scalar ``L``.

        ``L`` is the model's loss when ``inputs`` carry labels, else ``sum_X sum(X * G_X)`` over
        the array output fields with seeded standard-normal ``G_X`` (see `refimpl.gradients`).

        Args:
            upstream: ``{field: G_X}`` instead of drawing them (no labels only).
            seed: the seed of the drawn ``G_X``.
            tensor_grads: also return ``dL/d(tensor)`` for every named forward tensor.
            **inputs: the forward's keyword inputs, labels included.

        Returns:
            `refimpl.gradients.Gradients`: ``params`` (checkpoint key -> ``dL/dW``), ``tensors``
            (trace name -> ``dL/d(tensor)``, when asked), ``loss``, ``outputs``, ``upstream``, ``seed``.
        """
        return gradients.backward(self, upstream=upstream, seed=seed, tensor_grads=tensor_grads, **inputs)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, **kwargs):  # pragma: no cover - abstract
        """Run the model on transformers' keyword inputs (arrays); each class documents its own."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dtype={self.dtype.name}, device={self.device!r}, params={len(self.params)})"
