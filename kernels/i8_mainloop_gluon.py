"""The i8w GEMM written in Gluon (Triton's lower-level language), so that its INT8 wgmma runs asynchronously: a
probe for whether the W4A4 GEMM can go faster on Hopper (forty-eighth session).

Why: Triton's pipeliner makes a Hopper dot "properly async" (one wgmma group left in flight while the next
stage's loads and barrier waits are issued) only when the accumulator is float32 (Triton 3.6,
WGMMAPipeline.cpp, `dotCanBeProperlyAsync`, rule 2.1). The i8 path accumulates in int32, so every K step of
`_w4a4_i8_kernel` ends in `warp_group_dot_wait {pendings = 0}`: the tensor cores idle while the next step is
issued (seen in its sm_90 TTGIR; an fp16 loop of the same shape gets `pendings = 1`). Gluon does not run that
pass: here the loop waits with `num_outstanding=1` (`wgmma.wait_group 1` in the PTX).

What it computes: `i8_mainloop`, the loop alone: y = bf16(float(a · wᵀ)) for int8 a (M, K) and w (N, K), K a
multiple of BLOCK_K, through host TMA descriptors and a STAGES-deep ring of shared-memory buffers with one mbarrier
each (reference: `reference` below, the exact int32 sums, then the same roundings). `i8w_gemm`, the whole i8w GEMM
after kernel 1: that loop, then `_w4a4_i8_kernel`'s epilogue in its LR_BF16 form (reference:
`W4A4Linear.reference_forward`, and the Triton forward; test/test_kernels_gpu.py). Not in the product's dispatch
until measured (`bench/i8_mainloop.py`).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                               warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


@gluon.constexpr_function
def _mma_layout(instr_n, instr_k, num_warps):
    """A wgmma accumulator's layout: m16 per warp, the warps along M; for int8 n must be one of the sizes int8 allows
    (up to 224: 128 divides every tile here) and k is 32, for bf16 k is 16."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, instr_n, instr_k])


@gluon.jit
def _tile_sums(a_desc, w_desc, K, STAGES: gl.constexpr, INSTR_N: gl.constexpr, num_warps: gl.constexpr):
    """(acc, off_m, off_n): this program's tile's int32 sums a[off_m:+BM] · w[off_n:+BN]ᵀ over all of K, through a
    STAGES-deep ring of TMA tiles with one mbarrier each and one wgmma group left in flight."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    a_s = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    w_s = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BN, BK], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(STAGES):
        mbarrier.init(ready.index(b), count=1)
    acc = gl.zeros((BM, BN), dtype=gl.int32, layout=_mma_layout(INSTR_N, 32, num_warps))
    steps = K // BK
    nbytes: gl.constexpr = a_desc.block_type.nbytes + w_desc.block_type.nbytes
    for p in gl.static_range(STAGES - 1):           # the first STAGES - 1 steps' tiles in flight
        if p < steps:
            mbarrier.expect(ready.index(p), nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, p * BK], ready.index(p), a_s.index(p))
            tma.async_copy_global_to_shared(w_desc, [off_n, p * BK], ready.index(p), w_s.index(p))
    for i in range(steps):
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        acc = warpgroup_mma(a_s.index(s), w_s.index(s).permute((1, 0)), acc, is_async=True)
        # this step's wgmma stays in flight; the previous step's is done, so its stage can be refilled
        acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_s.index(s), w_s.index(s)))
        j = i + STAGES - 1
        if j < steps:
            sj = j % STAGES
            mbarrier.expect(ready.index(sj), nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, j * BK], ready.index(sj), a_s.index(sj))
            tma.async_copy_global_to_shared(w_desc, [off_n, j * BK], ready.index(sj), w_s.index(sj))
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for b in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(b))
    return acc, off_m, off_n


@gluon.jit
def _i8_mainloop_kernel(a_desc, w_desc, y_ptr, M, N, K, STAGES: gl.constexpr, INSTR_N: gl.constexpr,
                        num_warps: gl.constexpr):
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    acc_layout: gl.constexpr = _mma_layout(INSTR_N, 32, num_warps)
    acc, off_m, off_n = _tile_sums(a_desc, w_desc, K, STAGES, INSTR_N, num_warps)
    rm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
    rn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
    gl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(gl.float32).to(gl.bfloat16),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@gluon.jit
def _i8w_gemm_kernel(a_desc, w_desc, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, HAS_BIAS: gl.constexpr,
                     HAS_LR: gl.constexpr, R: gl.constexpr, ACT: gl.constexpr, STAGES: gl.constexpr,
                     INSTR_N: gl.constexpr, num_warps: gl.constexpr):
    """The whole i8w forward after kernel 1: `_tile_sums`, then `_w4a4_i8_kernel`'s epilogue in its
    sm_80-sm_89 form (LR_BF16): the rows' and columns' units, the low-rank up-projection as two bf16 wgmmas of the
    float32 partial's high and low bf16 parts, bias, GELU-tanh (ACT 1), the bf16 store."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    acc, off_m, off_n = _tile_sums(a_desc, w_desc, K, STAGES, INSTR_N, num_warps)
    # the float32 epilogue in the bf16 wgmma's accumulator layout (the same registers: only k differs)
    layout: gl.constexpr = _mma_layout(INSTR_N, 16, num_warps)
    out = gl.convert_layout(acc.to(gl.float32), layout)
    rm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    rn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
    ux = gl.load(ux_ptr + rm, mask=rm < M, other=0.0)
    uw = gl.load(uw_ptr + rn, mask=rn < N, other=0.0)
    out = out * (ux[:, None] * uw[None, :])
    if HAS_LR:
        blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[8, 4],
                                             warps_per_cta=[num_warps, 1], order=[1, 0])
        r = gl.arange(0, R, layout=gl.SliceLayout(0, blk))
        rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, blk))
        lr = gl.load(lr_ptr + rows[:, None] * R + r[None, :], mask=rows[:, None] < M, other=0.0)
        cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, blk))
        up = gl.load(up_ptr + cols[:, None] * R + r[None, :], mask=cols[:, None] < N, other=0.0)
        up_s = gl.allocate_shared_memory(gl.bfloat16, [BN, R], gl.NVMMASharedLayout.get_default_for([BN, R], gl.bfloat16),
                                         up)
        fence_async_shared()
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2)
        hi = lr.to(gl.bfloat16)
        lo = (lr - hi.to(gl.float32)).to(gl.bfloat16)
        out = warpgroup_mma(gl.convert_layout(hi, a_layout), up_s.permute((1, 0)), out)
        out = warpgroup_mma(gl.convert_layout(lo, a_layout), up_s.permute((1, 0)), out)
    if HAS_BIAS:
        out = out + gl.load(b_ptr + rn, mask=rn < N, other=0.0).to(gl.float32)[None, :]
    if ACT == 1:     # GELU, tanh approximation, as `_activation` in w4a4_gemm_triton.py
        u = 0.7978845608028654 * (out + 0.044715 * out * out * out)
        out = out / (1.0 + gl.exp(-2.0 * u))
    gl.store(y_ptr + rm[:, None] * N + rn[None, :], out.to(gl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))


