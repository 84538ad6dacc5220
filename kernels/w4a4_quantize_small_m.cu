// Kernel 1 of the W4A4 product for few rows (M <= 32), in CUDA C++: the activations' two-level INT4
// quantization (quant/int4.py `two_level`, `quantize_groups`) into the i8 layout's q·m, and the low-rank
// branch's down-projection x̂·L_down, in one launch.
//
// Why: at 2-32 rows the Triton kernel 1 is two launches (a row pass for the rows' units, then the codes and
// the low-rank partials over up to 56 K splits, the last split summing the partials through an atomic counter)
// and takes 9-18 µs (H100, eighteenth session), as long as the small-M GEMM after it, for a few kilobytes of
// activations. Here one grid of S blocks, each a slice of whole 64-wide groups of K and every row:
//   1. loads its slice of x, makes x̂ = x · (1/λ) (the IEEE reciprocal the reference uses, precomputed) into
//      shared memory and publishes its rows' max |x̂|;
//   2. waits at a grid barrier (an atomic counter; the launch asks for at most one block per SM, so every block
//      is resident and the spin cannot starve; a wait over 2 s traps, failing the launch with an error rather than
//      spinning for ever) and takes each row's unit u from all slices. (Under MPS with an
//      active-thread percentage that leaves fewer SMs than the blocks, two blocks per SM still fit by registers
//      and shared memory; below half the SMs the barrier could wait for ever. A cooperative launch would check
//      it, but was not tried in a CUDA graph. The product runs this kernel up to 8 rows
//      (VAR_GEN_W4A4_QUANT_CUDA_MAX_M, kernels/w4a4_gemm_triton.py; 0 turns it off).)
//   3. quantizes its groups (one warp per row and group): m = clamp(ceil((amax · 1/7) / u), 1, 16),
//      q = clamp(rint(x̂ · (1/(u·m))), -8, 7), stores q·m as int8, the same IEEE operations in the same order
//      as the reference and the Triton kernel, so the same bits;
//   4. computes its slice's low-rank partial x̂·L_down in float32 FMAs (warps over runs of columns, lanes over
//      ranks, every row's sum in registers; the slice's L_down rows copied into shared memory by cp.async at the
//      start, behind the loads and the barrier) and stores it; the GEMM's epilogue sums the S partials in slice
//      order. The last block to finish re-arms both counters, so one zeroed pair serves every call, eager or in a
//      CUDA graph.
#include <cuda_runtime.h>
#include <stdint.h>

#include "w4a4_common.cuh"

namespace {

using var_gen::to_float;

constexpr int THREADS = 256;
constexpr int MAX_M = 32;
constexpr int MAX_RANK = 64;
constexpr int GROUP = 64;
// dynamic shared memory per block: x̂ of the slice, M x max(L, 256) floats (256: the low-rank runs' sums), and
// the slice's L_down rows (L x R 16-bit), within the 48 KB a block gets without opting in, less the static arrays
constexpr int MAX_DYNAMIC_SMEM = 46 * 1024;
__host__ __device__ constexpr size_t smem_bytes(int M, int gps, int R) {
  return sizeof(float) * (size_t)M * (gps * GROUP > 256 ? gps * GROUP : 256) + 2 * (size_t)gps * GROUP * R;
}

constexpr unsigned long long BARRIER_TIMEOUT_NS = 2000000000ull;   // 2 s: the barrier's wait is ~1 µs

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem));
}

