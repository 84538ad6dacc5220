"""Official key names and shapes, strict loading, and clear errors for broken checkpoints.

`official_transformer_spec` / `official_vae_spec` are written from the official module definitions
(infinity/models/infinity.py, basic.py, bsq_vae/flux_vqgan.py with the inference arguments of
tools/run_infinity.py), independently of var_gen_ros.infinity.model, so the tests check our
module tree against them rather than against itself.
"""
import json
import os

import pytest
import torch

from var_gen_ros.infinity import (INFINITY_2B, INFINITY_8B, BSQVAE, CheckpointError, Infinity,
                                  load_official_checkpoint, load_official_vae, tiny_config)
from var_gen_ros.infinity.checkpoint import load_bundle


def official_transformer_spec(cfg):
    C = D = cfg.embed_dim
    Ct5, H, d = cfg.text_channels, cfg.num_heads, cfg.d_vae
    hidden = round(C * cfg.mlp_ratio / 256) * 256
    nh_pool = cfg.text_pool_heads or Ct5 // (64 if D > 4096 else 128)
    s = {
        "cfg_uncond": (cfg.text_maxlen, Ct5),
        "text_norm.weight": (Ct5,),
        "text_proj_for_sos.ca.mat_q": (1, nh_pool, D // nh_pool),
        "text_proj_for_sos.ca.mat_kv.weight": (2 * D, Ct5),
        "text_proj_for_sos.ca.v_bias": (D,),
        "text_proj_for_sos.ca.zero_k_bias": (D,),
        "text_proj_for_sos.ca.proj.weight": (D, D),
        "text_proj_for_sos.ca.proj.bias": (D,),
        "text_proj_for_ca.0.weight": (D, Ct5), "text_proj_for_ca.0.bias": (D,),
        "text_proj_for_ca.2.weight": (D, D), "text_proj_for_ca.2.bias": (D,),
        "pos_start": (1, 1, C),
        "lvl_embed.weight": (15, C),
        "word_embed.weight": (C, d), "word_embed.bias": (C,),
        "shared_ada_lin.1.weight": (6 * C, D), "shared_ada_lin.1.bias": (6 * C,),
        "head_nm.ada_lin.1.weight": (2 * C, D), "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (2 * d, C), "head.bias": (2 * d,),
    }
    per = cfg.depth // cfg.block_chunks
    for i in range(cfg.depth):
        p = f"block_chunks.{i // per}.module.{i % per}."
        s.update({
            p + "sa.mat_qkv.weight": (3 * C, C), p + "sa.q_bias": (C,), p + "sa.v_bias": (C,),
            p + "sa.zero_k_bias": (C,), p + "sa.scale_mul_1H11": (1, H, 1, 1),
            p + "sa.proj.weight": (C, C), p + "sa.proj.bias": (C,),
            p + "ca.mat_q.weight": (C, C), p + "ca.mat_q.bias": (C,),
            p + "ca.mat_kv.weight": (2 * C, D), p + "ca.v_bias": (C,), p + "ca.zero_k_bias": (C,),
            p + "ca.proj.weight": (C, C), p + "ca.proj.bias": (C,),
            p + "ffn.fc1.weight": (hidden, C), p + "ffn.fc1.bias": (hidden,),
            p + "ffn.fc2.weight": (C, hidden), p + "ffn.fc2.bias": (C,),
            p + "ca_norm.weight": (C,), p + "ca_norm.bias": (C,),
            p + "ada_gss": (1, 1, 6, C),
        })
    return s


def official_vae_spec(vc):
    import math
    s = {"quantizer.lfq.mask": (vc.codebook_dim,)}

    def conv(p, cin, cout, k):
        s[p + ".conv.weight"] = (cout, cin, k, k)
        s[p + ".conv.bias"] = (cout,)

    def norm(p, c):
        s[p + ".norm.weight"] = (c,)
        s[p + ".norm.bias"] = (c,)

    def res(p, cin, cout):
        norm(p + ".norm1", cin); conv(p + ".conv1", cin, cout, 3)
        norm(p + ".norm2", cout); conv(p + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(p + ".nin_shortcut", cin, cout, 1)

    n, ch, mult = int(math.log2(vc.patch_size)), vc.base_ch, vc.ch_mult
    conv("encoder.conv_in", 3, ch, 3)
    in_mult = (1,) + tuple(mult)
    for i in range(len(mult)):
        cin, cout = ch * in_mult[i], ch * mult[i]
        for j in range(vc.num_res_blocks):
            res(f"encoder.down.{i}.block.{j}", cin if j == 0 else cout, cout)
        if i < n:
            conv(f"encoder.down.{i}.downsample.conv", cout, cout, 3)
    top = ch * mult[-1]
    res("encoder.mid.block_1", top, top); res("encoder.mid.block_2", top, top)
    norm("encoder.norm_out", top); conv("encoder.conv_out", top, vc.codebook_dim, 3)
    conv("decoder.conv_in", vc.codebook_dim, top, 3)
    res("decoder.mid.block_1", top, top); res("decoder.mid.block_2", top, top)
    block_in = top
    for i in reversed(range(len(mult))):
        cout = ch * mult[i]
        for j in range(vc.num_res_blocks + 1):
            res(f"decoder.up.{i}.block.{j}", block_in, cout)
            block_in = cout
        if 1 <= i <= n:
            conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", block_in); conv("decoder.conv_out", block_in, 3, 3)
    return s


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("cfg", [INFINITY_2B, INFINITY_8B, tiny_config(False), tiny_config(True)], ids=lambda c: c.name)
def test_transformer_keys_match_official(cfg):
    with torch.device("meta"):
        m = Infinity(cfg)
    assert _shapes(m) == official_transformer_spec(cfg)


@pytest.mark.parametrize("cfg", [INFINITY_2B, INFINITY_8B, tiny_config(False)], ids=lambda c: c.name)
def test_vae_keys_match_official(cfg):
    with torch.device("meta"):
        v = BSQVAE(cfg.vae)
    assert _shapes(v) == official_vae_spec(cfg.vae)


def _synthetic_official(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=g) for k, shape in official_transformer_spec(cfg).items()}
    return sd


def test_synthetic_official_pth_loads_strict(tmp_path):
    cfg = tiny_config()
    sd = _synthetic_official(cfg)
    path = tmp_path / "infinity_tiny_reg.pth"
    torch.save(sd, path)
    m = load_official_checkpoint(str(path), cfg)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the full training-checkpoint nesting of upstream is unwrapped too
    torch.save({"trainer": {"gpt_fsdp": sd}}, tmp_path / "full.pth")
    m2 = load_official_checkpoint(str(tmp_path / "full.pth"), cfg)
    assert torch.equal(m2.head.weight, sd["head.weight"])


def test_sharded_safetensors_dir_loads(tmp_path):
    from safetensors.torch import save_file
    cfg = tiny_config(True)
    sd = _synthetic_official(cfg, 3)
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / fname))
        weight_map.update({k: fname for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    m = load_official_checkpoint(str(tmp_path), cfg)
    assert torch.equal(m.block_chunks[1].module[0].ffn.fc2.weight, sd["block_chunks.1.module.0.ffn.fc2.weight"])


def test_missing_key_is_named(tmp_path):
    cfg = tiny_config()
    sd = _synthetic_official(cfg)
    del sd["block_chunks.0.module.0.sa.mat_qkv.weight"]
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"block_chunks\.0\.module\.0\.sa\.mat_qkv\.weight") as e:
        load_official_checkpoint(str(tmp_path / "m.pth"), cfg)
    assert "m.pth" in str(e.value)


def test_wrong_shape_is_named(tmp_path):
    cfg = tiny_config()
    sd = _synthetic_official(cfg)
    sd["head.weight"] = torch.zeros(7, cfg.embed_dim)
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"'head\.weight' has shape \(7, 64\)"):
        load_official_checkpoint(str(tmp_path / "m.pth"), cfg)


