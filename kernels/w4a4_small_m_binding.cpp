// PyTorch binding of kernels/w4a4_small_m.cu and kernels/w4a4_quantize_small_m.cu (one extension, built by
// torch.utils.cpp_extension, kernels/w4a4_small_m_cuda.py):
// checks every tensor's device, dtype, shape, layout and alignment, then launches on the current stream.
// Errors come back as a message (empty on success) that the Python side raises: a C++ exception thrown
// through the binding crashed the process on the H100 (nineteenth session: a rejected split count gave a
// segmentation fault instead of TORCH_CHECK's RuntimeError; the cause was not pinned down).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <sstream>
#include <string>

cudaError_t var_gen_w4a4_small_m(int dtype, int warps, const void* a, const float* ux, const void* w, const void* sw,
                                 const float* wu, const float* lr, const void* up, const void* bias, void* y,
                                 int32_t* ws, int32_t* cnt, int M, int N, int K, int R, int S, int splits, int act,
                                 bool pdl, cudaStream_t stream);
cudaError_t var_gen_quantize_small_m(int dtype, const void* x, const float* inv, const void* down, int8_t* q,
                                     float* ux, float* part, float* lrp, int* cnt, int M, int K, int R, int gps,
                                     float inv7, cudaStream_t stream);
bool var_gen_quantize_small_m_fits(int M, int gps, int R);
bool var_gen_w4a4_small_m_has_pdl();

