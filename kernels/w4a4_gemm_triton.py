"""W4A4 GEMM with the SVDQuant low-rank branch, in Triton (GPU; the reference is
var_gen_ros.quant.w4a4.W4A4Linear.reference_forward, which runs on the CPU).

Kernels per forward:
0. `_row_amax`: the rows' max |x̂| (x̂ = x · (1/λ)) per K split, for the two-level scales' units.
1. `_quantize_act`: x (M, K) 16-bit -> x̂ -> INT4 codes per token per group of 64 (range [-7, 7])
   with two-level scales s = u·m (quant.int4.two_level: u per row, an integer m in [1, 16] per
   group), and the low-rank down-projection x̂ · L_down (M, r) from the same read of x (the Nunchaku
   fusion: the branch costs no extra pass over x). Same arithmetic as the reference (IEEE
   reciprocals, amax · float32(1/7), ceil, round half to even), so the codes are bit-identical. For
   the i8 and f16 paths it writes q·m (an int8 / exact fp16) and u per row instead.
   For bf16 x the low-rank dot runs on tensor cores as x · (L_down / λ) with L_down / λ in two bf16
   parts (~2^-17), a float32 FMA dot otherwise. K is split over `S` programs per row block when M is
   small (each writes a partial x̂ · L_down, summed in the GEMM epilogue) so small M fills the GPU.
2. The GEMM: y = Σ_g sx[m,g] · sw[n,g] · (qx[m,g,:] · qw[n,g,:]) + lr[m,:] · L_up[n,:] + b[n], with
   the packed weight byte j holding k = 2j (low nibble) and 2j+1 (high nibble).
   - `_w4a4_i8_kernel` (sm_80+, the default for two-level weight scales): int8 q·m of both sides, one
     INT8 MMA accumulation over all of K (exact int32), scaled by u_x · u_w once at the end.
   The paths below serve checkpoints with free per-group weight scales:
   - `_w4a4_fp8_kernel` (sm_89+): the 4-bit codes of both sides are exact e4m3
     values, so one FP8 MMA (K = 64, float32 accumulation) per group needs no int->float convert
     before its rescale; kernel 1 writes e4m3 codes in natural k order with scales (K/64, M).
   - `_w4a4_f16_kernel` (sm_90 from M >= F16_MIN_M): code x scale is exact in fp16 on both sides, so
     one fp16 MMA accumulation over all of K replaces the per-group rescale that Triton cannot overlap
     with the MMA; the weights are dequantized in registers or (f16w) into a workspace first.
   - `_w4a4_gemm_kernel` (sm_80-sm_87): INT8 MMA; kernel 1 stores each group's int8 codes even-k
     first, odd-k second, so two K = 32 dots on contiguous loads replace an interleave in registers
     (Hopper runs INT4 MMA ~26x slower, see docs).
   `SPLIT_K` > 1 (up to SPLIT_MAX_M rows) splits the K loop over programs whose float32 partials the
   last one to finish a tile sums in a fixed order (see `_finish`): a small M otherwise leaves most SMs
   idle over one long serial loop.
   `SWAP` computes yᵀ = W · xᵀ instead: the unpacked weights (made in registers) become the MMA's
   left operand, which Hopper's wgmma may take from registers, and a small M becomes the MMA's
   narrow side (the usual trick for skinny GEMMs). The autotuner picks SWAP or not per (M bucket, N, K).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings

import torch
import triton
import triton.testing
import triton.language as tl
from triton.compiler.errors import CompilationError
from triton.language.extra import libdevice
from triton.runtime.errors import OutOfResources, PTXASError

from . import unpack_ahead as ahead
from . import w4a4_small_m_cuda as small_m
from .launch import Launcher
from .tuning import first_if_asked

GROUP = 64


def _descriptor_scratch(size: int, alignment: int, stream):
    """Global memory for the TMA descriptors the f16 kernel builds on the device (Triton asks for it)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Triton keeps its allocator in a context variable, and every thread starts with none: set at import only, it
    reached the importing thread alone. gen_node's generations run in its engine's worker thread, where every kernel
    building TMA descriptors (the workspace paths' TMA tiles from 257 rows, the f16w ones) then failed with "no
    allocator was set": found on the H100 in the twenty-seventh session, through the engine in bench/edge_proof.py.
    So every public entry sets it for its caller (a context-variable set, ~0.1 µs)."""
    triton.set_allocator(_descriptor_scratch)


_ensure_allocator()
INV_QMAX = torch.tensor(1.0 / 7, dtype=torch.float32).item()   # the reference's float32 1/7
# Triton's CPU interpreter (TRITON_INTERPRET=1, used by the CPU tests) has no libdevice; there numpy's
# float32 `/` is already IEEE-exact and rounding half to even uses the 1.5·2^23 trick (exact for |x| < 2^22)
_ON_GPU = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _div_rn(a, b):
    if _ON_GPU:
        return libdevice.div_rn(a, b)      # Triton's `/` is approximate on the GPU
    else:
        return a / b


@triton.jit
def _rint(a):
    if _ON_GPU:
        return libdevice.rint(a)
    else:
        return (a + 12582912.0) - 12582912.0


@triton.jit
def _load_smoothed(x_ptr, smooth_ptr, rows, mask, cols, K, INV_SMOOTH: tl.constexpr = False):
    """A (rows, group) tile of x as float32, its λ, and x̂ = x · (1/λ) with an IEEE reciprocal, as the
    reference (quant.w4a4.smooth_input): one division per channel instead of one per element. Shared by
    the row pass and the quantizer, whose units and codes must see the same x̂ bits. With INV_SMOOTH,
    smooth_ptr holds the reciprocals already (`inv_smooth`, the same IEEE bits), and the second value is
    1/λ instead of λ: no division here (the compiler recomputed it wherever x̂ is needed in another
    register layout, e.g. as a dot operand)."""
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if INV_SMOOTH:
        inv = tl.load(smooth_ptr + cols).to(tl.float32)
        return x, inv, x * inv[None, :]
    else:
        lam = tl.load(smooth_ptr + cols).to(tl.float32)
        return x, lam, x * _div_rn(1.0, lam)[None, :]


@triton.jit
def _low_rank_step(lr, x, lam, xs, cols, r, down_ptr, R: tl.constexpr, LR_PREC: tl.constexpr):
    """lr + this group's x̂ · L_down (BLOCK_M, R) in float32, from the group's x, λ (1/λ with "bf16x2i") and x̂ as
    `_load_smoothed` gives them. In kernel 1 by default, in its row pass with LR_ROW_PASS: the dot needs nothing of
    the quantization."""
    if LR_PREC == "bf16x2" or LR_PREC == "bf16x2i":
        # x̂ · L_down = x · (L_down / λ): the raw bf16 x (exact) against L_down / λ split into
        # two bf16 parts (to ~2^-17): two tensor-core dots with float32 accumulation whose
        # operand is the loaded x, instead of a float32 FMA dot on x̂, whose operand slices
        # cost ~200 registers (spills, 1/8 occupancy; ncu on the H100)
        dl = tl.load(down_ptr + cols[:, None] * R + r[None, :]).to(tl.float32)
        if LR_PREC == "bf16x2i":
            # without the divisions: L_down · (1/λ), 1/λ read from inv_smooth (INV_SMOOTH must be); its
            # parts may differ from bf16x2's in their last bit (LR_INV)
            dl = dl * lam[:, None]
        else:
            dl = _div_rn(dl, lam[:, None])
        dh = dl.to(tl.bfloat16)
        xb = x.to(tl.bfloat16)
        lr = _bf16_dot(xb, dh, lr)
        lr = _bf16_dot(xb, (dl - dh.to(tl.float32)).to(tl.bfloat16), lr)
    elif LR_PREC == "bf16x2s":
        # x̂ · L_down with x̂ (made for the codes / the row maxima) split into two bf16 parts (to ~2^-17)
        # against L_down as stored (bf16, exact): the same two tensor-core dots, without
        # bf16x2's division of every L_down element by λ (64 x R IEEE divisions per group and
        # program, 16 of the 26 per thread at BLOCK_M 16 in the sm_90 PTX)
        dn = tl.load(down_ptr + cols[:, None] * R + r[None, :]).to(tl.bfloat16)
        xh = xs.to(tl.bfloat16)
        lr = _bf16_dot(xh, dn, lr)
        lr = _bf16_dot((xs - xh.to(tl.float32)).to(tl.bfloat16), dn, lr)
    else:
        dn = tl.load(down_ptr + cols[:, None] * R + r[None, :]).to(tl.float32)
        lr += tl.dot(xs, dn, input_precision=LR_PREC)
    return lr


@triton.jit
def _low_rank_store(lr, lr_ptr, lrsum_ptr, cnt_ptr, rows, r, mask, M, S, split, pid_m, R: tl.constexpr,
                    BLOCK_M: tl.constexpr, REDUCE: tl.constexpr):
    """This K split's low-rank partial to lr_ptr (S, M, R); with REDUCE the last split of the row block to arrive
    sums all of them into lrsum_ptr (M, R)."""
    tl.store(lr_ptr + split * M * R + rows[:, None] * R + r[None, :], lr, mask=mask)
    if REDUCE:
        # the last of the row block's K splits to arrive sums their partials in split order (the
        # order the GEMM's epilogue used, so the same float32 sum) into lrsum (M, R): the GEMM then
        # reads one partial per tile instead of S (at M = 2048 and S = 17 its tiles re-read ~180 MB
        # of partials from the L2); the counter is re-armed for the next call
        tl.debug_barrier()               # this program's partial is stored before the release
        if tl.atomic_add(cnt_ptr + pid_m, 1, sem="acq_rel", scope="gpu") == S - 1:
            tot = tl.zeros((BLOCK_M, R), dtype=tl.float32)
            for t in range(0, S):
                tot += tl.load(lr_ptr + t * M * R + rows[:, None] * R + r[None, :], mask=mask, other=0.0,
                               cache_modifier=".cg")
            tl.store(lrsum_ptr + rows[:, None] * R + r[None, :], tot, mask=mask)
            tl.atomic_xchg(cnt_ptr + pid_m, 0)


@triton.jit
def _row_group(x_ptr, smooth_ptr, down_ptr, big, lr, rows, mask, cols, r, K, R: tl.constexpr, HAS_LR: tl.constexpr,
               LR_PREC: tl.constexpr, INV_SMOOTH: tl.constexpr):
    """The row pass's work on one group (columns `cols`): the rows' running max |x̂|, and with HAS_LR the low-rank
    partial."""
    x, lam, xs = _load_smoothed(x_ptr, smooth_ptr, rows, mask, cols, K, INV_SMOOTH)
    big = tl.maximum(big, tl.max(tl.abs(xs), axis=1))
    if HAS_LR:
        lr = _low_rank_step(lr, x, lam, xs, cols, r, down_ptr, R, LR_PREC)
    return big, lr


@triton.jit
def _row_amax(x_ptr, smooth_ptr, part_ptr, down_ptr, lr_ptr, lrsum_ptr, cnt_ptr, M, K, GPS, S, BLOCK_M: tl.constexpr,
              GROUP: tl.constexpr, INV_SMOOTH: tl.constexpr = False, R: tl.constexpr = 16, HAS_LR: tl.constexpr = False,
              LR_PREC: tl.constexpr = "ieee", REDUCE: tl.constexpr = False):
    """The first pass of the two-level scales: max |x · (1/λ)| (as the reference) per row over
    this program's K split, stored to part_ptr (S, M); kernel 1 takes the max over the splits. With HAS_LR
    (LR_ROW_PASS) it also makes the low-rank partials in kernel 1's place, from the same loads."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    G = K // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = rows[:, None] < M
    c = tl.arange(0, GROUP)
    big = tl.zeros((BLOCK_M,), dtype=tl.float32)
    r = tl.arange(0, R)
    lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    # (the split's groups as the loop's bounds, which Triton's software pipeliner takes, was measured 0.85-1.20x of
    # kernel 1's time with both passes pipelined, 0.85-1.08x with the row pass's low-rank dot: thirty-fourth session)
    for i in range(0, GPS):
        g = split * GPS + i
        if g < G:
            big, lr = _row_group(x_ptr, smooth_ptr, down_ptr, big, lr, rows, mask, g * GROUP + c, r, K, R, HAS_LR,
                                 LR_PREC, INV_SMOOTH)
    tl.store(part_ptr + split * M + rows, big, mask=rows < M)
    if HAS_LR:
        _low_rank_store(lr, lr_ptr, lrsum_ptr, cnt_ptr, rows, r, mask, M, S, split, pid_m, R, BLOCK_M, REDUCE)


@triton.jit
def _quantize_group(x_ptr, smooth_ptr, down_ptr, q_ptr, s_ptr, lr, rows, mask, g, c, dst_c, r, u, M, K, G, INV7, LDQ,
                    R: tl.constexpr, HAS_LR: tl.constexpr, MQ: tl.constexpr, GROUP: tl.constexpr,
                    LR_PREC: tl.constexpr, FP8: tl.constexpr, INV_SMOOTH: tl.constexpr):
    """Kernel 1's work on group g of its rows: the codes (or q·m) and scales stored, the low-rank partial updated."""
    cols = g * GROUP + c
    x, lam, xs = _load_smoothed(x_ptr, smooth_ptr, rows, mask, cols, K, INV_SMOOTH)   # lam: 1/λ with INV_SMOOTH
    # x̂ · (1/s) with an IEEE reciprocal, as the reference (quant.int4.quantize_groups)
    mult = tl.minimum(tl.maximum(tl.ceil(_div_rn(tl.max(tl.abs(xs), axis=1) * INV7, u)), 1.0), 16.0)
    s = u * mult
    q = _rint(xs * _div_rn(1.0, s)[:, None])
    q = tl.minimum(tl.maximum(q, -8.0), 7.0)
    if MQ:     # q·m (|q·m| <= 112): exact in int8 and fp16, natural k order; u per row
        tl.store(q_ptr + rows[:, None] * LDQ + cols[None, :], (q * mult[:, None]).to(q_ptr.dtype.element_ty),
                 mask=mask)
    elif FP8:  # codes -8..7 are exact in e4m3; scales (G, M) so the GEMM reads them contiguously
        tl.store(q_ptr + rows[:, None] * LDQ + (g * GROUP + dst_c)[None, :], q.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + g * M + rows, s, mask=rows < M)
    else:
        tl.store(q_ptr + rows[:, None] * LDQ + (g * GROUP + dst_c)[None, :], q.to(tl.int8), mask=mask)
        tl.store(s_ptr + rows * G + g, s, mask=rows < M)
    if HAS_LR:
        lr = _low_rank_step(lr, x, lam, xs, cols, r, down_ptr, R, LR_PREC)
    return lr


@triton.jit
def _quantize_act(x_ptr, smooth_ptr, down_ptr, q_ptr, s_ptr, lr_ptr, part_ptr, lrsum_ptr, cnt_ptr, M, K, GPS, S, INV7,
                  LDQ, R: tl.constexpr, HAS_LR: tl.constexpr, MQ: tl.constexpr, BLOCK_M: tl.constexpr,
                  GROUP: tl.constexpr, LR_PREC: tl.constexpr = "ieee", FP8: tl.constexpr = False,
                  REDUCE: tl.constexpr = False, INV_SMOOTH: tl.constexpr = False, SIGNAL: tl.constexpr = False):
    if SIGNAL:   # the i8s GEMM after it is a programmatic dependent launch (sm_90, kernels/w4a4_small_m.cu): it may
        # start now, fetch its weights into the L2 and wait for this grid's end before reading what it writes
        tl.extra.cuda.gdc_launch_dependents()
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    G = K // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = rows[:, None] < M
    c = tl.arange(0, GROUP)
    # codes stored de-interleaved inside each group (even k first, then odd k), matching the
    # weight's low / high nibbles
    dst_c = (c % 2) * (GROUP // 2) + c // 2
    if FP8 or MQ:    # natural order (the GEMM interleaves the weight nibbles instead)
        dst_c = c
    r = tl.arange(0, R)
    lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    # the row's unit u = max_g(amax_g · 1/7) / 16 (quant.int4.two_level) from _row_amax's split maxima
    top = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for t in range(0, S):
        top = tl.maximum(top, tl.load(part_ptr + t * M + rows, mask=rows < M, other=0.0))
    top = top * INV7
    u = tl.where(top > 0, top * 0.0625, 0.0625)
    if MQ:
        if split == 0:
            tl.store(s_ptr + rows, u, mask=rows < M)
    # (x loaded one group ahead was measured 0.75-0.80x at 1152-4096 rows on the H100: 129 registers, one block per
    # SM; thirty-third session. The loop given to Triton's pipeliner: see _row_amax)
    for i in range(0, GPS):
        g = split * GPS + i
        if g < G:
            lr = _quantize_group(x_ptr, smooth_ptr, down_ptr, q_ptr, s_ptr, lr, rows, mask, g, c, dst_c, r, u, M, K, G,
                                 INV7, LDQ, R, HAS_LR, MQ, GROUP, LR_PREC, FP8, INV_SMOOTH)
    if HAS_LR:
        _low_rank_store(lr, lr_ptr, lrsum_ptr, cnt_ptr, rows, r, mask, M, S, split, pid_m, R, BLOCK_M, REDUCE)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row block, column block) of this program, grouped 8 row blocks per column sweep (see _tile)."""
    return _tile_ids_of(tl.program_id(1) * tl.cdiv(M, BLOCK_M) + tl.program_id(0), M, N, BLOCK_M, BLOCK_N)


@triton.jit
def _tile_ids_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row block, column block) of tile number `pid`, in _tile_ids' order."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = 8 * num_n
    first_m = (pid // per_group) * 8
    rows_here = tl.minimum(num_m - first_m, 8)
    return first_m + (pid % per_group) % rows_here, (pid % per_group) // rows_here


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP: tl.constexpr):
    """This program's rows, columns, their masks, and a zero float32 accumulator ((BLOCK_N, BLOCK_M)
    when SWAP, else (BLOCK_M, BLOCK_N)). Tiles are visited in groups of 8 row blocks per column sweep:
    in plain order the programs resident together share one weight block but cover every row, so at
    large M the activations (59 MB at M = 8192, K = 3584 in fp16: more than the L2) are re-read from
    memory once per pair of column blocks."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    return rm, rn, rm < M, rn < N, acc


