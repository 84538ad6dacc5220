"""Flash-style attention over the INT8 asymmetric per-channel KV cache, in Triton (GPU; the
reference is var_gen_ros.infinity.kv_cache.KVCache.attend on Int8KVCache, which dequantizes the
whole cache and calls SDPA).

One scale's queries attend to every cached token (no mask: a scale sees all earlier scales and
itself, so inference attention is block-causal without a mask) plus, for the last scale, its own
K/V at full precision (the "tail", never stored). Dequantization happens in registers, per block:
    k̂ = (k_q - z_k) · s_k  (per head, per channel)
    q · k̂ = (q ∘ s_k) · k_q - Σ_d q_d s_k,d z_k,d
The per-channel K scale folds into the query once per program, and the zero point is one number
per query row (it cancels in the softmax when there is no tail; with a tail it is kept, so int8
and full-precision keys share one softmax). For V:
    Σ_j p_j v̂_j = (Σ_j p_j v_q,j - z_v Σ_j p_j) ∘ s_v
so V's scale and zero point apply once to the accumulator at the end. K/V are read as int8 (half
the bytes of bf16) and converted to bf16 in registers for the tensor-core dots (exact: |code| ≤ 128).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .launch import Launcher
from .tuning import prune_first_if_asked

# the dtype of the tensor-core dots: bf16 on the GPU; float32 in Triton's CPU interpreter
# (TRITON_INTERPRET=1, the CPU tests), whose numpy emulation of bf16 conversions is not faithful
MMA_DTYPE = tl.float32 if os.environ.get("TRITON_INTERPRET", "0") == "1" else tl.bfloat16
_ON_GPU = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")


@triton.jit
def _kv_store_kernel(K, V, KQ, VQ, KS, KZ, VS, VZ, start, L, H,
                     sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sq_b, sq_h, sq_n,
                     D: tl.constexpr, BLOCK_L: tl.constexpr):
    """One (K or V, batch, head, block of tokens): q = clamp(round(x / s) + z, -128, 127) into the cache
    at token start + i, the reference's arithmetic (IEEE divide, round half to even), so the codes are
    the same bits as Int8KVCache's torch ops."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)              # 0: K, 1: V
    b = bh // H
    h = bh % H
    rn = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, D)
    mask = (rn < L)[:, None]
    if which == 0:
        src = K + b * sk_b + h * sk_h + rn[:, None] * sk_n + d[None, :]
        dst = KQ + b * sq_b + h * sq_h + (start + rn)[:, None] * sq_n + d[None, :]
        s = tl.load(KS + h * D + d)
        z = tl.load(KZ + h * D + d)
    else:
        src = V + b * sv_b + h * sv_h + rn[:, None] * sv_n + d[None, :]
        dst = VQ + b * sq_b + h * sq_h + (start + rn)[:, None] * sq_n + d[None, :]
        s = tl.load(VS + h * D + d)
        z = tl.load(VZ + h * D + d)
    x = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    if _ON_GPU:
        a = libdevice.rint(libdevice.div_rn(x, s[None, :]))
    else:     # the CPU interpreter: numpy's divide is IEEE; round half to even by the 1.5 * 2^23 trick
        a = (x / s[None, :] + 12582912.0) - 12582912.0
    q = tl.minimum(tl.maximum(a + z[None, :], -128.0), 127.0)
    tl.store(dst, q.to(tl.int8), mask=mask)


_KV_STORE = Launcher(_kv_store_kernel)


def _scale_params(H: int, D: int, *ts: torch.Tensor) -> list:
    """The per-(head, channel) scales / zero points as (H, D) float32 contiguous tensors (no copy when
    they already are, as the cache's static ones)."""
    ts = [t.reshape(H, D) for t in ts]
    return [t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous() for t in ts]