namespace {

// the start of the message a refused programmatic dependent launch returns (kernels/w4a4_small_m_cuda.py reads it)
constexpr const char* PDL_UNAVAILABLE = "programmatic dependent launch unavailable";

#define VAR_GEN_REQUIRE(cond, msg)               \
  do {                                           \
    if (!(cond)) return std::string(NAME) + ": " + (msg); \
  } while (0)

std::string check(const char* kernel, const torch::Tensor& t, const char* name, torch::ScalarType dtype,
                  const torch::Device& device, int64_t align) {
  std::ostringstream why;
  if (t.device() != device) why << name << " is on " << t.device() << ", not " << device;
  else if (t.scalar_type() != dtype) why << name << " is " << t.scalar_type() << ", expected " << dtype;
  else if (!t.is_contiguous()) why << name << " must be contiguous";
  else if (reinterpret_cast<uintptr_t>(t.data_ptr()) % align) why << name << " is not " << align << "-byte aligned";
  return why.str().empty() ? std::string() : std::string(kernel) + ": " + why.str();
}

// The GEMM's operands, checked: y (M, N) = the W4A4 product of kernel 1's q·m activations a (M, K)
// int8 with units ux (M,) float32 and the packed weights w (N, K/2) uint8 with two-level scales sw (N, K/64) and
// units wu (N,) float32, plus the low-rank branch (lr (S, M, R) float32 partials of x̂·L_down, up (N, R)) and
// bias (N,), then GELU-tanh if act == 1. ws / cnt: zeroed int32 buffers the call leaves zeroed. Returns "" or
// why not; sets R and S (0 without a low-rank branch).
std::string check_operands(const char* NAME, const torch::Tensor& a, const torch::Tensor& ux, const torch::Tensor& w,
                           const torch::Tensor& sw, const torch::Tensor& wu, const c10::optional<torch::Tensor>& lr,
                           const c10::optional<torch::Tensor>& up, const c10::optional<torch::Tensor>& bias,
                           const torch::Tensor& y, const torch::Tensor& ws, const torch::Tensor& cnt, int64_t& R,
                           int64_t& S) {
  VAR_GEN_REQUIRE(y.is_cuda(), "tensors must be on a CUDA device");
  const auto device = y.device();
  const auto dtype = y.scalar_type();
  VAR_GEN_REQUIRE(dtype == torch::kBFloat16 || dtype == torch::kHalf, "y must be bf16 or fp16");
  VAR_GEN_REQUIRE(a.dim() == 2 && w.dim() == 2 && y.dim() == 2 && sw.dim() == 2, "a, w, sw, y must be 2-D");
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  VAR_GEN_REQUIRE(M >= 1, "no rows");
  VAR_GEN_REQUIRE(K % 64 == 0 && N % 32 == 0,
                  "K % 64 and N % 32 must be 0 (K " + std::to_string(K) + ", N " + std::to_string(N) + ")");
  VAR_GEN_REQUIRE(w.size(1) == K / 2 && y.size(0) == M && y.size(1) == N && ux.numel() == M && wu.numel() == N &&
                      sw.size(0) == N && sw.size(1) == K / 64,
                  "shapes do not agree");
  for (const auto& why : {check(NAME, a, "a", torch::kInt8, device, 16), check(NAME, ux, "ux", torch::kFloat, device, 4),
                          check(NAME, w, "w", torch::kUInt8, device, 16), check(NAME, sw, "sw", dtype, device, 4),
                          check(NAME, wu, "wu", torch::kFloat, device, 4), check(NAME, y, "y", dtype, device, 2),
                          check(NAME, ws, "ws", torch::kInt, device, 4), check(NAME, cnt, "cnt", torch::kInt, device, 4)})
    if (!why.empty()) return why;
  R = 0;
  S = 0;
  if (lr.has_value()) {
    VAR_GEN_REQUIRE(up.has_value(), "lr without up");
    for (const auto& why : {check(NAME, *lr, "lr", torch::kFloat, device, 4), check(NAME, *up, "up", dtype, device, 2)})
      if (!why.empty()) return why;
    VAR_GEN_REQUIRE(lr->dim() == 3 && lr->size(1) == M && up->dim() == 2 && up->size(0) == N &&
                        up->size(1) == lr->size(2) && lr->size(2) <= 64,
                    "low-rank shapes do not agree (or rank > 64)");
    S = lr->size(0);
    R = lr->size(2);
  }
  if (bias.has_value()) {
    const auto why = check(NAME, *bias, "bias", dtype, device, 2);
    if (!why.empty()) return why;
    VAR_GEN_REQUIRE(bias->numel() == N, "bias has " + std::to_string(bias->numel()) + " entries");
  }
  return std::string();
}

// kernels/w4a4_small_m.cu: M <= 32, blocks of `warps` (4 or 8) warps, K split over `splits` blocks; pdl: a
// programmatic dependent launch (sm_90 only).
std::string w4a4_small_m(const torch::Tensor& a, const torch::Tensor& ux, const torch::Tensor& w,
                         const torch::Tensor& sw, const torch::Tensor& wu, const c10::optional<torch::Tensor>& lr,
                         const c10::optional<torch::Tensor>& up, const c10::optional<torch::Tensor>& bias,
                         torch::Tensor& y, torch::Tensor& ws, torch::Tensor& cnt, int64_t warps, int64_t splits,
                         int64_t act, bool pdl) {
  const char* NAME = "w4a4_small_m";
  int64_t R = 0, S = 0;
  const auto why = check_operands(NAME, a, ux, w, sw, wu, lr, up, bias, y, ws, cnt, R, S);
  if (!why.empty()) return why;
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  VAR_GEN_REQUIRE(warps == 4 || warps == 8, "warps must be 4 or 8, got " + std::to_string(warps));
  VAR_GEN_REQUIRE(M <= 32, "takes 1 to 32 rows, got " + std::to_string(M));
  VAR_GEN_REQUIRE(splits >= 1 && splits * warps <= K / 64,
                  "splits " + std::to_string(splits) + " x " + std::to_string(warps) + " warps exceed the " +
                      std::to_string(K / 64) + " groups of K");
  VAR_GEN_REQUIRE(splits == 1 || (ws.numel() >= M * N && cnt.numel() >= N / 32), "workspace or counters too small");
  const c10::cuda::CUDAGuard guard(y.device());
  if (pdl) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, y.device().index());
    VAR_GEN_REQUIRE(major >= 9, "a programmatic dependent launch needs sm_90 or later");
  }
  const cudaError_t err = var_gen_w4a4_small_m(
      y.scalar_type() == torch::kBFloat16 ? 1 : 0, (int)warps, a.data_ptr(), static_cast<const float*>(ux.data_ptr()),
      w.data_ptr(), sw.data_ptr(), static_cast<const float*>(wu.data_ptr()),
      R ? static_cast<const float*>(lr->data_ptr()) : nullptr, R ? up->data_ptr() : nullptr,
      bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), static_cast<int32_t*>(ws.data_ptr()),
      static_cast<int32_t*>(cnt.data_ptr()), (int)M, (int)N, (int)K, (int)R, (int)S, (int)splits, (int)act, pdl,
      c10::cuda::getCurrentCUDAStream().stream());
  if (pdl && err != cudaSuccess) {
    // not launched: a build without it, or a driver that refuses the launch attribute. The caller launches again
    // without it (kernels/w4a4_small_m_cuda.py); the failed launch's error must not reach that launch's check
    (void)cudaGetLastError();
    return std::string(NAME) + ": " + PDL_UNAVAILABLE + " (" + cudaGetErrorString(err) + ")";
  }
  VAR_GEN_REQUIRE(err == cudaSuccess, std::string("launch failed: ") + cudaGetErrorString(err));
  return std::string();
}

