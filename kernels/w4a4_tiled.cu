// The W4A4 GEMM for tens to hundreds of rows (the middle scales of a generation: 32-288 rows with CFG), in
// CUDA C++. Same operands, fragments and integer arithmetic as kernels/w4a4_small_m.cu (read that first);
// what changes is how the operands reach the warps.
//
// Why a second kernel: the small-M kernel gives each warp its own slice of K and every token, so its
// accumulators grow with the tokens (140 registers at 32 rows: one block per SM, three waves of serial load
// latency), and each of its 32-column blocks re-reads every activation row from L2 (at 128 rows and
// 3584 -> 10752 that is 154 MB of L2 reads for 19 MB of weights). The Triton i8 kernel at these rows takes
// 1.5-1.8x its 32-row time (seventeenth session), bound by its nibble shuffle through shared memory.
//
// Here a block owns a BN x BT tile of the output (BN = 32 * WN weight rows, BT = 32 * WT tokens) and WN x WT
// warps each a 32 x 32 sub-tile (2 x 4 mma tiles, 32 int32 accumulators per thread). The block's operands
// for two 64-wide groups of K (one pipeline stage: BN x 64 weight bytes, BT x 128 activation bytes, BN x 2
// scales) are copied global -> shared with cp.async, STAGES stages in flight, so every block keeps several
// KB of loads outstanding while it multiplies; each activation row is read from L2 once per BN columns. The
// warps then load their fragments from shared memory exactly as the small-M kernel loads them from global
// memory (the same K order within a group: 8 weight bytes per row, 16 activation bytes per token, no
// shuffle; rows of 32 / 64 bytes make each such warp load one contiguous span, free of bank conflicts).
//
// Split-K and the epilogue: blocks along grid.y take contiguous slices of K's stages and add their int32
// tiles into the zeroed workspace with integer atomics (any order gives the same bits); the last block of
// a tile (a counter per tile) reads and re-zeroes it. The low-rank up-projection runs on the tensor cores:
// L_up (16-bit, exact in tf32) times the float32 partials split into two tf32 parts (hi + lo, ~2^-22 of
// each partial, like the Triton epilogue's tf32x3), m16n8k8, whose accumulator layout is the int8 MMA's,
// so each thread adds it to its own accumulators; then units, bias, GELU, 16-bit stores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

