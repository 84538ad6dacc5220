"""The text encoder "run, then freed" (var_gen_ros/infinity/parking.py): its weights in a file between prompts, the
same features and images as a resident encoder, nothing of it left in memory between prompts, and a broken file
reported without losing the generator."""
import os

import pytest
import torch


def _tensors(module):
    return list(module.parameters()) + list(module.buffers())


@pytest.mark.parametrize("mode,large", [("bf16", None), ("int4", None), ("bf16", 4096), ("int4", 512)])
def test_a_parked_text_encoder_gives_the_resident_ones_bits_and_holds_no_memory_between_prompts(tiny_bundle, tmp_path,
                                                                                                 monkeypatch, mode, large):
    """`large`: the size from which tensors load into one shared block (parking.LARGE, 1 MiB: the tiny encoder has
    none that large), lowered so that the block's views are what the encoder computes with."""
    from var_gen_ros.infinity import Generator, parking
    from var_gen_ros.quant.runtime import apply_text_encoder
    if large is not None:
        monkeypatch.setattr(parking, "LARGE", large)
    ref = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    apply_text_encoder(ref, mode)
    apply_text_encoder(gen, mode)
    resident = gen.weight_bytes()["text_encoder"]
    assert resident > 0
    path = str(tmp_path / "te.safetensors")
    note = gen.park_text_encoder(path)
    assert "parked" in note and path in note
    parked = gen.text_encoder_parked
    # every tensor written once (the tied token table too), and none left but meta tensors of the same shapes
    assert parked.nbytes == resident
    assert os.path.getsize(path) >= resident
    assert all(t.device.type == "meta" for t in _tensors(gen.text_encoder.model))
    assert gen.weight_bytes()["text_encoder"] == 0
    prompts = ("a red circle on a white background", "three small green triangles")
    for prompt in prompts:
        a = ref.encode_text(prompt, None, True)
        b = gen.encode_text(prompt, None, True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert all(t.device.type == "meta" for t in _tensors(gen.text_encoder.model))
    assert parked.loads == 2
    if large is not None:
        assert 0 < parked.large_bytes < parked.nbytes      # both kinds
    # the tie survives a load: one token table, shared
    with parked.loaded() as m:
        assert m.shared.weight is m.encoder.embed_tokens.weight if mode == "bf16" else m.shared is m.encoder.embed_tokens
        assert all(t.device.type == "cpu" for t in _tensors(m))
        if large is not None:                              # the large ones are views of one block
            big = [t for t in _tensors(m) if t.numel() * t.element_size() >= large]
            assert len(big) > 1 and len({t.untyped_storage().data_ptr() for t in big}) == 1
    # a whole generation: the same image, and a prompt the cache has seen does not load the encoder again
    r1 = ref.generate(prompts[0], seed=3)
    r2 = gen.generate(prompts[0], seed=3)
    assert (r1.image == r2.image).all() and r1.image.size > 0
    loads = parked.loads
    gen.generate(prompts[0], seed=4)
    assert parked.loads == loads


def test_a_broken_parked_file_fails_its_request_only(tiny_bundle, tmp_path):
    from var_gen_ros.infinity import Generator
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    path = str(tmp_path / "te.safetensors")
    gen.park_text_encoder(path)
    good = open(path, "rb").read()
    ok = gen.encode_text("a blue square", None, True)
    with open(path, "wb") as f:
        f.write(good[: len(good) // 2])          # truncated
    with pytest.raises(Exception):
        gen.encode_text("a blue square", None, True)
    assert not gen.text_encoder_parked.resident
    assert all(t.device.type == "meta" for t in _tensors(gen.text_encoder.model))
    with open(path, "wb") as f:                  # the file back: served again, the same features
        f.write(good)
    again = gen.encode_text("a blue square", None, True)
    assert torch.equal(ok[0], again[0])


def test_tmpfs_is_told_apart_from_a_disk(tmp_path):
    from var_gen_ros.infinity.parking import tmpfs_warning
    mounts = open("/proc/mounts").read().split("\n") if os.path.exists("/proc/mounts") else []
    shm = [ln.split()[1] for ln in mounts if len(ln.split()) > 2 and ln.split()[2] == "tmpfs"
           and os.path.isdir(ln.split()[1]) and os.access(ln.split()[1], os.W_OK)]
    if not shm:
        pytest.skip("no writable tmpfs mounted here")
    assert "tmpfs" in tmpfs_warning(os.path.join(shm[0], "te.safetensors"))
    fstype = [ln.split()[2] for ln in mounts if len(ln.split()) > 2 and ln.split()[1] == "/"]
    if fstype and fstype[0] not in ("tmpfs", "ramfs"):
        assert tmpfs_warning("/te.safetensors") == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_a_parked_text_encoder_gives_its_gpu_memory_back_between_prompts(tiny_bundle, tmp_path):
    """On the GPU: parking frees the encoder's bytes as the allocator counts them; an encoding loads them and frees
    them again, leaving only its features; the features are the resident encoder's, bit for bit."""
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant.runtime import apply_text_encoder
    ref = Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16)
    gen = Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16)
    apply_text_encoder(ref, "int4")
    apply_text_encoder(gen, "int4")
    prompt = "a red circle on a white background"
    a = ref.encode_text(prompt, None, True)      # also makes what a first encoding keeps (cuBLAS's workspace)
    torch.cuda.synchronize()
    te = gen.weight_bytes()["text_encoder"]
    before = torch.cuda.memory_allocated()
    gen.park_text_encoder(str(tmp_path / "te.safetensors"))
    parked = torch.cuda.memory_allocated()
    # the allocator's count: each tensor rounded up to its 512-byte blocks (the tiny encoder's are small)
    blocks = lambda ts: sum(-(-t.numel() * t.element_size() // 512) * 512 for t in ts)
    weights = [torch.empty(shape, dtype=dt, device="meta") for shape, dt in gen.text_encoder_parked._meta.values()]
    assert before - parked == blocks(weights) and te > 0, (before, parked, te)
    b = gen.encode_text(prompt, None, True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.cuda.memory_allocated() - parked == blocks(b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_a_parked_text_encoder_borrows_the_kept_kv_block_between_generations_on_gpu(tiny_bundle, tmp_path, monkeypatch):
    """With CUDA graphs and kept KV caches, a parked encoder's large weights load into the caches' dead block: the
    encoding adds nothing to the allocated peak beyond its features and small tensors, the caches come back at the
    same address in the same pool (no graph is captured again), and every image is a resident encoder's. (The tiny
    encoder's tensors are all small: parking.LARGE is lowered so that some go into the borrowed block.)"""
    from var_gen_ros.infinity import Generator, parking
    monkeypatch.setattr(parking, "LARGE", 512)
    ref = Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16)
    gen = Generator.from_bundle(tiny_bundle, device="cuda", dtype=torch.bfloat16)
    gen.park_text_encoder(str(tmp_path / "te.safetensors"))
    for g in (ref, gen):
        g.cuda_graphs = True
    prompts = ["a red circle on a white background", "a green square", "two blue triangles", "a yellow star"]
    for i, p in enumerate(prompts[:2]):            # eager, then captured: the caches are kept from here on
        assert (ref.generate(p, seed=i).image == gen.generate(p, seed=i).image).all()
    block, loads, pool = gen._kv_block_at, gen.text_encoder_parked.loads, gen._graphs.kv_pool
    assert block is not None and gen._graphs.kept_caches is not None and pool is not None
    assert 0 < gen.text_encoder_parked.large_bytes <= block[1]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    feats = gen.encode_text(prompts[2], None, True)
    torch.cuda.synchronize()
    parked = gen.text_encoder_parked
    small = sum(-(-n // 512) * 512 for n in parked._sizes().values() if n < parking.LARGE)
    feature_bytes = sum(-(-t.numel() * t.element_size() // 512) * 512 for t in feats)
    assert parked.loads == loads + 1
    # the large weights took none of the peak (the freed block held them); the rest is the small tensors, the
    # features and the encoder's passing activations (a few tensors of a short prompt's width at a time)
    assert torch.cuda.max_memory_allocated() <= before + small + feature_bytes + (1 << 20), \
        (torch.cuda.max_memory_allocated() - before, small, feature_bytes)
    assert torch.cuda.memory_allocated() == before + feature_bytes
    assert gen._kv_block_at == block and gen._graphs.kept_caches is not None and gen._graphs.kv_pool is pool
    del feats
    recaptures = gen._graphs.recaptures
    for i, p in enumerate(prompts[2:]):
        assert (ref.generate(p, seed=i).image == gen.generate(p, seed=i).image).all()
    assert gen._kv_block_at == block and gen._graphs.recaptures == recaptures and gen._graphs.kv_pool is pool


def test_unloading_the_engine_removes_the_parked_file(tiny_bundle, tmp_path):
    """A lifecycle cleanup (Engine.release) removes the parked encoder's file; the product's park_text_encoder names
    it after the process and the generator, in the directory it makes."""
    from var_gen_ros.engine import Engine
    from var_gen_ros.infinity import Generator
    from var_gen_ros.product import park_text_encoder
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    note = park_text_encoder(gen, str(tmp_path / "made" / "here"))
    path = gen.text_encoder_parked.path
    assert os.path.isfile(path) and path in note and str(os.getpid()) in os.path.basename(path)
    engine = Engine(gen)
    del gen
    engine.release()
    assert not os.path.exists(path)