def int8_kv_store(k: torch.Tensor, v: torch.Tensor, k_q: torch.Tensor, v_q: torch.Tensor, start: int,
                  k_scale: torch.Tensor, k_zero: torch.Tensor, v_scale: torch.Tensor, v_zero: torch.Tensor) -> None:
    """Quantize k, v (B, H, L, D) with static per-(head, channel) float32 scale/zero (H, D) into the int8
    caches k_q, v_q (B, H, capacity, D) at tokens [start, start + L): one launch in place of the
    reference's ~14 torch ops (eager generation is bound by launches at small scales)."""
    B, H, L, D = k.shape
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    prm = _scale_params(H, D, k_scale, k_zero, v_scale, v_zero)
    BL = 64 if L >= 64 else max(16, triton.next_power_of_2(L))
    _KV_STORE((triton.cdiv(L, BL), B * H, 2),
              (k, v, k_q, v_q, *prm, start, L, H, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
               v.stride(2), k_q.stride(0), k_q.stride(1), k_q.stride(2)),
              dict(D=D, BLOCK_L=BL, num_warps=4))


@triton.jit
def _online_softmax_step(s, valid, m_i, MASKED: tl.constexpr = True):
    """One key block of the online softmax (log2 domain): scores (masked by `valid` when MASKED) ->
    (p, rescale of the running sums, new running max)."""
    if MASKED:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    return tl.math.exp2(s - m_new[:, None]), tl.math.exp2(m_i - m_new), m_new


@triton.jit
def _int8_keys(q8, c, kbase, vbase, n0, N8, sk_n, d, m_i, l_i, l8, acc8,
               MASKED: tl.constexpr, HAS_TAIL: tl.constexpr, MMA: tl.constexpr, BLOCK_N: tl.constexpr):
    """One block of int8 keys/values [n0, n0 + BLOCK_N) into the online softmax. The K zero point's
    per-row term c only matters when full-precision tail keys share the softmax (else it cancels);
    masks only for the last, partial block."""
    rn = n0 + tl.arange(0, BLOCK_N)
    mn = rn < N8
    if MASKED:
        k = tl.load(kbase + rn[None, :] * sk_n + d[:, None], mask=mn[None, :], other=0).to(MMA)
    else:
        k = tl.load(kbase + rn[None, :] * sk_n + d[:, None]).to(MMA)
    s = tl.dot(q8, k)
    if HAS_TAIL:
        s = s - c[:, None]
    p, alpha, m_new = _online_softmax_step(s, mn, m_i, MASKED)
    ps = tl.sum(p, axis=1)
    l_i = l_i * alpha + ps
    l8 = l8 * alpha + ps
    if MASKED:
        v = tl.load(vbase + rn[:, None] * sk_n + d[None, :], mask=mn[:, None], other=0).to(MMA)
    else:
        v = tl.load(vbase + rn[:, None] * sk_n + d[None, :]).to(MMA)
    acc8 = acc8 * alpha[:, None] + tl.dot(p.to(MMA), v)
    return m_new, l_i, l8, acc8


