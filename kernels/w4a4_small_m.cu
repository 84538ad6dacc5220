// The W4A4 GEMM for few rows (M <= 32: the first scales of a generation, CFG batch x tokens), in CUDA C++.
//
// Why not the Triton i8 kernel there: at M <= 32 the product is bound by streaming the packed weights (N·K/2
// bytes), and Triton's loop spends ~8 instructions per weight unpacking nibbles into the dot's operand
// layout (a round trip through shared memory every group) and rescaling (docs/BENCHMARKS.md, Kernels v4).
// Here each thread loads exactly the bytes its mma.sync fragment needs, with no shuffle:
//
// * K order inside a 64-wide group is free (both operands only need the same order), so thread t of a
//   quad takes the group's packed bytes [8t, 8t + 8) of a weight row (natural k in [16t, 16t + 16)) as its
//   A fragments of two m16n8k32 steps, and the activations' bytes [16t, 16t + 16) of a token as its B
//   fragments: one 8-byte load per weight row, one 16-byte load per token, per group.
// * The weights enter the MMA as their raw INT4 codes (sign-extended bytes, 3 integer ops per 4 codes);
//   the per-group weight multiplier m (two-level scales s = u·m, quant/int4.py) is applied to the group's
//   int32 partial: acc += m · Σ_group q_w·(q·m)_x, exact in int32 (|Σ| <= 8·128·64·16·G < 2^31).
// * The activations arrive as kernel 1's int8 q·m with one unit u_x per row, so the epilogue is
//   acc · u_x · u_w + the low-rank up-projection (kernel 1's float32 partials · L_up) + bias, then GELU.
//
// Layout: a block of WARPS (4 or 8) warps owns ROWS = 32 output columns (weight rows) and every token; its
// warps take contiguous slices of K and sum their int32 tiles in shared memory. With SPLITS > 1 blocks along
// grid.y take further slices of K and add their tiles into an int32 workspace (integer atomics: the sum is
// the same whatever the order); the last block of a column tile (an atomic counter) reads and re-zeroes the
// workspace, runs the epilogue and re-arms the counter, so one zeroed workspace and counter buffer serve
// every call, eager or replayed in a CUDA graph.
//
// Programmatic dependent launch (sm_90, the PDL instantiations; off unless VAR_GEN_W4A4_PDL=1,
// kernels/w4a4_small_m_cuda.py): the launch lets the blocks start while the kernel before it (kernel 1, which
// signals its dependents as it starts) still runs. Until `griddepcontrol.wait` a block touches only the layer's own tensors, which nothing in the stream
// writes: it zeroes its tile, reads its weight units and asks the L2 for its slice of the packed weights and their
// scales, so that the loop reads them from the L2 rather than from HBM (at 2-8 rows the weights are ~all the
// bytes). The wait returns once the kernel before has finished and its writes are visible; every read of the
// activations, units and low-rank partials and every write (y, the workspace, the counters) comes after it, so the
// results are the same bits as without it. The default launch runs the instantiations without any of this.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "w4a4_common.cuh"