// kernels/w4a4_quantize_small_m.cu: kernel 1 for M <= 32 in one launch. x (M, K) bf16 / fp16, inv (K,) float32
// (1/λ), down (K, R) in x's dtype or None; fills q (M, K) int8 q·m, ux (M,) float32 units and lrp (S, M, R) float32
// (each slice's part of x̂·L_down); part (S·M) float32 scratch, cnt two zeroed int32 counters (left zeroed), where
// S = K / 64 / gps blocks.
std::string quantize_small_m(const torch::Tensor& x, const torch::Tensor& inv, const c10::optional<torch::Tensor>& down,
                             torch::Tensor& q, torch::Tensor& ux, torch::Tensor& part, torch::Tensor& lrp,
                             torch::Tensor& cnt, int64_t gps, double inv7) {
  const char* NAME = "quantize_small_m";
  VAR_GEN_REQUIRE(x.is_cuda(), "tensors must be on a CUDA device");
  const auto device = x.device();
  const auto dtype = x.scalar_type();
  VAR_GEN_REQUIRE(dtype == torch::kBFloat16 || dtype == torch::kHalf, "x must be bf16 or fp16");
  VAR_GEN_REQUIRE(x.dim() == 2 && q.dim() == 2, "x and q must be 2-D");
  const int64_t M = x.size(0), K = x.size(1);
  VAR_GEN_REQUIRE(M >= 1 && M <= 32, "takes 1 to 32 rows, got " + std::to_string(M));
  VAR_GEN_REQUIRE(K % 64 == 0, "K % 64 must be 0 (K " + std::to_string(K) + ")");
  const int64_t R = down.has_value() ? down->size(1) : 0;
  VAR_GEN_REQUIRE(R >= 0 && R <= 64, "rank " + std::to_string(R) + " > 64");
  VAR_GEN_REQUIRE(gps >= 1 && gps <= K / 64 && var_gen_quantize_small_m_fits((int)M, (int)gps, (int)R),
                  "gps " + std::to_string(gps) + " groups per block do not fit (K / 64 = " + std::to_string(K / 64) +
                      ", M x max(gps x 64, 256) floats and gps x 64 x R halves within 46 KB of shared memory)");
  const int64_t S = (K / 64 + gps - 1) / gps;
  VAR_GEN_REQUIRE(q.size(0) == M && q.size(1) == K && inv.numel() == K && ux.numel() == M && part.numel() >= S * M &&
                      cnt.numel() >= 2,
                  "shapes do not agree");
  for (const auto& why : {check(NAME, x, "x", dtype, device, 16), check(NAME, inv, "inv", torch::kFloat, device, 16),
                          check(NAME, q, "q", torch::kInt8, device, 1), check(NAME, ux, "ux", torch::kFloat, device, 4),
                          check(NAME, part, "part", torch::kFloat, device, 4),
                          check(NAME, cnt, "cnt", torch::kInt, device, 4)})
    if (!why.empty()) return why;
  if (R > 0) {
    for (const auto& why : {check(NAME, *down, "down", dtype, device, 16), check(NAME, lrp, "lrp", torch::kFloat, device, 4)})
      if (!why.empty()) return why;
    VAR_GEN_REQUIRE(down->dim() == 2 && down->size(0) == K && lrp.numel() >= S * M * R, "low-rank shapes do not agree");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaError_t err = var_gen_quantize_small_m(
      dtype == torch::kBFloat16 ? 1 : 0, x.data_ptr(), static_cast<const float*>(inv.data_ptr()),
      R ? down->data_ptr() : nullptr, static_cast<int8_t*>(q.data_ptr()), static_cast<float*>(ux.data_ptr()),
      static_cast<float*>(part.data_ptr()), R ? static_cast<float*>(lrp.data_ptr()) : nullptr,
      static_cast<int*>(cnt.data_ptr()), (int)M, (int)K, (int)R, (int)gps, (float)inv7,
      c10::cuda::getCurrentCUDAStream().stream());
  VAR_GEN_REQUIRE(err != cudaErrorCooperativeLaunchTooLarge,
                  std::to_string(S) + " blocks exceed the GPU's SMs (the grid barrier needs every block resident)");
  VAR_GEN_REQUIRE(err == cudaSuccess, std::string("launch failed: ") + cudaGetErrorString(err));
  return std::string();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w4a4_small_m", &w4a4_small_m, "W4A4 GEMM for M <= 32 (kernels/w4a4_small_m.cu)");
  m.def("has_pdl", &var_gen_w4a4_small_m_has_pdl, "whether this build can launch the GEMM as a programmatic dependent launch");
  m.def("quantize_small_m", &quantize_small_m, "kernel 1 (two-level INT4 q·m and x̂·L_down) for M <= 32 (kernels/w4a4_quantize_small_m.cu)");
}
