"""An independent torch implementation of the original LiLT fine-tuning heads, for the tests.

Written from the published description of jpWang/LiLT (ACL 2022; ``LiLTfinetune/models/
LiLTRobertaLike/modeling_LiLTRobertaLike.py`` and ``LiLTfinetune/modules/decoders/re.py``):
their module tree (which fixes the state-dict keys), their layer types and their equations,
not refimpl's code. The encoder under both heads is transformers' ``LiltModel``, the port of the
original encoder (no pooler, as the original heads build it). Only tests import this (torch).

Module tree (= state-dict keys):

    lilt                      LiltModel(config, add_pooling_layer=False)
    dropout                   Dropout(hidden_dropout_prob) on cat(text, layout)
    classifier                Linear(hidden + hidden // r, num_labels)          (token classification)
    extractor.entity_emb      Embedding(3, D)                                     (relation extraction)
    extractor.ffnn_head       Sequential(Linear(2D, h), ReLU, Dropout, Linear(h, h // 2), ReLU, Dropout)
    extractor.ffnn_tail       the same, separate weights
    extractor.rel_classifier  bilinear = Bilinear(h // 2, h // 2, 2, bias=False), linear = Linear(h, 2)
    extractor.loss_fct        CrossEntropyLoss()
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LiltModel


def layout_output(lilt: LiltModel, **inputs):
    """transformers' ``LiltModel`` hides the layout stream's last state: read it off the last
    layer's output with a forward hook. Returns ``(text [b, s, h], layout [b, s, h / r], outputs)``."""
    seen = {}

    def grab(module, args, output):
        seen["layout"] = output[0][1]  # LiltLayer returns ((text, layout), attentions...)

    handle = lilt.encoder.layer[-1].register_forward_hook(grab)
    try:
        out = lilt(**inputs)
    finally:
        handle.remove()
    return out.last_hidden_state, seen["layout"], out


class TokenClassifier(nn.Module):
    """``LiLTRobertaLikeForTokenClassification``: a linear layer on the joined streams; the
    loss counts the tokens where ``attention_mask == 1`` (others get the ignored label -100)."""

    def __init__(self, config):
        super().__init__()
        width = config.hidden_size + config.hidden_size // config.channel_shrink_ratio
        self.lilt = LiltModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(self, labels=None, **inputs):
        text, layout, _ = layout_output(self.lilt, **inputs)
        logits = self.classifier(self.dropout(torch.cat([text, layout], dim=-1)))
        loss = None
        if labels is not None:
            flat = labels.reshape(-1).clone()
            mask = inputs.get("attention_mask")
            if mask is not None:
                flat[mask.reshape(-1) != 1] = -100
            loss = nn.functional.cross_entropy(logits.reshape(flat.numel(), -1), flat, ignore_index=-100)
        return loss, logits


class Biaffine(nn.Module):
    """``s = x1^T W x2 + V [x1; x2] + b`` with ``W`` a ``Bilinear`` without bias."""

    def __init__(self, d: int, classes: int = 2):
        super().__init__()
        self.bilinear = nn.Bilinear(d, d, classes, bias=False)
        self.linear = nn.Linear(2 * d, classes)

    def forward(self, x1, x2):
        return self.bilinear(x1, x2) + self.linear(torch.cat([x1, x2], dim=-1))


