"""Memory accounting of the edge benchmark (bench/edge_proof.py), on the CPU with a tiny config: the
allocator's live bytes between scales equal the counted components (weights + KV cache + scale state
+ prompt features) within 5 %, for bf16-style float and for W4A4 + INT8 KV. Plus the allocation meter
itself and the INT8 / INT4 text encoder levers."""
import pytest
import torch

from var_gen_ros.memory import AllocationMeter, resident_check


def test_cpu_meter_counts_storages_exactly():
    with AllocationMeter("cpu") as m:
        a0 = m.allocated()
        x = torch.empty(1000, dtype=torch.float32)
        v = x.view(10, 100)                           # a view: no new storage
        assert m.allocated() - a0 == 4000
        y = torch.ones(250, dtype=torch.float64)
        assert m.allocated() - a0 == 6000 and m.peak() >= a0 + 6000
        del x
        assert m.allocated() - a0 == 6000            # the view keeps the storage alive
        del v, y
        assert m.allocated() == a0


def _accounting(gen, meter):
    feats = gen.encode_text("a red circle on a white background", None, True)
    weights = sum(gen.weight_bytes().values())
    base = meter.allocated()
    checks = []
    gen.generate("a red circle on a white background", seed=0, text_features=feats,
                 callback=lambda ev: checks.append(resident_check(meter, weights, ev.resident_bytes, base - weights)))
    return checks


def test_memory_components_add_up_float_and_w4a4_kv8(tiny_bundle):
    from var_gen_ros.infinity import Generator
    from var_gen_ros.infinity.config import schedule_for
    from var_gen_ros.quant import QuantConfig, quantize_
    for quant in (False, True):
        with AllocationMeter("cpu") as meter:
            gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
            if quant:
                quantize_(gen, QuantConfig(kv="int8", kv_scales="static"), ["a red circle", "two blue squares"])
            checks = _accounting(gen, meter)
            peak = meter.peak()
        assert len(checks) == len(schedule_for(gen.cfg).scales)
        for c in checks:
            assert c["kv_cache"] > 0 and c["scale_state"] > 0
            assert abs(c["relative"]) <= 0.05, (quant, c)
        assert peak > checks[-1]["allocated"]          # activations exist on top of the resident set
        if quant:
            kv_q = checks[-1]["kv_cache"]
        else:
            kv_f = checks[-1]["kv_cache"]
    # fp32 -> int8 is exactly 4x fewer bytes for the same capacity, plus 4 float32 (H, c) scale/zero
    # tensors per layer for the static scales
    c = gen.cfg
    assert kv_q == kv_f // 4 + c.depth * 4 * c.num_heads * c.head_dim * 4


def test_offloaded_weights_take_their_bytes_out_of_every_scale(tiny_bundle, tmp_path):
    """W4A4 + INT8 KV with the INT4 text encoder: with the text encoder, the condition layers and the VAE offloaded to
    files, the accounting still adds up, and at every scale boundary the allocator holds the offloaded bytes fewer
    than with them resident."""
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant import QuantConfig, quantize_
    from var_gen_ros.quant.runtime import apply_text_encoder
    held = {}
    for parked in (False, True):
        with AllocationMeter("cpu") as meter:
            gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
            quantize_(gen, QuantConfig(kv="int8", kv_scales="static"), ["a red circle", "two blue squares"])
            apply_text_encoder(gen, "int4")
            if parked:
                gen.offload_to_disk(str(tmp_path))
                parked_bytes = sum(p.nbytes for p in gen.parked_weights().values())
            checks = _accounting(gen, meter)
        for c in checks:
            assert abs(c["relative"]) <= 0.05, (parked, c)
        held[parked] = ([c["allocated"] for c in checks], sum(gen.weight_bytes().values()))
    assert held[False][1] - held[True][1] == parked_bytes > 0
    for alloc_r, alloc_p in zip(held[False][0], held[True][0]):
        # the meter sees the storages torch's ops make; the text encoder's unquantized norms and relative-position
        # table come from its file as loaded (1,152 bytes here), so their going is not seen
        assert 0.99 * parked_bytes <= alloc_r - alloc_p <= parked_bytes