def descriptors(a: torch.Tensor, w: torch.Tensor, block_m: int, block_n: int, block_k: int):
    """Host TMA descriptors of a (M, K) and w (N, K), int8, for (block_m, block_k) and (block_n, block_k) tiles."""
    la = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.int8)
    lw = gl.NVMMASharedLayout.get_default_for([block_n, block_k], gl.int8)
    return (TensorDescriptor(a, list(a.shape), list(a.stride()), [block_m, block_k], la),
            TensorDescriptor(w, list(w.shape), list(w.stride()), [block_n, block_k], lw))


def i8_mainloop(a: torch.Tensor, w: torch.Tensor, y: torch.Tensor = None, block_m: int = 128, block_n: int = 256,
                block_k: int = 128, stages: int = 4, num_warps: int = 8) -> torch.Tensor:
    """y (M, N) bf16 = a · wᵀ for int8 a (M, K), w (N, K) on an sm_90 GPU."""
    M, K = a.shape
    N = w.shape[0]
    if a.dtype != torch.int8 or w.dtype != torch.int8 or w.shape[1] != K or K % block_k:
        raise ValueError(f"i8_mainloop: int8 a (M, K) and w (N, K) with K % {block_k} == 0, got {a.shape}, {w.shape}")
    y = torch.empty(M, N, dtype=torch.bfloat16, device=a.device) if y is None else y
    da, dw = descriptors(a.contiguous(), w.contiguous(), block_m, block_n, block_k)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _i8_mainloop_kernel[grid](da, dw, y, M, N, K, STAGES=stages, INSTR_N=min(block_n, 128), num_warps=num_warps)
    return y


def reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact int32 sums (float64 holds them exactly: |Σ| < 2^31), rounded as the kernel rounds them."""
    return (a.double() @ w.double().t()).to(torch.int32).float().bfloat16()


def i8w_gemm(q: torch.Tensor, wq: torch.Tensor, ux: torch.Tensor, uw: torch.Tensor, lr, up, bias, act: int = 0,
             y: torch.Tensor = None, block_m: int = 128, block_n: int = 256, block_k: int = 128, stages: int = 4,
             num_warps: int = 8) -> torch.Tensor:
    """The i8w GEMM after kernel 1 (`w4a4_gemm_triton.quantize_activations(..., i8=True)` and the int8 weight
    workspace): q (M, K) int8, wq (N, K) int8, ux (M,) and uw (N,) float32, lr (M, R) float32 (one partial) or None,
    up (N, R) bf16, bias (N,) bf16 or None, act 1 for GELU-tanh. y (M, N) bf16."""
    M, K = q.shape
    N = wq.shape[0]
    if K % block_k:
        raise ValueError(f"i8w_gemm: K % {block_k} != 0 (K = {K})")
    y = torch.empty(M, N, dtype=torch.bfloat16, device=q.device) if y is None else y
    da, dw = descriptors(q, wq, block_m, block_n, block_k)
    R = up.shape[1] if lr is not None else 16
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _i8w_gemm_kernel[grid](da, dw, ux, uw, lr if lr is not None else ux, up if lr is not None else y,
                           bias if bias is not None else y, y, M, N, K, HAS_BIAS=bias is not None,
                           HAS_LR=lr is not None, R=R, ACT=act, STAGES=stages, INSTR_N=min(block_n, 128),
                           num_warps=num_warps)
    return y
