"""The text encoder's INT4 weights dequantized in one kernel: w = q · s + m per 64-input group, written in the
activations' dtype.

Reference (var_gen_ros/quant/int4_weight.py, `Int4WeightLinear.dequantized(float32).to(dtype)`): unpack the
two codes of each byte (the even input in the low nibble), then q · s and + m in float32, each rounded (no
fused multiply-add), then one rounding to bf16. In PyTorch that is about ten launches per Linear (mask, shift,
stack, copy, three casts, multiply, add, cast), each over a float32 copy of the whole weight; the T5-XL encoder
has 168 Linears, and on the H200 its INT4 text stage took 63 ms against the INT8 encoder's 34-36 on the H100
(docs/BENCHMARKS.md, seventeenth session). Here each weight byte is read once and the 16-bit weight written
once. The kernel is compiled without floating-point contraction so that its results equal the reference's bit
for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launcher


@triton.jit
def _int4_dequant_kernel(P, S, O, Y, N, K, G, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    # a (BLOCK_N, BLOCK_K) tile as (rows, groups, bytes of a group): one scale and offset per (row, group),
    # broadcast over its bytes; the two nibbles' weights joined back into input order for the store.
    # (Indexing each weight's byte and group directly instead took 96 registers and spilled; this takes
    # 32-39 and stores 16 bytes per instruction, ptxas for sm_87 and sm_90.)
    HALF: tl.constexpr = GROUP // 2
    NG: tl.constexpr = BLOCK_K // GROUP
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    gs = tl.program_id(1) * NG + tl.arange(0, NG)
    r64 = rows.to(tl.int64)
    gmask = (rows[:, None] < N) & (gs[None, :] < G)
    s = tl.load(S + r64[:, None] * G + gs[None, :], mask=gmask, other=0.0).to(tl.float32)[:, :, None]
    m = tl.load(O + r64[:, None] * G + gs[None, :], mask=gmask, other=0.0).to(tl.float32)[:, :, None]
    bcol = gs[None, :, None] * HALF + tl.arange(0, HALF)[None, None, :]
    byte = tl.load(P + r64[:, None, None] * (K // 2) + bcol, mask=gmask[:, :, None], other=0).to(tl.int32)
    lo = (byte & 15).to(tl.float32) * s + m            # the even input of each byte
    hi = (byte >> 4).to(tl.float32) * s + m
    w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    tl.store(Y + r64[:, None] * K + cols[None, :], w.to(Y.dtype.element_ty), mask=mask)


_DEQUANT = Launcher(_int4_dequant_kernel)
BLOCK_N, BLOCK_K = 16, 256


def int4_dequant(packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int,
                 dtype: torch.dtype, out: torch.Tensor = None) -> torch.Tensor:
    """packed (N, K/2) uint8, scale and offset (N, K/group) float16 -> the (N, K) weight in `dtype`
    (into `out` when given)."""
    N, half = packed.shape
    K = 2 * half
    G = K // group
    if group < 2 or group & (group - 1) or group > BLOCK_K:
        raise ValueError(f"int4_dequant: groups of a power of two from 2 to {BLOCK_K} inputs, not {group}")
    if group * G != K or scale.shape != (N, G) or offset.shape != (N, G):
        raise ValueError(f"int4_dequant: {tuple(packed.shape)} bytes with groups of {group} need scale and offset "
                         f"({N}, {G}), not {tuple(scale.shape)} and {tuple(offset.shape)}")
    if not (packed.is_contiguous() and scale.is_contiguous() and offset.is_contiguous()):
        raise ValueError("int4_dequant: packed codes, scales and offsets must be contiguous")
    y = torch.empty(N, K, dtype=dtype, device=packed.device) if out is None else out
    if N == 0 or K == 0:
        return y
    grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(K, BLOCK_K))
    _DEQUANT(grid, (packed, scale, offset, y, N, K, G),
             dict(BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP=group, num_warps=4, enable_fp_fusion=False))
    return y
