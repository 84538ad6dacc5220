// PyTorch binding of kernels/w4a4_small_m.cu (built by torch.utils.cpp_extension, kernels/w4a4_small_m_cuda.py):
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
                                 cudaStream_t stream);

namespace {

#define VAR_GEN_REQUIRE(cond, msg)               \
  do {                                           \
    if (!(cond)) return std::string("w4a4_small_m: ") + (msg); \
  } while (0)

std::string check(const torch::Tensor& t, const char* name, torch::ScalarType dtype, const torch::Device& device,
                  int64_t align) {
  std::ostringstream why;
  if (t.device() != device) why << name << " is on " << t.device() << ", not " << device;
  else if (t.scalar_type() != dtype) why << name << " is " << t.scalar_type() << ", expected " << dtype;
  else if (!t.is_contiguous()) why << name << " must be contiguous";
  else if (reinterpret_cast<uintptr_t>(t.data_ptr()) % align) why << name << " is not " << align << "-byte aligned";
  return why.str().empty() ? std::string() : "w4a4_small_m: " + why.str();
}

// y (M, N) = the W4A4 product of kernel 1's q·m activations a (M, K) int8 with units ux (M,) float32 and the
// packed weights w (N, K/2) uint8 with two-level scales sw (N, K/64) and units wu (N,) float32, plus the low-rank
// branch (lr (S, M, R) float32 partials of x̂·L_down, up (N, R)) and bias (N,), then GELU-tanh if act == 1.
// ws / cnt: zeroed int32 buffers (>= M·N and >= N / 32 entries) the call leaves zeroed. Returns "" or why not.
std::string w4a4_small_m(const torch::Tensor& a, const torch::Tensor& ux, const torch::Tensor& w,
                         const torch::Tensor& sw, const torch::Tensor& wu, const c10::optional<torch::Tensor>& lr,
                         const c10::optional<torch::Tensor>& up, const c10::optional<torch::Tensor>& bias,
                         torch::Tensor& y, torch::Tensor& ws, torch::Tensor& cnt, int64_t warps, int64_t splits,
                         int64_t act) {
  VAR_GEN_REQUIRE(y.is_cuda(), "tensors must be on a CUDA device");
  const auto device = y.device();
  const auto dtype = y.scalar_type();
  VAR_GEN_REQUIRE(dtype == torch::kBFloat16 || dtype == torch::kHalf, "y must be bf16 or fp16");
  VAR_GEN_REQUIRE(a.dim() == 2 && w.dim() == 2 && y.dim() == 2 && sw.dim() == 2, "a, w, sw, y must be 2-D");
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  VAR_GEN_REQUIRE(warps == 4 || warps == 8, "warps must be 4 or 8, got " + std::to_string(warps));
  VAR_GEN_REQUIRE(M >= 1 && M <= 32, "takes 1 to 32 rows, got " + std::to_string(M));
  VAR_GEN_REQUIRE(K % 64 == 0 && N % 32 == 0,
                  "K % 64 and N % 32 must be 0 (K " + std::to_string(K) + ", N " + std::to_string(N) + ")");
  VAR_GEN_REQUIRE(splits >= 1 && splits * warps <= K / 64,
                  "splits " + std::to_string(splits) + " x " + std::to_string(warps) + " warps exceed the " +
                      std::to_string(K / 64) + " groups of K");
  VAR_GEN_REQUIRE(w.size(1) == K / 2 && y.size(0) == M && y.size(1) == N && ux.numel() == M && wu.numel() == N &&
                      sw.size(0) == N && sw.size(1) == K / 64,
                  "shapes do not agree");
  for (const auto& why : {check(a, "a", torch::kInt8, device, 16), check(ux, "ux", torch::kFloat, device, 4),
                          check(w, "w", torch::kUInt8, device, 8), check(sw, "sw", dtype, device, 2),
                          check(wu, "wu", torch::kFloat, device, 4), check(y, "y", dtype, device, 2),
                          check(ws, "ws", torch::kInt, device, 4), check(cnt, "cnt", torch::kInt, device, 4)})
    if (!why.empty()) return why;
  VAR_GEN_REQUIRE(splits == 1 || (ws.numel() >= M * N && cnt.numel() >= N / 32), "workspace or counters too small");
  int64_t R = 0, S = 0;
  if (lr.has_value()) {
    VAR_GEN_REQUIRE(up.has_value(), "lr without up");
    for (const auto& why : {check(*lr, "lr", torch::kFloat, device, 4), check(*up, "up", dtype, device, 2)})
      if (!why.empty()) return why;
    VAR_GEN_REQUIRE(lr->dim() == 3 && lr->size(1) == M && up->dim() == 2 && up->size(0) == N &&
                        up->size(1) == lr->size(2) && lr->size(2) <= 64,
                    "low-rank shapes do not agree (or rank > 64)");
    S = lr->size(0);
    R = lr->size(2);
  }
  if (bias.has_value()) {
    const auto why = check(*bias, "bias", dtype, device, 2);
    if (!why.empty()) return why;
    VAR_GEN_REQUIRE(bias->numel() == N, "bias has " + std::to_string(bias->numel()) + " entries");
  }
  const c10::cuda::CUDAGuard guard(device);
  const cudaError_t err = var_gen_w4a4_small_m(
      dtype == torch::kBFloat16 ? 1 : 0, (int)warps, a.data_ptr(), static_cast<const float*>(ux.data_ptr()),
      w.data_ptr(), sw.data_ptr(), static_cast<const float*>(wu.data_ptr()),
      R ? static_cast<const float*>(lr->data_ptr()) : nullptr, R ? up->data_ptr() : nullptr,
      bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), static_cast<int32_t*>(ws.data_ptr()),
      static_cast<int32_t*>(cnt.data_ptr()), (int)M, (int)N,
      (int)K, (int)R, (int)S, (int)splits, (int)act, c10::cuda::getCurrentCUDAStream().stream());
  VAR_GEN_REQUIRE(err == cudaSuccess, std::string("launch failed: ") + cudaGetErrorString(err));
  return std::string();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w4a4_small_m", &w4a4_small_m, "W4A4 GEMM for M <= 32 (kernels/w4a4_small_m.cu)");
}
