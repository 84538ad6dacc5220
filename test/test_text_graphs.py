"""The text encoder's forward and the condition as CUDA graphs (var_gen_ros/infinity/text_graphs.py,
TextEncoder.use_graphs, sampler.CONDITION_GRAPHS): the 4-D additive mask the encoder is passed gives transformers' T5 the
bits of the 2-D mask, without the host sync a capture cannot hold, and the condition has none; on a GPU, graphed and
eager runs give the same bits, per shape eager, then captured, then replayed, and graphs captured again when the
weights move."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROMPTS = (["a red circle on a white background"], ["three small green triangles", "a blue square"],
           ["a yellow star"])

# ops that make the host wait for the GPU (a value read back, or a size that depends on values): none may run inside a
# CUDA graph's capture
HOST_SYNCS = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "item")


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def _encoder(tiny_bundle, device, dtype, mode):
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant.runtime import apply_text_encoder
    gen = Generator.from_bundle(tiny_bundle, device=device, dtype=dtype)
    apply_text_encoder(gen, mode)
    return gen.text_encoder


@pytest.mark.parametrize("dtype,mode", [(torch.float32, "bf16"), (torch.bfloat16, "bf16"), (torch.bfloat16, "int4")])
def test_the_additive_mask_gives_the_2d_masks_bits_without_a_host_sync(tiny_bundle, dtype, mode):
    te = _encoder(tiny_bundle, "cpu", dtype, mode)
    want = [te.encode(p) for p in PROMPTS]
    te.use_graphs()                  # on the CPU: the same forward, eager, with the 4-D mask
    got = [te.encode(p) for p in PROMPTS]
    for (f0, m0), (f1, m1) in zip(want, got):
        assert f1.dtype == torch.float32 and torch.equal(m0, m1) and torch.equal(f0, f1)
    assert bool((~want[1][1]).any())          # the two-prompt batch has padding: the mask matters
    # what a capture would record: no host sync with the 4-D mask; the 2-D mask's one is transformers' `.all()`
    from var_gen_ros.infinity.text_graphs import additive_mask
    tok = te.tokenizer(PROMPTS[1], max_length=te.max_length, padding="longest", truncation=True, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    with torch.no_grad():
        dt = te.model.get_input_embeddings()(ids[:, :1]).dtype
        with _Ops() as four:
            te._forward(ids, additive_mask(mask, dt))
        with _Ops() as two:
            te.model(input_ids=ids, attention_mask=mask)
    assert not [n for n in four.names if n in HOST_SYNCS], four.names
    assert [n for n in two.names if n in HOST_SYNCS]       # (if transformers drops its sync, this says so)
    te.use_graphs(False)
    assert te.graphs is None and torch.equal(te.encode(PROMPTS[1])[0], want[1][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
@pytest.mark.parametrize("mode", ["bf16", "int4"])
def test_graphed_encodings_give_the_eager_features_on_gpu(tiny_bundle, mode, monkeypatch):
    from var_gen_ros.infinity import text
    monkeypatch.setattr(text, "TOKEN_MULTIPLE", 1)     # exact lengths: each prompt group its own shape
    eager = _encoder(tiny_bundle, "cuda", torch.bfloat16, mode)
    te = _encoder(tiny_bundle, "cuda", torch.bfloat16, mode)
    te.use_graphs()
    g = te.graphs
    for rep in range(3):             # per shape: eager, captured, replayed
        for p in PROMPTS:
            a, b = eager.encode(p), te.encode(p)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (rep, p)
    assert g.capture and len(g.graphs) == len(PROMPTS) and g.captures == len(PROMPTS), g.status()
    assert g.replays == 2 * len(PROMPTS)
    out = te.encode(PROMPTS[0])[0]
    assert out.data_ptr() != te.encode(PROMPTS[0])[0].data_ptr()       # each call its own tensor
    # the weights moved (each tensor copied to new memory while the old ones live, as a load elsewhere would): the
    # graphs are dropped and the shape is captured again, with the same features
    old = []
    for m in te.model.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None:
                    old.append(t)
                    table[name] = torch.nn.Parameter(t.detach().clone(), requires_grad=False) \
                        if isinstance(t, torch.nn.Parameter) else t.clone()
    b = te.encode(PROMPTS[0])
    assert torch.equal(b[0], eager.encode(PROMPTS[0])[0])
    assert g.captures == len(PROMPTS) + 1 and len(g.graphs) == 1, g.status()
    assert g.moved == 1 and "dropped 1x as the weights moved" in g.status()
    del old


def _three_rounds(tiny_bundle, tmp_path, monkeypatch, offload: bool, flag: str, text_encoder: str = None):
    """Two W4A4 generators on the GPU with cuda_graphs, `gen` offloaded if asked; three rounds of new prompts of three
    token counts, each generated by `ref` with the sampler's `flag` off and by `gen` with it on: the same images.
    Returns (ref, gen, prompts)."""
    from var_gen_ros.infinity import Generator, sampler, text
    from var_gen_ros.quant import QuantConfig, quantize_
    from var_gen_ros.quant.runtime import apply_text_encoder
    monkeypatch.setattr(text, "TOKEN_MULTIPLE", 1)     # exact lengths: each prompt its own shape
    gens = [Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    for g in gens:
        quantize_(g, QuantConfig())
        if text_encoder:
            apply_text_encoder(g, text_encoder)
        g.cuda_graphs = True
    ref, gen = gens
    if offload:
        gen.offload_to_disk(str(tmp_path))
    prompts = [p[0] for p in PROMPTS]
    for rep in range(3):
        for i, p in enumerate(prompts):
            gen.forget_prompts()
            ref.forget_prompts()
            monkeypatch.setattr(sampler, flag, False)
            want = ref.generate(p, seed=i).image
            monkeypatch.setattr(sampler, flag, True)
            assert (gen.generate(p, seed=i).image == want).all(), (rep, p)
    return ref, gen, prompts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
@pytest.mark.parametrize("offload", [False, True])
def test_generations_with_the_text_encoder_graphed_give_the_same_images_on_gpu(tiny_bundle, tmp_path, monkeypatch,
                                                                              offload):
    """VAR_GEN_TEXT_GRAPHS with cuda_graphs: new prompts of a few token counts, each encoded eagerly, then captured,
    then replayed, give a resident eager encoder's images; offloaded (the encoder loaded into the KV caches' dead
    block for each new prompt), its weights come back where they were, so the graphs replay rather than being
    captured again; the idle release drops them."""
    ref, gen, prompts = _three_rounds(tiny_bundle, tmp_path, monkeypatch, offload, "TEXT_GRAPHS", "int4")
    g = gen.text_encoder.graphs
    assert g is not None and ref.text_encoder.graphs is None
    # each shape captured once (weights that moved would have made it capture again) and replayed in the third round
    assert g.captures == len(prompts) and g.replays - g.captures == len(prompts), g.status()
    assert "text encoder:" in gen.graph_status()
    gen.release_graphs(keep_warm=True)
    assert not g.graphs


def test_the_condition_runs_without_a_host_sync_and_its_graphs_track_the_w4a4_layers_derived_tensors(tiny_bundle):
    """What a capture of `Infinity.encode_condition` (sampler.CONDITION_GRAPHS) needs, checked on the CPU: no op in it
    makes the host wait for the GPU (a padded prompt's mask included), and the addresses its graphs compare at each use
    (`text_graphs.kept_tensors`) include what a W4A4 layer derives from its weights and keeps (1/λ, the weight units),
    so a value made again elsewhere drops the graphs instead of leaving them reading freed memory."""
    from var_gen_ros.infinity import Generator
    from var_gen_ros.infinity.text_graphs import PromptGraphs, kept_tensors
    from var_gen_ros.quant import QuantConfig, quantize_
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    feats, mask = gen.encode_text(PROMPTS[1][0], None, True)
    mask = mask.clone()
    mask[:, -1] = False                       # a padded token
    with torch.no_grad(), _Ops() as ops:
        gen.model.encode_condition(feats, mask)
    assert ops.names and not [n for n in ops.names if n in HOST_SYNCS], ops.names
    quantize_(gen, QuantConfig())
    layer = gen.model.blocks[0].ca.mat_kv
    units = layer.weight_units()
    assert units is not None and any(t is units for t in kept_tensors(gen.condition_layers()))
    g = PromptGraphs(gen.condition_layers(), "condition layers", copy_out=False)
    where = g._addresses()
    layer.wscales.mul_(1)                     # written in place: the units are made again, at a new address
    assert layer.weight_units() is not units and g._addresses() != where
    # on the CPU the graphs run the forward as it is
    with torch.no_grad():
        a = gen.model.encode_condition(feats, mask)
        b = g.run(gen.model.encode_condition, feats, mask)
    assert all(torch.equal(x, y) for x, y in zip(_flat(a), _flat(b))) and not g.graphs


def _flat(out):
    from var_gen_ros.infinity.text_graphs import _tensors
    return _tensors(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_graphed_conditions_give_the_eager_bits_on_gpu(tiny_bundle, monkeypatch):
    """`encode_condition` through PromptGraphs (W4A4 kernels, bf16): per (batch, text length) eager, captured, then
    replayed, each call the eager run's bits; the outputs are the graph's own buffers (copy_out False); weights that
    moved drop the graphs and the shape is captured again."""
    from var_gen_ros.infinity import Generator, text
    from var_gen_ros.infinity.text_graphs import PromptGraphs
    from var_gen_ros.quant import QuantConfig, quantize_
    monkeypatch.setattr(text, "TOKEN_MULTIPLE", 1)     # exact lengths: each prompt its own shape
    gen = Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16)
    quantize_(gen, QuantConfig())
    inputs = [gen.encode_text(p[0], None, True) for p in PROMPTS]
    assert len({f.shape for f, _ in inputs}) == len(PROMPTS)
    g = PromptGraphs(gen.condition_layers(), "condition layers", copy_out=False)
    with torch.no_grad():
        for rep in range(3):
            for feats, mask in inputs:
                want = _flat(gen.model.encode_condition(feats, mask))
                got = _flat(g.run(gen.model.encode_condition, feats, mask))
                assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(want, got)), rep
        assert g.capture and g.captures == len(PROMPTS) and g.replays == 2 * len(PROMPTS), g.status()
        feats, mask = inputs[0]
        first = _flat(g.run(gen.model.encode_condition, feats, mask))[0]
        assert first.data_ptr() == _flat(g.run(gen.model.encode_condition, feats, mask))[0].data_ptr()
        layer = gen.model.blocks[0].ca.mat_kv
        layer.qweight = layer.qweight.clone()      # a weight elsewhere
        got = _flat(g.run(gen.model.encode_condition, feats, mask))
        assert all(torch.equal(a, b) for a, b in zip(_flat(gen.model.encode_condition(feats, mask)), got))
        assert g.moved == 1 and len(g.graphs) == 1 and g.captures == len(PROMPTS) + 1, g.status()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
@pytest.mark.parametrize("offload", [False, True])
def test_generations_with_the_condition_graphed_give_the_same_images_on_gpu(tiny_bundle, tmp_path, monkeypatch,
                                                                           offload):
    """VAR_GEN_CONDITION_GRAPHS with cuda_graphs: new prompts of a few token counts, their condition computed eagerly,
    then captured, then replayed, give the eager condition's images, W4A4; offloaded (the condition layers loaded into
    the KV caches' dead block for each new prompt), the layers come back where they were, so the graphs replay rather
    than being captured again; the idle release drops them."""
    from var_gen_ros.infinity import sampler
    monkeypatch.setattr(sampler, "CONDITION_SHAPES", len(PROMPTS))     # every length kept: the third round replays
    ref, gen, prompts = _three_rounds(tiny_bundle, tmp_path, monkeypatch, offload, "CONDITION_GRAPHS")
    cg = gen.condition_graphs
    assert cg is not None and ref.condition_graphs is None
    # each length eager, captured, replayed; offloaded, the layers' loads came back at the captured addresses
    assert cg.captures == len(prompts) and cg.replays - cg.captures == len(prompts), cg.status()
    assert cg.moved == 0, cg.status()
    assert "condition:" in gen.graph_status()
    gen.release_graphs(keep_warm=True)
    assert not cg.graphs
