// The W4A4 quantizer's row pass with its low-rank dot, in CUDA C++ (VAR_GEN_W4A4_ROW_PASS_CUDA): per row and K split,
// the rows' max |x̂| (x̂ = x · (1/λ), the two-level scales' units come from it) and the partial x̂ · L_down as the
// Triton row pass's "bf16x2i" makes it: the raw bf16 x (exact) against L_down · (1/λ) in two bf16 parts, on tensor
// cores with float32 accumulation.
//
// Why: over a 1024² generation the Triton row pass takes 55 ms against the 18 ms its read of x needs (H100,
// forty-second session). Triton lowers its dot with both operands staged through shared memory: four barriers and two
// wgmma waits per 64-wide group. Its pipelined forms gave wrong results on the H100 (forty-third session). Here each
// warp loads its x fragments straight from global memory into registers (the next group's while this one's are used)
// and runs mma.sync m16n8k16; the B operand, L_down · (1/λ) in two bf16 parts, is made once per block and group into
// shared memory, the next group's while this one's is read: one barrier per group, no wait on the MMAs. (The first
// version, where every warp made the whole B operand in registers, was right but 0.51-0.74x the Triton row pass's
// speed on the H100, forty-third session; the second, with B in shared memory, the same: 0.52-0.88x, forty-fourth.
// Both summed the K splits' partials one element at a time over all splits, ~100 L2 round trips a thread at 512 rows;
// the split sum now reads whole float4 runs, the splits outermost: this third version runs at the Triton row pass's
// speed, forty-fifth session. Nsight Compute there: both latency-bound at 2048 rows, 0.57 waves of blocks and 26 % of
// the DRAM bandwidth; this kernel's warps wait on global loads (39 % of the stall samples: L_down for the next B, and
// x), on shared memory (19 %: the MMAs' B) and on the fence before the split counter (14 %).)
//
// The fragment layouts let each thread load contiguous memory. A dot sums over k in any order, so the kernel maps
// the MMA's logical k to columns as it likes, the same way for both operands: thread (g = lane / 4, q = lane % 4)
// loads columns [16q, 16q + 16) of its group for rows g and g + 8 of its warp's 16, and k-step s (0..3) takes from
// them logical k {2q, 2q + 1} = columns 16q + 4s + {0, 1} and {2q + 8, 2q + 9} = columns 16q + 4s + {2, 3}. The
// rank is mapped too: rank tile t's logical n is rank n · NT + t (NT = R / 8), so a thread's accumulators hold 2·NT
// contiguous ranks of each of its two rows. B is stored in the order the lanes read it (GroupB).
//
// The same maxima bit for bit as the Triton row pass (the same IEEE products); the same two-part operands; the
// partials differ from Triton's in the order of the float32 sums only. The K splits' partials are summed by the
// last split of each row block to finish, in split order (the order the Triton row pass and the GEMM epilogues
// use), and its counter is re-armed.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int GROUP = 64;

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// two floats -> two bf16 (round to nearest even), the first in the low half (the smaller k)
__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <int NT>
struct GroupB {
  uint4 hi[4][NT / 2][32];
  uint4 lo[4][NT / 2][32];
  float4 inv[16];                        // the group's 1/λ, for the rows' maxima
};

// What one thread loads from global memory for its quad of a group's B: issued at the top of the group before (its
// latency behind that group's MMAs), used at its end.
struct QuadLoads {
  float4 iv;
  uint32_t down[4];
};

// Made by the whole block, each thread whole quads: quad (s, h, lane) holds ranks g·NT + 2h and + 1 (g = lane / 4) of
// the four columns c0 + 16q + 4s + {0, 1, 2, 3} (q = lane % 4), so a thread loads one float4 of 1/λ, four 4-byte
// pairs of L_down, and stores one 16-byte word of each part. The same IEEE product and round-to-nearest-even splits
// as the Triton "bf16x2i" dot. The loads (load_group_b) are issued a group ahead of the making (make_group_b).
template <int NT, int WARPS>
struct QuadsOf {
  static constexpr int QUADS = 4 * (NT / 2) * 32;
  static constexpr int PER_THREAD = QUADS >= 32 * WARPS ? QUADS / (32 * WARPS) : 1;   // (rank 16 in 8 warps: half)
  static_assert(QUADS % (32 * WARPS) == 0 || QUADS < 32 * WARPS, "whole quads per thread");
  // quad m of this thread: i = (s, h, lane) = (i / (32 · NT/2), i / 32 % (NT/2), i % 32), or -1 past the last
  static __device__ __forceinline__ int index(int m) {
    const int i = threadIdx.x * PER_THREAD + m;
    return (QUADS < 32 * WARPS && i >= QUADS) ? -1 : i;
  }
  static __device__ __forceinline__ int column(int i) { return 16 * (i & 3) + 4 * (i / (32 * (NT / 2))); }
  static __device__ __forceinline__ int rank(int i) { return ((i & 31) >> 2) * NT + 2 * ((i >> 5) % (NT / 2)); }
};

