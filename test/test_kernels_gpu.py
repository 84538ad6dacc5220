"""Compiled kernels vs the PyTorch reference, on a GPU (skipped on the CPU; run by test/gpu/run.sh)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; see test/gpu/run.sh)")

# Infinity-8B Linear shapes (in, out, bias): sa.mat_qkv, sa.proj / ca.mat_q / ca.proj, ca.mat_kv,
# ffn.fc1, ffn.fc2, shared_ada_lin
SHAPES_8B = [(3584, 10752, False), (3584, 3584, True), (2048, 7168, False), (3584, 14336, True),
             (14336, 3584, True), (3584, 21504, True)]
MS = [2, 32, 128, 512, 2048, 8192]


def _layer(K, N, bias, seed):
    from var_gen_ros.quant import W4A4Linear
    g = torch.Generator(device="cuda").manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        lin.weight.normal_(0, K ** -0.5, generator=g)
        if bias:
            lin.bias.normal_(0, 0.1, generator=g)
    act = torch.rand(K, device="cuda", generator=g) * 4 + 0.5     # some smoothing to exercise λ
    return W4A4Linear.from_linear(lin, act, None, rank=32, group=64, param_dtype=torch.bfloat16)


@pytest.mark.parametrize("K,N,bias", SHAPES_8B)
def test_w4a4_kernel_matches_reference(K, N, bias):
    from var_gen_ros.quant.dispatch import kernel_status, w4a4_kernel
    layer = _layer(K, N, bias, seed=K + N)
    torch.manual_seed(torch.seed() % 2 ** 31)            # fresh inputs every run
    for M in MS:
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        x[:, torch.randint(K, (4,))] *= 30                   # a few outlier channels
        fn = w4a4_kernel(x)
        assert fn is not None, kernel_status()
        ref = layer.reference_forward(x).float()
        y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)   # poisoned output buffer
        fn(x, layer, out=y)
        y = y.float()
        assert torch.isfinite(y).all()
        rel = ((y - ref).norm() / ref.norm()).item()
        assert rel <= 1e-3, (M, K, N, rel)