// x (M, K) and L_down (K, R) in T; inv (K,) float32 = 1/λ; q (M, K) int8 q·m; ux (M,) units; part (S, M) float32
// scratch; lrp (S, M, R) float32: each slice's low-rank partial (the GEMM's epilogue sums them in slice order);
// cnt two zeroed int32 counters.
template <typename T>
__global__ void __launch_bounds__(THREADS) quantize_small_m_kernel(
    const uint16_t* __restrict__ x, const float* __restrict__ inv, const uint16_t* __restrict__ down,
    int8_t* __restrict__ q, float* __restrict__ ux, float* part, float* __restrict__ lrp, int* cnt, int M, int K,
    int R, int gps, float inv7) {
  // dynamic shared memory: x̂ of the slice (M, L) floats (later the low-rank runs' sums, (8, M, 32)), then the
  // slice's rows of L_down (L, R) as stored
  extern __shared__ float xs[];
  __shared__ int row_max[MAX_M];       // max |x̂| per row (non-negative floats order as their int bits)
  __shared__ float unit[MAX_M];
  const int G = K / GROUP;
  const int g0 = blockIdx.x * gps, ng = min(gps, G - g0), L = ng * GROUP, c0 = g0 * GROUP;
  const int S = gridDim.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint16_t* down_s = reinterpret_cast<uint16_t*>(xs + (size_t)M * max(gps * GROUP, 256));
#if defined(__CUDACC_VER_MAJOR__) && __CUDACC_VER_MAJOR__ >= 12 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // a GEMM launched after this kernel as a programmatic dependent (kernels/w4a4_small_m.cu, VAR_GEN_W4A4_PDL=1) may
  // start now: it fetches its weights into the L2 while this runs and waits for this grid's end before reading
  // anything written here. (Once every block has passed this point they are all resident, so the dependent's
  // blocks cannot keep one from the grid barrier below.) Without such a dependent it does nothing.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  // the slice's L_down rows start on their way first (contiguous: L·R 16-bit values, 16 bytes per copy)
  if (R > 0) {
    const char* src = reinterpret_cast<const char*>(down + (size_t)c0 * R);
    for (int i = threadIdx.x; i < L * R / 8; i += THREADS) cp_async16(down_s + 8 * i, src + 16 * i);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  if (threadIdx.x < MAX_M) row_max[threadIdx.x] = 0;
  __syncthreads();

  // 1. x̂ of the slice, 8 elements (16 bytes) per load
  const int chunks = L / 8;
  for (int i = threadIdx.x; i < M * chunks; i += THREADS) {
    const int row = i / chunks, c = (i % chunks) * 8;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(x + (size_t)row * K + c0 + c));
    const float4 i0 = __ldg(reinterpret_cast<const float4*>(inv + c0 + c));
    const float4 i1 = __ldg(reinterpret_cast<const float4*>(inv + c0 + c + 4));
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    const float invs[8] = {i0.x, i0.y, i0.z, i0.w, i1.x, i1.y, i1.z, i1.w};
    float big = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float xv = to_float<T>((uint16_t)(words[j / 2] >> (16 * (j % 2))));
      const float s = __fmul_rn(xv, invs[j]);
      xs[row * L + c + j] = s;
      big = fmaxf(big, fabsf(s));
    }
    atomicMax(&row_max[row], __float_as_int(big));
  }
  __syncthreads();
  if (threadIdx.x < M) {
    part[blockIdx.x * M + threadIdx.x] = __int_as_float(row_max[threadIdx.x]);
    row_max[threadIdx.x] = 0;          // reused below for the maxima over every slice
  }

  // 2. grid barrier: every slice's row maxima published; then each row's maximum over the slices, one load per
  //    thread and (slice, row)
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(&cnt[0], 1);
    // a barrier still waiting after BARRIER_TIMEOUT_NS traps: the launch then fails with an error the host sees,
    // instead of the GPU spinning for ever (blocks not all resident, or counters not zeroed)
    const unsigned long long t0 = global_ns();
    while (atomicAdd(&cnt[0], 0) < S) {
      __nanosleep(20);
      if (global_ns() - t0 > BARRIER_TIMEOUT_NS) __trap();
    }
  }
  __syncthreads();
  __threadfence();
  for (int i = threadIdx.x; i < S * M; i += THREADS) atomicMax(&row_max[i % M], __float_as_int(__ldcg(part + i)));
  __syncthreads();
  if (threadIdx.x < M) {
    const float top = __fmul_rn(__int_as_float(row_max[threadIdx.x]), inv7);   // max_g(amax_g) · 1/7 = max_g(amax_g · 1/7)
    const float u = top > 0.0f ? __fmul_rn(top, 0.0625f) : 0.0625f;
    unit[threadIdx.x] = u;
    if (blockIdx.x == 0) ux[threadIdx.x] = u;
  }
  __syncthreads();

  // 3. codes: one warp per (row, group), two elements per lane
  for (int p = warp; p < M * ng; p += THREADS / 32) {
    const int row = p / ng, g = p % ng;
    const float* v = xs + row * L + g * GROUP;
    const float a = v[lane], b = v[lane + 32];
    const float amax = warp_max(fmaxf(fabsf(a), fabsf(b)));
    const float u = unit[row];
    const float m = fminf(fmaxf(ceilf(__fdiv_rn(__fmul_rn(amax, inv7), u)), 1.0f), 16.0f);
    const float r = __fdiv_rn(1.0f, __fmul_rn(u, m));
    const float qa = fminf(fmaxf(rintf(__fmul_rn(a, r)), -8.0f), 7.0f);
    const float qb = fminf(fmaxf(rintf(__fmul_rn(b, r)), -8.0f), 7.0f);
    int8_t* out = q + (size_t)row * K + c0 + g * GROUP;
    out[lane] = (int8_t)__float2int_rn(qa * m);                // |q·m| <= 128: exact
    out[lane + 32] = (int8_t)__float2int_rn(qb * m);
  }

  // 4. the slice's low-rank partial x̂·L_down: warp w takes the w-th run of the slice's columns, lane l the ranks
  //    r = r0 + l, and each thread keeps all M rows' sums (independent FMAs; x̂ read as a broadcast, L_down from
  //    shared memory); the runs' sums then meet in shared memory (over x̂, no longer needed) in run order
  if (R > 0) {
    constexpr int WARPS = THREADS / 32;
    const int k0 = L * warp / WARPS, k1 = L * (warp + 1) / WARPS;
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();                   // every thread's copies of L_down landed
    for (int r0 = 0; r0 < R; r0 += 32) {
      const int r = r0 + lane;
      float acc[MAX_M];
#pragma unroll
      for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
      if (r < R) {
#pragma unroll 4
        for (int k = k0; k < k1; ++k) {
          const float d = to_float<T>(down_s[k * R + r]);
#pragma unroll
          for (int m = 0; m < MAX_M; ++m)
            if (m < M) acc[m] = fmaf(xs[m * L + k], d, acc[m]);
        }
      }
      __syncthreads();                 // every read of x̂ (codes, dots) done before it is overwritten
#pragma unroll
      for (int m = 0; m < MAX_M; ++m)
        if (m < M) xs[(warp * M + m) * 32 + lane] = acc[m];
      __syncthreads();
      for (int i = threadIdx.x; i < M * 32; i += THREADS) {
        const int m = i / 32, rr = r0 + i % 32;
        if (rr >= R) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) sum += xs[(w * M + m) * 32 + i % 32];
        lrp[(size_t)blockIdx.x * M * R + m * R + rr] = sum;
      }
      if (r0 + 32 < R) {               // a second pass (R > 32) needs x̂ again: reload it (same bits)
        __syncthreads();
        for (int i = threadIdx.x; i < M * L; i += THREADS) {
          const int row = i / L, c = i % L;
          xs[i] = __fmul_rn(to_float<T>(x[(size_t)row * K + c0 + c]), inv[c0 + c]);
        }
        __syncthreads();
      }
    }
  }

  // the last block to finish re-arms the counters (every block is past the barrier once it has counted itself)
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(&cnt[1], 1) == S - 1) {
    cnt[0] = 0;
    cnt[1] = 0;
  }
}

