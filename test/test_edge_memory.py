"""Memory accounting of the edge benchmark (bench/edge_proof.py), on the CPU with a tiny config: the
allocator's live bytes between scales equal the counted components (weights + KV cache + scale state
+ prompt features) within 5 %, for bf16-style float and for W4A4 + INT8 KV. Plus the allocation meter
itself and the INT8 text encoder lever."""
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
