"""What a per-group rescale costs next to tensor-core MMAs: the measurement behind keeping the i8 path
(INT8 MMA over q·m, no rescale) instead of INT4 MMA on sm_80-sm_89 (Jetson Orin: sm_87).

With two-level scales (quant/int4.py) a W4A4 product over one 64-wide group g is
    mx[r,g] · mw[c,g] · Σ_k qx[r,k] qw[c,k]          (codes in [-7, 7], integer multipliers in [1, 16])
Two ways to run it on tensor cores:
  i8:  INT8 MMA on the operands (qx·mx), (qw·mw) (|q·m| <= 112): the multipliers ride in the operands, the
       int32 accumulator runs over all of K, nothing happens per group on the CUDA cores (the shipped path);
  i4:  INT4 MMA (mma.sync m16n8k64 s4, 2x INT8's rate on sm_80-sm_89) on the codes, then per group and
       output element acc += P · (mx · mw): two integer ops on the CUDA cores per 64 MACs.
Which wins depends on the ratio of tensor-core MACs to CUDA-core integer ops per cycle. This script
times, on the GPU it runs on, a warp-level loop of each form with the same fragment loads from shared
memory (4 x 4 m16n8 tiles per warp, 8 warps per block, a few blocks per SM):
  i8            INT8 MMA (2 x m16n8k32 per group), no rescale
  i8_rescale    INT8 MMA on the codes, then the integer rescale per group: the i4 form at INT8's MMA rate
  i4_rescale    INT4 MMA (1 x m16n8k64 per group) + the integer rescale (Hopper runs INT4 MMA emulated)
  i4            INT4 MMA alone
  i8_frescale   INT8 MMA on the codes + a float32 rescale (I2F, FFMA): the free-scale form
Each variant's int32 result is checked: i8, i8_rescale and i4_rescale must agree bit for bit (the same
integers, summed modulo 2^32), which also checks the INT4 fragment layout.

    python3 bench/mma_rescale.py --json docs/results/mma_rescale_h100.json     (needs CuPy and a GPU)
"""
from __future__ import annotations

import argparse
import json

SRC = r"""
#define MT 4            // m16 tiles per warp
#define NT 4            // n8 tiles per warp
#define NG 4            // groups kept in shared memory (iteration i uses group i % NG)

__device__ __forceinline__ void mma_s8(int* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_s4(int* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Shared memory per group, per lane: A fragments (MT x 8 words for int8 k64 = two k32 MMAs, or MT x 4 for
// int4), B fragments (NT x 4 / NT x 2), the lane's 8 row and 8 column multipliers. Filled from global.
// VARIANT: 0 i8, 1 i8_rescale, 2 i4_rescale, 3 i4, 4 i8_frescale
template <int VARIANT>
__global__ void loop(const unsigned* __restrict__ a8, const unsigned* __restrict__ b8,
                     const unsigned* __restrict__ a4, const unsigned* __restrict__ b4,
                     const int* __restrict__ mx, const int* __restrict__ mw, int iters, int* __restrict__ out) {
  constexpr bool I4 = VARIANT == 2 || VARIANT == 3;
  constexpr int AW = I4 ? 4 : 8, BW = I4 ? 2 : 4;
  __shared__ unsigned sa[NG][MT * 8][32];
  __shared__ unsigned sb[NG][NT * 4][32];
  __shared__ int smx[NG][8][32], smw[NG][8][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int g = warp; g < NG; g += blockDim.x >> 5) {
    for (int i = 0; i < MT * AW; ++i) sa[g][i][lane] = (I4 ? a4 : a8)[(g * MT * AW + i) * 32 + lane];
    for (int i = 0; i < NT * BW; ++i) sb[g][i][lane] = (I4 ? b4 : b8)[(g * NT * BW + i) * 32 + lane];
    for (int i = 0; i < 8; ++i) { smx[g][i][lane] = mx[(g * 8 + i) * 32 + lane]; smw[g][i][lane] = mw[(g * 8 + i) * 32 + lane]; }
  }
  __syncthreads();
  int acc[MT][NT][4];
  float facc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) { acc[m][n][e] = 0; facc[m][n][e] = 0.f; }
  for (int it = 0; it < iters; ++it) {
    const int g = it & (NG - 1);
    unsigned a[MT][8], b[NT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < AW; ++i) a[m][i] = sa[g][m * AW + i][lane];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < BW; ++i) b[n][i] = sb[g][n * BW + i][lane];
    if (VARIANT == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int n = 0; n < NT; ++n) { mma_s8(acc[m][n], a[m], b[n]); mma_s8(acc[m][n], a[m] + 4, b[n] + 2); }
    } else {
      int p[MT][NT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          p[m][n][0] = p[m][n][1] = p[m][n][2] = p[m][n][3] = 0;
          if (I4) mma_s4(p[m][n], a[m], b[n]);
          else { mma_s8(p[m][n], a[m], b[n]); mma_s8(p[m][n], a[m] + 4, b[n] + 2); }
        }
      if (VARIANT == 3) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[m][n][e] += p[m][n][e];
      } else {
        int rx[8], cw[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) { rx[i] = smx[g][i][lane]; cw[i] = smw[g][i][lane]; }
        // accumulator element e of tile (m, n): row g / g+8 (rx[2m + e/2]), column 2t / 2t+1 (cw[2n + e%2])
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (VARIANT == 4) {   // float32 scales (their bits in rx, cw): FMUL, I2F, FFMA
                const float s = __int_as_float(rx[2 * m + (e >> 1)]) * __int_as_float(cw[2 * n + (e & 1)]);
                facc[m][n][e] = fmaf((float)p[m][n][e], s, facc[m][n][e]);
              } else {              // integer multipliers: IMUL, IMAD
                acc[m][n][e] += p[m][n][e] * (rx[2 * m + (e >> 1)] * cw[2 * n + (e & 1)]);
              }
            }
      }
    }
  }
  int* o = out + ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * MT * NT * 4;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[(m * NT + n) * 4 + e] = VARIANT == 4 ? __float_as_int(facc[m][n][e]) : acc[m][n][e];
}
"""

