"""The embedded default model and its checker (CPU)."""
import dataclasses
import os

import numpy as np
import pytest

from var_gen_ros import shapes
from var_gen_ros.checker import check
from var_gen_ros.cli import default_bundle_path


def test_dataset_is_seeded_and_reproducible():
    a = [shapes.sample_scene(np.random.default_rng(3)) for _ in range(2)]
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    s1, s2 = shapes.sample_scene(r1), shapes.sample_scene(r2)
    assert s1 == s2 and np.array_equal(shapes.render(s1), shapes.render(s2))
    assert shapes.caption(s1, r1) == shapes.caption(s2, r2)
    assert a[0] == a[1]
    assert shapes.held_out_prompts(5) == shapes.held_out_prompts(5)
    spec = shapes.parse_caption("two small red circles on a blue background, top left")
    assert (spec.count, spec.size, spec.colour, spec.shape, spec.background, spec.position) == \
        (2, "small", "red", "circle", "blue", "top left")
    with pytest.raises(ValueError):
        shapes.parse_caption("a photo of a cat")


def test_checker_accepts_ground_truth_images():
    rng = np.random.default_rng(2024)
    scenes = [shapes.sample_scene(rng) for _ in range(500)]
    acc = np.mean([check(shapes.render(s), shapes.caption(s)).ok for s in scenes])
    assert acc >= 0.98, acc


def _wrong(scene, what, rng):
    """A caption that contradicts the scene in one attribute."""
    if what == "colour":
        c = [x for x in shapes.COLOURS if x not in (scene.colour, scene.background)]
        return dataclasses.replace(scene, colour=c[rng.integers(len(c))])
    if what == "shape":
        c = [x for x in shapes.SHAPES if x != scene.shape]
        return dataclasses.replace(scene, shape=c[rng.integers(len(c))])
    if what == "count":
        return dataclasses.replace(scene, count=scene.count % 3 + 1,
                                   size="small" if scene.count % 3 + 1 > 1 else scene.size)
    if what == "background":
        c = [x for x in shapes.BACKGROUNDS if x not in (scene.background, scene.colour)]
        return dataclasses.replace(scene, background=c[rng.integers(len(c))])
    if what == "position":
        c = [p for p in ("top left", "top right", "bottom left", "bottom right") if p != scene.position]
        return dataclasses.replace(scene, position=c[rng.integers(len(c))])


@pytest.mark.parametrize("what", ["colour", "shape", "count", "background", "position"])
def test_checker_rejects_wrong_images(what):
    rng = np.random.default_rng(11)
    rejected, n = 0, 150
    for _ in range(n):
        s = shapes.sample_scene(rng)
        while what == "position" and s.position == "center":   # the centre overlaps every quadrant
            s = shapes.sample_scene(rng)
        rejected += not check(shapes.render(s), shapes.caption(_wrong(s, what, rng))).ok
    assert rejected / n >= 0.95, (what, rejected / n)
    # and a blank image passes nothing
    blank = np.full((128, 128, 3), 245, np.uint8)
    assert not check(blank, "a red circle on a white background").ok


@pytest.fixture(scope="module")
def default_generator():
    from var_gen_ros.infinity import Generator
    path = default_bundle_path()
    assert os.path.isfile(os.path.join(path, "config.json")), f"the default bundle is missing: {path}"
    return Generator.from_bundle(path)


def test_shipped_default_model_accuracy_on_50_held_out_prompts(default_generator):
    prompts = shapes.held_out_prompts(50)
    ok = [check(default_generator.generate(p, seed=i).image, p).ok for i, p in enumerate(prompts)]
    assert np.mean(ok) >= 0.80, np.mean(ok)


def test_readme_main_command_makes_an_accepted_red_circle(tmp_path):
    import cv2
    from var_gen_ros.cli import main
    out = tmp_path / "red_circle.png"
    assert main(["generate", "--prompt", "a red circle on a white background", "--out", str(out),
                 "--device", "cpu"]) == 0
    img = cv2.imread(str(out))[:, :, ::-1]
    assert img.shape == (128, 128, 3)
    res = check(img, "a red circle on a white background")
    assert res.ok, res.failures


def test_default_bundle_fits_the_size_budget_and_ships_w4a4():
    path = default_bundle_path()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    assert total <= 50 * 2 ** 20, total
    assert os.path.isfile(os.path.join(path, "w4a4", "quant.json"))


def test_shipped_w4a4_default_model_still_draws(default_generator):
    """W4A4 + INT8 KV from the shipped w4a4/ (no calibration at start-up); accuracy is recorded in
    docs/BENCHMARKS.md over 500 prompts; here a floor that a broken quantizer would not reach."""
    from var_gen_ros.infinity import Generator
    from var_gen_ros.quant.runtime import apply_precision
    g = Generator.from_bundle(default_bundle_path())
    how = apply_precision(g, "w4a4", "int8", default_bundle_path())
    assert "loaded" in how
    prompts = shapes.held_out_prompts(20)
    ok = [check(g.generate(p, seed=i).image, p).ok for i, p in enumerate(prompts)]
    assert np.mean(ok) >= 0.5, np.mean(ok)