def test_the_repeated_prompt_runs_read_only_the_vae(tiny_bundle, tmp_path):
    """bench/edge_proof.repeated_prompt_runs: the warm-up's prompt again after another prompt, its features cached
    and (after one unmeasured run) its condition kept, so in the measured runs only the VAE is read, once per image."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen.offload_to_disk(str(tmp_path))
    gen.warmup(1, edge_proof.PROMPT, cfg=3.0)
    gen.generate("another prompt", seed=1, cfg=3.0)        # as the measured runs: the kept condition is another's
    r = edge_proof.repeated_prompt_runs(gen, None, None, 3.0, 2)
    assert r["loads"] == {"text encoder": 0, "condition layers": 0, "VAE": 2}
    assert len(r["total_s"]) == 2 and all(t > 0 for t in r["total_s"]) and r["peak_allocated"] is None


@pytest.mark.parametrize("multiple", [None, 1])
def test_other_prompt_runs_use_the_warm_ups_text_length(tiny_bundle, monkeypatch, multiple):
    """bench/edge_proof.other_prompt_runs: new prompts of other token counts than the warm-up's; with the text padded
    (the default) they use the warm-up's text length, so on a GPU its graphs; at exact lengths (multiple 1) each of
    them brings its own."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator, text
    if multiple is not None:
        monkeypatch.setattr(text, "TOKEN_MULTIPLE", multiple)
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen.cuda_graphs = True
    gen.warmup(1, edge_proof.PROMPT, cfg=3.0)
    r = edge_proof.other_prompt_runs(gen, None, None, 3.0)
    counts = r["token_counts"]
    assert len(set(counts + [gen.text_encoder.token_count(edge_proof.PROMPT)])) == len(counts) + 1, counts
    assert len(r["total_s"]) == len(counts) and all(t > 0 for t in r["total_s"])
    assert len(r["text_lengths_before"]) == 1
    if multiple is None:
        assert r["text_lengths_after"] == r["text_lengths_before"], r
    else:
        assert len(r["text_lengths_after"]) == 1 + len(counts), r


def test_the_new_prompt_runs_load_the_text_weights_each_time(tiny_bundle, tmp_path, monkeypatch):
    """bench/edge_proof.new_prompt_runs: generate given the prompt, its features and condition forgotten before each
    run, so every run loads the encoder, the text-only layers (read beside the encoder) and the VAE once."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator, sampler
    monkeypatch.setattr(sampler, "OFFLOAD_PREFETCH", True)
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen.offload_to_disk(str(tmp_path))
    gen.warmup(1, edge_proof.PROMPT, cfg=3.0)
    r = edge_proof.new_prompt_runs(gen, None, None, 3.0, 2)
    assert r["loads"] == {"text encoder": 2, "condition layers": 2, "VAE": 2}
    assert r["prefetched"] == {"text encoder": 0, "condition layers": 2, "VAE": 0}
    assert len(r["total_s"]) == 2 and 0 < r["text_encoder_s_median"] < r["total_s_median"]


def test_the_levers_check_compares_a_new_prompt_with_the_levers_on_and_off(tiny_bundle, tmp_path, monkeypatch):
    """bench/edge_proof.levers_check: with the prefetch on (the text graphs do nothing on the CPU), a new prompt
    generated with it (three times), then with it off, gives one image; the condition layers are read beside the
    encoder in the runs with it only; the settings are as they were afterwards; with both off there is nothing to check."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator, sampler
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen.offload_to_disk(str(tmp_path))
    gen.warmup(1, edge_proof.PROMPT, cfg=3.0)
    monkeypatch.setattr(sampler, "OFFLOAD_PREFETCH", False)
    monkeypatch.setattr(sampler, "TEXT_GRAPHS", False)
    assert edge_proof.levers_check(gen, None, None, 3.0) == {}
    monkeypatch.setattr(sampler, "OFFLOAD_PREFETCH", True)
    cond = gen.parked_weights()["condition layers"]
    loads, prefetched = cond.loads, cond.prefetched
    r = edge_proof.levers_check(gen, None, None, 3.0)
    assert r == {"text_graphs": False, "prefetch": True, "same_image": True, "max_abs_diff": 0, "pixels_differing": 0,
                 "runs_with_levers_agree": True}
    assert (cond.loads - loads, cond.prefetched - prefetched) == (4, 3)
    assert sampler.OFFLOAD_PREFETCH is True and sampler.TEXT_GRAPHS is False


