"""A strict stand-in for a device array library, to prove that layer code dispatches every op.

On a GPU, layer code must do all its math through ``xp = get_namespace(x)`` (CuPy there)
and array methods/operators: a stray ``np.exp(x)`` or ``np.asarray(x)`` on a device array
either fails or silently copies to the host. On a CPU-only machine we cannot run CuPy, so we
run the models on :class:`StrictArray` instead, which behaves like a CuPy array:

* math through :class:`StrictNamespace` (installed as ``backend._namespace_override``),
  array methods and Python operators works, and returns :class:`StrictArray`;
* a plain NumPy function or ufunc applied to it (``np.exp(x)``, ``np.matmul(x, w)``),
  an implicit conversion (``np.asarray(x)``) or mixing it with a plain ``np.ndarray``
  (``x + plain``, ``xp.matmul(x, plain)``, ``x[plain_index]``) records a
  :class:`DispatchViolation` and raises it.

Values are computed by NumPy underneath, so a strict run must equal a plain run exactly.

    with strict_namespace() as ns:
        out = model(**wrap_tree(inputs))       # params wrapped with wrap_tree too
    assert ns.violations == [] and ns.calls   # every op went through the dispatch
"""

from __future__ import annotations

import contextlib
import importlib.util
import operator
import sys
import types
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from refimpl import backend

__all__ = [
    "DispatchViolation",
    "StrictArray",
    "StrictNamespace",
    "strict_namespace",
    "wrap_tree",
    "unwrap_tree",
]


class DispatchViolation(TypeError):
    """A plain NumPy call touched a (stand-in) device array."""


#: Every violation seen since the last :func:`strict_namespace` started (kept even when the
#: model code catches the exception).
VIOLATIONS: list[str] = []


def _violate(message: str):
    VIOLATIONS.append(message)
    raise DispatchViolation(message)


