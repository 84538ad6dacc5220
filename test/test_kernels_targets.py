"""The kernels built for the Jetson Orin (sm_87) on this machine, with Triton's compiler and ptxas (no GPU):
what the node's first start on an Orin compiles (kernels/targets.py). The full table, with registers and
spills, is `bench/target_compile.py` (docs/BENCHMARKS.md)."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("compiling needs Triton's compiler, not its interpreter", allow_module_level=True)

from var_gen_ros.quant.dispatch import kernel_module  # noqa: E402

targets = kernel_module("targets")
gemm = kernel_module("w4a4_gemm_triton")


def _compile(args):
    i, arch = args
    return targets.compile_variant(targets.variants(arch)[i], arch)


def _pick(vs):
    """Every untuned kernel variant (each must run), and per tuned kernel its first and its largest
    candidate (the tile most likely to hit a limit)."""
    out, by = [], {}
    for i, v in enumerate(vs):
        if not v.tuned:
            out.append(i)
        else:
            by.setdefault(targets.kernel_family(v.name), []).append(i)
    for idx in by.values():
        big = max(idx, key=lambda i: (vs[i].constexprs.get("BLOCK_M", 0) * vs[i].constexprs.get("BLOCK_N", 128),
                                      vs[i].num_stages))
        out += sorted({idx[0], big})
    return sorted(out)


def test_orin_builds_every_kernel_the_dispatch_launches_there():
    vs = targets.variants(targets.ORIN)
    fams = {targets.kernel_family(v.name) for v in vs}
    # the Orin's paths: i8 / i8w (two-level scales), INT8 MMA with a rescale (free scales; no FP8 before
    # sm_89, no f16 path off Hopper), the qkv-epilogue GEMM, the INT8-KV attention and its helpers, the
    # INT4 text encoder's dequantization, the VAE decoder's GroupNorm (+ SiLU)
    assert fams == {"row_amax", "quantize_act", "unpack_weight_i8", "w4a4_i8", "w4a4_i8w", "w4a4_int8", "w4a4_i8_qkv",
                    "attn_int8", "kv_store", "kv_dequant", "qkv_rope", "adaln", "int4_dequant", "gn_partial", "gn_apply",
                    "gn_nhwc_partial", "gn_nhwc_apply", "gn_nhwc_finish"}
    idx = _pick(vs)
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1)) as ex:
        rows = list(ex.map(_compile, [(i, targets.ORIN) for i in idx]))
    failed = [(r["name"], r.get("error")) for r in rows if not r["ok"]]
    assert not failed, failed
    for i, r in zip(idx, rows):
        v = vs[i]
        if not v.tuned:
            assert r["fits"], (r["name"], r["shared"])
        fam = targets.kernel_family(r["name"])
        if fam.startswith("w4a4_i8") or fam == "w4a4_int8":
            # the INT8 tensor cores (mma.sync m16n8k32 s8), not an emulation, and no Hopper instruction
            assert any("m16n8k32" in m and ".s8.s8." in m for m in r["mma"]), (r["name"], r["mma"])
        if fam == "attn_int8":
            assert any("m16n8k16" in m and "bf16" in m for m in r["mma"]), (r["name"], r["mma"])
        assert not any(m.startswith("wgmma") for m in r["mma"]), r["name"]


def test_hopper_only_candidates_are_pruned_below_sm90():
    """TMA tiles (the bulk tensor copy engine is sm_90+) are not tuned on the Orin; K steps of 128 and TMA
    still need the workspace."""
    large = gemm.I8_LARGE_M_CONFIGS
    tma = [c for c in large if c.kwargs.get("TMA")]
    assert tma
    on_orin = gemm.i8_candidates(large, True, 3584, 87)
    on_h100 = gemm.i8_candidates(large, True, 3584, 90)
    assert not any(c.kwargs.get("TMA") for c in on_orin)
    if gemm.TMA_CANDIDATES:
        assert set(map(id, tma)) <= set(map(id, on_h100))
    assert len(on_h100) - len(on_orin) == (len(tma) if gemm.TMA_CANDIDATES else 0)
    no_ws = gemm.i8_candidates(large, False, 3584, 90)
    assert not any(c.kwargs.get("TMA") or c.kwargs.get("KSTEP", 64) != 64 for c in no_ws)
    odd_k = gemm.i8_candidates(large, True, 3584 + 64, 90)       # K % 128 != 0: no K step of 128
    assert not any(c.kwargs.get("KSTEP", 64) == 128 for c in odd_k)
    qkv = gemm.qkv_candidates(gemm.QKV_CONFIGS, True, 3584, 87)
    assert qkv and not any(c.kwargs["TMA"] for c in qkv)
    assert any(c.kwargs["TMA"] for c in gemm.qkv_candidates(gemm.QKV_CONFIGS, True, 3584, 90)) == gemm.TMA_CANDIDATES


def test_a_kernel_the_target_cannot_build_is_reported_not_raised():
    """compile_variant returns the compiler's error (what a first start would hit) instead of raising: a
    block of 24 tokens (tl.arange needs a power of two) fails with Triton's message."""
    v = next(v for v in targets.variants(targets.ORIN) if v.name.startswith("qkv_rope"))
    bad = targets.Variant("qkv_rope[BLOCK_L=24]", v.kernel, v.ptrs, dict(v.constexprs, BLOCK_L=24), v.num_warps)
    r = targets.compile_variant(bad, targets.ORIN)
    assert not r["ok"] and "power of 2" in r["error"].lower().replace("power-of-two", "power of 2"), r