def projection(d_in: int, hidden: int, p: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(hidden, hidden // 2),
        nn.ReLU(),
        nn.Dropout(p),
    )


def pairs_of(entities: dict, gold: dict):
    """One document's candidate pairs, as the paper's code describes them.

    A document of at most two entities is decoded as two HEADER entities at token 0 (start 0,
    end 1). Candidates: every (question=1, answer=2) pair, else the single pair (0, 1). Gold
    pairs that are candidates are positives (label 1), listed first, then the other
    candidates (label 0); each group comes in the iteration order of the Python set the
    original collects it in (filled in the same order, so CPython hashing gives the same order).

    Returns ``(entities used, heads, tails, labels)``.
    """
    if len(entities["start"]) <= 2:
        entities = {"start": [0, 0], "end": [1, 1], "label": [0, 0]}
    labels = entities["label"]
    candidates = set()
    for i in range(len(labels)):
        for j in range(len(labels)):
            if labels[i] == 1 and labels[j] == 2:
                candidates.add((i, j))
    if len(candidates) == 0:
        candidates = set()
        candidates.add((0, 1))
    gold_set = set()
    for h, t in zip(gold["head"], gold["tail"], strict=True):
        gold_set.add((h, t))
    negative = candidates.difference(gold_set)
    positive = set()
    for pair in gold_set:
        if pair in candidates:
            positive.add(pair)
    ordered = [*positive, *negative]
    return (
        entities,
        [h for h, _ in ordered],
        [t for _, t in ordered],
        [1 for _ in positive] + [0 for _ in negative],
    )


class Extractor(nn.Module):
    """``REDecoder(config, D)``: entity-label embedding, two projections, biaffine classifier."""

    def __init__(self, config, width: int):
        super().__init__()
        h, p = config.hidden_size, config.hidden_dropout_prob
        self.entity_emb = nn.Embedding(3, width, scale_grad_by_freq=True)  # re.py:59
        self.ffnn_head = projection(2 * width, h, p)
        self.ffnn_tail = projection(2 * width, h, p)
        self.rel_classifier = Biaffine(h // 2, 2)
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, x, entities, relations):
        logits_all, labels_all, predicted, used = [], [], [], []
        for b in range(x.shape[0]):
            gold = relations[b] if relations is not None else {"head": [], "tail": []}
            ents, heads, tails, labels = pairs_of(entities[b], gold)
            start = torch.tensor(ents["start"])
            kind = torch.tensor(ents["label"])
            hi, ti = torch.tensor(heads), torch.tensor(tails)
            head_emb = self.entity_emb(kind[hi])
            tail_emb = self.entity_emb(kind[ti])
            u = self.ffnn_head(torch.cat([x[b, start[hi]], head_emb], dim=-1))
            v = self.ffnn_tail(torch.cat([x[b, start[ti]], tail_emb], dim=-1))
            logits = self.rel_classifier(u, v)
            doc_pred = []
            for k, c in enumerate(logits.argmax(-1).tolist()):
                if c == 1:
                    h, t = heads[k], tails[k]
                    doc_pred.append(
                        dict(
                            head_id=h,
                            head=(ents["start"][h], ents["end"][h]),
                            head_type=ents["label"][h],
                            tail_id=t,
                            tail=(ents["start"][t], ents["end"][t]),
                            tail_type=ents["label"][t],
                            type=1,
                        )
                    )
            predicted.append(doc_pred)
            logits_all.append(logits)
            labels_all.extend(labels)
            used.append(ents)
        logits = torch.cat(logits_all)
        loss = self.loss_fct(logits, torch.tensor(labels_all)) if relations is not None else None
        return loss, logits, predicted, used


class RelationExtractor(nn.Module):
    """``LiLTRobertaLikeForRelationExtraction``: ``Extractor`` on the joined streams."""

    def __init__(self, config):
        super().__init__()
        width = config.hidden_size + config.hidden_size // config.channel_shrink_ratio
        self.lilt = LiltModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.extractor = Extractor(config, width)

    def forward(self, entities, relations=None, **inputs):
        text, layout, _ = layout_output(self.lilt, **inputs)
        return self.extractor(self.dropout(torch.cat([text, layout], dim=-1)), entities, relations)


def original_key_shapes(config, head: str) -> dict[str, tuple[int, ...]]:
    """The head keys and shapes the original's modules hold (``h`` hidden, ``D = h + h // r``),
    written out from its ``__init__``s: ``classifier = Linear(D, num_labels)``;
    ``REDecoder(config, D)``: ``Embedding(3, D)``, ``Linear(2D, h)``, ``Linear(h, h // 2)``,
    ``Bilinear(h // 2, h // 2, 2, bias=False)``, ``Linear(2 * (h // 2), 2)``."""
    h = config.hidden_size
    d = h + h // config.channel_shrink_ratio
    if head == "token":
        return {"classifier.weight": (config.num_labels, d), "classifier.bias": (config.num_labels,)}
    out = {"extractor.entity_emb.weight": (3, d)}
    for side in ("ffnn_head", "ffnn_tail"):
        out |= {
            f"extractor.{side}.0.weight": (h, 2 * d),
            f"extractor.{side}.0.bias": (h,),
            f"extractor.{side}.3.weight": (h // 2, h),
            f"extractor.{side}.3.bias": (h // 2,),
        }
    out |= {
        "extractor.rel_classifier.bilinear.weight": (2, h // 2, h // 2),
        "extractor.rel_classifier.linear.weight": (2, 2 * (h // 2)),
        "extractor.rel_classifier.linear.bias": (2,),
    }
    return out
