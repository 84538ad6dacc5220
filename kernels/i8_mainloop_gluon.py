"""The W4A4 GEMM's INT8 sums written in Gluon (Triton's lower-level language), so that its INT8 wgmma runs
asynchronously on Hopper (forty-eighth and forty-ninth sessions; the product's default on sm_90 since the fiftieth).

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
`W4A4Linear.reference_forward`, and the Triton forward; test/test_kernels_gpu.py). The product's i8w GEMM on sm_90
from 513 rows (`VAR_GEN_W4A4_GLUON`; on an H100 the 1024² generation 7 % faster, docs/BENCHMARKS.md "Fiftieth
session").

`i8p_gemm` (forty-ninth session): the same integer sums on the layer's packed INT4 codes, no workspace: the next K
step's codes made in registers while this step's wgmma runs, then stored to the shared-memory tile the next wgmma
reads (the in-register i8 path's work, which Triton's loop does with every wgmma waited for), for the 33-2048 rows
where the GEMM table is furthest behind bf16; swapped (the weights on the wgmma's M side) up to 128 rows, K split where
the tiles leave SMs idle. The product's GEMM on sm_90 for 33-288 rows (`VAR_GEN_W4A4_GLUON_I8P`; on an H100 the
1024² scales of 72-288 rows 6-18 % faster with it, those of 800-2048 rows slower, `bench/i8p_gemm.py`,
`bench/device/gluon_gemms.sh`). `_i8p_ws_kernel` is its warp-specialized form (the codes made by warps of their own),
off (`VAR_GEN_W4A4_I8P_WS`; not yet run on a GPU).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

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


@gluon.constexpr_function
def _unpack_layout(width, groups_per_step, num_warps):
    """i8p's unpack layouts: (BN, width) with a thread holding one row's 64-code group (width 8 of a step's 16 packed
    words, or 16 of its 32 code words), or with width None, (BN, groups_per_step, 8): the packed words seen by group."""
    if width is None:
        return gl.BlockedLayout(size_per_thread=[1, 1, 8], threads_per_warp=[32 // groups_per_step, groups_per_step, 1],
                                warps_per_cta=[num_warps, 1, 1], order=[2, 1, 0])
    return gl.BlockedLayout(size_per_thread=[1, width], threads_per_warp=[32 // groups_per_step, groups_per_step],
                            warps_per_cta=[num_warps, 1], order=[1, 0])


@gluon.jit
def _scale_pointers(sw_ptr, wu_ptr, off_n, N, K, k0, BN: gl.constexpr, GPS: gl.constexpr, packed3: gl.constexpr):
    """(1 / u_w of the tile's weight rows, the pointers to their first K step's GPS group scales), in the layout of
    `packed3`'s groups (rows past N wrap: read, never stored)."""
    groups: gl.constexpr = gl.SliceLayout(2, packed3)
    wn = off_n + gl.arange(0, BN, layout=gl.SliceLayout(1, groups))
    gi = gl.arange(0, GPS, layout=gl.SliceLayout(0, groups))
    return 1.0 / gl.load(wu_ptr + (wn % N)), sw_ptr + (wn % N)[:, None] * (K // 64) + k0 * GPS + gi[None, :]


@gluon.jit
def _k_share(K, BK: gl.constexpr, SPLIT_K: gl.constexpr):
    """(first K step, steps) of this program's share of K's BK-wide steps: program_id(2) of SPLIT_K (cdiv shares)."""
    share = gl.cdiv(K // BK, SPLIT_K)
    k0 = gl.program_id(2) * share
    return k0, gl.minimum(share, K // BK - k0)


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
def _i8w_gemm_kernel(a_desc, w_desc, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, nx_inv_ptr, nx_max_ptr, nx_dh_ptr,
                     nx_dl_ptr, nx_lr_ptr, M, N, K, HAS_BIAS: gl.constexpr, HAS_LR: gl.constexpr, R: gl.constexpr,
                     ACT: gl.constexpr, STAGES: gl.constexpr, INSTR_N: gl.constexpr, NEXT: gl.constexpr,
                     R2: gl.constexpr, num_warps: gl.constexpr):
    """The whole i8w forward after kernel 1: `_tile_sums`, then `_finish_tile` (`_w4a4_i8_kernel`'s epilogue in its
    sm_80-sm_89 form, LR_BF16: the rows' and columns' units, the low-rank up-projection as two bf16 wgmmas of the
    float32 partial's high and low bf16 parts, bias, GELU-tanh (ACT 1), the bf16 store; with NEXT the next layer's
    row pass from the stored tile, `_next_row_stats`)."""
    acc, off_m, off_n = _tile_sums(a_desc, w_desc, K, STAGES, INSTR_N, num_warps)
    _finish_tile(acc, off_m, off_n, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, y_ptr, y_ptr, M, N, HAS_BIAS, HAS_LR,
                 R, ACT, False, 1, _mma_layout(INSTR_N, 16, num_warps), num_warps,
                 (nx_inv_ptr, nx_max_ptr, nx_dh_ptr, nx_dl_ptr, nx_lr_ptr), NEXT, R2)


def descriptors(a: torch.Tensor, w: torch.Tensor, block_m: int, block_n: int, block_k: int):
    """Host TMA descriptors of a (M, K) and w (N, K), int8, for (block_m, block_k) and (block_n, block_k) tiles."""
    la = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.int8)
    lw = gl.NVMMASharedLayout.get_default_for([block_n, block_k], gl.int8)
    return (TensorDescriptor(a, list(a.shape), list(a.stride()), [block_m, block_k], la),
            TensorDescriptor(w, list(w.shape), list(w.stride()), [block_n, block_k], lw))


@dataclass
class NextRowStats:
    """What `_next_row_stats` needs and makes for the layer after this one (FC2_STATS in w4a4_gemm_triton.py): that
    layer's 1/λ (N,) float32 and L_down · (1/λ) in high and low bf16 parts (N, rank); out: its rows' maxima (a zeroed
    float32 buffer whose first M entries the GEMM fills: kernel 1 reads it as its row pass's first split) and the
    low-rank input's shares (column tiles, M, rank) float32, whose sum over the tiles is the row pass's low-rank
    output."""
    inv: torch.Tensor
    down_hi: torch.Tensor
    down_lo: torch.Tensor
    maxima: torch.Tensor
    shares: torch.Tensor

    @property
    def rank(self) -> int:
        return self.down_hi.shape[1]


def _next_args(nxt, f32: torch.Tensor, any_: torch.Tensor, col_tiles: int) -> tuple:
    """The five next-layer pointers of a GEMM launch (placeholders without `nxt`)."""
    if nxt is None:
        return f32, f32, any_, any_, f32
    if nxt.shares.shape[0] != col_tiles:
        raise ValueError(f"the next layer's low-rank shares are for {nxt.shares.shape[0]} column tiles, the launch has "
                         f"{col_tiles}")
    return nxt.inv, nxt.maxima, nxt.down_hi, nxt.down_lo, nxt.shares


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
             num_warps: int = 8, nxt: "NextRowStats" = None) -> torch.Tensor:
    """The i8w GEMM after kernel 1 (`w4a4_gemm_triton.quantize_activations(..., i8=True)` and the int8 weight
    workspace): q (M, K) int8, wq (N, K) int8, ux (M,) and uw (N,) float32, lr (M, R) float32 (one partial) or None,
    up (N, R) bf16, bias (N,) bf16 or None, act 1 for GELU-tanh. y (M, N) bf16. `nxt`: the next layer's row pass made
    from y's tiles as they are stored (`NextRowStats`, for N / block_n column tiles)."""
    M, K = q.shape
    N = wq.shape[0]
    if K % block_k:
        raise ValueError(f"i8w_gemm: K % {block_k} != 0 (K = {K})")
    y = torch.empty(M, N, dtype=torch.bfloat16, device=q.device) if y is None else y
    da, dw = descriptors(q, wq, block_m, block_n, block_k)
    R = up.shape[1] if lr is not None else 16
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _i8w_gemm_kernel[grid](da, dw, ux, uw, lr if lr is not None else ux, up if lr is not None else y,
                           bias if bias is not None else y, y, *_next_args(nxt, ux, y, grid[1]), M, N, K,
                           HAS_BIAS=bias is not None, HAS_LR=lr is not None, R=R, ACT=act, STAGES=stages,
                           INSTR_N=min(block_n, 128), NEXT=nxt is not None, R2=nxt.rank if nxt is not None else 16,
                           num_warps=num_warps)
    return y


# ---------------------------------------------------------------------------------------------------------------------
# i8p: the INT8 GEMM on the packed INT4 weights, their codes made in the K loop (forty-ninth session)


@gluon.jit
def _codes_of_words(w, m, PRMT: gl.constexpr = True):
    """uint32 w holding eight packed INT4 codes (code j in bits 4j..4j+3, k order) and their group's multipliers m
    (uint32, integers in [1, 16]) -> two uint32 of four int8 q·m each, codes 0-3 and 4-7, byte j = code j. A nibble x
    holds q = x - 16·[x >= 8], so x ^ 8 = q + 8 in [0, 15], and (q + 8)·m <= 240 multiplies four codes a word with no
    carry between bytes; adding 256 - 8m bytewise (carries dropped) leaves q·m mod 256 (`_codes_i8_swar` in
    w4a4_gemm_triton.py does the same). The low nibbles give codes 0, 2, 4, 6 and the high ones 1, 3, 5, 7, which one
    `prmt` a word interleaves (PRMT; the same with shifts and masks otherwise: what Triton's interpreter runs)."""
    c = ((256 - 8 * m) & 0xFF) * 0x01010101
    c7 = c & 0x7F7F7F7F
    c8 = c & 0x80808080
    lo = ((w & 0x0F0F0F0F) ^ 0x08080808) * m
    hi = (((w >> 4) & 0x0F0F0F0F) ^ 0x08080808) * m
    lo = ((lo & 0x7F7F7F7F) + c7) ^ ((lo & 0x80808080) ^ c8)
    hi = ((hi & 0x7F7F7F7F) + c7) ^ ((hi & 0x80808080) ^ c8)
    if PRMT:        # bytes lo.0 hi.0 lo.1 hi.1 and lo.2 hi.2 lo.3 hi.3
        out0, out1 = gl.inline_asm_elementwise("prmt.b32 $0, $2, $3, 0x5140; prmt.b32 $1, $2, $3, 0x7362;",
                                               "=r,=r,r,r", [lo, hi], dtype=(gl.uint32, gl.uint32), is_pure=True,
                                               pack=1)
    else:
        out0 = (lo & 0xFF) | ((hi & 0xFF) << 8) | ((lo & 0xFF00) << 8) | ((hi & 0xFF00) << 16)
        out1 = ((lo >> 16) & 0xFF) | ((hi >> 8) & 0xFF00) | ((lo >> 8) & 0xFF0000) | (hi & 0xFF000000)
    return out0, out1


@gluon.jit
def _step_codes(pw, s_cur, inv_uw, BN: gl.constexpr, GPS: gl.constexpr, CW: gl.constexpr, unpack: gl.constexpr,
                packed3: gl.constexpr):
    """A K step's weight codes: its packed tile pw (BN, BK/8) int32 (eight codes a word, loaded in the `packed`
    layout: a thread one row's 64-code group) and its groups' stored scales s_cur (BN, GPS) -> (BN, CW) int32 words of
    four int8 q·m each (m = s / u_w), in the `unpack` layout (the same thread holds the same group). Seen as
    (BN, GPS, 8) so that a thread's multiplier is one value broadcast over its 8 words."""
    mult = gl.floor(s_cur.to(gl.float32) * inv_uw[:, None] + 0.5).to(gl.uint32)      # exact: s = u_w · m
    w = gl.convert_layout(gl.reshape(pw.to(gl.uint32, bitcast=True), [BN, GPS, 8]), packed3, assert_trivial=True)
    out0, out1 = _codes_of_words(w, mult[:, :, None])
    codes = gl.reshape(gl.join(out0, out1), [BN, CW]).to(gl.int32, bitcast=True)
    return gl.convert_layout(codes, unpack, assert_trivial=True)


@gluon.jit
def _lowrank_term(out, lr_ptr, up_ptr, off_m, off_n, XR: gl.constexpr, WR: gl.constexpr, M, N, R: gl.constexpr,
                  SWAP: gl.constexpr, layout: gl.constexpr, num_warps: gl.constexpr):
    """out + the low-rank up-projection lr (M, R) float32 · up (N, R)ᵀ bf16 of this tile (XR x rows from off_m, WR weight
    rows from off_n), as two bf16 wgmmas of lr's high and low bf16 parts (~2^-17 of lr; `_lowrank_bias`'s LR_BF16
    form). out is (x rows, weight rows), or (weight rows, x rows) with SWAP, in the wgmma accumulator `layout`."""
    blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[8, 4], warps_per_cta=[num_warps, 1],
                                         order=[1, 0])
    r = gl.arange(0, R, layout=gl.SliceLayout(0, blk))
    xi = off_m + gl.arange(0, XR, layout=gl.SliceLayout(1, blk))
    wi = off_n + gl.arange(0, WR, layout=gl.SliceLayout(1, blk))
    lr = gl.load(lr_ptr + xi[:, None] * R + r[None, :], mask=xi[:, None] < M, other=0.0)
    up = gl.load(up_ptr + wi[:, None] * R + r[None, :], mask=wi[:, None] < N, other=0.0)
    hi = lr.to(gl.bfloat16)
    lo = (lr - hi.to(gl.float32)).to(gl.bfloat16)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2)
    if SWAP:      # (weight rows, x rows): up in registers, lr's parts in shared memory
        hi_s = gl.allocate_shared_memory(gl.bfloat16, [XR, R], gl.NVMMASharedLayout.get_default_for([XR, R], gl.bfloat16),
                                         hi)
        lo_s = gl.allocate_shared_memory(gl.bfloat16, [XR, R], gl.NVMMASharedLayout.get_default_for([XR, R], gl.bfloat16),
                                         lo)
        fence_async_shared()
        a = gl.convert_layout(up, a_layout)
        out = warpgroup_mma(a, hi_s.permute((1, 0)), out)
        out = warpgroup_mma(a, lo_s.permute((1, 0)), out)
    else:         # (x rows, weight rows): lr's parts in registers, up in shared memory
        up_s = gl.allocate_shared_memory(gl.bfloat16, [WR, R], gl.NVMMASharedLayout.get_default_for([WR, R], gl.bfloat16),
                                         up)
        fence_async_shared()
        out = warpgroup_mma(gl.convert_layout(hi, a_layout), up_s.permute((1, 0)), out)
        out = warpgroup_mma(gl.convert_layout(lo, a_layout), up_s.permute((1, 0)), out)
    return out