@triton.jit
def _attn_int8_kernel(Q, KQ, VQ, KT, VT, KS, KZ, VS, VZ, O,
                      sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, st_b, st_h, st_n, so_b, so_h, so_m,
                      H, LQ, N8, NT, LQ_BUCKET, N_BUCKET,
                      D: tl.constexpr, HAS_TAIL: tl.constexpr, MMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    LOG2E: tl.constexpr = 1.4426950408889634
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    mrow = rm < LQ
    q = tl.load(Q + b * sq_b + h * sq_h + rm[:, None] * sq_m + d[None, :], mask=mrow[:, None], other=0.0).to(tl.float32)
    ks = tl.load(KS + h * D + d)
    kz = tl.load(KZ + h * D + d)
    q8 = (q * (ks * LOG2E)[None, :]).to(MMA)            # K scale folded into q (log2 domain)
    c = tl.sum(q * (ks * kz)[None, :], axis=1) * LOG2E           # the K zero point, one number per row
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    l8 = tl.zeros((BLOCK_M,), dtype=tl.float32)                  # softmax mass on int8 keys
    acc8 = tl.zeros((BLOCK_M, D), dtype=tl.float32)              # Σ p v_q (int8 V, in code units)
    kbase = KQ + b * sk_b + h * sk_h
    vbase = VQ + b * sk_b + h * sk_h
    n_full = (N8 // BLOCK_N) * BLOCK_N
    for n0 in range(0, n_full, BLOCK_N):          # whole key blocks: no masks
        m_i, l_i, l8, acc8 = _int8_keys(q8, c, kbase, vbase, n0, N8, sk_n, d, m_i, l_i, l8, acc8,
                                        False, HAS_TAIL, MMA, BLOCK_N)
    if n_full < N8:                               # the last, partial block
        m_i, l_i, l8, acc8 = _int8_keys(q8, c, kbase, vbase, n_full, N8, sk_n, d, m_i, l_i, l8, acc8,
                                        True, HAS_TAIL, MMA, BLOCK_N)
    acct = tl.zeros((BLOCK_M, D), dtype=tl.float32)              # Σ p v over full-precision tail keys
    if HAS_TAIL:
        qt = (q * LOG2E).to(MMA)
        tkb = KT + b * st_b + h * st_h
        tvb = VT + b * st_b + h * st_h
        for n0 in range(0, NT, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            mn = rn < NT
            k = tl.load(tkb + rn[None, :] * st_n + d[:, None], mask=mn[None, :], other=0.0).to(MMA)
            p, alpha, m_i = _online_softmax_step(tl.dot(qt, k), mn, m_i)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            l8 = l8 * alpha
            acc8 = acc8 * alpha[:, None]
            v = tl.load(tvb + rn[:, None] * st_n + d[None, :], mask=mn[:, None], other=0.0).to(MMA)
            acct = acct * alpha[:, None] + tl.dot(p.to(MMA), v)
    vs = tl.load(VS + h * D + d)
    vz = tl.load(VZ + h * D + d)
    o = ((acc8 - l8[:, None] * vz[None, :]) * vs[None, :] + acct) / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + rm[:, None] * so_m + d[None, :], o.to(O.dtype.element_ty), mask=mrow[:, None])


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


CONFIGS = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 128, 4, 3),
           _cfg(128, 32, 4, 3), _cfg(32, 64, 4, 2), _cfg(16, 64, 4, 2),
           _cfg(128, 64, 8, 4), _cfg(128, 128, 8, 2), _cfg(64, 128, 4, 4)]

# picks kept on disk across starts; O restored after every trial launch, because the output may be
# written over the queries (Int8KVCache.attend): without it each trial would read the last one's output
_attn_int8 = triton.autotune(configs=CONFIGS, key=["LQ_BUCKET", "N_BUCKET", "HAS_TAIL", "D"],
                             prune_configs_by={"early_config_prune": prune_first_if_asked},
                             cache_results=True, restore_value=["O"])(_attn_int8_kernel)