def test_gpus_before_sm80_run_the_reference_because_a_kernel_does_not_build_there():
    """dispatch.kernels_supported: sm_80 and newer take the kernels; an older GPU takes the reference, with
    the reason in kernel_status. Why: compiled for sm_75 (Turing), the qkv-epilogue GEMM fails in Triton's
    matmul lowering, while it builds for sm_80."""
    from var_gen_ros.quant.dispatch import kernels_supported
    for cap in ((8, 0), (8, 6), (8, 7), (8, 9), (9, 0)):
        assert kernels_supported(cap) == (True, ""), cap
    ok, why = kernels_supported((7, 5))
    assert not ok and "7.5" in why and "sm_80" in why
    v75 = next(v for v in targets.variants(75) if v.name.startswith("w4a4_i8_qkv"))
    r75 = targets.compile_variant(v75, 75)
    assert not r75["ok"], r75
    v80 = next(v for v in targets.variants(80) if v.name == v75.name)
    assert targets.compile_variant(v80, 80)["ok"]


@pytest.mark.parametrize("small_tiles_max_m", [64, 256])
def test_tile_candidates_fit_the_split_workspace(monkeypatch, small_tiles_max_m):
    """Every config the GEMM tuner may try at a row bucket splits K at most as many ways as the split-K
    workspace allocated for that bucket holds (a larger split would write past it), with the small tiles
    joining above 64 rows or not (VAR_GEN_W4A4_SMALL_TILES_MAX_M)."""
    monkeypatch.setattr(gemm, "SMALL_TILES_MAX_M", small_tiles_max_m)
    small_ids = {id(c) for c in gemm.I8_SMALL_M_CONFIGS}
    for bucket in [1 << i for i in range(14)]:
        cands = gemm.tile_candidates(gemm.I8_SMALL_M_CONFIGS, gemm.I8_LARGE_M_CONFIGS, bucket)
        assert cands
        ws, _ = gemm._split_k_buffers(bucket, 64, torch.device("cpu"))
        most = 1 if ws is None else ws.shape[0]
        assert max(c.kwargs["SPLIT_K"] for c in cands) <= most, bucket
        joined = [c for c in cands if id(c) in small_ids]
        assert bool(joined) == (bucket <= max(64, small_tiles_max_m)), bucket
        if 64 < bucket:
            assert all(c.kwargs["SPLIT_K"] <= 4 for c in joined)


def test_kernel_1_signals_a_dependent_gemm_only_when_asked():
    """The Triton kernel 1 with SIGNAL (the i8s GEMM after it a programmatic dependent launch, VAR_GEN_W4A4_PDL=1)
    compiles for sm_90 with `griddepcontrol.launch_dependents`; the default variant, which every other call
    launches, has none."""
    import triton as _triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    v = next(x for x in targets.variants(90) if x.name.startswith("quantize_act[MQ=True,REDUCE=True"))
    found = {}
    for signal in (False, True):
        src = ASTSource(fn=v.kernel, signature=v.signature(), constexprs=dict(v.constexprs, SIGNAL=signal),
                        attrs=v.attrs())
        k = _triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": v.num_warps,
                                                                           "num_stages": v.num_stages})
        found[signal] = k.asm["ptx"].count("griddepcontrol.launch_dependents")
    assert found == {False: 0, True: 1}, found


