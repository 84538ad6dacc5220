"""Compiled kernels vs the PyTorch reference, on a GPU (skipped on the CPU; run by test/gpu/run.sh)."""
import functools

import pytest
import torch

from var_gen_ros.quant.w4a4 import smooth_input

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; see test/gpu/run.sh)")

# Infinity-8B Linear shapes (in, out, bias): sa.mat_qkv, sa.proj / ca.mat_q / ca.proj, ca.mat_kv,
# ffn.fc1, ffn.fc2, shared_ada_lin
SHAPES_8B = [(3584, 10752, False), (3584, 3584, True), (2048, 7168, False), (3584, 14336, True),
             (14336, 3584, True), (3584, 21504, True)]
MS = [2, 32, 128, 512, 2048, 8192]


def _layer(K, N, bias, seed, dtype=torch.bfloat16):
    from var_gen_ros.quant import W4A4Linear
    g = torch.Generator(device="cuda").manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias, device="cuda", dtype=torch.float32)
    with torch.no_grad():
        lin.weight.normal_(0, K ** -0.5, generator=g)
        if bias:
            lin.bias.normal_(0, 0.1, generator=g)
    act = torch.rand(K, device="cuda", generator=g) * 4 + 0.5     # some smoothing to exercise λ
    return W4A4Linear.from_linear(lin, act, None, rank=32, group=64, param_dtype=dtype)