namespace {

using var_gen::from_float;
using var_gen::to_float;

// Four bytes each holding a code 0..15 (two's complement nibble) -> four signed int8: the bytes with bit 3 set
// get 0xF0 or'ed in (0x08 · 0x1E = 0xF0, no carry between bytes).
__device__ __forceinline__ uint32_t sign_extend_nibbles(uint32_t x) { return x | ((x & 0x08080808u) * 0x1Eu); }

// D += A·B, m16n8k32, int8 x int8 -> int32 (sm_80+: Ampere, the Orin's sm_87, Hopper).
__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One packed word (4 bytes: 8 codes, natural k = 2j, 2j+1 in byte j) -> the A registers of one k32 step:
// lo4 holds k 0..3 (mma k 4t..4t+3), hi4 k 4..7 (mma k 16+4t..).
__device__ __forceinline__ void unpack_word(uint32_t w, uint32_t& lo4, uint32_t& hi4) {
  const uint32_t lo = sign_extend_nibbles(w & 0x0F0F0F0Fu);         // codes of k = 0, 2, 4, 6
  const uint32_t hi = sign_extend_nibbles((w >> 4) & 0x0F0F0F0Fu);  // codes of k = 1, 3, 5, 7
  lo4 = __byte_perm(lo, hi, 0x5140);                                // k 0, 1, 2, 3
  hi4 = __byte_perm(lo, hi, 0x7362);                                // k 4, 5, 6, 7
}

constexpr int MAX_RANK = 64;   // the low-rank branch's rank the epilogue stages in shared memory

// Programmatic dependent launch needs CUDA 12 (PTX ISA 8.0 for the bulk prefetch, cudaLaunchKernelEx's attribute);
// an older toolkit builds the extension without it, and asking for it then fails the call with a message.
#if defined(__CUDACC_VER_MAJOR__) && __CUDACC_VER_MAJOR__ >= 12
#define VAR_GEN_HAS_PDL 1
#else
#define VAR_GEN_HAS_PDL 0
#endif

// The L2 prefetch of `bytes` (a multiple of 16) from a 16-byte aligned global address, and the wait for the
// kernel this one depends on programmatically: both sm_90 (Hopper's bulk copy engine and grid dependency control).
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if VAR_GEN_HAS_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void wait_for_prior_grid() {
#if VAR_GEN_HAS_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ float gelu_tanh(float x) {
  // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), as the Triton epilogue computes it
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + expf(-2.0f * u));
}

template <int MT, int NT, int WARPS, bool PDL, typename T>
__global__ void __launch_bounds__(WARPS * 32) w4a4_small_m_kernel(
    const int8_t* __restrict__ a, const float* __restrict__ ux, const uint8_t* __restrict__ w,
    const uint16_t* __restrict__ sw, const float* __restrict__ wu, const float* __restrict__ lr,
    const uint16_t* __restrict__ up, const uint16_t* __restrict__ bias, T* __restrict__ y, int32_t* __restrict__ ws,
    int32_t* __restrict__ cnt, int M, int N, int K, int R, int S, int act) {
  constexpr int ROWS = 16 * MT, TOKS = 8 * NT;
  static_assert(ROWS == 32, "the weight prefetch gives each lane of a warp one row of the block");
  __shared__ int32_t tile[ROWS * TOKS];
  // the epilogue's low-rank operands, staged once per block: the tokens' summed partials and the block's rows
  // of L_up (one row per thread in the dot below: a stride of R + 1 words keeps the 32 rows in distinct banks)
  __shared__ float lr_s[TOKS * MAX_RANK];
  __shared__ float up_s[ROWS * (MAX_RANK + 1)];
  __shared__ int is_last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gid = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * ROWS;
  const int G = K / 64;
  const int splits = gridDim.y * WARPS, split = blockIdx.y * WARPS + warp;
  const int g_begin = (int)((long long)G * split / splits), g_end = (int)((long long)G * (split + 1) / splits);
  for (int i = threadIdx.x; i < ROWS * TOKS; i += WARPS * 32) tile[i] = 0;
  if (PDL && g_end > g_begin) {   // lane l: this warp's slice of K in the block's weight row l, and its scales
    // (only in the dependent launch's own instantiation: the default one compiles to the code measured since the
    // nineteenth session, registers included)
    const int row = n0 + lane;
    prefetch_l2(w + (size_t)row * (K / 2) + g_begin * 32, (uint32_t)(g_end - g_begin) * 32);
    // the scales' 16-byte units inside the slice (the bulk prefetch's granule; a few bytes at its ends are not
    // asked for rather than any outside the tensor)
    const uintptr_t s0 = ((uintptr_t)(sw + (size_t)row * G + g_begin) + 15) & ~(uintptr_t)15;
    const uintptr_t s1 = (uintptr_t)(sw + (size_t)row * G + g_end) & ~(uintptr_t)15;
    if (s1 > s0) prefetch_l2(reinterpret_cast<const void*>(s0), (uint32_t)(s1 - s0));
  }

  const uint8_t* wrow[MT][2];
  const uint16_t* srow[MT][2];
  float inv_u[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = n0 + 16 * mt + gid + 8 * h;
      wrow[mt][h] = w + (size_t)row * (K / 2) + 8 * t;
      srow[mt][h] = sw + (size_t)row * G;
      inv_u[mt][h] = __frcp_rn(wu[row]);   // m = rint(s · (1/u)), as the Triton kernels make it
    }
  const int8_t* arow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) arow[nt] = a + (size_t)min(8 * nt + gid, M - 1) * K + 16 * t;  // past M: ignored
  if (PDL) wait_for_prior_grid();   // kernel 1's a, ux and lr are written and visible from here (see the head)

  int32_t acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