_ATTN_INT8 = Launcher(_attn_int8)      # direct launches after the first call per specialization


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def int8_kv_attention(q: torch.Tensor, k_q: torch.Tensor, v_q: torch.Tensor, n_cached: int,
                      k_scale: torch.Tensor, k_zero: torch.Tensor, v_scale: torch.Tensor, v_zero: torch.Tensor,
                      k_tail: torch.Tensor = None, v_tail: torch.Tensor = None, out: torch.Tensor = None,
                      config: dict = None) -> torch.Tensor:
    """softmax(q K̂ᵀ) V̂ (scale 1, no mask) over the first `n_cached` int8 tokens of k_q/v_q
    (B, H, capacity, D) with per-(head, channel) float32 scale/zero (H, D), plus an optional
    full-precision tail (B, H, L, D). q (B, H, Lq, D) in bf16/fp16; returns q's dtype."""
    B, H, LQ, D = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    o = torch.empty_like(q) if out is None else out
    has_tail = k_tail is not None and k_tail.shape[2] > 0
    if has_tail:
        k_tail = k_tail.to(q.dtype).contiguous()
        v_tail = v_tail.to(q.dtype).contiguous()
        NT = k_tail.shape[2]
        st = k_tail.stride()
    else:
        k_tail = v_tail = q
        NT, st = 0, (0, 0, 0, 0)
    prm = _scale_params(H, D, k_scale, k_zero, v_scale, v_zero)
    args = (q, k_q, v_q, k_tail, v_tail, *prm, o,
            q.stride(0), q.stride(1), q.stride(2), k_q.stride(0), k_q.stride(1), k_q.stride(2),
            st[0], st[1], st[2], o.stride(0), o.stride(1), o.stride(2),
            H, LQ, n_cached, NT, min(_bucket(LQ), 4096), min(_bucket(n_cached + NT), 16384))
    if config is None:
        _ATTN_INT8(lambda m: (triton.cdiv(LQ, m["BLOCK_M"]), B * H), args, dict(D=D, HAS_TAIL=has_tail, MMA=MMA_DTYPE))
    else:
        grid = (triton.cdiv(LQ, config["BLOCK_M"]), B * H)
        _attn_int8_kernel[grid](*args, D=D, HAS_TAIL=has_tail, MMA=MMA_DTYPE, **config)
    return o