@gluon.jit
def _finish_tile(acc, off_m, off_n, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N,
                 HAS_BIAS: gl.constexpr, HAS_LR: gl.constexpr, R: gl.constexpr, ACT: gl.constexpr, SWAP: gl.constexpr,
                 SPLIT_K: gl.constexpr, layout: gl.constexpr, num_warps: gl.constexpr, nx=None,
                 NEXT: gl.constexpr = False, R2: gl.constexpr = 16):
    """The int32 tile acc of y[off_m:, off_n:] -> y (y is (M, N): with SWAP acc is its transpose). SPLIT_K > 1: the K
    shares' int32 sums are added by the share that finishes the tile last (each stores its sums to the workspace
    (SPLIT_K, M, N) int32, counts itself in with an acq_rel atomic; the last adds them, exactly, so the result is the
    unsplit one's bit for bit, and re-arms the counter: one zeroed counter buffer serves every call, eager or in a CUDA
    graph). Then `_finish_store`. `layout` is the bf16 wgmma accumulator layout of the low-rank term (the int32 one's
    registers: only k differs)."""
    acc = gl.convert_layout(acc, layout)
    if SWAP:
        rows = off_m + gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
        cols = off_n + gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
    else:
        rows = off_m + gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
        cols = off_n + gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
    if SPLIT_K > 1:
        if SWAP:
            off = rows[None, :] * N + cols[:, None]
            omask = (rows[None, :] < M) & (cols[:, None] < N)
        else:
            off = rows[:, None] * N + cols[None, :]
            omask = (rows[:, None] < M) & (cols[None, :] < N)
        gl.store(ws_ptr + gl.program_id(2) * M * N + off, acc, mask=omask)
        gl.thread_barrier()                      # all of this program's sums are stored before the release
        tile = gl.program_id(0) * gl.num_programs(1) + gl.program_id(1)
        if gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
            acc = gl.zeros_like(acc)
            for t in range(SPLIT_K):
                acc += gl.load(ws_ptr + t * M * N + off, mask=omask, other=0, cache_modifier=".cg")
            _finish_store(acc, off_m, off_n, rows, cols, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, HAS_BIAS,
                          HAS_LR, R, ACT, SWAP, layout, num_warps, nx, NEXT, R2)
            gl.atomic_xchg(cnt_ptr + tile, 0)
    else:
        _finish_store(acc, off_m, off_n, rows, cols, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, HAS_BIAS,
                      HAS_LR, R, ACT, SWAP, layout, num_warps, nx, NEXT, R2)