#pragma unroll 2
  for (int g = g_begin; g < g_end; ++g) {
    uint2 wv[MT][2];
    int mult[MT][2];
    uint4 av[NT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        wv[mt][h] = __ldg(reinterpret_cast<const uint2*>(wrow[mt][h] + g * 32));
        mult[mt][h] = __float2int_rn(to_float<T>(__ldg(srow[mt][h] + g)) * inv_u[mt][h]);
      }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) av[nt] = __ldg(reinterpret_cast<const uint4*>(arow[nt] + g * 64));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      uint32_t a_lo[2][2], a_hi[2][2];   // [k32 step][row gid / gid + 8]
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        unpack_word(wv[mt][h].x, a_lo[0][h], a_hi[0][h]);   // natural k 16t + 0..7
        unpack_word(wv[mt][h].y, a_lo[1][h], a_hi[1][h]);   // natural k 16t + 8..15
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        int32_t part[4] = {0, 0, 0, 0};
        mma_s8(part, a_lo[0][0], a_lo[0][1], a_hi[0][0], a_hi[0][1], av[nt].x, av[nt].y);
        mma_s8(part, a_lo[1][0], a_lo[1][1], a_hi[1][0], a_hi[1][1], av[nt].z, av[nt].w);
        acc[mt][nt][0] += mult[mt][0] * part[0];
        acc[mt][nt][1] += mult[mt][0] * part[1];
        acc[mt][nt][2] += mult[mt][1] * part[2];
        acc[mt][nt][3] += mult[mt][1] * part[3];
      }
    }
  }
  __syncthreads();   // the tile is zeroed
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 16 * mt + gid + 8 * (i >> 1), c = 8 * nt + 2 * t + (i & 1);
        atomicAdd(&tile[r * TOKS + c], acc[mt][nt][i]);
      }
  __syncthreads();

  if (gridDim.y > 1) {   // further K slices in other blocks: add into the workspace, the last block finishes
    for (int i = threadIdx.x; i < ROWS * TOKS; i += WARPS * 32) {
      const int tok = i / ROWS, r = i % ROWS;
      if (tok < M) atomicAdd(&ws[(size_t)tok * N + n0 + r], tile[r * TOKS + tok]);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&cnt[blockIdx.x], 1) == (int)gridDim.y - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
  }
  if (R > 0) {
    for (int i = threadIdx.x; i < TOKS * R; i += WARPS * 32) {
      const int tok = i / R, k = i % R;
      float part = 0.0f;
      for (int s = 0; s < S && tok < M; ++s) part += lr[((size_t)s * M + tok) * R + k];
      lr_s[tok * MAX_RANK + k] = part;
    }
    for (int i = threadIdx.x; i < ROWS * R; i += WARPS * 32)
      up_s[(i / R) * (MAX_RANK + 1) + i % R] = to_float<T>(up[(size_t)n0 * R + i]);   // rows n0.. are contiguous
    __syncthreads();
  }
  for (int i = threadIdx.x; i < ROWS * TOKS; i += WARPS * 32) {
    const int tok = i / ROWS, r = i % ROWS, n = n0 + r;   // consecutive threads: consecutive columns of y
    if (tok >= M) continue;
    const int32_t total = gridDim.y > 1 ? atomicExch(&ws[(size_t)tok * N + n], 0) : tile[r * TOKS + tok];
    float v = (float)total * (ux[tok] * wu[n]);
    if (R > 0) {
      float l = 0.0f;
      for (int k = 0; k < R; ++k) l = fmaf(lr_s[tok * MAX_RANK + k], up_s[r * (MAX_RANK + 1) + k], l);
      v += l;
    }
    if (bias != nullptr) v += to_float<T>(bias[n]);
    if (act == 1) v = gelu_tanh(v);
    y[(size_t)tok * N + n] = from_float<T>(v);
  }
  if (gridDim.y > 1 && threadIdx.x == 0) cnt[blockIdx.x] = 0;   // re-armed for the next call
}

