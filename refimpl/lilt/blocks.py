"""LiLT's blocks for isolation (`refimpl.compare.isolate`), in forward order: the text and
layout embeddings, each layer's text and layout outputs, the pooler and the head.

Every block calls this family's own layer functions on the nested float64 weights ``w`` of
the base model, the config and the block's inputs; each returns float64 arrays.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..bert import pooler
from ..blocks import Block, BlockNamesError, additive_mask, ids_and_token_types, model_prefix
from .embeddings import create_position_ids_from_input_ids, layout_embeddings, text_embeddings
from .heads import classification_head
from .layers import lilt_layer

__all__ = ["isolation_blocks"]


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
        layout stream), the pooler and the head, as far as ``ref`` holds them.

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