def test_the_swar_unpack_takes_only_packed_codes_it_can_read_as_aligned_words(monkeypatch):
    """The SWAR unpack reads the packed codes as uint32 words, so a weight whose rows do not start 4-byte aligned (a
    view at an odd byte offset) takes the byte unpack; VAR_GEN_W4A4_SWAR=0 (read at import) turns it off for all."""
    buf = torch.zeros(4 * 1792 + 4, dtype=torch.uint8)
    aligned = buf[:4 * 1792].view(4, 1792)
    assert aligned.data_ptr() % 4 == 0
    assert gemm.swar_applies(aligned) is gemm.SWAR is True
    for offset in (1, 2, 3):
        assert not gemm.swar_applies(buf[offset:offset + 4 * 1792].view(4, 1792))
    monkeypatch.setattr(gemm, "SWAR", False)
    assert not gemm.swar_applies(aligned)


def test_the_i8_gemm_unpacks_its_weights_in_registers_on_hopper():
    """The in-register i8 GEMM (up to 256 rows) at the H100 table's pick for 128 rows of 3584² (128 × 128 tile, K in
    four splits, swapped). A byte at a time (SWAR=False), its K loop turns each 64-wide group's packed weight codes into
    wgmma's A operand in registers: nothing stored to shared memory, two wgmma (K = 32 each) per group; the loop's ALU
    work is that unpack (bench/ptx_loop.py; docs/BENCHMARKS.md, twenty-eighth session). The product's default, four
    bytes at a time (SWAR), issues at most 0.85x those instructions around the same two wgmma (253 -> 207), at the
    price of a few shared-memory stores; on the H100 it took 0.88-0.94x the time (twenty-ninth session). A variant
    splitting the activations into even and odd k in registers, tried in the twenty-eighth session, stored them back
    to shared memory for wgmma's B operand."""
    name = "w4a4_i8[BLOCK_M=128,BLOCK_N=128,SPLIT_K=4,SWAP=True,w8,s3]"
    v = next(v for v in targets.variants(90) if v.name.startswith(name))
    assert v.constexprs["SWAR"] is True                 # the variant the product compiles
    _, byte = _loop_of(v, 90, SWAR=False)
    assert byte["wgmma.mma_async"] == 2, byte
    assert byte["st.shared"] == 0 and byte["cp.async"] > 0, byte
    _, swar = _loop_of(v, 90)
    assert swar["wgmma.mma_async"] == 2, swar
    assert sum(swar.values()) <= 0.85 * sum(byte.values()), (sum(byte.values()), sum(swar.values()))


