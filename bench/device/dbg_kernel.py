import torch, sys
sys.path.insert(0, "test")
from test_kernels_gpu import _layer
from var_gen_ros.quant.dispatch import _load_module
from var_gen_ros.quant.int4 import group_scales, quantize_groups
m = _load_module("w4a4_gemm_triton", "w4a4_gemm_triton.py")
L = _layer(3584, 10752, False, 1)
print("tf32", torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
x = (torch.randn(32, 3584, device="cuda") * 2).bfloat16()
K = 3584; M = 32
q = torch.empty(M, K, dtype=torch.int8, device="cuda"); sx = torch.empty(M, K // 64, device="cuda"); xs = torch.empty(M, K, device="cuda")
m._quantize_act[(2, K // 64)](x, L.smooth, q, sx, xs, M, K, m.INV_QMAX, BLOCK_M=16, GROUP=64)
xs_ref = x.float() / L.smooth.float()
print("xs equal", torch.equal(xs, xs_ref))
s_ref = group_scales(xs_ref, 64); q_ref = quantize_groups(xs_ref, s_ref, 64)
perm = torch.arange(K, device="cuda").view(-1, 64); c = torch.arange(64, device="cuda")
dst = (c % 2) * 32 + c // 2
q_un = torch.empty_like(q).view(M, -1, 64); q_un[:, :, :] = q.view(M, -1, 64)[:, :, dst]
print("scales equal", torch.equal(sx, s_ref), "codes equal", torch.equal(q_un.view(M, K), q_ref), (q_un.view(M,K) != q_ref).sum().item())
y = m.w4a4_linear(x, L).float(); ref = L.reference_forward(x).float()
ref32 = None
print("rel", ((y - ref).norm() / ref.norm()).item())
# main part only
deq = L.dequantized_weight()
main_ref = (q_ref.float().view(M, -1, 64) * s_ref.unsqueeze(-1)).view(M, K) @ deq.t()
main64 = (q_ref.double().view(M, -1, 64) * s_ref.double().unsqueeze(-1)).view(M, K) @ deq.double().t()
print("ref main fp32 vs fp64", ((main_ref.double() - main64).norm() / main64.norm()).item())
lr = (xs_ref @ L.lora_down.float()) @ L.lora_up.float().t()
full64 = main64 + ((xs_ref.double() @ L.lora_down.double()) @ L.lora_up.double().t())
print("kernel vs fp64", ((y.double() - full64).norm() / full64.norm()).item(), "ref vs fp64", ((ref.double() - full64).norm() / full64.norm()).item())
# decompose: main part only (low-rank zeroed) and low-rank only (residual zeroed)
import copy
A = copy.deepcopy(L); A.lora_up.zero_()
yA = m.w4a4_linear(x, A).double(); rA = main64
print("main: kernel vs fp64", ((yA - rA).norm() / rA.norm()).item())
B = copy.deepcopy(L); B.qweight.zero_()
yB = m.w4a4_linear(x, B).double(); rB = (xs_ref.double() @ L.lora_down.double()) @ L.lora_up.double().t()
print("lowrank: kernel vs fp64", ((yB - rB).norm() / rB.norm()).item(), "norms main/lr", rA.norm().item(), rB.norm().item())