template <typename T> __device__ __forceinline__ float to_float(uint16_t bits);
template <> __device__ __forceinline__ float to_float<__half>(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(uint16_t bits) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ uint32_t sign_extend_nibbles(uint32_t x) { return x | ((x & 0x08080808u) * 0x1Eu); }

__device__ __forceinline__ void mma_s8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// D += A·B, m16n8k8, tf32 x tf32 -> f32: A (16 x 8) a0 (gid, t), a1 (gid + 8, t), a2 (gid, t + 4), a3 (gid + 8,
// t + 4); B (8 x 8) b0 (t, gid), b1 (t + 4, gid); D as the int8 MMA's.
__device__ __forceinline__ void mma_tf32(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void unpack_word(uint32_t w, uint32_t& lo4, uint32_t& hi4) {
  const uint32_t lo = sign_extend_nibbles(w & 0x0F0F0F0Fu);
  const uint32_t hi = sign_extend_nibbles((w >> 4) & 0x0F0F0F0Fu);
  lo4 = __byte_perm(lo, hi, 0x5140);
  hi4 = __byte_perm(lo, hi, 0x7362);
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + expf(-2.0f * u));
}

constexpr int KG = 2;          // 64-wide groups per pipeline stage (K % 128 == 0)
constexpr int STAGES = 4;      // stages in flight
constexpr int MAX_RANK = 64;

template <int WN, int WT>
struct Tile {
  static constexpr int BN = 32 * WN, BT = 32 * WT, THREADS = 32 * WN * WT;
  static constexpr int W_BYTES = KG * BN * 32, A_BYTES = KG * BT * 64, S_BYTES = BN * KG * 2;
  static constexpr int STAGE_BYTES = W_BYTES + A_BYTES + S_BYTES;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  // the epilogue's 16-bit L_up rows (padded to R + 8 halves) and float32 low-rank partials (R + 4 words)
  static constexpr int EPI_BYTES = BN * (MAX_RANK + 8) * 2 + BT * (MAX_RANK + 4) * 4;
  static constexpr int SMEM = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
};

template <int WN, int WT, typename T>
__global__ void __launch_bounds__(32 * WN * WT, 16 / (WN * WT)) w4a4_tiled_kernel(
    const int8_t* __restrict__ a, const float* __restrict__ ux, const uint8_t* __restrict__ w,
    const uint16_t* __restrict__ sw, const float* __restrict__ wu, const float* __restrict__ lr,
    const uint16_t* __restrict__ up, const uint16_t* __restrict__ bias, T* __restrict__ y, int32_t* __restrict__ ws,
    int32_t* __restrict__ cnt, int M, int N, int K, int R, int S, int act) {
  using P = Tile<WN, WT>;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ int is_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, t = lane & 3;
  const int wn = warp % WN, wt = warp / WN;
  const int n0 = blockIdx.x * P::BN, t0 = blockIdx.z * P::BT;
  const int G = K / 64, stages_total = G / KG;
  const int s_begin = (int)((long long)stages_total * blockIdx.y / gridDim.y);
  const int s_end = (int)((long long)stages_total * (blockIdx.y + 1) / gridDim.y);
  const int nst = s_end - s_begin;

  // one stage's copies: weights [kg][row][32 B], activations [kg][token][64 B], scales [row][kg] (4 B per row).
  // The copy loops stay rolled: unrolled, their addresses took registers enough to spill (ptxas, 128 a thread).
  auto load_stage = [&](int buf, int st) {
    uint8_t* base = smem + buf * P::STAGE_BYTES;
    const int g = st * KG;
    #pragma unroll 1
    for (int c = tid; c < KG * P::BN * 2; c += P::THREADS) {
      const int kg = c / (P::BN * 2), row = (c >> 1) % P::BN, half = c & 1;
      cp_async16(base + (kg * P::BN + row) * 32 + half * 16, w + (size_t)(n0 + row) * (K / 2) + (g + kg) * 32 + half * 16);
    }
    uint8_t* abase = base + P::W_BYTES;
    #pragma unroll 1
    for (int c = tid; c < KG * P::BT * 4; c += P::THREADS) {
      const int kg = c / (P::BT * 4), tok = (c >> 2) % P::BT, q = c & 3;
      const int src_tok = min(t0 + tok, M - 1);   // rows past M: copies of the last row, never stored
      cp_async16(abase + (kg * P::BT + tok) * 64 + q * 16, a + (size_t)src_tok * K + (g + kg) * 64 + q * 16);
    }
    uint8_t* sbase = abase + P::A_BYTES;
    for (int row = tid; row < P::BN; row += P::THREADS)
      cp_async4(sbase + row * (KG * 2), sw + (size_t)(n0 + row) * G + g);
  };

  float inv_u[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) inv_u[mt][h] = __frcp_rn(wu[n0 + 32 * wn + 16 * mt + gid + 8 * h]);

  int32_t acc[2][4][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nst) load_stage(s, s_begin + s);
    cp_async_commit();
  }
  for (int i = 0; i < nst; ++i) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();   // stage i is in shared memory, and every warp is done with the buffer refilled next
    if (i + STAGES - 1 < nst) load_stage((i + STAGES - 1) % STAGES, s_begin + i + STAGES - 1);
    cp_async_commit();
    const uint8_t* base = smem + (i % STAGES) * P::STAGE_BYTES;
    const uint16_t* sbase = reinterpret_cast<const uint16_t*>(base + P::W_BYTES + P::A_BYTES);
#pragma unroll
    for (int kg = 0; kg < KG; ++kg) {
      const uint8_t* wbase = base + (kg * P::BN + 32 * wn) * 32;
      const uint8_t* abase = base + P::W_BYTES + (kg * P::BT + 32 * wt) * 64;
      uint4 av[4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) av[nt] = *reinterpret_cast<const uint4*>(abase + (8 * nt + gid) * 64 + 16 * t);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t a_lo[2][2], a_hi[2][2];
        int mult[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = 16 * mt + gid + 8 * h;
          const uint2 wv = *reinterpret_cast<const uint2*>(wbase + row * 32 + 8 * t);
          unpack_word(wv.x, a_lo[0][h], a_hi[0][h]);
          unpack_word(wv.y, a_lo[1][h], a_hi[1][h]);
          mult[h] = __float2int_rn(to_float<T>(sbase[(32 * wn + row) * KG + kg]) * inv_u[mt][h]);
        }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          int32_t part[4] = {0, 0, 0, 0};
          mma_s8(part, a_lo[0][0], a_lo[0][1], a_hi[0][0], a_hi[0][1], av[nt].x, av[nt].y);
          mma_s8(part, a_lo[1][0], a_lo[1][1], a_hi[1][0], a_hi[1][1], av[nt].z, av[nt].w);
          acc[mt][nt][0] += mult[0] * part[0];
          acc[mt][nt][1] += mult[0] * part[1];
          acc[mt][nt][2] += mult[1] * part[2];
          acc[mt][nt][3] += mult[1] * part[3];
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();   // the pipeline's shared memory is free for the epilogue

  // The epilogue's low-rank operands, copied now so the copies overlap the split-K exchange: L_up's rows as
  // stored (16-bit, rows padded to R + 8 halves) and the tokens' float32 partials (rows padded to R + 4 words);
  // with those strides a warp's fragment loads fall in distinct banks. cp.async where R % 8 == 0 and kernel 1
  // summed its partials (S == 1, the product's case), else a plain loop (each iteration waits on its loads).
  const int R8 = (R + 7) & ~7, UP = R8 + 8, LP = R8 + 4;
  uint16_t* up_s = reinterpret_cast<uint16_t*>(smem);
  float* lr_s = reinterpret_cast<float*>(smem + P::BN * UP * 2);
  const bool async_epi = R > 0 && R % 8 == 0 && S == 1;
  if (async_epi) {
    #pragma unroll 1
    for (int c = tid; c < P::BN * (R / 8); c += P::THREADS) {
      const int row = c / (R / 8), q = c % (R / 8);
      cp_async16(up_s + row * UP + 8 * q, up + (size_t)(n0 + row) * R + 8 * q);
    }
    #pragma unroll 1
    for (int c = tid; c < P::BT * (R / 4); c += P::THREADS) {
      const int tok = c / (R / 4), q = c % (R / 4);
      cp_async16(lr_s + tok * LP + 4 * q, lr + (size_t)min(t0 + tok, M - 1) * R + 4 * q);   // past M: never stored
    }
    cp_async_commit();
  }

  // accumulator (mt, nt, i): weight row 32·wn + 16·mt + gid + 8·(i >> 1), token 32·wt + 8·nt + 2·t + (i & 1)
  if (gridDim.y > 1) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int n = n0 + 32 * wn + 16 * mt + gid + 8 * (i >> 1), tok = t0 + 32 * wt + 8 * nt + 2 * t + (i & 1);
          if (tok < M) atomicAdd(&ws[(size_t)tok * N + n], acc[mt][nt][i]);
        }
    __threadfence();
    __syncthreads();
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    if (tid == 0) is_last = atomicAdd(&cnt[tile], 1) == (int)gridDim.y - 1;
    __syncthreads();
    if (!is_last) {
      cp_async_wait<0>();
      return;
    }
    __threadfence();
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int n = n0 + 32 * wn + 16 * mt + gid + 8 * (i >> 1), tok = t0 + 32 * wt + 8 * nt + 2 * t + (i & 1);
          acc[mt][nt][i] = tok < M ? atomicExch(&ws[(size_t)tok * N + n], 0) : 0;
        }
    if (tid == 0) cnt[tile] = 0;   // re-armed for the next call
  }

  if (R > 0) {
    if (async_epi) {
      cp_async_wait<0>();
    } else {
      #pragma unroll 1
      for (int i = tid; i < P::BN * R8; i += P::THREADS) {
        const int row = i / R8, k = i % R8;
        up_s[row * UP + k] = k < R ? up[(size_t)(n0 + row) * R + k] : (uint16_t)0;
      }
      #pragma unroll 1
      for (int i = tid; i < P::BT * R8; i += P::THREADS) {
        const int tok = i / R8, k = i % R8;
        float part = 0.0f;
        if (k < R && t0 + tok < M)
          for (int s = 0; s < S; ++s) part += lr[((size_t)s * M + t0 + tok) * R + k];
        lr_s[tok * LP + k] = part;
      }
    }
    __syncthreads();
  }
  // one 16 x 8 tile at a time: its low-rank sum (tensor cores), then units, bias, GELU and the stores
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
    const int r0 = 32 * wn + 16 * mt + gid;
    const float wu0 = wu[n0 + r0], wu1 = wu[n0 + r0 + 8];
    const float b0 = bias != nullptr ? to_float<T>(bias[n0 + r0]) : 0.0f;
    const float b1 = bias != nullptr ? to_float<T>(bias[n0 + r0 + 8]) : 0.0f;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int c0 = 32 * wt + 8 * nt;
      float lowrank[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int k0 = 0; k0 < R8; k0 += 8) {
        const uint16_t* u0 = up_s + r0 * UP + k0 + t;   // 16-bit values: exact in tf32
        const float* l0 = lr_s + (c0 + gid) * LP + k0 + t;
        const float x0 = l0[0], x1 = l0[4];
        const uint32_t h0 = to_tf32(x0), h1 = to_tf32(x1);
        const uint32_t e0 = to_tf32(x0 - __uint_as_float(h0)), e1 = to_tf32(x1 - __uint_as_float(h1));
        const uint32_t a0 = __float_as_uint(to_float<T>(u0[0])), a1 = __float_as_uint(to_float<T>(u0[8 * UP]));
        const uint32_t a2 = __float_as_uint(to_float<T>(u0[4])), a3 = __float_as_uint(to_float<T>(u0[8 * UP + 4]));
        mma_tf32(lowrank, a0, a1, a2, a3, e0, e1);   // the small part first
        mma_tf32(lowrank, a0, a1, a2, a3, h0, h1);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int tok = t0 + c0 + 2 * t + (i & 1), n = n0 + r0 + 8 * (i >> 1);
        if (tok >= M) continue;
        float v = (float)acc[mt][nt][i] * (ux[tok] * (i >> 1 ? wu1 : wu0)) + lowrank[i] + (i >> 1 ? b1 : b0);
        if (act == 1) v = gelu_tanh(v);
        y[(size_t)tok * N + n] = from_float<T>(v);
      }
    }
  }
}

