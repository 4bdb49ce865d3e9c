"""LXMERT (Tan & Bansal, 2019) as NumPy functions, equal to transformers 4.56.2.

Public classes: `LxmertModel`, `LxmertForPreTraining`,
`LxmertForQuestionAnswering`. The computation lives in `refimpl.lxmert.layers`
(embeddings, visual feature encoder, language / relationship / cross-modality layers, pooler)
and `refimpl.lxmert.heads` (pre-training and answer heads, losses); their backwards, for
``model.backward``, in `refimpl.lxmert.backward`, `refimpl.lxmert.heads` and
`refimpl.lxmert.modeling_backward`.
``refimpl.lxmert.labels`` names the heads' outputs: ``vocabulary(name)`` and ``decode_top``
(the bundled VQA / GQA / pre-training answers and Visual Genome objects / attributes).
"""

from .labels import decode_top, vocabulary
from .modeling import LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel
from .tokenization import LxmertTokenizer

__all__ = [
    "LxmertModel",
    "LxmertForPreTraining",
    "LxmertForQuestionAnswering",
    "LxmertTokenizer",
    "vocabulary",
    "decode_top",
]
