"""Prompts padded on the right to a multiple of text.TOKEN_MULTIPLE tokens, masked (var_gen_ros/infinity/text.py):
prompts of different token counts share one text length, and so one set of CUDA graphs of the scales and of the
encoder; the padding changes float rounding only: the features at the prompt's tokens, the condition and the
cross-attention's output match the exact-length ones."""
import torch

PROMPTS = ["a red circle", "three small green triangles on a white background", "square"]


def _padded(te, n: int) -> int:
    """n tokens rounded up to text.TOKEN_MULTIPLE, or to the encoder's max_length where that is less."""
    from var_gen_ros.infinity import text
    m = text.TOKEN_MULTIPLE
    return min(-(-n // m) * m, max(te.max_length, n))


def test_prompts_of_different_token_counts_share_one_length_and_give_the_exact_lengths_values(tiny_bundle,
                                                                                             monkeypatch):
    from var_gen_ros.infinity import Generator, text
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    te, model = gen.text_encoder, gen.model
    m = text.TOKEN_MULTIPLE
    assert m > 1
    counts = [min(te.token_count(p), te.max_length) for p in PROMPTS]
    assert len(set(counts)) == len(counts), counts
    padded = [te.encode([p]) for p in PROMPTS]
    want_T = [_padded(te, n) for n in counts]
    assert [f.shape[1] for f, _ in padded] == want_T and len(set(want_T)) == 1, (counts, want_T)
    assert [int(k.sum()) for _, k in padded] == counts
    monkeypatch.setattr(text, "TOKEN_MULTIPLE", 1)
    exact = [te.encode([p]) for p in PROMPTS]
    assert [f.shape[1] for f, _ in exact] == counts
    with torch.no_grad():
        for (fp, kp), (fe, ke), n in zip(padded, exact, counts):
            assert torch.equal(kp[:, :n], ke) and not kp[:, n:].any()
            torch.testing.assert_close(fp[:, :n], fe, rtol=1e-5, atol=1e-5)
            cp, ce = model.encode_condition(fp, kp), model.encode_condition(fe, ke)
            torch.testing.assert_close(cp[0], ce[0], rtol=1e-5, atol=1e-5)       # cond_BD (masked pooling)
            torch.testing.assert_close(cp[1], ce[1], rtol=1e-5, atol=1e-5)       # cond_gss
            # the cross-attention of some queries over the padded keys (masked) against the exact ones
            ca = model.blocks[0].ca
            q = torch.randn(1, 5, model.cfg.embed_dim, generator=torch.Generator().manual_seed(n))
            torch.testing.assert_close(ca(q, cp[2][0], kp), ca(q, ce[2][0], ke), rtol=1e-5, atol=1e-5)
            # CFG's null condition pads alike
            torch.testing.assert_close(model.uncond_text(fp, kp)[:, :n], model.uncond_text(fe, ke))


def test_a_prompt_and_its_negative_pad_to_one_length(tiny_bundle):
    """CFG with a negative prompt encodes both in one batch: padded to the longer one's length, rounded up."""
    from var_gen_ros.infinity import Generator
    gen = Generator.from_bundle(tiny_bundle, device="cpu", dtype=torch.float32)
    te = gen.text_encoder
    feats, mask = te.encode([PROMPTS[0], PROMPTS[1]])
    n = max(min(te.token_count(p), te.max_length) for p in PROMPTS[:2])
    assert feats.shape[:2] == mask.shape == (2, _padded(te, n))
    assert mask.sum(1).tolist() == [min(te.token_count(p), te.max_length) for p in PROMPTS[:2]]
