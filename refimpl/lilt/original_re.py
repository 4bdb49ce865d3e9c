"""The relation-extraction decoder of the original LiLT repository (github.com/jpWang/LiLT, MIT,
``LiLTfinetune/modules/decoders/re.py``: ``REDecoder`` and ``BiaffineAttention``), as equations.

The decoder sees ``x``, the concatenation of LiLT's two streams (``D = hidden + hidden // r``
features per token), and one document at a time:

1. **candidate pairs** (`candidate_pairs`): every (question, answer) pair of entities, label 1
   to label 2, labelled 1 when it is a gold relation and 0 otherwise;
2. **each side** of a pair is the state of its entity's first token joined with a learned
   embedding of the entity's label (``entity_emb``, 3 rows):

       h_head = [x[start(head)]; E[label(head)]]                                     [pairs, 2D]

3. **two-layer ReLU projections**, one per side (``ffnn_head``, ``ffnn_tail``; their dropouts
   are identities at inference):

       u = relu(W_3 relu(W_0 h_head + b_0) + b_3)                             [pairs, hidden // 2]

4. **a biaffine classifier** (`biaffine`, ``rel_classifier``) scores 2 classes:

       s_k = u^T W_k v + V_k [u; v] + b_k                                              [pairs, 2]

5. **loss**: cross entropy over every pair of the batch at once (a mean over pairs, not over
   documents); **predictions**: the pairs whose class-1 score wins, in the original's dicts.

Weights arrive nested by their checkpoint names under ``extractor.``: ``entity_emb``,
``ffnn_head`` / ``ffnn_tail`` (``Sequential`` indices ``"0"`` and ``"3"``), ``rel_classifier``
(``bilinear``, ``linear``). Every quirk of the original that is kept here is listed on the
docs page "Quirks" (section "The original LiLT heads").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import ops, trace
from ..activations import relu_backward
from ..backend import get_namespace
from ..bert import linear_grads
from ..losses import cross_entropy_backward
from ..ops import cross_entropy, embedding, embedding_backward, linear, linear_backward, relu
from ..tape import saved

__all__ = [
    "ENTITY_LABELS",
    "QUESTION",
    "ANSWER",
    "STAND_IN_ENTITIES",
    "check_entities",
    "check_relations",
    "stand_in",
    "candidate_pairs",
    "document_pairs",
    "ffnn",
    "ffnn_backward",
    "biaffine",
    "biaffine_backward",
    "predicted_relations",
    "relation_extraction",
    "relation_extraction_backward",
    "entity_emb_backward",
]

#: Rows of ``entity_emb``: the entity labels of the original's XFUND data (HEADER, QUESTION, ANSWER).
ENTITY_LABELS = 3
#: The labels a candidate pair runs from (head) and to (tail).
QUESTION, ANSWER = 1, 2
#: What the original puts in place of a document with two entities or fewer: two HEADER
#: entities on token 0 (``re.py``, ``build_relation``).
STAND_IN_ENTITIES = {"start": [0, 0], "end": [1, 1], "label": [0, 0]}

_ENTITY_FIELDS = ("start", "end", "label")
_RELATION_FIELDS = ("head", "tail")
#: fields of the original's XFUND relations that the decoder never reads; accepted and ignored.
_RELATION_EXTRA = ("start_index", "end_index")


# --------------------------------------------------------------------------------------------
# inputs: one dict of lists per document
# --------------------------------------------------------------------------------------------


def _int_list(values: Any, where: str) -> list[int]:
    """A list, tuple or 1-d integer array of whole numbers -> a list of Python ints."""
    if hasattr(values, "ndim") and hasattr(values, "tolist"):  # a NumPy / CuPy array
        if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise ValueError(
                f"{where} must be a 1-d list of integers, got an array of shape "
                f"{tuple(values.shape)}, dtype {values.dtype}"
            )
        return [int(v) for v in values.tolist()]
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise ValueError(f"{where} must be a list of integers, got {type(values).__name__}")
    out = []
    for j, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{where}[{j}] = {v!r} must be an integer")
        out.append(int(v))
    return out


def _document(
    doc: Any, where: str, required: tuple[str, ...], extra: tuple[str, ...]
) -> dict[str, list[int]]:
    """One document's dict, with every required field a list of ints of one common length."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where} must be a dict with keys {list(required)}, got {type(doc).__name__}")
    missing = [k for k in required if k not in doc]
    unknown = [k for k in doc if k not in required + extra]
    if missing or unknown:
        raise ValueError(
            f"{where} must have keys {list(required)}"
            + (f" (optional, ignored: {list(extra)})" if extra else "")
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    fields = {k: _int_list(doc[k], f"{where}[{k!r}]") for k in required}
    lengths = {k: len(v) for k, v in fields.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{where}: the fields must have one length, got {lengths}")
    return fields


def _in_range(values: list[int], lo: int, hi: int, where: str, what: str) -> None:
    for j, v in enumerate(values):
        if not lo <= v <= hi:
            rng = f"[{lo}, {hi}]" if hi >= lo else "empty"
            raise ValueError(f"{where}[{j}] = {v} is outside the allowed range {rng} ({what})")


def check_entities(entities: Any, batch: int, seq: int) -> list[dict[str, list[int]]]:
    """Validate the original's ``entities``: one ``{"start", "end", "label"}`` dict per document.

    Args:
        entities: a list of ``batch`` dicts of equal-length integer lists (or 1-d arrays):
            ``start`` in ``[0, seq - 1]`` (the entity's first token), ``end`` in
            ``[start, seq]`` (one past its last token; only reported back), ``label`` in
            ``[0, 2]`` (HEADER, QUESTION, ANSWER).
        batch: the batch size.
        seq: the sequence length.

    Returns:
        the documents as dicts of lists of Python ints (new objects: the caller's are not changed).

    Raises:
        ValueError: naming the document index, the field, the position and the allowed range.
    """
    if entities is None:
        raise ValueError(
            "entities is required: a list with one dict per document, "
            '{"start": [...], "end": [...], "label": [...]}'
        )
    if not isinstance(entities, Sequence) or isinstance(entities, (str, bytes, Mapping)):
        raise ValueError(f"entities must be a list with one dict per document, got {type(entities).__name__}")
    if len(entities) != batch:
        raise ValueError(f"entities has {len(entities)} documents; the batch has {batch}")
    docs = []
    for i, doc in enumerate(entities):
        d = _document(doc, f"entities[{i}]", _ENTITY_FIELDS, ())
        _in_range(d["start"], 0, seq - 1, f"entities[{i}]['start']", "a token index of the sequence")
        for j, (s, e) in enumerate(zip(d["start"], d["end"], strict=True)):
            if not s <= e <= seq:
                raise ValueError(
                    f"entities[{i}]['end'][{j}] = {e} is outside the allowed range [{s}, {seq}] "
                    "(from the entity's start to the sequence length)"
                )
        _in_range(
            d["label"], 0, ENTITY_LABELS - 1, f"entities[{i}]['label']", "0 HEADER, 1 QUESTION, 2 ANSWER"
        )
        docs.append(d)
    return docs


def check_relations(
    relations: Any, entities: list[dict[str, list[int]]]
) -> list[dict[str, list[int]]] | None:
    """Validate the original's gold ``relations``: one ``{"head", "tail"}`` dict per document.

    Args:
        relations: ``None`` (no gold relations: no loss), or a list with one dict per document
            of equal-length integer lists ``head`` and ``tail``, entity indices of that document
            in ``[0, entities - 1]``. The original's XFUND data also carries ``start_index`` and
            ``end_index``; they are accepted and ignored, as the original ignores them.
        entities: the checked entities (`check_entities`), before any stand-in.

    Returns:
        ``None``, or the documents as dicts with ``head`` and ``tail`` lists of Python ints.

    Raises:
        ValueError: naming the document index, the field, the position and the allowed range.
    """
    if relations is None:
        return None
    if not isinstance(relations, Sequence) or isinstance(relations, (str, bytes, Mapping)):
        raise ValueError(
            f"relations must be a list with one dict per document, got {type(relations).__name__}"
        )
    if len(relations) != len(entities):
        raise ValueError(
            f"relations has {len(relations)} documents; entities and the batch have {len(entities)}"
        )
    docs = []
    for i, doc in enumerate(relations):
        d = _document(doc, f"relations[{i}]", _RELATION_FIELDS, _RELATION_EXTRA)
        n = len(entities[i]["start"])
        for k in _RELATION_FIELDS:
            _in_range(
                d[k], 0, n - 1, f"relations[{i}][{k!r}]", f"an entity index of document {i}, which has {n}"
            )
        docs.append(d)
    return docs


# --------------------------------------------------------------------------------------------
# candidate pairs (REDecoder.build_relation)
# --------------------------------------------------------------------------------------------


def stand_in(doc: dict[str, list[int]]) -> dict[str, list[int]]:
    """The entities the original decodes: a document with two entities or fewer is replaced by
    `STAND_IN_ENTITIES` (two HEADER entities on token 0), whatever its entities were."""
    if len(doc["start"]) <= 2:
        return {k: list(v) for k, v in STAND_IN_ENTITIES.items()}
    return doc


def candidate_pairs(
    labels: list[int], gold_heads: list[int], gold_tails: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """One document's (head, tail) entity pairs and their 0/1 labels, as the original builds them.

    * The candidates are every (i, j) with ``labels[i] == 1`` (QUESTION) and ``labels[j] == 2``
      (ANSWER); when there is none, the single pair (0, 1), whatever entities 0 and 1 are.
    * A gold relation is a positive when it is a candidate, and is dropped otherwise; repeated
      gold relations count once.
    * The order is the original's: the positives, then the other candidates, each group in the
      iteration order of a Python ``set`` built as the original builds it (so it follows
      CPython's hashing of the ``(i, j)`` tuples, not the entity order).

    Args:
        labels: the entity labels (after `stand_in`), ``[entities]``.
        gold_heads, gold_tails: the gold relations' entity indices (empty: none).

    Returns:
        ``(heads, tails, pair_labels)``: three lists of ``pairs`` ints (``pairs >= 1``).
    """
    n = len(labels)
    # the sets are filled in the original's order (a set's iteration order depends on it)
    candidates = {(i, j) for i in range(n) for j in range(n) if labels[i] == QUESTION and labels[j] == ANSWER}
    if not candidates:
        candidates = {(0, 1)}
    gold = set(zip(gold_heads, gold_tails, strict=True))
    negatives = candidates - gold
    positives = {p for p in gold if p in candidates}
    pairs = list(positives) + list(negatives)
    heads = [i for i, _ in pairs]
    tails = [j for _, j in pairs]
    pair_labels = [1] * len(positives) + [0] * len(negatives)
    return heads, tails, pair_labels


def document_pairs(entities, relations) -> list[tuple[dict[str, list[int]], list[int], list[int], list[int]]]:
    """Per document: the entities decoded (`stand_in`) and their candidate pairs (`candidate_pairs`).

    Args:
        entities: checked entities (`check_entities`), one dict per document.
        relations: checked gold relations (`check_relations`) or ``None`` (no gold).

    Returns:
        one ``(doc, heads, tails, pair_labels)`` per document (``pairs`` ints in each list).
    """
    out = []
    for b, doc in enumerate(entities):
        doc = stand_in(doc)
        gold = relations[b] if relations is not None else {"head": [], "tail": []}
        out.append((doc, *candidate_pairs(doc["label"], gold["head"], gold["tail"])))
    return out


# --------------------------------------------------------------------------------------------
# the decoder's layers
# --------------------------------------------------------------------------------------------


def ffnn(x, layers: dict[str, Any]):
    """``ffnn_head`` / ``ffnn_tail``: ``relu(W_3 relu(W_0 x + b_0) + b_3)`` (dropouts are identities).

    Args:
        x: ``[pairs, 2D]``, a side's token state joined with its label embedding.
        layers: the ``Sequential``'s weights by index: ``layers["0"]`` ``{"weight": [hidden, 2D],
            "bias": [hidden]}``, ``layers["3"]`` ``{"weight": [hidden // 2, hidden], "bias": [hidden // 2]}``.

    Returns:
        ``[pairs, hidden // 2]``.
    """
    # [p, 2D] -> [p, hidden]
    y = linear(x, **layers["0"])
    trace.record("0", y)
    y = relu(y)
    trace.record("1", y, also="2")  # 2 is the dropout
    # [p, hidden] -> [p, hidden // 2]
    y = linear(y, **layers["3"])
    trace.record("3", y)
    y = relu(y)
    trace.output(y, also=("4", "5"))  # the Sequential's output: ReLU 4, then dropout 5
    return y


def ffnn_backward(grad_output, x, layers: dict[str, Any]):
    """Backward of `ffnn`, reading the activations it recorded (``"1"``, and its output).

    ``y = relu(W_3 a + b_3)`` with ``a = relu(W_0 x + b_0)``, so, from the top:
    ``d(W_3 a + b_3) = dy * [y > 0]``, then `linear_backward` gives ``da``, ``dW_3``, ``db_3``;
    ``d(W_0 x + b_0) = da * [a > 0]``, then ``dx``, ``dW_0``, ``db_0``.

    Args:
        grad_output: ``dL/dy``, ``[pairs, hidden // 2]``.
        x: the forward's input ``[pairs, 2D]``.
        layers: the weights, as for `ffnn`.

    Returns:
        ``(dx [pairs, 2D], grads)`` with ``grads`` keyed like ``layers``.
    """
    trace.output(grad_output, also=("4", "5"))
    # the last ReLU, then Linear 3: [p, hidden // 2] -> [p, hidden]
    d3 = relu_backward(grad_output, saved(""))
    trace.record("3", d3)
    a = saved("1")
    d1, dw3, db3 = linear_backward(d3, a, **layers["3"])
    trace.record("1", d1, also="2")
    # the first ReLU, then Linear 0: [p, hidden] -> [p, 2D]
    d0 = relu_backward(d1, a)
    trace.record("0", d0)
    dx, dw0, db0 = linear_backward(d0, x, **layers["0"])
    return dx, {"0": linear_grads(dw0, db0), "3": linear_grads(dw3, db3)}


def biaffine(x1, x2, *, bilinear, linear: dict[str, Any]):
    """``BiaffineAttention``: ``s_k = x1^T W_k x2 + V_k [x1; x2] + b_k`` for each class ``k``.

    Args:
        x1: ``[pairs, d]`` (heads); x2: ``[pairs, d]`` (tails).
        bilinear: ``{"weight": W [classes, d, d]}`` (``nn.Bilinear`` without bias).
        linear: ``{"weight": V [classes, 2d], "bias": b [classes]}``.

    Returns:
        ``[pairs, classes]``.
    """
    xp = get_namespace(x1, x2)
    W = bilinear["weight"]
    # x1^T W_k: [p, d] @ [k, d, d] -> [k, p, d]; then . x2 over d -> [k, p] -> [p, k]
    quadratic = (xp.matmul(x1, W) * x2).sum(axis=-1).T
    trace.record("bilinear", quadratic)
    # V [x1; x2] + b: [p, 2d] -> [p, k]
    affine = ops.linear(xp.concatenate([x1, x2], axis=-1), **linear)
    trace.record("linear", affine)
    scores = quadratic + affine
    trace.output(scores)
    return scores


def biaffine_backward(grad_output, x1, x2, *, bilinear, linear: dict[str, Any]):
    """Backward of `biaffine` (``s_k = x1^T W_k x2 + V_k [x1; x2] + b_k``).

    With ``g_k = dL/ds_k`` per pair: ``dW_k = sum_p g_pk x1_p x2_p^T``,
    ``dx1_p = sum_k g_pk W_k x2_p`` and ``dx2_p = sum_k g_pk W_k^T x1_p``, plus the affine
    part's `linear_backward` split back into its ``x1`` and ``x2`` halves.

    Args:
        grad_output: ``dL/ds``, ``[pairs, classes]``.
        x1, x2: the forward's inputs, ``[pairs, d]`` each.
        bilinear, linear: the weights, as for `biaffine`.

    Returns:
        ``(dx1 [pairs, d], dx2 [pairs, d], grads)`` with ``grads`` keyed like the weights.
    """
    xp = get_namespace(grad_output, x1, x2)
    W = bilinear["weight"]  # [k, d, d]
    trace.output(grad_output)
    trace.record("bilinear", grad_output)
    trace.record("linear", grad_output)
    g = grad_output.T[:, :, None]  # [k, p, 1]
    # dW_k = (g_k * x1)^T x2: [k, d, p] @ [p, d] -> [k, d, d]
    dW = xp.matmul((g * x1).transpose(0, 2, 1), x2)
    # dx1 = sum_k g_k (x2 W_k^T), dx2 = sum_k g_k (x1 W_k): [k, p, d] -> [p, d]
    dx1 = (g * xp.matmul(x2, W.transpose(0, 2, 1))).sum(axis=0)
    dx2 = (g * xp.matmul(x1, W)).sum(axis=0)
    # V [x1; x2] + b: [p, k] -> [p, 2d], split at d
    d = x1.shape[-1]
    d_cat, dV, db = linear_backward(grad_output, xp.concatenate([x1, x2], axis=-1), **linear)
    return (
        dx1 + d_cat[:, :d],
        dx2 + d_cat[:, d:],
        {"bilinear": {"weight": dW}, "linear": linear_grads(dV, db)},
    )


def predicted_relations(
    logits, heads: list[int], tails: list[int], doc: dict[str, list[int]]
) -> list[dict[str, Any]]:
    """The pairs whose class-1 score wins (``argmax == 1``; a tie goes to class 0), in the original's dicts.

    Args:
        logits: ``[pairs, 2]``.
        heads, tails: the pairs' entity indices.
        doc: the entities decoded (after `stand_in`).

    Returns:
        one dict per predicted relation, in pair order: ``head_id``, ``head`` = ``(start, end)``,
        ``head_type``, ``tail_id``, ``tail``, ``tail_type``, ``type`` (always 1).
    """
    xp = get_namespace(logits)
    winners = [int(c) for c in xp.argmax(logits, axis=-1).tolist()]
    out = []
    for h, t, c in zip(heads, tails, winners, strict=True):
        if c != 1:
            continue
        out.append(
            {
                "head_id": h,
                "head": (doc["start"][h], doc["end"][h]),
                "head_type": doc["label"][h],
                "tail_id": t,
                "tail": (doc["start"][t], doc["end"][t]),
                "tail_type": doc["label"][t],
                "type": 1,
            }
        )
    return out


def relation_extraction(x, entities, relations, *, entity_emb, ffnn_head, ffnn_tail, rel_classifier):
    """``REDecoder``: candidate pairs, both sides, biaffine scores, loss and predictions per document.

    Args:
        x: ``[batch, seq, D]``, LiLT's text and layout streams concatenated.
        entities: checked entities (`check_entities`), one dict per document.
        relations: checked gold relations (`check_relations`) or ``None``.
        entity_emb: ``{"weight": [3, D]}``.
        ffnn_head, ffnn_tail: see `ffnn`.
        rel_classifier: ``{"bilinear": ..., "linear": ...}``, see `biaffine`.

    Returns:
        ``(loss, logits, pred_relations, decoded)``: the mean cross entropy over every pair of
        the batch (``None`` without ``relations``), ``[pairs of the batch, 2]`` in document
        order, one list of predicted relations per document, the entities decoded (after `stand_in`).
    """
    xp = get_namespace(x)
    all_logits, all_labels, pred_relations, decoded = [], [], [], []
    for b, (doc, heads, tails, labels) in enumerate(document_pairs(entities, relations)):
        starts = np.asarray(doc["start"], dtype=np.int64)
        kinds = np.asarray(doc["label"], dtype=np.int64)
        sides = []
        with trace.scope("", call=f"doc{b}"):
            for side, idx in (("head", heads), ("tail", tails)):
                idx = np.asarray(idx, dtype=np.int64)
                # each side's entity label, embedded: [p] -> [p, D]
                with trace.scope("entity_emb", call=f"doc{b}_{side}"):
                    label_repr = embedding(xp.asarray(kinds[idx]), entity_emb["weight"])
                    trace.output(label_repr)
                # its first token's state joined with it: [p, D] + [p, D] -> [p, 2D]
                token_repr = x[b][xp.asarray(starts[idx])]
                sides.append(xp.concatenate([token_repr, label_repr], axis=-1))
            # the two projections: [p, 2D] -> [p, hidden // 2]
            with trace.scope("ffnn_head"):
                u = ffnn(sides[0], ffnn_head)
            with trace.scope("ffnn_tail"):
                v = ffnn(sides[1], ffnn_tail)
            # biaffine scores: [p, hidden // 2] x 2 -> [p, 2]
            with trace.scope("rel_classifier"):
                logits = biaffine(u, v, **rel_classifier)
        pred_relations.append(predicted_relations(logits, heads, tails, doc))
        all_logits.append(logits)
        all_labels.extend(labels)
        decoded.append(doc)
    # every pair of the batch: [P, 2]
    logits = xp.concatenate(all_logits, axis=0)
    loss = None
    if relations is not None:
        # one mean over all P pairs: a document's weight is its number of pairs
        loss = cross_entropy(logits, xp.asarray(np.asarray(all_labels, dtype=np.int64))).astype(logits.dtype)
        trace.record("loss_fct", loss)
    return loss, logits, pred_relations, decoded


def _add(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Nested gradients summed key by key (a weight every document uses)."""
    if total is None:
        return part
    return {k: _add(total[k], v) if isinstance(v, dict) else total[k] + v for k, v in part.items()}


def entity_emb_backward(grad_output, kinds: np.ndarray):
    """Backward of one ``entity_emb`` lookup, which the original builds with
    ``scale_grad_by_freq=True`` (``re.py``): each row's summed gradient is divided by how many
    times this lookup used it, ``dE[i] = sum_{p: k_p = i} dy_p / count_i``, as torch's
    ``embedding_backward`` does.

    Args:
        grad_output: ``dL/dy``, ``[pairs, D]``.
        kinds: the looked-up entity labels, integer ``[pairs]`` (host array).

    Returns:
        ``dE``, ``[3, D]``.
    """
    xp = get_namespace(grad_output)
    counts = np.maximum(np.bincount(kinds, minlength=ENTITY_LABELS), 1)  # [3]
    table = embedding_backward(grad_output, xp.asarray(kinds), ENTITY_LABELS)  # [3, D]
    return table / xp.asarray(counts, dtype=table.dtype)[:, None]


def relation_extraction_backward(
    grad_loss,
    grad_logits,
    x,
    logits,
    entities,
    relations,
    *,
    entity_emb,
    ffnn_head,
    ffnn_tail,
    rel_classifier,
):
    """Backward of `relation_extraction`, document by document in the forward's scopes.

    The loss's gradient is split into the documents' pairs; per document, `biaffine_backward`,
    each side's `ffnn_backward`, and each side's input ``[x[start]; E[label]]`` split back: the
    token half scatter-added into ``dx`` at the entities' first tokens, the label half into
    ``entity_emb`` (`entity_emb_backward`: scaled by each row's frequency, as the original's
    ``scale_grad_by_freq=True``).

    Args:
        grad_loss: ``dL/dloss`` (0-d) when ``L`` is the loss, else ``None``.
        grad_logits: ``dL/dlogits`` ``[pairs of the batch, 2]`` when ``L`` is not the loss, else ``None``.
        x: the forward's ``[batch, seq, D]``.
        logits: the forward's ``[pairs of the batch, 2]``.
        entities, relations: as the forward took them.
        entity_emb, ffnn_head, ffnn_tail, rel_classifier: the weights, as for `relation_extraction`.

    Returns:
        ``(d_logits [pairs of the batch, 2], dx [batch, seq, D], grads)`` with ``grads`` keyed like
        the ``extractor`` weights.
    """
    xp = get_namespace(x, logits)
    plan = document_pairs(entities, relations)
    if grad_loss is not None:
        labels = np.asarray([lab for _, _, _, pair_labels in plan for lab in pair_labels], dtype=np.int64)
        trace.record("loss_fct", grad_loss)
        d_logits = cross_entropy_backward(grad_loss, logits, xp.asarray(labels))
    else:
        d_logits = grad_logits
    s, width = x.shape[1], x.shape[2]
    dx = xp.zeros_like(x)
    d_entity_emb = xp.zeros_like(entity_emb["weight"])
    grads = None
    offset = 0
    for b, (doc, heads, tails, _) in enumerate(plan):
        g = d_logits[offset : offset + len(heads)]  # [p, 2]
        offset += len(heads)
        starts = np.asarray(doc["start"], dtype=np.int64)
        kinds = np.asarray(doc["label"], dtype=np.int64)
        with trace.scope("", call=f"doc{b}"):
            # biaffine scores: [p, 2] -> [p, hidden // 2] x 2
            with trace.scope("ffnn_head"):
                u = saved("")
            with trace.scope("ffnn_tail"):
                v = saved("")
            with trace.scope("rel_classifier"):
                du, dv, g_rel = biaffine_backward(g, u, v, **rel_classifier)
            doc_grads = {"rel_classifier": g_rel}
            for side, idx, d_out, layers in (("head", heads, du, ffnn_head), ("tail", tails, dv, ffnn_tail)):
                idx = np.asarray(idx, dtype=np.int64)
                with trace.scope("entity_emb", call=f"doc{b}_{side}"):
                    label_repr = saved("")
                # the side's input, as the forward joined it: [p, D] + [p, D] -> [p, 2D]
                side_in = xp.concatenate([x[b][xp.asarray(starts[idx])], label_repr], axis=-1)
                with trace.scope(f"ffnn_{side}"):
                    d_side, doc_grads[f"ffnn_{side}"] = ffnn_backward(d_out, side_in, layers)
                # [p, 2D] -> the token half into x[b] at the first tokens, the label half into E
                with trace.scope("entity_emb", call=f"doc{b}_{side}"):
                    trace.output(d_side[:, width:])
                d_entity_emb += entity_emb_backward(d_side[:, width:], kinds[idx])
                dx[b] += embedding_backward(d_side[:, :width], xp.asarray(starts[idx]), s)
        grads = _add(grads, doc_grads)
    grads["entity_emb"] = {"weight": d_entity_emb}
    return d_logits, dx, grads