template <typename T>
cudaError_t launch(const void* x, const float* inv, const void* down, int8_t* q, float* ux, float* part, float* lrp,
                   int* cnt, int M, int K, int R, int gps, float inv7, cudaStream_t stream) {
  const int G = K / GROUP, S = (G + gps - 1) / gps;
  // the grid barrier needs every block resident at once: at most one block per SM is asked for (one always
  // fits: 256 threads and at most 48 KB of shared memory)
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  if (S > sms) return cudaErrorCooperativeLaunchTooLarge;
  quantize_small_m_kernel<T><<<S, THREADS, smem_bytes(M, gps, R), stream>>>(
      static_cast<const uint16_t*>(x), inv, static_cast<const uint16_t*>(down), q, ux, part, lrp, cnt, M, K, R, gps,
      inv7);
  return cudaGetLastError();
}

}  // namespace

// Whether a block with M rows, gps groups and rank R fits its dynamic shared memory (the binding's check).
bool var_gen_quantize_small_m_fits(int M, int gps, int R) { return smem_bytes(M, gps, R) <= MAX_DYNAMIC_SMEM; }

// dtype 0: fp16 (x and L_down), 1: bf16. The caller checks the shapes first (1 <= M <= 32, K % 64 == 0,
// 0 <= R <= 64, gps groups of 64 per block, M · max(gps · 64, 256) floats + gps · 64 · R halves of shared memory
// within 46 KB); returns cudaErrorInvalidValue otherwise, cudaErrorCooperativeLaunchTooLarge when the grid
// (K / 64 / gps blocks) has more blocks than the GPU has SMs.
cudaError_t var_gen_quantize_small_m(int dtype, const void* x, const float* inv, const void* down, int8_t* q,
                                     float* ux, float* part, float* lrp, int* cnt, int M, int K, int R, int gps,
                                     float inv7, cudaStream_t stream) {
  if (M < 1 || M > MAX_M || K % GROUP || R < 0 || R > MAX_RANK || gps < 1 || gps > K / GROUP ||
      smem_bytes(M, gps, R) > MAX_DYNAMIC_SMEM)
    return cudaErrorInvalidValue;
  if (dtype == 1)
    return launch<__nv_bfloat16>(x, inv, down, q, ux, part, lrp, cnt, M, K, R, gps, inv7, stream);
  return launch<__half>(x, inv, down, q, ux, part, lrp, cnt, M, K, R, gps, inv7, stream);
}