def _loop_of(v, arch, **constexprs):
    """(ptxas usage, the K loop's opcode counts) of variant v compiled for sm_arch with constexpr overrides."""
    import sys
    from dataclasses import replace
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import ptx_loop
    v = replace(v, constexprs={**v.constexprs, **constexprs})
    src = targets.ASTSource(fn=v.kernel, signature=v.signature(), constexprs=v.constexprs, attrs=v.attrs())
    k = triton.compile(src, target=targets.GPUTarget("cuda", arch, 32),
                       options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    return targets._ptxas_usage(k.asm["ptx"], arch), ptx_loop.opcode_counts(ptx_loop.largest_loop(k.asm["ptx"]))


def test_the_swar_code_unpack_builds_for_the_orin_with_fewer_loop_instructions():
    """The i8 GEMM's SWAR unpack (VAR_GEN_W4A4_SWAR, the default; codes made four bytes at a time in uint32 words)
    at every third of the Orin's in-register candidates: it builds for sm_87, and its K loop issues at most 0.7x the
    default unpack's instructions (280 -> 184 per group at 16 x 64, twenty-eighth session) with the same shared-memory
    loads and stores and the same MMAs. (Spills: none where the default has none, except the 128 x 256 tile, 188
    bytes; docs/BENCHMARKS.md.)"""
    vs = [v for v in targets.variants(targets.ORIN) if v.name.startswith("w4a4_i8[")]
    shared = lambda c: c["ld.shared"] + c["st.shared"] + c["ldmatrix.sync"]
    for v in vs[::3]:
        _, base = _loop_of(v, targets.ORIN, SWAR=False)
        _, swar = _loop_of(v, targets.ORIN, SWAR=True)
        assert shared(swar) == shared(base), (v.name, base, swar)
        assert swar["mma.sync"] == base["mma.sync"] > 0, (v.name, base, swar)
        assert sum(swar.values()) <= 0.7 * sum(base.values()), (v.name, sum(base.values()), sum(swar.values()))


def test_the_i8_gemm_loop_waits_for_every_wgmma_in_triton_and_keeps_one_in_flight_in_gluon():
    """Why kernels/i8_mainloop_gluon.py exists, compiled here for sm_90: the i8w GEMM's TMA tile (Triton) ends every
    K step with `wgmma.wait_group 0` (Triton makes a wgmma asynchronous only with a float32 accumulator; the i8
    path's is int32), while the Gluon loop's INT8 wgmma (s32 += s8 · s8) waits with 1 group still in flight."""
    import re
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type
    tma_tile = next(v for v in targets._gemm_variants(90)
                    if v.name.startswith("w4a4_i8w[") and "TMA=True" in v.name and "PERSIST" not in v.name)
    triton_ptx = triton.compile(
        ASTSource(fn=tma_tile.kernel, signature=tma_tile.signature(), constexprs=tma_tile.constexprs,
                  attrs=tma_tile.attrs()),
        target=GPUTarget("cuda", 90, 32), options={"num_warps": tma_tile.num_warps,
                                                   "num_stages": tma_tile.num_stages}).asm["ptx"]
    assert "wgmma.mma_async.sync.aligned" in triton_ptx and ".s32.s8.s8" in triton_ptx
    assert set(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", triton_ptx)) == {"0"}

    glu = kernel_module("i8_mainloop_gluon")
    a, w = torch.empty(4096, 3584, dtype=torch.int8), torch.empty(3584, 3584, dtype=torch.int8)
    da, dw = glu.descriptors(a, w, 128, 256, 128)
    sig = dict(a_desc=mangle_type(da), w_desc=mangle_type(dw), y_ptr="*bf16", M="i32", N="i32", K="i32",
               STAGES="constexpr", INSTR_N="constexpr", num_warps="constexpr")
    src = GluonASTSource(glu._i8_mainloop_kernel, sig, constexprs=dict(STAGES=4, INSTR_N=128, num_warps=8),
                         attrs={(2,): [["tt.divisibility", 16]], (4,): [["tt.divisibility", 16]],
                                (5,): [["tt.divisibility", 16]]})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    ptx = k.asm["ptx"]
    assert "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8" in ptx
    assert "1" in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)
    assert k.metadata.shared <= targets.SHARED_LIMIT[90], k.metadata.shared
    # the whole i8w GEMM in Gluon (the epilogue's low-rank term as two bf16 wgmmas), fc1's GELU on: the same loop,
    # and no spill (the Triton TMA tile above spills 1,188-2,584 bytes a thread there)
    ptx = _compile_i8w(glu, da, dw).asm["ptx"]
    assert "s32.s8.s8" in ptx and "f32.bf16.bf16" in ptx
    assert "1" in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)
    usage = targets._ptxas_usage(ptx, 90)
    assert usage["spill_bytes"] == 0 and not usage["wgmma_serialized"], usage


_NEXT_PTRS = dict(nx_inv_ptr="*fp32", nx_max_ptr="*fp32", nx_dh_ptr="*bf16", nx_dl_ptr="*bf16", nx_lr_ptr="*fp32")


