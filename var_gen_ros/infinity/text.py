"""Text encoder: a T5 encoder (Flan-T5-XL for the official models) loaded from a local directory.

Never reaches a model hub: `local_files_only=True` everywhere, and a missing file is named in the
error before transformers is asked.
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence, Tuple

import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
# Prompts are padded (and masked) to a multiple of this many tokens. The CUDA graphs of the transformer's scales and of
# the text encoder are captured per text length (graphs.py, text_graphs.py): a length the scales' graphs have not
# seen is captured in the request that brings it, which at 8B on the H100 takes about 4.4 s instead of about 1.0 s
# replayed (the idle release's figure for capturing every scale, docs/BENCHMARKS.md), and only the last 8 lengths are
# kept. At exact lengths a robot's varied commands would keep paying that. Padded to 32, every prompt of up to 32
# tokens shares one set of graphs. The padding is masked in the encoder and in the cross-attention, so the features
# and the condition are the unpadded ones up to float rounding (the official pipeline pads to 512 tokens); graphs on
# and off pad alike and give the same image. On the H100 at 8B (thirty-seventh session) new prompts of 4, 11 and 12
# tokens replayed the warm-up's graphs: 0.96-0.97 s resident, as a new prompt of the warm-up's own length (0.964 s),
# for about 20 MB more memory. VAR_GEN_TEXT_TOKEN_MULTIPLE=1 gives the exact lengths.
TOKEN_MULTIPLE = int(os.environ.get("VAR_GEN_TEXT_TOKEN_MULTIPLE", "32"))


def check_text_encoder_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text encoder directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"text encoder config missing: {os.path.join(path, 'config.json')}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise FileNotFoundError(f"text encoder weights missing in {path}: expected one of {', '.join(WEIGHT_FILES)}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"tokenizer missing in {path}: expected one of {', '.join(TOKENIZER_FILES)}")


class TextEncoder:
    def __init__(self, tokenizer, model, max_length: int):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length
        self.graphs = None      # text_graphs.PromptGraphs: the forward captured per shape on a GPU (use_graphs)
        self._embed_dtype = None
        self._no_graphs = ""    # why the graphs cannot be used here

    def use_graphs(self, on: bool = True) -> None:
        """The forward as CUDA graphs per (batch, token count) on a GPU (text_graphs.py), or eager again. A no-op where
        the installed transformers refused the 4-D mask the graphs need."""
        if on and self.graphs is None and not self._no_graphs:
            from .text_graphs import PromptGraphs
            self.graphs = PromptGraphs(self.model, "text encoder")
            self._embed_dtype = None     # (asked again: the model may have been quantized since)
        elif not on:
            self.graphs = None

    @classmethod
    def from_dir(cls, path: str, device="cpu", dtype=torch.float32, max_length: int = 512) -> "TextEncoder":
        check_text_encoder_dir(path)
        from transformers import AutoTokenizer, T5EncoderModel
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = T5EncoderModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        model.to(device).eval().requires_grad_(False)
        return cls(tok, model, max_length)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, truncation=False)["input_ids"])

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, T, Ct5) float32 (last hidden state), mask (B, T) bool. T = the longest prompt's token count
        rounded up to TOKEN_MULTIPLE."""
        tok = self.tokenizer(list(prompts), max_length=self.max_length, padding="longest", truncation=True,
                             return_tensors="pt")
        ids, mask = self._pad(tok["input_ids"], tok["attention_mask"])
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.graphs is None:
            feats = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        else:   # a 4-D additive mask: transformers' own for this 2-D one, without its host sync (text_graphs.py)
            from .text_graphs import additive_mask
            if self._embed_dtype is None:     # the dtype transformers makes its mask in: the embeddings'
                self._embed_dtype = self.model.get_input_embeddings()(ids[:, :1]).dtype
            try:
                feats = self.graphs.run(self._forward, ids, additive_mask(mask, self._embed_dtype))
            except ValueError as e:           # (transformers 4.x took only 2-D and 3-D masks)
                self._no_graphs, self.graphs = f"{type(e).__name__}: {e}"[:300], None
                warnings.warn(f"var_gen_ros: the text encoder runs without CUDA graphs: this transformers does not "
                              f"take a 4-D attention mask ({self._no_graphs})")
                feats = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return feats, mask.bool()

    def _pad(self, ids: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The tokens padded on the right to a multiple of TOKEN_MULTIPLE, or to max_length where that is less."""
        T = ids.shape[1]
        n = min(-(-T // TOKEN_MULTIPLE) * TOKEN_MULTIPLE, max(self.max_length, T)) - T if TOKEN_MULTIPLE > 1 else 0
        if n <= 0:
            return ids, mask
        pad_id = self.tokenizer.pad_token_id or 0
        return (torch.cat([ids, ids.new_full((ids.shape[0], n), pad_id)], 1),
                torch.cat([mask, mask.new_zeros((mask.shape[0], n))], 1))

    def _forward(self, ids: torch.Tensor, mask4d: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask4d).last_hidden_state.float()