def test_the_preloaded_prompt_runs_read_nothing_but_the_vae(tiny_bundle, tmp_path):
    """bench/edge_proof.preloaded_prompt_runs: each new prompt finds the text encoder and the condition layers loaded
    by the preload (counted there, once each per run), so the generation itself reads only the VAE; the image is the
    one the same prompt and seed give without the preload. Without `anywhere` on the CPU (no kept caches' block) it
    reports nothing."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen.offload_to_disk(str(tmp_path))
    gen.warmup(1, edge_proof.PROMPT, cfg=3.0)
    assert edge_proof.preloaded_prompt_runs(gen, None, None, 3.0, 2) == {}
    r = edge_proof.preloaded_prompt_runs(gen, None, None, 3.0, 2, anywhere=True)
    assert r["loads"] == {"text encoder": 2, "condition layers": 2, "VAE": 2}
    assert r["same_image_without_preload"] is True and gen.preloaded() == ()
    assert len(r["total_s"]) == 2 and 0 < r["text_encoder_s_median"] < r["total_s_median"] and r["preload_s_median"] > 0


def test_int8_text_encoder_matches_float(tiny_bundle):
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant.int8_weight import Int8WeightLinear
    from var_gen_ros.quant.runtime import apply_text_encoder
    ref = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    before = gen.text_encoder.nbytes + sum(b.numel() * b.element_size() for b in gen.text_encoder.model.buffers())
    assert "INT8" in apply_text_encoder(gen, "int8")
    assert any(isinstance(m, Int8WeightLinear) for m in gen.text_encoder.model.modules())
    after = sum(t.numel() * t.element_size() for t in list(gen.text_encoder.model.parameters()) + list(gen.text_encoder.model.buffers()))
    assert after < 0.5 * before
    prompts = ["a red circle on a white background", "three small green triangles"]
    a, ma = ref.text_encoder.encode(prompts)
    b, mb = gen.text_encoder.encode(prompts)
    assert torch.equal(ma, mb)
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 2e-2, rel


def test_int4_text_encoder_matches_float_in_under_0_6_of_int8s_bytes(tiny_bundle):
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant.int4_weight import Int4WeightLinear, Int8Embedding
    from var_gen_ros.quant.runtime import apply_text_encoder
    ref = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    g8 = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    g4 = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    apply_text_encoder(g8, "int8")
    assert "INT4" in apply_text_encoder(g4, "int4")
    mods = list(g4.text_encoder.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in mods)
    assert all("relative_attention_bias" in n for n, m in g4.text_encoder.model.named_modules() if type(m) is torch.nn.Embedding)
    assert sum(isinstance(m, Int4WeightLinear) for m in mods) == sum(
        isinstance(m, torch.nn.Linear) for m in ref.text_encoder.model.modules())
    # one INT8 table for the tied shared/encoder embedding
    assert g4.text_encoder.model.shared is g4.text_encoder.model.encoder.embed_tokens
    assert isinstance(g4.text_encoder.model.shared, Int8Embedding)
    b8, b4 = g8.weight_bytes()["text_encoder"], g4.weight_bytes()["text_encoder"]
    assert b4 < 0.6 * b8, (b4, b8)
    prompts = ["a red circle on a white background", "three small green triangles", "a blue square"]
    a, ma = ref.text_encoder.encode(prompts)
    b, mb = g4.text_encoder.encode(prompts)
    assert torch.equal(ma, mb)
    a, b = a[ma], b[ma]
    rel = ((a - b).norm() / a.norm()).item()
    # random weights: 0.16 here (INT8: 0.011); a wrong nibble order or group layout is ~1
    assert rel < 0.25, rel
    # the embedded default model's trained encoder: 0.048 (docs/BENCHMARKS.md, sixteenth session)
    from var_gen_ros.cli import default_bundle_path
    from var_gen_ros.shapes import held_out_prompts
    ref = Generator.from_bundle(default_bundle_path(), device="cpu", dtype=torch.float32)
    g4 = Generator.from_bundle(default_bundle_path(), device="cpu", dtype=torch.float32)
    apply_text_encoder(g4, "int4")
    prompts = held_out_prompts(16)
    (a, m), b = ref.text_encoder.encode(prompts), g4.text_encoder.encode(prompts)[0]
    # at the prompts' tokens: the padding's features are masked wherever they are used (text.TOKEN_MULTIPLE)
    a, b = a[m], b[m]
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 0.08, rel


def test_int4_text_encoder_bytes_at_t5_xl_shapes():
    """The Infinity models' Flan-T5-XL encoder, built on the meta device (shapes only) and converted: each
    Linear stores K/2 bytes of codes and a float16 scale and offset per 64 inputs per output; the token
    table int8 with a float32 scale per row. 0.293 of bf16's bytes, 0.555 of INT8's."""
    from transformers import T5Config, T5EncoderModel
    from var_gen_ros.quant.int4_weight import quantize_int4_weights_, quantize_t5_embedding_
    from var_gen_ros.quant.int8_weight import quantize_int8_weights_
    cfg = dict(d_model=2048, d_kv=64, num_heads=32, num_layers=24, d_ff=5120, vocab_size=32128,
               feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in list(m.parameters()) + list(m.buffers())}.values())

    sizes = {}
    for mode in ("bf16", "int8", "int4"):
        with torch.device("meta"):
            m = T5EncoderModel(T5Config(**cfg)).to(torch.bfloat16)
            if mode == "int8":
                quantize_int8_weights_(m)
            if mode == "int4":
                assert quantize_int4_weights_(m) == 24 * 7 and quantize_t5_embedding_(m) == 2
        sizes[mode] = nbytes(m)
    d, f, L, V = 2048, 5120, 24, 32128
    linears = L * (4 * d * d + 3 * d * f)                      # q, k, v, o; wi_0, wi_1, wo
    rest = sizes["bf16"] - 2 * (linears + V * d)               # layer norms, relative attention bias
    assert sizes["int4"] == linears // 2 + linears // 64 * 4 + V * d + 4 * V + rest
    assert sizes["int4"] / sizes["bf16"] < 0.30 and sizes["int4"] / sizes["int8"] < 0.56


def _one_block_run(cfg, cache_kind, store, chunk, dtype, meter=None):
    """One CrossAttnBlock over a 24x24 scale with CFG batch 2 after an earlier 8x8 scale is cached.
    Returns (output, peak transient bytes, bytes of one float32 activation)."""
    from var_gen_ros.infinity.config import ScaleSchedule
    from var_gen_ros.infinity.kv_cache import KVCache
    from var_gen_ros.infinity.model import CrossAttnBlock, rope_tables
    from var_gen_ros.quant.kv_int8 import Int8KVCache
    g = torch.Generator().manual_seed(0)
    blk = CrossAttnBlock(cfg)
    for p in blk.parameters():
        p.data = torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5
    blk = blk.to(dtype)
    B, C, H, c = 2, cfg.embed_dim, cfg.num_heads, cfg.head_dim
    sched = ScaleSchedule(((8, 8), (24, 24)), (24, 24))
    rope = rope_tables(sched, c).to(dtype)
    x0 = torch.randn(B, 64, C, generator=g, dtype=dtype)
    x1 = torch.randn(B, 576, C, generator=g, dtype=dtype)
    gss = torch.randn(B, 1, 6, C, generator=g, dtype=dtype) * 0.1
    kv = blk.ca.text_kv(torch.randn(B, 7, C, generator=g, dtype=dtype))
    mask = torch.ones(B, 7, dtype=torch.bool)
    if cache_kind == "int8":
        static = {n: torch.rand(H, c, generator=g) * 0.02 + 0.01 for n in ("k_scale", "v_scale")}
        static.update({n: torch.randint(-8, 8, (H, c), generator=g).float() for n in ("k_zero", "v_zero")})
        cache = Int8KVCache(B, H, c, 64 + 576, dtype, "cpu", static=static)
    else:
        cache = KVCache(B, H, c, 64 + 576, dtype, "cpu")
    with torch.no_grad():
        blk(x0, gss, kv, mask, rope[:, :64], kv_cache=cache, start=0, store=True)
        base = meter.allocated() if meter else 0
        if meter:
            meter.reset_peak()
        y = blk(x1, gss, kv, mask, rope[:, 64:], kv_cache=cache, start=64, store=store, chunk_tokens=chunk)
        peak = (meter.peak() - base) if meter else 0
    return y, peak, x1.numel() * 4


def test_chunked_block_equals_whole_block():
    """The activation-chunking lever changes the arithmetic only by summation order: float cache and
    INT8 cache, a stored scale and the unstored last scale, chunks that do and do not divide the
    scale. (The block's norms and residual run in float32 whatever the weights' dtype, so the bound
    is float32 rounding, 1e-6, not float64's.)"""
    from var_gen_ros.infinity import tiny_config
    cfg = tiny_config(False)
    for cache_kind in ("float", "int8"):
        for store in (True, False):
            ref = _one_block_run(cfg, cache_kind, store, 0, torch.float64)[0]
            for chunk in (100, 288):
                y = _one_block_run(cfg, cache_kind, store, chunk, torch.float64)[0]
                assert y.dtype == ref.dtype and y.shape == ref.shape
                err = ((y - ref).norm() / ref.norm()).item()
                assert err < 1e-6, (cache_kind, store, chunk, err)


def test_chunked_block_holds_fewer_activation_bytes():
    """Counted by the allocator: the whole-block forward holds about 9 float32 copies of its input at
    its peak (fp32 qkv, FFN hidden); in 4 slices the last scale holds at most 0.6 of that (the floor is
    the whole-scale q, k, v, attention output and block output; Infinity-8B's widths give 0.42)."""
    from var_gen_ros.infinity import tiny_config
    cfg = tiny_config(False)
    peaks = {}
    for chunk in (0, 144):
        with AllocationMeter("cpu") as meter:
            _, peaks[chunk], xb = _one_block_run(cfg, "float", False, chunk, torch.float32, meter)
    assert peaks[0] > 6 * xb, peaks
    assert peaks[144] < 0.6 * peaks[0], (peaks, xb)


def test_vae_decode_in_place_gives_the_same_image_with_fewer_bytes():
    """The decoder's ResnetBlocks run SiLU and the residual add in place without autograd: the same
    bits as the out-of-place ops, and a lower allocator peak (one full-resolution activation less)."""
    from var_gen_ros.infinity.config import VAEConfig
    from var_gen_ros.infinity.vae import BSQVAE, ResnetBlock
    torch.manual_seed(0)
    codes = torch.randn(1, 8, 8, 8)
    out, peaks = {}, {}
    for in_place in (False, True):
        with AllocationMeter("cpu") as meter, torch.no_grad():
            torch.manual_seed(1)
            vae = BSQVAE(VAEConfig(codebook_dim=8, patch_size=4, base_ch=32, ch_mult=(1, 2, 2), num_res_blocks=1))
            for m in vae.modules():
                if isinstance(m, ResnetBlock):
                    m.in_place = in_place
            meter.reset_peak()
            base = meter.allocated()
            out[in_place] = vae.decode(codes)
            peaks[in_place] = meter.peak() - base
    assert torch.equal(out[True], out[False])
    top = 32 * 32 * 32 * 4                     # one top-level activation: base_ch x 32 x 32 float32
    assert peaks[True] <= peaks[False] - top, (peaks, top)


def test_vae_decode_in_channels_last_gives_the_same_image():
    """The decoder with its activations channels-last (VAR_GEN_VAE_CHANNELS_LAST; a GPU's cuDNN then skips its
    layout copies): the same image as NCHW to float64 rounding, with the weights NCHW (as an offloaded VAE's) or
    channels-last; the image comes back in the NHWC order the message conversion wants, at no copy."""
    from var_gen_ros.infinity.config import VAEConfig
    from var_gen_ros.infinity.vae import BSQVAE, to_uint8
    torch.manual_seed(2)
    codes = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    vae = BSQVAE(VAEConfig(codebook_dim=8, patch_size=4, base_ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)).double()
    with torch.no_grad():
        vae.decoder.channels_last = False
        ref = vae.decode(codes)
        vae.decoder.channels_last = True
        for weights in (torch.contiguous_format, torch.channels_last):
            vae = vae.to(memory_format=weights)
            y = vae.decode(codes)
            assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
            assert float((y - ref).abs().max()) <= 1e-10, weights
            assert to_uint8(y).is_contiguous()


def test_process_memory_sees_host_pages_being_touched():
    """process_memory reads this process's resident and peak host bytes (what a Jetson's shared DRAM also
    pays): touching 256 MiB raises both by about that much; freeing it lowers the resident figure, not the peak."""
    from var_gen_ros.memory import process_memory
    before = process_memory()
    if not before:
        pytest.skip("no /proc/self/status on this OS")
    slack = 16 << 20         # Linux batches each thread's RSS counter updates: VmHWM may trail VmRSS a little
    t = torch.ones(64 << 20, dtype=torch.float32)        # 256 MiB, written: resident
    during = process_memory()
    assert during["rss"] - before["rss"] >= 200 << 20, (before, during)
    assert during["peak_rss"] >= during["rss"] - slack
    del t
    after = process_memory()
    assert after["rss"] < during["rss"] - (100 << 20) and after["peak_rss"] >= during["rss"] - slack, (during, after)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none): the caching allocator's pools")