@gluon.jit
def _finish_store(acc, off_m, off_n, rows, cols, ux_ptr, uw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N,
                  HAS_BIAS: gl.constexpr, HAS_LR: gl.constexpr, R: gl.constexpr, ACT: gl.constexpr,
                  SWAP: gl.constexpr, layout: gl.constexpr, num_warps: gl.constexpr, nx=None,
                  NEXT: gl.constexpr = False, R2: gl.constexpr = 16):
    """The tile's int32 sums · the rows' and columns' units, + the low-rank term, + bias, GELU-tanh (ACT 1), the bf16
    store (with SWAP through a layout along y's rows, which are this tile's columns). `rows` / `cols`: the tile's x
    rows and weight rows from off_m / off_n, in `layout`'s slices. NEXT (not with SWAP): then the next layer's row
    pass from the stored tile (`_next_row_stats`; nx its five pointers)."""
    ux = gl.load(ux_ptr + rows, mask=rows < M, other=0.0)
    uw = gl.load(uw_ptr + cols, mask=cols < N, other=0.0)
    if SWAP:
        out = acc.to(gl.float32) * (uw[:, None] * ux[None, :])
    else:
        out = acc.to(gl.float32) * (ux[:, None] * uw[None, :])
    if HAS_LR:
        out = _lowrank_term(out, lr_ptr, up_ptr, off_m, off_n, rows.shape[0], cols.shape[0], M, N, R, SWAP, layout,
                            num_warps)
    if HAS_BIAS:
        bias = gl.load(b_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
        if SWAP:
            out = out + bias[:, None]
        else:
            out = out + bias[None, :]
    if ACT == 1:     # GELU, tanh approximation, as `_activation` in w4a4_gemm_triton.py
        u = 0.7978845608028654 * (out + 0.044715 * out * out * out)
        out = out / (1.0 + gl.exp(-2.0 * u))
    y = out.to(gl.bfloat16)
    if SWAP:     # y's columns (this tile's rows) are contiguous: store along them, 8 to a thread
        st: gl.constexpr = gl.BlockedLayout(size_per_thread=[8, 1], threads_per_warp=[8, 4],
                                            warps_per_cta=[1, num_warps], order=[0, 1])
        y = gl.convert_layout(y, st)
        n = gl.convert_layout(cols, gl.SliceLayout(1, st))
        m = gl.convert_layout(rows, gl.SliceLayout(0, st))
        gl.store(y_ptr + m[None, :] * N + n[:, None], y, mask=(m[None, :] < M) & (n[:, None] < N))
    else:
        gl.store(y_ptr + rows[:, None] * N + cols[None, :], y, mask=(rows[:, None] < M) & (cols[None, :] < N))
        if NEXT:
            _next_row_stats(y, rows, cols, M, N, nx[0], nx[1], nx[2], nx[3], nx[4], R2, num_warps)


@gluon.jit
def _next_row_stats(y, rows, cols, M, N, inv_ptr, max_ptr, dh_ptr, dl_ptr, lr_ptr, R2: gl.constexpr,
                    num_warps: gl.constexpr):
    """The next layer's row pass (`w4a4_gemm_triton._row_amax` with its low-rank dot) on this tile of its input y
    (BM x rows, BN columns, bf16 as stored), for FC2_STATS (fc2's input is fc1's output): the rows' max |y · (1/λ)| over
    the tile's columns into max_ptr (M,) by an atomic max (order-free: the row pass's maxima bit for bit), and the tile's
    share of the low-rank input, y · (L_down · (1/λ)) over its columns, as two bf16 wgmmas against the product's high and
    low bf16 parts (dh, dl: (N, R2); the row pass's "bf16x2i" form), stored to lr_ptr (column tiles, M, R2) float32,
    which are summed after the GEMM."""
    inv = gl.load(inv_ptr + cols, mask=cols < N, other=0.0)
    gl.atomic_max(max_ptr + rows, gl.max(gl.abs(y.to(gl.float32) * inv[None, :]), axis=1), mask=rows < M)
    BM: gl.constexpr = y.shape[0]
    BN: gl.constexpr = y.shape[1]
    blk: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[8, 4], warps_per_cta=[num_warps, 1],
                                         order=[1, 0])
    ci = gl.program_id(1) * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, blk))
    r = gl.arange(0, R2, layout=gl.SliceLayout(0, blk))
    off = ci[:, None] * R2 + r[None, :]
    sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, R2], gl.bfloat16)
    dh_s = gl.allocate_shared_memory(gl.bfloat16, [BN, R2], sl, gl.load(dh_ptr + off, mask=ci[:, None] < N, other=0.0))
    dl_s = gl.allocate_shared_memory(gl.bfloat16, [BN, R2], sl, gl.load(dl_ptr + off, mask=ci[:, None] < N, other=0.0))
    fence_async_shared()
    lay: gl.constexpr = _mma_layout(R2, 16, num_warps)
    a = gl.convert_layout(y, gl.DotOperandLayout(operand_index=0, parent=lay, k_width=2))
    part = warpgroup_mma(a, dh_s, gl.zeros((BM, R2), dtype=gl.float32, layout=lay))
    part = warpgroup_mma(a, dl_s, part)
    pr = gl.program_id(0) * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, lay))
    pc = gl.arange(0, R2, layout=gl.SliceLayout(0, lay))
    gl.store(lr_ptr + gl.program_id(1) * M * R2 + pr[:, None] * R2 + pc[None, :], part, mask=pr[:, None] < M)