@triton.jit
def _kv_dequant_kernel(KQ, VQ, KT, VT, KS, KZ, VS, VZ, KO, VO, h0, N8, NT, HC,
                       sq_b, sq_h, sq_n, st_b, st_h, st_n, so_b, so_h, so_n,
                       D: tl.constexpr, BLOCK_L: tl.constexpr):
    """One (K or V, batch, head of the chunk, block of tokens) of `int8_kv_dequant`: cached tokens
    [0, N8) as (q - z) · s in float32 rounded to the output dtype (Int8KVCache.read's arithmetic, then
    the cast the reference makes), tail tokens [N8, N8 + NT) copied."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)              # 0: K, 1: V
    b = bh // HC
    hh = bh % HC
    h = h0 + hh
    rn = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, D)
    cached = rn < N8
    tail = (rn >= N8) & (rn < N8 + NT)
    if which == 0:
        src, tsrc, dst = KQ, KT, KO
        s = tl.load(KS + h * D + d)
        z = tl.load(KZ + h * D + d)
    else:
        src, tsrc, dst = VQ, VT, VO
        s = tl.load(VS + h * D + d)
        z = tl.load(VZ + h * D + d)
    code = tl.load(src + b * sq_b + h * sq_h + rn[:, None] * sq_n + d[None, :], mask=cached[:, None], other=0)
    x = (code.to(tl.float32) - z[None, :]) * s[None, :]
    if NT > 0:
        t = tl.load(tsrc + b * st_b + h * st_h + (rn - N8)[:, None] * st_n + d[None, :], mask=tail[:, None], other=0.0)
        x = tl.where(cached[:, None], x, t.to(tl.float32))
    tl.store(dst + b * so_b + hh * so_h + rn[:, None] * so_n + d[None, :], x.to(dst.dtype.element_ty),
             mask=(cached | tail)[:, None])


_KV_DEQUANT = Launcher(_kv_dequant_kernel)


def int8_kv_dequant(k_q: torch.Tensor, v_q: torch.Tensor, n_cached: int, h0: int, heads: int,
                    k_scale: torch.Tensor, k_zero: torch.Tensor, v_scale: torch.Tensor, v_zero: torch.Tensor,
                    k_tail: torch.Tensor = None, v_tail: torch.Tensor = None, dtype=torch.bfloat16):
    """Heads [h0, h0 + heads) of the int8 cache's first `n_cached` tokens dequantized, followed by the
    same heads of the tail (B, H, NT, D; all heads passed): K, V (B, heads, n_cached + NT, D) in
    `dtype`, in one launch."""
    B, H, _, D = k_q.shape
    NT = 0 if k_tail is None else k_tail.shape[2]
    N = n_cached + NT
    ko = torch.empty(B, heads, N, D, dtype=dtype, device=k_q.device)
    vo = torch.empty_like(ko)
    if NT:
        if k_tail.stride(-1) != 1 or v_tail.stride() != k_tail.stride():
            k_tail, v_tail = k_tail.contiguous(), v_tail.contiguous()
        st = k_tail.stride()
    else:
        k_tail = v_tail = ko
        st = (0, 0, 0, 0)
    prm = _scale_params(H, D, k_scale, k_zero, v_scale, v_zero)
    BL = 64
    _KV_DEQUANT((triton.cdiv(N, BL), B * heads, 2),
                (k_q, v_q, k_tail, v_tail, *prm, ko, vo, h0, n_cached, NT, heads,
                 k_q.stride(0), k_q.stride(1), k_q.stride(2), st[0], st[1], st[2],
                 ko.stride(0), ko.stride(1), ko.stride(2)),
                dict(D=D, BLOCK_L=BL, num_warps=4))
    return ko, vo


# Bytes of dequantized K and V that `int8_kv_attention_sdpa` holds at once; the heads are taken in
# groups (divisors of H) that fit it, so the path adds a bounded amount to the generation's peak
SDPA_CHUNK_BYTES = int(os.environ.get("VAR_GEN_KV_SDPA_CHUNK_MIB", "64")) << 20


def sdpa_head_group(B: int, H: int, N: int, D: int, budget: int = None) -> int:
    """The most heads (a divisor of H) whose dequantized K and V (2 x B x heads x N x D x 2 bytes) fit
    `budget` bytes (at least one head)."""
    budget = SDPA_CHUNK_BYTES if budget is None else budget
    per_head = 2 * B * N * D * 2
    return max([h for h in range(1, H + 1) if H % h == 0 and h * per_head <= budget] or [1])


def int8_kv_attention_sdpa(q: torch.Tensor, k_q: torch.Tensor, v_q: torch.Tensor, n_cached: int,
                           k_scale: torch.Tensor, k_zero: torch.Tensor, v_scale: torch.Tensor, v_zero: torch.Tensor,
                           k_tail: torch.Tensor = None, v_tail: torch.Tensor = None, out: torch.Tensor = None,
                           heads: int = None) -> torch.Tensor:
    """The same attention as `int8_kv_attention`, for many queries: each group of heads' K/V is
    dequantized into a bounded bf16 buffer (`int8_kv_dequant`) and PyTorch's SDPA (cuDNN's fused
    attention on Hopper) runs on it. At the large scales this is faster than dequantizing in the
    attention's registers, which puts every K/V tile through a register round trip before its MMA
    (docs/BENCHMARKS.md, eleventh session). `out` may be q (each head group reads its queries first)."""
    import torch.nn.functional as F
    B, H, LQ, D = q.shape
    NT = 0 if k_tail is None else k_tail.shape[2]
    hc = heads or sdpa_head_group(B, H, n_cached + NT, D)
    o = torch.empty_like(q) if out is None else out
    for h0 in range(0, H, hc):
        n = min(hc, H - h0)
        kb, vb = int8_kv_dequant(k_q, v_q, n_cached, h0, n, k_scale, k_zero, v_scale, v_zero,
                                 k_tail if NT else None, v_tail if NT else None, dtype=q.dtype)
        qh = q[:, h0:h0 + n]
        oh = F.scaled_dot_product_attention(qh if n == H else qh.contiguous(), kb, vb, scale=1.0)
        del kb, vb
        o[:, h0:h0 + n] = oh
    return o