def _extra_bytes(fn) -> int:
    """The allocator's peak over fn() above what was allocated when it started (synchronized)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


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


def _small_m_module():
    from kernels_under_test import gemm_module
    mod = gemm_module()
    assert mod.small_m.extension() is not None, mod.small_m.build_status()   # a GPU machine has nvcc: must build
    return mod


@pytest.mark.parametrize("K,N,bias", SHAPES_8B)
def test_small_m_cuda_kernel_matches_reference(K, N, bias):
    """The CUDA C++ GEMM for M <= 32 (path "i8s", kernels/w4a4_small_m.cu) on every 8B shape, M from 1 to 32
    (one, two and four token tiles, partial ones), blocks of 4 and 8 warps, K in one block and split over
    up to 14 blocks (the int32 workspace and counters left zeroed after each call): within 1e-3 of the reference on
    fresh inputs with a few outlier channels, outputs poisoned before each call."""
    mod = _small_m_module()
    layer = _layer(K, N, bias, seed=K + N + 1)
    torch.manual_seed(torch.seed() % 2 ** 31)
    G = K // 64
    for M in (1, 2, 3, 8, 9, 16, 17, 31, 32):
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        x[:, torch.randint(K, (4,))] *= 30
        ref = layer.reference_forward(x).float()
        for warps, splits in mod.small_m.candidates(K) + [(4, G // 4)]:
            y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
            mod.w4a4_linear(x, layer, out=y, path="i8s", config=dict(warps=warps, splits=splits))
            assert torch.isfinite(y).all(), (M, warps, splits)
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            assert rel <= 1e-3, (M, K, N, warps, splits, rel)
        y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
        mod.w4a4_linear(x, layer, out=y)                                  # the default dispatch (tuned launch)
        assert mod.path_for(x, layer) == ("i8s" if M <= mod.small_m_limit(N, K) else "i8"), M
        assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3, M
        for ws, cnt in mod.small_m._BUFFERS[("cuda", x.device.index)]:
            assert not ws.any() and not cnt.any()


def test_small_m_gemm_as_a_programmatic_dependent_launch_gives_the_same_bits():
    """VAR_GEN_W4A4_PDL=1 (sm_90): the i8s GEMM starts while kernel 1 runs, fetches its weights into the L2 and
    waits for kernel 1's end before reading its outputs. On every 8B shape and 1-32 rows (CUDA and Triton kernel 1s,
    K in one block and split over blocks with the shared workspace), eager and inside a CUDA graph that chains three
    layers (each layer's input the previous one's output, replayed on new inputs): the same bits as without it,
    and within 1e-3 of the reference. A read before the wait would give other bits on some call."""
    mod = _small_m_module()
    sm = mod.small_m
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launches need sm_90")
    torch.manual_seed(torch.seed() % 2 ** 31)
    saved = sm.PDL
    try:
        for K, N, bias in SHAPES_8B:
            layer = _layer(K, N, bias, seed=K + N + 5)
            for M in (1, 2, 8, 9, 16, 32):
                x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
                ref = layer.reference_forward(x).float()
                for cfg in (dict(warps=8, splits=1), dict(warps=4, splits=4)):
                    out = {}
                    for pdl in (False, True):
                        sm.PDL = pdl
                        assert sm.pdl_for(x.device) == pdl
                        y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
                        mod.w4a4_linear(x, layer, out=y, path="i8s", config=cfg)
                        out[pdl] = y
                    assert torch.equal(out[False], out[True]), (K, N, M, cfg)
                    assert ((out[True].float() - ref).norm() / ref.norm()).item() <= 1e-3, (K, N, M, cfg)
        layers = [_layer(3584, 3584, True, seed=41), _layer(3584, 14336, True, seed=42), _layer(14336, 3584, True, seed=43)]

        def chain(x):
            h = mod.w4a4_linear(x, layers[0], path="i8s")
            h = mod.w4a4_linear(h, layers[1], act="gelu_tanh", path="i8s")
            return mod.w4a4_linear(h, layers[2], path="i8s")
        for M in (2, 8, 16):
            static_x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
            sm.PDL = True
            chain(static_x)                         # tuned launches picked outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_y = chain(static_x)
            for _ in range(3):
                static_x.copy_((torch.randn(M, 3584, device="cuda") * 2).bfloat16())
                static_y.fill_(float("nan"))
                graph.replay()
                sm.PDL = False
                expected = chain(static_x)
                sm.PDL = True
                assert torch.equal(static_y, expected), M
    finally:
        sm.PDL = saved
    for ws, cnt in sm._BUFFERS[("cuda", torch.cuda.current_device())]:
        assert not ws.any() and not cnt.any()


def test_small_m_cuda_kernel_gelu_and_graph_replay():
    """fc1's GELU epilogue on the i8s path against the reference, and a K split over blocks replayed from a
    CUDA graph: the same bits as the eager call every replay (integer partials: no order dependence)."""
    mod = _small_m_module()
    layer = _layer(3584, 14336, True, seed=11)
    for M in (2, 32):
        x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x, "gelu_tanh").float()
        y = torch.full((M, 14336), float("nan"), device="cuda", dtype=x.dtype)
        mod.w4a4_linear(x, layer, out=y, act="gelu_tanh", path="i8s", config=dict(warps=4, splits=4))
        assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3, M
        eager = y.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            mod.w4a4_linear(x, layer, out=y, act="gelu_tanh", path="i8s", config=dict(warps=4, splits=4))
        for _ in range(3):
            y.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, eager), M


@pytest.mark.parametrize("K", [3584, 14336, 2048])
def test_small_m_quantizer_matches_triton_kernel1_and_reference(K):
    """The CUDA kernel 1 for M <= 32 (kernels/w4a4_quantize_small_m.cu), bf16 and fp16, M from 1 to 32, the
    smallest, largest, a middle and the default block size among those that fit: the same q·m codes and units as the Triton kernel 1 and the reference
    (quant.int4.two_level / quantize_groups) bit for bit, the low-rank input within 2e-5 of float64, the counters
    left zeroed, and a CUDA-graph replay giving the eager call's bits (fresh inputs each run)."""
    from var_gen_ros.quant.int4 import quantize_groups, two_level
    mod = _small_m_module()
    sm = mod.small_m
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    torch.manual_seed(torch.seed() % 2 ** 31)
    G = K // 64
    for dtype in (torch.bfloat16, torch.float16):
        layer = _layer(K, 3584, True, seed=K + 1, dtype=dtype)
        inv = mod.inv_smooth(layer)
        for M in (1, 2, 3, 8, 9, 17, 32):
            x = (torch.randn(M, K, device="cuda") * 2).to(dtype)
            x[:, torch.randint(K, (4,))] *= 30
            default = sm.quantize_groups_per_block(M, K, sms, 32)   # None: no slice fits (Triton's kernel 1)
            assert sm.quantize_supports(x, layer) == (default is not None), (M, K)
            q0, u0, lr0 = mod.quantize_activations(x, layer, i8=True)
            xs = smooth_input(x, layer.smooth)
            u, m = two_level(xs, 64)
            qm = (quantize_groups(xs, u * m, 64).float().view(M, G, 64) * m.unsqueeze(-1)).view(M, K)
            lr_ref = xs.double() @ layer.lora_down.double()
            fits = [g for g in range(1, G + 1) if sm.quantize_smem_fits(M, g, 32) and -(-G // g) <= sms]
            for gps in sorted({fits[0], fits[-1], fits[len(fits) // 2]} | ({default} if default else set())):
                q = ux = lr = None
                q, ux, lr = sm.quantize(x, layer, inv, mod.INV_QMAX, gps=gps)
                assert torch.equal(q, q0) and torch.equal(ux, u0), (dtype, M, gps)
                assert torch.equal(q.float(), qm) and torch.equal(ux, u.squeeze(-1)), (dtype, M, gps)
                assert lr.shape == (-(-G // gps), M, 32)
                err = ((lr.sum(0).double() - lr_ref).norm() / lr_ref.norm()).item()
                assert err <= 2e-5, (dtype, M, gps, err)
                assert not sm._quant_counters(x.device).any()
        x = (torch.randn(8, K, device="cuda") * 2).to(dtype)
        q, ux, lr = sm.quantize(x, layer, inv, mod.INV_QMAX)
        eager = (q.clone(), ux.clone(), lr.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = sm.quantize(x, layer, inv, mod.INV_QMAX)
        for _ in range(3):
            for t in out:
                t.zero_()
            graph.replay()
            torch.cuda.synchronize()
            assert all(torch.equal(a, b) for a, b in zip(out, eager))


def test_small_m_quantizer_rejects_bad_calls_clearly():
    """Rows, block sizes, dtypes and grids the CUDA kernel 1 does not take fail with a message."""
    mod = _small_m_module()
    sm = mod.small_m
    layer = _layer(14336, 3584, True, seed=9)
    inv = mod.inv_smooth(layer)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    x = torch.randn(33, 14336, device="cuda").bfloat16()
    assert not sm.quantize_supports(x, layer)
    with pytest.raises(ValueError, match="quantize_small_m: takes 1 to 32 rows"):
        sm.quantize(x, layer, inv, mod.INV_QMAX, gps=8)
    x = torch.randn(32, 14336, device="cuda").bfloat16()
    with pytest.raises(ValueError, match="groups per block do not fit"):
        sm.quantize(x, layer, inv, mod.INV_QMAX, gps=5)        # 32 x 5 x 64 floats + 5 x 64 x 32 halves: 60 KB
    if 14336 // 64 > sms:
        with pytest.raises(ValueError, match="exceed the GPU's SMs"):
            sm.quantize(x, layer, inv, mod.INV_QMAX, gps=1)
    with pytest.raises(ValueError, match="quantize_small_m: x must be bf16 or fp16"):
        sm.quantize(x.float(), layer, inv, mod.INV_QMAX, gps=2)
    assert not sm._quant_counters(x.device).any()
    # the W4A4 product still serves these rows (the Triton kernel 1 where the CUDA one does not fit)
    half = _layer(14336, 3584, True, seed=9, dtype=torch.float16)
    for lay, xx in ((layer, x), (half, x.half())):
        ref = lay.reference_forward(xx).float()
        y = mod.w4a4_linear(xx, lay)
        assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3


_BARRIER_NEVER_MET = """
import sys, time
sys.path.insert(0, "test")
import torch
from test_kernels_gpu import _layer, _small_m_module
mod = _small_m_module()
layer = _layer(3584, 3584, True, seed=3)
x = torch.randn(2, 3584, device="cuda").bfloat16()
cnt = mod.small_m._quant_counters(x.device)
cnt[0] = -(1 << 30)          # the blocks' arrivals can never reach S: the barrier is never met
t = time.monotonic()
try:
    mod.small_m.quantize(x, layer, mod.inv_smooth(layer), mod.INV_QMAX)
    torch.cuda.synchronize()
except Exception as e:       # the context is unusable after a trap: report and leave
    print(f"FAILED AFTER {time.monotonic() - t:.1f} s: {type(e).__name__}: {e}".splitlines()[0], flush=True)
else:
    print("COMPLETED", flush=True)
"""


def test_small_m_quantizer_barrier_that_is_never_met_fails_instead_of_hanging():
    """Kernel 1's grid barrier gives up after 2 s (`__trap`), so a launch whose blocks cannot all arrive fails
    with a CUDA error the host sees instead of holding the GPU for ever. A trap leaves the CUDA context unusable,
    so this runs in its own process; the timeout is the hang check."""
    import os
    import subprocess
    import sys
    _small_m_module()                  # built (and cached) here first: the child only loads it
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _BARRIER_NEVER_MET], cwd=root, capture_output=True, text=True,
                         timeout=120)
    text = out.stdout + out.stderr
    assert "FAILED AFTER" in text and "COMPLETED" not in text, text[-2000:]
    assert "launch failure" in text.lower() or "illegal instruction" in text.lower(), text[-2000:]


def test_small_m_cuda_kernel_rejects_bad_calls_clearly():
    """Shapes and dtypes the kernel does not take fail with a message, not a wrong result."""
    mod = _small_m_module()
    layer = _layer(3584, 3584, True, seed=5)
    with pytest.raises(ValueError, match="i8s path takes"):
        mod.w4a4_linear(torch.randn(33, 3584, device="cuda").bfloat16(), layer, path="i8s")
    with pytest.raises(ValueError, match="i8s path takes"):
        mod.w4a4_linear(torch.randn(4, 3584, device="cuda").half(), layer, path="i8s")
    x = torch.randn(4, 3584, device="cuda").bfloat16()
    q, ux, lr = mod.quantize_activations(x, layer, i8=True)
    y = torch.empty(4, 3584, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="splits do not fit"):
        mod.small_m.w4a4_small_m(q, ux, layer, layer.weight_units(), lr, y, warps=4, splits=15)
    # the binding's own checks come back as a message (no C++ exception through the binding)
    why = mod.small_m.extension().w4a4_small_m(q.float(), ux, layer.qweight, layer.wscales, layer.weight_units(), lr,
                                               layer.lora_up, layer.bias, y, *mod.small_m._buffers(y.device, 4 * 3584, 112),
                                               4, 1, 0, False)
    assert why.startswith("w4a4_small_m: a is Float"), why


def test_gelu_epilogue_matches_reference_on_the_ffn_shape():
    """fc1 of the FFN (3584 -> 14336) with act="gelu_tanh" through the default dispatch at every M:
    the epilogue's GELU of the float32 result vs the reference's (fresh inputs, poisoned outputs)."""
    from var_gen_ros.quant.dispatch import w4a4_kernel
    layer = _layer(3584, 14336, True, seed=7)
    torch.manual_seed(torch.seed() % 2 ** 31)
    for M in MS:
        x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x, "gelu_tanh").float()
        y = torch.full((M, 14336), float("nan"), device="cuda", dtype=x.dtype)
        w4a4_kernel(x)(x, layer, out=y, act="gelu_tanh")
        rel = ((y.float() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-3, (M, rel)
        assert torch.equal(layer(x, act="gelu_tanh"), y)             # forward() takes the same path


@pytest.mark.parametrize("K", [3584, 14336])
def test_quantizer_launches_agree(K):
    """Every quantizer launch (FMA, bf16x2, bf16x2s or bf16x2i tensor-core low-rank dot, λ or 1/λ read, row blocks,
    warps, the low-rank dot in kernel 1 or in its row pass) gives the same codes and scales, and the low-rank input
    within 2e-5 of float64 (fresh inputs each run)."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    layer = _layer(K, 3584, True, seed=K)
    for M in (2, 77, 2048):
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        x[:, torch.randint(K, (4,))] *= 30
        lr_ref = (x.double() / layer.smooth.double()) @ layer.lora_down.double()
        for fp8, f16, i8 in ((False, False, False), (True, False, False), (False, True, False), (False, False, True)):
            q0, s0, lr0 = mod.quantize_activations(x, layer, fp8=fp8, f16=f16, i8=i8, lr_prec="ieee")
            # "bf16x2s" with 1/λ read from inv_smooth: LR_SPLIT_X's kernel 1 (no divisions; sixteenth session)
            for prec, bm, w, inv in (("ieee", None, 4, False), ("bf16x2", 16, 4, False), ("bf16x2", 64, 8, False),
                                     ("bf16x2", None, 4, False), ("bf16x2s", 16, 4, True), ("bf16x2s", 128, 8, True),
                                     ("bf16x2s", None, 4, False), ("bf16x2i", 128, 8, True), ("bf16x2i", 64, 4, True)):
                q, sx, lr = mod.quantize_activations(x, layer, fp8=fp8, f16=f16, i8=i8, lr_prec=prec, block_m=bm,
                                                     num_warps=w, inv=inv, row_pass_lr=False)
                assert torch.equal(q.view(torch.int8), q0.view(torch.int8)) and torch.equal(sx, s0), (M, fp8, prec, bm)
                err = ((lr.sum(0).double() - lr_ref).norm() / lr_ref.norm()).item()
                assert err <= 2e-5, (M, fp8, prec, bm, err)
                # the low-rank dot in the row pass (LR_ROW_PASS): the same codes, and the same operands
                q, sx, lr_r = mod.quantize_activations(x, layer, fp8=fp8, f16=f16, i8=i8, lr_prec=prec, block_m=bm,
                                                       num_warps=w, inv=inv, row_pass_lr=True)
                assert torch.equal(q.view(torch.int8), q0.view(torch.int8)) and torch.equal(sx, s0), (M, fp8, prec, bm)
                err = ((lr_r.sum(0).double() - lr_ref).norm() / lr_ref.norm()).item()
                assert err <= 2e-5, (M, fp8, prec, bm, err, "row pass")
        # the reference's codes and two-level scales; the f16 and i8 layouts hold q·m with the unit u per row
        from var_gen_ros.quant.int4 import quantize_groups, two_level
        xs = smooth_input(x, layer.smooth)
        u, m = two_level(xs, 64)
        codes = quantize_groups(xs, u * m, 64)
        q8, s8, _ = mod.quantize_activations(x, layer, fp8=True)
        assert torch.equal(q8.float(), codes.float()) and torch.equal(s8.t(), u * m), M
        a16, rs, _ = mod.quantize_activations(x, layer, f16=True)
        a8, rs8, _ = mod.quantize_activations(x, layer, i8=True)
        qm = (codes.float().view(M, K // 64, 64) * m.unsqueeze(-1)).view(M, K)
        assert torch.equal(a16.float(), qm) and torch.equal(a8.float(), qm), M
        assert torch.equal(rs, u.squeeze(-1)) and torch.equal(rs8, rs), M


def test_tma_tiles_launch_from_a_thread_that_did_not_import_the_kernels():
    """Triton's allocator (global memory for the TMA descriptors a kernel builds on the device) is a context variable,
    and a new thread starts without it. gen_node generates in its engine's worker thread: before `_ensure_allocator`
    every TMA tile failed there with "no allocator was set" (found on the H100 through the engine, twenty-seventh
    session). A TMA tile of the int8-workspace GEMM, 512 rows of 3584 -> 10752, from a new thread gives the main
    thread's bits."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("TMA tiles are sm_90+")
    import threading
    from kernels_under_test import gemm_module
    mod = gemm_module()
    layer = _layer(3584, 10752, True, seed=11)
    x = (torch.randn(512, 3584, device="cuda") * 2).bfloat16()
    cfg = dict(BLOCK_M=128, BLOCK_N=256, SWAP=False, SPLIT_K=1, num_warps=8, num_stages=3, TMA=True, KSTEP=128)
    want = mod.w4a4_linear(x, layer, path="i8w", config=cfg)
    got = {}

    def in_thread():
        try:
            got["y"] = mod.w4a4_linear(x, layer, path="i8w", config=cfg)
            torch.cuda.synchronize()
        except Exception as e:      # reported by the assert below, not lost in the thread
            got["error"] = f"{type(e).__name__}: {e}"
    t = threading.Thread(target=in_thread)
    t.start()
    t.join(300)
    assert "error" not in got, got["error"]
    assert torch.equal(got["y"], want)
    ref = layer.reference_forward(x).float()
    assert ((want.float() - ref).norm() / ref.norm()).item() <= 1e-3


@pytest.mark.parametrize("small", [True, False])
def test_every_gemm_variant_matches_reference(small):
    """Each autotuner candidate (SWAP on and off, every tile), not only the ones the tuner picks."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    K, N = 3584, 3584
    layer = _layer(K, N, True, seed=7)
    M = 32 if small else 2048
    x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
    ref = layer.reference_forward(x).float()
    tile = lambda c: dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    runs = [("int8", tile(c)) for c in (mod.SMALL_M_CONFIGS if small else mod.LARGE_M_CONFIGS)]
    fp8_cfgs = mod.FP8_SMALL_M_CONFIGS if small else mod.FP8_LARGE_M_CONFIGS
    if torch.cuda.get_device_capability() >= (8, 9):
        runs += [(p, tile(c)) for p in ("fp8", "fp8w") for c in fp8_cfgs]
    f16_cfgs = mod.F16_SMALL_M_CONFIGS if small else mod.F16_LARGE_M_CONFIGS
    runs += [(p, tile(c)) for p in ("f16", "f16w") for c in f16_cfgs]
    i8_cfgs = mod.I8_SMALL_M_CONFIGS if small else mod.I8_LARGE_M_CONFIGS
    runs += [(p, tile(c)) for p in ("i8", "i8w") for c in i8_cfgs
             if p == "i8w" or not (c.kwargs.get("TMA") or c.kwargs.get("KSTEP", 64) != 64)]
    for path, cfg in runs:
        y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
        mod.w4a4_linear(x, layer, out=y, path=path, config=cfg)
        rel = ((y.float() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-3, (path, cfg, rel)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="the persistent tiles are TMA tiles (sm_90+)")
def test_persistent_i8w_tiles_give_the_grid_per_tile_bits_on_every_8b_shape():
    """The i8 workspace GEMM as a persistent kernel (`_i8w_persistent`, VAR_GEN_W4A4_PERSIST: about one program per
    SM, each taking several tiles, the tile loop fused with the K loop) on every 8B shape, at 2048, 4100 (a partial row
    tile) and 8192 rows, fc1's GELU on 3584 -> 14336: the same output as the grid-per-tile TMA tile of its size (the
    same int32 sums and epilogue; within 1e-6 of it, expected the same bits) and within 1e-3 of the reference, outputs
    poisoned before each call."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    tile = lambda c: dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    torch.manual_seed(torch.seed() % 2 ** 31)
    same_bits = []
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 11)
        act = "gelu_tanh" if N == 4 * K else None
        for M in (2048, 4100, 8192):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            ref = layer.reference_forward(x, act).float()
            for c in mod.I8_PERSIST_CONFIGS:
                cfg = tile(c)
                outs = []
                for persist in (True, False):
                    y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
                    mod.w4a4_linear(x, layer, out=y, path="i8w", config=dict(cfg, PERSIST=persist), act=act)
                    outs.append(y.float())
                p, g = outs
                rel_ref = ((p - ref).norm() / ref.norm()).item()
                rel_grid = ((p - g).norm() / g.norm()).item()
                assert torch.isfinite(p).all() and rel_ref <= 1e-3 and rel_grid <= 1e-6, (K, N, M, cfg, rel_ref, rel_grid)
                same_bits.append(torch.equal(p, g))
    print(f"persistent == grid-per-tile bit for bit in {sum(same_bits)} of {len(same_bits)} calls")


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_the_gluon_i8_mainloop_gives_the_exact_sums_on_every_8b_shape():
    """kernels/i8_mainloop_gluon.py (the i8w GEMM's K loop with its INT8 wgmma asynchronous; a probe, not in the
    product): bf16 of the exact int32 sums of int8 operands up to |112| (the i8 path's q·m), every 8B shape, 2048
    and 4100 rows (a partial row tile), 128 x 256 and 128 x 128 tiles, outputs poisoned."""
    from var_gen_ros.quant.dispatch import kernel_module
    glu = kernel_module("i8_mainloop_gluon")
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, _ in SHAPES_8B:
        w = torch.randint(-112, 113, (N, K), dtype=torch.int8, device="cuda")
        for M in (2048, 4100):
            x = torch.randint(-112, 113, (M, K), dtype=torch.int8, device="cuda")
            ref = glu.reference(x, w)
            for bm, bn in ((128, 256), (128, 128)):
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
                glu.i8_mainloop(x, w, y, bm, bn)
                assert torch.equal(y, ref), (K, N, M, bm, bn, float((y.float() - ref.float()).abs().max()))


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_the_gluon_i8w_gemm_matches_the_triton_gemm_and_the_reference_on_every_8b_shape(monkeypatch):
    """kernels/i8_mainloop_gluon.py's whole i8w GEMM (its asynchronous INT8 K loop, then the units, the low-rank
    up-projection as two bf16 wgmmas, bias, fc1's GELU) on kernel 1's codes and the int8 weight workspace: within 1e-3
    of the layer's reference and within 5e-4 of the product's Triton i8w forward (the same integer sums; the low-rank
    term's bf16 pair against Hopper's tf32x3, ~2^-17, which flips some outputs' bf16 rounding by one step), every 8B
    shape, 2048 and 4100 rows, outputs poisoned."""
    from kernels_under_test import gemm_module
    from var_gen_ros.quant.dispatch import kernel_module
    gm, glu = gemm_module(), kernel_module("i8_mainloop_gluon")
    monkeypatch.setattr(gm, "GLUON_I8W", False)          # the base: the Triton i8w GEMM
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 13)
        act = "gelu_tanh" if N == 4 * K else None
        wu = layer.weight_units()
        wq = gm._i8_workspace(layer, wu)
        for M in (2048, 4100):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            ref = layer.reference_forward(x, act).float()
            base = gm.w4a4_linear(x, layer, path="i8w", act=act).float()
            q, ux, lr = gm.quantize_activations(x, layer, i8=True)
            assert lr.shape[0] == 1, lr.shape
            for bm, bn in ((128, 256), (128, 128)):
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
                glu.i8w_gemm(q, wq, ux, wu, lr[0], layer.lora_up, layer.bias, 1 if act else 0, y, bm, bn)
                y = y.float()
                rel_ref = ((y - ref).norm() / ref.norm()).item()
                rel_base = ((y - base).norm() / base.norm()).item()
                assert torch.isfinite(y).all() and rel_ref <= 1e-3 and rel_base <= 5e-4, (K, N, M, bm, bn, rel_ref, rel_base)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_w4a4_linear_takes_the_gluon_i8w_gemm_when_asked(monkeypatch):
    """VAR_GEN_W4A4_GLUON (GLUON_I8W): `w4a4_linear`'s i8w calls go through `i8w_gemm` (counted), within 5e-4 of the
    Triton forward and 1e-3 of the reference, fc1's GELU included; calls with a fixed Triton config do not."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    calls = []
    real = glu.i8w_gemm
    monkeypatch.setattr(glu, "i8w_gemm", lambda *a, **k: (calls.append(a[0].shape), real(*a, **k))[1])
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, bias in ((3584, 14336, True), (14336, 3584, True)):
        layer = _layer(K, N, bias, seed=K + N + 17)
        act = "gelu_tanh" if N == 4 * K else None
        x = (torch.randn(2048, K, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x, act).float()
        monkeypatch.setattr(gm, "GLUON_I8W", False)
        base = gm.w4a4_linear(x, layer, path="i8w", act=act).float()
        monkeypatch.setattr(gm, "GLUON_I8W", True)
        calls.clear()
        y = gm.w4a4_linear(x, layer, path="i8w", act=act).float()
        assert calls == [(2048, K)], calls
        assert ((y - base).norm() / base.norm()).item() <= 5e-4 and ((y - ref).norm() / ref.norm()).item() <= 1e-3
        calls.clear()
        gm.w4a4_linear(x, layer, path="i8w", act=act, config=dict(BLOCK_M=128, BLOCK_N=128, SWAP=False, KSTEP=128))
        assert calls == []


def _i8p_tiles(glu, M, N, K):
    """i8p_gemm launches a test checks at M rows: the default, then swapped and not (at 257-512 rows swapped in two row
    tiles of 256), K split or not, 4 / 8 warps."""
    tiles = [glu.i8p_tile(M, N, K, torch.cuda.get_device_properties(0).multi_processor_count)]
    if M <= 256:
        bm = max(32, triton_next_pow2(M))
        tiles += [dict(swap=True, block_m=bm, block_n=64, num_warps=4, instr_n=min(bm, 128), split_k=s) for s in (1, 2, 4)]
        tiles += [dict(swap=True, block_m=bm, block_n=128, num_warps=8, instr_n=min(bm, 128), split_k=1)]
    elif M <= 512:      # two row tiles of 256 (VAR_GEN_W4A4_I8P_SWAP256_MAX_M), 4 stages and 2
        tiles += [dict(swap=True, block_m=256, block_n=64, num_warps=4, instr_n=128, split_k=1, stages=st)
                  for st in (4, 2)]
    tiles += [dict(swap=False, block_m=128, block_n=bn, num_warps=8, instr_n=128, split_k=s) for bn in (128, 256)
              for s in (1, 2)]
    tiles += [dict(swap=False, block_m=64, block_n=128, num_warps=4, instr_n=128, split_k=1)]
    return [t for t in tiles if glu.split_k_fits(K, t["split_k"])]


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _i8_weights(layer) -> torch.Tensor:
    """The layer's int8 q·m (N, K) made in PyTorch from its packed codes and two-level scales (exact)."""
    from var_gen_ros.quant.int4 import unpack_int4
    mult = torch.round(layer.wscales.float() / layer.weight_units()[:, None])
    return unpack_int4(layer.qweight).float() * mult.repeat_interleave(64, dim=1)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_the_gluon_i8p_gemm_sums_exactly_on_every_8b_shape():
    """kernels/i8_mainloop_gluon.py's `i8p_gemm` (the INT8 wgmma on the packed weights, their q·m made in the K loop)
    without its low-rank term and bias: bit for bit bf16(float32(the exact integer sums) · u_x · u_w), the sums from
    PyTorch's own unpack of the codes and scales, on every 8B shape at 33-2048 rows, every tile `_i8p_tiles` lists
    (swapped and not, K split 1-4 ways), outputs poisoned."""
    from kernels_under_test import gemm_module
    from var_gen_ros.quant.dispatch import kernel_module
    gm, glu = gemm_module(), kernel_module("i8_mainloop_gluon")
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 23)
        wu = layer.weight_units()
        w8 = _i8_weights(layer).double()
        for M in (33, 72, 128, 200, 288, 1152, 2048):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            q, ux, _ = gm.quantize_activations(x, layer, i8=True)
            ref = ((q.double() @ w8.t()).float() * (ux[:, None] * wu[None, :])).bfloat16()
            for t in _i8p_tiles(glu, M, N, K):
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
                glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, None, layer.lora_up, None, 0, y, tile=t)
                if not torch.equal(y, ref):
                    bad = (y.float() - ref.float()).abs()
                    raise AssertionError((K, N, M, t, int((y != ref).sum()), float(bad.max()), bool(torch.isnan(y).any())))


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_the_gluon_i8p_gemm_matches_the_triton_forward_and_the_reference_on_every_8b_shape():
    """`i8p_gemm` whole (the units, the low-rank up-projection as two bf16 wgmmas, bias, fc1's GELU): within 1e-3 of the
    layer's reference and 5e-4 of the product's Triton forward at the same rows (i8 below 257 rows, i8w from there:
    the same integer sums; the low-rank term's bf16 pair against Hopper's tf32x3), every 8B shape, 33-2048 rows, every
    tile `_i8p_tiles` lists, outputs poisoned; the split-K counters left zeroed."""
    from kernels_under_test import gemm_module
    from var_gen_ros.quant.dispatch import kernel_module
    gm, glu = gemm_module(), kernel_module("i8_mainloop_gluon")
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 29)
        act = "gelu_tanh" if N == 4 * K else None
        wu = layer.weight_units()
        for M in (33, 128, 288, 2048):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            ref = layer.reference_forward(x, act).float()
            base = gm.w4a4_linear(x, layer, path="i8" if M < 257 else "i8w", act=act).float()
            q, ux, lr = gm.quantize_activations(x, layer, i8=True)
            assert lr.shape[0] == 1, lr.shape
            for t in _i8p_tiles(glu, M, N, K):
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
                cnt = torch.zeros(4096, dtype=torch.int32, device="cuda")
                glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, lr[0], layer.lora_up, layer.bias,
                             1 if act else 0, y, tile=t, cnt=cnt)
                y = y.float()
                rel_ref = ((y - ref).norm() / ref.norm()).item()
                rel_base = ((y - base).norm() / base.norm()).item()
                assert torch.isfinite(y).all() and rel_ref <= 1e-3 and rel_base <= 5e-4, (K, N, M, t, rel_ref, rel_base)
                assert int(cnt.abs().sum()) == 0, (K, N, M, t)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_the_warp_specialized_i8p_gemm_sums_exactly_and_matches_the_reference_on_every_8b_shape():
    """`i8p_gemm`'s warp-specialized kernel (tile "ws": a TMA warp, four unpack warps, the wgmma warps; mbarrier
    hand-overs): without the low-rank term and bias bit for bit the exact sums from PyTorch's unpack; whole, within 1e-3
    of the reference and 5e-4 of the Triton forward; every 8B shape at 33-2048 rows, swapped and not, K split 1-2 ways,
    outputs poisoned. (Run apart from the other i8p tests by bench/device/gluon_gemms.sh: a hand-over that never comes
    would hang it.)"""
    from kernels_under_test import gemm_module
    from var_gen_ros.quant.dispatch import kernel_module
    gm, glu = gemm_module(), kernel_module("i8_mainloop_gluon")
    torch.manual_seed(torch.seed() % 2 ** 31)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 37)
        act = "gelu_tanh" if N == 4 * K else None
        wu = layer.weight_units()
        w8 = _i8_weights(layer).double()
        for M in (33, 128, 288, 2048):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            q, ux, lr = gm.quantize_activations(x, layer, i8=True)
            exact = ((q.double() @ w8.t()).float() * (ux[:, None] * wu[None, :])).bfloat16()
            ref = layer.reference_forward(x, act).float()
            base = gm.w4a4_linear(x, layer, path="i8" if M < 257 else "i8w", act=act).float()
            tiles = [dict(glu.i8p_tile(M, N, K, sms), ws=True)] + [
                dict(t, ws=True) for t in _i8p_tiles(glu, M, N, K) if t["split_k"] <= 2 and t["block_n"] <= 128]
            for t in tiles:
                y = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
                glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, None, layer.lora_up, None, 0, y, tile=t)
                assert torch.equal(y, exact), (K, N, M, t, int((y != exact).sum()))
                y.fill_(float("nan"))
                glu.i8p_gemm(q, layer.qweight, layer.wscales, wu, ux, lr[0], layer.lora_up, layer.bias,
                             1 if act else 0, y, tile=t)
                y = y.float()
                rel_ref = ((y - ref).norm() / ref.norm()).item()
                rel_base = ((y - base).norm() / base.norm()).item()
                assert torch.isfinite(y).all() and rel_ref <= 1e-3 and rel_base <= 5e-4, (K, N, M, t, rel_ref, rel_base)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_w4a4_linear_takes_the_gluon_i8p_gemm_when_asked_eager_and_in_a_cuda_graph(monkeypatch):
    """VAR_GEN_W4A4_GLUON_I8P (GLUON_I8P): `w4a4_linear`'s i8 and i8w calls of I8P_MIN_M-I8P_MAX_M rows go through
    `i8p_gemm` (counted), within 5e-4 of the Triton forward and 1e-3 of the reference, eagerly and replayed from a CUDA
    graph (twice, with new inputs: the split-K counters re-armed), fc1's GELU included; rows outside the range and calls
    with a fixed Triton config do not; the qkv projection leaves its GEMM with the epilogue inside only with I8P_QKV "1"
    (for i8p and the separate epilogue; "fused" keeps the epilogue in the GEMM, i8p's); nor does an i8w call on a
    layer whose workspace an earlier slice left kept (`workspaces_kept`), which gives the i8w path's bits."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    calls = []
    real = glu.i8p_gemm
    monkeypatch.setattr(glu, "i8p_gemm", lambda *a, **k: (calls.append(a[0].shape[0]), real(*a, **k))[1])
    torch.manual_seed(torch.seed() % 2 ** 31)
    for K, N, bias in ((3584, 3584, True), (3584, 14336, True), (14336, 3584, True)):
        layer = _layer(K, N, bias, seed=K + N + 31)
        act = "gelu_tanh" if N == 4 * K else None
        for M in (72, gm.I8P_MAX_M):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            ref = layer.reference_forward(x, act).float()
            monkeypatch.setattr(gm, "GLUON_I8P", False)
            base = gm.w4a4_linear(x, layer, act=act).float()
            monkeypatch.setattr(gm, "GLUON_I8P", True)
            calls.clear()
            y = gm.w4a4_linear(x, layer, act=act).float()
            assert calls == [M], calls
            assert ((y - base).norm() / base.norm()).item() <= 5e-4 and ((y - ref).norm() / ref.norm()).item() <= 1e-3
            # in a CUDA graph, as the product runs its scales
            xs = x.clone()
            out = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                gm.w4a4_linear(xs, layer, out=out, act=act)          # warm-up (compiles) outside the capture
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                gm.w4a4_linear(xs, layer, out=out, act=act)
            for _ in range(2):
                x2 = (torch.randn(M, K, device="cuda") * 2).bfloat16()
                xs.copy_(x2)
                out.fill_(float("nan"))
                g.replay()
                torch.cuda.synchronize()
                eager = gm.w4a4_linear(x2, layer, act=act).float()
                assert torch.equal(out.float(), eager), (K, N, M)
        calls.clear()
        x = (torch.randn(8, K, device="cuda") * 2).bfloat16()
        gm.w4a4_linear(x, layer, act=act)                  # 8 rows: below I8P_MIN_M
        x = (torch.randn(gm.I8P_MAX_M + 1, K, device="cuda") * 2).bfloat16()
        gm.w4a4_linear(x, layer, act=act)                  # above I8P_MAX_M
        x = (torch.randn(128, K, device="cuda") * 2).bfloat16()
        gm.w4a4_linear(x, layer, act=act, config=dict(BLOCK_M=64, BLOCK_N=128, SWAP=True))
        assert calls == [], calls
        # a large scale's last slice: the layer's workspace kept by the slice before, the i8w GEMM reuses it (no i8p)
        small = (torch.randn(gm.I8P_MAX_M, K, device="cuda") * 2).bfloat16()
        assert gm.path_for(small, layer) == "i8w"
        with gm.workspaces_kept():
            gm.w4a4_linear((torch.randn(2048, K, device="cuda") * 2).bfloat16(), layer, act=act)
            assert gm._kept_workspace(layer) is not None
            kept = gm.w4a4_linear(small, layer, act=act).float()
            assert calls == [], calls
        monkeypatch.setattr(gm, "GLUON_I8P", False)
        assert torch.equal(kept, gm.w4a4_linear(small, layer, path="i8w", act=act).float())
        monkeypatch.setattr(gm, "GLUON_I8P", True)
    # the qkv projection (3584 -> 10752) keeps its Triton epilogue GEMM at 288 rows unless I8P_QKV sends it to i8p
    qkv = _layer(3584, 10752, False, seed=41)
    x = (torch.randn(2, gm.I8P_MAX_M // 2, 3584, device="cuda") * 2).bfloat16()
    for mode, fusable in (("0", True), ("1", False), ("fused", True)):
        monkeypatch.setattr(gm, "I8P_QKV", mode)
        assert gm.qkv_fusable(x, qkv, 128) == fusable, mode


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_fc1s_epilogue_makes_fc2s_row_pass_and_the_ffn_matches(monkeypatch):
    """FC2_STATS (`w4a4_ffn`): fc1 (3584 -> 14336, GELU) at 288 rows (i8p unswapped, two programs an SM) and 1024 (the
    Gluon i8w GEMM) with fc2 as its next layer. Its output is the plain call's bit for bit; the maxima its epilogue
    leaves are fc2's row pass's bit for bit (|bf16 output · 1/λ| maxed in PyTorch), the other split maxima zero; the
    low-rank shares' sum within 1e-5 of float64 h · (L_down / λ); fc2 given them within 5e-4 of fc2 alone and 1e-3 of
    its reference; the FFN the same, and replayed from a CUDA graph (new inputs) the eager call's bits. At 72 rows
    (swapped i8p) no stats are made and the FFN is the two layers'."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    if gm._gluon() is None:
        pytest.skip("this Triton has no Gluon")
    monkeypatch.setattr(gm, "FC2_STATS", True)
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()    # noqa: E731
    torch.manual_seed(torch.seed() % 2 ** 31)
    fc1, fc2 = _layer(3584, 14336, True, seed=71), _layer(14336, 3584, True, seed=72)
    assert gm.ffn_stats_apply(fc1, fc2)
    inv = gm.inv_smooth(fc2)
    for M in (288, 1024):
        x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
        stats = {}
        h = gm.w4a4_linear(x, fc1, act="gelu_tanh", next_layer=fc2, stats=stats)
        assert sorted(stats) == ["maxima", "shares"], (M, stats)
        assert torch.equal(h, gm.w4a4_linear(x, fc1, act="gelu_tanh"))
        assert torch.equal(stats["maxima"][0], (h.float() * inv).abs().amax(1)) and not stats["maxima"][1:].any()
        want = (h.double() * inv.double()) @ fc2.lora_down.double()
        assert rel(stats["shares"].sum(0).double(), want) <= 1e-5
        alone = gm.w4a4_linear(h, fc2)
        given = gm.w4a4_linear(h, fc2, given=stats)
        assert rel(given, alone) <= 5e-4 and rel(given, fc2.reference_forward(h)) <= 1e-3, M
        ffn = gm.w4a4_ffn(x, fc1, fc2)
        assert rel(ffn, alone) <= 5e-4
        xs, out = x.clone(), torch.empty_like(ffn)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            gm.w4a4_ffn(xs, fc1, fc2)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out.copy_(gm.w4a4_ffn(xs, fc1, fc2))
        for _ in range(2):
            xs.copy_((torch.randn(M, 3584, device="cuda") * 2).bfloat16())
            out.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, gm.w4a4_ffn(xs, fc1, fc2)), M
    stats = {}
    x = (torch.randn(72, 3584, device="cuda") * 2).bfloat16()
    gm.w4a4_linear(x, fc1, act="gelu_tanh", next_layer=fc2, stats=stats)
    assert stats == {}


