"""Small models built locally: a word-level tokenizer + small T5 encoder, and random-weight bundles.

Used by the tests (checkpoints they build themselves) and by benchmarks that need the real shapes
with random weights. Nothing here downloads anything.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import torch

from .config import InfinityConfig

SPECIAL = ["<pad>", "</s>", "<unk>"]   # T5 ids: pad 0, eos 1, unk 2
BASE_WORDS = """a an the one two three four five six seven eight nine ten of on in at with and
red green blue yellow orange purple pink white black gray grey brown cyan magenta
circle circles square squares triangle triangles star stars rectangle rectangles ellipse
small large big tiny medium background left right top bottom center middle corner
cat dog robot photo picture image of sky tree house car mountain sea sunset""".split()


def build_word_tokenizer(out_dir: str, words: Optional[Iterable[str]] = None, model_max_length: int = 64):
    """A lower-casing word-level tokenizer that appends </s>, saved in transformers' layout."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIAL)}
    for w in (words if words is not None else BASE_WORDS):
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)
    fast.save_pretrained(out_dir)
    return fast


def build_small_t5(out_dir: str, d_model: int, vocab_size: int, num_layers: int = 2, num_heads: int = 4,
                   d_ff: Optional[int] = None, seed: int = 0):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // num_heads, d_ff=d_ff or 2 * d_model,
                   num_layers=num_layers, num_heads=num_heads, feed_forward_proj="gated-gelu",
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    model.save_pretrained(out_dir)
    return model


def build_text_encoder_dir(out_dir: str, d_model: int, words=None, seed: int = 0, **t5_kwargs) -> str:
    os.makedirs(out_dir, exist_ok=True)
    tok = build_word_tokenizer(out_dir, words)
    build_small_t5(out_dir, d_model, len(tok), seed=seed, **t5_kwargs)
    return out_dir


def random_init_(model: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Give every weight a random value, fan-in scaled, on the weights' own device (so an 8B model
    built with `to_empty(device="cuda")` fills on the GPU). The default inits leave AdaLN, biases and
    norms at exact zeros/ones that hide wrong wiring. Constant buffers are (re)set to their values."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_mul_1H11"):
                p.copy_(torch.full_like(p, 4.0).log() + 0.1 * torch.randn(p.shape, generator=g, device=p.device))
            elif p.ndim >= 2:
                p.normal_(0, 1 / max(p[0].numel(), 1) ** 0.5, generator=g)
            else:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.normal_(base, std, generator=g)
        for name, b in model.named_buffers():
            if name.endswith("zero_k_bias"):
                b.zero_()
            elif name.endswith("lfq.mask"):
                b.copy_(2 ** torch.arange(b.numel() - 1, -1, -1, device=b.device))
    return model


def make_random_bundle(path: str, cfg: InfinityConfig, seed: int = 0, text_layers: int = 2) -> str:
    """A complete bundle of `cfg` with random weights (for tests and shape benchmarks)."""
    from .checkpoint import save_bundle
    from .model import Infinity
    from .vae import BSQVAE
    torch.manual_seed(seed)
    model = random_init_(Infinity(cfg), seed)
    vae = random_init_(BSQVAE(cfg.vae), seed + 1)
    te_dir = os.path.join(path, "text_encoder")
    build_text_encoder_dir(te_dir, cfg.text_channels, seed=seed, num_layers=text_layers,
                           num_heads=max(1, cfg.text_channels // 64) if cfg.text_channels >= 64 else 4)
    save_bundle(path, cfg, model, vae, text_encoder_dir=te_dir, extra={"name": f"{cfg.name}-random"})
    return path