@gluon.jit
def _i8p_sums(a_desc, p_desc, sw_ptr, wu_ptr, N, K, off_m, off_n, k0, steps, SWAP: gl.constexpr, STAGES: gl.constexpr,
              INSTR_N: gl.constexpr, num_warps: gl.constexpr):
    """The i8p tile's int32 sums over `steps` K steps from step k0 (`_i8p_gemm_kernel`'s loop): (BM, BN) in the int8
    wgmma's accumulator layout, or (BN, BM) with SWAP."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = p_desc.block_type.shape[0]
    PW: gl.constexpr = p_desc.block_type.shape[1]          # BK / 8 packed words per weight row and step
    CW: gl.constexpr = BK // 4                             # its codes' words (four int8 q·m each)
    GPS: gl.constexpr = BK // 64                           # 64-code groups per step
    a_s = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    p_s = gl.allocate_shared_memory(p_desc.dtype, [STAGES, BN, PW], p_desc.layout)
    w_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BK], gl.int8)
    w_i8 = gl.allocate_shared_memory(gl.int8, [BN, BK], w_layout)          # the step's weight codes q·m
    words_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_layout.swizzle_byte_width,
                                                      element_bitwidth=32, rank=2)
    w_words = w_i8._reinterpret(gl.int32, [BN, CW], words_layout)     # the same bytes, four codes a word
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(STAGES):
        mbarrier.init(ready.index(b), count=1)

    # the unpack's layouts: a thread takes one row's 64-code group, 8 packed words in, 16 code words out
    packed: gl.constexpr = _unpack_layout(8, GPS, num_warps)
    packed3: gl.constexpr = _unpack_layout(None, GPS, num_warps)
    unpack: gl.constexpr = _unpack_layout(16, GPS, num_warps)
    inv_uw, s_ptrs = _scale_pointers(sw_ptr, wu_ptr, off_n, N, K, k0, BN, GPS, packed3)
    layout: gl.constexpr = _mma_layout(INSTR_N, 32, num_warps)
    if SWAP:
        acc = gl.zeros((BN, BM), dtype=gl.int32, layout=layout)
    else:
        acc = gl.zeros((BM, BN), dtype=gl.int32, layout=layout)
    nbytes: gl.constexpr = a_desc.block_type.nbytes + p_desc.block_type.nbytes
    for p in gl.static_range(STAGES):                      # every stage's tiles in flight
        if p < steps:
            mbarrier.expect(ready.index(p), nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, (k0 + p) * BK], ready.index(p), a_s.index(p))
            tma.async_copy_global_to_shared(p_desc, [off_n, (k0 + p) * PW], ready.index(p), p_s.index(p))
    s_next = gl.load(s_ptrs)
    mbarrier.wait(ready.index(0), 0)
    w_words.store(_step_codes(p_s.index(0).load(packed), s_next, inv_uw, BN, GPS, CW, unpack, packed3))
    fence_async_shared()
    s_next = gl.load(s_ptrs + (1 % steps) * GPS)
    # ptxas (the one Triton 3.6 ships) serializes every wgmma of a kernel (C7515: each waited for before the next is
    # issued) when the loop stores to shared memory while a wgmma group stays in flight across its iterations
    # (wait_group 1), and puts the wait before a shared-memory load that follows the wgmma (seen in the sm_90 SASS). So
    # a step loads the next step's packed tile first, issues its wgmma, makes the next step's codes in registers
    # (arithmetic only) while it runs, waits for it (wait_group 0), then stores them.
    for i in range(steps - 1):
        s = i % STAGES
        n = i + 1
        mbarrier.wait(ready.index(n % STAGES), (n // STAGES) & 1)
        pw = p_s.index(n % STAGES).load(packed)
        if SWAP:
            acc = warpgroup_mma(w_i8, a_s.index(s).permute((1, 0)), acc, is_async=True)
        else:
            acc = warpgroup_mma(a_s.index(s), w_i8.permute((1, 0)), acc, is_async=True)
        codes = _step_codes(pw, s_next, inv_uw, BN, GPS, CW, unpack, packed3)
        s_next = gl.load(s_ptrs + ((n + 1) % steps) * GPS)        # the step after's scales, a step ahead
        acc, _, _ = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a_s.index(s), w_i8))
        if i + STAGES < steps:                             # step i's stage is free again
            mbarrier.expect(ready.index(s), nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, (k0 + i + STAGES) * BK], ready.index(s), a_s.index(s))
            tma.async_copy_global_to_shared(p_desc, [off_n, (k0 + i + STAGES) * PW], ready.index(s), p_s.index(s))
        w_words.store(codes)
        fence_async_shared()
    s = (steps - 1) % STAGES
    if SWAP:
        acc = warpgroup_mma(w_i8, a_s.index(s).permute((1, 0)), acc, is_async=True)
    else:
        acc = warpgroup_mma(a_s.index(s), w_i8.permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    for b in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(b))

    return acc


@gluon.jit
def _i8p_gemm_kernel(a_desc, p_desc, sw_ptr, wu_ptr, ux_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, nx_inv_ptr,
                     nx_max_ptr, nx_dh_ptr, nx_dl_ptr, nx_lr_ptr, M, N, K, SWAP: gl.constexpr, HAS_BIAS: gl.constexpr,
                     HAS_LR: gl.constexpr, R: gl.constexpr, ACT: gl.constexpr, SPLIT_K: gl.constexpr,
                     STAGES: gl.constexpr, INSTR_N: gl.constexpr, NEXT: gl.constexpr, R2: gl.constexpr,
                     num_warps: gl.constexpr):
    """y = the W4A4 layer's output for kernel 1's q·m (M, K) int8 and the layer's packed codes (N, K/2), read as int32
    words (N, K/8): per K step the x tile (BM, BK) and the packed weight tile (BN, BK/8 words) arrive by TMA into a
    STAGES-deep ring; the threads make the weight tile's int8 q·m (`_step_codes`, each thread one row's 64-code
    group) in registers while the previous step's wgmma (s32 += s8 · s8) runs, then store them to the shared-memory tile
    the next wgmma reads. SWAP puts the weights on the wgmma's M side (BN = 16 · num_warps, the x rows on
    its N side: few rows); else the x rows (BM = 16 · num_warps). SPLIT_K > 1: program_id(2) takes that share of the K
    steps (where the tiles alone leave SMs idle), `_finish_tile` sums the shares. NEXT (unswapped): the next layer's
    row pass from the stored tiles too (`_next_row_stats`)."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = p_desc.block_type.shape[0]
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    k0, steps = _k_share(K, BK, SPLIT_K)
    acc = _i8p_sums(a_desc, p_desc, sw_ptr, wu_ptr, N, K, off_m, off_n, k0, steps, SWAP, STAGES, INSTR_N, num_warps)
    _finish_tile(acc, off_m, off_n, ux_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, HAS_BIAS,
                 HAS_LR, R, ACT, SWAP, SPLIT_K, _mma_layout(INSTR_N, 16, num_warps), num_warps,
                 (nx_inv_ptr, nx_max_ptr, nx_dh_ptr, nx_dl_ptr, nx_lr_ptr), NEXT, R2)


