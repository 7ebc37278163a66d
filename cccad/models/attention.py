"""Scaled dot-product attention, (B, H, M, D) queries against (B, H, N, D) keys and values.

PyTorch's fused kernels serve every case but one: training on the CPU with dropout, where its
kernel stores the (M x N) probabilities and a dropout mask per head (at head size 8 most of an AD
training step). There a kernel of our own (attention.cpp, built on first use with the machine's
C++ compiler, as DeepSpeed's ops are) keeps nothing of size M x N: scores, softmax and dropout
live in a row buffer, and the backward pass recomputes them, regenerating the dropout mask from a
hash of (seed, row, column). The seed is drawn from torch's generator, so a checkpoint's RNG state
resumes it exactly.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F


# instruction sets by what torch finds on this CPU: a build is for one of them, named after it, so
# a cache shared by machines of several kinds (a cluster's filesystem) never hands one another's
VECTOR_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
                "AVX2": ["-mavx2", "-mfma"]}


@functools.cache
def kernel():
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = VECTOR_FLAGS.get(capability, [])
    return load(f"cccad_attention_{capability.lower() if flags else 'default'}",
                [str(Path(__file__).with_name("attention.cpp"))],
                # (these let the compiler vectorise the row loops)
                extra_cflags=["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", *flags], verbose=False)


class FusedAttention(torch.autograd.Function):
    """The CPU kernel's forward and backward on (B, H, T, D) float32 tensors (any strides but a
    contiguous last dimension: the heads of a qkv projection are read in place)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, p: float, scale: float):
        seed = int(torch.randint(0, 2**62, (1,)).item()) if p > 0 else 0
        out, lse = kernel().forward(q, k, v, causal, p, seed, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, p, seed, scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = kernel().backward(dout, *ctx.saved_tensors, *ctx.args)
        return dq, dk, dv, None, None, None


def attention(q, k, v, causal: bool, dropout: float, training: bool) -> torch.Tensor:
    p = dropout if training else 0.0
    if p > 0 and q.device.type == "cpu" and q.dtype == torch.float32:
        return FusedAttention.apply(q, k, v, causal, p, q.shape[-1] ** -0.5)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
