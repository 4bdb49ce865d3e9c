"""LiLT (Language-independent Layout Transformer), as transformers 4.56.2 computes it.

Files, bottom-up: ``embeddings.py`` (text + layout streams), ``layers.py`` (bi-directional
attention, feed-forward blocks, encoder, pooler), ``heads.py`` (task heads and losses),
``modeling.py`` (input checks, the forward pass, the public classes); ``original.py`` and
``original_re.py`` (the fine-tuning heads of the original LiLT repository, jpWang/LiLT).
"""

from .modeling import (
    LiltForQuestionAnswering,
    LiltForSequenceClassification,
    LiltForTokenClassification,
    LiltModel,
)
from .original import LiLTRobertaLikeForRelationExtraction, LiLTRobertaLikeForTokenClassification
from .tokenization import LiltTokenizer

__all__ = [
    "LiltModel",
    "LiltForSequenceClassification",
    "LiltForTokenClassification",
    "LiltForQuestionAnswering",
    "LiltTokenizer",
    "LiLTRobertaLikeForTokenClassification",
    "LiLTRobertaLikeForRelationExtraction",
]