template <int NT, int WARPS>
__device__ __forceinline__ void load_group_b(QuadLoads (&ld)[QuadsOf<NT, WARPS>::PER_THREAD],
                                             const uint16_t* __restrict__ down, const float* __restrict__ inv,
                                             int c0) {
  using Q = QuadsOf<NT, WARPS>;
  constexpr int R = 8 * NT;
#pragma unroll
  for (int m = 0; m < Q::PER_THREAD; ++m) {
    const int i = Q::index(m);
    if (i < 0) break;
    const int col = c0 + Q::column(i), rank = Q::rank(i);
    ld[m].iv = __ldg(reinterpret_cast<const float4*>(inv + col));
#pragma unroll
    for (int k = 0; k < 4; ++k)
      ld[m].down[k] = __ldg(reinterpret_cast<const uint32_t*>(down + (size_t)(col + k) * R + rank));
  }
}

template <int NT, int WARPS>
__device__ __forceinline__ void make_group_b(GroupB<NT>& b, const QuadLoads (&ld)[QuadsOf<NT, WARPS>::PER_THREAD]) {
  using Q = QuadsOf<NT, WARPS>;
  uint4* hi = &b.hi[0][0][0];
  uint4* lo = &b.lo[0][0][0];
#pragma unroll
  for (int m = 0; m < Q::PER_THREAD; ++m) {
    const int i = Q::index(m);
    if (i < 0) break;
    const float ivs[4] = {ld[m].iv.x, ld[m].iv.y, ld[m].iv.z, ld[m].iv.w};
    if (Q::rank(i) == 0) b.inv[Q::column(i) / 4] = ld[m].iv;   // the 16 quads of rank 0 hold the group's 64 columns
    float d[4][2];                                     // [column][rank]
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      d[k][0] = __fmul_rn(bf16_lo(ld[m].down[k]), ivs[k]);
      d[k][1] = __fmul_rn(bf16_hi(ld[m].down[k]), ivs[k]);
    }
    uint32_t wh[4], wl[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {                      // word j: rank 2h + j / 2, columns 2(j % 2) and + 1
      const int t = j / 2, c = 2 * (j % 2);
      wh[j] = pack_bf16(d[c][t], d[c + 1][t]);
      wl[j] = pack_bf16(__fsub_rn(d[c][t], bf16_lo(wh[j])), __fsub_rn(d[c + 1][t], bf16_hi(wh[j])));
    }
    hi[i] = make_uint4(wh[0], wh[1], wh[2], wh[3]);
    lo[i] = make_uint4(wl[0], wl[1], wl[2], wl[3]);
  }
}