@gluon.jit
def _store_rows(row_ptrs, out, mask):
    """out (BM, W) to W contiguous elements at each of its rows' pointers (in `out`'s layout's row slice), in the
    pointers' dtype."""
    ol: gl.constexpr = out.type.layout
    ch = gl.arange(0, out.shape[1], layout=gl.SliceLayout(0, ol))
    gl.store(row_ptrs[:, None] + ch[None, :], out.to(row_ptrs.dtype.element_ty), mask=mask[:, None])


@gluon.jit
def _i8p_qkv_kernel(a_desc, p_desc, sw_ptr, wu_ptr, ux_ptr, lr_ptr, up_ptr, b_ptr, M, N, K, QB, SM, COS, SIN, QO, KO,
                    VO, NTOK, START, C, sr_l, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, HAS_BIAS: gl.constexpr,
                    HAS_LR: gl.constexpr, R: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """The qkv projection's i8p GEMM with the attention's input epilogue (`_w4a4_i8_qkv_kernel`'s, in the Triton file;
    reference `SelfAttention.qkv_epilogue`) in place of its store: a program owns BM rows of one head (BN = the head's
    channels) of q, k or v. The float32 tile + the low-rank term + the layer's bias + QB ([q_bias, 0, v_bias]); q and k
    normalized to unit length per head (IEEE sqrt and division), q times its head's scale, both rotated by the token's
    (cos, sin) pairwise (channels 2i, 2i + 1: a thread's adjacent accumulator registers); written into the attention's
    (B, H, L, c) buffers at token START + t, for row m = b · NTOK + t. The (M, 3C) projection never exists."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    HEAD: gl.constexpr = p_desc.block_type.shape[0]
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * HEAD
    acc = _i8p_sums(a_desc, p_desc, sw_ptr, wu_ptr, N, K, off_m, off_n, 0, K // BK, False, STAGES, 128, num_warps)
    layout: gl.constexpr = _mma_layout(128, 16, num_warps)
    acc = gl.convert_layout(acc, layout)
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    cols = off_n + gl.arange(0, HEAD, layout=gl.SliceLayout(0, layout))
    ux = gl.load(ux_ptr + rows, mask=rows < M, other=0.0)
    out = acc.to(gl.float32) * (ux[:, None] * gl.load(wu_ptr + cols)[None, :])
    if HAS_LR:
        out = _lowrank_term(out, lr_ptr, up_ptr, off_m, off_n, BM, HEAD, M, N, R, False, layout, num_warps)
    if HAS_BIAS:
        out = out + gl.load(b_ptr + cols).to(gl.float32)[None, :]
    out = out + gl.load(QB + cols)[None, :]
    sec = off_n // C                                       # 0: q, 1: k, 2: v
    h = (off_n % C) // HEAD
    t = rows % NTOK
    b = rows // NTOK
    if sec == 2:
        _store_rows(VO + b * sk_b + (START + t) * sk_l + h * sk_h, out, rows < M)
    else:
        x0, x1 = gl.split(gl.reshape(out, [BM, HEAD // 2, 2]))      # channels 2i and 2i + 1
        nrm = gl.maximum(gl.sqrt_rn(gl.sum(x0 * x0, axis=1) + gl.sum(x1 * x1, axis=1)), 1e-12)
        x0 = gl.div_rn(x0, nrm[:, None])
        x1 = gl.div_rn(x1, nrm[:, None])
        hl: gl.constexpr = x0.type.layout
        th = (off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, hl))) % NTOK
        mh = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, hl)) < M
        i = gl.arange(0, HEAD // 2, layout=gl.SliceLayout(0, hl))
        cos = gl.load(COS + th[:, None] * sr_l + i[None, :], mask=mh[:, None], other=1.0)
        sin = gl.load(SIN + th[:, None] * sr_l + i[None, :], mask=mh[:, None], other=0.0)
        if sec == 0:
            sc = gl.load(SM + h)
            x0 = x0 * sc
            x1 = x1 * sc
        rot = gl.reshape(gl.join(cos * x0 - sin * x1, sin * x0 + cos * x1), [BM, HEAD])
        rl: gl.constexpr = rot.type.layout
        rr = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, rl))
        tr = rr % NTOK
        br = rr // NTOK
        if sec == 0:
            _store_rows(QO + br * sq_b + (START + tr) * sq_l + h * sq_h, rot, rr < M)
        else:
            _store_rows(KO + br * sk_b + (START + tr) * sk_l + h * sk_h, rot, rr < M)


def i8p_qkv(qx: torch.Tensor, qweight: torch.Tensor, wscales: torch.Tensor, uw: torch.Tensor, ux: torch.Tensor, lr,
            up, layer_bias, bias: torch.Tensor, scale_mul: torch.Tensor, rope: torch.Tensor, q: torch.Tensor,
            k: torch.Tensor, v: torch.Tensor, n: int, start: int, block_m: int = 128, block_k: int = 128,
            stages: int = 4) -> None:
    """The qkv projection (N = 3C) of kernel 1's q·m qx (M, K), M = B · n, through `_i8p_qkv_kernel`: written into tokens
    [start, start + n) of q, k, v (B, H, L, c) as `w4a4_gemm_triton.w4a4_qkv_rope` writes them. ux (M,), uw (N,) units,
    lr (M, R) float32 or None, up (N, R) bf16, layer_bias (N,) or None, bias (3C,) and scale_mul (H,) float32, rope
    (2, n, c/2) float32 with unit stride along c/2."""
    M, K = qx.shape
    N = qweight.shape[0]
    C = N // 3
    c = q.shape[-1]
    if c != 128 or K % block_k:
        raise ValueError(f"i8p_qkv: heads of 128 channels and K % {block_k} == 0 (c {c}, K {K})")
    da, dp = packed_descriptors(qx, qweight, block_m, c, block_k)
    R = up.shape[1] if lr is not None else 16
    grid = (triton.cdiv(M, block_m), N // c)
    _i8p_qkv_kernel[grid](da, dp, wscales, uw, ux, lr if lr is not None else ux, up if lr is not None else bias,
                          layer_bias if layer_bias is not None else bias, M, N, K, bias, scale_mul, rope[0], rope[1],
                          q, k, v, n, start, C, rope.stride(1), q.stride(0), q.stride(1), q.stride(2), k.stride(0),
                          k.stride(1), k.stride(2), HAS_BIAS=layer_bias is not None, HAS_LR=lr is not None, R=R,
                          STAGES=stages, num_warps=8)


# ---------------------------------------------------------------------------------------------------------------------
# i8p, warp-specialized (forty-ninth session): the same sums with the codes made by their own warps


@gluon.jit
def _ws_mma(a_s, w_s, ready, empty, w_ready, w_empty, steps, SWAP: gl.constexpr, INSTR_N: gl.constexpr,
            num_warps: gl.constexpr):
    """The default partition of `_i8p_ws_kernel`: the wgmmas, one group left in flight; a step's x stage and code tile
    are released once its wgmma is done (the next step's wait)."""
    STAGES: gl.constexpr = a_s.type.shape[0]
    WB: gl.constexpr = w_s.type.shape[0]
    BM: gl.constexpr = a_s.type.shape[1]
    BN: gl.constexpr = w_s.type.shape[1]
    layout: gl.constexpr = _mma_layout(INSTR_N, 32, num_warps)
    if SWAP:
        acc = gl.zeros((BN, BM), dtype=gl.int32, layout=layout)
    else:
        acc = gl.zeros((BM, BN), dtype=gl.int32, layout=layout)
    for i in range(steps):
        s = i % STAGES
        b = i % WB
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        mbarrier.wait(w_ready.index(b), (i // WB) & 1)
        if SWAP:
            acc = warpgroup_mma(w_s.index(b), a_s.index(s).permute((1, 0)), acc, is_async=True)
        else:
            acc = warpgroup_mma(a_s.index(s), w_s.index(b).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        if i > 0:           # step i - 1's wgmma is done: its x stage and code tile may be refilled
            mbarrier.arrive(empty.index((i - 1) % STAGES), count=1)
            mbarrier.arrive(w_empty.index((i - 1) % WB), count=1)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    return (acc, )


@gluon.jit
def _ws_load(a_desc, p_desc, a_s, p_s, w_s, ready, empty, w_ready, w_empty, sw_ptr, wu_ptr, N, K, off_m, off_n, k0,
             steps):
    """The TMA partition (1 warp): each step's x tile and packed tile into the ring once both readers released the
    stage (`empty` counts the wgmma's and the unpack's release)."""
    STAGES: gl.constexpr = a_s.type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    PW: gl.constexpr = p_desc.block_type.shape[1]
    for i in range(steps):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)     # a fresh barrier's "previous" phase is complete
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + p_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [off_m, (k0 + i) * BK], ready.index(s), a_s.index(s))
        tma.async_copy_global_to_shared(p_desc, [off_n, (k0 + i) * PW], ready.index(s), p_s.index(s))


@gluon.jit
def _ws_unpack(a_desc, p_desc, a_s, p_s, w_s, ready, empty, w_ready, w_empty, sw_ptr, wu_ptr, N, K, off_m, off_n, k0,
               steps):
    """The unpack partition: each step's packed tile into registers (then its stage released), its codes q·m made
    (`_step_codes`) and stored to a free code tile of the WB-deep ring, which the wgmma partition then reads."""
    STAGES: gl.constexpr = p_s.type.shape[0]
    WB: gl.constexpr = w_s.type.shape[0]
    BN: gl.constexpr = w_s.type.shape[1]
    BK: gl.constexpr = w_s.type.shape[2]
    CW: gl.constexpr = BK // 4
    GPS: gl.constexpr = BK // 64
    UW: gl.constexpr = gl.num_warps()
    packed: gl.constexpr = _unpack_layout(8, GPS, UW)
    packed3: gl.constexpr = _unpack_layout(None, GPS, UW)
    unpack: gl.constexpr = _unpack_layout(16, GPS, UW)
    words_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_s.type.layout.swizzle_byte_width,
                                                      element_bitwidth=32, rank=2)
    inv_uw, s_ptrs = _scale_pointers(sw_ptr, wu_ptr, off_n, N, K, k0, BN, GPS, packed3)
    s_next = gl.load(s_ptrs)
    for i in range(steps):
        s = i % STAGES
        s_cur = s_next
        s_next = gl.load(s_ptrs + ((i + 1) % steps) * GPS)           # a step ahead
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        pw = p_s.index(s).load(packed)
        fence_async_shared()            # the load before the stage's refill by TMA
        mbarrier.arrive(empty.index(s), count=1)
        codes = _step_codes(pw, s_cur, inv_uw, BN, GPS, CW, unpack, packed3)
        b = i % WB
        mbarrier.wait(w_empty.index(b), ((i // WB) & 1) ^ 1)
        fence_async_shared()            # the wgmma's read (async proxy) of this tile before the store over it
        w_s.index(b)._reinterpret(gl.int32, [BN, CW], words_layout).store(codes)
        fence_async_shared()            # the store before the wgmma's read
        mbarrier.arrive(w_ready.index(b), count=1)


@gluon.jit
def _i8p_ws_kernel(a_desc, p_desc, sw_ptr, wu_ptr, ux_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K,
                   SWAP: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_LR: gl.constexpr, R: gl.constexpr,
                   ACT: gl.constexpr, SPLIT_K: gl.constexpr, STAGES: gl.constexpr, INSTR_N: gl.constexpr,
                   WB: gl.constexpr, UNPACK_WARPS: gl.constexpr, UNPACK_REGS: gl.constexpr, num_warps: gl.constexpr):
    """`_i8p_gemm_kernel`'s sums, warp-specialized: a 1-warp partition issues the TMA copies, UNPACK_WARPS warps make
    each step's codes into a WB-deep ring of code tiles, and the kernel's own warps issue the wgmmas with one group in
    flight (no shared-memory store in their stream, so ptxas keeps them asynchronous, C7515), then the epilogue. The
    partitions hand over through mbarriers: ready / empty per x-and-packed stage, w_ready / w_empty per code tile."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = p_desc.block_type.shape[0]
    PW: gl.constexpr = p_desc.block_type.shape[1]
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    k0, steps = _k_share(K, BK, SPLIT_K)
    a_s = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    p_s = gl.allocate_shared_memory(p_desc.dtype, [STAGES, BN, PW], p_desc.layout)
    w_s = gl.allocate_shared_memory(gl.int8, [WB, BN, BK], gl.NVMMASharedLayout.get_default_for([BN, BK], gl.int8))
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    w_ready = gl.allocate_shared_memory(gl.int64, [WB, 1], mbarrier.MBarrierLayout())
    w_empty = gl.allocate_shared_memory(gl.int64, [WB, 1], mbarrier.MBarrierLayout())
    for b in gl.static_range(STAGES):
        mbarrier.init(ready.index(b), count=1)
        mbarrier.init(empty.index(b), count=2)          # released by the wgmma and by the unpack
    for b in gl.static_range(WB):
        mbarrier.init(w_ready.index(b), count=1)
        mbarrier.init(w_empty.index(b), count=1)
    wargs = (a_desc, p_desc, a_s, p_s, w_s, ready, empty, w_ready, w_empty, sw_ptr, wu_ptr, N, K, off_m, off_n, k0,
             steps)
    res = gl.warp_specialize([(_ws_mma, (a_s, w_s, ready, empty, w_ready, w_empty, steps, SWAP, INSTR_N, num_warps)),
                              (_ws_load, wargs), (_ws_unpack, wargs)], [1, UNPACK_WARPS], [24, UNPACK_REGS])
    for b in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(b))
        mbarrier.invalidate(empty.index(b))
    for b in gl.static_range(WB):
        mbarrier.invalidate(w_ready.index(b))
        mbarrier.invalidate(w_empty.index(b))
    _finish_tile(res[0], off_m, off_n, ux_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, HAS_BIAS,
                 HAS_LR, R, ACT, SWAP, SPLIT_K, _mma_layout(INSTR_N, 16, num_warps), num_warps)


# Up to this many rows, an unswapped i8p launch with more programs than SMs runs two programs an SM (`i8p_tile`)
TWO_PER_SM_MAX_M = 512
# VAR_GEN_W4A4_I8P_SWAP256_MAX_M (0, off, until timed on a GPU; fifty-third session): from 129 rows up to this many,
# i8p keeps the weights on the wgmma's M side with the x rows in tiles of 256 (`i8p_tile`). Why: the K loop makes
# every weight code once per row tile, and its code making, not the wgmma, bounds the loop (on an H100, 0.50 µs a
# K step for a 64 x 128 code tile with 4 warps, 0.83 µs for 128 x 128 with 8: `i8p_gemm_fiftyfirst_h100`). 128-row
# tiles make each code 3 times at 288 rows and 4 times at 512; 256-row tiles twice, on more programs (fc2 and 3584²:
# 112 against 84, one wave on 132 SMs). Compiled for sm_90: 255 registers, 160 bytes of spills, 156 KB of shared
# memory with 4 stages, 82 KB with 2 (two programs an SM, taken where there are more programs than SMs).
SWAP256_MAX_M = int(os.environ.get("VAR_GEN_W4A4_I8P_SWAP256_MAX_M", "0"))


def i8p_tile(M: int, N: int, K: int, sms: int, block_k: int = 128) -> dict:
    """The i8p launch for M rows of a K -> N layer on a GPU of `sms` SMs: up to 128 rows the weights on the wgmma's M
    side (SWAP; 64 weight rows a program, 4 warps, the x rows in one tile of 32, 64 or 128), else 128 x rows a program,
    8 warps, 128 weight rows; K split into up to 4 shares where the tiles leave at least half the SMs idle (3584 ->
    3584 and 14336 -> 3584 at up to 128 rows: 56 programs on an H100's 132 SMs), each at least 8 K steps.

    Unswapped, with more programs than SMs (up to TWO_PER_SM_MAX_M rows): a ring of 3 stages under 128 registers, so
    that two programs share an SM (90 KB of shared memory each; 143 registers and 115 KB with 4 stages allow one), and
    the last partial wave of one program an SM becomes a whole one of two. At 288 rows on the H100
    (`i8p_gemm_fiftyfirst_h100`): fc1 (3584 -> 14336, 336 programs) 76.9 µs against 87.2, the qkv shape (252) 49.8
    against 55.8; the K loop keeps its wgmmas asynchronous and ptxas spills 72 bytes, in the epilogue (its low-rank
    wgmmas; SASS). 3584 -> 3584 and 14336 -> 3584 (84 programs) keep 4 stages: there 3 were equal and 3 % slower.

    With SWAP256_MAX_M (off by default), 129 rows up to it stay swapped with the x rows in tiles of 256, in 2 stages
    (two programs an SM) where there are more programs than SMs."""
    if M <= 128:
        bm = max(32, triton.next_power_of_2(M))
        t = dict(swap=True, block_m=bm, block_n=64, num_warps=4, instr_n=bm)
    elif M <= SWAP256_MAX_M:
        t = dict(swap=True, block_m=256, block_n=64, num_warps=4, instr_n=128)
    else:
        t = dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128)
    programs = triton.cdiv(M, t["block_m"]) * triton.cdiv(N, t["block_n"])
    split = 1
    while split < 4 and programs * split * 2 <= sms and K // block_k // (split * 2) >= 8:
        split *= 2
    if not t["swap"] and split == 1 and programs > sms and M <= TWO_PER_SM_MAX_M:
        t.update(stages=3, maxnreg=128)
    if t["swap"] and t["block_m"] == 256 and split == 1 and programs > sms:
        t.update(stages=2)          # two programs an SM: 82 KB of shared memory and 4 warps of 255 registers each
    return dict(t, split_k=split)


def split_k_fits(K: int, split_k: int, block_k: int = 128) -> bool:
    """Whether each of `split_k` shares of K's steps gets at least one (the kernel's share is cdiv(steps, split_k))."""
    steps = K // block_k
    return 1 <= split_k <= steps and (split_k - 1) * triton.cdiv(steps, split_k) < steps


def packed_descriptors(q: torch.Tensor, qweight: torch.Tensor, block_m: int, block_n: int, block_k: int):
    """Host TMA descriptors of q (M, K) int8 in (block_m, block_k) tiles and the packed codes (N, K/2) uint8, read as
    int32 words of eight codes (N, K/8), in (block_n, block_k/8) tiles."""
    w = qweight.view(torch.int32)
    la = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.int8)
    lp = gl.NVMMASharedLayout.get_default_for([block_n, block_k // 8], gl.int32)
    return (TensorDescriptor(q, list(q.shape), list(q.stride()), [block_m, block_k], la),
            TensorDescriptor(w, list(w.shape), list(w.stride()), [block_n, block_k // 8], lp))


def i8p_gemm(q: torch.Tensor, qweight: torch.Tensor, wscales: torch.Tensor, uw: torch.Tensor, ux: torch.Tensor, lr,
             up, bias, act: int = 0, y: torch.Tensor = None, tile: dict = None, ws: torch.Tensor = None,
             cnt: torch.Tensor = None, block_k: int = 128, stages: int = 4, compile_only: bool = False,
             nxt: "NextRowStats" = None) -> torch.Tensor:
    """The W4A4 layer's GEMM after kernel 1 (`w4a4_gemm_triton.quantize_activations(..., i8=True)`) on its packed
    codes, no workspace: q (M, K) int8, qweight (N, K/2) uint8, wscales (N, K/64) bf16 (two-level: u_w · m), uw (N,)
    and ux (M,) float32 units, lr (M, R) float32 (one partial) or None, up (N, R) bf16, bias (N,) bf16 or None, act 1
    for GELU-tanh; `tile` overrides `i8p_tile` (with "ws": True, the warp-specialized kernel; "stages", "maxnreg" the
    ring's depth and a register limit). With a K split, ws (at least split_k · M · N int32) and cnt (zeroed
    int32 counters, one per tile, left zeroed) are made here unless given. y (M, N) bf16. `compile_only`: the launch's
    kernel compiled (and cached), not run (bench/i8p_debug.py --ws tells a compile from a run that never ends).
    `nxt` (unswapped launches): the next layer's row pass made from y's tiles as they are stored (`NextRowStats`)."""
    M, K = q.shape
    N = qweight.shape[0]
    if K % block_k or qweight.shape[1] * 2 != K:
        raise ValueError(f"i8p_gemm: K % {block_k} == 0 and qweight (N, K/2), got q {tuple(q.shape)}, "
                         f"qweight {tuple(qweight.shape)}")
    t = tile or i8p_tile(M, N, K, torch.cuda.get_device_properties(q.device).multi_processor_count, block_k)
    split = t.get("split_k", 1)
    if not split_k_fits(K, split, block_k):
        raise ValueError(f"i8p_gemm: {split} K shares of {K // block_k} steps leave one empty")
    y = torch.empty(M, N, dtype=torch.bfloat16, device=q.device) if y is None else y
    da, dp = packed_descriptors(q, qweight, t["block_m"], t["block_n"], block_k)
    R = up.shape[1] if lr is not None else 16
    grid = (triton.cdiv(M, t["block_m"]), triton.cdiv(N, t["block_n"]), split)
    if split > 1:
        ws = torch.empty(split, M, N, dtype=torch.int32, device=q.device) if ws is None else ws
        cnt = torch.zeros(grid[0] * grid[1], dtype=torch.int32, device=q.device) if cnt is None else cnt
    if nxt is not None and (t["swap"] or t.get("ws")):
        raise ValueError("i8p_gemm: the next layer's row pass (nxt) needs the unswapped kernel")
    ptrs = (da, dp, wscales, uw, ux, lr if lr is not None else ux, up if lr is not None else y,
            bias if bias is not None else y, y, ws if split > 1 else ux, cnt if split > 1 else ux)
    meta = dict(SWAP=t["swap"], HAS_BIAS=bias is not None, HAS_LR=lr is not None, R=R, ACT=act, SPLIT_K=split,
                STAGES=t.get("stages", stages), INSTR_N=t["instr_n"], num_warps=t["num_warps"])
    if not t.get("ws"):          # (the warp-specialized kernel has no next-layer pointers)
        ptrs += _next_args(nxt, ux, y, grid[1])
        meta.update(NEXT=nxt is not None, R2=nxt.rank if nxt is not None else 16)
    args = ptrs + (M, N, K)
    launch = (lambda k: functools.partial(k.warmup, grid=grid)) if compile_only else (lambda k: k[grid])
    if t.get("ws"):
        launch(_i8p_ws_kernel)(*args, **meta, **ws_meta(t))
    elif t.get("maxnreg"):       # a register limit, e.g. for two programs an SM
        launch(_i8p_gemm_kernel)(*args, **meta, maxnreg=t["maxnreg"])
    else:
        launch(_i8p_gemm_kernel)(*args, **meta)
    return y


WS_UNPACK_WARPS = 4
WS_UNPACK_REGS = 96


def ws_meta(tile: dict) -> dict:
    """The warp-specialized launch's extra parameters: the code tiles' ring depth, the unpack partition's warps and
    registers, and the kernel's register limit: the registers of an SM over all its warps (the kernel's, the TMA
    warp's and the unpack's, rounded up to whole warpgroups), which the partitions then redistribute."""
    warps = -(-(tile["num_warps"] + 1 + WS_UNPACK_WARPS) // 4) * 4
    return dict(WB=tile.get("wb", 2), UNPACK_WARPS=WS_UNPACK_WARPS, UNPACK_REGS=WS_UNPACK_REGS,
                maxnreg=min(256, 65536 // (32 * warps) // 8 * 8))
