"""Input checks shared by both model families: each names the argument, the first bad
position and the allowed range, because NumPy would wrap a negative index silently.

Each family's ``check_inputs`` calls them once, before the forward; the ops themselves do not
check their inputs again.
"""

from __future__ import annotations

from .backend import get_namespace

__all__ = ["check_index_range", "require_integers", "broadcasts_to", "first_bad", "check_head_mask"]


def check_index_range(ids, size: int, name: str, ignore_index: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name``, the first bad position and ``[0, size - 1]`` if any id is outside.

    Args:
        ids: integer array of any shape.
        size: number of rows of the table the ids index (or classes a label may take).
        name: the argument's name, used in the message.
        ignore_index: a value that is always allowed (a loss's ignored label), or ``None``.

    Raises:
        ValueError: for a non-integer dtype, or for an id outside ``[0, size - 1]``.
    """
    xp = get_namespace(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= size)  # [...]
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        pos = tuple(int(i) for i in xp.argwhere(bad)[0])
        value = int(ids[pos])
        allowed = f"[0, {size - 1}]" + ("" if ignore_index is None else f" (or {ignore_index}, ignored)")
        where = f"{name}[{', '.join(map(str, pos))}]" if pos else name
        raise ValueError(f"{where} = {value} is outside the allowed range {allowed}")


def require_integers(x, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` holds integers (it indexes a table).

    Args:
        x: an array of any shape.
        name: the argument's name, used in the message.
    """
    if x.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integers (it indexes an embedding table), got dtype {x.dtype}; "
            f"convert with {name}.astype('int64') if the values are whole numbers"
        )


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target`` (NumPy/torch rules)."""
    if len(shape) > len(target):
        return False
    return all(a in (1, t) for a, t in zip(shape[::-1], target[::-1], strict=False))


def first_bad(bad) -> tuple[int, ...]:
    """The index of the first true element of the boolean array ``bad`` (row-major order)."""
    xp = get_namespace(bad)
    return tuple(int(i) for i in xp.argwhere(bad)[0])


def check_head_mask(head_mask, num_layers: int, num_heads: int, batch: int, seq: int) -> None:
    """Raise ``ValueError`` naming ``head_mask``, its shape and the allowed ones unless it is
    ``[num_heads]``, ``[num_layers, num_heads]`` or a 5-d ``[num_layers, batch|1, num_heads|1,
    seq|1, seq|1]`` (a head axis of 1 broadcasts over the heads, as in the oracle).

    Args:
        head_mask: an array of any shape.
        num_layers, num_heads: the encoder's layers and heads per layer.
        batch, seq: the input's batch size and sequence length.
    """
    shape = tuple(head_mask.shape)
    heads = (num_heads, 1)
    fits = (
        (len(shape) == 1 and shape[0] in heads)
        or (len(shape) == 2 and shape[0] == num_layers and shape[1] in heads)
        or (
            len(shape) == 5
            and shape[0] == num_layers
            and shape[2] in heads
            and shape[1] in (1, batch)
            and shape[3] in (1, seq)
            and shape[4] in (1, seq)
        )
    )
    if not fits:
        raise ValueError(
            f"head_mask has shape {shape}; expected [num_heads] = [{num_heads}], "
            f"[num_hidden_layers, num_heads] = [{num_layers}, {num_heads}] or a 5-d "
            f"[{num_layers}, {batch}|1, {num_heads}|1, {seq}|1, {seq}|1]"
        )
