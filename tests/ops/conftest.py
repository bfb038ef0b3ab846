import inspect

import pytest

_ACTIVATIONS = ("X", "R", "Y", "DY", "DX")  # pointer arguments in the activation dtype
_PARAMETERS = ("W", "B", "RUNNING_MEAN", "RUNNING_VAR")  # weight and bias (norms) or bias (leaky_relu, tanh)
_FP32 = ("PARTS", "SUMS", "MEAN", "RSTD", "VAR", "PDB", "DW", "DB")  # statistics, partial sums, their sums
_INT32 = ("TICKETS", "COUNTERS")  # counters of _triton_util.sum_over_programs and group_barrier
_INT64 = ("NUM_BATCHES",)  # nn.BatchNorm2d's num_batches_tracked


@pytest.fixture
def sm90_ptx():
    """Returns ptx(kernel, constexprs, unit_stride, dtype="bf16", parameter_dtype="fp32"): the PTX of a fastgan
    Triton kernel compiled for an H100 without one, for the compiled-mode errors the interpreter cannot show.

    ``unit_stride`` names the stride argument that is 1 (``stride_c`` for NHWC, ``stride_s`` for NCHW), as
    Triton specialises it at a real launch; integer and pointer arguments carry the divisibility by 16 it
    infers there; ``eps``, ``negative_slope`` and ``momentum`` are fp32 scalars.
    """
    pytest.importorskip("triton")
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    def ptx(k, constexprs, unit_stride, dtype="bf16", parameter_dtype="fp32"):
        signature = {}
        for name in inspect.signature(k.fn).parameters:
            if name in constexprs or name == unit_stride:
                signature[name] = "constexpr"
            elif name in ("eps", "negative_slope", "momentum"):
                signature[name] = "fp32"
            elif name in _ACTIVATIONS:
                signature[name] = "*" + dtype
            elif name in _PARAMETERS:
                signature[name] = "*" + parameter_dtype
            elif name in _FP32:
                signature[name] = "*fp32"
            elif name in _INT32:
                signature[name] = "*i32"
            elif name in _INT64:
                signature[name] = "*i64"
            else:
                signature[name] = "i32"
        index = {name: (i,) for i, name in enumerate(signature)}
        values = {index[name]: v for name, v in constexprs.items()} | {index[unit_stride]: 1}
        attrs = {index[name]: [["tt.divisibility", 16]] for name, t in signature.items() if t == "i32" or "*" in t}
        source = ASTSource(fn=JITFunction(k.fn), signature=signature, constexprs=values, attrs=attrs)
        return triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]

    return ptx