def test_reserved_by_pool_adds_up_to_the_allocator_counters():
    """memory.reserved_by_pool: a named torch.cuda.MemPool's bytes apart from the default pool's, and the sums over
    pools equal the allocator's reserved and allocated bytes."""
    from var_gen_ros.memory import reserved_by_pool
    torch.cuda.synchronize()
    pool = torch.cuda.MemPool()
    a = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")          # default pool
    with torch.cuda.use_mem_pool(pool):
        b = torch.empty(48 << 20, dtype=torch.uint8, device="cuda")
    freed = torch.empty(8 << 20, dtype=torch.uint8, device="cuda")
    del freed                                                           # cached in the default pool
    got = reserved_by_pool({tuple(pool.id): "mine"})
    assert set(got) >= {"default", "mine"}
    assert got["mine"]["allocated"] == 48 << 20 and got["mine"]["reserved"] >= 48 << 20
    assert got["default"]["allocated"] >= 64 << 20 and got["default"]["free"] >= 8 << 20
    assert sum(d["reserved"] for d in got.values()) == torch.cuda.memory_reserved()
    assert sum(d["allocated"] for d in got.values()) == torch.cuda.memory_allocated()
    del a, b


def _edge_proof():
    """bench/edge_proof.py as a module (the repository root on sys.path, as under `python -m pytest`)."""
    import os
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import edge_proof
    return edge_proof