// x (M, K) bf16; inv (K,) float32 = 1/λ; down (K, R) bf16, R = 8·NT; part (S, M) the rows' max |x̂| per split;
// lrp (S, M, R) the splits' partials; lrsum (M, R) their sum, or null (then no counters are touched); cnt zeroed int32
// counters, one per row block, left zeroed. Blocks of 16·warps rows (blockIdx.x) and one K split of gps groups
// (blockIdx.y). The B operand of group g + 1 is made after group g's MMAs are issued (two buffers, one barrier per
// group).
// Blocks per SM asked of ptxas at ranks 16 and 32: three of 8 warps (≤ 85 registers), five of 4 (≤ 102), as the
// second version had without asking; rank 64 (not Infinity's) is left at one.
template <int NT, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, NT > 4 ? 1 : WARPS == 8 ? 3 : 5)
    row_pass_kernel(const uint16_t* __restrict__ x, const float* __restrict__ inv, const uint16_t* __restrict__ down,
                    float* __restrict__ part, float* lrp, float* __restrict__ lrsum, int* cnt, int M, int K, int gps) {
  constexpr int R = 8 * NT;
  __shared__ GroupB<NT> bs[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  constexpr int rows_per_block = 16 * WARPS;
  const int row0 = blockIdx.x * rows_per_block + warp * 16 + g, row1 = row0 + 8;
  const bool in0 = row0 < M, in1 = row1 < M;
  const int split = blockIdx.y, S = gridDim.y, G = K / GROUP;
  const int gbeg = split * gps, gend = min(gbeg + gps, G);

  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
  float big0 = 0.0f, big1 = 0.0f;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  const uint16_t* x0 = x + (size_t)(in0 ? row0 : 0) * K + 16 * q;
  const uint16_t* x1 = x + (size_t)(in1 ? row1 : 0) * K + 16 * q;

  // x is the DRAM stream: the next group's fragments are loaded while this group's are used
  uint4 nx[4];
  if (gbeg < gend) {
    const size_t c = (size_t)gbeg * GROUP;
    nx[0] = in0 ? __ldg(reinterpret_cast<const uint4*>(x0 + c)) : zero;
    nx[1] = in0 ? __ldg(reinterpret_cast<const uint4*>(x0 + c + 8)) : zero;
    nx[2] = in1 ? __ldg(reinterpret_cast<const uint4*>(x1 + c)) : zero;
    nx[3] = in1 ? __ldg(reinterpret_cast<const uint4*>(x1 + c + 8)) : zero;
    QuadLoads ld[QuadsOf<NT, WARPS>::PER_THREAD];
    load_group_b<NT, WARPS>(ld, down, inv, gbeg * GROUP);
    make_group_b<NT, WARPS>(bs[0], ld);
  }
  __syncthreads();
#pragma unroll 1
  for (int grp = gbeg; grp < gend; ++grp) {
    const GroupB<NT>& b = bs[(grp - gbeg) & 1];
    const uint32_t xa[8] = {nx[0].x, nx[0].y, nx[0].z, nx[0].w, nx[1].x, nx[1].y, nx[1].z, nx[1].w};   // row0
    const uint32_t xb[8] = {nx[2].x, nx[2].y, nx[2].z, nx[2].w, nx[3].x, nx[3].y, nx[3].z, nx[3].w};   // row1
    if (grp + 1 < gend) {
      const size_t cn = (size_t)(grp + 1) * GROUP;
      nx[0] = in0 ? __ldg(reinterpret_cast<const uint4*>(x0 + cn)) : zero;
      nx[1] = in0 ? __ldg(reinterpret_cast<const uint4*>(x0 + cn + 8)) : zero;
      nx[2] = in1 ? __ldg(reinterpret_cast<const uint4*>(x1 + cn)) : zero;
      nx[3] = in1 ? __ldg(reinterpret_cast<const uint4*>(x1 + cn + 8)) : zero;
    }
    // the next group's B operand: its loads now, its making after this group's MMAs are issued
    QuadLoads ld[QuadsOf<NT, WARPS>::PER_THREAD];
    if (grp + 1 < gend) load_group_b<NT, WARPS>(ld, down, inv, (grp + 1) * GROUP);
    float iv[16];                                        // 1/λ of this thread's 16 columns, 16q..16q + 15
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 v = b.inv[4 * q + j];
      iv[4 * j] = v.x; iv[4 * j + 1] = v.y; iv[4 * j + 2] = v.z; iv[4 * j + 3] = v.w;
    }
    // the rows' max |x̂|: the reference's product x · (1/λ), rounded to float32
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      big0 = fmaxf(big0, fmaxf(fabsf(__fmul_rn(bf16_lo(xa[j]), iv[2 * j])), fabsf(__fmul_rn(bf16_hi(xa[j]), iv[2 * j + 1]))));
      big1 = fmaxf(big1, fmaxf(fabsf(__fmul_rn(bf16_lo(xb[j]), iv[2 * j])), fabsf(__fmul_rn(bf16_hi(xb[j]), iv[2 * j + 1]))));
    }
    // k-step s: columns 16q + 4s + {0, 1} (a0, a1, b0) and + {2, 3} (a2, a3, b1)
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t a[4] = {xa[2 * s], xb[2 * s], xa[2 * s + 1], xb[2 * s + 1]};
#pragma unroll
      for (int h = 0; h < NT / 2; ++h) {
        const uint4 bh = b.hi[s][h][lane], bl = b.lo[s][h][lane];
        mma_bf16_16816(acc[2 * h], a, bh.x, bh.y);
        mma_bf16_16816(acc[2 * h], a, bl.x, bl.y);
        mma_bf16_16816(acc[2 * h + 1], a, bh.z, bh.w);
        mma_bf16_16816(acc[2 * h + 1], a, bl.z, bl.w);
      }
    }
    if (grp + 1 < gend) make_group_b<NT, WARPS>(bs[(grp + 1 - gbeg) & 1], ld);
    __syncthreads();                     // the next group's B made; this group's read before it is made again
  }

  // the rows' maxima over the four threads of each row
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    big0 = fmaxf(big0, __shfl_xor_sync(0xffffffffu, big0, o));
    big1 = fmaxf(big1, __shfl_xor_sync(0xffffffffu, big1, o));
  }
  if (q == 0) {
    if (in0) part[(size_t)split * M + row0] = big0;
    if (in1) part[(size_t)split * M + row1] = big1;
  }
  // accumulator t: (row0, logical n 2q and 2q + 1) in [0], [1], row1 in [2], [3]; logical n is rank n · NT + t, so
  // a thread's 2·NT ranks of a row are contiguous: stored as float4s
  float4* out0 = reinterpret_cast<float4*>(lrp + ((size_t)split * M + row0) * R + 2 * q * NT);
  float4* out1 = reinterpret_cast<float4*>(lrp + ((size_t)split * M + row1) * R + 2 * q * NT);
