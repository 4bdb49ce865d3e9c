"""LiLT's blocks for isolation (`refimpl.compare.isolate`), in forward order: the text and
layout embeddings, each layer's text and layout outputs, the pooler and the head.

The original LiLT heads (`refimpl.lilt.original`) read both streams joined: their blocks are
the joined streams (``dropout``) and the token classifier (``classifier``), or, per document
``b`` of the relation extraction, the label embeddings (``extractor.entity_emb@doc<b>_head`` /
``_tail``), the two projections (``extractor.ffnn_head@doc<b>``, ``extractor.ffnn_tail@doc<b>``)
and the biaffine scores (``extractor.rel_classifier@doc<b>``), with the pairs rebuilt by
`refimpl.lilt.original_re.candidate_pairs` from the entities and relations the golden file
records (its manifest's ``inputs_json``).

Every block calls this family's own layer functions on the nested float64 weights ``w`` of
the base model, the config and the block's inputs; each returns float64 arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ops, trace
from ..bert import pooler
from ..blocks import Block, BlockNamesError, additive_mask, ids_and_token_types, model_prefix
from .embeddings import create_position_ids_from_input_ids, layout_embeddings, text_embeddings
from .heads import classification_head
from .layers import lilt_layer
from .original_re import biaffine, candidate_pairs, check_entities, check_relations, ffnn, stand_in

__all__ = ["isolation_blocks", "original_head_blocks"]

#: the original LiLT heads' architectures (`refimpl.lilt.original`), whose blocks differ.
ORIGINAL_TOKEN = "LiLTRobertaLikeForTokenClassification"
ORIGINAL_RE = "LiLTRobertaLikeForRelationExtraction"


def _text_embeddings(w, config, inputs) -> np.ndarray:
    """LiLT text embeddings (``embeddings.LayerNorm``) from the model inputs."""
    ids, tt = ids_and_token_types(inputs)
    return text_embeddings(ids, None, tt, inputs["position_ids"], **w["embeddings"], config=config)


def _layout_embeddings(w, config, inputs) -> np.ndarray:
    """LiLT layout embeddings (``layout_embeddings.LayerNorm``) from ``bbox`` and positions."""
    return layout_embeddings(inputs["bbox"], inputs["position_ids"], **w["layout_embeddings"], config=config)


def _layer(w, config, i: int, text, layout, mask) -> tuple[np.ndarray, np.ndarray]:
    """LiLT layer ``i``: (text, layout) in -> (text, layout) out."""
    out, layout_out, _ = lilt_layer(
        text, layout, additive_mask(mask), None, **w["encoder"]["layer"][str(i)], config=config
    )
    return out, layout_out


def _head(name: str, heads, x) -> np.ndarray:
    """A task head by its golden name: ``classifier`` (token or sequence) or ``qa_outputs``."""
    if name == "classifier" and "out_proj" in heads["classifier"]:
        return classification_head(x, **heads["classifier"])
    if name in ("classifier", "qa_outputs"):
        return ops.linear(x, **heads[name])
    raise KeyError(name)


def isolation_blocks(ref, model) -> list[Block]:
    """The blocks of a LiLT golden case that isolation can recompute, in forward order.

    Args:
        ref: the reference case (`refimpl.golden.Golden`): its tensor names, its model inputs
            (``input_ids [b, s]``, ``bbox [b, s, 4]``, ``attention_mask [b, s]``...) and the
            position ids it recorded.
        model: a float64 LiLT model of the checkpoint the case was made from.

    Returns:
        `Block`s: text and layout embeddings, each layer (outputs ``[b, s, hidden]`` and the
        layout stream), the pooler and the head, as far as ``ref`` holds them; for the
        original LiLT heads, their blocks after the layers (`original_head_blocks`).

    Raises:
        BlockNamesError: ``ref`` holds no LiLT block names.
    """
    config = model.config
    tree = model.weights
    p = model_prefix(ref.tensors, "lilt")
    if p is None:
        raise BlockNamesError("reference has no LiLT block names (embeddings.LayerNorm, encoder.layer.0)")
    w = tree["lilt"] if p else tree
    inputs = dict(ref.inputs)
    if p + "embeddings.position_ids" in ref.tensors:
        inputs["position_ids"] = ref.tensors[p + "embeddings.position_ids"]
    if "position_ids" not in inputs:
        inputs["position_ids"] = create_position_ids_from_input_ids(inputs["input_ids"], config.pad_token_id)
    mask = inputs.get("attention_mask")
    text, layout = p + "embeddings.LayerNorm", p + "layout_embeddings.LayerNorm"
    blocks = [
        Block(text, ["inputs.input_ids"], [text], lambda t: [_text_embeddings(w, config, inputs)]),
        Block(layout, ["inputs.bbox"], [layout], lambda t: [_layout_embeddings(w, config, inputs)]),
    ]
    for i in range(config.num_hidden_layers):
        name = f"{p}encoder.layer.{i}"

        def run(t, i=i, a=text, b=layout):
            return list(_layer(w, config, i, t[a], t[b], mask))

        blocks.append(Block(name, [text, layout], [name, name + ".layout"], run))
        text, layout = name, name + ".layout"
    if p + "pooler" in ref.tensors and "pooler" in w:
        blocks.append(
            Block(
                p + "pooler",
                [text],
                [p + "pooler"],
                lambda t, a=text: [pooler(t[a], dense=w["pooler"]["dense"])],
            )
        )
    arch = ref.manifest.get("architecture")
    if arch in (ORIGINAL_TOKEN, ORIGINAL_RE):
        return blocks + original_head_blocks(ref, tree, arch, text, layout)
    out_names = {"classifier.out_proj": "classifier", "classifier": "classifier", "qa_outputs": "qa_outputs"}
    for golden_name, head in out_names.items():
        if p and golden_name in ref.tensors and head in tree:
            blocks.append(
                Block(
                    golden_name,
                    [text],
                    [golden_name],
                    lambda t, a=text, h=head: [_head(h, tree, t[a])],
                )
            )
            break
    return blocks


# --------------------------------------------------------------------------------------------
# the original LiLT heads (jpWang/LiLT): both streams joined, then the head
# --------------------------------------------------------------------------------------------


def _joined(t: dict[str, np.ndarray], text: str, layout: str) -> np.ndarray:
    """``[text; layout]``: ``[b, s, h] + [b, s, h / r] -> [b, s, D]`` (the original's
    ``torch.cat([sequence_output, layout_outputs], -1)``)."""
    return np.concatenate([t[text], t[layout]], axis=-1)


def _documents(ref) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]] | None]:
    """The entities and gold relations the relation-extraction case was run on, checked as the
    model checks them (its manifest's ``inputs_json``; the batch and sequence from
    ``inputs.bbox``)."""
    docs = ref.manifest.get("inputs_json") or {}
    if "entities" not in docs:
        raise BlockNamesError(
            "the golden file records no entities (manifest field inputs_json): its relation-extraction "
            "blocks cannot be rebuilt; write it again with this refimpl"
        )
    b, s = ref.inputs["bbox"].shape[:2]
    try:
        entities = check_entities(docs["entities"], b, s)
        return entities, check_relations(docs.get("relations"), entities)
    except ValueError as e:
        raise BlockNamesError(f"the golden file's inputs_json: {e}") from None


def _side_block(w: dict[str, Any], b: int, side: str, idx, starts, text: str, layout: str) -> Block:
    """``extractor.ffnn_<side>@doc<b>``: the pair sides' first-token states joined with their
    label embeddings, ``[p, 2D]``, through the two-layer projection -> ``[p, hidden // 2]``."""
    emb, name = f"extractor.entity_emb@doc{b}_{side}", f"extractor.ffnn_{side}@doc{b}"

    def run(t: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = _joined(t, text, layout)[b][starts[idx]]  # [p, D]
        with trace.scope("", call=f"doc{b}"), trace.scope(f"ffnn_{side}"):
            return [ffnn(np.concatenate([x, t[emb]], axis=-1), w[f"ffnn_{side}"])]

    return Block(name, [text, layout, emb], [name], run)


def original_head_blocks(ref, tree: dict[str, Any], architecture: str, text: str, layout: str) -> list[Block]:
    """The blocks of an original LiLT head, after the encoder's.

    Args:
        ref: the reference case (`refimpl.golden.Golden`); for relation extraction its
            manifest's ``inputs_json`` holds the ``entities`` and ``relations``.
        tree: the model's nested float64 weights (``classifier`` or ``extractor``).
        architecture: ``LiLTRobertaLikeForTokenClassification`` or
            ``LiLTRobertaLikeForRelationExtraction``.
        text, layout: the golden names of the last layer's two outputs ``[b, s, h]``, ``[b, s, h / r]``.

    Returns:
        ``dropout`` (``[b, s, D]``, the joined streams), then ``classifier`` (``[b, s,
        num_labels]``, from the two streams) or, per document ``b``: ``extractor.entity_emb@doc<b>_head``
        and ``_tail`` (``[p, D]``, from the recorded entities alone), ``extractor.ffnn_head@doc<b>`` and
        ``extractor.ffnn_tail@doc<b>`` (``[p, hidden // 2]``, from the two streams and the label
        embedding), ``extractor.rel_classifier@doc<b>`` (``[p, 2]``, from both projections).

    Raises:
        BlockNamesError: a relation-extraction file without recorded entities.
    """
    blocks = [Block("dropout", [text, layout], ["dropout"], lambda t: [_joined(t, text, layout)])]
    if architecture != ORIGINAL_RE:
        head = tree["classifier"]
        blocks.append(
            Block(
                "classifier",
                [text, layout],
                ["classifier"],
                lambda t: [ops.linear(_joined(t, text, layout), **head)],
            )
        )
        return blocks
    w = tree["extractor"]
    entities, relations = _documents(ref)
    for b, doc in enumerate(entities):
        doc = stand_in(doc)
        gold = relations[b] if relations is not None else {"head": [], "tail": []}
        heads, tails, _ = candidate_pairs(doc["label"], gold["head"], gold["tail"])
        starts = np.asarray(doc["start"], dtype=np.int64)
        kinds = np.asarray(doc["label"], dtype=np.int64)
        sides = {"head": np.asarray(heads, dtype=np.int64), "tail": np.asarray(tails, dtype=np.int64)}
        for side, idx in sides.items():
            name = f"extractor.entity_emb@doc{b}_{side}"
            labels = kinds[idx]
            blocks.append(
                Block(name, [], [name], lambda t, k=labels: [ops.embedding(k, w["entity_emb"]["weight"])])
            )
        for side, idx in sides.items():
            blocks.append(_side_block(w, b, side, idx, starts, text, layout))
        u, v, name = (
            f"extractor.ffnn_head@doc{b}",
            f"extractor.ffnn_tail@doc{b}",
            f"extractor.rel_classifier@doc{b}",
        )

        def scores(t, u=u, v=v, b=b) -> list[np.ndarray]:
            with trace.scope("", call=f"doc{b}"), trace.scope("rel_classifier"):
                return [biaffine(t[u], t[v], **w["rel_classifier"])]

        blocks.append(Block(name, [u, v], [name], scores))
    return blocks