def test_host_bound_calls_take_the_triton_gemms_with_their_bits(monkeypatch):
    """Inside `host_bound` (the eager per-prompt condition layers), `w4a4_linear` takes neither Gluon GEMM: at 72 rows
    (i8p's range) and 800 rows (the Gluon i8w GEMM's) its output is the Triton GEMMs' bit for bit and no Gluon launch is
    counted; outside, the same calls take them again (on sm_90, where they are on)."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    calls = []
    if glu is not None:
        for name in ("i8p_gemm", "i8w_gemm"):
            real = getattr(glu, name)
            monkeypatch.setattr(glu, name, lambda *a, real=real, name=name, **k: (calls.append(name), real(*a, **k))[1])
    layer = _layer(2048, 7168, False, seed=61)        # ca.mat_kv, the condition's layer
    shipped = gm.GLUON_I8P, gm.GLUON_I8W
    for M in (72, 800):
        x = (torch.randn(M, 2048, device="cuda") * 2).bfloat16()
        monkeypatch.setattr(gm, "GLUON_I8P", False)
        monkeypatch.setattr(gm, "GLUON_I8W", False)
        base = gm.w4a4_linear(x, layer)
        monkeypatch.setattr(gm, "GLUON_I8P", shipped[0])
        monkeypatch.setattr(gm, "GLUON_I8W", shipped[1])
        calls.clear()
        with gm.host_bound():
            y = gm.w4a4_linear(x, layer)
        assert calls == [] and torch.equal(y, base), (M, calls)
        gm.w4a4_linear(x, layer)
        if torch.cuda.get_device_capability() == (9, 0) and glu is not None and all(shipped):
            assert calls == ["i8p_gemm" if M <= gm.I8P_MAX_M else "i8w_gemm"], (M, calls)


def test_workspaces_unpacked_ahead_give_the_same_bits_eager_and_in_a_cuda_graph(monkeypatch):
    """VAR_GEN_W4A4_UNPACK_AHEAD (`workspaces_ahead`, kernels/unpack_ahead.py): a chain of i8w layers at 600 rows gives
    the bits it gives without. The first pass learns the order (no unpack made ahead); the next makes each later
    layer's workspace on the side stream and takes it (counted). Captured inside the context into a CUDA graph and
    replayed with new inputs, the same bits as the plain chain. A layer whose weights changed in place after its
    workspace was made ahead has it made again (the new weights' bits). A workspace made ahead and never taken is
    waited for and freed on exit (the allocator's count back where it was)."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    M = 600
    layers = [_layer(1024, 2048, True, seed=71), _layer(2048, 1024, True, seed=72), _layer(1024, 1024, False, seed=73)]

    def chain(x):
        for layer in layers:
            x = gm.w4a4_linear(x, layer)
        return x

    x = (torch.randn(M, 1024, device="cuda") * 2).bfloat16()
    assert gm.path_for(x, layers[0]) == "i8w"
    base = chain(x)
    monkeypatch.setattr(gm, "UNPACK_AHEAD", True)
    with gm.workspaces_ahead() as state:
        assert torch.equal(chain(x), base)
    assert (state.forks, state.hits) == (0, 0)
    with gm.workspaces_ahead() as state:
        assert torch.equal(chain(x), base)
    assert (state.forks, state.hits, state.pending) == (2, 2, {})
    # captured as the product captures a scale: the context inside the captured forward
    xs = x.clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        with gm.workspaces_ahead() as state:
            out = chain(xs)
    assert (state.forks, state.hits) == (2, 2)
    for _ in range(2):
        x2 = (torch.randn(M, 1024, device="cuda") * 2).bfloat16()
        xs.copy_(x2)
        g.replay()
        assert torch.equal(out, chain(x2))
    del g
    # the second layer's weights written in place after its unpack was made ahead: made again from the new ones
    with gm.workspaces_ahead() as state:
        y = gm.w4a4_linear(x, layers[0])
        layers[1].qweight.copy_(layers[1].qweight.flip(0))
        for layer in layers[1:]:
            y = gm.w4a4_linear(y, layer)
    assert (state.forks, state.hits) == (2, 1)
    assert torch.equal(y, chain(x))
    # made ahead, never taken: freed on exit
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with gm.workspaces_ahead() as state:
        gm.w4a4_linear(x, layers[0])
        assert len(state.pending) == 1
    torch.cuda.synchronize()
    assert state.pending == {} and torch.cuda.memory_allocated() == before


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_an_i8p_launch_this_gpu_cannot_run_falls_back_to_the_triton_gemm_once(monkeypatch):
    """With GLUON_I8P on and an i8p launch that needs more shared memory than an SM has (a 128 x 512 tile: 262 KB),
    `w4a4_linear` warns once, returns the Triton GEMM's output bit for bit, and turns i8p off for the later calls, which
    the diagnostics' kernel status then says."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    layer = _layer(3584, 3584, True, seed=43)
    x = (torch.randn(256, 3584, device="cuda") * 2).bfloat16()
    monkeypatch.setattr(gm, "GLUON_I8P", False)
    base = gm.w4a4_linear(x, layer)
    monkeypatch.setattr(gm, "GLUON_I8P", True)
    monkeypatch.setattr(gm, "GLUON_FAILED", {})
    monkeypatch.setattr(glu, "i8p_tile", lambda *a, **k: dict(swap=False, block_m=128, block_n=512, num_warps=8,
                                                               instr_n=128, split_k=1))
    with pytest.warns(UserWarning, match="i8p GEMM"):
        y = gm.w4a4_linear(x, layer)
    assert torch.equal(y, base) and gm.GLUON_I8P is False
    assert not gm.gluon_i8p_applies(x, layer)
    from var_gen_ros.quant.dispatch import kernel_status
    assert "i8p off after a failure (OutOfResources" in kernel_status(), kernel_status()


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
def test_a_gluon_i8w_launch_this_gpu_cannot_run_falls_back_to_the_triton_gemm_once(monkeypatch):
    """The same for the Gluon i8w GEMM (on by default on sm_90 since the fiftieth session): a launch in 6 stages of
    128 x 256 (294 KB of shared memory) warns once, returns the Triton i8w GEMM's output bit for bit and turns the
    Gluon i8w GEMM off, which the kernel status says."""
    from kernels_under_test import gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    layer = _layer(3584, 3584, True, seed=47)
    x = (torch.randn(1024, 3584, device="cuda") * 2).bfloat16()
    monkeypatch.setattr(gm, "GLUON_I8W", False)
    base = gm.w4a4_linear(x, layer, path="i8w")
    monkeypatch.setattr(gm, "GLUON_I8W", True)
    monkeypatch.setattr(gm, "GLUON_FAILED", {})
    monkeypatch.setattr(glu, "i8w_gemm", functools.partial(glu.i8w_gemm, stages=6))
    with pytest.warns(UserWarning, match="i8w GEMM"):
        y = gm.w4a4_linear(x, layer, path="i8w")
    assert torch.equal(y, base) and gm.GLUON_I8W is False
    from var_gen_ros.quant.dispatch import kernel_status
    assert "i8w off after a failure (OutOfResources" in kernel_status(), kernel_status()


@pytest.mark.parametrize("M", [32, 128, 256])
def test_the_swar_code_unpack_gives_the_default_bits_on_every_8b_shape(M):
    """The i8 GEMM with its weight codes made four bytes at a time in uint32 words (SWAR, twenty-eighth session; the
    default since the twenty-ninth) sums the same integers as the byte-at-a-time unpack: the same output bits, on every
    8B shape, at the tiles of the small and large candidate lists (swapped and not, split K), and within 1e-3 of the
    reference."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    tile = lambda c: dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    cfgs = [tile(c) for c in mod.I8_SMALL_M_CONFIGS + mod.I8_LARGE_M_CONFIGS
            if not (c.kwargs.get("TMA") or c.kwargs.get("KSTEP", 64) != 64)][::3]
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + M)
        x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x).float()
        for cfg in cfgs:
            want = mod.w4a4_linear(x, layer, path="i8", config=dict(cfg, SWAR=False))
            got = torch.full_like(want, float("nan"))
            mod.w4a4_linear(x, layer, out=got, path="i8", config=dict(cfg, SWAR=True))
            assert torch.equal(got, want), (K, N, M, cfg)
        assert ((want.float() - ref).norm() / ref.norm()).item() <= 1e-3


