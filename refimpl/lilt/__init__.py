"""LiLT (Language-independent Layout Transformer), as transformers 4.56.2 computes it.

Files, bottom-up: ``embeddings.py`` (text + layout streams), ``layers.py`` (bi-directional
attention, feed-forward blocks, encoder, pooler), ``heads.py`` (task heads and losses),
``modeling.py`` (input checks, the forward pass, the public classes).
"""

from .modeling import (
    LiltForQuestionAnswering,
    LiltForSequenceClassification,
    LiltForTokenClassification,
    LiltModel,
)
from .tokenization import LiltTokenizer

__all__ = [
    "LiltModel",
    "LiltForSequenceClassification",
    "LiltForTokenClassification",
    "LiltForQuestionAnswering",
    "LiltTokenizer",
]