def test_unexpected_key_is_named(tmp_path):
    cfg = tiny_config()
    sd = _synthetic_official(cfg)
    sd["block_chunks.0.module.0.sa.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"unexpected.*sa\.extra"):
        load_official_checkpoint(str(tmp_path / "m.pth"), cfg)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_named(tmp_path, suffix):
    cfg = tiny_config()
    sd = _synthetic_official(cfg)
    path = tmp_path / f"trunc{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"trunc{suffix}"):
        load_official_checkpoint(str(path), cfg)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_official_checkpoint(str(tmp_path / "nope.pth"), tiny_config())


def test_official_vae_flat_and_wrapped_keys(tmp_path):
    cfg = tiny_config()
    spec = official_vae_spec(cfg.vae)
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) if not k.endswith("mask") else 2 ** torch.arange(s[0] - 1, -1, -1))
          for k, s in spec.items()}
    # upstream `load_cnn` accepts the unwrapped (flat) names of older checkpoints too
    flat = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
             .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias")
            if "downsample" not in k and "upsample" not in k else k: v for k, v in sd.items()}
    for variant in (sd, flat):
        torch.save({"vae": variant}, tmp_path / "vae.pth")
        v = load_official_vae(str(tmp_path / "vae.pth"), BSQVAE(cfg.vae))
        assert torch.equal(v.decoder.conv_out.conv.weight, sd["decoder.conv_out.conv.weight"])


def test_bundle_errors(tmp_path, tiny_bundle):
    with pytest.raises(CheckpointError, match="bundle directory not found"):
        load_bundle(str(tmp_path / "none"))
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    data = (broken / "vae.safetensors").read_bytes()
    (broken / "vae.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="vae.safetensors"):
        load_bundle(str(broken))
    os.remove(broken / "transformer.safetensors")
    with pytest.raises(CheckpointError, match="transformer.safetensors"):
        load_bundle(str(broken))


def test_text_encoder_missing_file_named(tmp_path, tiny_bundle):
    import shutil
    from var_gen_ros.infinity.text import TextEncoder
    d = tmp_path / "te"
    shutil.copytree(os.path.join(tiny_bundle, "text_encoder"), d)
    os.remove(d / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TextEncoder.from_dir(str(d))
    os.remove(d / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TextEncoder.from_dir(str(d))