def test_scale_floors_take_the_measured_rates(tiny_bundle):
    """bench/edge_proof.scale_floors: each scale's floor is max(FLOPs / rate, bytes / bandwidth) at the rates given
    (a run's own GPU), the H100's without; the FLOPs count the per-token Linears' MACs twice per CFG row."""
    edge_proof = _edge_proof()
    from var_gen_ros.infinity import Generator
    from var_gen_ros.infinity.config import schedule_for
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    sched = schedule_for(gen.cfg)
    slow = {"bf16_matmul_flops": 1e12, "memory_bytes_per_s": 1e9}
    fast_bw = dict(slow, memory_bytes_per_s=2e9)
    a = edge_proof.scale_floors(gen, sched, 2, 100.0, slow)
    b = edge_proof.scale_floors(gen, sched, 2, 100.0, fast_bw)
    h100 = edge_proof.scale_floors(gen, sched, 2, 100.0)
    assert len(a) == len(sched.token_counts)
    for x, y, z in zip(a, b, h100):
        assert x["floor_s"] == pytest.approx(max(x["flops"] / 1e12, x["bytes"] / 1e9))
        assert y["floor_s"] == pytest.approx(max(y["flops"] / 1e12, y["bytes"] / 2e9))
        assert z["floor_s"] == pytest.approx(max(z["flops"] / edge_proof.PEAK_FLOPS, z["bytes"] / edge_proof.PEAK_BW))
        assert x["flops"] == y["flops"] > 0 and x["bytes"] == y["bytes"] > 0
    # the bytes a scale reads: every weight but the text-only layers' (run once per prompt), and the KV cache so far
    nb = lambda m: sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    once = nb(gen.condition_layers())
    assert 0 < once < nb(gen.model)
    seen = 0
    for x, L in zip(a, sched.token_counts):
        seen += L
        assert x["bytes"] == pytest.approx(nb(gen.model) - once + 100.0 * seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_device_rates_are_measured_and_leave_nothing_allocated():
    edge_proof = _edge_proof()
    # cuBLAS keeps a workspace per handle and stream in PyTorch's allocator (32 MiB on the H100), made by the
    # process's first matmul and kept for its life: not the function's to free. Made here first, so that run
    # alone (the H100, thirtieth session) the test sees only what the function itself leaves.
    torch.ones(256, 256, dtype=torch.bfloat16, device="cuda") @ torch.ones(256, 256, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    r = edge_proof.measure_device_rates("cuda", n=4096, copy_bytes=1 << 27, repeats=3)
    assert 1e12 < r["bf16_matmul_flops"] < 1e16 and 1e10 < r["memory_bytes_per_s"] < 1e14, r
    assert torch.cuda.memory_allocated() == before


def test_tegra_board_is_told_from_its_files(tmp_path):
    from var_gen_ros.memory import tegra_board
    assert not tegra_board(str(tmp_path))
    dt = tmp_path / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "compatible").write_bytes(b"raspberrypi,5-model-b\x00brcm,bcm2712\x00")
    assert not tegra_board(str(tmp_path))
    (dt / "compatible").write_bytes(b"nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00")
    assert tegra_board(str(tmp_path))
    other = tmp_path / "l4t"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert tegra_board(str(other))


def test_expandable_segments_are_turned_off_on_tegra_only():
    """A Jetson's CUDA cannot map expandable segments: the guard rewrites the allocator settings there (keeping
    the others) and says why; elsewhere, or without the setting, it changes nothing."""
    from var_gen_ros.memory import guard_tegra_allocator
    conf = "max_split_size_mb:128, expandable_segments:True"
    env = {"PYTORCH_CUDA_ALLOC_CONF": conf, "PATH": "/usr/bin"}
    assert guard_tegra_allocator(env, tegra=False) == "" and env["PYTORCH_CUDA_ALLOC_CONF"] == conf
    note = guard_tegra_allocator(env, tegra=True)
    assert "PYTORCH_CUDA_ALLOC_CONF" in note and "Tegra" in note
    assert env == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128,expandable_segments:False", "PATH": "/usr/bin"}
    assert guard_tegra_allocator(env, tegra=True) == ""                       # now off: nothing left to do
    env = {"PYTORCH_ALLOC_CONF": "expandable_segments:true"}
    assert "PYTORCH_ALLOC_CONF" in guard_tegra_allocator(env, tegra=True)
    assert env["PYTORCH_ALLOC_CONF"] == "expandable_segments:False"
    assert guard_tegra_allocator({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, tegra=True) == ""


def test_live_blocks_are_summed_by_their_innermost_project_frame():
    """The allocator-snapshot summary the edge proof's --memory-sites prints: live blocks only, by the innermost frame
    in the project (frames are innermost first), per pool; frames outside it and missing frames fall to one site."""
    from var_gen_ros.memory import live_blocks_by_site
    fr = lambda path, line, name: {"filename": path, "line": line, "name": name}
    ours = [fr("/usr/lib/python3/site-packages/torch/nn/modules/module.py", 10, "_apply"),
            fr("/src/repo/var_gen_ros/infinity/graphs.py", 240, "_input_buffer"),
            fr("/src/repo/bench/edge_proof.py", 300, "child")]
    snap = {"segments": [
        {"segment_pool_id": (0, 0), "blocks": [
            {"size": 512 << 20, "state": "active_allocated", "frames": ours},
            {"size": 256 << 20, "state": "inactive", "frames": ours},
            {"size": 2 << 20, "state": "active_allocated", "frames": ours},
            {"size": 3 << 20, "state": "active_allocated", "frames": [fr("/x/torch/cuda/graphs.py", 1, "f")]},
            {"size": 1 << 20, "state": "active_allocated"}]},
        {"segment_pool_id": (1, 2), "blocks": [
            {"size": 4 << 20, "state": "active_allocated", "frames": ours}]}]}
    got = live_blocks_by_site(snap)
    assert got[0] == {"site": "var_gen_ros/infinity/graphs.py:240 _input_buffer", "pool": "default",
                      "bytes": 514 << 20, "blocks": 2}
    assert {(d["site"], d["pool"]): d["bytes"] for d in got[1:]} == {
        ("var_gen_ros/infinity/graphs.py:240 _input_buffer", "pool1_2"): 4 << 20,
        ("(no project frame)", "default"): 4 << 20}
    assert live_blocks_by_site(snap, top=1) == got[:1]
