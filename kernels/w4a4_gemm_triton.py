"""W4A4 GEMM with the SVDQuant low-rank branch, in Triton (GPU; the reference is
var_gen_ros.quant.w4a4.W4A4Linear.reference_forward, which runs on the CPU).

Two kernels per forward:
1. `_quantize_act`: x (M, K) 16-bit -> x̂ = x / λ -> INT4 codes per token per group of 64 (range
   [-7, 7]) + float32 scales, and the low-rank down-projection x̂ · L_down (M, r) from the same read
   of x (the Nunchaku fusion: the branch costs no extra pass over x). Same arithmetic as the
   reference (IEEE divide, amax · float32(1/7), round half to even), so the codes are bit-identical.
   For bf16 x the low-rank dot runs on tensor cores as x · (L_down / λ) with L_down / λ in two bf16
   parts (~2^-17), a float32 FMA dot otherwise. K is split over `S` programs per row block when M is
   small (each writes a partial x̂ · L_down, summed in the GEMM epilogue) so small M fills the GPU.
2. The GEMM: y = Σ_g sx[m,g] · sw[n,g] · (qx[m,g,:] · qw[n,g,:]) + lr[m,:] · L_up[n,:] + b[n], with
   the packed weight byte j holding k = 2j (low nibble) and 2j+1 (high nibble).
   - `_w4a4_fp8_kernel` (sm_89+, the H100's path): the 4-bit codes of both sides are exact e4m3
     values, so one FP8 MMA (K = 64, float32 accumulation) per group needs no int->float convert
     before its rescale; kernel 1 writes e4m3 codes in natural k order with scales (K/64, M).
   - `_w4a4_gemm_kernel` (sm_80-sm_87): INT8 MMA; kernel 1 stores each group's int8 codes even-k
     first, odd-k second, so two K = 32 dots on contiguous loads replace an interleave in registers
     (Hopper runs INT4 MMA ~26x slower, see docs).
   `SWAP` computes yᵀ = W · xᵀ instead: the unpacked weights (made in registers) become the MMA's
   left operand, which Hopper's wgmma may take from registers, and a small M becomes the MMA's
   narrow side (the usual trick for skinny GEMMs). The autotuner picks SWAP or not per (M bucket, N, K).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

GROUP = 64
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
def _quantize_act(x_ptr, smooth_ptr, down_ptr, q_ptr, s_ptr, lr_ptr, M, K, GPS, INV7, LDQ,
                  R: tl.constexpr, HAS_LR: tl.constexpr, DEQ: tl.constexpr, BLOCK_M: tl.constexpr,
                  GROUP: tl.constexpr, LR_PREC: tl.constexpr = "ieee", FP8: tl.constexpr = False):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    G = K // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = rows[:, None] < M
    c = tl.arange(0, GROUP)
    # codes stored de-interleaved inside each group (even k first, then odd k), matching the
    # weight's low / high nibbles
    dst_c = (c % 2) * (GROUP // 2) + c // 2
    if FP8:    # FP8 codes keep the natural order (the GEMM interleaves the weight nibbles instead)
        dst_c = c
    r = tl.arange(0, R)
    lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    for i in range(0, GPS):
        g = split * GPS + i
        if g < G:
            cols = g * GROUP + c
            x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            lam = tl.load(smooth_ptr + cols).to(tl.float32)
            xs = _div_rn(x, lam[None, :])                 # IEEE division, as the reference
            amax = tl.max(tl.abs(xs), axis=1)
            s = tl.where(amax > 0, amax * INV7, 1.0)      # same float32 multiply as the reference
            q = _rint(_div_rn(xs, s[:, None]))
            q = tl.minimum(tl.maximum(q, -8.0), 7.0)
            if DEQ:    # the large-M path: code x scale, rounded to fp16 (relative error <= 2^-11)
                tl.store(q_ptr + rows[:, None] * LDQ + (g * GROUP + dst_c)[None, :],
                         (q * s[:, None]).to(tl.float16), mask=mask)
            elif FP8:  # codes -8..7 are exact in e4m3; scales (G, M) so the GEMM reads them contiguously
                tl.store(q_ptr + rows[:, None] * LDQ + (g * GROUP + dst_c)[None, :], q.to(tl.float8e4nv), mask=mask)
                tl.store(s_ptr + g * M + rows, s, mask=rows < M)
            else:
                tl.store(q_ptr + rows[:, None] * LDQ + (g * GROUP + dst_c)[None, :], q.to(tl.int8), mask=mask)
                tl.store(s_ptr + rows * G + g, s, mask=rows < M)
            if HAS_LR:
                if LR_PREC == "bf16x2":
                    # x̂ · L_down = x · (L_down / λ): the raw bf16 x (exact) against L_down / λ split into
                    # two bf16 parts (to ~2^-17): two tensor-core dots with float32 accumulation whose
                    # operand is the loaded x, instead of a float32 FMA dot on x̂, whose operand slices
                    # cost ~200 registers (spills, 1/8 occupancy; ncu on the H100)
                    dl = tl.load(down_ptr + cols[:, None] * R + r[None, :]).to(tl.float32)
                    dl = _div_rn(dl, lam[:, None])
                    dh = dl.to(tl.bfloat16)
                    xb = x.to(tl.bfloat16)
                    lr = tl.dot(xb, dh, lr)
                    lr = tl.dot(xb, (dl - dh.to(tl.float32)).to(tl.bfloat16), lr)
                else:
                    dn = tl.load(down_ptr + cols[:, None] * R + r[None, :]).to(tl.float32)
                    lr += tl.dot(xs, dn, input_precision=LR_PREC)
    if HAS_LR:
        if DEQ:    # single split: the low-rank input goes into the trailing R columns of the same row
            tl.store(q_ptr + rows[:, None] * LDQ + K + r[None, :], lr.to(tl.float16), mask=mask)
        else:
            tl.store(lr_ptr + split * M * R + rows[:, None] * R + r[None, :], lr, mask=mask)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP: tl.constexpr):
    """This program's rows, columns, their masks, and a zero float32 accumulator ((BLOCK_N, BLOCK_M)
    when SWAP, else (BLOCK_M, BLOCK_N))."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
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
def _w4a4_gemm_kernel(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, S, M_BUCKET,
                      HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr):
    rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
    HALF: tl.constexpr = GROUP // 2
    j = tl.arange(0, HALF)
    G = K // GROUP
    for g in range(0, G):
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
    _epilogue(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, S, HAS_BIAS, HAS_LR, R, SWAP, BLOCK_M)