template <int WN, int WT, typename T>
cudaError_t launch(const void* a, const float* ux, const void* w, const void* sw, const float* wu, const float* lr,
                   const void* up, const void* bias, void* y, int32_t* ws, int32_t* cnt, int M, int N, int K, int R,
                   int S, int splits, int act, cudaStream_t stream) {
  using P = Tile<WN, WT>;
  // the opt-in to > 48 KB of dynamic shared memory: once per instantiation and device (not a stream operation,
  // so also allowed while a CUDA graph is being captured)
  static unsigned long long configured = 0;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device >= 64) return cudaErrorInvalidDevice;
  if (!(configured >> device & 1ull)) {
    err = cudaFuncSetAttribute(w4a4_tiled_kernel<WN, WT, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, P::SMEM);
    if (err != cudaSuccess) return err;
    configured |= 1ull << device;
  }
  const dim3 grid(N / P::BN, splits, (M + P::BT - 1) / P::BT);
  w4a4_tiled_kernel<WN, WT, T><<<grid, P::THREADS, P::SMEM, stream>>>(
      static_cast<const int8_t*>(a), ux, static_cast<const uint8_t*>(w), static_cast<const uint16_t*>(sw), wu, lr,
      static_cast<const uint16_t*>(up), static_cast<const uint16_t*>(bias), static_cast<T*>(y), ws, cnt, M, N, K, R,
      S, act);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_tile(int tile, const void* a, const float* ux, const void* w, const void* sw, const float* wu,
                        const float* lr, const void* up, const void* bias, void* y, int32_t* ws, int32_t* cnt, int M,
                        int N, int K, int R, int S, int splits, int act, cudaStream_t stream) {
  switch (tile) {   // 0: 128 x 32 (4 warps), 1: 128 x 64 (8 warps), 2: 256 x 32 (8 warps)
    case 0: return launch<4, 1, T>(a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, stream);
    case 1: return launch<4, 2, T>(a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, stream);
    case 2: return launch<8, 1, T>(a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

// The tiles' output columns (weight rows) and tokens, for the binding's checks.
int var_gen_w4a4_tiled_columns(int tile) { return tile == 2 ? 256 : tile == 0 || tile == 1 ? 128 : 0; }
int var_gen_w4a4_tiled_tokens(int tile) { return tile == 1 ? 64 : tile == 0 || tile == 2 ? 32 : 0; }

// dtype 0: fp16, 1: bf16. Returns cudaErrorInvalidValue for shapes the kernel does not take (the binding
// checks them first): K % 128 == 0, N a multiple of the tile's columns, R <= 64, 1 <= splits <= K / 128.
cudaError_t var_gen_w4a4_tiled(int dtype, int tile, const void* a, const float* ux, const void* w, const void* sw,
                               const float* wu, const float* lr, const void* up, const void* bias, void* y,
                               int32_t* ws, int32_t* cnt, int M, int N, int K, int R, int S, int splits, int act,
                               cudaStream_t stream) {
  const int bn = var_gen_w4a4_tiled_columns(tile);
  if (bn == 0 || M < 1 || K % 128 || N % bn || R < 0 || R > MAX_RANK || splits < 1 || splits > K / 128)
    return cudaErrorInvalidValue;
  if (dtype == 1)
    return launch_tile<__nv_bfloat16>(tile, a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act,
                                      stream);
  return launch_tile<__half>(tile, a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, M, N, K, R, S, splits, act, stream);
}
