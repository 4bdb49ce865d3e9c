"""LXMERT's blocks for isolation (`refimpl.compare.isolate`), in forward order: the
embeddings, the visual feature encoder, the language, relationship and cross layers, the
pooler and the heads.

Every block calls this family's own layer functions on the nested float64 weights ``w`` of
the base model, the config and the block's inputs; each returns float64 arrays.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..bert import pooler
from ..blocks import Block, BlockNamesError, additive_mask, ids_and_token_types, model_prefix
from .heads import answer_head, lm_prediction_head
from .layers import lxmert_embeddings, lxmert_layer, lxmert_visual_feature_encoder, lxmert_x_layer

__all__ = ["isolation_blocks"]


def _embeddings(w, config, inputs) -> np.ndarray:
    """LXMERT ``embeddings`` from ``input_ids`` / ``token_type_ids``."""
    ids, tt = ids_and_token_types(inputs)
    return lxmert_embeddings(ids, tt, None, **w["embeddings"])


def _visual_encoder(w, config, inputs) -> np.ndarray:
    """LXMERT ``encoder.visn_fc`` from ``visual_feats`` / ``visual_pos``."""
    return lxmert_visual_feature_encoder(
        np.asarray(inputs["visual_feats"], np.float64),
        np.asarray(inputs["visual_pos"], np.float64),
        **w["encoder"]["visn_fc"],
    )


def _layer(w, config, kind: str, i: int, x, mask) -> np.ndarray:
    """LXMERT language (``kind="layer"``) or relationship (``"r_layers"``) layer ``i``."""
    y, _ = lxmert_layer(x, additive_mask(mask), **w["encoder"][kind][str(i)], config=config)
    return y


def _x_layer(w, config, i: int, lang, lang_mask, visn, visn_mask) -> tuple[np.ndarray, np.ndarray]:
    """LXMERT cross layer ``i``: (lang, visn) in -> (lang, visn) out."""
    x = lxmert_x_layer(
        lang,
        additive_mask(lang_mask),
        visn,
        additive_mask(visn_mask),
        **w["encoder"]["x_layers"][str(i)],
        config=config,
    )
    return x["lang"], x["visn"]


def _head(name: str, heads, base, config, x) -> np.ndarray:
    """A head by its golden name: ``cls.predictions``, ``cls.seq_relationship``, ``answer_head``."""
    if name == "cls.predictions":
        pred = heads["cls"]["predictions"]
        decoder = {"weight": base["embeddings"]["word_embeddings"]["weight"]}
        return lm_prediction_head(
            x, transform=pred["transform"], decoder=decoder, bias=pred["bias"], hidden_act=config.hidden_act
        )
    if name == "cls.seq_relationship":
        return ops.linear(x, **heads["cls"]["seq_relationship"])
    if name == "answer_head":
        return answer_head(x, **heads["answer_head"])
    raise KeyError(name)


def isolation_blocks(ref, model) -> list[Block]:
    """The blocks of an LXMERT golden case that isolation can recompute, in forward order.

    Args:
        ref: the reference case (`refimpl.golden.Golden`): its tensor names and its model
            inputs (``input_ids [b, s]``, ``visual_feats [b, o, f]``, ``visual_pos [b, o, 4]``,
            the masks...).
        model: a float64 LXMERT model of the checkpoint the case was made from.

    Returns:
        `Block`s: embeddings, visual feature encoder, the language, relationship and cross
        layers (outputs ``[b, s, hidden]`` / ``[b, o, hidden]``), the pooler and the heads, as
        far as ``ref`` holds them.

    Raises:
        BlockNamesError: ``ref`` holds no LXMERT block names.
    """
    c = model.config
    tree = model.weights
    p = model_prefix(ref.tensors, "lxmert")
    if p is None:
        raise BlockNamesError("reference has no LXMERT block names (embeddings, encoder.layer.0)")
    w = tree["lxmert"] if p else tree
    inputs = dict(ref.inputs)
    lmask, vmask = inputs.get("attention_mask"), inputs.get("visual_attention_mask")
    lang, visn = p + "embeddings", p + "encoder.visn_fc"
    blocks = [
        Block(lang, ["inputs.input_ids"], [lang], lambda t: [_embeddings(w, c, inputs)]),
        Block(visn, ["inputs.visual_feats"], [visn], lambda t: [_visual_encoder(w, c, inputs)]),
    ]
    for kind, n in (("layer", c.l_layers), ("r_layers", c.r_layers)):
        for i in range(n):
            name = f"{p}encoder.{kind}.{i}.output"
            src = lang if kind == "layer" else visn
            m = lmask if kind == "layer" else vmask

            def run(t, kind=kind, i=i, src=src, m=m):
                return [_layer(w, c, kind, i, t[src], m)]

            blocks.append(Block(name, [src], [name], run))
            if kind == "layer":
                lang = name
            else:
                visn = name
    for i in range(c.x_layers):
        name = f"{p}encoder.x_layers.{i}"

        def run(t, i=i, a=lang, b=visn):
            return list(_x_layer(w, c, i, t[a], lmask, t[b], vmask))

        blocks.append(Block(name, [lang, visn], [name + ".lang_output", name + ".visn_output"], run))
        lang, visn = name + ".lang_output", name + ".visn_output"
    pooled = p + "pooler"
    if pooled in ref.tensors:
        blocks.append(
            Block(pooled, [lang], [pooled], lambda t, a=lang: [pooler(t[a], dense=w["pooler"]["dense"])])
        )
    if p:
        for head, src in (
            ("cls.predictions", lang),
            ("cls.seq_relationship", pooled),
            ("answer_head", pooled),
        ):
            if head in ref.tensors:
                blocks.append(
                    Block(head, [src], [head], lambda t, h=head, s=src: [_head(h, tree, w, c, t[s])])
                )
    return blocks
