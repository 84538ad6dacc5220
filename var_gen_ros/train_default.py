"""Train the embedded default model: BSQ-VAE, a small Infinity and a small T5 encoder, from scratch, on
the procedural shapes data set (`var_gen_ros.shapes`), with the runtime's own model code.

    var-gen train-default --out var_gen_ros/data/default_bundle --workdir runs/default [--minutes 9]

Phases: (1) VAE (reconstruction through the multi-scale BSQ, straight-through), (2) encode the data
set to bit labels per scale, (3) transformer + text encoder, teacher-forced, bitwise cross-entropy,
10 % of captions replaced by the CFG null condition, (4) pick cfg/tau on held-out prompts with the
checker, export the bundle. A checkpoint in --workdir lets a later run resume where a time budget
stopped the last one (the lent GPU allows 10 minutes per command).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn.functional as F

from .infinity.config import InfinityConfig, ScaleSchedule, VAEConfig
from .infinity.model import Infinity
from .infinity.sampler import teacher_forcing_inputs
from .infinity.vae import BSQVAE
from . import shapes

IMAGE_SIZE = 128
SCALES = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]


def default_config() -> InfinityConfig:
    vae = VAEConfig(codebook_dim=16, patch_size=8, base_ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1)
    return InfinityConfig("var_gen_default", depth=6, embed_dim=256, num_heads=4, block_chunks=2,
                          text_channels=128, text_maxlen=24, vae=vae, spatial_patchify=False, text_pool_heads=2,
                          custom_scales=SCALES, default_cfg=3.0, default_tau=1.0, default_top_k=0, default_top_p=0.97)


# ---------------------------------------------------------------- data
def _render_chunk(args):
    seed, n = args
    rng = np.random.default_rng(seed)
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    return scenes, np.stack([shapes.render(s, IMAGE_SIZE) for s in scenes])


def make_dataset(n: int, seed: int, workers: int = 8):
    chunks = [(seed * 100003 + i, min(2000, n - i * 2000)) for i in range((n + 1999) // 2000)]
    with Pool(workers) as pool:
        parts = pool.map(_render_chunk, chunks)
    scenes = [s for p in parts for s in p[0]]
    images = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return scenes, images


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1


# ---------------------------------------------------------------- text encoder
def build_text_encoder(cfg: InfinityConfig, seed: int):
    from transformers import T5Config, T5EncoderModel
    from .infinity.tiny import build_word_tokenizer
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tok = build_word_tokenizer(d, shapes.WORDS, model_max_length=cfg.text_maxlen)
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=cfg.text_channels, d_kv=32, d_ff=4 * cfg.text_channels,
                                 num_layers=3, num_heads=cfg.text_channels // 32, feed_forward_proj="gated-gelu",
                                 dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return tok, t5


# ---------------------------------------------------------------- phases
def train_vae(vae, images, steps, state, device, deadline, log, batch=64, lr=4e-4):
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    vae.train()
    g = torch.Generator(device="cpu").manual_seed(1000 + state.get("vae_step", 0))
    step = state.get("vae_step", 0)
    while step < steps and time.time() < deadline:
        idx = torch.randint(len(images), (batch,), generator=g)
        x = to_float(images[idx].to(device))
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            codes, _ = vae.quantizer(vae.encoder(x), SCALES)
            rec = vae.decoder(codes)
        loss = F.l1_loss(rec.float(), x) + F.mse_loss(rec.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 250 == 0:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    state["vae_step"], state["vae_opt"] = step, opt.state_dict()
    vae.eval()
    return step >= steps


def _edges(x):
    return torch.cat([(x[..., 1:, :] - x[..., :-1, :]).flatten(1), (x[..., :, 1:] - x[..., :, :-1]).flatten(1)], 1)


def finetune_decoder(vae, images, steps, device, deadline, log, batch=64, lr=2e-4):
    """Train the decoder alone on the frozen encoder's multi-scale codes: the bit labels (and so the
    transformer trained on them) stay valid while reconstructions of small shapes sharpen. Loss adds
    an L1 on image gradients, which is where small shapes differ (corners, star points)."""
    vae.encoder.requires_grad_(False)
    dec = vae.decoder.requires_grad_(True).train()
    opt = torch.optim.AdamW(dec.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(77)
    step = 0
    while step < steps and time.time() < deadline:
        idx = torch.randint(len(images), (batch,), generator=g)
        x = to_float(images[idx].to(device))
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            codes, _ = vae.quantizer(vae.encoder(x), SCALES)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            rec = dec(codes.detach()).float()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + F.l1_loss(_edges(rec), _edges(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            log(f"decoder step {step}/{steps} loss {loss.item():.4f}")
    dec.eval().requires_grad_(False)
    return step


def recon_accuracy(vae, n, device, seed=7):
    """Checker accuracy of VAE reconstructions of ground-truth images: the ceiling for generation."""
    from .checker import check
    from .infinity.vae import to_uint8
    rng = np.random.default_rng(seed)
    sc = [shapes.sample_scene(rng) for _ in range(n)]
    im = torch.from_numpy(np.stack([shapes.render(s, IMAGE_SIZE) for s in sc]))
    with torch.no_grad():
        codes, _ = vae.encode(to_float(im).to(device), SCALES)
        rec = to_uint8(vae.decode(codes)).cpu().numpy()
    return sum(check(r, shapes.caption(s)).ok for r, s in zip(rec, sc)) / n


@torch.no_grad()
def encode_bits(vae, images, device, batch=512):
    out = [[] for _ in SCALES]
    for i in range(0, len(images), batch):
        _, bits = vae.encode(to_float(images[i:i + batch].to(device)), SCALES)
        for j, b in enumerate(bits):
            out[j].append(b)
    return [torch.cat(b) for b in out]


def train_gpt(model, tok, t5, bits, scenes, steps, state, device, deadline, log, batch=128, lr=1e-3, p_uncond=0.1):
    cfg = model.cfg
    schedule = ScaleSchedule(SCALES, SCALES[-1])
    params = list(model.parameters()) + list(t5.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    if "gpt_opt" in state:
        opt.load_state_dict(state["gpt_opt"])
    model.train(), t5.train()
    step = state.get("gpt_step", 0)
    rng = np.random.default_rng(2000 + step)
    t0, seen = time.time(), 0
    while step < steps and time.time() < deadline:
        idx = torch.from_numpy(rng.integers(len(scenes), size=batch))
        caps = [shapes.caption(scenes[i], rng) for i in idx.tolist()]
        enc = tok(caps, padding="longest", truncation=True, max_length=cfg.text_maxlen, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
        bl = [b[idx.to(b.device)] for b in bits]
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 300) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = t5(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
            drop = torch.from_numpy(rng.random(batch) < p_uncond).to(device)
            un = model.cfg_uncond[:feats.shape[1]].float().unsqueeze(0).expand_as(feats)
            feats = torch.where(drop[:, None, None], torch.where(mask[..., None], un, torch.zeros_like(un)), feats)
            x_in = teacher_forcing_inputs(bl, schedule, cfg)
            logits = model(feats, mask, x_in, schedule)
        labels = torch.cat([b.reshape(batch, -1, cfg.d_vae) for b in bl], 1).long()
        loss = F.cross_entropy(logits.float().view(batch, -1, cfg.d_vae, 2).reshape(-1, 2), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += batch
        if step % 250 == 0:
            log(f"gpt step {step}/{steps} loss {loss.item():.4f} ({seen / (time.time() - t0):.0f} img/s)")
    state["gpt_step"], state["gpt_opt"] = step, opt.state_dict()
    model.eval(), t5.eval()
    return step >= steps


# ---------------------------------------------------------------- export and evaluation
def export_bundle(out, cfg, model, vae, tok, t5, extra=None, dtype=torch.bfloat16):
    import copy
    import tempfile
    from .infinity.checkpoint import save_bundle
    m = copy.deepcopy(model).to("cpu", dtype)
    v = copy.deepcopy(vae).to("cpu", dtype)
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        copy.deepcopy(t5).to("cpu", dtype).save_pretrained(d)
        save_bundle(out, cfg, m, v, text_encoder_dir=d, extra={"name": cfg.name, **(extra or {})})
    return out


def evaluate(bundle, prompts, device, settings, seed=0, dtype=torch.float32):
    """-> {(cfg, tau): accuracy} with the checker, images generated by the runtime's Generator."""
    from .checker import check
    from .infinity import Generator
    gen = Generator.from_bundle(bundle, device=device, dtype=dtype)
    out = {}
    for cfg_s, tau in settings:
        ok = sum(check(gen.generate(p, seed=seed + i, cfg=cfg_s, tau=tau).image, p).ok for i, p in enumerate(prompts))
        out[(cfg_s, tau)] = ok / len(prompts)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="var-gen train-default")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--minutes", type=float, default=9.0, help="stop (and checkpoint) after this long")
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--gpt-steps", type=int, default=12000)
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finish", action="store_true", help="stop training where the checkpoint is: evaluate, export")
    ap.add_argument("--init-from", default=None, help="start from this bundle's weights (e.g. the shipped one)")
    ap.add_argument("--decoder-steps", type=int, default=0,
                    help="then fine-tune the VAE decoder alone for this many steps (codes and bits unchanged)")
    a = ap.parse_args(argv)
    t_start = time.time()
    deadline = t_start + a.minutes * 60
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(a.workdir, exist_ok=True)
    logf = open(os.path.join(a.workdir, "train.log"), "a")

    def log(msg):
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()
    cfg = default_config()
    torch.manual_seed(a.seed)
    model, vae = Infinity(cfg).to(device), BSQVAE(cfg.vae).to(device)
    tok, t5 = build_text_encoder(cfg, a.seed)
    t5 = t5.to(device)
    ck = os.path.join(a.workdir, "ckpt.pt")
    state = {}
    if os.path.isfile(ck):
        state = torch.load(ck, map_location=device, weights_only=False)
        model.load_state_dict(state.pop("model")), vae.load_state_dict(state.pop("vae")), t5.load_state_dict(state.pop("t5"))
        log(f"resumed: vae step {state.get('vae_step', 0)}, gpt step {state.get('gpt_step', 0)}")
    elif a.init_from:
        from .infinity.checkpoint import load_bundle
        _, m0, v0, te0, meta0 = load_bundle(a.init_from, device=device)
        model.load_state_dict(m0.state_dict()), vae.load_state_dict(v0.state_dict())
        t5.load_state_dict(te0.model.state_dict())
        tr = meta0.get("training", {})
        state = {"vae_step": tr.get("vae_steps", 0), "gpt_step": tr.get("gpt_steps", 0)}
        log(f"initialised from {a.init_from}: {tr}")
    log(f"params: transformer {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, "
        f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M, t5 {sum(p.numel() for p in t5.parameters()) / 1e6:.2f}M")
    def save():
        torch.save({**state, "model": model.state_dict(), "vae": vae.state_dict(), "t5": t5.state_dict()}, ck)
    done = a.finish
    if not a.finish:
        scenes, images = make_dataset(a.images, a.seed)
        log(f"data set: {len(scenes)} images {tuple(images.shape[1:])}")
        vae_done = train_vae(vae, images, a.vae_steps, state, device, deadline, log)
        save()
    if not a.finish and vae_done:
        vae.requires_grad_(False)
        bits = encode_bits(vae, images, device)
        log("encoded data set to bits")
        done = train_gpt(model, tok, t5, bits, scenes, a.gpt_steps, state, device, deadline, log)
        save()
    if done and a.decoder_steps and state.get("decoder_step", 0) < a.decoder_steps:
        if a.finish:
            scenes, images = make_dataset(a.images, a.seed)
        log(f"VAE reconstruction checker accuracy before decoder fine-tuning: {recon_accuracy(vae, 200, device):.3f}")
        state["decoder_step"] = finetune_decoder(vae, images, a.decoder_steps, device, deadline, log)
        log(f"VAE reconstruction checker accuracy after: {recon_accuracy(vae, 200, device):.3f}")
        save()
    extra = {"training": {"images": a.images, "vae_steps": state.get("vae_step", 0),
                          "decoder_finetune_steps": state.get("decoder_step", 0),
                          "gpt_steps": state.get("gpt_step", 0), "image_size": IMAGE_SIZE, "seed": a.seed}}
    export_bundle(a.out, cfg, model, vae, tok, t5, extra)
    log(f"exported {a.out} (training complete: {done})")
    if done and a.eval_prompts:
        prompts = shapes.held_out_prompts(a.eval_prompts)
        res = evaluate(a.out, prompts, device, [(1.0, 1.0), (3.0, 1.0), (3.0, 0.5), (5.0, 0.5), (3.0, 0.2)])
        log("held-out accuracy: " + json.dumps({f"cfg{c}_tau{t}": v for (c, t), v in res.items()}))
        (best_cfg, best_tau), acc = max(res.items(), key=lambda kv: kv[1])
        cfg.default_cfg, cfg.default_tau = best_cfg, best_tau
        extra["training"]["heldout_accuracy"] = acc
        export_bundle(a.out, cfg, model, vae, tok, t5, extra)
        log(f"defaults cfg={best_cfg} tau={best_tau} (accuracy {acc:.3f}); final bundle written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