#pragma unroll
  for (int u = 0; u < NT / 2; ++u) {
    float v0[4], v1[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int n = 4 * u + e;                           // rank 2q·NT + n: accumulator n % NT, its column n / NT
      v0[e] = acc[n % NT][n / NT];
      v1[e] = acc[n % NT][2 + n / NT];
    }
    if (in0) out0[u] = make_float4(v0[0], v0[1], v0[2], v0[3]);
    if (in1) out1[u] = make_float4(v1[0], v1[1], v1[2], v1[3]);
  }
  if (lrsum == nullptr) return;

  // the last of the row block's splits to finish sums the partials in split order and re-arms its counter
  __shared__ int last;
  __threadfence();                       // this block's partials are visible before it counts itself
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1) == S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // the row block's partials of one split are contiguous (rows × R floats): each thread sums R / 8 float4s of them
  // over the splits, the splits' loads outermost so that each step's loads are in flight together
  const int first = blockIdx.x * rows_per_block;
  const int n4 = min(M - first, rows_per_block) * R / 4;
  constexpr int V = R / 8;
  const float4* src = reinterpret_cast<const float4*>(lrp + (size_t)first * R);
  const size_t step = (size_t)M * R / 4;
  float4 tot[V];
#pragma unroll
  for (int v = 0; v < V; ++v) tot[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int t = 0; t < S; ++t) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int j = threadIdx.x + v * 32 * WARPS;
      if (j < n4) {
        const float4 p = __ldcg(src + t * step + j);
        tot[v].x += p.x; tot[v].y += p.y; tot[v].z += p.z; tot[v].w += p.w;
      }
    }
  }
  float4* dst = reinterpret_cast<float4*>(lrsum + (size_t)first * R);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int j = threadIdx.x + v * 32 * WARPS;
    if (j < n4) dst[j] = tot[v];
  }
  if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
}

}  // namespace

// The binding checks shapes, dtypes and alignment first (kernels/w4a4_small_m_binding.cpp). warps: 4 or 8 (blocks of
// 64 or 128 rows); R: 16, 32 or 64. Returns cudaErrorInvalidValue for anything else.
cudaError_t var_gen_row_pass(const void* x, const float* inv, const void* down, float* part, float* lrp, float* lrsum,
                             int* cnt, int M, int K, int R, int gps, int warps, cudaStream_t stream) {
  if (M < 1 || K % GROUP || gps < 1 || gps > K / GROUP || (warps != 4 && warps != 8)) return cudaErrorInvalidValue;
  const int S = (K / GROUP + gps - 1) / gps;
  const dim3 grid((M + 16 * warps - 1) / (16 * warps), S), block(32 * warps);
  const auto* xp = static_cast<const uint16_t*>(x);
  const auto* dp = static_cast<const uint16_t*>(down);
#define VAR_GEN_ROW_PASS(NT)                                                                                          \
  (warps == 8 ? row_pass_kernel<NT, 8><<<grid, block, 0, stream>>>(xp, inv, dp, part, lrp, lrsum, cnt, M, K, gps)     \
              : row_pass_kernel<NT, 4><<<grid, block, 0, stream>>>(xp, inv, dp, part, lrp, lrsum, cnt, M, K, gps))
  if (R == 16) VAR_GEN_ROW_PASS(2);
  else if (R == 32) VAR_GEN_ROW_PASS(4);
  else if (R == 64) VAR_GEN_ROW_PASS(8);
  else return cudaErrorInvalidValue;
#undef VAR_GEN_ROW_PASS
  return cudaGetLastError();
}