def _wrap(x: Any) -> Any:
    """ndarray / NumPy scalar -> StrictArray (CuPy returns 0-d arrays where NumPy returns scalars)."""
    if isinstance(x, StrictArray):
        return x
    if isinstance(x, np.ndarray):
        return StrictArray(x)
    if isinstance(x, np.generic):
        return StrictArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _unwrap(x: Any, where: str, allow_plain: bool = False) -> Any:
    """StrictArray -> ndarray, recursively; a plain ndarray is a violation unless ``allow_plain``."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, np.ndarray) and not allow_plain:
        _violate(f"{where}: a plain numpy.ndarray {x.shape} {x.dtype} was mixed with a device array")
    if isinstance(x, tuple):
        return tuple(_unwrap(v, where, allow_plain) for v in x)
    if isinstance(x, list):
        return [_unwrap(v, where, allow_plain) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, where, allow_plain) for k, v in x.items()}
    return x


class StrictArray:
    """A device-array stand-in holding a NumPy array; refuses plain NumPy functions (see module doc)."""

    __slots__ = ("_a",)

    def __init__(self, a: np.ndarray):
        self._a = a

    # -- what a device array refuses -------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        _violate(f"implicit conversion of a device array {self._a.shape} to numpy (np.asarray / np.array)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _violate(f"numpy ufunc np.{ufunc.__name__}.{method} called on a device array")

    def __array_function__(self, func, types, args, kwargs):
        _violate(f"numpy function np.{func.__name__} called on a device array")

    # -- plain attributes and methods ------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__array") or name in ("ctypes", "data", "tofile", "tobytes"):
            _violate(f"host-memory access .{name} on a device array")
        attr = getattr(self._a, name)
        if callable(attr):

            def method(*args, **kwargs):
                where = f"ndarray.{name}"
                return _wrap(attr(*_unwrap(args, where), **_unwrap(kwargs, where)))

            return method
        return _wrap(attr)

    def get(self) -> np.ndarray:
        """The host copy, as ``cupy.ndarray.get()``."""
        return self._a.copy()

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "indexing")])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "indexing")] = _unwrap(value, "item assignment")

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __index__(self) -> int:
        return operator.index(self._a)

    def __repr__(self) -> str:
        return f"StrictArray({self._a!r})"

    __hash__ = None  # type: ignore[assignment]


def _binary(name: str):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_unwrap(other, f"operator {name}")))

    op.__name__ = name
    return op


def _inplace(name: str):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other, f"operator {name}"))
        return self

    op.__name__ = name
    return op


def _unary(name: str):
    def op(self):
        return _wrap(getattr(self._a, name)())

    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(StrictArray, f"__{_n}__", _binary(f"__{_n}__"))
    setattr(StrictArray, f"__r{_n}__", _binary(f"__r{_n}__"))
    setattr(StrictArray, f"__i{_n}__", _inplace(f"__i{_n}__"))
for _n in ("eq", "ne", "lt", "le", "gt", "ge", "lshift", "rshift"):
    setattr(StrictArray, f"__{_n}__", _binary(f"__{_n}__"))
for _n in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_n}__", _unary(f"__{_n}__"))

# Constructors that legitimately take host data (as cupy.asarray does): plain arrays allowed.
_HOST_TO_DEVICE = {"asarray", "array", "ascontiguousarray", "asanyarray"}


class StrictNamespace:
    """A stand-in for ``cupy``: NumPy's functions, taking and returning :class:`StrictArray`.

    Attributes:
        calls: Counter of the namespace functions layer code called (``"matmul"``, ``"exp"``, ...).
        violations: the shared list of :class:`DispatchViolation` messages.
    """

    def __init__(self, module: types.ModuleType = np, calls: Counter | None = None, prefix: str = ""):
        self._module = module
        self._prefix = prefix
        self.calls = Counter() if calls is None else calls
        self.violations = VIOLATIONS

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            return StrictNamespace(attr, self.calls, f"{self._prefix}{name}.")
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes (xp.float32), finfo, constants (xp.pi, xp.newaxis)
        full = self._prefix + name

        def function(*args, **kwargs):
            self.calls[full] += 1
            allow = name in _HOST_TO_DEVICE
            where = f"xp.{full}"
            return _wrap(attr(*_unwrap(args, where, allow), **_unwrap(kwargs, where, allow)))

        function.__name__ = name
        return function

    def __repr__(self) -> str:
        return "<StrictNamespace (a CuPy stand-in over numpy)>"


def wrap_tree(x: Any) -> Any:
    """Wrap every ndarray in a (nested dict / list / tuple of) arrays as :class:`StrictArray`."""
    if isinstance(x, dict):
        return {k: wrap_tree(v) for k, v in x.items()}
    return _wrap(x)


def unwrap_tree(x: Any) -> Any:
    """Inverse of :func:`wrap_tree`; also unwraps the array fields of output dataclasses."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, dict):
        return {k: unwrap_tree(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple (the gradients)
        return type(x)(*(unwrap_tree(v) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(unwrap_tree(v) for v in x)
    if hasattr(x, "__dataclass_fields__"):
        return {k: unwrap_tree(getattr(x, k)) for k in x.__dataclass_fields__}
    return x


def _host_erf(x: StrictArray, out: StrictArray | None = None) -> StrictArray:
    """Stand-in for ``cupyx.scipy.special.erf``: a device function computed by refimpl's NumPy erf."""
    from refimpl import ops

    if not isinstance(x, StrictArray) or not (out is None or isinstance(out, StrictArray)):
        _violate("cupyx.scipy.special.erf called on a non-device array")
    previous = backend._namespace_override
    backend._namespace_override = None
    try:
        y = ops.erf(x._a.copy())
    finally:
        backend._namespace_override = previous
    if out is None:
        return StrictArray(y)
    out._a[...] = y
    return out


def _fake_cupyx() -> dict[str, types.ModuleType]:
    """``cupyx.scipy.special`` with :func:`_host_erf`, for code that takes CuPy's special functions."""
    cupyx, scipy, special = (types.ModuleType(n) for n in ("cupyx", "cupyx.scipy", "cupyx.scipy.special"))
    special.erf = _host_erf
    cupyx.scipy, scipy.special = scipy, special
    return {"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}


@contextlib.contextmanager
def strict_namespace() -> Iterator[StrictNamespace]:
    """Install a :class:`StrictNamespace` as ``backend._namespace_override`` for the block (and a
    ``cupyx.scipy.special`` stand-in when CuPy is not installed)."""
    previous = backend._namespace_override
    VIOLATIONS.clear()
    ns = StrictNamespace()
    fakes = {} if importlib.util.find_spec("cupyx") else _fake_cupyx()
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    backend._namespace_override = ns
    try:
        yield ns
    finally:
        backend._namespace_override = previous
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
