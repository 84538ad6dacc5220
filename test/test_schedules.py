"""Scale schedules and configs against the official numbers (infinity/utils/dynamic_resolution.py,
tools/run_infinity.py)."""
import pytest

from var_gen_ros.infinity.config import (FULL_RATIO2HWS, INFINITY_2B, INFINITY_8B, official_schedule, schedule_for,
                                         tiny_config)


def test_1024_square_schedule_matches_official():
    s = official_schedule(1.0, "1M")
    assert s.scales == ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24),
                        (32, 32), (40, 40), (48, 48), (64, 64))
    assert len(s.scales) == 13
    assert s.token_counts == [1, 4, 16, 36, 64, 144, 256, 400, 576, 1024, 1600, 2304, 4096]
    assert s.total_tokens == 10521
    assert s.cached_tokens == 6425          # the KV cache never holds the last scale
    assert s.image_size(16) == (1024, 1024)


@pytest.mark.parametrize("pn,n,last", [("0.06M", 7, (16, 16)), ("0.25M", 10, (32, 32)), ("0.60M", 12, (48, 48)),
                                       ("1M", 13, (64, 64))])
def test_pixel_budgets(pn, n, last):
    s = official_schedule(1.0, pn)
    assert len(s.scales) == n and s.scales[-1] == last
    assert s.rope_grid == (64, 64)          # RoPE positions normalised to the 1M grid at every budget


def test_aspect_ratios():
    assert len(FULL_RATIO2HWS) == 15        # 1.0 plus 7 ratios and their inverses
    s = official_schedule(2.0, "1M")
    assert s.scales[-1] == (90, 45) and s.total_tokens == sum(h * w for h, w in s.scales)
    inv = official_schedule(0.5, "1M")
    assert inv.scales[-1] == (45, 90)
    assert official_schedule(3.0, "1M").scales[-1] == (111, 37)
    # nearest template and budget from a requested size
    assert schedule_for(INFINITY_2B, 512, 512).scales[-1] == (32, 32)
    assert schedule_for(INFINITY_2B, 1152, 864).scales[-1] == (72, 54)   # h/w 1.333, 1M
    assert schedule_for(INFINITY_2B, 1024, 768).scales[-1] == (60, 45)   # nearer 960x720 than 1152x864


def test_official_sizes():
    assert (INFINITY_2B.depth, INFINITY_2B.embed_dim, INFINITY_2B.num_heads, INFINITY_2B.head_dim) == (32, 2048, 16, 128)
    assert (INFINITY_8B.depth, INFINITY_8B.embed_dim, INFINITY_8B.num_heads, INFINITY_8B.head_dim) == (40, 3584, 28, 128)
    assert INFINITY_2B.d_vae == 32 and INFINITY_2B.vocab == 64
    assert INFINITY_8B.d_vae == 56 and INFINITY_8B.vocab == 112 and INFINITY_8B.vae.codebook_dim == 14
    assert INFINITY_8B.token_stride == 16 and INFINITY_2B.token_stride == 16
    assert INFINITY_2B.ffn_hidden == 8192 and INFINITY_8B.ffn_hidden == 14336
    assert INFINITY_8B.text_channels == 2048


def test_custom_schedule_rejects_other_sizes():
    cfg = tiny_config()
    assert schedule_for(cfg).image_size(cfg.token_stride) == (16, 16)
    with pytest.raises(ValueError, match="16x16"):
        schedule_for(cfg, 32, 32)