def _compile_i8w(glu, da, dw, nxt: bool = False):
    """`_i8w_gemm_kernel` for sm_90 (128 x 256 tiles, 4 stages, 8 warps), fc1's epilogue, with `nxt` the next
    layer's row pass too."""
    from triton.runtime.jit import mangle_type
    sig = dict(a_desc=mangle_type(da), w_desc=mangle_type(dw), ux_ptr="*fp32", uw_ptr="*fp32", lr_ptr="*fp32",
               up_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16", **_NEXT_PTRS, M="i32", N="i32", K="i32")
    cx = dict(HAS_BIAS=True, HAS_LR=True, R=32, ACT=1, STAGES=4, INSTR_N=128, NEXT=nxt, R2=32, num_warps=8)
    return _gluon_compile(glu._i8w_gemm_kernel, dict(sig, **{k: "constexpr" for k in cx}), cx, {"num_warps": 8})


def _gluon_compile(kernel, sig: dict, cx: dict, options: dict):
    """A Gluon kernel compiled for sm_90 here: every pointer and every int but M 16-byte aligned / divisible by 16, as
    the 8B shapes' are."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    names = list(sig)
    aligned = [i for i, n in enumerate(names) if n.endswith("_ptr") or n in ("N", "K")]
    src = GluonASTSource(kernel, sig, constexprs=cx, attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _compile_i8p(glu, M, N, K, tile, nxt: bool = False):
    """kernels/i8_mainloop_gluon.py's `_i8p_gemm_kernel` compiled for sm_90 here, fc1's epilogue (bias, GELU, the
    low-rank term) on, with `nxt` the next layer's row pass too: (ptx, shared bytes)."""
    from triton.runtime.jit import mangle_type
    q, qw = torch.empty(M, K, dtype=torch.int8), torch.empty(N, K // 2, dtype=torch.uint8)
    da, dp = glu.packed_descriptors(q, qw, tile["block_m"], tile["block_n"], 128)
    sig = dict(a_desc=mangle_type(da), p_desc=mangle_type(dp), sw_ptr="*bf16", wu_ptr="*fp32", ux_ptr="*fp32",
               lr_ptr="*fp32", up_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16", ws_ptr="*i32", cnt_ptr="*i32")
    cx = dict(SWAP=tile["swap"], HAS_BIAS=True, HAS_LR=True, R=32, ACT=1, SPLIT_K=tile["split_k"],
              STAGES=tile.get("stages", 4), INSTR_N=tile["instr_n"])
    options = {"num_warps": tile["num_warps"]}
    if tile.get("maxnreg"):
        options["maxnreg"] = tile["maxnreg"]
    kernel = glu._i8p_gemm_kernel
    if tile.get("ws"):          # the warp-specialized form: its ring, partitions and register limit
        meta = glu.ws_meta(tile)
        options["maxnreg"] = meta.pop("maxnreg")
        cx.update(meta)
        kernel = glu._i8p_ws_kernel
    else:                       # the next layer's row pass's pointers, and whether it runs
        sig.update(_NEXT_PTRS)
        cx.update(NEXT=nxt, R2=32)
    sig.update(M="i32", N="i32", K="i32", **{k: "constexpr" for k in cx}, num_warps="constexpr")
    cx["num_warps"] = tile["num_warps"]
    k = _gluon_compile(kernel, sig, cx, options)
    return k.asm["ptx"], int(k.metadata.shared)


def test_the_gluon_gemms_build_with_the_next_layers_row_pass_in_their_epilogue():
    """FC2_STATS: the Gluon i8w GEMM (128 x 256) and the unswapped i8p GEMM (288 rows, two programs an SM; 2048 rows,
    4 stages) with `_next_row_stats` in their epilogue, compiled for sm_90 here at fc1's shape: the epilogue's bf16
    wgmmas of N = 32 (the low-rank shares) and its atomic max are there, the K loop's INT8 wgmmas wait as without it,
    shared memory fits (the epilogue's tiles reuse the ring's: no more than without), and ptxas spills at most 600
    bytes (fifty-second session: 544 for i8w, 352 for i8p under its 128 registers; all after the K loop in the SASS),
    where a launch with more registers than the SM has, or the ring's space not reused, would not build or fit."""
    import re
    glu = kernel_module("i8_mainloop_gluon")
    a, w = torch.empty(4096, 3584, dtype=torch.int8), torch.empty(14336, 3584, dtype=torch.int8)
    da, dw = glu.descriptors(a, w, 128, 256, 128)
    built = [(k.asm["ptx"], k.metadata.shared) for k in (_compile_i8w(glu, da, dw, nxt) for nxt in (False, True))]
    for M in (288, 2048):
        tile = glu.i8p_tile(M, 14336, 3584, 132)
        assert not tile["swap"] and tile.get("maxnreg") == (128 if M <= glu.TWO_PER_SM_MAX_M else None)
        built += [_compile_i8p(glu, M, 14336, 3584, tile, nxt) for nxt in (False, True)]
    for i in range(0, len(built), 2):
        (plain, plain_shared), (ptx, shared) = built[i], built[i + 1]
        assert "m64n32k16.f32.bf16.bf16" in ptx and "m64n32k16" not in plain
        assert "atom.global" in ptx and ".max" in ptx
        waits = lambda text: set(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", text))  # noqa: E731
        assert waits(plain) <= waits(ptx)           # the K loop's waits as without (i8w keeps a group in flight)
        usage = targets._ptxas_usage(ptx, 90)
        assert shared == plain_shared and not usage["wgmma_serialized"] and usage["spill_bytes"] <= 600, usage


def test_the_i8p_gemm_builds_for_sm_90_with_its_wgmmas_left_asynchronous():
    """kernels/i8_mainloop_gluon.py's `i8p_gemm` (the INT8 wgmma on the packed weights, their codes made in the K loop)
    compiled for sm_90 here at the launches `i8p_tile` picks on an H100 (132 SMs) for 32-2048 rows of the 8B block
    shapes: INT8 wgmmas, fits the SM's shared memory, and ptxas does not serialize its wgmmas (C7515), which it does
    when the loop stores its codes to shared memory with a wgmma group left in flight across its iterations (the loop's
    first form, forty-ninth session);
    no spill where the K is not split (the split's epilogue, 44 bytes at 64-128 rows swapped, is outside the loop) but
    the epilogue's of the launches two programs an SM share (72 bytes under their 128 registers), which fit two an SM.
    The warp-specialized form too: its wgmma partition waits with one group in flight, under its register limit; and the
    qkv projection's form with the attention's input epilogue in it (`i8p_qkv`), no spill."""
    import re
    glu = kernel_module("i8_mainloop_gluon")
    seen, swaps = set(), set()
    for M in (32, 72, 128, 288, 2048):
        for K, N in ((3584, 3584), (3584, 14336), (14336, 3584)):
            tile = glu.i8p_tile(M, N, K, 132)
            key = tuple(sorted(tile.items()))
            if key in seen:
                continue
            seen.add(key)
            swaps.add(tile["swap"])
            ptx, shared = _compile_i8p(glu, M, N, K, tile)
            usage = targets._ptxas_usage(ptx, 90)
            assert ".s32.s8.s8" in ptx and shared <= targets.SHARED_LIMIT[90], (M, N, K, tile, shared)
            assert not usage["wgmma_serialized"], (M, N, K, tile, usage)
            if tile.get("maxnreg"):          # two programs an SM: their shared memory and registers
                assert 2 * shared <= targets.SHARED_LIMIT[90] and usage["registers"] * 32 * tile["num_warps"] * 2 <= 65536
                assert usage["spill_bytes"] <= 80, (M, N, K, tile, usage)
            else:
                assert tile["split_k"] > 1 or usage["spill_bytes"] == 0, (M, N, K, tile, usage)
    assert swaps == {False, True}        # both forms built
    assert ("maxnreg", 128) in set().union(*map(set, seen))     # and the two-an-SM launch
    # the warp-specialized form (its wgmma partition keeps one group in flight: the stores are the unpack warps')
    for M, N, K in ((72, 3584, 3584), (2048, 14336, 3584)):
        tile = dict(glu.i8p_tile(M, N, K, 132), ws=True)
        ptx, shared = _compile_i8p(glu, M, N, K, tile)
        usage = targets._ptxas_usage(ptx, 90)
        assert "setmaxnreg" in ptx and shared <= targets.SHARED_LIMIT[90], (M, N, K, tile, shared)
        assert "1" in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx), (M, N, K, tile)
        assert not usage["wgmma_serialized"] and usage["spill_bytes"] <= 8, (M, N, K, tile, usage)
    # the qkv projection's i8p GEMM with the attention's input epilogue in it (`i8p_qkv`: heads of 128)
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type
    da, dp = glu.packed_descriptors(torch.empty(2048, 3584, dtype=torch.int8),
                                    torch.empty(10752, 1792, dtype=torch.uint8), 128, 128, 128)
    sig = dict(a_desc=mangle_type(da), p_desc=mangle_type(dp), sw_ptr="*bf16", wu_ptr="*fp32", ux_ptr="*fp32",
               lr_ptr="*fp32", up_ptr="*bf16", b_ptr="*bf16", M="i32", N="i32", K="i32", QB="*fp32", SM="*fp32",
               COS="*fp32", SIN="*fp32", QO="*bf16", KO="*fp32", VO="*fp32", NTOK="i32", START="i32", C="i32",
               sr_l="i32", sq_b="i32", sq_h="i32", sq_l="i32", sk_b="i32", sk_h="i32", sk_l="i32",
               HAS_BIAS="constexpr", HAS_LR="constexpr", R="constexpr", STAGES="constexpr", num_warps="constexpr")
    src = GluonASTSource(glu._i8p_qkv_kernel, sig,
                         constexprs=dict(HAS_BIAS=False, HAS_LR=True, R=32, STAGES=4, num_warps=8),
                         attrs={(i,): [["tt.divisibility", 16]] for i in (2, 3, 4, 5, 6, 7, 8)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    usage = targets._ptxas_usage(k.asm["ptx"], 90)
    assert ".s32.s8.s8" in k.asm["ptx"] and int(k.metadata.shared) <= targets.SHARED_LIMIT[90]
    assert not usage["wgmma_serialized"] and usage["spill_bytes"] == 0, usage


def test_i8p_tile_fills_the_gpu_with_k_splits_only_where_the_tiles_leave_it_idle():
    """`i8p_tile`: swapped 64-row weight tiles up to 128 rows, 128 x 128 above; K split 2-4 ways only where the tiles
    leave at least half of the SMs idle, each split at least 8 K steps, every split non-empty (`split_k_fits`)."""
    glu = kernel_module("i8_mainloop_gluon")
    assert glu.i8p_tile(72, 3584, 3584, 132) == dict(swap=True, block_m=128, block_n=64, num_warps=4, instr_n=128,
                                                    split_k=2)
    assert glu.i8p_tile(32, 21504, 3584, 132)["split_k"] == 1         # 336 tiles
    assert glu.i8p_tile(2048, 3584, 3584, 132) == dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128,
                                                      split_k=1)
    assert glu.i8p_tile(32, 3584, 1024, 132)["split_k"] == 1          # 8 K steps cannot be split into >= 8-step shares
    # unswapped with more programs than SMs: two an SM (3 stages, 128 registers), up to TWO_PER_SM_MAX_M rows
    assert glu.i8p_tile(288, 14336, 3584, 132) == dict(swap=False, block_m=128, block_n=128, num_warps=8, instr_n=128,
                                                       stages=3, maxnreg=128, split_k=1)     # 336 programs
    assert "maxnreg" not in glu.i8p_tile(288, 3584, 3584, 132)          # 84 programs: one wave of one an SM
    assert "maxnreg" not in glu.i8p_tile(128, 14336, 3584, 132)         # swapped
    assert "maxnreg" not in glu.i8p_tile(glu.TWO_PER_SM_MAX_M + 1, 14336, 3584, 132)
    for M in (33, 128, 512):
        for K, N in ((3584, 3584), (14336, 3584), (2048, 7168)):
            t = glu.i8p_tile(M, N, K, 132)
            assert glu.split_k_fits(K, t["split_k"]) and K // 128 // t["split_k"] >= 8
    assert glu.split_k_fits(3584, 4) and not glu.split_k_fits(384, 4)   # 3 steps: a fourth share would be empty


def test_the_i8p_swapped_256_row_tile_is_picked_when_asked_and_builds_for_sm_90(monkeypatch):
    """VAR_GEN_W4A4_I8P_SWAP256_MAX_M (SWAP256_MAX_M, off by default): `i8p_tile` keeps 129 rows up to it swapped, the x
    rows in tiles of 256 (each weight code made twice at 288-512 rows instead of 3-4 times), in 2 stages where there are
    more programs than SMs; off, the unswapped pick. Compiled for sm_90 here at 288 and 512 rows on the block shapes: INT8
    wgmmas left asynchronous, the shared memory of one program an SM (4 stages) or two (2 stages: their registers fit
    the SM's 64K too), spills of at most 200 bytes (160 at Triton 3.6: the low-rank epilogue's (64, 256) float32 tile)."""
    glu = kernel_module("i8_mainloop_gluon")
    assert not glu.i8p_tile(288, 3584, 14336, 132)["swap"]            # off by default
    monkeypatch.setattr(glu, "SWAP256_MAX_M", 512)
    assert glu.i8p_tile(128, 3584, 3584, 132)["block_m"] == 128       # the swapped tiles up to 128 rows as before
    assert glu.i8p_tile(513, 3584, 3584, 132)["swap"] is False
    assert glu.i8p_tile(288, 3584, 14336, 132) == dict(swap=True, block_m=256, block_n=64, num_warps=4, instr_n=128,
                                                       split_k=1)      # fc2: 2 x 56 programs, one wave of one an SM
    assert glu.i8p_tile(512, 14336, 3584, 132) == dict(swap=True, block_m=256, block_n=64, num_warps=4, instr_n=128,
                                                       stages=2, split_k=1)    # fc1: 448 programs, two an SM
    for M in (288, 512):
        for K, N in ((3584, 3584), (3584, 14336), (14336, 3584)):
            tile = glu.i8p_tile(M, N, K, 132)
            assert tile["swap"] and tile["block_m"] == 256, tile
            ptx, shared = _compile_i8p(glu, M, N, K, tile)
            usage = targets._ptxas_usage(ptx, 90)
            assert ".s32.s8.s8" in ptx and not usage["wgmma_serialized"] and usage["spill_bytes"] <= 200, (tile, usage)
            per_sm = 2 if tile.get("stages") == 2 else 1
            assert per_sm * shared <= targets.SHARED_LIMIT[90], (tile, shared)
            assert per_sm * usage["registers"] * 32 * tile["num_warps"] <= 65536, (tile, usage)


def test_the_i8p_failure_analyzer_names_a_planted_bug():
    """bench/i8p_debug_analyze.py (for a failing i8p GPU test: it tries models of wrong kernels on the saved cases) on a
    synthetic case here: its correct model is the exact sums' rounding, and an output planted with the nibbles of each
    byte swapped, one K step left out or a word's two halves swapped matches that model everywhere and the correct one
    in under a fifth of the outputs, so a match tells the models apart."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("i8p_analyze", os.path.join(root, "bench", "i8p_debug_analyze.py"))
    an = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(an)
    g = torch.Generator().manual_seed(3)
    M, N, K = 48, 96, 512
    wu = 2.0 ** -torch.randint(4, 9, (N,), generator=g).float()               # units of few significant bits
    m = torch.randint(1, 17, (N, K // 64), generator=g).float()
    case = dict(q=torch.randint(-112, 113, (M, K), dtype=torch.int8, generator=g),
                qweight=torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g),
                wscales=(wu[:, None] * m).bfloat16(), wu=wu, ux=torch.rand(M, generator=g) * 1e-3 + 1e-4)
    models = an.models(case)
    share = lambda a, b: (a == b).float().mean().item()
    assert share(models["correct"], an._out(case["q"], an._weights(case["qweight"], case["wscales"], wu), case["ux"],
                                            wu)) == 1.0
    for planted in ("nibbles swapped", "last K step left out", "codes 0-3 and 4-7 of a word swapped"):
        y = models[planted]
        assert share(an.models(dict(case))[planted], y) == 1.0 and share(models["correct"], y) < 0.2, planted


def test_a_gluon_gemm_that_fails_turns_off_itself_alone_and_keeps_why(monkeypatch):
    """`_gluon_failed` (a Gluon GEMM's launch could not compile or fit: on by default on sm_90): it warns, turns off
    that GEMM and not the other, and keeps the reason the kernel status reports; the Triton GEMMs serve its calls."""
    from triton.runtime.errors import OutOfResources
    gm = kernel_module("w4a4_gemm_triton")
    monkeypatch.setattr(gm, "GLUON_I8W", True)
    monkeypatch.setattr(gm, "GLUON_I8P", True)
    monkeypatch.setattr(gm, "GLUON_FAILED", {})
    with pytest.warns(UserWarning, match="Gluon i8w GEMM failed on this GPU"):
        gm._gluon_failed("i8w", OutOfResources(294912, 232448, "shared memory"))
    assert gm.GLUON_I8W is False and gm.GLUON_I8P is True
    assert list(gm.GLUON_FAILED) == ["i8w"] and gm.GLUON_FAILED["i8w"].startswith("OutOfResources: out of resource")
    with pytest.warns(UserWarning, match="Gluon i8p GEMM failed"):
        gm._gluon_failed("i8p", OutOfResources(262144, 232448, "shared memory"))
    assert gm.GLUON_I8P is False and sorted(gm.GLUON_FAILED) == ["i8p", "i8w"]


def test_the_condition_layers_run_host_bound_and_the_gluon_gemms_stay_off_there(monkeypatch, tiny_bundle):
    """The per-prompt condition (`encode_condition`: a text K/V projection per block, eager) runs its blocks' text K/V
    layers inside `host_bound` (kernels/w4a4_gemm_triton.py), where the Gluon GEMMs stay off (their launches cost the
    host more than the Triton GEMMs': fifty-first session); the flag nests and is restored after, also after an
    error."""
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant import dispatch
    gm = kernel_module("w4a4_gemm_triton")
    assert not gm._host_bound()
    with gm.host_bound():
        with gm.host_bound():
            assert gm._host_bound()
        assert gm._host_bound()
    assert not gm._host_bound()
    with pytest.raises(RuntimeError):
        with gm.host_bound():
            raise RuntimeError("a failed projection")
    assert not gm._host_bound()

    gen = Generator.from_bundle(tiny_bundle)
    # on the CPU the dispatch's context is a no-op: the kernels' own, to see where the model enters it
    monkeypatch.setattr(dispatch, "w4a4_host_bound", lambda x: gm.host_bound())
    seen = []
    for b in gen.model.blocks:
        real = b.ca.text_kv
        monkeypatch.setattr(b.ca, "text_kv", lambda t, real=real: (seen.append(gm._host_bound()), real(t))[1])
    feats, mask = gen.encode_text("a red circle", None, use_cfg=True)
    gen.model.encode_condition(feats, mask)
    assert seen == [True] * len(gen.model.blocks) and not gm._host_bound()
