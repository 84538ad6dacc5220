"""The Triton kernels' arithmetic, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1), against
float64 references. Tensor-core dots run in float32 there (the interpreter does not emulate bf16
faithfully), so these check indexing, packing, masking, the K splits, the low-rank epilogue, the
online softmax and the folded INT8 scales/zero points — not GPU speed or bf16 rounding, which
test/test_kernels_gpu.py checks on the device."""
import os
import subprocess
import sys

import pytest
import torch

from var_gen_ros.quant.w4a4 import smooth_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Triton fixes interpreter mode when it is imported, so the checks run in a child pytest with
# TRITON_INTERPRET=1 set from the start (this process may use the real GPU kernels)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def test_kernels_in_triton_interpreter():
    pytest.importorskip("triton", reason="Triton not installed (tools/setup.sh installs it)")
    if INTERPRETED:
        pytest.skip("this is the child run")
    import numpy
    if tuple(int(v) for v in numpy.__version__.split(".")[:2]) >= (2, 4):
        # Triton 3.6's interpreter hands scalar kernel arguments over as 1-element arrays and casts them with int(),
        # which numpy 2.4 refuses (every kernel with a scalar loop bound fails); requirements.txt pins numpy<2.4.
        # The GPU machines' images carry 2.4: there test/test_kernels_gpu.py runs the compiled kernels instead.
        pytest.skip(f"numpy {numpy.__version__}: Triton 3.6's interpreter needs numpy<2.4 (requirements.txt)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout, r.stdout[-3000:]


interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the child started by test_kernels_in_triton_interpreter")


def _load_interpreted(name):
    from var_gen_ros.quant.dispatch import kernel_module
    return kernel_module(name)        # as var_gen_ros_kernels.<name>: one copy, the dispatcher's


@pytest.fixture(scope="module")
def gemm():
    return _load_interpreted("w4a4_gemm_triton")


@pytest.fixture(scope="module")
def attn():
    return _load_interpreted("int8_kv_attention_triton")


def _w4a4_layer(K, N, bias, rank, seed):
    from var_gen_ros.quant import W4A4Linear
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, K ** -0.5, generator=g)
        if bias:
            lin.bias.normal_(0, 0.1, generator=g)
    act = torch.rand(K, generator=g) * 4 + 0.5
    return W4A4Linear.from_linear(lin, act, None, rank=rank, group=64, param_dtype=torch.bfloat16)


def _float64_w4a4(x, layer):
    """The layer's dequantized computation in float64: (x/λ) L_down L_upᵀ + Q4(x/λ) Rᵀ + b."""
    from var_gen_ros.quant.int4 import fake_quant_int4
    xs = smooth_input(x, layer.smooth)                       # x · (1/λ), as the kernels
    xq = fake_quant_int4(xs, layer.group).double()
    y = xq @ layer.dequantized_weight().double().t()
    y = y + (xs.double() @ layer.lora_down.double()) @ layer.lora_up.double().t()
    return y + (layer.bias.double() if layer.bias is not None else 0)


@interpreted
@pytest.mark.parametrize("K,N,bias,rank", [(256, 192, True, 32), (448, 64, False, 32), (192, 128, True, 0)])
def test_w4a4_gemm_kernel_both_variants_match_float64(gemm, K, N, bias, rank):
    layer = _w4a4_layer(K, N, bias, rank, seed=K + N)
    for M in (1, 3, 40):
        x = torch.randn(M, K) * 2
        x[:, :3] *= 25                                       # outlier channels
        ref = _float64_w4a4(x, layer)
        for path, cfg, tol in _gemm_cases(K, rank):
            y = torch.full((M, N), float("nan"))             # poisoned output
            gemm.w4a4_linear(x, layer, out=y, path=path, config=cfg)
            rel = ((y.double() - ref).norm() / ref.norm()).item()
            assert rel <= tol, (M, path, cfg, rel)


