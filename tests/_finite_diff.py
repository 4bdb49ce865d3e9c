"""Central finite differences in float64: an independent check of hand-written gradients.

``check_gradients(loss, arrays, grads)`` perturbs sampled entries of each float64 array in
place, re-evaluates the scalar ``loss()`` and compares the numerical derivative with the
analytic gradient. No torch: it checks the calculus, not agreement with another program.

The stencil and the step:

* The fourth-order central stencil
  ``f'(x) ~ (-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / (12 h)`` has truncation error
  ``h^4 f^(5) / 30``; the plain central difference ``(f(x+h) - f(x-h)) / 2h`` has ``h^2 f''' / 6``.
* Rounding: ``loss()`` carries an absolute error of about ``eps * S`` (``eps = 2.2e-16``,
  ``S`` the size of the terms summed into it), which the stencil turns into
  ``~1.5 * eps * S / h``.
* With ``h = 2^-13 * max(1, |x|)`` (about 1.2e-4): truncation ~ ``1e-17 * |f^(5)|`` and
  rounding ~ ``3e-12 * S``, both far below the 1e-6 relative tolerance for the
  O(1)-scaled inputs the tests use. The plain central difference would need
  ``h ~ eps^(1/3) ~ 6e-6`` and would then leave ~``1e-10 * S``: also enough, with less
  margin, so the fourth-order stencil is the default. ``h`` is a power of two so that
  ``x +- h`` and ``x +- 2h`` are exact for ``|x| <= 1`` and the stencil sees the step it
  divides by.
* Kinks (ReLU at 0, smooth-L1 at ``|z| = beta``, clamps) break any stencil within ``2h`` of
  them: tests keep their inputs at least ``1e-2`` away.

Tolerance: an entry passes when ``|fd - analytic| <= rtol * max(|analytic|, 1e-3 * gmax)``
with ``gmax`` the largest ``|analytic|`` of that array: 1e-6 relative wherever the gradient is
not tiny next to the rest of its tensor, and ``1e-9 * gmax`` absolute where it is (an
exactly-zero gradient, such as a padding row's, must come out zero to that bound).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STEP = 2.0**-13  # ~1.2e-4, relative to max(1, |x|); see the module docstring
RTOL = 1e-6


def _step(value: float, step: float) -> float:
    """A power of two near ``step * max(1, |value|)``."""
    return 2.0 ** np.round(np.log2(step * max(1.0, abs(value))))


def central_difference(
    loss: Callable[[], float], array: np.ndarray, index: tuple, step: float = STEP, order: int = 4
) -> float:
    """d loss / d array[index] by a central stencil, perturbing ``array`` in place (restored after).

    Args:
        loss: evaluates the scalar loss from the current contents of ``array`` (float64).
        array: a float64 array ``loss`` reads; perturbed in place and restored.
        index: the entry, a tuple of ints.
        step: the relative step (``h = step * max(1, |x|)``, rounded to a power of two).
        order: 4 (default, five-point stencil) or 2 (three-point).

    Returns:
        the numerical derivative, a float.
    """
    if array.dtype != np.float64:
        raise TypeError(f"finite differences need float64, got {array.dtype}")
    x0 = float(array[index])
    h = _step(x0, step)

    def at(k: int) -> float:
        array[index] = x0 + k * h
        return float(loss())

    try:
        if order == 2:
            return (at(1) - at(-1)) / (2 * h)
        if order == 4:
            return (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * h)
        raise ValueError(f"order must be 2 or 4, got {order}")
    finally:
        array[index] = x0


def sample_indices(grad: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` entries of an array of ``grad``'s shape: its largest ``|grad|`` and random others."""
    if grad.size == 0:
        return []
    picks = [int(np.argmax(np.abs(grad)))]
    for i in rng.permutation(grad.size)[: max(n, 1)]:
        if len(picks) < max(n, 1) and int(i) not in picks:
            picks.append(int(i))
    return [tuple(int(i) for i in np.unravel_index(p, grad.shape)) for p in picks]


def check_gradients(
    loss: Callable[[], float],
    arrays: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    samples: int = 6,
    rng: np.random.Generator | None = None,
    rtol: float = RTOL,
    step: float = STEP,
    indices: dict[str, list[tuple]] | None = None,
) -> float:
    """Compare ``grads[name]`` with central differences of ``loss`` on sampled entries of ``arrays[name]``.

    Args:
        loss: the scalar loss, re-evaluated from the arrays' current contents.
        arrays: name -> float64 array ``loss`` reads (perturbed in place, restored).
        grads: name -> the analytic gradient, same shape as ``arrays[name]``.
        samples: entries per array (the largest gradient plus random ones).
        rng: for the sampling (default: seeded 0).
        rtol: the relative tolerance (see the module docstring for the floor).
        step: the relative step.
        indices: name -> entries to check in addition to the sampled ones (padding rows, say).

    Returns:
        the largest relative error seen, ``|fd - analytic| / max(|analytic|, 1e-3 * gmax)``.

    Raises:
        AssertionError: naming the array, the entry and both values, when an entry is off.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    worst = 0.0
    for name, array in arrays.items():
        g = np.asarray(grads[name], dtype=np.float64)
        assert g.shape == array.shape, f"{name}: gradient shape {g.shape} != array shape {array.shape}"
        gmax = float(np.abs(g).max()) if g.size else 0.0
        chosen = sample_indices(g, samples, rng) + list((indices or {}).get(name, []))
        for idx in chosen:
            fd = central_difference(loss, array, idx, step=step)
            scale = max(abs(float(g[idx])), 1e-3 * gmax)
            err = abs(fd - float(g[idx]))
            if scale == 0.0:
                assert err == 0.0 or err <= 1e-12, (
                    f"{name}{list(idx)}: analytic 0 (whole tensor) but fd {fd!r}"
                )
                continue
            rel = err / scale
            worst = max(worst, rel)
            assert rel <= rtol, (
                f"{name}{list(idx)}: finite difference {fd!r} vs analytic {float(g[idx])!r} "
                f"(relative error {rel:.2e} > {rtol:g})"
            )
    return worst
