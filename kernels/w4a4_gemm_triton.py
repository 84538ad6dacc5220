"""W4A4 GEMM with the SVDQuant low-rank branch, in Triton (GPU only; the reference is
var_gen_ros.quant.w4a4.W4A4Linear.forward, which runs on the CPU).

Two kernels:
1. `_quantize_act`: x (M, K) 16-bit -> x̂ = x / λ -> INT4 codes per token per group of 64 (stored one
   per int8, range [-7, 7]) + float32 scales (M, K/64). Same arithmetic as the reference
   (float32 divide, amax/7, round half to even), so the codes are bit-identical.
2. `_w4a4_gemm`: y = Σ_g sx[m,g] · sw[n,g] · (qx[m,g,:] · qw[n,g,:]) + lr[m,:] · L_up[n,:] + b[n].
   The packed weight byte j holds k = 2j (low nibble) and 2j+1 (high nibble); instead of
   interleaving the unpacked nibbles in registers, kernel 1 stores each group's codes even-k first,
   odd-k second, and two INT8 dots (k = 32 each) are summed — a dot product does not care about the
   order of k. On sm_90 this issues INT8 tensor-core MMA (Hopper has no INT4 MMA rate). The
   low-rank up-projection and the bias are the epilogue.
The low-rank down-projection lr = x̂ · L_down (M, 32) is one small matmul between the two.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

GROUP = 64
INV_QMAX = torch.tensor(1.0 / 7, dtype=torch.float32).item()   # the reference's float32 1/7


@triton.jit
def _quantize_act(x_ptr, smooth_ptr, q_ptr, s_ptr, xs_ptr, M, K, INV7,
                  BLOCK_M: tl.constexpr, GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = g * GROUP + tl.arange(0, GROUP)
    mask = rows[:, None] < M
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lam = tl.load(smooth_ptr + cols).to(tl.float32)
    xs = libdevice.div_rn(x, lam[None, :])          # IEEE division, as the reference (Triton's / is approximate)
    tl.store(xs_ptr + rows[:, None] * K + cols[None, :], xs, mask=mask)
    amax = tl.max(tl.abs(xs), axis=1)
    s = tl.where(amax > 0, amax * INV7, 1.0)              # same float32 multiply as the reference
    q = libdevice.rint(libdevice.div_rn(xs, s[:, None]))
    q = tl.minimum(tl.maximum(q, -8.0), 7.0)
    # codes stored de-interleaved inside each group (even k first, then odd k) so that the GEMM
    # loads both halves contiguously, matching the weight's low / high nibbles
    c = tl.arange(0, GROUP)
    dst = g * GROUP + (c % 2) * (GROUP // 2) + c // 2
    tl.store(q_ptr + rows[:, None] * K + dst[None, :], q.to(tl.int8), mask=mask)
    tl.store(s_ptr + rows * (K // GROUP) + g, s, mask=rows < M)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
             for bm, bn, w, st in [(16, 64, 4, 4), (32, 64, 4, 4), (64, 64, 4, 4), (64, 128, 4, 4),
                                   (128, 128, 8, 3), (128, 64, 4, 4), (128, 256, 8, 3)]],
    key=["M_BUCKET", "N", "K"])
@triton.jit
def _w4a4_gemm(q_ptr, sx_ptr, w_ptr, sw_ptr, lr_ptr, up_ptr, b_ptr, y_ptr, M, N, K, M_BUCKET,
               HAS_BIAS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               GROUP: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    HALF: tl.constexpr = GROUP // 2
    j = tl.arange(0, HALF)
    G = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, G):
        k0 = g * GROUP
        a_even = tl.load(q_ptr + rm[:, None] * K + (k0 + j)[None, :], mask=mmask[:, None], other=0)
        a_odd = tl.load(q_ptr + rm[:, None] * K + (k0 + HALF + j)[None, :], mask=mmask[:, None], other=0)
        packed = tl.load(w_ptr + rn[:, None] * (K // 2) + (k0 // 2 + j)[None, :], mask=nmask[:, None], other=0)
        p8 = packed.to(tl.int8, bitcast=True)
        lo = (p8 << 4) >> 4                 # arithmetic shifts sign-extend the low nibble
        hi = p8 >> 4
        d = tl.dot(a_even, tl.trans(lo), out_dtype=tl.int32) + tl.dot(a_odd, tl.trans(hi), out_dtype=tl.int32)
        sx = tl.load(sx_ptr + rm * G + g, mask=mmask, other=0.0)
        sw = tl.load(sw_ptr + rn * G + g, mask=nmask, other=0.0).to(tl.float32)
        acc += d.to(tl.float32) * sx[:, None] * sw[None, :]
    r = tl.arange(0, R)
    lr = tl.load(lr_ptr + rm[:, None] * R + r[None, :], mask=mmask[:, None], other=0.0)
    up = tl.load(up_ptr + rn[:, None] * R + r[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
    acc += tl.dot(lr, tl.trans(up), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def w4a4_linear(x: torch.Tensor, layer, out: torch.Tensor = None) -> torch.Tensor:
    """The W4A4 forward of `layer` (a W4A4Linear with act_bits=4) on CUDA; `out` (M, N) optional."""
    K, N, R = layer.in_features, layer.out_features, layer.rank
    shape = x.shape
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    sx = torch.empty(M, K // GROUP, dtype=torch.float32, device=x.device)
    xs = torch.empty(M, K, dtype=torch.float32, device=x.device)
    BM = 16
    _quantize_act[(triton.cdiv(M, BM), K // GROUP)](x2, layer.smooth, q, sx, xs, M, K, INV_QMAX, BLOCK_M=BM, GROUP=GROUP)
    lr = xs @ layer.lora_down.float() if R else torch.zeros(M, 16, device=x.device)
    Rk = R if R else 16
    up = layer.lora_up if R else torch.zeros(N, 16, dtype=layer.wscales.dtype, device=x.device)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    bucket = 1 << max(0, (M - 1).bit_length())
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    _w4a4_gemm[grid](q, sx, layer.qweight, layer.wscales, lr.contiguous(), up.contiguous(),
                     layer.bias if layer.bias is not None else y, y, M, N, K, min(bucket, 8192),
                     HAS_BIAS=layer.bias is not None, R=Rk, GROUP=GROUP)
    return y.reshape(*shape[:-1], N)