def _gemm_cases(K, rank):
    """(path, launch config, tolerance) of every GEMM variant the test above runs."""
    every = (("int8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True), 1e-5),
             ("int8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False), 1e-5),
             ("fp8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True), 1e-5),
             ("fp8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False), 1e-5),
             ("fp8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True), 1e-5),
             # split-K: uneven splits (K = 448: 7 groups in 4), swapped and not
             ("fp8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SPLIT_K=4), 1e-5),
             ("int8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=8), 1e-5),
             # f16: both operands dequantized exactly to fp16, one accumulation
             ("f16", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False), 1e-5),
             ("f16", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SPLIT_K=4), 1e-5),
             ("f16w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False), 1e-5),
             ("f16w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, TMA=True), 1e-5),
             ("f16w", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, TMA=True, SPLIT_K=2), 1e-5),
             # i8: q·m of both sides (two-level scales), one int32 accumulation over all of K; the codes made a byte
             # at a time (SWAR=False; the default makes them four bytes at a time, below)
             ("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SWAR=False), 1e-5),
             ("i8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=4, SWAR=False), 1e-5),
             ("i8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False), 1e-5),
             ("i8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, TMA=True), 1e-5),
             ("i8w", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=2), 1e-5),
             # the weight scales loaded one group ahead (the last group of an uneven split masks its load)
             ("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, PREFETCH_SCALES=True), 1e-5),
             ("i8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=4, PREFETCH_SCALES=True), 1e-5),
             # the codes made four bytes at a time in uint32 words (the default)
             ("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SWAR=True), 1e-5),
             ("i8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=4, SWAR=True), 1e-5))
    # the sm_80-sm_89 epilogue: the low-rank up-projection as two bf16 dots. The pair holds the float32
    # partials to ~2^-17 each (up to 1.2e-5 of the output over 48 random draws of 1-3 rows, median 6.5e-6);
    # one bf16 dot alone is ~1.6e-3 off
    lr_bf16 = (("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, LR_BF16=True), 4e-5),
               ("i8w", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, LR_BF16=True), 4e-5),
               ("int8", dict(BLOCK_M=32, BLOCK_N=64, SWAP=False, SPLIT_K=8, LR_BF16=True), 4e-5))
    kstep128 = (("i8w", dict(BLOCK_M=32, BLOCK_N=64, SWAP=True, KSTEP=128), 1e-5),
                ("i8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False, TMA=True, KSTEP=128), 1e-5),
                # persistent: three programs, each taking several tiles (up to 9 at 40 rows)
                ("i8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False, TMA=True, KSTEP=128, PERSIST=True), 1e-5))
    return every + lr_bf16 * bool(rank) + kstep128 * (K % 128 == 0)


@interpreted
def test_gelu_epilogue_matches_float64(gemm):
    """act="gelu_tanh": the epilogue applies the FFN's GELU to the float32 result, after the low-rank
    branch and bias, in every GEMM variant and in the split-K sum (the last split applies it once)."""
    layer = _w4a4_layer(256, 128, True, 32, seed=11)
    x = torch.randn(6, 256) * 2
    pre = _float64_w4a4(x, layer)
    ref = torch.nn.functional.gelu(pre, approximate="tanh")
    assert (ref - pre).norm() > 0.1 * ref.norm()            # the activation matters here
    for path, cfg in (("int8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True)), ("fp8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False)),
                      ("f16w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True)), ("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=False)),
                      ("i8w", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True)),
                      ("i8", dict(BLOCK_M=16, BLOCK_N=64, SWAP=True, SPLIT_K=2))):
        y = torch.full((6, 128), float("nan"))
        gemm.w4a4_linear(x, layer, out=y, path=path, config=cfg, act="gelu_tanh")
        assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-5, (path, cfg)
    # the reference forward applies it the same way
    torch.testing.assert_close(layer.reference_forward(x, "gelu_tanh").double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        gemm.w4a4_linear(x, layer, act="relu")


@interpreted
def test_activation_codes_bit_identical_to_reference(gemm):
    from var_gen_ros.quant.int4 import act_scales, quantize_groups
    layer = _w4a4_layer(448, 64, False, 32, seed=3)          # 7 groups: K splits of uneven size
    x = torch.randn(5, 448) * 3
    q, sx, lr = gemm.quantize_activations(x, layer, reduce_lr=False)
    xs = smooth_input(x, layer.smooth)
    s = act_scales(xs, 64)
    codes = quantize_groups(xs, s, 64).view(5, 7, 64)
    deinterleaved = torch.cat([codes[..., 0::2], codes[..., 1::2]], -1).reshape(5, 448)
    assert lr.shape[0] > 1                                   # several K splits were used
    assert torch.equal(q, deinterleaved) and torch.equal(sx, s)
    torch.testing.assert_close(lr.sum(0).double(), xs.double() @ layer.lora_down.double(), rtol=1e-5, atol=1e-5)
    # by default the split that finishes last sums the partials in split order, the same float32 sum
    # as the GEMM epilogue's loop; twice, so the re-armed counters are checked too
    in_order = torch.zeros_like(lr[0])
    for t in range(lr.shape[0]):
        in_order = in_order + lr[t]
    for _ in range(2):
        q1, sx1, lr1 = gemm.quantize_activations(x, layer)
        assert lr1.shape == (1, 5, 32) and torch.equal(lr1[0], in_order) and torch.equal(q1, q)
    q8, sx8, lr8 = gemm.quantize_activations(x, layer, fp8=True, reduce_lr=False)  # e4m3, natural order, (G, M)
    assert q8.dtype == torch.float8_e4m3fn and torch.equal(q8.float(), codes.reshape(5, 448).float())
    assert torch.equal(sx8, s.t()) and torch.equal(lr8, lr)
    # f16 / i8: q·m (natural order) in fp16 / int8, exact, and the rows' units u
    from var_gen_ros.quant.int4 import two_level
    u, m = two_level(xs, 64)
    qm = (codes.float() * m.unsqueeze(-1)).reshape(5, 448)
    for kw, dtype in ((dict(f16=True), torch.float16), (dict(i8=True), torch.int8)):
        a, rs, lr_mq = gemm.quantize_activations(x, layer, reduce_lr=False, **kw)
        assert a.dtype == dtype and torch.equal(a.float(), qm) and torch.equal(rs, u.squeeze(-1))
        assert torch.equal(lr_mq, lr)                        # the same K splits and low-rank partials


@interpreted
def test_low_rank_dot_in_the_row_pass_gives_kernel_1s_partials(gemm):
    """LR_ROW_PASS (the low-rank dot made by the row pass instead of kernel 1): the same codes, scales and low-rank
    partials bit for bit, per K split and summed (REDUCE, with its counter re-armed), for every low-rank dot and
    activation layout; a layer without a low-rank branch is unaffected."""
    layer = _w4a4_layer(448, 64, False, 32, seed=6)
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(37, 448, generator=g) * 3).bfloat16()          # 7 groups: splits of 3, 3, 1
    x[:, 200] *= 30
    for kw in (dict(i8=True), dict(i8=True, block_m=16), dict(i8=True, lr_prec="bf16x2"), dict(fp8=True),
               dict(f16=True, lr_prec="ieee"), dict(), dict(i8=True, reduce_lr=True)):
        kw = dict(dict(splits=3, reduce_lr=False), **kw)
        ref = gemm.quantize_activations(x, layer, row_pass_lr=False, **kw)
        for _ in range(2):                                   # the second call sees the re-armed counters
            got = gemm.quantize_activations(x, layer, row_pass_lr=True, **kw)
            assert all(torch.equal(a.float(), b.float()) for a, b in zip(ref, got)), kw
        assert got[2].shape[0] == (1 if kw["reduce_lr"] else 3)
    bare = _w4a4_layer(448, 64, False, 0, seed=6)
    ref = gemm.quantize_activations(x, bare, i8=True, row_pass_lr=False)
    got = gemm.quantize_activations(x, bare, i8=True, row_pass_lr=True)
    assert got[2] is None and all(torch.equal(a, b) for a, b in zip(ref[:2], got[:2]))


@interpreted
def test_kernel1_given_the_row_pass_quantizes_as_after_its_own(gemm):
    """FC2_STATS: kernel 1 given its row pass's output (`quantize_activations(..., given=...)`: the rows' maxima as
    the first of its S split maxima, zeros after, and low-rank shares per column tile of the GEMM before) quantizes
    bit for bit as after its own row pass, and its low-rank input is the shares' sum; `next_row_stats` makes the
    buffers in that shape, from the layer's 1/λ and L_down · (1/λ) in two bf16 parts (within 2^-16 of float64)."""
    layer = _w4a4_layer(448, 64, False, 32, seed=9)
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(37, 448, generator=g) * 3).bfloat16()
    x[:, 300] *= 30
    own = gemm.quantize_activations(x, layer, i8=True)
    inv = gemm.inv_smooth(layer)
    G = 448 // 64
    S = gemm._kernel1_grid(37, G, "mq")[3]
    maxima = torch.zeros(S, 37)
    maxima[0] = (x.float() * inv).abs().amax(1)                   # what the epilogue's atomic max leaves
    shares = torch.randn(3, 37, 32, generator=g)
    q, sx, lr = gemm.quantize_activations(x, layer, i8=True, given=dict(maxima=maxima, shares=shares))
    assert torch.equal(q, own[0]) and torch.equal(sx, own[1])
    assert lr.shape == (1, 37, 32) and torch.equal(lr[0], shares.sum(0))
    with pytest.raises(ValueError, match="given maxima"):
        gemm.quantize_activations(x, layer, i8=True, given=dict(maxima=maxima[:1], shares=shares))
    hi, lo = gemm._down_inv_parts(layer)
    want = layer.lora_down.double() * inv.double()[:, None]
    assert ((hi.double() + lo.double() - want).abs().max() / want.abs().max()).item() < 2 ** -16
    assert gemm._down_inv_parts(layer)[0] is hi                   # kept on the layer
    # which FFNs take it (FC2_STATS): both W4A4, fc2 reading fc1's whole output with a rank-16/32 bf16 L_down
    fc1, fc2 = _w4a4_layer(64, 448, True, 32, seed=10), layer
    assert not gemm.ffn_stats_apply(fc1, fc2)                     # off by default
    gemm.FC2_STATS = True
    try:
        assert gemm.ffn_stats_apply(fc1, fc2) and not gemm.ffn_stats_apply(fc1, _w4a4_layer(64, 64, False, 32, 12))
        assert not gemm.ffn_stats_apply(fc1, _w4a4_layer(448, 64, False, 0, seed=11))     # no low-rank branch
    finally:
        gemm.FC2_STATS = False


@interpreted
def test_low_rank_dot_on_split_x_hat_matches_float64(gemm):
    """Kernel 1's low-rank dot for bf16 x: "bf16x2" (x against L_down / λ in two bf16 parts) and "bf16x2s"
    (x̂ in two bf16 parts against L_down as stored), the latter also with 1/λ read from `inv_smooth`
    instead of divided in the kernels: all within 2e-5 of x̂ · L_down in float64, with the same codes and
    scales bit for bit, over uneven K splits and every activation layout. By default ("auto") the 16-row
    launches take "bf16x2s" with the reciprocals for bf16 x and a bf16 L_down and the larger ones "bf16x2i" (LR_INV;
    "bf16x2" without it); LR_SPLIT_X "1" / "0" forces either; the reciprocals follow an in-place change of λ."""
    layer = _w4a4_layer(448, 64, False, 32, seed=9)
    assert layer.lora_down.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(5, 448, generator=g) * 3).bfloat16()
    x[:, 100] *= 40                                           # an outlier channel
    ref = smooth_input(x, layer.smooth).double() @ layer.lora_down.double()
    for kw in (dict(), dict(i8=True), dict(f16=True), dict(fp8=True)):
        q0, s0, _ = gemm.quantize_activations(x, layer, lr_prec="ieee", reduce_lr=False, **kw)
        for prec, inv in (("bf16x2", False), ("bf16x2s", False), ("bf16x2s", True), ("ieee", True),
                          ("bf16x2i", True)):
            q, sx, lr = gemm.quantize_activations(x, layer, lr_prec=prec, reduce_lr=False, inv=inv, **kw)
            assert lr.shape[0] > 1 and torch.equal(q.float(), q0.float()) and torch.equal(sx, s0), (kw, prec, inv)
            err = ((lr.sum(0).double() - ref).norm() / ref.norm()).item()
            assert err <= 2e-5, (kw, prec, inv, err)
    old, old_inv = gemm.LR_SPLIT_X, gemm.LR_INV
    try:
        gemm.LR_INV = False                                   # the larger launches divide ("bf16x2")
        for setting, bm, split in (("auto", None, True), ("auto", 64, False), ("0", None, False), ("1", 64, True)):
            gemm.LR_SPLIT_X = "0"
            _, _, lr_split = gemm.quantize_activations(x, layer, i8=True, lr_prec="bf16x2s", inv=True,
                                                       reduce_lr=False, block_m=bm)
            _, _, lr_div = gemm.quantize_activations(x, layer, i8=True, lr_prec="bf16x2", reduce_lr=False, block_m=bm)
            assert not torch.equal(lr_split, lr_div)
            gemm.LR_SPLIT_X = setting
            _, _, lr_default = gemm.quantize_activations(x, layer, i8=True, reduce_lr=False, block_m=bm)
            assert torch.equal(lr_default, lr_split if split else lr_div), (setting, bm)
        gemm.LR_SPLIT_X = "1"
        q1, _, _ = gemm.quantize_activations(x, layer, i8=True, reduce_lr=False)
        # the reciprocals are remade when λ changes in place (per channel, so the codes change): the same
        # codes as the path that divides in the kernel
        with torch.no_grad():
            layer.smooth.mul_(1 + torch.rand(layer.smooth.shape, generator=g).to(layer.smooth.dtype))
        q2, _, _ = gemm.quantize_activations(x, layer, i8=True, reduce_lr=False)
        q3, _, _ = gemm.quantize_activations(x, layer, i8=True, lr_prec="bf16x2s", inv=False, reduce_lr=False)
        assert torch.equal(q2, q3) and not torch.equal(q2, q1)
        assert torch.equal(gemm.inv_smooth(layer), torch.reciprocal(layer.smooth.float()))
    finally:
        gemm.LR_SPLIT_X, gemm.LR_INV = old, old_inv
    # LR_INV (the default): the launches that do not split x̂ take "bf16x2i", reading 1/λ (no division per column)
    try:
        gemm.LR_INV = True
        assert gemm.lr_prec_bf16(64) == "bf16x2i" and gemm.lr_prec_bf16(16) == "bf16x2s"
        assert gemm.reads_inv_smooth("bf16x2i", 64) and not gemm.reads_inv_smooth("bf16x2", 64)
        _, _, lr_inv = gemm.quantize_activations(x, layer, i8=True, reduce_lr=False, block_m=64)
        _, _, lr_i = gemm.quantize_activations(x, layer, i8=True, lr_prec="bf16x2i", reduce_lr=False, block_m=64)
        assert torch.equal(lr_inv, lr_i)
    finally:
        gemm.LR_INV = old_inv


@interpreted
def test_rows_far_beyond_fp16_range_stay_exact(gemm):
    """Rows whose |x/λ| is far beyond fp16's range: q·m stays <= 112 whatever the row's magnitude, the
    unit u carries it, and every path still gives the float64 computation."""
    layer = _w4a4_layer(256, 64, True, 32, seed=5)
    x = torch.randn(4, 256) * 2
    x[1] *= 3e5                                              # |x̂| ~ 1e6 > 65504
    x[2, 7] = 1e6                                            # one huge element, in the first K split
    x[3, 250] = 5e5                                          # and one in the last: the splits' maxima combine
    a16, rs, _ = gemm.quantize_activations(x, layer, f16=True, splits=2)
    assert torch.isfinite(a16.float()).all() and a16.float().abs().max() <= 112
    from var_gen_ros.quant.int4 import two_level
    u, _ = two_level(smooth_input(x, layer.smooth), 64)
    assert torch.equal(rs, u.squeeze(-1)) and bool((rs[1:] > 1e3).all())
    ref = _float64_w4a4(x, layer)
    for path, tma in (("f16", False), ("f16w", False), ("f16w", True), ("i8", False), ("i8w", False), ("i8w", True)):
        y = torch.full((4, 64), float("nan"))
        gemm.w4a4_linear(x, layer, out=y, path=path, config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False, TMA=tma))
        assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-5, path


@interpreted
def test_a_w4a4_call_gives_its_own_thread_the_kernels_allocator(gemm):
    """Triton keeps its allocator (global memory for the TMA descriptors a kernel builds on the device) in a context
    variable, and a thread starts without it. gen_node generates in its engine's worker thread: on Hopper every TMA
    tile failed there with "no allocator was set" until the W4A4 entries set it for their caller (found on the H100,
    twenty-seventh session; `test_tma_tiles_launch_from_a_thread_that_did_not_import_the_kernels` is the GPU check).
    A TMA-tile call from a new thread leaves that thread with the kernels' allocator, and its result is right."""
    import threading
    from triton.runtime import _allocation
    layer = _w4a4_layer(256, 64, True, 32, seed=5)
    x = torch.randn(4, 256)
    seen = {}

    def in_thread():
        seen["before"] = _allocation._allocator.get()
        seen["y"] = gemm.w4a4_linear(x, layer, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False, TMA=True))
        seen["after"] = _allocation._allocator.get()
    t = threading.Thread(target=in_thread)
    t.start()
    t.join(300)
    assert seen["before"] is not gemm._descriptor_scratch           # a new thread starts without it
    assert seen["after"] is gemm._descriptor_scratch
    ref = _float64_w4a4(x, layer)
    assert ((seen["y"].double() - ref).norm() / ref.norm()).item() <= 1e-5


@interpreted
@pytest.mark.parametrize("n_cached,n_tail,lq", [(70, 0, 20), (37, 13, 13), (0, 9, 9), (130, 0, 1)])
def test_int8_kv_attention_kernel_matches_float64(attn, n_cached, n_tail, lq):
    from var_gen_ros.quant.kv_int8 import asym_params, dequantize_asym, quantize_asym
    g = torch.Generator().manual_seed(n_cached + n_tail)
    B, H, D = 2, 3, 32
    cap = n_cached + 5
    # skewed channels with very different ranges: zero points far from 0
    k = torch.randn(B, H, cap, D, generator=g) * torch.rand(1, H, 1, D, generator=g) * 3 + torch.rand(1, H, 1, D, generator=g) * 4
    v = torch.randn(B, H, cap, D, generator=g) * torch.rand(1, H, 1, D, generator=g) * 3 + torch.rand(1, H, 1, D, generator=g) * 2
    ks, kz = asym_params(k.amin((0, 2), keepdim=True), k.amax((0, 2), keepdim=True))
    vs, vz = asym_params(v.amin((0, 2), keepdim=True), v.amax((0, 2), keepdim=True))
    kq, vq = quantize_asym(k, ks, kz), quantize_asym(v, vs, vz)
    q = torch.nn.functional.normalize(torch.randn(B, H, lq, D, generator=g), dim=-1) * 6
    kt, vt = torch.randn(B, H, n_tail, D, generator=g), torch.randn(B, H, n_tail, D, generator=g)
    K = torch.cat([dequantize_asym(kq[:, :, :n_cached], ks, kz).double(), kt.double()], 2)
    V = torch.cat([dequantize_asym(vq[:, :, :n_cached], vs, vz).double(), vt.double()], 2)
    ref = torch.softmax(q.double() @ K.transpose(-1, -2), -1) @ V
    for cfg in (dict(BLOCK_M=16, BLOCK_N=32), dict(BLOCK_M=32, BLOCK_N=16)):
        o = torch.full((B, H, lq, D), float("nan"))
        attn.int8_kv_attention(q, kq, vq, n_cached, ks, kz, vs, vz, kt if n_tail else None, vt if n_tail else None,
                               out=o, config=cfg)
        rel = ((o.double() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-5, (cfg, rel)
        # in place (Int8KVCache.attend writes the output over q): the same numbers
        qi = q.clone()
        attn.int8_kv_attention(qi, kq, vq, n_cached, ks, kz, vs, vz, kt if n_tail else None, vt if n_tail else None,
                               out=qi, config=cfg)
        assert torch.equal(qi, o), cfg


@interpreted
@pytest.mark.parametrize("n_cached,n_tail,heads", [(70, 0, 1), (37, 13, 3), (0, 9, 2), (130, 0, None)])
def test_int8_kv_dequant_and_sdpa_path_match_float64(attn, n_cached, n_tail, heads):
    """int8_kv_dequant gives Int8KVCache.read's float32 values (bit for bit) for its head group, then
    the tail's tokens; the dequantize-then-SDPA attention over head groups matches float64 attention,
    also written over its queries."""
    from var_gen_ros.quant.kv_int8 import asym_params, dequantize_asym, quantize_asym
    g = torch.Generator().manual_seed(n_cached + 7 * n_tail)
    B, H, D = 2, 6, 32
    cap = n_cached + 5
    k = torch.randn(B, H, cap, D, generator=g) * torch.rand(1, H, 1, D, generator=g) * 3 + torch.rand(1, H, 1, D, generator=g) * 4
    v = torch.randn(B, H, cap, D, generator=g) * torch.rand(1, H, 1, D, generator=g) * 3 - 1
    ks, kz = asym_params(k.amin((0, 2), keepdim=True), k.amax((0, 2), keepdim=True))
    vs, vz = asym_params(v.amin((0, 2), keepdim=True), v.amax((0, 2), keepdim=True))
    kq, vq = quantize_asym(k, ks, kz), quantize_asym(v, vs, vz)
    kt, vt = torch.randn(B, H, n_tail, D, generator=g), torch.randn(B, H, n_tail, D, generator=g)
    Kf = torch.cat([dequantize_asym(kq[:, :, :n_cached], ks, kz), kt], 2)
    Vf = torch.cat([dequantize_asym(vq[:, :, :n_cached], vs, vz), vt], 2)
    tails = (kt, vt) if n_tail else (None, None)
    kb, vb = attn.int8_kv_dequant(kq, vq, n_cached, 2, 3, ks, kz, vs, vz, *tails, dtype=torch.float32)
    assert torch.equal(kb, Kf[:, 2:5]) and torch.equal(vb, Vf[:, 2:5])
    q = torch.nn.functional.normalize(torch.randn(B, H, 11, D, generator=g), dim=-1) * 6
    ref = torch.softmax(q.double() @ Kf.double().transpose(-1, -2), -1) @ Vf.double()
    o = attn.int8_kv_attention_sdpa(q, kq, vq, n_cached, ks, kz, vs, vz, *tails, heads=heads)
    assert ((o.double() - ref).norm() / ref.norm()).item() <= 1e-5
    qi = q.clone()
    assert attn.int8_kv_attention_sdpa(qi, kq, vq, n_cached, ks, kz, vs, vz, *tails, out=qi, heads=heads) is qi
    assert torch.equal(qi, o)
    # the head group fits the byte budget: 2 (K, V) x B x heads x N x D x 2 bytes
    assert attn.sdpa_head_group(2, 28, 10521, 128, 64 << 20) == 4 and attn.sdpa_head_group(2, 28, 10, 128, 1) == 1


@interpreted
@pytest.mark.parametrize("L,start", [(37, 5), (64, 0), (130, 11), (1, 3)])
def test_int8_kv_store_kernel_gives_the_reference_codes(attn, L, start):
    """The fused store writes the same int8 codes as Int8KVCache's torch ops (IEEE divide, round half to
    even, clamp), at tokens [start, start + L) of the cache and nowhere else, from strided K/V."""
    from var_gen_ros.quant.kv_int8 import asym_params, quantize_asym
    g = torch.Generator().manual_seed(L)
    B, H, D, cap = 2, 3, 32, start + L + 4
    # (B, L, H, D) storage viewed as (B, H, L, D): the layout qkv's split hands the cache
    k = (torch.randn(B, L, H, D, generator=g) * 3 + 1).transpose(1, 2)
    v = (torch.randn(B, L, H, D, generator=g) * 2 - 1).transpose(1, 2)
    # calibrated on a narrower range than the data, so clamping happens; halves land on .5 exactly
    ks, kz = asym_params(k.amin((0, 2), keepdim=True) * 0.5, k.amax((0, 2), keepdim=True) * 0.5)
    vs, vz = asym_params(v.amin((0, 2), keepdim=True) * 0.8, v.amax((0, 2), keepdim=True) * 0.8)
    k[0, 0, 0, :4] = (torch.arange(4) + 0.5) * ks[0, 0, 0, :4]
    kq = torch.full((B, H, cap, D), 99, dtype=torch.int8)
    vq = torch.full((B, H, cap, D), 99, dtype=torch.int8)
    attn.int8_kv_store(k, v, kq, vq, start, ks, kz, vs, vz)
    assert torch.equal(kq[:, :, start:start + L], quantize_asym(k, ks, kz))
    assert torch.equal(vq[:, :, start:start + L], quantize_asym(v, vs, vz))
    rest = torch.cat([kq[:, :, :start], kq[:, :, start + L:], vq[:, :, :start], vq[:, :, start + L:]], 2)
    assert (rest == 99).all()
    assert kq[:, :, start:start + L].min() == -128 and kq[:, :, start:start + L].max() == 127


_I8P_CODES_OF_WORDS = None     # the next test's kernel calls it (the interpreter resolves names in module globals)


@interpreted
def test_the_i8p_gemms_code_arithmetic_gives_the_reference_q_times_m():
    """kernels/i8_mainloop_gluon.py's `_codes_of_words` (the i8p GEMM's unpack: a word's eight packed INT4 codes times
    their group's multiplier m in [1, 16], as two words of four int8 bytes in k order, SWAR), its own source run by the
    interpreter inside a Triton kernel (Gluon has no interpreter; its layouts and TMA are checked on the GPU), with the
    bytes interleaved by shifts and masks where the GPU uses one `prmt` a word (PRMT=False): every byte equals
    PyTorch's unpack of the codes times m, over every 16-bit pattern in each half of a word and every m."""
    import triton
    import triton.language as tl
    from var_gen_ros.quant.int4 import unpack_int4
    global _I8P_CODES_OF_WORDS
    _I8P_CODES_OF_WORDS = _load_interpreted("i8_mainloop_gluon")._codes_of_words.fn

    @triton.jit
    def unpack(w_ptr, m_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        w = tl.load(w_ptr + i).to(tl.uint32, bitcast=True)
        m = tl.load(m_ptr + i).to(tl.uint32)
        out0, out1 = _I8P_CODES_OF_WORDS(w, m, False)
        tl.store(out_ptr + 2 * i, out0.to(tl.int32, bitcast=True))
        tl.store(out_ptr + 2 * i + 1, out1.to(tl.int32, bitcast=True))

    n = 1 << 16
    half = torch.arange(-32768, 32768, dtype=torch.int32)           # every 16-bit pattern once in each half
    w = (half[torch.randperm(n)] & 0xFFFF) | (half[torch.randperm(n)] << 16)
    m = torch.randint(1, 17, (n,), dtype=torch.int32)
    m[:16] = torch.arange(1, 17, dtype=torch.int32)
    out = torch.empty(2 * n, dtype=torch.int32)
    unpack[(1,)](w, m, out, N=n)
    ref = (unpack_int4(w.view(torch.uint8).view(n, 4)).to(torch.int32) * m[:, None]).to(torch.int8)
    assert torch.equal(out.view(torch.int8).view(n, 8), ref)


@interpreted
def test_tuner_pruning_reads_the_w16_flag_from_the_call(gemm, monkeypatch):
    """The f16 tuner's TMA tiles (workspace loads only) are candidates only for W16 calls, and only when
    opted in; W16 comes as a keyword of the call, not among the positional arguments."""
    prune = gemm._w4a4_f16.early_config_prune
    tma = lambda cs: [c for c in cs if c.kwargs.get("TMA", False)]
    args = {"M_BUCKET": 8192}
    monkeypatch.setattr(gemm, "TMA_CANDIDATES", True)
    assert tma(prune(gemm.F16_LARGE_M_CONFIGS, args, W16=True))
    assert not tma(prune(gemm.F16_LARGE_M_CONFIGS, args, W16=False))
    monkeypatch.setattr(gemm, "TMA_CANDIDATES", False)
    kept = prune(gemm.F16_LARGE_M_CONFIGS, args, W16=True)
    assert kept and not tma(kept)


@interpreted
def test_i8_tuner_keeps_workspace_tiles_for_workspace_calls(gemm, monkeypatch):
    """The i8 tuner's TMA and 128-wide K-step tiles read the int8 workspace only (W8), the K steps of 128
    only over all of a K that is a multiple of 128 in one split."""
    # (the tuner's prune is i8_candidates at the call's GPU architecture; 90: Hopper, where TMA tiles exist)
    prune = lambda cs, K, W8: gemm.i8_candidates(cs, W8, K, 90)
    wide = lambda cs: [c for c in cs if c.kwargs.get("TMA", False) or c.kwargs.get("KSTEP", 64) != 64]
    monkeypatch.setattr(gemm, "TMA_CANDIDATES", True)
    kept = prune(gemm.I8_LARGE_M_CONFIGS, 3584, W8=True)
    assert wide(kept) and all(c.kwargs["SPLIT_K"] == 1 for c in kept if c.kwargs.get("KSTEP", 64) == 128)
    assert not wide(prune(gemm.I8_LARGE_M_CONFIGS, 3584, W8=False))
    assert not [c for c in prune(gemm.I8_LARGE_M_CONFIGS, 448, W8=True) if c.kwargs.get("KSTEP", 64) == 128]
    # the persistent tiles (VAR_GEN_W4A4_PERSIST) read one low-rank partial: none where kernel 1 left several
    persist = gemm.I8_PERSIST_CONFIGS
    assert gemm.i8_candidates(persist, True, 3584, 90, S=1) == persist
    assert not gemm.i8_candidates(persist, True, 3584, 90, S=2) and not gemm.i8_candidates(persist, True, 3584, 87)
    monkeypatch.setattr(gemm, "TMA_CANDIDATES", False)
    assert not [c for c in prune(gemm.I8_LARGE_M_CONFIGS, 3584, W8=True) if c.kwargs.get("TMA", False)]


@interpreted
def test_kept_workspaces_are_made_once_per_layer_and_follow_its_weights(gemm):
    """Inside `workspaces_kept` (a large scale's slices) an i8w layer unpacks its int8 workspace on its first
    call and reuses it after (the same tensor, the same outputs as without keeping); a weight changed in place
    makes a new one; on exit nothing is kept."""
    layer = _w4a4_layer(192, 64, True, 32, seed=5)
    other = _w4a4_layer(192, 64, False, 32, seed=6)
    xs = [torch.randn(M, 192) for M in (5, 40)]
    alone = [gemm.w4a4_linear(x, layer, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False)) for x in xs]
    made = []
    real = gemm._UNPACK_I8
    with gemm.workspaces_kept():
        gemm._UNPACK_I8 = lambda grid, args, meta: (made.append(args[3]), real(grid, args, meta))
        try:
            kept = [gemm.w4a4_linear(x, layer, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False)) for x in xs]
            gemm.w4a4_linear(xs[0], other, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False))
            with gemm.workspaces_kept():           # nested: the outer scope's workspaces stay
                gemm.w4a4_linear(xs[1], layer, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False))
            assert len(made) == 2 and gemm._KEPT.spaces[id(layer)][2] is made[0]
            # what keeps the Gluon i8p GEMM off a kept layer (`gluon_i8p_applies`)
            assert gemm._kept_workspace(layer) is made[0] and gemm._kept_workspace(other) is made[1]
            with torch.no_grad():
                layer.qweight.copy_(other.qweight)  # in place: the version moves on
                layer.wscales.copy_(other.wscales)
            assert gemm._kept_workspace(layer) is None
            changed = gemm.w4a4_linear(xs[0], layer, path="i8w", config=dict(BLOCK_M=16, BLOCK_N=64, SWAP=False))
            assert len(made) == 3 and gemm._kept_workspace(layer) is made[2]
        finally:
            gemm._UNPACK_I8 = real
    assert gemm._KEPT.spaces is None and gemm._kept_workspace(layer) is None
    for a, b in zip(alone, kept):
        assert torch.equal(a, b)
    ref = _float64_w4a4(xs[0], layer)
    assert ((changed.double() - ref).norm() / ref.norm()).item() <= 1e-5


@interpreted
@pytest.mark.parametrize("n,start,in_dt,kv_dt", [(37, 9, torch.float32, torch.float32), (32, 0, torch.bfloat16, torch.float32),
                                                  (5, 60, torch.float32, torch.bfloat16)])
def test_qkv_rope_kernel_matches_float64(n, start, in_dt, kv_dt):
    """The fused qkv epilogue: a partial token block, a token offset, bf16 outputs; what lies outside
    the written tokens stays as poisoned."""
    from kernels_under_test import assert_qkv_written, qkv_epilogue_float64
    from var_gen_ros.infinity.model import SelfAttention
    qr = _load_interpreted("qkv_rope_triton")
    B, H, c, L = 2, 3, 16, 70
    g = torch.Generator().manual_seed(n + start)
    sa = SelfAttention(H * c, H)
    with torch.no_grad():
        sa.q_bias.normal_(generator=g)
        sa.v_bias.normal_(generator=g)
        sa.scale_mul_1H11.uniform_(0.0, 5.0, generator=g)     # up to the clamp at log(100)
    qkv = (torch.randn(B, n, 3 * H * c, generator=g) * 3).to(in_dt)
    rope = torch.randn(2, n, c // 2, generator=g)
    q = torch.full((B, H, L, c), float("nan"), dtype=torch.bfloat16 if kv_dt == torch.bfloat16 else torch.float32)
    k, v = torch.full((B, H, L, c), float("nan"), dtype=kv_dt), torch.full((B, H, L, c), float("nan"), dtype=kv_dt)
    with torch.no_grad():
        bias, scale_mul = sa.qkv_constants()
        qr.qkv_rope(qkv, bias, scale_mul.view(-1), rope, q, k, v, start)
        refs = qkv_epilogue_float64(qkv, sa, rope)
    # bf16 keeps 8 bits
    assert_qkv_written((q, k, v), refs, start, n, lambda name, dt: 1e-6 if dt == torch.float32 else 8e-3)


@interpreted
@pytest.mark.parametrize("path,cfg,q_dt", [("i8w", dict(BLOCK_M=16), torch.float32),
                                          ("i8", dict(BLOCK_M=32), torch.float32),
                                          ("i8w", dict(BLOCK_M=16, KSTEP=128), torch.bfloat16),
                                          ("i8w", dict(BLOCK_M=32, KSTEP=64, TMA=True), torch.float32),
                                          ("i8w", dict(BLOCK_M=16, LR_BF16=True), torch.float32)])
def test_w4a4_gemm_with_the_qkv_epilogue_matches_float64(gemm, path, cfg, q_dt):
    """The qkv projection with the attention's input epilogue in the i8 GEMM's (`w4a4_qkv_rope`): packed
    and workspace weights (plain and TMA loads), a partial row block, rows of two batches, a token offset, against float64 of
    the layer's dequantized product followed by the epilogue; what lies outside the written tokens
    stays poisoned."""
    from kernels_under_test import assert_qkv_written, qkv_epilogue_float64
    from var_gen_ros.infinity.model import SelfAttention
    B, H, c, L, n, start, K = 2, 3, 32, 50, 19, 7, 256
    C = H * c
    g = torch.Generator().manual_seed(cfg["BLOCK_M"] + n)
    sa = SelfAttention(C, H)
    with torch.no_grad():
        sa.q_bias.normal_(generator=g)
        sa.v_bias.normal_(generator=g)
        sa.scale_mul_1H11.uniform_(0.0, 5.0, generator=g)
    layer = _w4a4_layer(K, 3 * C, False, 32, seed=3)
    x = torch.randn(B, n, K, generator=g) * 2
    x[..., :3] *= 25                                          # outlier channels
    rope = torch.randn(2, n, c // 2, generator=g)
    q = torch.full((B, H, L, c), float("nan"), dtype=q_dt)
    k, v = torch.full((B, H, L, c), float("nan")), torch.full((B, H, L, c), float("nan"))
    with torch.no_grad():
        bias, scale_mul = sa.qkv_constants()
        gemm.w4a4_qkv_rope(x, layer, bias, scale_mul.view(-1), rope, q, k, v, start, config=cfg, path=path)
        refs = qkv_epilogue_float64(_float64_w4a4(x.reshape(-1, K), layer).view(B, n, 3 * C), sa, rope)
    tol32 = 4e-5 if cfg.get("LR_BF16") else 1e-5       # (the bf16-pair low-rank epilogue: see _gemm_cases)
    assert_qkv_written((q, k, v), refs, start, n, lambda name, dt: tol32 if dt == torch.float32 else 8e-3)
    with pytest.raises(ValueError, match="heads"):
        gemm.w4a4_qkv_rope(x, layer, bias, scale_mul.view(-1), rope, q[..., :16], k[..., :16], v[..., :16], start,
                           config=cfg, path=path)
    with pytest.raises(ValueError, match="KSTEP"):
        gemm.w4a4_qkv_rope(x, layer, bias, scale_mul.view(-1), rope, q, k, v, start, config=dict(BLOCK_M=16, KSTEP=512),
                           path=path)


@interpreted
@pytest.mark.parametrize("affine,mod,out_dt", [(False, True, torch.float32), (True, False, torch.bfloat16),
                                               (False, False, torch.float32)])
def test_adaln_kernel_matches_float64(affine, mod, out_dt):
    """The modulated LayerNorm on a token slice of a larger tensor (strided over the batch), a width
    that is not a power of two (masked lanes must not enter the mean or variance)."""
    ad = _load_interpreted("adaln_triton")
    B, L, C, a, n = 2, 40, 96, 7, 19
    g = torch.Generator().manual_seed(C + n)
    x = torch.randn(B, L, C, generator=g) * 3 + 1.5
    w, b = (torch.randn(C, generator=g), torch.randn(C, generator=g)) if affine else (None, None)
    s, sh = (torch.randn(B, 1, C, generator=g), torch.randn(B, 1, C, generator=g)) if mod else (None, None)
    y = ad.adaln(x[:, a:a + n], 1e-6, out_dt, w, b, s, sh)
    xd = x[:, a:a + n].double()
    ref = (xd - xd.mean(-1, keepdim=True)) / (xd.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    if affine:
        ref = ref * w.double() + b.double()
    if mod:
        ref = ref * (s.double() + 1) + sh.double()
    assert y.dtype == out_dt and y.shape == (B, n, C)
    err = float((y.double() - ref).abs().max() / ref.abs().max())
    assert err <= (1e-6 if out_dt == torch.float32 else 8e-3), err


@interpreted
@pytest.mark.parametrize("shape,groups", [((2, 96, 7, 9), 32), ((1, 48, 33, 31), 24), ((1, 64, 5), 32)])
def test_group_norm_kernel_matches_float64(shape, groups, monkeypatch):
    """The VAE's GroupNorm (+ SiLU) with rows split into several programs' partials (tiles and chunks made small),
    the last tile of a row partly and some wholly past its end, an offset mean (no E[x²] - E[x]² cancellation)."""
    gn = _load_interpreted("group_norm_triton")
    monkeypatch.setattr(gn, "BLOCK", 64)
    monkeypatch.setattr(gn, "CHUNK", 256)
    g = torch.Generator().manual_seed(shape[1])
    x = torch.randn(*shape, generator=g) * 3 + 40.0
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    for silu in (False, True):
        y = gn.group_norm(x, groups, w, b, 1e-6, silu)
        ref = torch.nn.functional.group_norm(x.double(), groups, w.double(), b.double(), 1e-6)
        ref = torch.nn.functional.silu(ref) if silu else ref
        assert y.dtype == x.dtype and y.shape == x.shape
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        assert err <= 1e-5, (silu, err)
    with pytest.raises(ValueError, match="groups"):
        gn.group_norm(x, 7, w, b, 1e-6)


@interpreted
@pytest.mark.parametrize("shape,groups", [((2, 160, 5, 4), 32), ((1, 96, 6, 5), 24), ((1, 64, 5, 3), 32)])
def test_group_norm_kernel_on_channels_last_matches_float64(shape, groups, monkeypatch):
    """The same op on channels-last activations (the NHWC kernels): groups of 5 channels padded to 8 and 24 groups
    padded to 32, pixel runs over many programs with the last partly and some wholly past the image's end, partials
    merged over several blocks, an offset mean; y comes back channels-last."""
    gn = _load_interpreted("group_norm_triton")
    monkeypatch.setattr(gn, "NHWC_TILE", 256)
    monkeypatch.setattr(gn, "NHWC_TILES", 3)
    monkeypatch.setattr(gn, "NHWC_FINISH_BLOCK", 2)
    g = torch.Generator().manual_seed(shape[1])
    x = torch.randn(*shape, generator=g) * 3 + 40.0
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    xl = x.contiguous(memory_format=torch.channels_last)
    assert not xl.is_contiguous()
    for silu in (False, True):
        y = gn.group_norm(xl, groups, w, b, 1e-6, silu)
        ref = torch.nn.functional.group_norm(x.double(), groups, w.double(), b.double(), 1e-6)
        ref = torch.nn.functional.silu(ref) if silu else ref
        assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        assert err <= 1e-5, (silu, err)
    with pytest.raises(ValueError, match="channels-last"):
        gn.group_norm(x.transpose(2, 3), groups, w, b, 1e-6)


def _block_run(blk, cache_kind, store, chunk, dtype, seed=0):
    """One CrossAttnBlock over a cached 8x8 scale then a 12x12 scale (stored or not), inputs drawn in
    float32 then cast, so runs in different dtypes see the same numbers."""
    from var_gen_ros.infinity.config import ScaleSchedule
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.infinity.model import rope_tables
    from var_gen_ros.quant.kv_int8 import Int8KVCache
    g = torch.Generator().manual_seed(seed)
    B, C, H, c = 2, blk.C, blk.sa.num_heads, blk.sa.head_dim
    rope = rope_tables(ScaleSchedule(((8, 8), (12, 12)), (12, 12)), c).to(dtype)
    x0, x1 = torch.randn(B, 64, C, generator=g).to(dtype), torch.randn(B, 144, C, generator=g).to(dtype)
    gss = (torch.randn(B, 1, 6, C, generator=g) * 0.1).to(dtype)
    text = torch.randn(B, 7, C, generator=g).to(dtype)
    mask = torch.ones(B, 7, dtype=torch.bool)
    if cache_kind == "int8":
        static = {n: torch.rand(H, c, generator=g) * 0.02 + 0.01 for n in ("k_scale", "v_scale")}
        static.update({n: torch.randint(-8, 8, (H, c), generator=g).float() for n in ("k_zero", "v_zero")})
        cache = Int8KVCache(B, H, c, 208, dtype, "cpu", static=static)
    else:
        cache = KVCache(B, H, c, 208, dtype, "cpu")
    with torch.no_grad():
        kv = blk.ca.text_kv(text)
        blk(x0, gss, kv, mask, rope[:, :64], kv_cache=cache, start=0, store=True)
        return blk(x1, gss, kv, mask, rope[:, 64:], kv_cache=cache, start=64, store=store, chunk_tokens=chunk)


@interpreted
@pytest.mark.parametrize("cache_kind,store", [("float", True), ("float", False), ("int8", True), ("int8", False)])
def test_block_fast_path_matches_float64(monkeypatch, cache_kind, store):
    """A whole block on the GPU fast path (the qkv epilogue and modulated-LayerNorm kernels, residuals
    added in place into the slices of x; for the INT8 cache the dequantize-per-head-group + SDPA
    attention), here with the kernels interpreted on the CPU, against the same block and inputs in
    float64 on the PyTorch reference: whole and in slices."""
    import copy
    from var_gen_ros.infinity import tiny_config
    from var_gen_ros.infinity.model import CrossAttnBlock
    from var_gen_ros.quant import dispatch
    g = torch.Generator().manual_seed(1)
    blk = CrossAttnBlock(tiny_config(False))
    for p in blk.parameters():
        p.data = torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5
    ref = _block_run(copy.deepcopy(blk).double(), cache_kind, store, 0, torch.float64)
    qr, ad = _load_interpreted("qkv_rope_triton"), _load_interpreted("adaln_triton")
    monkeypatch.setattr(dispatch, "qkv_rope_kernel", lambda x: qr.qkv_rope)
    monkeypatch.setattr(dispatch, "adaln_kernel", lambda x: ad.adaln)
    if cache_kind == "int8":
        from var_gen_ros.quant import kv_int8
        at = _load_interpreted("int8_kv_attention_triton")
        monkeypatch.setattr(kv_int8, "int8_attention_sdpa", lambda q, n: lambda *a, **k: at.int8_kv_attention_sdpa(*a, heads=2, **k))
    for chunk in (0, 50):
        y = _block_run(blk, cache_kind, store, chunk, torch.float32)
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        assert err <= (1e-5 if cache_kind == "float" else 1e-3), (chunk, err)    # int8: a code may flip


@interpreted
@pytest.mark.parametrize("n_in,n_out,out_dt", [(256, 48, torch.bfloat16), (96, 21, torch.float32), (640, 16, torch.float16),
                                             (6, 5, torch.float32)])
def test_int4_dequant_kernel_matches_the_reference(n_in, n_out, out_dt):
    """The text encoder's INT4 dequantization kernel against Int4WeightLinear.dequantized in float32 rounded once
    to the output dtype, across partial row and column tiles, a 32-wide group (96 inputs) and a 2-wide one (6); the output is
    poisoned first. In float32 the same bits. The interpreter casts to bf16 / fp16 by truncation (the GPU
    rounds to nearest even, and test_kernels_gpu.py asserts the same bits there), so here those are within
    one unit in the last place of the reference."""
    from var_gen_ros.quant.int4_weight import Int4WeightLinear
    deq = _load_interpreted("int4_dequant_triton")
    g = torch.Generator().manual_seed(n_in + n_out)
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * torch.rand(n_out, 1, generator=g) * 3)
    q = Int4WeightLinear.from_linear(lin)
    ref = q.dequantized(torch.float32).to(out_dt)
    out = torch.full((n_out, n_in), float("nan"), dtype=out_dt)
    got = deq.int4_dequant(q.weight_packed, q.weight_scale, q.weight_offset, q.group, out_dt, out=out)
    assert got.data_ptr() == out.data_ptr()
    if out_dt == torch.float32:
        assert torch.equal(got, ref), (got - ref).abs().max()
    else:
        ulp = 2.0 ** (torch.floor(torch.log2(ref.float().abs().clamp_min(2.0 ** -14))) - {torch.bfloat16: 7, torch.float16: 10}[out_dt])
        assert bool(((got.float() - ref.float()).abs() <= ulp).all()), ((got.float() - ref.float()).abs() / ulp).max()
    # and the weight is close to the float one it came from (the codes are not garbage that matches itself)
    err = ((got.double() - lin.weight.double()).norm() / lin.weight.double().norm()).item()
    assert err < 0.12, err
    with pytest.raises(ValueError, match="scale and offset"):
        deq.int4_dequant(q.weight_packed, q.weight_scale[:, 1:], q.weight_offset, q.group, out_dt)


@interpreted
def test_a_shipped_pick_launches_the_tuned_gemm_without_a_trial(gemm, tmp_path):
    """With a pick for its key seeded from a table (kernels/tuned_picks.py), the autotuned i8 GEMM launches that
    config with no trial at all: the tuner's trials time CUDA graphs, which the CPU has not, so a key in another
    form than the one the tuner looks up fails here. The result still matches float64."""
    import json
    tp = _load_interpreted("tuned_picks")
    tuner = tp.autotuners(gemm)["_w4a4_i8_kernel"]
    K, N, M = 256, 192, 3
    layer = _w4a4_layer(K, N, True, 32, seed=11)
    x = torch.randn(M, K) * 2
    # the tuning key as Triton forms it: the key arguments, then every tensor argument's dtype in order (the
    # activations' codes, their scales, the packed weights, the weight scales and units, the low-rank partials,
    # L_up, the bias, the output, the split-K workspace and the tile counters)
    key = [gemm._bucket(M), N, K, False, "torch.int8", "torch.float32", "torch.uint8", str(layer.wscales.dtype),
           str(layer.weight_units().dtype), "torch.float32", str(layer.lora_up.dtype), str(layer.bias.dtype),
           str(x.dtype), "torch.float32", "torch.int32"]
    pick = next(c for c in gemm.I8_SMALL_M_CONFIGS if c.kwargs["BLOCK_M"] == 16 and c.kwargs["BLOCK_N"] == 64
                and c.kwargs["SPLIT_K"] == 4)
    table = {"format": 1, "device": "CPU interpreter", "capability": [8, 7], "note": "", "picks": {
        "_w4a4_i8_kernel": [{"key": key, "config": {"kwargs": pick.kwargs, "num_warps": pick.num_warps,
                                                    "num_stages": pick.num_stages, "num_ctas": 1, "maxnreg": None}}]}}
    (tmp_path / "t.json").write_text(json.dumps(table))
    try:
        seeding = tp.seed_modules([gemm], "any", setting=str(tmp_path / "t.json"))
        assert seeding.describe().startswith("1 of 1 from t.json"), seeding.describe()
        y = gemm.w4a4_linear(x, layer, path="i8")
        assert tuner.best_config is pick and seeding.tuned_here() == 0
        ref = _float64_w4a4(x, layer)
        assert ((y.double() - ref).norm() / ref.norm()).item() <= 1e-5
    finally:
        tuner.cache.clear()


def test_unpack_ahead_learns_the_order_its_workspaces_were_made_in():
    """kernels/unpack_ahead.py's order (which layer's workspace to unpack ahead after a layer's): learned from the order
    the workspaces were made in, across contexts; a layer made twice in a row (a large scale's slices) learns nothing
    from itself; a changed order is learned again; a layer that died is never predicted (its id may be reused), and its
    entry is dropped once the table is large."""
    import gc
    from var_gen_ros.quant.dispatch import kernel_module
    ua = kernel_module("unpack_ahead")
    a, b, c = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    first = ua._Ahead(None, None)
    assert [first.learn(layer) for layer in (a, b, c)] == [None, None, None]
    later = ua._Ahead(None, None)
    assert later.learn(a) is b and later.learn(b) is c and later.learn(c) is None
    changed = ua._Ahead(None, None)
    assert changed.learn(a) is b and changed.learn(a) is b and changed.learn(c) is None
    assert ua._Ahead(None, None).learn(a) is c
    del c
    gc.collect()
    assert ua._Ahead(None, None).learn(a) is None
    # entries of dead layers are dropped once the table is large (a model loaded again and again)
    grown = dict(ua._NEXT)
    try:
        keep = [torch.nn.Identity() for _ in range(2 * ua._PRUNE_AT)]
        for i in range(0, len(keep), 2):
            state = ua._Ahead(None, None)
            state.learn(keep[i])
            state.learn(keep[i + 1])
        assert len(ua._NEXT) >= ua._PRUNE_AT
        del keep, state
        gc.collect()
        state = ua._Ahead(None, None)
        state.learn(a)
        state.learn(b)
        assert len(ua._NEXT) < 16 and state.learn(a) is b
    finally:
        ua._NEXT.clear()
        ua._NEXT.update(grown)