@triton.jit
def _rescale(acc, d, sx, sw, SWAP: tl.constexpr):
    """acc + a group's float32 dot d times its activation (sx) and weight (sw) scales."""
    if SWAP:
        out = acc + d * (sw[:, None] * sx[None, :])
    else:
        out = acc + d * (sx[:, None] * sw[None, :])
    return out


@triton.jit
def _w4a4_gemm_kernel(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, S,
                      M_BUCKET, SPLIT_K, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr, ACT: tl.constexpr = 0,
                      LR_BF16: tl.constexpr = False):
    rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
    HALF: tl.constexpr = GROUP // 2
    j = tl.arange(0, HALF)
    G = K // GROUP
    g0 = tl.program_id(2) * tl.cdiv(G, SPLIT_K)          # this program's K split (all of K when 1)
    for g in range(g0, tl.minimum(g0 + tl.cdiv(G, SPLIT_K), G)):
        k0 = g * GROUP
        packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (k0 // 2 + j)[None, :], mask=nmask[:, None], other=0)
        p8 = packed.to(tl.int8, bitcast=True)
        lo = (p8 << 4) >> 4                 # arithmetic shifts sign-extend the low nibble
        hi = p8 >> 4
        sx = tl.load(sx_ptr + rm * G + g, mask=mmask, other=0.0)
        sw = tl.load(sw_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
        if SWAP:
            a_even = tl.load(q_ptr + rm[None, :] * K + (k0 + j)[:, None], mask=mmask[None, :], other=0)
            a_odd = tl.load(q_ptr + rm[None, :] * K + (k0 + HALF + j)[:, None], mask=mmask[None, :], other=0)
            d = tl.dot(lo, a_even, out_dtype=tl.int32) + tl.dot(hi, a_odd, out_dtype=tl.int32)
        else:
            a_even = tl.load(q_ptr + rm[:, None] * K + (k0 + j)[None, :], mask=mmask[:, None], other=0)
            a_odd = tl.load(q_ptr + rm[:, None] * K + (k0 + HALF + j)[None, :], mask=mmask[:, None], other=0)
            d = tl.dot(a_even, tl.trans(lo), out_dtype=tl.int32) + tl.dot(a_odd, tl.trans(hi), out_dtype=tl.int32)
        acc = _rescale(acc, d.to(tl.float32), sx, sw, SWAP)
    _finish(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, S, SPLIT_K, HAS_BIAS,
            HAS_LR, R, SWAP, BLOCK_M, ACT, LR_BF16)


@triton.jit
def _activation(x, ACT: tl.constexpr):
    """ACT 1: GELU, tanh approximation (the FFN's), on the float32 result before its rounding to y's
    dtype; 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³), which needs only exp
    (the same in Triton's CPU interpreter) and saturates cleanly at ±inf."""
    if ACT == 1:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = x / (1.0 + tl.exp(-2.0 * u))
    return x


@triton.jit
def _finish(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, S, SPLIT_K,
            HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, SWAP: tl.constexpr, BLOCK_M: tl.constexpr,
            ACT: tl.constexpr = 0, LR_BF16: tl.constexpr = False):
    """acc (+ the low-rank branch, + bias, then the activation ACT: 0 none, 1 GELU-tanh) -> y in y's
    dtype; acc is (BLOCK_N, BLOCK_M) when SWAP.
    Split-K (small M: N / BLOCK_N programs alone leave most of the GPU idle over one long K loop): split
    0 adds the low-rank branch and bias to its partial, every split stores its float32 partial to a
    workspace (SPLIT_K, M, N), and the last split to arrive at the tile (an atomic counter) adds the
    partials in split order (the same sum whichever split came last), writes y and re-arms the counter,
    so one zeroed counter buffer serves every call, eager or replayed in a CUDA graph."""
    if SWAP:
        off = rm[None, :] * N + rn[:, None]
        omask = mmask[None, :] & nmask[:, None]
    else:
        off = rm[:, None] * N + rn[None, :]
        omask = mmask[:, None] & nmask[None, :]
    if SPLIT_K == 1:
        acc = _lowrank_bias(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, HAS_BIAS, HAS_LR, R, SWAP, BLOCK_M,
                            LR_BF16=LR_BF16)
        tl.store(y_ptr + off, _activation(acc, ACT).to(y_ptr.dtype.element_ty), mask=omask)
    else:
        if tl.program_id(2) == 0:
            acc = _lowrank_bias(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, HAS_BIAS, HAS_LR, R, SWAP,
                                BLOCK_M, LR_BF16=LR_BF16)
        tl.store(ws_ptr + tl.program_id(2) * M * N + off, acc, mask=omask)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.debug_barrier()                      # all of this program's partial is stored before the release
        if tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
            tot = tl.zeros_like(acc)
            for t in range(0, SPLIT_K):
                tot += tl.load(ws_ptr + t * M * N + off, mask=omask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + off, _activation(tot, ACT).to(y_ptr.dtype.element_ty), mask=omask)
            tl.atomic_xchg(cnt_ptr + tile, 0)


@triton.jit
def _bf16_dot(a, b, acc):
    """acc + a·b with both operands rounded to bf16 (bf16 tensor-core MMA, float32 accumulation). Triton's
    CPU interpreter has no bf16 dot: there the bf16-rounded values are multiplied in float32, which gives
    the same products (exact in float32)."""
    if _ON_GPU:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _lowrank_bias(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, HAS_BIAS: tl.constexpr,
                  HAS_LR: tl.constexpr, R: tl.constexpr, SWAP: tl.constexpr, BLOCK_M: tl.constexpr, row_factor=None,
                  LR_BF16: tl.constexpr = False):
    """acc + the low-rank up-projection of kernel 1's summed partials (x̂ · L_down, times `row_factor`
    per row if given) + bias. The float32 partials times the 16-bit L_up run as a tf32x3 dot, or with
    LR_BF16 and a bf16 L_up as two bf16 dots of the partials' high and low bf16 parts (to ~2^-17, like
    kernel 1's down-projection): on sm_80-sm_89 (mma.sync), tf32x3's split operands push the large-M
    tiles past 255 registers (up to 2.5 KB of spills per thread in the i8 GEMMs, 6-8 KB in the qkv and
    INT8-rescale ones, at sm_87 by ptxas: bench/target_compile.py --set LR_BF16=0); the bf16 pair leaves
    the 128-row tiles without spills."""
    r = tl.arange(0, R)
    if HAS_LR:
        up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
        if SWAP:
            lr = tl.zeros((R, BLOCK_M), dtype=tl.float32)
            for s in range(0, S):   # partial x̂ · L_down of kernel 1's K splits
                lr += tl.load(lr_ptr + s * M * R + rm[None, :] * R + r[:, None], mask=mmask[None, :], other=0.0)
            if row_factor is not None:
                lr = lr * row_factor[None, :]
            if LR_BF16 and up_ptr.dtype.element_ty == tl.bfloat16:
                hi = lr.to(tl.bfloat16).to(tl.float32)
                acc = _bf16_dot(up, hi, acc)
                acc = _bf16_dot(up, lr - hi, acc)
            else:
                acc = tl.dot(up, lr, acc, input_precision="tf32x3")
        else:
            lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
            for s in range(0, S):
                lr += tl.load(lr_ptr + s * M * R + rm[:, None] * R + r[None, :], mask=mmask[:, None], other=0.0)
            if row_factor is not None:
                lr = lr * row_factor[:, None]
            if LR_BF16 and up_ptr.dtype.element_ty == tl.bfloat16:
                hi = lr.to(tl.bfloat16).to(tl.float32)
                acc = _bf16_dot(hi, tl.trans(up), acc)
                acc = _bf16_dot(lr - hi, tl.trans(up), acc)
            else:
                acc = tl.dot(lr, tl.trans(up), acc, input_precision="tf32x3")
    if HAS_BIAS:
        if SWAP:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
        else:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _codes_f16(packed, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """(ROWS, GROUP/2) packed INT4 bytes -> (ROWS, GROUP) fp16 codes in natural k order, exact: the
    magic number 0x6400 | (v ^ 8) is 1032 + v as fp16 bits."""
    p16 = packed.to(tl.int16)
    lo = ((p16 & 0xF) ^ 8) | 0x6400
    hi = ((p16 >> 4) ^ 8) | 0x6400
    w16 = tl.join(lo, hi).reshape(ROWS, GROUP)          # byte j holds k = 2j, 2j + 1
    return w16.to(tl.float16, bitcast=True) - 1032.0


@triton.jit
def _unpack_fp8(packed, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """(ROWS, GROUP/2) packed INT4 bytes -> (ROWS, GROUP) e4m3 codes in natural k order."""
    return _codes_f16(packed, ROWS, GROUP).to(tl.float8e4nv)


@triton.jit
def _unpack_weight_fp8(w_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Packed INT4 (N, K/2) -> e4m3 codes (N, K), one group per program column (large-M workspace)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (g * (GROUP // 2) + j)[None, :], mask=rn[:, None] < N, other=0)
    tl.store(out_ptr + rn[:, None] * K + (g * GROUP + c)[None, :], _unpack_fp8(packed, BLOCK_N, GROUP),
             mask=rn[:, None] < N)


@triton.jit
def _w4a4_fp8_kernel(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, S,
                     M_BUCKET, SPLIT_K, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr, W8: tl.constexpr = False,
                     ACT: tl.constexpr = 0, LR_BF16: tl.constexpr = False):
    """The FP8 variant: both operands' 4-bit codes are exact e4m3 values, and e4m3 MMA accumulates in
    float32, so a group's dot needs no int->float convert before the rescale, and one K = 64 dot per
    group replaces two K = 32 ones. The weight nibbles become fp16 by the magic-number trick
    (0x6400 | (v ^ 8) is 1032 + v as fp16 bits, exact) and then e4m3; interleaving the low and high
    nibbles gives the natural k order, which the FP8 activation codes keep."""
    rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    G = K // GROUP
    g0 = tl.program_id(2) * tl.cdiv(G, SPLIT_K)          # this program's K split (all of K when 1)
    for g in range(g0, tl.minimum(g0 + tl.cdiv(G, SPLIT_K), G)):
        k0 = g * GROUP
        if W8:     # weights already unpacked to e4m3 (N, K) by _unpack_weight_fp8
            w8 = tl.load(w_ptr + rn[:, None] * K + (k0 + c)[None, :], mask=nmask[:, None], other=0.0)
        else:
            w8 = _unpack_fp8(tl.load(w_ptr + rn[:, None] * (K // 2) + (k0 // 2 + j)[None, :], mask=nmask[:, None],
                                     other=0), BLOCK_N, GROUP)
        sx = tl.load(sx_ptr + g * M + rm, mask=mmask, other=0.0)
        sw = tl.load(sw_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
        if SWAP:
            d = tl.dot(w8, tl.load(q_ptr + rm[None, :] * K + (k0 + c)[:, None], mask=mmask[None, :], other=0.0))
        else:
            d = tl.dot(tl.load(q_ptr + rm[:, None] * K + (k0 + c)[None, :], mask=mmask[:, None], other=0.0),
                       tl.trans(w8))
        # Triton waits for the asynchronous MMA right here (pendings = 0 in the TTGIR, also when the
        # rescale is deferred a group), so the rescale does not overlap the next group's MMA
        acc = _rescale(acc, d, sx, sw, SWAP)
    _finish(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, S, SPLIT_K, HAS_BIAS,
            HAS_LR, R, SWAP, BLOCK_M, ACT, LR_BF16)


@triton.jit
def _unpack_f16(packed, sw, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """(ROWS, GROUP/2) packed INT4 bytes x (ROWS,) float32 group scales -> (ROWS, GROUP) fp16 weights
    in natural k order. Exact: a 4-bit code times a bf16 scale has at most 11 significant bits
    (fp16's), unless it falls below fp16's normal range (2^-14)."""
    return (_codes_f16(packed, ROWS, GROUP).to(tl.float32) * sw[:, None]).to(tl.float16)


@triton.jit
def _dequant_weight_f16(w_ptr, sw_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Packed INT4 (N, K/2) x group scales -> fp16 (N, K), one group per program column (the large-M
    workspace of the f16 path)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (g * (GROUP // 2) + j)[None, :], mask=rn[:, None] < N, other=0)
    sw = tl.load(sw_ptr + rn * (K // GROUP) + g, mask=rn < N, other=0.0).to(tl.float32)
    tl.store(out_ptr + rn[:, None] * K + (g * GROUP + c)[None, :], _unpack_f16(packed, sw, BLOCK_N, GROUP),
             mask=rn[:, None] < N)


@triton.jit
def _w4a4_f16_kernel(a_ptr, rs_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, S,
                     M_BUCKET, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr,
                     W16: tl.constexpr = False, TMA: tl.constexpr = False, ACT: tl.constexpr = 0):
    """The f16 variant (Hopper, large M, free weight scales): both operands exact in fp16 (activations
    from kernel 1 as q·m, weights dequantized in registers or, with W16, in a workspace), so the whole K
    loop accumulates in the tensor cores' float32 accumulator with no per-group rescale, which Triton
    cannot overlap with the MMA; row m is multiplied by its unit u at the end."""
    rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    G = K // GROUP
    g0 = tl.program_id(2) * tl.cdiv(G, SPLIT_K)          # this program's K split (all of K when 1)
    # rows and columns past the end wrap around (valid memory, never stored): unmasked loads whose
    # pointers only advance by a constant, which keeps addressing out of the registers the tile needs
    a_ptrs = a_ptr + (rm % M)[:, None] * K + (g0 * GROUP + c)[None, :]
    if W16:
        w_ptrs = w_ptr + (rn % N)[:, None] * K + (g0 * GROUP + c)[None, :]
    else:
        w_ptrs = w_ptr + (rn % N)[:, None] * (K // 2) + (g0 * (GROUP // 2) + j)[None, :]
    s_ptrs = sw_ptr + (rn % N) * G + g0
    rs = tl.load(rs_ptr + rm, mask=mmask, other=1.0)
    if HAS_LR:
        # the low-rank branch first, divided by the row's unit u, as the accumulator's start:
        # in the epilogue its dot would hold a second tile-sized accumulator (spills at 128 x 256)
        if tl.program_id(2) == 0:
            acc = _lowrank_bias(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, False, True, R, SWAP, BLOCK_M,
                                _div_rn(1.0, rs))
    if TMA and W16:    # both operands both operands through the bulk tensor copy engine (rows past the end read as 0)
        pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N)
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, GROUP])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, GROUP])
        for g in range(g0, tl.minimum(g0 + tl.cdiv(G, SPLIT_K), G)):
            w = w_desc.load([pid_n * BLOCK_N, g * GROUP])
            a = a_desc.load([pid_m * BLOCK_M, g * GROUP])
            if SWAP:
                acc = tl.dot(w, tl.trans(a), acc)
            else:
                acc = tl.dot(a, tl.trans(w), acc)
    else:
        for g in range(g0, tl.minimum(g0 + tl.cdiv(G, SPLIT_K), G)):
            if W16:
                w = tl.load(w_ptrs)
                w_ptrs += GROUP
            else:
                w = _unpack_f16(tl.load(w_ptrs), tl.load(s_ptrs).to(tl.float32), BLOCK_N, GROUP)
                w_ptrs += GROUP // 2
                s_ptrs += 1
            if SWAP:
                acc = tl.dot(w, tl.trans(tl.load(a_ptrs)), acc)
            else:
                acc = tl.dot(tl.load(a_ptrs), tl.trans(w), acc)
            a_ptrs += GROUP
    if SWAP:
        acc = acc * rs[None, :]
    else:
        acc = acc * rs[:, None]
    _finish(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, S, SPLIT_K, HAS_BIAS,
            False, R, SWAP, BLOCK_M, ACT)


@triton.jit
def _codes_i8(packed, mult, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """(ROWS, GROUP/2) packed INT4 bytes x (ROWS,) per-group multipliers m (float, integer-valued in
    [1, 16]) -> (ROWS, GROUP) int8 q·m in natural k order (|q·m| <= 128)."""
    p8 = packed.to(tl.int8, bitcast=True)
    lo = (p8 << 4) >> 4                 # arithmetic shifts sign-extend the low nibble
    hi = p8 >> 4
    q = tl.join(lo, hi).reshape(ROWS, GROUP)          # byte j holds k = 2j, 2j + 1
    return q * mult.to(tl.int8)[:, None]


@triton.jit
def _swar_add(a, c7, c8):
    """Bytewise a + c mod 256 in uint32 words, no carries between bytes (c7 = c & 0x7F7F7F7F, c8 = c & 0x80808080)."""
    return ((a & 0x7F7F7F7F) + c7) ^ ((a & 0x80808080) ^ c8)


@triton.jit
def _byte(w, i: tl.constexpr):
    """Byte i of uint32 words as int8 (two's complement)."""
    return ((w >> (8 * i)) & 0xFF).to(tl.int8)


@triton.jit
def _codes_i8_swar(packed32, mult, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """_codes_i8 on uint32 words (8 codes each), four bytes per operation: a nibble x holds q = x - 16·[x >= 8], so
    x ^ 8 = q + 8 in [0, 15], and (q + 8)·m <= 240 (m in [1, 16]) multiplies all four bytes of a word at once with no
    carry; adding 256 - 8m bytewise (carries dropped) gives q·m mod 256, the int8 code. Then the bytes in k order."""
    m = mult.to(tl.uint32)[:, None]
    c = ((256 - 8 * m) & 0xFF) * 0x01010101
    c7 = c & 0x7F7F7F7F
    c8 = c & 0x80808080
    lo = _swar_add(((packed32 & 0x0F0F0F0F) ^ 0x08080808) * m, c7, c8)          # k = 8i + 0, 2, 4, 6
    hi = _swar_add((((packed32 >> 4) & 0x0F0F0F0F) ^ 0x08080808) * m, c7, c8)   # k = 8i + 1, 3, 5, 7
    # join appends its new axis last, so the innermost pair (low, high nibble) is the outermost join:
    # [..., a, b, c] = (c ? hi : lo) byte 2a + b, i.e. k = 8i + 4a + 2b + c
    lo4 = tl.join(tl.join(_byte(lo, 0), _byte(lo, 2)), tl.join(_byte(lo, 1), _byte(lo, 3)))
    hi4 = tl.join(tl.join(_byte(hi, 0), _byte(hi, 2)), tl.join(_byte(hi, 1), _byte(hi, 3)))
    return tl.join(lo4, hi4).reshape(ROWS, GROUP)


@triton.jit
def _weight_mult(sw_ptrs, inv_u):
    """A group's weight multipliers m = s / u (exact integers: s = u·m; rint absorbs 1/u's rounding)."""
    return _rint(tl.load(sw_ptrs).to(tl.float32) * inv_u)


@triton.jit
def _unpack_weight_i8(w_ptr, sw_ptr, wu_ptr, out_ptr, N, K, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Packed INT4 (N, K/2) with two-level scales -> int8 q·m (N, K), one group per program column (the
    large-M workspace of the i8 path)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (g * (GROUP // 2) + j)[None, :], mask=rn[:, None] < N, other=0)
    inv_u = 1.0 / tl.load(wu_ptr + rn % N)
    mult = _weight_mult(sw_ptr + (rn % N) * (K // GROUP) + g, inv_u)
    tl.store(out_ptr + rn[:, None] * K + (g * GROUP + c)[None, :], _codes_i8(packed, mult, BLOCK_N, GROUP),
             mask=rn[:, None] < N)


@triton.jit
def _i8w_persistent(a_ptr, ux_ptr, w_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, HAS_BIAS: tl.constexpr,
                    HAS_LR: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    KSTEP: tl.constexpr, ACT: tl.constexpr, LR_BF16: tl.constexpr):
    """The i8 workspace GEMM with TMA loads as a persistent kernel (PERSIST): a grid of at most one program per SM
    (`grid_for`), each taking every num_programs-th tile in _tile_ids' order. Why: a tile's epilogue (the low-rank
    up-projection, bias, activation, the bf16 store) otherwise runs with no loads in flight, and at 2048-8192 rows
    each SM runs several tiles one after another; with the tile loop flattened into the K loop (`flatten`), the
    pipeliner can issue the next tile's TMA loads during this tile's epilogue. The same int32 sums and epilogue as
    the grid-per-tile kernel, so the same bits."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, KSTEP])
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, KSTEP])
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), flatten=_ON_GPU):
        pid_m, pid_n = _tile_ids_of(tile, M, N, BLOCK_M, BLOCK_N)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k in range(0, K, KSTEP):
            acc = tl.dot(a_desc.load([pid_m * BLOCK_M, k]), tl.trans(w_desc.load([pid_n * BLOCK_N, k])), acc,
                         out_dtype=tl.int32)
        uw = tl.load(wu_ptr + (rn % N))
        ux = tl.load(ux_ptr + rm, mask=rm < M, other=0.0)
        # one low-rank partial (kernel 1 sums them by default: S == 1, which `w4a4_linear` and `i8_candidates`
        # check), as a constant: a loop over S would be a second loop inside the tile loop, which `flatten` cannot fuse
        _finish(acc.to(tl.float32) * (ux[:, None] * uw[None, :]), rm, rn, rm < M, rn < N, lr_ptr, up_ptr, b_ptr, y_ptr,
                y_ptr, y_ptr, M, N, 1, 1, HAS_BIAS, HAS_LR, R, False, BLOCK_M, ACT, LR_BF16)


@triton.jit
def _w4a4_i8_kernel(a_ptr, ux_ptr, w_ptr, sw_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, S,
                    M_BUCKET, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr,
                    W8: tl.constexpr = False, TMA: tl.constexpr = False, KSTEP: tl.constexpr = 64,
                    ACT: tl.constexpr = 0, LR_BF16: tl.constexpr = False, PREFETCH_SCALES: tl.constexpr = False,
                    SWAR: tl.constexpr = False, PERSIST: tl.constexpr = False):
    """The i8 variant (two-level scales on both sides, quant.int4.two_level): the activations arrive as
    int8 q·m with a unit u_x per row, the weights as packed codes whose q·m is made in registers (or,
    with W8, read from an int8 workspace), so the whole K loop is one INT8 MMA accumulation in int32
    (exact: |Σ| <= 128² K < 2^31) with no per-group rescale, scaled by u_x · u_w once at the end. PERSIST (the
    workspace through TMA, unswapped, K unsplit): `_i8w_persistent`, on `grid_for`'s grid."""
    if PERSIST:
        _i8w_persistent(a_ptr, ux_ptr, w_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, HAS_BIAS, HAS_LR, R,
                        BLOCK_M, BLOCK_N, KSTEP, ACT, LR_BF16)
    else:
        rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
        acc = acc.to(tl.int32)                                # int32: exact integer sums
        j = tl.arange(0, GROUP // 2)
        c = tl.arange(0, GROUP)
        G = K // GROUP
        g0 = tl.program_id(2) * tl.cdiv(G, SPLIT_K)          # this program's K split (all of K when 1)
        # rows and columns past the end wrap around (valid memory, never stored): unmasked loads
        uw = tl.load(wu_ptr + (rn % N))
        inv_uw = 1.0 / uw
        k_end = tl.minimum(g0 + tl.cdiv(G, SPLIT_K), G) * GROUP
        if W8:     # plain int8 tiles, KSTEP (64 or 128: no group boundary inside the loop any more) per step
            kk = tl.arange(0, KSTEP)
            if TMA:    # both operands through the bulk tensor copy engine (rows past the end read as 0)
                pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N)
                a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, KSTEP])
                w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, KSTEP])
                for k in range(g0 * GROUP, k_end, KSTEP):
                    w = w_desc.load([pid_n * BLOCK_N, k])
                    a = a_desc.load([pid_m * BLOCK_M, k])
                    if SWAP:
                        acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.int32)
                    else:
                        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
            else:
                a_ptrs = a_ptr + (rm % M)[:, None] * K + (g0 * GROUP + kk)[None, :]
                w_ptrs = w_ptr + (rn % N)[:, None] * K + (g0 * GROUP + kk)[None, :]
                for k in range(g0 * GROUP, k_end, KSTEP):
                    w = tl.load(w_ptrs)
                    if SWAP:
                        acc = tl.dot(w, tl.trans(tl.load(a_ptrs)), acc, out_dtype=tl.int32)
                    else:
                        acc = tl.dot(tl.load(a_ptrs), tl.trans(w), acc, out_dtype=tl.int32)
                    a_ptrs += KSTEP
                    w_ptrs += KSTEP
        else:
            a_ptrs = a_ptr + (rm % M)[:, None] * K + (g0 * GROUP + c)[None, :]
            w_ptrs = w_ptr + (rn % N)[:, None] * (K // 2) + (g0 * (GROUP // 2) + j)[None, :]
            s_ptrs = sw_ptr + (rn % N) * G + g0
            if SWAR:     # the packed codes as uint32 words (K / 2 bytes a row: a multiple of 4)
                j4 = tl.arange(0, GROUP // 8)
                w_ptrs = (w_ptr.to(tl.pointer_type(tl.uint32)) + (rn % N)[:, None] * (K // 8)
                          + (g0 * (GROUP // 8) + j4)[None, :])
            if PREFETCH_SCALES:
                # each group's weight scales loaded one group ahead: 2-byte loads cannot go through cp.async, so
                # the pipeliner leaves them in the loop, where each one waits a global round trip before its
                # group's codes can be made (seen in the sm_90 PTX: the only load in the loop body)
                s_next = tl.load(s_ptrs)
            for k in range(g0 * GROUP, k_end, GROUP):
                if PREFETCH_SCALES:
                    s_cur = s_next
                    s_next = tl.load(s_ptrs + 1, mask=(rn >= 0) & (k + GROUP < k_end), other=1.0)
                    mult = _rint(s_cur.to(tl.float32) * inv_uw)
                else:
                    mult = _weight_mult(s_ptrs, inv_uw)
                if SWAR:
                    w = _codes_i8_swar(tl.load(w_ptrs), mult, BLOCK_N, GROUP)
                    w_ptrs += GROUP // 8
                else:
                    w = _codes_i8(tl.load(w_ptrs), mult, BLOCK_N, GROUP)
                    w_ptrs += GROUP // 2
                s_ptrs += 1
                if SWAP:
                    acc = tl.dot(w, tl.trans(tl.load(a_ptrs)), acc, out_dtype=tl.int32)
                else:
                    acc = tl.dot(tl.load(a_ptrs), tl.trans(w), acc, out_dtype=tl.int32)
                a_ptrs += GROUP
        ux = tl.load(ux_ptr + rm, mask=mmask, other=0.0)
        if SWAP:
            out = acc.to(tl.float32) * (uw[:, None] * ux[None, :])
        else:
            out = acc.to(tl.float32) * (ux[:, None] * uw[None, :])
        _finish(out, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, S, SPLIT_K, HAS_BIAS,
                HAS_LR, R, SWAP, BLOCK_M, ACT, LR_BF16)


@triton.jit
def _w4a4_i8_qkv_kernel(a_ptr, ux_ptr, w_ptr, sw_ptr, wu_ptr, lr_ptr, up_ptr, b_ptr, M, N, K, S, M_BUCKET,
                        QB, SM, COS, SIN, QO, KO, VO, NTOK, START, C, sr_l, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l,
                        HEAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr,
                        BLOCK_M: tl.constexpr, GROUP: tl.constexpr, W8: tl.constexpr = False,
                        KSTEP: tl.constexpr = 64, TMA: tl.constexpr = False, LR_BF16: tl.constexpr = False):
    """The i8 GEMM of the self-attention's qkv projection with the attention's input epilogue (the
    reference: SelfAttention.qkv_epilogue; kernels/qkv_rope_triton.py does it as a second pass) in place
    of the store. A program owns one head's HEAD columns (of q, k or v) for BLOCK_M rows, in two
    accumulators: the head's even channels and its odd ones, whose weight rows it reads as two strided
    row sets. RoPE rotates exactly those pairs, so the epilogue is elementwise on the two accumulators
    plus a row sum for the norm: no reshapes or splits of the MMA tile (which cost a shared-memory round
    trip of the whole tile, and made a one-accumulator version of this kernel 2x slower than the GEMM and
    the second pass together on the H100). The float32 tile + the low-rank branch + [q_bias, 0, v_bias];
    q, k normalized to unit length (IEEE sqrt and division, as F.normalize), q times its head's scale,
    both rotated by the token's (cos, sin); written into the attention's (B, H, L, c) buffers at token
    START + t (row m = b · NTOK + t). The projection's (M, 3C) output never exists."""
    HALF: tl.constexpr = HEAD // 2
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, HEAD)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rm < M
    i = tl.arange(0, HALF)
    col0 = pid_n * HEAD
    ce = col0 + 2 * i                                   # the head's even channels' columns; odd: ce + 1
    nmask = ce < N
    acc0 = tl.zeros((BLOCK_M, HALF), dtype=tl.int32)
    acc1 = tl.zeros((BLOCK_M, HALF), dtype=tl.int32)
    uw0 = tl.load(wu_ptr + ce)
    uw1 = tl.load(wu_ptr + ce + 1)
    if W8 and TMA:    # the workspace viewed as (N/2, 2K): a row holds channel 2r's weights, then 2r + 1's
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, KSTEP])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N // 2, 2 * K], strides=[2 * K, 1], block_shape=[HALF, KSTEP])
        for k in range(0, K, KSTEP):
            a = a_desc.load([pid_m * BLOCK_M, k])
            acc0 = tl.dot(a, tl.trans(w_desc.load([pid_n * HALF, k])), acc0, out_dtype=tl.int32)
            acc1 = tl.dot(a, tl.trans(w_desc.load([pid_n * HALF, K + k])), acc1, out_dtype=tl.int32)
    elif W8:     # the int8 workspace: plain loads, KSTEP per step
        kk = tl.arange(0, KSTEP)
        a_ptrs = a_ptr + (rm % M)[:, None] * K + kk[None, :]
        w_ptrs = w_ptr + ce[:, None] * K + kk[None, :]
        for k in range(0, K, KSTEP):
            a = tl.load(a_ptrs)
            acc0 = tl.dot(a, tl.trans(tl.load(w_ptrs)), acc0, out_dtype=tl.int32)
            acc1 = tl.dot(a, tl.trans(tl.load(w_ptrs + K)), acc1, out_dtype=tl.int32)
            a_ptrs += KSTEP
            w_ptrs += KSTEP
    else:      # packed codes, q·m made in registers per group
        c = tl.arange(0, GROUP)
        j = tl.arange(0, GROUP // 2)
        G = K // GROUP
        a_ptrs = a_ptr + (rm % M)[:, None] * K + c[None, :]
        w_ptrs = w_ptr + ce[:, None] * (K // 2) + j[None, :]
        s_ptrs = sw_ptr + ce * G
        inv0, inv1 = 1.0 / uw0, 1.0 / uw1
        for g in range(0, G):
            a = tl.load(a_ptrs)
            w0 = _codes_i8(tl.load(w_ptrs), _weight_mult(s_ptrs, inv0), HALF, GROUP)
            w1 = _codes_i8(tl.load(w_ptrs + K // 2), _weight_mult(s_ptrs + G, inv1), HALF, GROUP)
            acc0 = tl.dot(a, tl.trans(w0), acc0, out_dtype=tl.int32)
            acc1 = tl.dot(a, tl.trans(w1), acc1, out_dtype=tl.int32)
            a_ptrs += GROUP
            w_ptrs += GROUP // 2
            s_ptrs += 1
    ux = tl.load(ux_ptr + rm, mask=mmask, other=0.0)
    x0 = acc0.to(tl.float32) * (ux[:, None] * uw0[None, :])
    x1 = acc1.to(tl.float32) * (ux[:, None] * uw1[None, :])
    x0 = _lowrank_bias(x0, rm, ce, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, HAS_BIAS, HAS_LR, R, False, BLOCK_M,
                       LR_BF16=LR_BF16)
    x1 = _lowrank_bias(x1, rm, ce + 1, mmask, nmask, lr_ptr, up_ptr, b_ptr, M, S, HAS_BIAS, HAS_LR, R, False, BLOCK_M,
                       LR_BF16=LR_BF16)
    x0 += tl.load(QB + ce)[None, :]
    x1 += tl.load(QB + ce + 1)[None, :]
    sec = col0 // C                                       # 0: q, 1: k, 2: v
    h = (col0 % C) // HEAD
    t = rm % NTOK
    row_k = (rm // NTOK) * sk_b + (START + t) * sk_l + h * sk_h
    if sec == 2:
        _store_head(VO + row_k, x0, x1, mmask, HEAD)
    else:
        sq = tl.sum(x0 * x0, axis=1) + tl.sum(x1 * x1, axis=1)
        if _ON_GPU:
            nrm = tl.maximum(libdevice.sqrt_rn(sq), 1e-12)[:, None]
            x0, x1 = libdevice.div_rn(x0, nrm), libdevice.div_rn(x1, nrm)
        else:
            nrm = tl.maximum(tl.sqrt(sq), 1e-12)[:, None]
            x0, x1 = x0 / nrm, x1 / nrm
        cos = tl.load(COS + t[:, None] * sr_l + i[None, :], mask=mmask[:, None], other=1.0)
        sin = tl.load(SIN + t[:, None] * sr_l + i[None, :], mask=mmask[:, None], other=0.0)
        if sec == 0:
            s = tl.load(SM + h)
            x0, x1 = x0 * s, x1 * s
            _store_head(QO + (rm // NTOK) * sq_b + (START + t) * sq_l + h * sq_h, cos * x0 - sin * x1,
                        sin * x0 + cos * x1, mmask, HEAD)
        else:
            _store_head(KO + row_k, cos * x0 - sin * x1, sin * x0 + cos * x1, mmask, HEAD)


@triton.jit
def _store_head(rows, x0, x1, mask, HEAD: tl.constexpr):
    """A head's even (x0) and odd (x1) channels, (BLOCK_M, HEAD/2) each, interleaved into one contiguous
    (BLOCK_M, HEAD) store at the rows' pointers: the pairs are one thread's registers, so the join is
    free, and the store is as wide as the plain GEMM's. (Two stores with a stride of 2 elements made the
    kernel 1.9x slower on the H100: bench/qkv_epilogue_probe.py.)"""
    d = tl.arange(0, HEAD)
    tl.store(rows[:, None] + d[None, :], tl.reshape(tl.join(x0, x1), x0.shape[0], HEAD).to(rows.dtype.element_ty),
             mask=mask[:, None])


def _cfg(bm, bn, swap, warps, stages, split_k=1, **extra):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SWAP": swap, "SPLIT_K": split_k, **extra}, num_warps=warps,
                         num_stages=stages)


def _split(tiles, splits):
    """Each (BLOCK_M, BLOCK_N, SWAP, warps, stages) tile with each K split count."""
    return [_cfg(*t, split_k=k) for t in tiles for k in splits]


# Small M (<= 64 rows) streams the weights (memory-bound): narrow row blocks, K split 1/4/8 ways; large M
# is compute-bound tiles, split 2/4 ways only up to SPLIT_MAX_M rows (where the tiles alone underfill
# the GPU; the split workspace is SPLIT_K x M x N float32)
SPLIT_MAX_M = int(os.environ.get("VAR_GEN_W4A4_SPLIT_MAX_M", "256"))
# The f16w TMA tiles among the tuner's candidates: with them f16w is 5-8 % faster at M = 8192 on every 8B
# shape (H100, docs/BENCHMARKS.md, seventh session); VAR_GEN_W4A4_TMA=0 leaves them out
TMA_CANDIDATES = os.environ.get("VAR_GEN_W4A4_TMA", "1") == "1"
SMALL_M_CONFIGS = _split([(16, 64, False, 4, 4), (16, 128, False, 4, 4), (16, 64, True, 4, 4), (16, 128, True, 4, 4),
                          (32, 128, True, 4, 4), (16, 256, True, 8, 3), (32, 64, False, 4, 4)], (1, 4, 8))
LARGE_M_CONFIGS = [_cfg(64, 128, False, 4, 4), _cfg(128, 128, False, 8, 3), _cfg(128, 256, False, 8, 3),
                   _cfg(128, 64, False, 4, 4), _cfg(64, 128, True, 4, 4), _cfg(128, 128, True, 8, 3),
                   _cfg(128, 256, True, 8, 3)] + _split([(64, 128, False, 4, 4), (64, 128, True, 4, 4)], (2, 4))


def _graph_bench(fn, quantiles):
    """The tuners' timer: CUDA-graph replay. Eager timing of a ~20 µs kernel measures the Python launch
    instead, and then picks split-K configs at random (seen on the H100). The replay runs on a side
    stream: synchronize first, so no kernel still in flight on the caller's stream (kernel 1, an earlier
    layer's split-K GEMM using the same tile counters) overlaps the candidates."""
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=20, quantiles=quantiles)


# The small-M tiles are also the tuner's candidates, beside the large ones, for row buckets up to this many
# rows (64: only up to 64, as measured so far). Scales 3-8 of a 1024² image (72-1152 rows) cost 7-15 ms
# more than bf16 each, twice the small scales' excess (docs/BENCHMARKS.md, sixteenth session); above 64 rows
# the narrowest tiles the tuner may pick are 64 rows, so at 72 rows nearly half of each tile is padding.
# Only their splits up to 4 join (8 would double the split workspace there). VAR_GEN_W4A4_SMALL_TILES_MAX_M
# (e.g. 256) turns it on. Off: on the H100 at 72-256 rows within ±3.5 % of the default on the four block shapes
# (eighteenth session, docs/BENCHMARKS.md), not worth the tuning time on a machine's first start.
SMALL_TILES_MAX_M = int(os.environ.get("VAR_GEN_W4A4_SMALL_TILES_MAX_M", "64"))


def tile_candidates(small, large, bucket: int) -> list:
    """The configs the tuner may try at a row bucket: `small` up to 64 rows, `large` above, and with
    SMALL_TILES_MAX_M the small ones' splits up to 4 beside the large ones up to that bucket; split-K
    ones only up to SPLIT_MAX_M rows."""
    if bucket <= 64:
        cands = list(small)
    else:
        cands = list(large) + [c for c in small if bucket <= SMALL_TILES_MAX_M and c.kwargs["SPLIT_K"] <= 4]
    return [c for c in cands if c.kwargs["SPLIT_K"] == 1 or bucket <= SPLIT_MAX_M]


def _autotuned(kernel, small, large, key, extra_prune=None):
    """`kernel` autotuned over `tile_candidates` of its `small` and `large` configs."""
    def prune(configs, named_args, **kwargs):
        # by the bucket (the tuner's cache key), not M: every M of a bucket reuses the pick
        b = named_args["M_BUCKET"]
        # W16 arrives with the call's keyword arguments, not the positional named_args (until the sixth
        # session's fix it was read from named_args, so the TMA candidates were always pruned)
        w16 = kwargs.get("W16", named_args.get("W16", False)) and TMA_CANDIDATES
        keep = {id(c) for c in tile_candidates(small, large, b)
                if w16 or not c.kwargs.get("TMA", False) or extra_prune is not None}
        kept = [c for c in configs if id(c) in keep]
        return first_if_asked(extra_prune(kept, named_args, **kwargs) if extra_prune is not None else kept)
    # cache_results: the picks persist in Triton's cache directory, so only the first start on a
    # machine spends the minutes of tuning (about 8 s per (M bucket, N, K) on the H100); a GPU model with a
    # shipped table (kernels/tuned_picks.py, seeded by the dispatcher) skips them on its first start too
    return triton.autotune(configs=small + large, key=key, prune_configs_by={"early_config_prune": prune},
                           do_bench=_graph_bench, cache_results=True)(kernel)


_w4a4_gemm = _autotuned(_w4a4_gemm_kernel, SMALL_M_CONFIGS, LARGE_M_CONFIGS, ["M_BUCKET", "N", "K"])


# FP8 tiles: the weight side (BLOCK_N) is the wgmma M side when SWAP, so it is 64 per warpgroup
FP8_SMALL_M_CONFIGS = _split([(16, 64, True, 4, 4), (16, 128, True, 4, 4), (32, 64, True, 4, 4),
                              (32, 128, True, 4, 4), (64, 64, False, 4, 4), (64, 128, True, 4, 4)], (1, 4, 8))
FP8_LARGE_M_CONFIGS = [_cfg(128, 128, False, 8, 3), _cfg(128, 256, False, 8, 3), _cfg(64, 128, False, 4, 4),
                       _cfg(128, 64, False, 4, 4), _cfg(128, 128, True, 8, 3), _cfg(256, 128, True, 8, 3),
                       _cfg(64, 128, True, 4, 4), _cfg(128, 64, True, 4, 4)] + \
    _split([(64, 128, False, 4, 4), (64, 128, True, 4, 4), (128, 128, True, 8, 3)], (2, 4))


_w4a4_fp8 = _autotuned(_w4a4_fp8_kernel, FP8_SMALL_M_CONFIGS, FP8_LARGE_M_CONFIGS, ["M_BUCKET", "N", "K", "W8"])

# f16 tiles: SWAP puts the weights (dequantized in registers) on wgmma's register-fed left operand
F16_SMALL_M_CONFIGS = _split([(16, 64, True, 4, 4), (16, 128, True, 4, 4), (32, 128, True, 4, 4),
                              (64, 64, False, 4, 4), (64, 128, True, 4, 4)], (1, 4, 8))
F16_LARGE_M_CONFIGS = [_cfg(128, 256, False, 8, 3), _cfg(128, 128, False, 8, 4), _cfg(256, 128, False, 8, 3),
                       _cfg(64, 256, False, 4, 3), _cfg(128, 128, True, 8, 3), _cfg(256, 128, True, 8, 3),
                       _cfg(128, 256, True, 8, 3)] + _split([(64, 128, False, 4, 4), (64, 128, True, 4, 4)], (2, 4)) + \
    [_cfg(128, 256, False, 8, 3, TMA=True), _cfg(128, 128, False, 8, 4, TMA=True), _cfg(256, 128, False, 8, 3, TMA=True),
     _cfg(128, 256, True, 8, 3, TMA=True), _cfg(128, 256, False, 8, 4, TMA=True)]     # TMA: the workspace (W16) only
_w4a4_f16 = _autotuned(_w4a4_f16_kernel, F16_SMALL_M_CONFIGS, F16_LARGE_M_CONFIGS, ["M_BUCKET", "N", "K", "W16"])
# i8 tiles: the FP8 ones (8-bit operands, the same wgmma shapes), and for the int8 workspace (W8) larger
# K steps (no group boundary inside the loop) and TMA tiles
I8_SMALL_M_CONFIGS = FP8_SMALL_M_CONFIGS
I8_LARGE_M_CONFIGS = FP8_LARGE_M_CONFIGS + \
    [_cfg(128, 256, False, 8, 3, KSTEP=128), _cfg(128, 128, False, 8, 4, KSTEP=128), _cfg(256, 128, True, 8, 3, KSTEP=128),
     _cfg(128, 256, False, 8, 3, TMA=True), _cfg(128, 256, False, 8, 3, TMA=True, KSTEP=128),
     _cfg(128, 128, False, 8, 4, TMA=True, KSTEP=128), _cfg(256, 128, True, 8, 3, TMA=True, KSTEP=128),
     _cfg(128, 256, True, 8, 3, TMA=True, KSTEP=128),
     # 4 stages (192 KB of shared memory): 3-7 % faster than any tile above at M = 2048 and 8192 on the
     # four block shapes (H100, bench/int8_gemm_probe.py, eleventh session)
     _cfg(128, 256, False, 8, 4, TMA=True, KSTEP=128)]     # KSTEP 128 and TMA: the workspace (W8) only
# The persistent form of the TMA workspace tiles (`_i8w_persistent`, forty-eighth session): VAR_GEN_W4A4_PERSIST=1 adds
# them to the tuner's candidates. Built and checked in the interpreter and by compiling for sm_90 here; not yet timed,
# so off (and a GPU model with a shipped table tunes nothing: VAR_GEN_TUNED_PICKS=0 lets the tuner try them).
PERSIST_CANDIDATES = os.environ.get("VAR_GEN_W4A4_PERSIST", "0") == "1"
# (sm_90 by ptxas here: 128 x 128 in 4 stages 160 KB of shared memory, 254 registers, no spill; 128 x 256 in 3 stages
# 208 KB, 2.7 KB spilled; 4 stages of 128 x 256 need 256 KB, more than an H100 SM has, as the tile loop, fused with the K
# loop, keeps its epilogue's operands in shared memory beside the stages)
I8_PERSIST_CONFIGS = [_cfg(128, 128, False, 8, 4, TMA=True, KSTEP=128, PERSIST=True),
                      _cfg(128, 128, False, 8, 3, TMA=True, KSTEP=128, PERSIST=True),
                      _cfg(128, 256, False, 8, 3, TMA=True, KSTEP=128, PERSIST=True)]
if PERSIST_CANDIDATES:
    I8_LARGE_M_CONFIGS = I8_LARGE_M_CONFIGS + I8_PERSIST_CONFIGS
# Tried and taken out (fortieth session, at 4a968cb): split-K workspace tiles with TMA and the 128-wide K step (128 x 128
# split 2 and 4, 128 x 256 split 2, 128 x 128 plain loads split 2), with SPLIT_MAX_M raised to 2048, so that 257-2048 rows
# fill the H100 with more than 56-224 tiles: the tuner picked none of them on any of 25 keys (five shapes, 288-2048 rows;
# docs/results/split_*_fortieth_h100.*, bench/device/split_mid_m.sh).
# Tried and taken out (twenty-ninth/thirtieth sessions): a 256 x 64 swapped in-register tile with two warpgroups, unsplit
# and K split 2 and 4 ways, so that 129-256 rows make each weight code once instead of in two 128-row tiles. On the
# H100 the tuner's trials put it at 1.08-2.3x the best pick's time on every key at 128-512 rows
# (docs/results/tile256_*_thirtieth_h100.*; bench/autotune_trials.py): fewer instructions per row, more time.


def _arch(named_args) -> int:
    """The compute capability (e.g. 87, 90) of the GPU a tuned call runs on, from its first tensor, or `_ARCH`
    where a shipped pick is checked against the candidates without a call (kernels/tuned_picks.py)."""
    if "_ARCH" in named_args:
        return named_args["_ARCH"]
    return _arch_of(next(a for a in named_args.values() if isinstance(a, torch.Tensor)))


def i8_candidates(configs, w8: bool, K: int, arch: int, S: int = 1) -> list:
    """The i8 GEMM's candidates for a call: KSTEP 128 and TMA need the workspace (W8); KSTEP 128 also all
    of K in one split, a multiple of 128; TMA tiles only where the bulk tensor copy engine is (sm_90+:
    elsewhere Triton would compile them to plain loads, the same tiles the tuner already tries); persistent
    ones (TMA tiles) only with at most one low-rank partial (S)."""
    return [c for c in configs if (w8 or c.kwargs.get("KSTEP", 64) == 64)
            and not (c.kwargs.get("TMA", False) and not (w8 and TMA_CANDIDATES and arch >= 90))
            and (c.kwargs.get("KSTEP", 64) == 64 or (K % 128 == 0 and c.kwargs["SPLIT_K"] == 1))
            and not (c.kwargs.get("PERSIST", False) and S > 1)]


def _i8_prune(configs, named_args, **kwargs):
    return i8_candidates(configs, kwargs.get("W8", named_args.get("W8", False)), named_args["K"], _arch(named_args),
                         named_args.get("S", 1))
_w4a4_i8 = _autotuned(_w4a4_i8_kernel, I8_SMALL_M_CONFIGS, I8_LARGE_M_CONFIGS, ["M_BUCKET", "N", "K", "W8"], _i8_prune)
# The qkv-epilogue GEMM's tiles: BLOCK_M rows of one head (two HEAD/2-wide accumulators), the K step of
# the workspace's loads (128 needs K % 128 == 0 and the workspace), TMA loads (the workspace only)
def _qkv_cfg(bm, warps, stages, kstep=64, tma=False):
    return triton.Config({"BLOCK_M": bm, "KSTEP": kstep, "TMA": tma}, num_warps=warps, num_stages=stages)


QKV_CONFIGS = [_qkv_cfg(128, 8, 3), _qkv_cfg(128, 8, 4), _qkv_cfg(64, 4, 4), _qkv_cfg(256, 8, 3),
               _qkv_cfg(128, 8, 3, 128), _qkv_cfg(128, 8, 4, 128), _qkv_cfg(256, 8, 3, 128), _qkv_cfg(64, 4, 4, 128),
               _qkv_cfg(128, 8, 4, 128, True), _qkv_cfg(256, 8, 3, 128, True), _qkv_cfg(128, 8, 3, 64, True),
               _qkv_cfg(256, 8, 4, 64, True)]


def qkv_candidates(configs, w8: bool, K: int, arch: int) -> list:
    """The qkv-epilogue GEMM's candidates: as `i8_candidates` (KSTEP 128 and TMA need the workspace, TMA sm_90+)."""
    return [c for c in configs if (c.kwargs["KSTEP"] == 64 or (w8 and K % 128 == 0))
            and not (c.kwargs["TMA"] and not (w8 and TMA_CANDIDATES and arch >= 90))]


def _qkv_prune(configs, named_args, **kwargs):
    return first_if_asked(qkv_candidates(configs, kwargs.get("W8", named_args.get("W8", False)), named_args["K"],
                                         _arch(named_args)))


_w4a4_i8_qkv = triton.autotune(configs=QKV_CONFIGS, key=["M_BUCKET", "N", "K", "W8", "HEAD"],
                               prune_configs_by={"early_config_prune": _qkv_prune},
                               do_bench=_graph_bench, cache_results=True)(_w4a4_i8_qkv_kernel)
_COUNTERS = {}
# direct launches of the compiled kernels after their first call per specialization (kernels/launch.py)
_QUANTIZE, _UNPACK_FP8, _DEQUANT_F16 = Launcher(_quantize_act), Launcher(_unpack_weight_fp8), Launcher(_dequant_weight_f16)
_ROW_AMAX, _UNPACK_I8 = Launcher(_row_amax), Launcher(_unpack_weight_i8)
_GEMM_INT8, _GEMM_FP8, _GEMM_F16, _GEMM_I8 = (Launcher(_w4a4_gemm), Launcher(_w4a4_fp8), Launcher(_w4a4_f16),
                                              Launcher(_w4a4_i8))
_GEMM_I8_QKV = Launcher(_w4a4_i8_qkv)


def _bucket(M: int) -> int:
    """The autotuner's row bucket: M rounded up to a power of two, at most 8192."""
    return min(1 << max(0, (M - 1).bit_length()), 8192)


def _split_k_buffers(M: int, N: int, device, split_k: int = None):
    """The split-K workspace (SPLIT_K, M, N) float32 for the largest split the tuner may pick at this M
    (or `split_k`), and the per-tile counters: one persistent zeroed int32 buffer per device (every call
    re-arms the counters it used)."""
    bucket = _bucket(M)
    most = split_k or (1 if bucket > SPLIT_MAX_M else 8 if bucket <= 64 else 4)
    if most == 1:
        return None, None
    tiles = triton.cdiv(M, 16) * triton.cdiv(N, 64)          # the most any tile shape needs
    return torch.empty(most, M, N, dtype=torch.float32, device=device), _counters(device, tiles, "split_k")


# At most this many K splits of one row block in kernel 1: on 14336 -> 3584 at 2 and 32 rows (one row block) 56
# splits of 4 groups took 15.4 and 15.8 µs where 112 of 2 took 17.6 and 19.3 (H100, eighteenth session,
# bench/w4a4_stages.py --splits, without divisions); the other block shapes (3584 K) stop at 28 splits anyway.
MAX_SPLITS = 56


def _splits(M: int, G: int, block_m: int) -> int:
    """K splits of kernel 1: enough programs to fill ~2 waves of a large GPU (264 programs: twice the H100's
    132 SMs), each ≥ 2 groups, at most MAX_SPLITS."""
    blocks = triton.cdiv(M, block_m)
    return max(1, min(triton.cdiv(264, blocks), G // 2, MAX_SPLITS))


def _split_groups(G: int, splits: int) -> tuple:
    """(groups per split, splits) of kernel 1 for `splits` asked: the splits that leave none empty."""
    gps = triton.cdiv(G, splits)
    return gps, triton.cdiv(G, gps)


# Up to this many rows the q·m layouts (the i8 / i8w paths) run kernel 1 in 16-row blocks of 4 warps (without
# divisions: LR_SPLIT_X "auto"), instead of 64 rows of 8 warps above 64 rows: 29-37 % faster at 72 and 128 rows on
# the four block shapes, 2-28 % at 288, on the H200 (eighteenth session, bench/w4a4_stages.py); on the H100 35 %
# slower at 512. At the edge proof (1024² with CFG) 5 ms of 1.019 s.
QUANT_16ROW_MAX_M = int(os.environ.get("VAR_GEN_W4A4_QUANT_16ROW_MAX_M", "288"))


def _quantize_launch(M: int, layout: str):
    """(BLOCK_M, num_warps) of kernel 1 for its output `layout`: "int8" (codes, de-interleaved per group),
    "fp8" (codes in natural order) or "mq" (q·m of the i8 / f16 paths). The fastest measured on the H100 per M
    (docs/results/quantize_variants_h100.json, the FP8 layout; the q·m layout's small rows in the eighteenth
    session); the INT8 layout's de-interleaved stores prefer 16 rows."""
    if layout == "int8" or M <= 64 or (layout == "mq" and M <= QUANT_16ROW_MAX_M):
        return 16, 4
    if M <= 1024:
        return 64, 8
    return (128, 8) if M <= 4096 else (64, 4)


def _kernel1_grid(M: int, G: int, layout: str, block_m: int = None, num_warps: int = None, splits: int = None):
    """Kernel 1's launch for M rows of G groups in `layout` (`_quantize_launch`'s, or the given overrides): (BLOCK_M,
    warps, groups per split, splits). `next_row_stats` sizes the split maxima it hands `quantize_activations` by it."""
    BM, warps = _quantize_launch(M, layout)
    BM, warps = block_m or BM, num_warps or warps
    gps, S = _split_groups(G, splits or _splits(M, G, BM))
    return BM, warps, gps, S


def _counters(device, n: int, kind: str) -> torch.Tensor:
    """A persistent zeroed int32 buffer of at least n counters per device and use (`kind`): every kernel
    that counts re-arms the counters it used, so one buffer serves every call, eager or in a CUDA graph."""
    key = (device.type, device.index, kind)
    if key not in _COUNTERS or _COUNTERS[key][-1].numel() < n:
        # old buffers stay alive: a captured CUDA graph may still point at them
        _COUNTERS.setdefault(key, []).append(torch.zeros(max(n, 1 << 16), dtype=torch.int32, device=device))
    return _COUNTERS[key][-1]


def inv_smooth(layer) -> torch.Tensor:
    """1/λ of the layer's smoothing factors in float32, kept on the layer (W4A4Linear.derived) and remade when λ
    changes: the same bits as the kernels' IEEE reciprocal (`_div_rn(1.0, λ)`; PyTorch's float32 division is
    correctly rounded on the CPU and on CUDA), computed once per layer instead of in every program and group."""
    return layer.derived("inv_smooth", "smooth", lambda: torch.reciprocal(layer.smooth.float()))


def quantize_activations(x2: torch.Tensor, layer, splits: int = None, lr_prec: str = None, block_m: int = None,
                         fp8: bool = False, num_warps: int = None, f16: bool = False, i8: bool = False,
                         reduce_lr: bool = True, inv: bool = None, signal: bool = False, row_pass_lr: bool = None,
                         given: dict = None):
    """Kernel 1 alone (after its row pass, `_row_amax`): (codes (M, K) int8 de-interleaved per group,
    scales (M, K/64) f32, partial low-rank (S, M, r) f32 or None); with `fp8`, codes (M, K) e4m3 in
    natural order and scales (K/64, M); with `f16` / `i8`, q·m (M, K) in fp16 / int8 (exact, natural
    order) and the rows' units u (M,) f32 in place of codes and scales. With `reduce_lr` (the default)
    the K splits' low-rank partials come back summed (1, M, r) by the split that finishes a row block
    last. The low-rank dot is "bf16x2" (tensor cores: x against L_down / λ in two bf16 parts) for bf16 x,
    where `split_x(BLOCK_M)` "bf16x2s" (x̂ in two bf16 parts against L_down as stored, which must then be bf16),
    with LR_INV elsewhere "bf16x2i" (x against L_down · (1/λ)), else "ieee" (float32 FMA). `inv` (default
    `reads_inv_smooth`; not with "bf16x2", which needs λ itself, always with "bf16x2i"): the
    kernels read 1/λ (`inv_smooth`) instead of dividing by λ. `splits`, `lr_prec`, `block_m`, `num_warps`
    override the defaults (tests, benchmarks), as does `row_pass_lr` LR_ROW_PASS. `signal` (sm_90 only): the kernel lets
    a programmatic dependent launch after it start as it starts (the i8s GEMM with VAR_GEN_W4A4_PDL=1). `given`
    (FC2_STATS: the layer before made them in its epilogue, `next_row_stats`): the row pass's output, {"maxima": (S, M)
    float32, the rows' max |x̂| in its first row and zeros after, "shares": (column tiles, M, r) float32 low-rank
    shares}: kernel 1 only quantizes, and the low-rank input is the shares' sum."""
    M, K = x2.shape
    R = layer.rank
    G = K // GROUP
    mq = f16 or i8
    BM, warps, gps, S = _kernel1_grid(M, G, "mq" if mq else "fp8" if fp8 else "int8", block_m, num_warps, splits)
    if lr_prec is None:
        lr_prec = "ieee"
        if x2.dtype == torch.bfloat16:
            lr_prec = lr_prec_bf16(BM) if not R or layer.lora_down.dtype == torch.bfloat16 else "bf16x2"
    inv = reads_inv_smooth(lr_prec, BM) if inv is None else lr_prec == "bf16x2i" or inv and lr_prec != "bf16x2"
    smooth = inv_smooth(layer) if inv else layer.smooth
    q = torch.empty(M, K, dtype=torch.float16 if f16 else torch.float8_e4m3fn if fp8 else torch.int8, device=x2.device)
    sx = torch.empty((M,) if mq else (G, M) if fp8 else (M, G), dtype=torch.float32, device=x2.device)
    grid = (triton.cdiv(M, BM), S)
    if given is not None:       # the row pass made already (FC2_STATS): its maxima, its low-rank input summed
        part = given["maxima"]
        if not mq or tuple(part.shape) != (S, M):
            raise ValueError(f"quantize_activations: given maxima must be ({S}, {M}) for the q·m layout, got "
                             f"{tuple(part.shape)}")
        _QUANTIZE(grid, (x2, smooth, layer.lora_down if R else x2, q, sx, part, part, part, part, M, K, gps, S,
                         INV_QMAX, K),
                  dict(MQ=mq, BLOCK_M=BM, GROUP=GROUP, FP8=fp8, INV_SMOOTH=inv, num_warps=warps, R=R if R else 16,
                       HAS_LR=False, LR_PREC=lr_prec, REDUCE=False))
        return q, sx, given["shares"].sum(0, keepdim=True) if R else None
    lr = torch.empty(S, M, R, dtype=torch.float32, device=x2.device) if R else None
    # the rows' max |x̂| first (the two-level scales' units), each K split's in one pass over x
    part = torch.empty(S, M, dtype=torch.float32, device=x2.device)
    reduce = bool(R) and reduce_lr and S > 1
    lrsum = torch.empty(1, M, R, dtype=torch.float32, device=x2.device) if reduce else None
    cnt = _counters(x2.device, grid[0], "lr") if reduce else part
    lr_args = (layer.lora_down if R else x2, lr if R else sx, lrsum if reduce else part, cnt)
    lr_meta = dict(R=R if R else 16, HAS_LR=bool(R), LR_PREC=lr_prec, REDUCE=reduce)
    if R and (LR_ROW_PASS if row_pass_lr is None else row_pass_lr):
        # the low-rank partials from the row pass (LR_ROW_PASS); kernel 1 only quantizes
        _ROW_AMAX(grid, (x2, smooth, part) + lr_args + (M, K, gps, S),
                  dict(BLOCK_M=BM, GROUP=GROUP, INV_SMOOTH=inv, num_warps=warps, **lr_meta))
        lr_meta = dict(lr_meta, HAS_LR=False, REDUCE=False)
    else:
        _ROW_AMAX(grid, (x2, smooth, part, part, part, part, part, M, K, gps, S),
                  dict(BLOCK_M=BM, GROUP=GROUP, INV_SMOOTH=inv, num_warps=warps))
    _QUANTIZE(grid, (x2, smooth, lr_args[0], q, sx, lr_args[1], part, lr_args[2], cnt, M, K, gps, S, INV_QMAX, K),
              dict(MQ=mq, BLOCK_M=BM, GROUP=GROUP, FP8=fp8, INV_SMOOTH=inv, num_warps=warps, **lr_meta,
                   **({"SIGNAL": True} if signal else {})))
    return q, sx, (lrsum if reduce else lr)


# From this many rows on, the FP8 path unpacks the weights into an e4m3 workspace (N x K bytes, freed
# after the call) and its GEMM loads them plainly: 1.07-1.23x faster at M >= 2048 on the H100, about
# equal at 512, slower below (the unpack is a fixed cost). VAR_GEN_W4A4_UNPACK_MIN_M=0 turns it off.
UNPACK_MIN_M = int(os.environ.get("VAR_GEN_W4A4_UNPACK_MIN_M", "2048"))
# From this many rows on, Hopper runs the f16 path (fp16 MMA over exactly dequantized operands, one
# accumulation over all of K) instead of FP8 MMA with a per-group rescale; 0 turns it off. From
# F16W_MIN_M rows the weights are dequantized into an fp16 workspace (N x K x 2 bytes, freed after the
# call) first. With the one-pass row bounds (seventh session) f16w is 1.24-1.47x faster than fp8w at
# M = 2048 on the four measured 8B shapes, and 1.14-1.31x faster than fp8 at M = 1024 (H100,
# docs/BENCHMARKS.md); 1024 is left to the FP8 paths because the product's 512-token slices run there at
# the edge proof's memory peak, which the workspace (up to 103 MB) would raise above 10 GiB.
F16_MIN_M = int(os.environ.get("VAR_GEN_W4A4_F16_MIN_M", "2048"))
F16W_MIN_M = int(os.environ.get("VAR_GEN_W4A4_F16W_MIN_M", "2048"))
_ARCH = {}


def _capability(x: torch.Tensor):
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if dev not in _ARCH:
        _ARCH[dev] = torch.cuda.get_device_capability(dev)
    return _ARCH[dev]


def default_path(x: torch.Tensor) -> str:
    """The W4A4 GEMM for x's GPU for layers whose weight scales are not two-level (checkpoints with
    free scales): FP8 MMA where the tensor cores have it (sm_89+: Ada, Hopper; measured 1.4-2.2x faster
    than INT8 MMA with a per-group rescale on the H100), INT8 MMA before (sm_80-sm_87, Jetson Orin)."""
    return "fp8" if _capability(x) >= (8, 9) else "int8"


# The i8 path (two-level scales: one INT8 MMA accumulation over all of K, no per-group rescale) for
# layers whose weight scales allow it (every layer this package quantizes); VAR_GEN_W4A4_I8=0 turns it
# off. From I8W_MIN_M rows the weights' q·m go to an int8 workspace (N x K bytes, freed after the call):
# from 257 rows, the autotuner's own timings of the 512-row bucket (H100, eleventh session) put the
# workspace's GEMM plus its unpack at 0.6-0.7x the in-register GEMM's time on the block shapes (3584²:
# 20-27 + 8 µs against 41-51 µs; 3584->14336: 71-77 + 35 against 147-200), which a 1024² generation
# meets at its 144-token scale (288 rows with CFG); at 128 rows they are about equal
I8 = os.environ.get("VAR_GEN_W4A4_I8", "1") == "1"
# The in-register i8 GEMM (up to I8W_MIN_M rows) with each group's weight scales loaded one group ahead
# (`PREFETCH_SCALES` in `_w4a4_i8_kernel`); VAR_GEN_W4A4_PREFETCH_SCALES=1 turns it on. Off: measured slower on the
# H100 in 13 of 16 cases, by up to 12 % (eighteenth session, docs/BENCHMARKS.md)
PREFETCH_SCALES = os.environ.get("VAR_GEN_W4A4_PREFETCH_SCALES", "0") == "1"
# The in-register i8 GEMM making its codes four bytes at a time in uint32 words (`SWAR` in `_w4a4_i8_kernel`,
# `_codes_i8_swar`); VAR_GEN_W4A4_SWAR=0 turns it off. On since the twenty-ninth session: on the H100 the same bits as
# the byte unpack on every 8B shape, and 0.88-0.94x its time at 72-256 rows (CUDA-graph replay, both in one machine,
# docs/BENCHMARKS.md). Its K loop compiled here (bench/ptx_loop.py), per 64-wide group: sm_87 280 -> 184
# instructions with the same shared-memory traffic; sm_90 253 -> 207, with a shared-memory round trip of the codes
# added (a thread's word is not the 4-code slice wgmma's A operand wants in that thread)
SWAR = os.environ.get("VAR_GEN_W4A4_SWAR", "1") == "1"


def swar_applies(qweight: torch.Tensor) -> bool:
    """Whether the in-register i8 path may read these packed codes as uint32 words: SWAR on and the rows 4-byte
    aligned (a row is K/2 bytes with K % 64 == 0, so the base address decides; a view at an odd byte offset, as a
    slice of a larger buffer could be, takes the byte unpack instead of a misaligned load)."""
    return SWAR and qweight.data_ptr() % 4 == 0
I8W_MIN_M = int(os.environ.get("VAR_GEN_W4A4_I8W_MIN_M", "257"))
# Up to this many rows (at most small_m.MAX_M = 32) the i8 layout's GEMM is the CUDA C++ kernel
# (kernels/w4a4_small_m.cu, path "i8s": mma.sync fragments loaded straight from the packed weights, no unpack
# shuffle); where it does not build, the Triton i8 kernel. Measured on the H100 (nineteenth session,
# bench/small_m_sweep.py, whole product in a CUDA graph): at 2 and 8 rows 1.24-1.80x faster than the Triton i8
# path on the four block shapes; at 32 rows 1.26x on 3584 -> 10752, equal on 3584², 0.88x on 3584 -> 14336.
# The twenty-third session's sweep (docs/results/small_m_sweep_inline_twentythird_h100.txt; whole product, the
# Triton kernel 1 before either GEMM, as the product runs from 9 rows) put i8s ahead of the Triton i8 path at
# 16 rows on all four shapes (1.19-1.50x) and at 32 rows where the layer is at most 3x wider than deep (3584 ->
# 10752 1.25x, 3584² 1.06x, 14336 -> 3584 1.30x), behind on 3584 -> 14336 (0.89x). So: up to SMALL_M_MAX rows
# (16) on every layer, up to SMALL_M_MAX_NARROW (32) where N <= 3 K (`small_m_limit`); a 1024² generation with
# CFG meets 2, 8 and 32 rows. VAR_GEN_W4A4_SMALL_M_MAX=0 turns it off.
SMALL_M_MAX = int(os.environ.get("VAR_GEN_W4A4_SMALL_M_MAX", "16"))
SMALL_M_MAX_NARROW = int(os.environ.get("VAR_GEN_W4A4_SMALL_M_MAX_NARROW", "32"))


def small_m_limit(N: int, K: int) -> int:
    """The most rows a K -> N layer sends to the i8s kernel (0: none)."""
    if SMALL_M_MAX <= 0:
        return 0
    return max(SMALL_M_MAX, SMALL_M_MAX_NARROW) if N <= 3 * K else SMALL_M_MAX
# Up to this many rows (at most small_m.MAX_M = 32) the i8 layout's kernel 1 is the CUDA C++ one
# (kernels/w4a4_quantize_small_m.cu: one launch with a grid barrier for the rows' units, instead of the Triton row
# pass and quantizer over up to 56 K splits); the same codes and units bit for bit. Where it does not build or
# take the call, the Triton kernel 1. Measured on the H100 (twenty-first session, bench/small_m_sweep.py, whole
# product in a CUDA graph): on the i8s path at 2 and 8 rows faster on all four block shapes (3584 -> 10752: 17.4
# against 19.8 µs at 2 rows, 18.6 against 20.5 at 8); at 16 and 32 rows slower (its per-slice low-rank partials,
# which the small-M GEMM's epilogue sums one by one). So the default is 8 rows. It was off in the twenty-second
# session, when two edge proofs with it on "stalled" in their first generation; the twenty-third showed that phase
# to be Triton's autotuner on a fresh machine whose carried picks predated a kernel change (up to 91 s per scale,
# 310 s for the first generation, progress lines in docs/results/edge_w4a4_tuning_*_twentythird_h100.txt), and a
# 1024² edge proof with it on completed on the same machine as one without (1.142 s against 1.131, within the
# runs' spread). Its grid barrier gives up after 2 s (`__trap()`), so a barrier never met fails the launch with a
# CUDA error instead of holding the GPU (GPU test). VAR_GEN_W4A4_QUANT_CUDA_MAX_M=0 turns it off.
QUANT_CUDA_MAX_M = int(os.environ.get("VAR_GEN_W4A4_QUANT_CUDA_MAX_M", "8"))
# Kernel 1 (and its row pass) without divisions: the low-rank dot on x̂ split into two bf16 parts against
# L_down as stored ("bf16x2s"), instead of x against L_down / λ divided in the kernel ("bf16x2"), the same
# precision (~2^-17); and 1/λ read from `inv_smooth` instead of made per program and group. In the sm_90 PTX
# of the BLOCK_M 16 launch: 2 IEEE divisions per thread and group instead of 26 (either change alone leaves
# most of them: the compiler remakes x̂, reciprocal included, in the dot's operand layout), at 128 registers
# instead of 96; the 64- and 128-row launches 165-191 instead of 77-108 (sixteenth session). Measured on the
# H100 (eighteenth session, docs/BENCHMARKS.md): kernel 1 6-17 % faster at 2-128 rows, where its grid is
# smaller than one wave, but 21 % slower at 512 rows in 64-row blocks, where those registers cost occupancy.
# So "auto" (the default) takes it for the 16-row launches only; VAR_GEN_W4A4_LR_SPLIT_X=1 / 0 forces it on /
# off for every launch.
LR_SPLIT_X = os.environ.get("VAR_GEN_W4A4_LR_SPLIT_X", "auto")


def split_x(block_m: int) -> bool:
    """Whether kernel 1 in blocks of `block_m` rows runs without divisions (LR_SPLIT_X)."""
    if LR_SPLIT_X in ("0", "1"):
        return LR_SPLIT_X == "1"
    return block_m <= 16


# The launches that do not split x̂ (LR_SPLIT_X) with the low-rank dot "bf16x2i" instead of "bf16x2": L_down times
# the kept 1/λ (`inv_smooth`) instead of divided by λ in every program and group, and x̂ from 1/λ too, so neither
# kernel 1 nor its row pass divides per column (the 128-row launch's loop: 28 IEEE divisions per group and thread in
# the sm_90 PTX, thirty-second session). The same codes and scales; the low-rank input within the same 2e-5 of
# float64. Kernel 1 1.11-1.25x faster on the H100 at 512-4096 rows on the four 8B block shapes (the W4A4 forward
# 1.01-1.06x; docs/BENCHMARKS.md, thirty-third session); on the Orin's sm_87 registers 180 -> 143.
# VAR_GEN_W4A4_LR_INV=0 goes back to dividing.
LR_INV = os.environ.get("VAR_GEN_W4A4_LR_INV", "1") == "1"
# The low-rank dot in the row pass instead of kernel 1 (`_row_amax` with HAS_LR): it needs nothing of the
# quantization, and it is 12-47 % of kernel 1's time with "bf16x2i" (a barrier and a wait per group, with two
# 8-warp blocks per SM; thirty-third session), while the row pass is lighter (75 registers). The same partials
# from the same operands. On the H100 (thirty-fourth session, bench/device/quant_ab.sh, the four 8B block shapes): kernel
# 1 1.01-1.11x faster at 2048 rows and 1.12-1.47x at 4096 (the W4A4 forward up to 1.10x, on 14336->3584), 0.96-1.00x at
# 512 with the forward equal; the resident 1024² edge proof 1.031 -> 1.021 s, no scale slower (2-8192 rows). The
# default since then; VAR_GEN_W4A4_LR_ROW_PASS=0 keeps the dot in kernel 1.
LR_ROW_PASS = os.environ.get("VAR_GEN_W4A4_LR_ROW_PASS", "1") == "1"
# (This row pass was also written in CUDA C++ with mma.sync, kernels/w4a4_row_pass.cu, forty-third to forty-fifth
# sessions: its last form was right and ran at this one's speed, kernel 1 0.94-1.16x, the 1024² edge proof the same;
# Nsight Compute found both latency-bound, 0.57 waves of blocks at 26 % of the DRAM bandwidth. Removed as a second
# path with no gain; docs/BENCHMARKS.md keeps its figures.)


def lr_prec_bf16(block_m: int) -> str:
    """Kernel 1's low-rank dot for bf16 activations and a bf16 L_down in blocks of `block_m` rows, as
    `quantize_activations` picks it."""
    return "bf16x2s" if split_x(block_m) else "bf16x2i" if LR_INV else "bf16x2"


def reads_inv_smooth(lr_prec: str, block_m: int) -> bool:
    """Whether kernel 1 (and its row pass) read 1/λ (`inv_smooth`) for this low-rank dot and row block."""
    return lr_prec == "bf16x2i" or split_x(block_m) and lr_prec != "bf16x2"


def path_for(x2: torch.Tensor, layer=None, rows: int = None) -> str:
    """The path `w4a4_linear` takes for x2 (M, K) (or `rows` rows on x2's device) by GPU, M and (given
    `layer`) its weight scales."""
    M = x2.shape[0] if rows is None else rows
    if I8 and _capability(x2) >= (8, 0) and (layer is None or layer.weight_units() is not None):
        if (layer is not None and M <= small_m_limit(layer.out_features, layer.in_features)
                and small_m.supports(M, layer, x2.dtype)
                and small_m.extension() is not None):
            return "i8s"
        return "i8w" if 0 < I8W_MIN_M <= M else "i8"
    path = default_path(x2)
    if _capability(x2)[0] == 9 and 0 < F16_MIN_M <= M:
        return "f16w" if 0 < F16W_MIN_M <= M else "f16"
    if path == "fp8" and 0 < UNPACK_MIN_M <= M:
        return "fp8w"
    return path


# VAR_GEN_W4A4_LR_BF16=1: the two-bf16-dot low-rank epilogue on Hopper too (forty-eighth session, not yet timed). Compiled
# for sm_90 here (ptxas), tf32x3 spills the i8w path's largest tiles after all: the 128 x 256 TMA tile (the H100's usual
# pick from 2048 rows) 1,188 bytes a thread, 2,584 with fc1's GELU; the bf16 pair 176 and 180
LR_BF16_ON_HOPPER = os.environ.get("VAR_GEN_W4A4_LR_BF16", "0") == "1"


def lr_bf16(arch: int) -> bool:
    """Whether the GEMM epilogue's low-rank up-projection takes the two-bf16-dot form (`_lowrank_bias`) on
    sm_`arch`: on mma.sync GPUs (sm_80-sm_89, the Orin among them), where tf32x3 spills the large tiles;
    Hopper keeps tf32x3 (the H100's figures were measured with it) unless LR_BF16_ON_HOPPER."""
    return arch < 90 or LR_BF16_ON_HOPPER


def _arch_of(x: torch.Tensor) -> int:
    major, minor = _capability(x)
    return 10 * major + minor


# activations the GEMM's epilogue applies (W4A4Linear.forward's `act`): the kernels' ACT constexpr
ACTIVATIONS = {None: 0, "gelu_tanh": 1}


_KEPT = threading.local()       # .spaces: {id(layer): (layer, weights version, workspace)} inside workspaces_kept()
# VAR_GEN_W4A4_KEEP_WORKSPACES=0: every call unpacks its own workspace (what the sessions before the fifteenth did)
KEEP_WORKSPACES = os.environ.get("VAR_GEN_W4A4_KEEP_WORKSPACES", "1") == "1"


@contextlib.contextmanager
def workspaces_kept():
    """Inside, each layer's int8 weight workspace (the i8w path's) is made once and reused by the layer's
    later calls, and freed on exit. The slices of a large scale (CrossAttnBlock.forward_chunked) call the same
    layers 2-4 times at 1024²; each call otherwise unpacks the whole weight again (H100: 0.008 ms for
    3584², 0.035 ms for the FFN's, per call). Costs the kept workspaces' bytes until the exit (all of a
    block's five post-attention layers: 141 MB at 8B widths, against the largest one's 51 MB one at a time).
    Nests (the outermost exit frees); per thread."""
    outer = getattr(_KEPT, "spaces", None)
    if outer is None and KEEP_WORKSPACES:
        _KEPT.spaces = {}
    try:
        yield
    finally:
        if outer is None:
            _KEPT.spaces = None


def _weights_version(layer) -> tuple:
    return (layer.qweight.data_ptr(), layer.qweight._version, layer.wscales.data_ptr(), layer.wscales._version)


def _kept_workspace(layer):
    """The layer's int8 workspace kept inside `workspaces_kept` for its current weights, or None."""
    kept = (getattr(_KEPT, "spaces", None) or {}).get(id(layer))
    return kept[2] if kept is not None and kept[0] is layer and kept[1] == _weights_version(layer) else None


def _i8_workspace(layer, wu: torch.Tensor) -> torch.Tensor:
    """The weights' q·m once into an int8 workspace (N, K): plain loads in the GEMM. Freed after the call, or
    kept for the layer's next calls inside `workspaces_kept` (remade if its weights changed). Inside
    `workspaces_ahead`, taken from the side stream's unpack if it made it, and the next layer's unpack started there."""
    kept = _kept_workspace(layer)
    if kept is not None:
        return kept
    spaces = getattr(_KEPT, "spaces", None)
    side = ahead.current()
    wq = side.take(layer) if side is not None else None
    if wq is None:
        wq = torch.empty(layer.out_features, layer.in_features, dtype=torch.int8, device=layer.qweight.device)
        _unpack_i8(layer, wu)(wq)
    if spaces is not None:
        spaces[id(layer)] = (layer, _weights_version(layer), wq)
    if side is not None:
        side.made(layer, lambda other: _kept_workspace(other) is not None)
    return wq


def _unpack_i8(layer, wu: torch.Tensor = None):
    """A launch of the layer's unpack into a given (N, K) int8 workspace, on the stream current when it is called
    (`workspaces_ahead` calls it on its side stream; the weight units are made here, on the caller's)."""
    wu = layer.weight_units() if wu is None else wu
    N, K = layer.out_features, layer.in_features
    return lambda wq: _UNPACK_I8((triton.cdiv(N, 64), K // GROUP), (layer.qweight, layer.wscales, wu, wq, N, K),
                                 dict(BLOCK_N=64, GROUP=GROUP))


# VAR_GEN_W4A4_UNPACK_AHEAD=1: inside `workspaces_ahead` (the model's block loop of a scale), each i8w layer's
# workspace is unpacked on a side stream while the layer before it runs (kernels/unpack_ahead.py). Off until it is
# measured on the GPU: the unpack and the GEMM then share the SMs
UNPACK_AHEAD = os.environ.get("VAR_GEN_W4A4_UNPACK_AHEAD", "0") == "1"


@contextlib.contextmanager
def workspaces_ahead():
    """Inside (with UNPACK_AHEAD), the i8w workspaces are made ahead on a side stream (kernels/unpack_ahead.py);
    yields its state (forks, hits), or None where off. On exit every unpack made ahead has been waited for."""
    if not UNPACK_AHEAD:
        yield None
        return
    with ahead.unpack_ahead(_unpack_i8, _weights_version) as state:
        yield state


def w4a4_linear(x: torch.Tensor, layer, out: torch.Tensor = None, config: dict = None, path: str = None,
                act: str = None, next_layer=None, stats: dict = None, given: dict = None) -> torch.Tensor:
    """The W4A4 forward of `layer` (a W4A4Linear with act_bits=4) on CUDA; `out` (M, N) optional.
    `path` overrides the choice by GPU and M (`path_for`): "i8s" (the CUDA C++ kernel for M <= 32,
    kernels/w4a4_small_m.cu; `config` {"warps", "splits"}), "i8" / "i8w" (INT8 MMA over all of K on
    q·m of two-level scales, the weights' made in registers / in a workspace first), "i8p" (the same sums in Gluon on
    Hopper, the weights' made into shared memory in the K loop; `config` a `i8p_tile` dict; taken by default only with
    GLUON_I8P), "int8" (INT8 MMA), "fp8" (FP8 MMA on the
    packed weights), "fp8w" (FP8 MMA on weights unpacked first), "f16" (fp16 MMA on activations and
    weights dequantized exactly, the weights in registers) or "f16w" (the same with the weights
    dequantized into a workspace first); `config` ({BLOCK_M, BLOCK_N, SWAP, SPLIT_K, num_warps,
    num_stages}) fixes the GEMM's launch instead of autotuning (tests and benchmarks use both to check
    and time every variant). `act` ("gelu_tanh") is applied in the epilogue, to the float32 result.
    `next_layer` (FC2_STATS, `w4a4_ffn`): the W4A4 layer that reads this one's output next; where this call's GEMM is
    a Gluon one unswapped, its epilogue makes that layer's row pass and `stats` gets it ({"maxima", "shares"}, for
    `given`); elsewhere `stats` stays empty. `given`: this layer's row pass so made (kernel 1 then only quantizes)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; the epilogue has {sorted(k for k in ACTIVATIONS if k)}")
    _ensure_allocator()
    K, N, R = layer.in_features, layer.out_features, layer.rank
    shape = x.shape
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    if path is None:
        path = path_for(x2, layer)
        # i8p where it applies, but not on an i8w call whose workspace an earlier slice of the scale left kept
        # (`workspaces_kept`): its GEMM then runs without the unpack, which is what i8p saves (a large scale's last
        # slice, e.g. 512 rows after 4096 at 1024², with I8P_MAX_M 512)
        if path in ("i8", "i8w") and config is None and gluon_i8p_applies(x2, layer) \
                and not (path == "i8w" and _kept_workspace(layer) is not None):
            path = "i8p"
    fp8, f16, i8 = path in ("fp8", "fp8w"), path in ("f16", "f16w"), path in ("i8", "i8w", "i8s", "i8p")
    wu = layer.weight_units() if i8 else None
    if i8 and wu is None:
        raise ValueError("the i8 path needs two-level weight scales (quant.int4.weight_scales); this layer's are free")
    if path == "i8s" and not small_m.supports(M, layer, x.dtype):
        raise ValueError(f"the i8s path takes 1-{small_m.MAX_M} rows, K % 64 == 0, N % 32 == 0 and one 16-bit dtype "
                         f"for x, scales, L_up and bias (M {M}, {K} -> {N}, x {x.dtype}, scales {layer.wscales.dtype})")
    if i8 and path not in ("i8w", "i8p") and M <= QUANT_CUDA_MAX_M and small_m.quantize_supports(x2, layer) \
            and small_m.extension() is not None:
        q, sx, lr = small_m.quantize(x2, layer, inv_smooth(layer), INV_QMAX)
    elif given and i8 and path != "i8s":
        q, sx, lr = quantize_activations(x2, layer, i8=True, given=given)
    else:
        # (the default call's launch key and compiled kernel are those without `signal`)
        q, sx, lr = quantize_activations(x2, layer, fp8=fp8, f16=f16, i8=i8,
                                         signal=path == "i8s" and small_m.pdl_for(x2.device))
    if path == "i8s":   # CUDA C++ (kernels/w4a4_small_m.cu); `config` may fix {"warps", "splits"}
        config = config or {}
        small_m.w4a4_small_m(q, sx, layer, wu, lr, y, ACTIVATIONS[act], config.get("warps"), config.get("splits"))
        return y.reshape(*shape[:-1], N)
    if path == "i8p":     # Gluon, Hopper (kernels/i8_mainloop_gluon.py): the packed codes, made in its K loop
        glu = _gluon()
        if glu is None or _arch_of(x2) != 90:
            raise ValueError(f"the i8p path needs Gluon and an sm_90 GPU (this one: sm_{_arch_of(x2)}, Gluon "
                             f"{'missing' if glu is None else 'present'})")
        tile = config or dict(glu.i8p_tile(M, N, K, _sm_count(x.device)), ws=I8P_WS)
        split = tile.get("split_k", 1)
        ws = torch.empty(split, M, N, dtype=torch.int32, device=x.device) if split > 1 else None
        cnt = _counters(x.device, triton.cdiv(M, tile["block_m"]) * triton.cdiv(N, tile["block_n"]), "i8p") \
            if split > 1 else None
        nxt = (next_row_stats(next_layer, M, triton.cdiv(N, tile["block_n"]), x.device)
               if next_layer is not None and stats is not None and not tile["swap"] and not tile.get("ws") else None)
        try:
            glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, sx, lr[0] if R else None, layer.lora_up, layer.bias,
                         ACTIVATIONS[act], y, tile=tile, ws=ws, cnt=cnt, nxt=nxt)
            if nxt is not None:
                stats.update(maxima=nxt.maxima, shares=nxt.shares)
            return y.reshape(*shape[:-1], N)
        except (CompilationError, OutOfResources, PTXASError) as e:
            if config is not None:          # a launch asked for explicitly: the caller's to handle
                raise
            _gluon_failed("i8p", e)         # the Triton GEMM on the same codes, and no i8p from now on
            path = path_for(x2, layer)
    wq = _i8_workspace(layer, wu) if path == "i8w" else layer.qweight
    if path == "i8w" and config is None and gluon_i8w_applies(x2, layer, lr):
        nxt = (next_row_stats(next_layer, M, triton.cdiv(N, 256), x.device)
               if next_layer is not None and stats is not None else None)
        try:
            _gluon().i8w_gemm(q, wq, sx, wu, lr[0] if R else None, layer.lora_up, layer.bias, ACTIVATIONS[act], y,
                              nxt=nxt)
            if nxt is not None:
                stats.update(maxima=nxt.maxima, shares=nxt.shares)
            return y.reshape(*shape[:-1], N)
        except (CompilationError, OutOfResources, PTXASError) as e:
            _gluon_failed("i8w", e)         # the Triton i8w GEMM below, and no Gluon i8w from now on
    if path == "fp8w":   # unpack the weights once into an e4m3 workspace (N, K): plain loads in the GEMM
        wq = torch.empty(N, K, dtype=torch.float8_e4m3fn, device=x.device)
        _UNPACK_FP8((triton.cdiv(N, 64), K // GROUP), (layer.qweight, wq, N, K), dict(BLOCK_N=64, GROUP=GROUP))
    elif path == "f16w":
        wq = torch.empty(N, K, dtype=torch.float16, device=x.device)
        _DEQUANT_F16((triton.cdiv(N, 64), K // GROUP), (layer.qweight, layer.wscales, wq, N, K),
                     dict(BLOCK_N=64, GROUP=GROUP))
    S = lr.shape[0] if R else 0
    bucket = _bucket(M)
    ws, cnt = _split_k_buffers(M, N, x.device, config.get("SPLIT_K", 1) if config else None)
    args = (q, sx, wq, layer.wscales) + ((wu,) if i8 else ()) + (lr if R else sx, layer.lora_up if R else layer.wscales,
            layer.bias if layer.bias is not None else y, y, ws if ws is not None else y, cnt if cnt is not None else y,
            M, N, K, S, bucket)
    meta = dict(HAS_BIAS=layer.bias is not None, HAS_LR=bool(R), R=R if R else 16, GROUP=GROUP)
    if R and not f16 and x2.is_cuda and lr_bf16(_arch_of(x2)):
        meta["LR_BF16"] = True
    if act:
        meta["ACT"] = ACTIVATIONS[act]
    if fp8:
        meta["W8"] = path == "fp8w"
    if f16:
        meta["W16"] = path == "f16w"
    if i8:
        meta["W8"] = path == "i8w"
        if path == "i8" and PREFETCH_SCALES:
            meta["PREFETCH_SCALES"] = True
        if path == "i8" and swar_applies(layer.qweight):
            meta["SWAR"] = True
    tuned, fixed = ((_GEMM_I8, _w4a4_i8_kernel) if i8 else (_GEMM_F16, _w4a4_f16_kernel) if f16 else (_GEMM_FP8, _w4a4_fp8_kernel) if fp8
                    else (_GEMM_INT8, _w4a4_gemm_kernel))
    if config is None:
        tuned(lambda m: grid_for(M, N, m, x.device), args, meta)
    else:
        config = dict(config, SPLIT_K=config.get("SPLIT_K", 1))
        if config.get("PERSIST", False) and (path != "i8w" or not config.get("TMA", False) or config.get("SWAP")
                                             or config["SPLIT_K"] != 1 or S > 1):
            raise ValueError(f"PERSIST: the i8w path's TMA tiles, unswapped and unsplit, with at most one low-rank "
                             f"partial (path {path}, {config}, {S} partials)")
        fixed[grid_for(M, N, config, x.device)](*args, **{**meta, **config})
    return y.reshape(*shape[:-1], N)


def grid_for(M: int, N: int, meta: dict, device: torch.device) -> tuple:
    """A W4A4 GEMM's launch grid: one program per tile and K split, or with PERSIST one per SM at most (three in
    the CPU interpreter, so that its programs take several tiles each)."""
    tiles_m, tiles_n = triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"])
    if meta.get("PERSIST", False):
        return (min(tiles_m * tiles_n, _sm_count(device)),)
    return (tiles_m, tiles_n, meta["SPLIT_K"])


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 3


# The Gluon GEMMs (kernels/i8_mainloop_gluon.py) on Hopper (sm_90: wgmma, TMA), on by default there since the fiftieth
# session's H100 run: their GPU tests pass, and in the resident 1024² edge proof (docs/BENCHMARKS.md, "Fiftieth
# session") the i8w GEMM in Gluon took the generation from 0.942-0.946 s to 0.876 s, the scales of 800 rows and more
# 8-10 % faster, those of 288 and 512 rows 2-5 % slower; i8p made the scales of 72-288 rows 6-18 % faster and those of
# 800-2048 rows 20-29 % slower (512 rows: 2 % faster, but the 4608-row scale, whose second slice has 512, 2 % slower).
# So each takes the rows where it won.
# VAR_GEN_W4A4_GLUON (default 1): the i8w GEMM's calls of GLUON_I8W_MIN_M rows and more through `i8w_gemm` (its INT8
# wgmma asynchronous, which Triton does not make int32-accumulating ones)
GLUON_I8W = os.environ.get("VAR_GEN_W4A4_GLUON", "1") == "1"
GLUON_I8W_MIN_M = int(os.environ.get("VAR_GEN_W4A4_GLUON_MIN_M", "513"))
GLUON_FAILED = {}       # which Gluon GEMM turned itself off, and why (`_gluon_failed`), for the diagnostics


def _gluon_failed(which: str, e: Exception) -> None:
    """A Gluon GEMM ("i8w" or "i8p") could not compile or launch here (a Gluon compile error, more shared memory or
    registers than this GPU has): warned once, turned off for the process, so that the Triton GEMMs serve every later
    call."""
    global GLUON_I8W, GLUON_I8P
    if which == "i8w":
        GLUON_I8W = False
    else:
        GLUON_I8P = False
    GLUON_FAILED[which] = f"{type(e).__name__}: {str(e)[:200]}"
    warnings.warn(f"var_gen_ros: the Gluon {which} GEMM failed on this GPU and is off from now on; the Triton GEMMs "
                  f"run: {type(e).__name__}: {str(e)[:300]}")


_HOST = threading.local()       # .bound: inside host_bound()


@contextlib.contextmanager
def host_bound():
    """Inside, the W4A4 calls are eager launches whose time is the host's, not the GPU's (the per-prompt condition
    layers: 40 text K/V projections of a few dozen rows, run once per prompt outside any CUDA graph), so the Gluon
    GEMMs stay off: a Gluon launch binds its arguments and encodes two TMA descriptors on the host each call, where the
    Triton GEMMs go through the direct launcher (kernels/launch.py). On an H100 the 1024² edge proof's condition stage
    took 10.3 ms with the Triton GEMMs alone and 14.5 and 22.9 ms with i8p (fifty-first session; bf16 4-5 ms). Calls
    captured into a CUDA graph are not host-bound and take them as usual. Nests; per thread."""
    outer = getattr(_HOST, "bound", False)
    _HOST.bound = True
    try:
        yield
    finally:
        _HOST.bound = outer


def _host_bound() -> bool:
    return getattr(_HOST, "bound", False)


def gluon_i8w_applies(x2: torch.Tensor, layer, lr) -> bool:
    """Whether `w4a4_linear`'s i8w call takes the Gluon GEMM: GLUON_I8W, GLUON_I8W_MIN_M rows or more, sm_90 (wgmma,
    TMA), K a multiple of its 128-wide K step, one low-rank partial, bf16 activations, scales and L_up (its epilogue's
    types); not inside `host_bound`."""
    return (GLUON_I8W and not _host_bound() and x2.shape[0] >= GLUON_I8W_MIN_M and x2.is_cuda and _arch_of(x2) == 90
            and layer.in_features % 128 == 0
            and (not layer.rank or lr.shape[0] == 1) and x2.dtype == torch.bfloat16
            and (not layer.rank or layer.lora_up.dtype == torch.bfloat16)
            and (layer.bias is None or layer.bias.dtype == torch.bfloat16) and _gluon() is not None)


# VAR_GEN_W4A4_GLUON_I8P (default 1): the i8 and i8w calls of I8P_MIN_M to I8P_MAX_M rows through `i8p_gemm`: the
# INT8 wgmma on the packed weights, their codes made in the K loop into shared memory while the previous step's wgmma
# runs (no workspace, no unpack kernel). The qkv projection's epilogue GEMM (from I8W_MIN_M rows, `qkv_fusable`) stays
# Triton's unless I8P_QKV.
GLUON_I8P = os.environ.get("VAR_GEN_W4A4_GLUON_I8P", "1") == "1"
I8P_MIN_M = int(os.environ.get("VAR_GEN_W4A4_I8P_MIN_M", "33"))
I8P_MAX_M = int(os.environ.get("VAR_GEN_W4A4_I8P_MAX_M", "288"))
# VAR_GEN_W4A4_I8P_WS=1: i8p's warp-specialized kernel (a TMA warp, four warps making the codes, the wgmmas in the
# kernel's own warps with one group in flight) instead of the one whose warps do both in turn
I8P_WS = os.environ.get("VAR_GEN_W4A4_I8P_WS", "0") == "1"
# VAR_GEN_W4A4_I8P_QKV: the qkv projection too where i8p applies, instead of the Triton i8w GEMM with the epilogue
# inside (`qkv_fusable`): "1" its GEMM through i8p, then the separate qkv epilogue kernel (kernels/qkv_rope_triton.py);
# "fused" the i8p GEMM with the epilogue inside (`i8p_qkv`, heads of 128); "0" (default) neither
I8P_QKV = os.environ.get("VAR_GEN_W4A4_I8P_QKV", "0")


def gluon_i8p_applies(x2: torch.Tensor, layer) -> bool:
    """Whether `w4a4_linear`'s i8 / i8w call takes `i8p_gemm`: GLUON_I8P, I8P_MIN_M <= M <= I8P_MAX_M, sm_90 (wgmma,
    TMA), K a multiple of its 128-wide K step, the packed codes 16-byte aligned (TMA), bf16 activations, L_up and bias
    (its epilogue's types); not inside `host_bound`. (Kernel 1 sums its low-rank partials into one:
    `quantize_activations`' reduce_lr.)"""
    return (GLUON_I8P and not _host_bound() and I8P_MIN_M <= x2.shape[0] <= I8P_MAX_M and x2.is_cuda
            and _arch_of(x2) == 90 and layer.in_features % 128 == 0 and layer.qweight.data_ptr() % 16 == 0 and x2.dtype == torch.bfloat16
            and (not layer.rank or layer.lora_up.dtype == torch.bfloat16)
            and (layer.bias is None or layer.bias.dtype == torch.bfloat16) and _gluon() is not None)


# VAR_GEN_W4A4_FC2_STATS=1 (off until measured; fifty-second session): the FFN's fc2 takes its row pass (the rows'
# max |x̂| and the low-rank input) from fc1's GEMM epilogue, which has each tile of fc2's input in registers as it
# stores it (`w4a4_ffn`; the Gluon GEMMs unswapped: i8p from 129 rows, the i8w GEMM from GLUON_I8W_MIN_M), instead of
# a row pass that reads the whole (M, 4C) activation again. Why: fc2's kernel 1 is the block's largest (42.9 µs at 800
# rows, 75.7 at 2048, 342.7 at 8192 on the H100, fifty-first session). The maxima are the row pass's bit for bit (an
# atomic max); the low-rank input is y · (L_down · (1/λ)) in two bf16 parts, summed over fc1's column tiles: its
# float32 rounding differs from the row pass's.
FC2_STATS = os.environ.get("VAR_GEN_W4A4_FC2_STATS", "0") == "1"


def _down_inv_parts(layer) -> tuple:
    """L_down · (1/λ) (K, r) of `layer` in high and low bf16 parts (their sum within ~2^-17 of the float32 product),
    kept on the layer and remade when L_down or λ change."""
    inv = inv_smooth(layer)

    def make():
        d = layer.lora_down.float() * inv[:, None]
        hi = d.bfloat16()
        return inv, hi, (d - hi.float()).bfloat16()
    kept = layer.derived("down_inv_parts", "lora_down", make)
    if kept[0] is not inv:       # λ changed since (1/λ is made anew): not kept
        kept = make()
    return kept[1], kept[2]


def next_row_stats(layer, M: int, col_tiles: int, device):
    """The buffers a GEMM's epilogue fills with `layer`'s row pass for M rows of its input (`i8_mainloop_gluon.
    NextRowStats`): the maxima as the (S, M) split maxima `quantize_activations` reads for that layer's q·m layout
    (zeroed: the epilogue fills the first row by atomic max), the low-rank shares per column tile of the GEMM."""
    G = layer.in_features // GROUP
    S = _kernel1_grid(M, G, "mq")[3]
    hi, lo = _down_inv_parts(layer)
    return _gluon().NextRowStats(inv_smooth(layer), hi, lo, torch.zeros(S, M, dtype=torch.float32, device=device),
                                 torch.empty(col_tiles, M, layer.rank, dtype=torch.float32, device=device))


def ffn_stats_apply(fc1, fc2) -> bool:
    """Whether `w4a4_ffn` can take fc2's row pass from fc1's epilogue: FC2_STATS, both W4A4 with a low-rank branch
    of the same rank as the epilogue's (16 or 32, a multiple of 16 for its wgmma) and two-level scales, fc2 reading
    fc1's whole output."""
    return (FC2_STATS and getattr(fc1, "act_bits", None) == 4 and getattr(fc2, "act_bits", None) == 4
            and fc2.in_features == fc1.out_features and fc2.rank in (16, 32) and fc2.lora_down.dtype == torch.bfloat16
            and fc2.weight_units() is not None)


def w4a4_ffn(x: torch.Tensor, fc1, fc2) -> torch.Tensor:
    """fc2(GELU(fc1(x))) with fc2's row pass made in fc1's epilogue where fc1's GEMM can (FC2_STATS); otherwise the
    two layers as they are."""
    stats = {}
    h = w4a4_linear(x, fc1, act="gelu_tanh", next_layer=fc2 if ffn_stats_apply(fc1, fc2) else None, stats=stats)
    return w4a4_linear(h, fc2, given=stats or None)


# (The layer's kernels after its row pass were also chained as programmatic dependent launches, fifty-first session, at
# 91f6e30: kernel 1, the weight unpack and the Gluon GEMMs each started while the kernel before ran and waited for its
# end; i8p fetched its first packed tiles before that wait. The same bits, but on an H100 a block's four layers were
# 3.6-5.5 % slower at 72-128 rows (i8p), 1.4-2.4 % faster at 288-800 and 1.8-2.5 % slower at 1152-2048, and the
# resident 1024² edge proof 0.919 s against 0.902 s. Removed; docs/BENCHMARKS.md keeps its figures.)


@functools.lru_cache(maxsize=None)
def _gluon():
    """kernels/i8_mainloop_gluon.py, imported only where a Gluon GEMM is asked for; None (warned once) where this
    Triton has no Gluon, so that the Triton GEMMs run instead of the call failing."""
    try:
        from . import i8_mainloop_gluon
        return i8_mainloop_gluon
    except Exception as e:       # an older Triton without triton.experimental.gluon, or a broken source
        warnings.warn(f"var_gen_ros: the Gluon GEMMs (VAR_GEN_W4A4_GLUON, VAR_GEN_W4A4_GLUON_I8P) are unavailable, "
                      f"the Triton ones run: {type(e).__name__}: {e}")
        return None


# The qkv projection with the attention's input epilogue in its GEMM (`w4a4_qkv_rope`) where it applies
# (`qkv_fusable`); VAR_GEN_W4A4_QKV_EPILOGUE=0 keeps the GEMM and the separate epilogue kernel
QKV_EPILOGUE = os.environ.get("VAR_GEN_W4A4_QKV_EPILOGUE", "1") == "1"
# (The blocks' residual adds were also put in the i8 GEMM's epilogue, forty-sixth session, at 0f64baf: x += g · y read,
# added and written back as float32 in place of y's bf16 store and PyTorch's addcmul after it. On the H100 the layer was
# 1.05-1.20x as fast at 128-512 rows but 0.89-1.11x from 2048 (0.89x at 4096 rows on 3584²; likely the epilogue's float32
# read, which nothing overlaps), and the resident 1024² edge proof 7 ms slower with a 124 MB higher peak. Removed;
# docs/BENCHMARKS.md keeps its figures.)


def qkv_fusable(x: torch.Tensor, layer, head_dim: int) -> bool:
    """Whether `w4a4_qkv_rope` serves the qkv projection `layer` of x (..., K): on the i8 workspace path
    (from I8W_MIN_M rows; below it the plain GEMM's fast tiles are swapped or split K, which a one-head
    epilogue cannot use), heads of 32 to 256 channels; not where I8P_QKV "1" sends it to i8p and the separate epilogue."""
    return (QKV_EPILOGUE and layer.out_features % 3 == 0 and head_dim in (32, 64, 128, 256)
            and layer.act_bits == 4 and path_for(x, layer, rows=x.numel() // x.shape[-1]) == "i8w"
            and not (I8P_QKV == "1" and gluon_i8p_applies(x.reshape(-1, x.shape[-1]), layer)))


def w4a4_qkv_rope(x: torch.Tensor, layer, bias: torch.Tensor, scale_mul: torch.Tensor, rope: torch.Tensor,
                  q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int = 0, config: dict = None,
                  path: str = None) -> None:
    """The self-attention's qkv projection of x (B, n, K) by `layer` (a W4A4Linear with two-level
    scales, N = 3C) and its input epilogue (bias (3C,) and scale_mul (H,) float32, rope (2, n, c/2)
    float32) in one GEMM, written into tokens [start, start + n) of q, k, v (B, H, L, c) as
    kernels/qkv_rope_triton.py writes them from the projection's output, which is never stored: its
    float32 tile is normalized and rotated in the epilogue (one rounding, to q/k/v's dtypes, instead of two).
    `path` "i8" / "i8w" and `config` as in `w4a4_linear`."""
    _ensure_allocator()
    B, n, K = x.shape
    N, R = layer.out_features, layer.rank
    C = N // 3
    _, H, L, c = q.shape
    if N != 3 * C or C != H * c or c & (c - 1) or c < 32 or K != layer.in_features:
        raise ValueError(f"w4a4_qkv_rope: layer {K}->{N} does not make q, k, v of {H} heads of {c}")
    if start + n > L or k.shape != v.shape or k.stride() != v.stride() or k.shape[:3] != (B, H, L):
        raise ValueError(f"w4a4_qkv_rope: {n} tokens at {start} do not fit q {tuple(q.shape)} / k, v {tuple(k.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("w4a4_qkv_rope: q, k, v need contiguous channels")
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if path is None:
        path = path_for(x2, layer)
        if (path in ("i8", "i8w") and config is None and I8P_QKV == "fused" and c == 128
                and gluon_i8p_applies(x2, layer)):
            path = "i8p"
    wu = layer.weight_units()
    if path not in ("i8", "i8w", "i8p") or wu is None:
        raise ValueError(f"w4a4_qkv_rope: the epilogue is in the i8 GEMM (two-level scales), not {path!r}")
    if rope.stride(-1) != 1 or rope.shape[1] != n:
        rope = rope[:, :n].contiguous()
    qx, ux, lr = quantize_activations(x2, layer, i8=True)
    if path == "i8p":     # Gluon, Hopper: kernels/i8_mainloop_gluon.py's `i8p_qkv`
        try:
            _gluon().i8p_qkv(qx, layer.qweight, layer.wscales, wu, ux, lr[0] if R else None, layer.lora_up,
                             layer.bias, bias, scale_mul, rope, q, k, v, n, start)
            return
        except (CompilationError, OutOfResources, PTXASError) as e:
            _gluon_failed("i8p", e)         # the Triton GEMM with the epilogue, and no i8p from now on
            path = path_for(x2, layer)
    wq = _i8_workspace(layer, wu) if path == "i8w" else layer.qweight
    args = (qx, ux, wq, layer.wscales, wu, lr if R else ux, layer.lora_up if R else layer.wscales,
            layer.bias if layer.bias is not None else bias, M, N, K, lr.shape[0] if R else 0, _bucket(M),
            bias, scale_mul, rope[0], rope[1], q, k, v, n, start, C, rope.stride(1),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    meta = dict(HEAD=c, HAS_BIAS=layer.bias is not None, HAS_LR=bool(R), R=R if R else 16, GROUP=GROUP,
                W8=path == "i8w")
    if R and x2.is_cuda and lr_bf16(_arch_of(x2)):
        meta["LR_BF16"] = True
    if config is None:
        _GEMM_I8_QKV(lambda m: (triton.cdiv(M, m["BLOCK_M"]), N // c, 1), args, meta)
    else:
        if K % config.get("KSTEP", 64) or (config.get("KSTEP", 64) != 64 and path != "i8w"):
            raise ValueError(f"w4a4_qkv_rope: KSTEP {config.get('KSTEP')} needs the workspace and K % KSTEP == 0 (K = {K})")
        _w4a4_i8_qkv_kernel[(triton.cdiv(M, config["BLOCK_M"]), N // c, 1)](*args, **{**meta, **config})