def test_the_sm80_low_rank_epilogue_matches_reference_on_every_8b_shape():
    """The low-rank up-projection as two bf16 dots (LR_BF16: what sm_80-sm_89, the Orin, run; forced here
    on whatever GPU this is) in the i8 GEMM (small and large tiles, split-K) and the INT8-rescale GEMM,
    on every 8B shape: within 1e-3 of the reference, as the default tf32x3 form, and within 1e-4 of it."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    torch.manual_seed(torch.seed() % 2 ** 31)
    runs = [(32, "i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, num_warps=4, num_stages=4)),
            (32, "i8", dict(BLOCK_M=16, BLOCK_N=128, SWAP=True, SPLIT_K=4, num_warps=4, num_stages=4)),
            (32, "int8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False, num_warps=4, num_stages=4)),
            (2048, "i8w", dict(BLOCK_M=128, BLOCK_N=128, SWAP=False, num_warps=8, num_stages=3)),
            (2048, "i8w", dict(BLOCK_M=128, BLOCK_N=128, SWAP=True, num_warps=8, num_stages=3))]
    for K, N, bias in SHAPES_8B:
        layer = _layer(K, N, bias, seed=K + N + 1)
        for M, path, cfg in runs:
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            x[:, torch.randint(K, (4,))] *= 30
            ref = layer.reference_forward(x).float()
            ys = []
            for lr_bf16 in (True, False):
                y = torch.full((M, N), float("nan"), device="cuda", dtype=x.dtype)
                mod.w4a4_linear(x, layer, out=y, path=path, config=dict(cfg, LR_BF16=lr_bf16))
                ys.append(y.float())
                rel = ((ys[-1] - ref).norm() / ref.norm()).item()
                assert rel <= 1e-3, (K, N, M, path, cfg, lr_bf16, rel)
            assert ((ys[0] - ys[1]).norm() / ref.norm()).item() <= 1e-4, (K, N, M, path, cfg)


@pytest.mark.parametrize("path", ["fp8", "int8", "f16", "i8"])
def test_split_k_is_deterministic_and_replays_in_a_cuda_graph(path):
    """Split-K sums its partials in split order: the same bits on every call, eager or replayed in a
    CUDA graph (the per-tile counters re-arm themselves), and within 1e-3 of the reference."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    if path == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 MMA needs sm_89+")
    K, N = 14336, 3584
    layer = _layer(K, N, True, seed=11)
    x = (torch.randn(3, K, device="cuda") * 2).bfloat16()
    ref = layer.reference_forward(x).float()
    cfg = dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SPLIT_K=8, num_warps=4, num_stages=4)
    y = torch.full((3, N), float("nan"), device="cuda", dtype=x.dtype)
    mod.w4a4_linear(x, layer, out=y, path=path, config=cfg)
    eager = y.clone()
    assert ((eager.float() - ref).norm() / ref.norm()).item() <= 1e-3
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mod.w4a4_linear(x, layer, out=y, path=path, config=cfg)
    for _ in range(3):
        y.fill_(float("nan"))
        graph.replay()
        assert torch.equal(y, eager)
        mod.w4a4_linear(x, layer, out=y, path=path, config=cfg)
        assert torch.equal(y, eager)