template <int WARPS, int NT, typename T>
cudaError_t launch(const void* a, const float* ux, const void* w, const void* sw, const float* wu, const float* lr,
                   const void* up, const void* bias, void* y, int32_t* ws, int32_t* cnt, int M, int N, int K, int R,
                   int S, int splits, int act, bool pdl, cudaStream_t stream) {
  constexpr int MT = 2;   // 32 columns per block (64 measured slower at every shape and M, H100)
  const dim3 grid(N / (16 * MT), splits);
  if (!pdl) {
    w4a4_small_m_kernel<MT, NT, WARPS, false, T><<<grid, WARPS * 32, 0, stream>>>(
        static_cast<const int8_t*>(a), ux, static_cast<const uint8_t*>(w), static_cast<const uint16_t*>(sw), wu, lr,
        static_cast<const uint16_t*>(up), static_cast<const uint16_t*>(bias), static_cast<T*>(y), ws, cnt, M, N, K, R,
        S, act);
    return cudaGetLastError();
  }
#if !VAR_GEN_HAS_PDL
  return cudaErrorNotSupported;
#else
  // may start before the kernel ahead of it in the stream ends (see the head)
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(WARPS * 32);
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, w4a4_small_m_kernel<MT, NT, WARPS, true, T>, static_cast<const int8_t*>(a), ux,
                            static_cast<const uint8_t*>(w), static_cast<const uint16_t*>(sw), wu, lr,
                            static_cast<const uint16_t*>(up), static_cast<const uint16_t*>(bias), static_cast<T*>(y),
                            ws, cnt, M, N, K, R, S, act);
#endif
}

template <typename T>
cudaError_t launch_nt(int warps, const void* a, const float* ux, const void* w, const void* sw, const float* wu,
                      const float* lr, const void* up, const void* bias, void* y, int32_t* ws, int32_t* cnt, int M,
                      int N, int K, int R, int S, int splits, int act, bool pdl, cudaStream_t stream) {
#define VAR_GEN_SMALL_M_CASE(W_, NT_)                                                                       \
  if (warps == W_ && M <= 8 * NT_)                                                                           \
    return launch<W_, NT_, T>(a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, pdl, stream);
  VAR_GEN_SMALL_M_CASE(4, 1)
  VAR_GEN_SMALL_M_CASE(4, 2)
  VAR_GEN_SMALL_M_CASE(4, 4)
  VAR_GEN_SMALL_M_CASE(8, 1)
  VAR_GEN_SMALL_M_CASE(8, 2)
  VAR_GEN_SMALL_M_CASE(8, 4)
#undef VAR_GEN_SMALL_M_CASE
  return cudaErrorInvalidValue;
}

}  // namespace

// Whether this build can launch the GEMM as a programmatic dependent launch (CUDA 12 at build time).
bool var_gen_w4a4_small_m_has_pdl() { return VAR_GEN_HAS_PDL; }

// dtype 0: fp16 (activations' dtype = y, weight scales, L_up and bias), 1: bf16. Returns cudaErrorInvalidValue
// for shapes the kernel does not take (the caller checks them first: M <= 32, N % 32 == 0, K % 64 == 0,
// R <= 64, 4 or 8 warps, each warp at least one group). pdl: a programmatic dependent launch (sm_90; the caller
// asks only there).
cudaError_t var_gen_w4a4_small_m(int dtype, int warps, const void* a, const float* ux, const void* w, const void* sw,
                                 const float* wu, const float* lr, const void* up, const void* bias, void* y,
                                 int32_t* ws, int32_t* cnt, int M, int N, int K, int R, int S, int splits, int act,
                                 bool pdl, cudaStream_t stream) {
  if (M < 1 || M > 32 || K % 64 || N % 32 || R < 0 || R > MAX_RANK || (warps != 4 && warps != 8) || splits < 1 ||
      splits * warps > K / 64)
    return cudaErrorInvalidValue;
  if (dtype == 1)
    return launch_nt<__nv_bfloat16>(warps, a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act,
                                    pdl, stream);
  return launch_nt<__half>(warps, a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, pdl,
                           stream);
}