@triton.jit
def _epilogue(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, S, HAS_BIAS: tl.constexpr,
              HAS_LR: tl.constexpr, R: tl.constexpr, SWAP: tl.constexpr, BLOCK_M: tl.constexpr):
    """acc (+ the low-rank up-projection of kernel 1's summed partials) (+ bias) -> y, in y's dtype;
    acc is (BLOCK_N, BLOCK_M) when SWAP, else (BLOCK_M, BLOCK_N)."""
    r = tl.arange(0, R)
    if SWAP:
        if HAS_LR:
            up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
            lr = tl.zeros((R, BLOCK_M), dtype=tl.float32)
            for s in range(0, S):   # partial x̂ · L_down of kernel 1's K splits
                lr += tl.load(lr_ptr + s * M * R + rm[None, :] * R + r[:, None], mask=mmask[None, :], other=0.0)
            acc += tl.dot(up, lr, input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + rm[None, :] * N + rn[:, None], acc.to(y_ptr.dtype.element_ty),
                 mask=mmask[None, :] & nmask[:, None])
    else:
        if HAS_LR:
            up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
            lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
            for s in range(0, S):
                lr += tl.load(lr_ptr + s * M * R + rm[:, None] * R + r[None, :], mask=mmask[:, None], other=0.0)
            acc += tl.dot(lr, tl.trans(up), input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _unpack_fp8(packed, ROWS: tl.constexpr, GROUP: tl.constexpr):
    """(ROWS, GROUP/2) packed INT4 bytes -> (ROWS, GROUP) e4m3 codes in natural k order."""
    p16 = packed.to(tl.int16)
    lo = ((p16 & 0xF) ^ 8) | 0x6400
    hi = ((p16 >> 4) ^ 8) | 0x6400
    w16 = tl.join(lo, hi).reshape(ROWS, GROUP)          # byte j holds k = 2j, 2j + 1
    return (w16.to(tl.float16, bitcast=True) - 1032.0).to(tl.float8e4nv)


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
def _w4a4_fp8_kernel(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, S, M_BUCKET,
                     HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, SWAP: tl.constexpr, GROUP: tl.constexpr, W8: tl.constexpr = False):
    """The FP8 variant: both operands' 4-bit codes are exact e4m3 values, and e4m3 MMA accumulates in
    float32, so a group's dot needs no int->float convert before the rescale, and one K = 64 dot per
    group replaces two K = 32 ones. The weight nibbles become fp16 by the magic-number trick
    (0x6400 | (v ^ 8) is 1032 + v as fp16 bits, exact) and then e4m3; interleaving the low and high
    nibbles gives the natural k order, which the FP8 activation codes keep."""
    rm, rn, mmask, nmask, acc = _tile(M, N, BLOCK_M, BLOCK_N, SWAP)
    j = tl.arange(0, GROUP // 2)
    c = tl.arange(0, GROUP)
    G = K // GROUP
    for g in range(0, G):
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
    _epilogue(acc, rm, rn, mmask, nmask, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, S, HAS_BIAS, HAS_LR, R, SWAP, BLOCK_M)


@triton.jit
def _dequant_weight(w_ptr, sw_ptr, up_ptr, out_ptr, N, K, LDW, R: tl.constexpr, HAS_LR: tl.constexpr,
                    BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """Packed INT4 (N, K/2) x group scales -> fp16 (N, K) in the activations' de-interleaved order
    (exact: a 4-bit code times a bf16 scale fits fp16's 11-bit significand), plus L_up in the trailing
    R columns."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    G = K // GROUP
    HALF: tl.constexpr = GROUP // 2
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn[:, None] < N
    j = tl.arange(0, HALF)
    if g < G:
        p8 = tl.load(w_ptr + rn[:, None] * (K // 2) + (g * HALF + j)[None, :], mask=nmask, other=0).to(tl.int8, bitcast=True)
        sc = tl.load(sw_ptr + rn * G + g, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        base = out_ptr + rn[:, None] * LDW + g * GROUP
        tl.store(base + j[None, :], (((p8 << 4) >> 4).to(tl.float32) * sc).to(tl.float16), mask=nmask)
        tl.store(base + HALF + j[None, :], ((p8 >> 4).to(tl.float32) * sc).to(tl.float16), mask=nmask)
    else:
        if HAS_LR:
            r = tl.arange(0, R)
            up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask, other=0.0)
            tl.store(out_ptr + rn[:, None] * LDW + K + r[None, :], up.to(tl.float16), mask=nmask)


@triton.jit
def _smoothed(x_ptr, smooth_ptr, rows, rmask, cols, K):
    """x[rows, cols] as loaded, and x̂ = x / λ in float32 (IEEE divide, as the reference)."""
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=rmask[:, None], other=0.0)
    return x, _div_rn(x.to(tl.float32), tl.load(smooth_ptr + cols).to(tl.float32)[None, :])


@triton.jit
def _codes(xs, s):
    """The reference's INT4 codes of x̂ with per-row group scale s (round half to even, clamp)."""
    return tl.minimum(tl.maximum(_rint(_div_rn(xs, s[:, None])), -8.0), 7.0)


@triton.jit
def _lowrank_down(lr, x, xs, down_ptr, smooth_ptr, cols, R: tl.constexpr, LR_BF16X2: tl.constexpr):
    """lr + x̂[:, cols] · L_down[cols]: for bf16 x as x · (L_down / λ) with L_down / λ in two bf16 parts
    (two tensor-core dots, ~2^-17), else a float32 FMA dot on x̂."""
    dn = tl.load(down_ptr + cols[:, None] * R + tl.arange(0, R)[None, :]).to(tl.float32)
    if LR_BF16X2:
        dl = dn * (1.0 / tl.load(smooth_ptr + cols).to(tl.float32))[:, None]
        dh = dl.to(tl.bfloat16)
        out = tl.dot(x, dh, lr)
        out = tl.dot(x, (dl - dh.to(tl.float32)).to(tl.bfloat16), out)
    else:
        out = tl.dot(xs, dn, lr, input_precision="ieee")
    return out


@triton.jit
def _w4a4_fused_kernel(x_ptr, smooth_ptr, down_ptr, w_ptr, sw_ptr, up_ptr, b_ptr, ws_ptr, cnt_ptr, y_ptr,
                       M, N, K, GPS, INV7, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr, FP8: tl.constexpr,
                       LR_BF16X2: tl.constexpr):
    """The small-M path in one launch: activation quantizer, GEMM and low-rank branch fused, split over K.
    Program (n, split, m) quantizes its own K slice of x (groups are 64 wide, so a slice's codes and
    scales need nothing outside it; every N block repeats this, which is cheap while x is a few rows),
    runs the group dots on its weights, and adds its slice's share of the low-rank branch,
    (x̂_slice · L_down_slice) · L_upᵀ (the branch is linear in K). Its float32 partial goes to a
    workspace; the last split to arrive at the tile (an atomic counter) sums all partials in split order
    (deterministic), adds the bias, writes y and re-arms the counter. At small M the GEMM is a weight
    stream: splitting K gives the GPU enough programs to pull it at full bandwidth, and fusing saves the
    quantizer's launch and round trip."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    S = tl.num_programs(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    G = K // GROUP
    HALF: tl.constexpr = GROUP // 2
    j = tl.arange(0, HALF)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    lr = tl.zeros((BLOCK_M, R), dtype=tl.float32)
    for g in range(split * GPS, tl.minimum(split * GPS + GPS, G)):   # no branch in the body: pipelined
        packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (g * HALF + j)[None, :], mask=nmask[:, None], other=0)
        sw = tl.load(sw_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
        if FP8:    # natural k order on both sides: one K = 64 e4m3 dot
            cols = g * GROUP + tl.arange(0, GROUP)
            x, xs = _smoothed(x_ptr, smooth_ptr, rm, mmask, cols, K)
            s = tl.max(tl.abs(xs), axis=1)
            s = tl.where(s > 0, s * INV7, 1.0)            # the reference's float32 multiply
            d = tl.dot(_codes(xs, s).to(tl.float8e4nv), tl.trans(_unpack_fp8(packed, BLOCK_N, GROUP)))
            if HAS_LR:
                lr = _lowrank_down(lr, x, xs, down_ptr, smooth_ptr, cols, R, LR_BF16X2)
        else:      # INT8 MMA: even k against the low nibbles, odd k against the high ones
            ce = g * GROUP + 2 * j
            xe, xse = _smoothed(x_ptr, smooth_ptr, rm, mmask, ce, K)
            xo, xso = _smoothed(x_ptr, smooth_ptr, rm, mmask, ce + 1, K)
            s = tl.maximum(tl.max(tl.abs(xse), axis=1), tl.max(tl.abs(xso), axis=1))
            s = tl.where(s > 0, s * INV7, 1.0)
            p8 = packed.to(tl.int8, bitcast=True)
            d = (tl.dot(_codes(xse, s).to(tl.int8), tl.trans((p8 << 4) >> 4), out_dtype=tl.int32)
                 + tl.dot(_codes(xso, s).to(tl.int8), tl.trans(p8 >> 4), out_dtype=tl.int32)).to(tl.float32)
            if HAS_LR:
                lr = _lowrank_down(lr, xe, xse, down_ptr, smooth_ptr, ce, R, LR_BF16X2)
                lr = _lowrank_down(lr, xo, xso, down_ptr, smooth_ptr, ce + 1, R, LR_BF16X2)
        acc = _rescale(acc, d, s, sw, False)
    if HAS_LR:
        up = tl.load(up_ptr + rn[:, None] * R + tl.arange(0, R)[None, :], mask=nmask[:, None], other=0.0)
        if LR_BF16X2:   # lr in two bf16 parts against the bf16 L_up: tensor cores, not an FMA dot's registers
            lh = lr.to(tl.bfloat16)
            acc = tl.dot(lh, tl.trans(up.to(tl.bfloat16)), acc)
            acc = tl.dot((lr - lh.to(tl.float32)).to(tl.bfloat16), tl.trans(up.to(tl.bfloat16)), acc)
        else:
            acc += tl.dot(lr, tl.trans(up.to(tl.float32)), input_precision="ieee")
    out = rm[:, None] * N + rn[None, :]
    omask = mmask[:, None] & nmask[None, :]
    tl.store(ws_ptr + split * M * N + out, acc, mask=omask)
    tile = tl.program_id(2) * tl.num_programs(0) + pid_n
    tl.debug_barrier()                          # every thread's partial is stored before the release
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == S - 1:
        tot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t in range(0, S):                   # split order: the same sum whichever split came last
            tot += tl.load(ws_ptr + t * M * N + out, mask=omask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            tot += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + out, tot.to(y_ptr.dtype.element_ty), mask=omask)
        tl.atomic_xchg(cnt_ptr + tile, 0)       # re-armed for the next call (also under graph replay)


def _cfg(bm, bn, swap, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SWAP": swap}, num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N, SWAP, warps, stages); the small-M set streams weights (memory-bound), the large
# set is compute-bound tiles
SMALL_M_CONFIGS = [_cfg(16, 64, False, 4, 4), _cfg(16, 128, False, 4, 4), _cfg(16, 64, True, 4, 4),
                   _cfg(16, 128, True, 4, 4), _cfg(32, 128, True, 4, 4), _cfg(16, 256, True, 8, 3),
                   _cfg(32, 64, False, 4, 4)]
LARGE_M_CONFIGS = [_cfg(64, 128, False, 4, 4), _cfg(128, 128, False, 8, 3), _cfg(128, 256, False, 8, 3),
                   _cfg(128, 64, False, 4, 4), _cfg(64, 128, True, 4, 4), _cfg(128, 128, True, 8, 3),
                   _cfg(128, 256, True, 8, 3)]


def _autotuned(kernel, small, large, key):
    """`kernel` autotuned over `small` configs for M <= 64 rows and `large` ones above."""
    def prune(configs, named_args, **kwargs):
        keep = {id(c) for c in (small if named_args["M_BUCKET"] <= 64 else large)}
        return [c for c in configs if id(c) in keep]
    return triton.autotune(configs=small + large, key=key, prune_configs_by={"early_config_prune": prune})(kernel)


_w4a4_gemm = _autotuned(_w4a4_gemm_kernel, SMALL_M_CONFIGS, LARGE_M_CONFIGS, ["M_BUCKET", "N", "K"])


# FP8 tiles: the weight side (BLOCK_N) is the wgmma M side when SWAP, so it is 64 per warpgroup
FP8_SMALL_M_CONFIGS = [_cfg(16, 64, True, 4, 4), _cfg(16, 128, True, 4, 4), _cfg(32, 64, True, 4, 4),
                       _cfg(32, 128, True, 4, 4), _cfg(64, 64, False, 4, 4), _cfg(64, 128, True, 4, 4)]
FP8_LARGE_M_CONFIGS = [_cfg(128, 128, False, 8, 3), _cfg(128, 256, False, 8, 3), _cfg(64, 128, False, 4, 4),
                       _cfg(128, 64, False, 4, 4), _cfg(128, 128, True, 8, 3), _cfg(256, 128, True, 8, 3),
                       _cfg(64, 128, True, 4, 4), _cfg(128, 64, True, 4, 4)]


_w4a4_fp8 = _autotuned(_w4a4_fp8_kernel, FP8_SMALL_M_CONFIGS, FP8_LARGE_M_CONFIGS, ["M_BUCKET", "N", "K", "W8"])


def _splits(M: int, G: int, block_m: int) -> int:
    """K splits of kernel 1: enough programs to fill ~2 waves of a large GPU, each ≥ 2 groups."""
    blocks = triton.cdiv(M, block_m)
    return max(1, min(triton.cdiv(264, blocks), G // 2))


def _quantize_launch(M: int, fp8: bool):
    """(BLOCK_M, num_warps) of kernel 1, the fastest measured on the H100 per M
    (docs/results/quantize_variants_h100.json); the INT8 layout's de-interleaved stores prefer 16 rows."""
    if not fp8 or M <= 64:
        return 16, 4
    if M <= 1024:
        return 64, 8
    return (128, 8) if M <= 4096 else (64, 4)


def quantize_activations(x2: torch.Tensor, layer, splits: int = None, lr_prec: str = None, block_m: int = None,
                         fp8: bool = False, num_warps: int = None):
    """Kernel 1 alone: (codes (M, K) int8 de-interleaved per group, scales (M, K/64) f32,
    partial low-rank (S, M, r) f32 or None); with `fp8`, codes (M, K) e4m3 in natural order and scales
    (K/64, M). The low-rank dot is "bf16x2" (tensor cores) for bf16 x, else "ieee" (float32 FMA);
    `splits`, `lr_prec`, `block_m`, `num_warps` override the defaults (tests, benchmarks)."""
    M, K = x2.shape
    R = layer.rank
    G = K // GROUP
    BM, warps = _quantize_launch(M, fp8)
    BM, warps = block_m or BM, num_warps or warps
    lr_prec = lr_prec or ("bf16x2" if x2.dtype == torch.bfloat16 else "ieee")
    S = splits or _splits(M, G, BM)
    gps = triton.cdiv(G, S)
    S = triton.cdiv(G, gps)
    q = torch.empty(M, K, dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x2.device)
    sx = torch.empty((G, M) if fp8 else (M, G), dtype=torch.float32, device=x2.device)
    lr = torch.empty(S, M, R, dtype=torch.float32, device=x2.device) if R else None
    _quantize_act[(triton.cdiv(M, BM), S)](x2, layer.smooth, layer.lora_down if R else x2, q, sx,
                                          lr if R else sx, M, K, gps, INV_QMAX, K,
                                          R=R if R else 16, HAS_LR=bool(R), DEQ=False, BLOCK_M=BM, GROUP=GROUP,
                                          LR_PREC=lr_prec, FP8=fp8, num_warps=warps)
    return q, sx, lr


# Up to this many rows the default path is the fused split-K kernel (one launch; see _w4a4_fused_kernel)
FUSED_MAX_M = int(os.environ.get("VAR_GEN_W4A4_FUSED_MAX_M", "0"))   # off: measured slower (BENCHMARKS)
_COUNTERS = {}


def _tile_counters(device, n: int) -> torch.Tensor:
    """A persistent zeroed int32 counter per output tile of the fused kernel (each call re-arms the
    ones it used, so one buffer per device serves every layer, eager or in a CUDA graph)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def fused_launch(M: int, N: int, K: int) -> dict:
    """The fused kernel's launch: row block, N block, groups per K split, warps, stages. Enough
    programs to fill ~4 waves of a large GPU, but each split's float32 partial (M x N, written and
    read back through L2) kept to about the weight slice's own bytes."""
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    bn = 128
    G = K // GROUP
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    splits = max(1, min(triton.cdiv(528, tiles), G, K // (16 * min(M, bm))))
    return dict(BLOCK_M=bm, BLOCK_N=bn, GPS=triton.cdiv(G, splits), num_warps=4, num_stages=3)


def w4a4_linear_fused(x2: torch.Tensor, layer, y: torch.Tensor, fp8: bool, config: dict = None) -> torch.Tensor:
    """y = the W4A4 layer on x2 (M, K) through the fused split-K kernel (small M)."""
    M, K = x2.shape
    N, R = layer.out_features, layer.rank
    cfg = dict(config or fused_launch(M, N, K))
    G = K // GROUP
    gps = cfg.pop("GPS")
    S = triton.cdiv(G, gps)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), S, triton.cdiv(M, cfg["BLOCK_M"]))
    ws = torch.empty(S, M, N, dtype=torch.float32, device=x2.device)
    cnt = _tile_counters(x2.device, grid[0] * grid[2])
    _w4a4_fused_kernel[grid](x2, layer.smooth, layer.lora_down if R else layer.smooth, layer.qweight, layer.wscales,
                             layer.lora_up if R else layer.wscales, layer.bias if layer.bias is not None else y,
                             ws, cnt, y, M, N, K, gps, INV_QMAX, HAS_BIAS=layer.bias is not None, HAS_LR=bool(R),
                             R=R if R else 16, GROUP=GROUP, FP8=fp8, LR_BF16X2=x2.dtype == torch.bfloat16, **cfg)
    return y


# Opt-in (VAR_GEN_W4A4_DEQUANT_MIN_M=rows): from that many rows on, run the GEMM on fp16 tensor cores
# (cuBLAS) instead of INT8 MMA with a per-group rescale: the INT4 weights (exactly: a 4-bit code x a
# bf16 scale fits fp16) and the activations (rounded, relative error <= 2^-11) are dequantized into
# fp16 workspaces, with the low-rank branch appended as R extra columns of the same GEMM. Measured on
# the H100: 2.0-2.1x faster than the INT8 path at M = 8192, but 1.2e-3 from the reference (the fp16
# rounding plus the bf16 output), above the 1e-3 bar, so it is off by default (0).
DEQUANT_MIN_M = int(os.environ.get("VAR_GEN_W4A4_DEQUANT_MIN_M", "0"))


def w4a4_linear_dequant(x2: torch.Tensor, layer, y: torch.Tensor) -> torch.Tensor:
    M, K = x2.shape
    N, R = layer.out_features, layer.rank
    ld = K + R
    xq = torch.empty(M, ld, dtype=torch.float16, device=x2.device)
    BM = 32
    _quantize_act[(triton.cdiv(M, BM), 1)](x2, layer.smooth, layer.lora_down if R else x2, xq, xq, xq, M, K,
                                          K // GROUP, INV_QMAX, ld, R=R if R else 16, HAS_LR=bool(R), DEQ=True,
                                          BLOCK_M=BM, GROUP=GROUP)
    w = torch.empty(N, ld, dtype=torch.float16, device=x2.device)
    BN = 64
    _dequant_weight[(triton.cdiv(N, BN), K // GROUP + (1 if R else 0))](
        layer.qweight, layer.wscales, layer.lora_up if R else layer.wscales, w, N, K, ld,
        R=R if R else 16, HAS_LR=bool(R), BLOCK_N=BN, GROUP=GROUP)
    prod = torch.matmul(xq, w.t())
    if layer.bias is not None:
        torch.add(prod, layer.bias, out=y)
    else:
        y.copy_(prod)
    return y


# From this many rows on, the FP8 path unpacks the weights into an e4m3 workspace (N x K bytes, freed
# after the call) and its GEMM loads them plainly: 1.07-1.23x faster at M >= 2048 on the H100, about
# equal at 512, slower below (the unpack is a fixed cost). VAR_GEN_W4A4_UNPACK_MIN_M=0 turns it off.
UNPACK_MIN_M = int(os.environ.get("VAR_GEN_W4A4_UNPACK_MIN_M", "2048"))
_FP8_MMA = {}


def default_path(x: torch.Tensor) -> str:
    """The W4A4 GEMM for x's GPU: FP8 MMA where the tensor cores have it (sm_89+: Ada, Hopper;
    measured 1.4-2.2x faster than INT8 MMA on the H100), INT8 MMA before (sm_80-sm_87, Jetson Orin)."""
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if dev not in _FP8_MMA:
        _FP8_MMA[dev] = torch.cuda.get_device_capability(dev) >= (8, 9)
    return "fp8" if _FP8_MMA[dev] else "int8"


def w4a4_linear(x: torch.Tensor, layer, out: torch.Tensor = None, config: dict = None, path: str = None) -> torch.Tensor:
    """The W4A4 forward of `layer` (a W4A4Linear with act_bits=4) on CUDA; `out` (M, N) optional.
    `path` overrides the choice by GPU and M: "int8" (INT8 MMA), "fp8" (FP8 MMA on the packed
    weights), "fp8w" (FP8 MMA on weights unpacked first), "fused-int8" / "fused-fp8" (the one-launch
    split-K kernel, the default up to FUSED_MAX_M rows) or "dequant" (fp16 workspaces + cuBLAS);
    `config` ({BLOCK_M, BLOCK_N, SWAP, num_warps, num_stages}, or for the fused kernel {BLOCK_M,
    BLOCK_N, GPS, num_warps, num_stages}) fixes the GEMM's launch instead of autotuning (tests and benchmarks use both to check and time every variant)."""
    K, N, R = layer.in_features, layer.out_features, layer.rank
    shape = x.shape
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    if path == "dequant" or (path is None and config is None and 0 < DEQUANT_MIN_M <= M):
        w4a4_linear_dequant(x2, layer, y)
        return y.reshape(*shape[:-1], N)
    if path is None:
        path = default_path(x2)
        if config is None and M <= FUSED_MAX_M:
            path = "fused-" + path
        elif path == "fp8" and 0 < UNPACK_MIN_M <= M:
            path = "fp8w"
    if path.startswith("fused"):
        w4a4_linear_fused(x2, layer, y, fp8=path == "fused-fp8", config=config)
        return y.reshape(*shape[:-1], N)
    fp8 = path in ("fp8", "fp8w")
    q, sx, lr = quantize_activations(x2, layer, fp8=fp8)
    wq = layer.qweight
    if path == "fp8w":   # unpack the weights once into an e4m3 workspace (N, K): plain loads in the GEMM
        wq = torch.empty(N, K, dtype=torch.float8_e4m3fn, device=x.device)
        _unpack_weight_fp8[(triton.cdiv(N, 64), K // GROUP)](layer.qweight, wq, N, K, BLOCK_N=64, GROUP=GROUP)
    S = lr.shape[0] if R else 0
    bucket = min(1 << max(0, (M - 1).bit_length()), 8192)
    args = (q, sx, wq, layer.wscales, lr if R else sx, layer.lora_up if R else layer.wscales,
            layer.bias if layer.bias is not None else y, y, M, N, K, S, bucket)
    meta = dict(HAS_BIAS=layer.bias is not None, HAS_LR=bool(R), R=R if R else 16, GROUP=GROUP)
    if fp8:
        meta["W8"] = path == "fp8w"
    if config is None:
        grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(N, m["BLOCK_N"]))
        (_w4a4_fp8 if fp8 else _w4a4_gemm)[grid](*args, **meta)
    else:
        grid = (triton.cdiv(M, config["BLOCK_M"]), triton.cdiv(N, config["BLOCK_N"]))
        (_w4a4_fp8_kernel if fp8 else _w4a4_gemm_kernel)[grid](*args, **meta, **config)
    return y.reshape(*shape[:-1], N)