# Infinity-8B at 1024x1024: tokens per scale (h*w of the 13 scales); B = 2 (CFG), 28 heads of 128
SCALES_1024 = [1, 4, 16, 36, 64, 144, 256, 400, 576, 1024, 1600, 2304, 4096]


def _kv_case(n_cached, n_tail, lq, seed):
    """Cosine-attention-like q (unit vectors x per-head scale up to 20) and k (unit vectors with a
    skewed per-channel offset, as RoPE'd normalised keys are), v with channel-dependent ranges;
    static per-(head, channel) INT8 scales calibrated on the keys themselves."""
    from var_gen_ros.quant.kv_int8 import asym_params, quantize_asym
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, H, D = 2, 28, 128
    cap = max(n_cached, 1)
    off = torch.randn(1, H, 1, D, device="cuda", generator=g) * 0.5
    k = torch.nn.functional.normalize(torch.randn(B, H, cap, D, device="cuda", generator=g) + off, dim=-1)
    v = torch.randn(B, H, cap, D, device="cuda", generator=g) * (torch.rand(1, H, 1, D, device="cuda", generator=g) * 2 + 0.1)
    ks, kz = asym_params(k.amin((0, 2), keepdim=True), k.amax((0, 2), keepdim=True))
    vs, vz = asym_params(v.amin((0, 2), keepdim=True), v.amax((0, 2), keepdim=True))
    kq, vq = quantize_asym(k, ks, kz), quantize_asym(v, vs, vz)
    scale = torch.linspace(4, 20, H, device="cuda").view(1, H, 1, 1)
    q = (torch.nn.functional.normalize(torch.randn(B, H, lq, D, device="cuda", generator=g) + off, dim=-1) * scale).bfloat16()
    kt = torch.nn.functional.normalize(torch.randn(B, H, n_tail, D, device="cuda", generator=g) + off, dim=-1).bfloat16()
    vt = torch.randn(B, H, n_tail, D, device="cuda", generator=g).bfloat16()
    return q, kq, vq, (ks, kz, vs, vz), kt, vt


def _float64_attention(q, kq, vq, n_cached, prm, kt, vt):
    from var_gen_ros.quant.kv_int8 import dequantize_asym
    ks, kz, vs, vz = prm
    outs = []
    for h in range(q.shape[1]):                 # one head at a time: Lq x Lk float64 scores are large
        K = torch.cat([dequantize_asym(kq[:, h:h + 1, :n_cached], ks[:, h:h + 1], kz[:, h:h + 1]).double(),
                       kt[:, h:h + 1].double()], 2)
        V = torch.cat([dequantize_asym(vq[:, h:h + 1, :n_cached], vs[:, h:h + 1], vz[:, h:h + 1]).double(),
                       vt[:, h:h + 1].double()], 2)
        outs.append(torch.softmax(q[:, h:h + 1].double() @ K.transpose(-1, -2), -1) @ V)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("si", range(len(SCALES_1024)))
