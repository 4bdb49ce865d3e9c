"""Box conventions of the two models, and the conversions from pixel boxes.

Pixel boxes everywhere here are ``(x0, y0, x1, y1)``: left, top, right, bottom, in pixels of a
page / image that is ``width`` x ``height`` pixels, with ``0 <= x0 <= x1 <= width`` and
``0 <= y0 <= y1 <= height`` (origin top-left, y grows downwards).

- LiLT (like the LayoutLM family) takes integer boxes on a 0-1000 grid, the ``bbox`` input
  ``[batch, seq_len, 4]``: ``normalize_box`` / ``normalize_boxes`` compute
  ``int(1000 * (x / width))`` and ``int(1000 * (y / height))`` exactly as transformers'
  LayoutLMv3 image processor (``normalize_box``) does: divide first, then scale, then truncate
  toward zero (not round).
- LXMERT takes float region boxes as fractions of the image, the ``visual_pos`` input
  ``[batch, n_regions, 4]``: ``lxmert_visual_pos`` computes ``(x0/W, y0/H, x1/W, y1/H)`` in
  [0, 1], as the original LXMERT feature loader does.

A box with ``x1 < x0`` or ``y1 < y0`` (degenerate), a box outside the page, a non-finite
coordinate or a wrong shape raises ValueError naming the box index. With ``clip=True`` boxes
that stick out of the page are clipped to it instead (degenerate boxes still raise).
"""

from __future__ import annotations

import numpy as np


def _check_page(width, height) -> tuple[float, float]:
    """Validate the page size (positive, finite)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not np.isscalar(v) or not np.isreal(v) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a positive finite number of pixels")
    return width, height


def _check_boxes(boxes, width, height, clip: bool, name: str = "boxes") -> np.ndarray:
    """Validate pixel boxes and clip them if asked. [n, 4] -> float64 [n, 4]."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers of shape [n, 4] (x0, y0, x1, y1): {e}") from e
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape [n, 4] (x0, y0, x1, y1), got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {arr[i].tolist()} has a non-finite coordinate")
    degenerate = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if degenerate.any():
        i = int(np.argmax(degenerate))
        raise ValueError(f"{name}[{i}] = {arr[i].tolist()} is degenerate: need x0 <= x1 and y0 <= y1")
    width, height = _check_page(width, height)
    limits = np.array([width, height, width, height], dtype=np.float64)
    if clip:
        return np.clip(arr, 0.0, limits)
    outside = (arr < 0).any(axis=1) | (arr > limits).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"{name}[{i}] = {arr[i].tolist()} lies outside the {width} x {height} page "
            "(need 0 <= x <= width, 0 <= y <= height); pass clip=True to clip it"
        )
    return arr


def normalize_boxes(boxes, width, height, clip: bool = False) -> np.ndarray:
    """Pixel boxes -> LiLT's 0-1000 integer grid.

    ``out = int(1000 * (x / width))`` for x0, x1 and ``int(1000 * (y / height))`` for y0, y1,
    computed in float64 and truncated toward zero, bit for bit as transformers' LayoutLMv3
    ``normalize_box``.

    Args:
        boxes: ``[n, 4]`` pixel boxes (x0, y0, x1, y1).
        width, height: page size in pixels.
        clip: clip boxes that stick out of the page instead of raising.

    Returns:
        int64 ``[n, 4]`` boxes in [0, 1000].
    """
    arr = _check_boxes(boxes, width, height, clip)  # [n, 4] float64
    scale = np.array([width, height, width, height], dtype=np.float64)  # [4]
    # divide first, then scale by 1000, then truncate: int(1000 * (x / width))
    return np.trunc(1000.0 * (arr / scale)).astype(np.int64)  # [n, 4]


def normalize_box(box, width, height, clip: bool = False) -> list[int]:
    """One pixel box ``(x0, y0, x1, y1)`` -> ``[x0, y0, x1, y1]`` on LiLT's 0-1000 grid (Python ints).

    See ``normalize_boxes``.
    """
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    return [int(v) for v in normalize_boxes([list(box)], width, height, clip=clip)[0]]


def denormalize_boxes(boxes, width, height) -> np.ndarray:
    """LiLT 0-1000 grid boxes -> pixel boxes (the lower corner of each grid cell).

    ``x = v * width / 1000``; ``normalize_boxes(denormalize_boxes(b, W, H), W, H)`` gives back
    ``b`` up to the truncation (never more than 1 unit lower). [n, 4] -> float64 [n, 4].
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [n, 4], got shape {arr.shape}")
    width, height = _check_page(width, height)
    return arr * np.array([width, height, width, height], dtype=np.float64) / 1000.0


def lxmert_visual_pos(boxes, width, height, clip: bool = False, dtype="float32") -> np.ndarray:
    """Pixel region boxes -> LXMERT's ``visual_pos``: ``(x0/W, y0/H, x1/W, y1/H)`` in [0, 1].

    Args:
        boxes: ``[n, 4]`` or ``[batch, n, 4]`` pixel boxes (x0, y0, x1, y1) of detected regions.
        width, height: image size in pixels.
        clip: clip boxes that stick out of the image instead of raising.
        dtype: output float dtype ("float32", LXMERT's feature dtype, or "float64").

    Returns:
        ``[n, 4]`` (or ``[batch, n, 4]``) floats in [0, 1].
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype={dtype} must be a float dtype")
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 3:
        flat = _check_boxes(arr.reshape(-1, 4), width, height, clip)  # [batch*n, 4]
        arr = flat.reshape(arr.shape)
    else:
        arr = _check_boxes(arr, width, height, clip)  # [n, 4]
    scale = np.array([width, height, width, height], dtype=dtype)  # [4]
    return arr.astype(dtype) / scale  # [..., 4]


__all__ = ["normalize_box", "normalize_boxes", "denormalize_boxes", "lxmert_visual_pos"]
