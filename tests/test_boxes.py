"""Box conversions: equal to transformers' LayoutLMv3 normalize_box, round trips, errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.boxes import denormalize_boxes, lxmert_visual_pos, normalize_box, normalize_boxes

transformers = pytest.importorskip("transformers")
from transformers.models.layoutlmv3.image_processing_layoutlmv3 import normalize_box as oracle_normalize_box  # noqa: E402

SIDE = st.one_of(st.integers(1, 5000), st.floats(0.5, 5000.0, allow_nan=False))


@st.composite
def page_and_boxes(draw, integer=None, max_boxes=8):
    """(width, height, boxes) with every box inside the page and x0 <= x1, y0 <= y1."""
    width, height = draw(SIDE), draw(SIDE)
    n = draw(st.integers(0, max_boxes))
    use_int = draw(st.booleans()) if integer is None else integer
    boxes = []
    for _ in range(n):
        if use_int:
            xs = sorted(draw(st.lists(st.integers(0, int(width)), min_size=2, max_size=2)))
            ys = sorted(draw(st.lists(st.integers(0, int(height)), min_size=2, max_size=2)))
        else:
            xs = sorted(draw(st.lists(st.floats(0, width), min_size=2, max_size=2)))
            ys = sorted(draw(st.lists(st.floats(0, height), min_size=2, max_size=2)))
        boxes.append([xs[0], ys[0], xs[1], ys[1]])
    return width, height, boxes


@given(page_and_boxes())
def test_normalize_equals_transformers(data):
    """Bit-equal to transformers' int(1000 * (x / width)) for every coordinate."""
    width, height, boxes = data
    ours = normalize_boxes(boxes, width, height)
    assert ours.dtype == np.int64 and ours.shape == (len(boxes), 4)
    expected = [oracle_normalize_box(b, width, height) for b in boxes]
    assert ours.tolist() == expected
    for b, e in zip(boxes, expected, strict=True):
        assert normalize_box(b, width, height) == e


@given(page_and_boxes())
def test_normalize_range_order_and_round_trip(data):
    width, height, boxes = data
    grid = normalize_boxes(boxes, width, height)
    assert ((grid >= 0) & (grid <= 1000)).all()
    assert (grid[:, 2] >= grid[:, 0]).all() and (grid[:, 3] >= grid[:, 1]).all()
    # back to pixels: the lower edge of the grid cell, never more than one cell (page/1000) away
    back = denormalize_boxes(grid, width, height)
    cell = np.array([width, height, width, height]) / 1000.0
    pixels = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    assert (back <= pixels + 1e-9 * np.maximum(1.0, pixels)).all()
    assert (pixels - back <= cell * (1 + 1e-9)).all()
    # grid -> pixels -> grid loses at most one unit to truncation
    again = normalize_boxes(back, width, height)
    assert ((grid - again >= 0) & (grid - again <= 1)).all()


@given(page_and_boxes(), st.sampled_from(["float32", "float64"]))
def test_lxmert_visual_pos(data, dtype):
    width, height, boxes = data
    pos = lxmert_visual_pos(boxes, width, height, dtype=dtype)
    assert pos.dtype == np.dtype(dtype) and pos.shape == (len(boxes), 4)
    assert ((pos >= 0) & (pos <= 1)).all()
    pixels = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height])
    expected = pixels / scale  # first principles: x / W, y / H
    rtol = 1e-6 if dtype == "float32" else 0
    np.testing.assert_allclose(pos, expected.astype(dtype), rtol=rtol, atol=0)
    # batched input keeps its shape
    batched = lxmert_visual_pos([boxes, boxes], width, height, dtype=dtype) if boxes else None
    if batched is not None:
        assert batched.shape == (2, len(boxes), 4)
        np.testing.assert_array_equal(batched[1], pos)


def test_known_values():
    assert normalize_box([100, 50, 300, 150], 1000, 500) == [100, 100, 300, 300]
    # 1000 * (4.284 / 612) is 6.999999999999999 in float64: truncation gives 6 (not 7), as transformers
    assert normalize_box([4.284, 0, 4.284, 0], 612, 1) == [6, 0, 6, 0]
    assert oracle_normalize_box([4.284, 0, 4.284, 0], 612, 1) == [6, 0, 6, 0]
    np.testing.assert_array_equal(lxmert_visual_pos([[0, 0, 640, 480]], 640, 480), [[0, 0, 1, 1]])


def test_clip():
    boxes = [[-5, 10, 120, 50], [10, 10, 20, 20]]
    with pytest.raises(ValueError, match=r"boxes\[0\].*outside the 100 x 100 page"):
        normalize_boxes(boxes, 100, 100)
    assert normalize_boxes(boxes, 100, 100, clip=True).tolist() == [[0, 100, 1000, 500], [100, 100, 200, 200]]
    np.testing.assert_allclose(
        lxmert_visual_pos(boxes, 100, 100, clip=True, dtype="float64")[0], [0, 0.1, 1, 0.5]
    )


@pytest.mark.parametrize(
    "boxes, match",
    [
        ([[0, 0, 1, 1], [5, 0, 4, 1]], r"boxes\[1\].*degenerate"),
        ([[0, 0, 1, 1], [0, 5, 1, 4]], r"boxes\[1\].*degenerate"),
        ([[0, 0, 1, 1], [0, 0, float("nan"), 1]], r"boxes\[1\].*non-finite"),
        ([[0, 0, 1, 1], [0, 0, 1, float("inf")]], r"boxes\[1\].*non-finite"),
        ([[0, 0, 1]], r"shape \[n, 4\]"),
        ([[0, 0, 1, 1], [0, 0, 2, 200]], r"boxes\[1\].*outside"),
    ],
)
def test_bad_boxes(boxes, match):
    with pytest.raises(ValueError, match=match):
        normalize_boxes(boxes, 100, 100)
    with pytest.raises(ValueError, match=match):
        lxmert_visual_pos(boxes, 100, 100)


def test_bad_page_and_degenerate_even_with_clip():
    with pytest.raises(ValueError, match="width"):
        normalize_boxes([[0, 0, 1, 1]], 0, 100)
    with pytest.raises(ValueError, match="height"):
        normalize_box([0, 0, 1, 1], 100, float("nan"))
    with pytest.raises(ValueError, match="degenerate"):
        normalize_boxes([[5, 0, 4, 1]], 100, 100, clip=True)
    with pytest.raises(ValueError, match="4 numbers"):
        normalize_box([1, 2, 3], 100, 100)
