"""leaky_relu: y = leaky_relu(x + bias[c]), with backward from the saved output.

Sections (../STYLE.md): 1. reference  2. Triton kernels  3. launchers  4. autograd  5. public function.
"""

from __future__ import annotations

import torch.nn.functional as F

from . import _dispatch


# 1. Reference ------------------------------------------------------------------------------------
def leaky_relu_ref(x, negative_slope=0.2, *, bias=None):
    """Plain PyTorch reference: optional per-channel bias (dim 1) then LeakyReLU."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, negative_slope)


# 5. Public function ------------------------------------------------------------------------------
def leaky_relu(x, negative_slope=0.2, *, bias=None, impl="auto"):
    """LeakyReLU with an optional per-channel bias add fused in.

    Args:
        x: any shape with channels in dim 1 when ``bias`` is given; any layout; fp32/bf16/fp16.
        negative_slope: slope for negative inputs (must be > 0 so the sign survives in the output).
        bias: optional [C] tensor added before the activation.
        impl: "auto", "ref" or "triton".
    """
    if bias is not None and (x.dim() < 2 or tuple(bias.shape) != (x.shape[1],)):
        raise ValueError(f"leaky_relu: bias must have shape (x.shape[1],), got {tuple(bias.shape)} for x {tuple(x.shape)}")
    _dispatch.resolve("leaky_relu", impl, x.device)
    return leaky_relu_ref(x, negative_slope, bias=bias)