def test_int8_kv_attention_kernel_matches_float64(si):
    """Scales 0..11 attend to their stored (int8) K/V; the last scale to int8 scales 0..11 plus its own
    bf16 K/V (never stored)."""
    from var_gen_ros.quant.dispatch import int8_attention_kernel, kernel_status
    torch.manual_seed(torch.seed() % 2 ** 31)
    last = si == len(SCALES_1024) - 1
    lq = SCALES_1024[si]
    n_cached = sum(SCALES_1024[:si]) if last else sum(SCALES_1024[:si + 1])
    q, kq, vq, prm, kt, vt = _kv_case(n_cached, lq if last else 0, lq, seed=int(torch.randint(1 << 30, (1,))))
    fn = int8_attention_kernel(q)
    assert fn is not None, kernel_status()
    o = torch.full_like(q, float("nan"))
    fn(q, kq, vq, n_cached, *prm, kt if last else None, vt if last else None, out=o)
    ref = _float64_attention(q, kq, vq, n_cached, prm, kt, vt)
    rel = ((o.double() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(o).all() and rel <= 1e-2, (si, rel)


@pytest.mark.parametrize("si", [8, 10, 11, 12])
def test_int8_kv_sdpa_path_matches_float64(si):
    """The large scales' path: each head group's K/V dequantized into a bounded bf16 buffer, then SDPA,
    written over the queries as Int8KVCache.attend asks, vs float64 attention on the dequantized K/V."""
    from kernels_under_test import attention_module
    mod = attention_module()
    torch.manual_seed(torch.seed() % 2 ** 31)
    last = si == len(SCALES_1024) - 1
    lq = SCALES_1024[si]
    n_cached = sum(SCALES_1024[:si]) if last else sum(SCALES_1024[:si + 1])
    q, kq, vq, prm, kt, vt = _kv_case(n_cached, lq if last else 0, lq, seed=int(torch.randint(1 << 30, (1,))))
    ref = _float64_attention(q, kq, vq, n_cached, prm, kt, vt)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    o = mod.int8_kv_attention_sdpa(q, kq, vq, n_cached, *prm, kt if last else None, vt if last else None, out=q)
    extra = torch.cuda.max_memory_allocated() - before
    assert o.data_ptr() == q.data_ptr()
    rel = ((o.double() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(o).all() and rel <= 1e-2, (si, rel)
    # the dequantized K/V of one head group, its queries' copy and SDPA's output and workspace
    hc = mod.sdpa_head_group(2, 28, n_cached + (lq if last else 0), 128)
    assert extra <= mod.SDPA_CHUNK_BYTES + 3 * 2 * hc * lq * 128 * 2 + (8 << 20), (extra, hc)


def test_int8_kv_cache_attend_uses_kernel_and_matches_reference():
    """Int8KVCache.attend (the model's path) with the kernel vs the same cache's reference attend."""
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.quant.kv_int8 import Int8KVCache, asym_params
    torch.manual_seed(0)
    B, H, D, sizes = 2, 28, 128, [16, 64, 256]
    ks = [torch.nn.functional.normalize(torch.randn(B, H, n, D, device="cuda"), dim=-1) for n in sizes]
    vs = [torch.randn(B, H, n, D, device="cuda") for n in sizes]
    k_all, v_all = torch.cat(ks, 2), torch.cat(vs, 2)
    st = {}
    st["k_scale"], st["k_zero"] = (t.view(H, D) for t in asym_params(k_all.amin((0, 2), keepdim=True), k_all.amax((0, 2), keepdim=True)))
    st["v_scale"], st["v_zero"] = (t.view(H, D) for t in asym_params(v_all.amin((0, 2), keepdim=True), v_all.amax((0, 2), keepdim=True)))
    a = Int8KVCache(B, H, D, sum(sizes[:-1]), torch.bfloat16, "cuda", static=st)
    b = Int8KVCache(B, H, D, sum(sizes[:-1]), torch.bfloat16, "cuda", static=st)
    start = 0
    for i, (k, v) in enumerate(zip(ks, vs)):
        q = (torch.nn.functional.normalize(torch.randn(B, H, k.shape[2], D, device="cuda"), dim=-1) * 8).bfloat16()
        store = i < len(sizes) - 1
        qa = q.clone()
        y = a.attend(qa, k, v, start, store)                        # kernel, written over its queries
        assert y.data_ptr() == qa.data_ptr()
        r = KVCache.attend(b, q, k, v, start, store)                # reference (dequantize + SDPA)
        rel = ((y.float() - r.float()).norm() / r.float().norm()).item()
        assert rel <= 1e-2, (i, rel)
        start += k.shape[2]


def _int8_cache_case(store, n0=1497, n=1024, B=2, H=28, D=128):
    """An Int8KVCache (static scales) holding n0 keys, n new queries/keys/values, and the cache's
    reference attend of them (dequantize + SDPA in float32); the cache is left holding the n0 keys."""
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.quant.kv_int8 import Int8KVCache, asym_params
    k0 = torch.nn.functional.normalize(torch.randn(B, H, n0, D, device="cuda"), dim=-1)
    v0 = torch.randn(B, H, n0, D, device="cuda")
    st = {}
    st["k_scale"], st["k_zero"] = (t.view(H, D) for t in asym_params(k0.amin((0, 2), keepdim=True), k0.amax((0, 2), keepdim=True)))
    st["v_scale"], st["v_zero"] = (t.view(H, D) for t in asym_params(v0.amin((0, 2), keepdim=True), v0.amax((0, 2), keepdim=True)))
    a = Int8KVCache(B, H, D, n0 + n, torch.bfloat16, "cuda", static=st)
    a.store(k0, v0, 0)
    k = torch.nn.functional.normalize(torch.randn(B, H, n, D, device="cuda"), dim=-1)
    v = torch.randn(B, H, n, D, device="cuda")
    if not store:
        k, v = k.bfloat16(), v.bfloat16()
    q = (torch.nn.functional.normalize(torch.randn(B, H, n, D, device="cuda"), dim=-1) * 8).bfloat16()
    ref = KVCache.attend(a, q.clone(), k, v, n0, store)
    a.store(k0, v0, 0)
    return a, q, k, v, ref


def _counting_sdpa_path(dispatch, calls):
    """dispatch's SDPA attention path wrapped so that each call is counted (the real function runs)."""
    orig = dispatch._STATE["attn_int8_sdpa"]
    dispatch._STATE["attn_int8_sdpa"] = lambda *args, **kw: calls.append(1) or orig(*args, **kw)
    return orig


def test_int8_kv_cache_attend_in_a_cuda_graph_takes_the_sdpa_path():
    """Int8KVCache.attend captured in a CUDA graph with 1024 queries (the dequantize + SDPA path, the
    graphed large scales' one) vs the same cache's reference attend, stored and unstored."""
    from var_gen_ros.quant import dispatch
    assert 0 < dispatch.KV_SDPA_MIN_LQ <= 1024
    torch.manual_seed(torch.seed() % 2 ** 31)
    n0 = 1497
    for store in (True, False):
        a, q, k, v, ref = _int8_cache_case(store, n0)
        qg = q.clone()
        a.attend(qg.clone(), k, v, n0, store)                        # warm-up (kernels compiled / tuned)
        calls = []
        orig = _counting_sdpa_path(dispatch, calls)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = a.attend(qg, k, v, n0, store)
        finally:
            dispatch._STATE["attn_int8_sdpa"] = orig
        assert calls, "the SDPA path was not taken in the graph"
        qg.copy_(q)
        g.replay()
        torch.cuda.synchronize()
        rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert out.data_ptr() == qg.data_ptr() and rel <= 1e-2, (store, rel)


@pytest.mark.parametrize("eager_min_lq", [0, 1024])
def test_int8_kv_cache_eager_attend_takes_the_sdpa_path_from_its_eager_threshold(monkeypatch, eager_min_lq):
    """Eagerly, the SDPA path is taken on every call from KV_SDPA_EAGER_MIN_LQ queries, and below it (0:
    graphs only) only on a shape's first call; either way the output matches the reference attend."""
    from var_gen_ros.quant import dispatch
    monkeypatch.setattr(dispatch, "KV_SDPA_EAGER_MIN_LQ", eager_min_lq)
    torch.manual_seed(torch.seed() % 2 ** 31)
    n0, n = 1511, 1024           # a key count no other test uses: the first call is this shape's first
    a, q, k, v, ref = _int8_cache_case(False, n0, n)
    calls = []
    orig = _counting_sdpa_path(dispatch, calls)
    try:
        for i in range(3):
            out = a.attend(q.clone(), k, v, n0, False)
            torch.cuda.synchronize()
            rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            assert rel <= 1e-2, (i, rel)
    finally:
        dispatch._STATE["attn_int8_sdpa"] = orig
    assert len(calls) == (3 if eager_min_lq else 1), calls


def test_f16_path_matches_reference_beyond_fp16_range():
    """Rows with |x/λ| far above fp16's range: the f16 and i8 paths hold q·m (<= 112) and scale each row
    by its unit u at the end."""
    from kernels_under_test import gemm_module
    mod = gemm_module()
    layer = _layer(3584, 3584, True, seed=13)
    x = (torch.randn(2048, 3584, device="cuda") * 2).bfloat16()
    x[::7] *= 1e5
    ref = layer.reference_forward(x).float()
    for path in ("f16", "f16w", "fp8w", "i8", "i8w"):
        y = torch.full_like(x, float("nan"))
        mod.w4a4_linear(x, layer, out=y, path=path)
        rel = ((y.float() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-3, (path, rel)


def test_kernel_status_names_the_gemm_path_for_this_gpu():
    from var_gen_ros.quant.dispatch import kernel_status
    want = "fp8 mma" if torch.cuda.get_device_capability() >= (8, 9) else "int8 mma"
    assert want in kernel_status() and "i8" in kernel_status(), kernel_status()


def test_default_path_is_i8_for_two_level_scales_and_fp8_for_free_ones():
    """Layers quantized here have two-level weight scales and take the i8 path; a checkpoint with free
    per-group scales (another quantizer) takes the FP8 / f16 paths and still matches its reference."""
    from kernels_under_test import gemm_module
    from var_gen_ros.quant.int4 import group_scales, quantize_groups, pack_int4
    mod = gemm_module()
    layer = _layer(3584, 3584, True, seed=17)
    x = (torch.randn(32, 3584, device="cuda") * 2).bfloat16()
    assert mod.path_for(x, layer) == ("i8s" if 32 <= mod.small_m_limit(3584, 3584) and mod.small_m.extension() is not None else "i8")
    small = x[:mod.SMALL_M_MAX]
    assert mod.path_for(small, layer) == ("i8s" if mod.small_m.extension() is not None else "i8")
    R = layer.dequantized_weight()
    free = group_scales(R, 64).bfloat16()
    with torch.no_grad():
        layer.qweight.copy_(pack_int4(quantize_groups(R, free.float(), 64)))
        layer.wscales.copy_(free)
    assert layer.weight_units() is None and mod.path_for(x, layer) in ("fp8", "int8")
    for M in (32, 4096):
        x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x).float()
        y = mod.w4a4_linear(x, layer)
        assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3, M


def test_int8_kv_store_kernel_gives_the_reference_codes():
    """The fused INT8 KV store (the cache's path on a GPU) writes the reference's codes bit for bit, from
    the strided bf16 K/V the model hands it, at the 1024² scales' sizes."""
    from kernels_under_test import attention_module
    from var_gen_ros.quant.kv_int8 import asym_params, quantize_asym
    mod = attention_module()
    torch.manual_seed(torch.seed() % 2 ** 31)
    B, H, D = 2, 28, 128
    start = 0
    kq = torch.full((B, H, sum(SCALES_1024), D), 99, dtype=torch.int8, device="cuda")
    vq = torch.full_like(kq, 99)
    prm = None
    for L in SCALES_1024:
        k = (torch.randn(B, L, H, D, device="cuda") * 3 + 1).bfloat16().transpose(1, 2)
        v = (torch.randn(B, L, H, D, device="cuda") * 2).bfloat16().transpose(1, 2)
        if prm is None:      # calibrated on a narrower range than the data, so clamping happens
            ks, kz = asym_params(k.float().amin((0, 2), keepdim=True) * 0.6, k.float().amax((0, 2), keepdim=True) * 0.6)
            vs, vz = asym_params(v.float().amin((0, 2), keepdim=True) * 0.6, v.float().amax((0, 2), keepdim=True) * 0.6)
            prm = (ks, kz, vs, vz)
        mod.int8_kv_store(k, v, kq, vq, start, *prm)
        assert torch.equal(kq[:, :, start:start + L], quantize_asym(k, ks, kz)), L
        assert torch.equal(vq[:, :, start:start + L], quantize_asym(v, vs, vz)), L
        start += L
    assert start == kq.shape[2]


def test_direct_launches_match_triton_launches():
    """After a kernel's first call per specialization, kernels/launch.py launches its compiled binary
    directly. Calls that reuse a specialization (new inputs, same shapes) and calls that change it
    (another M, an output at an address that is not 16-byte aligned) all match the reference."""
    from kernels_under_test import attention_module, gemm_module
    mod = gemm_module()
    layer = _layer(3584, 3584, True, seed=5)
    torch.manual_seed(torch.seed() % 2 ** 31)
    before = mod._QUANTIZE.hits + mod._GEMM_FP8.hits + mod._GEMM_F16.hits
    for M in (2, 96, 2, 96, 4096, 4096):
        x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
        ref = layer.reference_forward(x).float()
        y = mod.w4a4_linear(x, layer)
        buf = torch.full((M * 3584 + 1,), float("nan"), device="cuda", dtype=x.dtype)
        y2 = mod.w4a4_linear(x, layer, out=buf[1:].view(M, 3584))          # 2-byte aligned output
        for out in (y, y2):
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            assert rel <= 1e-3, (M, rel)
    assert mod._QUANTIZE.hits + mod._GEMM_FP8.hits + mod._GEMM_F16.hits - before >= 6
    att = attention_module()
    hits = att._ATTN_INT8.hits
    for _ in range(3):
        q, kq, vq, prm, kt, vt = _kv_case(320, 0, 256, seed=int(torch.randint(1 << 30, (1,))))
        o = att.int8_kv_attention(q, kq, vq, 320, *prm)
        ref = _float64_attention(q, kq, vq, 320, prm, kt, vt)
        assert ((o.double() - ref).norm() / ref.norm()).item() <= 1e-2
    assert att._ATTN_INT8.hits >= hits + 2


def _self_attention_8b(H, c):
    """Infinity-8B's self-attention (float32, CPU) with random q/v biases and per-head q scales."""
    from var_gen_ros.infinity.model import SelfAttention
    sa = SelfAttention(H * c, H)
    with torch.no_grad():
        sa.q_bias.normal_()
        sa.v_bias.normal_()
        sa.scale_mul_1H11.uniform_(0.0, 5.0)
    return sa


def test_qkv_epilogue_kernel_matches_float64_and_holds_less_memory():
    """Infinity-8B's self-attention (28 heads of 128), CFG batch, a 1024-token slice written at an
    offset into last-scale buffers: the fused epilogue vs float64 on the same projection output, and
    the allocator's peak over the call vs the PyTorch reference's."""
    from kernels_under_test import assert_qkv_written, qkv_epilogue_float64
    from var_gen_ros.quant.dispatch import kernel_status, qkv_rope_kernel
    B, H, c, L, n, start = 2, 28, 128, 4096, 1024, 2048
    torch.manual_seed(torch.seed() % 2 ** 31)
    sa = _self_attention_8b(H, c)
    sa = sa.to("cuda", torch.bfloat16)
    x = torch.randn(B, n, H * c, device="cuda", dtype=torch.bfloat16)
    ang = torch.rand(n, c // 2, device="cuda") * 100
    rope = torch.stack([ang.cos(), ang.sin()])
    assert qkv_rope_kernel(x) is not None, kernel_status()
    with torch.no_grad():
        q, k, v = sa.qkv_buffers(x, L, store=True)
        sa.qkv_into(x, rope, q, k, v, start)       # warm: compile, and cuBLAS's workspace, outside the counts
        sa.qkv(x, rope)
        for t in (q, k, v):
            t.fill_(float("nan"))
        fused_extra = _extra_bytes(lambda: sa.qkv_into(x, rope, q, k, v, start))
        ref_extra = _extra_bytes(lambda: sa.qkv(x, rope))
        refs = qkv_epilogue_float64(torch.nn.functional.linear(x, sa.mat_qkv.weight), sa, rope)
    assert q.dtype == torch.bfloat16 and k.dtype == v.dtype == torch.float32
    assert_qkv_written((q, k, v), refs, start, n, lambda name, dt: 1e-5 if dt == torch.float32 else 8e-3)
    # the kernel holds only the projection's bf16 output; the reference its float32 copy and temporaries
    assert fused_extra <= 0.35 * ref_extra, (fused_extra, ref_extra)


def _qkv_case(B, n, seed):
    """Infinity-8B's self-attention (28 heads of 128) with sa.mat_qkv quantized (3584 -> 10752), a CFG batch of n
    tokens with a few outlier channels, RoPE angles, and float64 of the layer's dequantized product followed by the
    epilogue: (sa, layer, x, rope, refs); the model's dispatch takes the GEMM with the epilogue in it."""
    from kernels_under_test import qkv_epilogue_float64
    from var_gen_ros.quant import dispatch
    from var_gen_ros.quant.int4 import fake_quant_int4
    H, c = 28, 128
    torch.manual_seed(torch.seed() % 2 ** 31)
    sa = _self_attention_8b(H, c).cuda()
    sa.proj = sa.proj.bfloat16()                      # the attention (q's) dtype
    layer = sa.mat_qkv = _layer(3584, 3 * H * c, False, seed=seed)
    x = (torch.randn(B, n, 3584, device="cuda") * 2).bfloat16()
    x[..., torch.randint(3584, (4,))] *= 30
    ang = torch.rand(n, c // 2, device="cuda") * 100
    rope = torch.stack([ang.cos(), ang.sin()])
    assert dispatch.w4a4_qkv_kernel(x, layer, c) is not None, dispatch.kernel_status()
    with torch.no_grad():
        xs = smooth_input(x.reshape(-1, 3584), layer.smooth)
        y64 = fake_quant_int4(xs, layer.group).double() @ layer.dequantized_weight().double().t()
        y64 += (xs.double() @ layer.lora_down.double()) @ layer.lora_up.double().t()
        refs = qkv_epilogue_float64(y64.view(B, n, -1), sa, rope)
    return sa, layer, x, rope, refs


@pytest.mark.parametrize("n", [160, 1024, 2048])
def test_qkv_epilogue_in_the_w4a4_gemm_matches_float64_and_holds_no_projection(monkeypatch, n):
    """Infinity-8B's sa.mat_qkv quantized (3584 -> 10752), a CFG slice of n tokens written at an offset
    into last-scale buffers through the model's dispatch (`SelfAttention.qkv_into`), which here takes the
    GEMM with the epilogue in it: vs float64 of the layer's dequantized product followed by the epilogue
    (fresh inputs, poisoned buffers), and the allocator's peak vs the separate path (the GEMM's bf16
    output, then the epilogue kernel), which also still has to match."""
    from kernels_under_test import assert_qkv_written
    from var_gen_ros.quant import dispatch
    B, L, start = 2, 4096, 4096 - n
    sa, layer, x, rope, refs = _qkv_case(B, n, seed=n)
    with torch.no_grad():
        q, k, v = sa.qkv_buffers(x, L, store=True)
        extra = {}
        for name in ("in_gemm", "separate"):
            if name == "separate":
                monkeypatch.setattr(dispatch, "w4a4_qkv_kernel", lambda *a: None)
            sa.qkv_into(x, rope, q, k, v, start)         # warm: compile, tune, outside the counts
            for t in (q, k, v):
                t.fill_(float("nan"))
            extra[name] = _extra_bytes(lambda: sa.qkv_into(x, rope, q, k, v, start))
            assert q.dtype == torch.bfloat16 and k.dtype == v.dtype == torch.float32
            # the separate path rounds the projection to bf16 before the epilogue
            assert_qkv_written((q, k, v), refs, start, n,
                               lambda what, dt: 8e-3 if dt == torch.bfloat16 or name == "separate" else 1e-4)
    # the separate path holds the projection's (M, 3C) bf16 output besides what both hold
    assert extra["in_gemm"] + 0.95 * (B * n * layer.out_features * 2) <= extra["separate"], extra


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (9, 0),
                    reason="wgmma and TMA: sm_90+")
@pytest.mark.parametrize("n", [144, 1024])
def test_the_qkv_epilogue_in_the_i8p_gemm_matches_float64(monkeypatch, n):
    """VAR_GEN_W4A4_I8P_QKV=fused with GLUON_I8P: Infinity-8B's sa.mat_qkv (3584 -> 10752) through the model's dispatch
    takes kernels/i8_mainloop_gluon.py's `i8p_qkv` (counted): the i8p GEMM with the attention's input epilogue in it
    (bias, per-head norm, q's scale, RoPE, the scatter into last-scale buffers at an offset), a CFG slice of 144 and of
    1024 tokens (288 and 2048 rows), vs float64 of the layer's dequantized product followed by the epilogue, with the
    Triton GEMM-with-epilogue's tolerances (fresh inputs, poisoned buffers)."""
    from kernels_under_test import assert_qkv_written, gemm_module
    gm = gemm_module()
    glu = gm._gluon()
    calls = []
    real = glu.i8p_qkv
    monkeypatch.setattr(glu, "i8p_qkv", lambda *a, **k: (calls.append(a[0].shape[0]), real(*a, **k))[1])
    monkeypatch.setattr(gm, "GLUON_I8P", True)
    monkeypatch.setattr(gm, "I8P_QKV", "fused")
    monkeypatch.setattr(gm, "I8P_MAX_M", 2048)         # the kernel at 2048 rows too (the product's range ends lower)
    B, L, start = 2, 4096, 4096 - n
    sa, layer, x, rope, refs = _qkv_case(B, n, seed=n + 7)
    with torch.no_grad():
        q, k, v = sa.qkv_buffers(x, L, store=True)
        for t in (q, k, v):
            t.fill_(float("nan"))
        sa.qkv_into(x, rope, q, k, v, start)
        assert calls == [B * n], calls
        assert_qkv_written((q, k, v), refs, start, n, lambda what, dt: 8e-3 if dt == torch.bfloat16 else 1e-4)


def test_adaln_kernel_matches_float64_on_the_8b_width():
    """The modulated LayerNorm at C = 3584 (not a power of two) on a token slice of the last 1024²
    scale, written in bf16 (the W4A4 GEMM's input) and in float32."""
    from var_gen_ros.quant.dispatch import adaln_kernel, kernel_status
    B, L, C, a, n = 2, 4096, 3584, 1024, 1024
    x = torch.randn(B, L, C, device="cuda") * 3 + 0.5
    x[..., torch.randint(C, (4,))] *= 40                       # outlier channels
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    s, sh = torch.randn(B, 1, C, device="cuda") * 0.3, torch.randn(B, 1, C, device="cuda")
    fn = adaln_kernel(x)
    assert fn is not None, kernel_status()
    xd = x[:, a:a + n].double()
    norm = (xd - xd.mean(-1, keepdim=True)) / (xd.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    for out_dt, affine, tol in ((torch.bfloat16, False, 8e-3), (torch.float32, True, 1e-5)):
        y = fn(x[:, a:a + n], 1e-6, out_dt, *((w, b) if affine else (None, None)), s, sh)
        ref = ((norm * w.double() + b.double()) if affine else norm) * (s.double() + 1) + sh.double()
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        assert y.dtype == out_dt and err <= tol, (out_dt, err)


def test_group_norm_kernel_matches_float64_at_the_8b_vae_decoder_widths():
    """The VAE's GroupNorm (+ SiLU) on the 8B decoder's activations of a 1024² image (bf16, as the product decodes):
    the top level's 128 channels at 1024², 512 at 256² with an offset mean, against float64; in NCHW and in
    channels-last (the NHWC kernels, VAR_GEN_VAE_CHANNELS_LAST), whose y keeps that layout."""
    from var_gen_ros.quant.dispatch import group_norm_kernel, kernel_status
    for shape, offset, layout in (((1, 128, 1024, 1024), 0.0, torch.contiguous_format),
                                  ((1, 512, 256, 256), 30.0, torch.contiguous_format),
                                  ((1, 128, 1024, 1024), 0.0, torch.channels_last),
                                  ((1, 512, 256, 256), 30.0, torch.channels_last),
                                  ((2, 256, 64, 48), 5.0, torch.channels_last)):
        x = (torch.randn(shape, device="cuda") * 2 + offset).to(torch.bfloat16).contiguous(memory_format=layout)
        w, b = torch.randn(shape[1], device="cuda", dtype=torch.bfloat16), torch.randn(shape[1], device="cuda")
        fn = group_norm_kernel(x)
        assert fn is not None, kernel_status()
        ref = torch.nn.functional.group_norm(x.double(), 32, w.double(), b.double(), 1e-6)
        for silu in (False, True):
            y = fn(x, 32, w, b, 1e-6, silu)
            r = torch.nn.functional.silu(ref) if silu else ref
            err = float((y.double() - r).abs().max() / r.abs().max())
            assert y.dtype == torch.bfloat16 and err <= 8e-3, (shape, layout, silu, err)
            assert y.is_contiguous(memory_format=layout), (shape, layout)


def test_vae_decode_with_the_group_norm_kernel_matches_float64(monkeypatch):
    """The 8B VAE decoder (float32, random weights) at 256² with the GroupNorm kernel against the same decoder in
    float64 on PyTorch's ops (cuDNN's TF32 convolutions off: float32 throughout)."""
    import copy
    from var_gen_ros.infinity import BSQVAE
    from var_gen_ros.infinity.config import INFINITY_8B
    from var_gen_ros.infinity.tiny import random_init_
    from var_gen_ros.quant import dispatch
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    vae = random_init_(BSQVAE(INFINITY_8B.vae), 3).eval()
    codes = torch.randn(1, INFINITY_8B.vae.codebook_dim, 32, 32)
    ref_vae = copy.deepcopy(vae).double()
    vae = vae.cuda()
    calls = []
    kernel = dispatch.group_norm_kernel(codes.cuda())
    assert kernel is not None, dispatch.kernel_status()
    monkeypatch.setattr(dispatch, "group_norm_kernel", lambda x: (lambda *a: calls.append(1) or kernel(*a)))
    with torch.no_grad():
        y = vae.decode(codes.cuda())
        monkeypatch.setattr(dispatch, "group_norm_kernel", lambda x: None)
        ref = ref_vae.decode(codes.double())
    assert len(calls) == sum(type(m).__name__ == "Normalize" for m in vae.decoder.modules())
    err = float((y.double().cpu() - ref).abs().max() / ref.abs().max())
    assert err <= 1e-4, err


def test_vae_decode_in_channels_last_matches_float64(monkeypatch):
    """The same decoder with its activations channels-last (VAR_GEN_VAE_CHANNELS_LAST: NHWC convolutions, the NHWC
    GroupNorm kernels), its weights left NCHW as an offloaded VAE's are, and then channels-last too."""
    import copy
    from var_gen_ros.infinity import BSQVAE
    from var_gen_ros.infinity.config import INFINITY_8B
    from var_gen_ros.infinity.tiny import random_init_
    from var_gen_ros.quant import dispatch
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    vae = random_init_(BSQVAE(INFINITY_8B.vae), 4).eval()
    codes = torch.randn(1, INFINITY_8B.vae.codebook_dim, 32, 32)
    kernel = dispatch.group_norm_kernel(codes.cuda())
    assert kernel is not None, dispatch.kernel_status()
    with torch.no_grad():
        ref = copy.deepcopy(vae).double().decode(codes.double())
        vae = vae.cuda()
        vae.decoder.channels_last = True
        norms = sum(type(m).__name__ == "Normalize" for m in vae.decoder.modules())
        for weights in (torch.contiguous_format, torch.channels_last):
            vae = vae.to(memory_format=weights)
            seen = []                        # each norm's input: channels-last, so the NHWC kernels ran
            monkeypatch.setattr(dispatch, "group_norm_kernel", lambda x: (
                lambda *a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)) or kernel(*a)))
            y = vae.decode(codes.cuda())
            assert len(seen) == norms and all(seen) and y.is_contiguous(memory_format=torch.channels_last), weights
            err = float((y.double().cpu() - ref).abs().max() / ref.abs().max())
            assert err <= 1e-4, (weights, err)


@pytest.mark.parametrize("store", [True, False])
def test_block_fast_path_matches_float64_on_the_8b_width(monkeypatch, store):
    """One Infinity-8B block (float32 weights) on the GPU fast path (qkv epilogue and modulated-LayerNorm
    kernels, residuals added in place, slices of 512 tokens) against the same block in float64 on the
    PyTorch reference, over a cached scale then a 1024-token scale."""
    import copy
    from var_gen_ros.infinity.config import INFINITY_8B, ScaleSchedule
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.infinity.model import CrossAttnBlock, rope_tables
    from var_gen_ros.quant import dispatch
    torch.manual_seed(torch.seed() % 2 ** 31)
    blk = CrossAttnBlock(INFINITY_8B)
    for p in blk.parameters():
        p.data = torch.randn(p.shape) * p.shape[-1] ** -0.5
    blk = blk.cuda()
    B, C, H, c = 2, blk.C, blk.sa.num_heads, blk.sa.head_dim
    rope = rope_tables(ScaleSchedule(((16, 16), (32, 32)), (32, 32)), c, "cuda")
    x0, x1 = torch.randn(B, 256, C, device="cuda"), torch.randn(B, 1024, C, device="cuda")
    gss = torch.randn(B, 1, 6, C, device="cuda") * 0.1
    text, mask = torch.randn(B, 30, C, device="cuda"), torch.ones(B, 30, dtype=torch.bool, device="cuda")

    def run(block, dt, chunk):
        cache = KVCache(B, H, c, 256 + 1024, dt, "cuda")
        with torch.no_grad():
            kv = block.ca.text_kv(text.to(dt))
            block(x0.to(dt), gss.to(dt), kv, mask, rope[:, :256].to(dt), kv_cache=cache, start=0, store=True)
            # a copy: a sliced block writes its result over a float32 input
            return block(x1.to(dt, copy=True), gss.to(dt), kv, mask, rope[:, 256:].to(dt), kv_cache=cache, start=256,
                         store=store, chunk_tokens=chunk)
    assert dispatch.adaln_kernel(x1) is not None and dispatch.qkv_rope_kernel(x1) is not None, dispatch.kernel_status()
    y = run(blk, torch.float32, 512)
    monkeypatch.setattr(dispatch, "qkv_rope_kernel", lambda x: None)
    monkeypatch.setattr(dispatch, "adaln_kernel", lambda x: None)
    ref = run(copy.deepcopy(blk).double(), torch.float64, 0)
    err = float((y.double() - ref).abs().max() / ref.abs().max())
    assert err <= 1e-4, err          # float32 throughout (TF32 off by default), against float64


def test_kept_weight_workspaces_give_the_same_block_output_with_one_unpack_per_layer(monkeypatch):
    """A W4A4 Infinity-8B block over a 1024-token scale in 512-token slices (1024-row calls: the i8w path,
    whose GEMM reads an int8 weight workspace): with each layer's workspace kept across a loop's slices (the
    default, `workspaces_kept`) the output equals one workspace per call bit for bit, with one unpack per layer
    and loop (qkv, then proj, cross-attention q and proj, fc1, fc2) instead of one per call."""
    from var_gen_ros.infinity.config import INFINITY_8B, ScaleSchedule
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.infinity.model import CrossAttnBlock, rope_tables
    from var_gen_ros.quant import W4A4Linear
    from kernels_under_test import gemm_module
    gm = gemm_module()
    torch.manual_seed(torch.seed() % 2 ** 31)
    blk = CrossAttnBlock(INFINITY_8B)
    for p in blk.parameters():
        p.data = torch.randn(p.shape) * p.shape[-1] ** -0.5
    blk = blk.to("cuda", torch.bfloat16)
    for parent in list(blk.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, W4A4Linear.from_linear(child.float(), param_dtype=torch.bfloat16))
    B, C, H, c = 2, blk.C, blk.sa.num_heads, blk.sa.head_dim
    rope = rope_tables(ScaleSchedule(((32, 32),), (32, 32)), c, "cuda").to(torch.bfloat16)
    x = torch.randn(B, 1024, C, device="cuda")
    gss = torch.randn(B, 1, 6, C, device="cuda") * 0.1
    text, mask = torch.randn(B, 30, C, device="cuda", dtype=torch.bfloat16), torch.ones(B, 30, dtype=torch.bool, device="cuda")
    unpacks = []
    real = gm._UNPACK_I8
    monkeypatch.setattr(gm, "_UNPACK_I8", lambda grid, args, meta: (unpacks.append(args[3].shape), real(grid, args, meta)))

    def run(keep):
        monkeypatch.setattr(gm, "KEEP_WORKSPACES", keep)
        unpacks.clear()
        cache = KVCache(B, H, c, 1024, torch.bfloat16, "cuda")
        with torch.no_grad():
            kv = blk.ca.text_kv(text)
            # a float32 x is overwritten slice by slice: each run gets its own copy
            y = blk(x.clone(), gss, kv, mask, rope, kv_cache=cache, start=0, store=False, chunk_tokens=512)
        torch.cuda.synchronize()
        return y, list(unpacks)
    y_kept, kept = run(True)
    y_each, each = run(False)
    assert torch.equal(y_kept, y_each)
    assert len(kept) == 6 and len(each) == 12, (len(kept), len(each))
    assert gm._KEPT.spaces is None


@pytest.mark.parametrize("n_in,n_out", [(2048, 5120), (5120, 2048), (2048, 2048), (96, 21)])
def test_int4_text_encoder_dequant_kernel_gives_the_reference_bits(n_in, n_out):
    """The INT4 text encoder's dequantization kernel at Flan-T5-XL's Linear shapes (and a 32-wide group with
    partial tiles): the same bf16 and float32 weights as the reference, into a poisoned output, fresh weights
    each run; the Linear's forward on CUDA takes the kernel and gives the reference's output bits."""
    import var_gen_ros.quant.int4_weight as int4_weight
    from var_gen_ros.quant.dispatch import int4_dequant_kernel
    lin = torch.nn.Linear(n_in, n_out, bias=True, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, n_in ** -0.5)
    q = int4_weight.Int4WeightLinear.from_linear(lin)
    kernel = int4_dequant_kernel(q.weight_packed)
    assert kernel is not None
    for dt in (torch.bfloat16, torch.float32):
        ref = q.dequantized(torch.float32).to(dt)
        out = torch.full((n_out, n_in), float("nan"), dtype=dt, device="cuda")
        got = kernel(q.weight_packed, q.weight_scale, q.weight_offset, q.group, dt, out=out)
        assert torch.equal(got, ref), (dt, (got.float() - ref.float()).abs().max().item())
    x = torch.randn(3, 17, n_in, device="cuda", dtype=torch.bfloat16)
    y = q(x)
    int4_weight.DEQUANT_KERNEL = False
    try:
        y_ref = q(x)
    finally:
        int4_weight.DEQUANT_KERNEL = True
    assert torch.equal(y, y_ref)


def test_the_products_calls_meet_the_shipped_picks(monkeypatch):
    """On a GPU model with a shipped table (kernels/tuned_picks.py) the dispatcher seeds the tuners, and a product
    call's tuning key is one of the table's: the call adds no key to the tuner (no trial) and launches the pick (the
    Triton i8w GEMM's: on sm_90 the product takes the Gluon one at these rows, here turned off)."""
    import os
    from var_gen_ros.quant import dispatch
    from var_gen_ros.quant.dispatch import kernel_module
    from kernels_under_test import gemm_module
    tp = kernel_module("tuned_picks")
    status = dispatch.kernel_status()
    table, where = tp.load_table(torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability())
    if table is None:
        assert f"shipped launch configurations: {where}" in status, status
        pytest.skip(where)
    assert f"from {os.path.basename(where)}" in status, status
    mod = gemm_module()
    monkeypatch.setattr(mod, "GLUON_I8W", False)
    tuner = tp.autotuners(mod)["_w4a4_i8_kernel"]
    seeded = [tuple(e["key"]) for e in table["picks"]["_w4a4_i8_kernel"] if e["key"][:4] == [2048, 3584, 3584, True]]
    assert seeded and all(k in tuner.cache for k in seeded)
    keys = set(tuner.cache)
    tuned_before = dispatch._STATE["tuned_picks"].tuned_here()
    layer = _layer(3584, 3584, True, seed=23)
    x = torch.randn(1999, 3584, device="cuda").bfloat16()      # a row count no other test launches: the tuner is asked
    y = torch.full((1999, 3584), float("nan"), device="cuda", dtype=x.dtype)   # poisoned
    mod.w4a4_linear(x, layer, out=y, path="i8w")
    assert set(tuner.cache) == keys and any(tuner.best_config is tuner.cache[k] for k in seeded)
    assert dispatch._STATE["tuned_picks"].tuned_here() == tuned_before      # what diagnostics count
    ref = layer.reference_forward(x).float()
    assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-3
