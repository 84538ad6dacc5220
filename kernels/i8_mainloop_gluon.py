"""The i8w GEMM's main loop written in Gluon (Triton's lower-level language), so that its INT8 wgmma runs
asynchronously: a probe for whether the W4A4 GEMM's K loop can go faster on Hopper (forty-eighth session).

Why: Triton's pipeliner makes a Hopper dot "properly async" (one wgmma group left in flight while the next
stage's loads and barrier waits are issued) only when the accumulator is float32 (Triton 3.6,
WGMMAPipeline.cpp, `dotCanBeProperlyAsync`, rule 2.1). The i8 path accumulates in int32, so every K step of
`_w4a4_i8_kernel` ends in `warp_group_dot_wait {pendings = 0}`: the tensor cores idle while the next step is
issued (seen in its sm_90 TTGIR; an fp16 loop of the same shape gets `pendings = 1`). Gluon does not run that
pass: here the loop waits with `num_outstanding=1` (`wgmma.wait_group 1` in the PTX).

What it computes: y = bf16(float(a · wᵀ)) for int8 a (M, K) and w (N, K), K a multiple of BLOCK_K, through
host TMA descriptors and a STAGES-deep ring of shared-memory buffers with one mbarrier each. No epilogue
beyond the store: the product's scales, low-rank branch, bias and GELU are not here yet. Reference:
`reference` below (exact int32 sums, then the same roundings).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


@gluon.jit
def _i8_mainloop_kernel(a_desc, w_desc, y_ptr, M, N, K, STAGES: gl.constexpr, INSTR_N: gl.constexpr,
                        num_warps: gl.constexpr):
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
    # int8 wgmma: m16 per warp, k32, n one of the sizes int8 allows (up to 224; 128 divides every tile here)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, INSTR_N, 32])
    acc = gl.zeros((BM, BN), dtype=gl.int32, layout=acc_layout)
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
    rm = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
    rn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
    gl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(gl.float32).to(gl.bfloat16),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


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
