// PyTorch binding of kernels/w4a4_small_m.cu (built by torch.utils.cpp_extension, kernels/w4a4_small_m_cuda.py):
// checks every tensor's device, dtype, shape, layout and alignment, then launches on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

cudaError_t var_gen_w4a4_small_m(int dtype, int mt, const void* a, const float* ux, const void* w, const void* sw,
                                 const float* wu, const float* lr, const void* up, const void* bias, void* y,
                                 int32_t* ws, int32_t* cnt, int M, int N, int K, int R, int S, int splits, int act,
                                 cudaStream_t stream);

namespace {

void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype, const torch::Device& device,
           int64_t align) {
  TORCH_CHECK(t.device() == device, "w4a4_small_m: ", name, " is on ", t.device(), ", not ", device);
  TORCH_CHECK(t.scalar_type() == dtype, "w4a4_small_m: ", name, " is ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "w4a4_small_m: ", name, " must be contiguous");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % align == 0, "w4a4_small_m: ", name, " is not ", align,
              "-byte aligned");
}

// y (M, N) = the W4A4 product of kernel 1's q·m activations a (M, K) int8 with units ux (M,) float32 and the
// packed weights w (N, K/2) uint8 with two-level scales sw (N, K/64) and units wu (N,) float32, plus the low-rank
// branch (lr (S, M, R) float32 partials of x̂·L_down, up (N, R)) and bias (N,), then GELU-tanh if act == 1.
// ws / cnt: zeroed int32 buffers (>= M·N and >= N / (16·mt) entries) the call leaves zeroed.
void w4a4_small_m(const torch::Tensor& a, const torch::Tensor& ux, const torch::Tensor& w, const torch::Tensor& sw,
                  const torch::Tensor& wu, const c10::optional<torch::Tensor>& lr,
                  const c10::optional<torch::Tensor>& up, const c10::optional<torch::Tensor>& bias, torch::Tensor& y,
                  torch::Tensor& ws, torch::Tensor& cnt, int64_t mt, int64_t splits, int64_t act) {
  TORCH_CHECK(y.is_cuda(), "w4a4_small_m: tensors must be on a CUDA device");
  const auto device = y.device();
  const auto dtype = y.scalar_type();
  TORCH_CHECK(dtype == torch::kBFloat16 || dtype == torch::kHalf, "w4a4_small_m: y must be bf16 or fp16");
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && y.dim() == 2, "w4a4_small_m: a, w, y must be 2-D");
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  TORCH_CHECK(mt == 2 || mt == 4, "w4a4_small_m: mt must be 2 or 4");
  TORCH_CHECK(M >= 1 && M <= 32, "w4a4_small_m: takes 1 to 32 rows, got ", M);
  TORCH_CHECK(K % 64 == 0 && N % (16 * mt) == 0, "w4a4_small_m: K % 64 and N % ", 16 * mt, " must be 0 (K ", K,
              ", N ", N, ")");
  TORCH_CHECK(splits >= 1 && splits * 4 <= K / 64, "w4a4_small_m: splits ", splits, " out of range for K ", K);
  TORCH_CHECK(w.size(1) == K / 2 && y.size(0) == M && y.size(1) == N && ux.numel() == M && wu.numel() == N &&
                  sw.dim() == 2 && sw.size(0) == N && sw.size(1) == K / 64,
              "w4a4_small_m: shapes do not agree");
  check(a, "a", torch::kInt8, device, 16);
  check(ux, "ux", torch::kFloat, device, 4);
  check(w, "w", torch::kUInt8, device, 8);
  check(sw, "sw", dtype, device, 2);
  check(wu, "wu", torch::kFloat, device, 4);
  check(y, "y", dtype, device, 2);
  check(ws, "ws", torch::kInt, device, 4);
  check(cnt, "cnt", torch::kInt, device, 4);
  TORCH_CHECK(splits == 1 || (ws.numel() >= M * N && cnt.numel() >= N / (16 * mt)),
              "w4a4_small_m: workspace or counters too small");
  int64_t R = 0, S = 0;
  if (lr.has_value()) {
    TORCH_CHECK(up.has_value(), "w4a4_small_m: lr without up");
    check(*lr, "lr", torch::kFloat, device, 4);
    check(*up, "up", dtype, device, 2);
    TORCH_CHECK(lr->dim() == 3 && lr->size(1) == M && up->dim() == 2 && up->size(0) == N &&
                    up->size(1) == lr->size(2),
                "w4a4_small_m: low-rank shapes do not agree");
    S = lr->size(0);
    R = lr->size(2);
  }
  if (bias.has_value()) {
    check(*bias, "bias", dtype, device, 2);
    TORCH_CHECK(bias->numel() == N, "w4a4_small_m: bias has ", bias->numel(), " entries, expected ", N);
  }
  const c10::cuda::CUDAGuard guard(device);
  const cudaError_t err = var_gen_w4a4_small_m(
      dtype == torch::kBFloat16 ? 1 : 0, (int)mt, a.data_ptr(), ux.data_ptr<float>(), w.data_ptr(), sw.data_ptr(),
      wu.data_ptr<float>(), R ? lr->data_ptr<float>() : nullptr, R ? up->data_ptr() : nullptr,
      bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), ws.data_ptr<int32_t>(), cnt.data_ptr<int32_t>(),
      (int)M, (int)N, (int)K, (int)R, (int)S, (int)splits, (int)act, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "w4a4_small_m: launch failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w4a4_small_m", &w4a4_small_m, "W4A4 GEMM for M <= 32 (kernels/w4a4_small_m.cu)");
}