VARIANTS = ["i8", "i8_rescale", "i4_rescale", "i4", "i8_frescale"]
MT, NT, NG = 4, 4, 4


def _fragments(np, rng):
    """Random codes and multipliers laid out as each lane's MMA fragments (sm_80 PTX layouts, identical in
    bytes for m16n8k32 s8 and m16n8k64 s4: lane 4·g + t holds row g / g+8, k bytes 4t.. and 16+4t..),
    as both int8 operands (q·m for i8, q for the rescale forms) and packed int4 codes."""
    M, N, K = 16 * MT, 8 * NT, 64
    qa = rng.integers(-7, 8, size=(NG, M, K))
    qb = rng.integers(-7, 8, size=(NG, N, K))
    ma = rng.integers(1, 17, size=(NG, M))
    mb = rng.integers(1, 17, size=(NG, N))
    return qa, qb, ma, mb


def _pack(np, vals, bits, a_side: bool):
    """(NG, rows, K) ints -> (NG, tiles·regs, 32) u32: each lane's registers of the m16n8k(32|64) A operand
    (a_side: per m16 tile, 4 registers per MMA, a0/a1 rows g / g+8 at the low k half, a2/a3 the high half)
    or B operand (per n8 tile, 2 registers per MMA: column g, low / high k half)."""
    per = 32 // bits                       # elements per 32-bit register
    kstep = 8 * per                        # K covered by one MMA: 32 (s8) or 64 (s4)
    nmma = 64 // kstep                     # MMAs per 64-wide group
    tiles, tile_rows, regs = (MT, 16, 4) if a_side else (NT, 8, 2)
    out = np.zeros((vals.shape[0], tiles * regs * nmma, 32), dtype=np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for m in range(tiles):
            for j in range(nmma):
                for r in range(regs):
                    row = tile_rows * m + g + (8 * (r & 1) if a_side else 0)
                    k0 = j * kstep + (kstep // 2) * (r >> 1 if a_side else r) + per * t
                    word = np.zeros(vals.shape[0], dtype=np.uint64)
                    for i in range(per):
                        word |= (vals[:, row, k0 + i].astype(np.int64) & ((1 << bits) - 1)).astype(np.uint64) << np.uint64(bits * i)
                    out[:, (m * nmma + j) * regs + r, lane] = word.astype(np.uint32)
    return out


def _lane_mults(np, ma, mb):
    """Each lane's 8 row multipliers (rows g, g+8 of each m tile) and 8 column ones (2t, 2t+1 of each n tile)."""
    mx = np.zeros((NG, 8, 32), dtype=np.int32)
    mw = np.zeros((NG, 8, 32), dtype=np.int32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for m in range(MT):
            mx[:, 2 * m, lane], mx[:, 2 * m + 1, lane] = ma[:, 16 * m + g], ma[:, 16 * m + g + 8]
        for n in range(NT):
            mw[:, 2 * n, lane], mw[:, 2 * n + 1, lane] = mb[:, 8 * n + 2 * t], mb[:, 8 * n + 2 * t + 1]
    return mx, mw


def expected(np, qa, qb, ma, mb, iters):
    """The int32 (mod 2^32) tile each warp ends with, per lane fragment order, and the same in float."""
    M, N = 16 * MT, 8 * NT
    tot = np.zeros((M, N), dtype=np.int64)
    for g in range(NG):
        reps = iters // NG + (1 if g < iters % NG else 0)
        tot += reps * (ma[g][:, None] * mb[g][None, :] * (qa[g].astype(np.int64) @ qb[g].T.astype(np.int64)))
    frag = np.zeros((32, MT, NT, 4), dtype=np.int64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for m in range(MT):
            for n in range(NT):
                for e in range(4):
                    frag[lane, m, n, e] = tot[16 * m + g + 8 * (e >> 1), 8 * n + 2 * t + (e & 1)]
    return ((frag + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32), frag


def main() -> int:
    import cupy as cp
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=4096)
    ap.add_argument("--blocks-per-sm", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    dev = cp.cuda.Device()
    cc = dev.compute_capability
    sms = dev.attributes["MultiProcessorCount"]
    mod = cp.RawModule(code=SRC, options=("-std=c++17", f"--gpu-architecture=sm_{cc}"),
                       name_expressions=[f"loop<{i}>" for i in range(len(VARIANTS))])
    rng = np.random.default_rng(0)
    qa, qb, ma, mb = _fragments(np, rng)
    a8 = cp.asarray(_pack(np, qa * ma[:, :, None], 8, True))       # i8: q·m operands
    b8 = cp.asarray(_pack(np, qb * mb[:, :, None], 8, False))
    a8c = cp.asarray(_pack(np, qa, 8, True))                        # codes as int8 (the rescale forms)
    b8c = cp.asarray(_pack(np, qb, 8, False))
    a4 = cp.asarray(_pack(np, qa, 4, True))
    b4 = cp.asarray(_pack(np, qb, 4, False))
    mx_h, mw_h = _lane_mults(np, ma, mb)
    mx, mw = cp.asarray(mx_h), cp.asarray(mw_h)
    # the float variant's scales: the same multipliers as float32, passed as their bits
    mxf, mwf = (cp.asarray(t.astype(np.float32).view(np.int32)) for t in (mx_h, mw_h))
    want, want64 = expected(np, qa, qb, ma, mb, a.iters)
    threads, blocks = 256, sms * a.blocks_per_sm
    warps = blocks * threads // 32
    macs = warps * a.iters * (16 * MT) * (8 * NT) * 64           # per launch
    rows = {}
    for i, name in enumerate(VARIANTS):
        k = mod.get_function(f"loop<{i}>")
        out = cp.full((blocks * threads * MT * NT * 4,), -1, dtype=cp.int32)
        A, B = (a8, b8) if name == "i8" else (a4, b4) if name.startswith("i4") else (a8c, b8c)
        fl = name == "i8_frescale"
        args = (A, B, A, B, mxf if fl else mx, mwf if fl else mw, np.int32(a.iters), out)
        k((blocks,), (threads,), args)
        cp.cuda.runtime.deviceSynchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(a.repeats):
            start.record()
            k((blocks,), (threads,), args)
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        ms = float(np.median(times))
        got = cp.asnumpy(out).reshape(blocks * threads // 32, 32, MT, NT, 4)
        if name in ("i8", "i8_rescale", "i4_rescale"):
            exact = bool((got == want[None]).all())
        elif name == "i4":
            # no multipliers: Σ_g reps · qa·qbᵀ
            M, N = 16 * MT, 8 * NT
            tot = sum((a.iters // NG + (1 if g < a.iters % NG else 0)) * (qa[g] @ qb[g].T) for g in range(NG))
            ref = np.array([[[[tot[16 * m + l // 4 + 8 * (e >> 1), 8 * n + 2 * (l % 4) + (e & 1)] for e in range(4)]
                              for n in range(NT)] for m in range(MT)] for l in range(32)])
            exact = bool((got == ((ref + 2 ** 31) % 2 ** 32 - 2 ** 31).astype(np.int32)[None]).all())
        else:   # float32 accumulation: within float rounding of the exact (int64) sums
            f = got.view(np.float32).astype(np.float64)
            exact = bool(np.abs(f - want64[None]).max() <= 1e-3 * np.abs(want64).max())
        rows[name] = {"ms": ms, "tops": 2 * macs / ms / 1e9, "exact": exact}
        print(f"{name:<12} {ms:8.3f} ms  {2 * macs / ms / 1e9:8.1f} TOP/s (dense MAC x 2)  result exact: {exact}")
    base = rows["i8"]["ms"]
    for name, r in rows.items():
        r["time_vs_i8"] = r["ms"] / base
    print("time vs i8: " + ", ".join(f"{n} {r['time_vs_i8']:.2f}x" for n, r in rows.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode(), "compute_capability": cc, "sms": sms,
                       "blocks": blocks, "threads": threads, "iters": a.iters, "variants": rows}, f, indent=1)
    return 0 if all(r["exact"] is not False for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
