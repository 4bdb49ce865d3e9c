"""Every fast kernel, one level below the formulas it replaces.

Each kernel carries the name of the op it replaces (``refimpl.fast.dense.layer_norm`` runs in
place of ``refimpl.ops.layer_norm``), declares it (``@kernel_for(ops.layer_norm)``, see
`refimpl.switch`) and is tested against its formula (``tests/test_fast.py``): bit-identical,
or within the bound its module states. Importing this package registers them all; ``import
refimpl`` does.

* `refimpl.fast.blocks`: the one block size and the one host-thread scheduler;
* `refimpl.fast.erf`: erf and the exact GELU, and their float32 approximations;
* `refimpl.fast.dense`: the linear GEMM, LayerNorm, BERT's add-and-norm and intermediate blocks;
* `refimpl.fast.attention`: softmax, masked softmax, the attention products, and fused BERT
  and BiACM attention.

The switch: the kernels run by default; ``refimpl.reference()`` (a context manager) or
``REFIMPL_REFERENCE=1`` in the environment runs the formulas. [mode][refimpl.fast.mode] says
which is in effect, for a golden file's manifest.
"""

from __future__ import annotations

from ..switch import kernels, mode, reference
from . import attention, blocks, dense, erf

__all__ = ["mode", "reference", "kernels", "attention", "blocks", "dense", "erf"]
