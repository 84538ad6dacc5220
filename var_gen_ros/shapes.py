"""Procedural captioned images for the embedded default model: coloured shapes on a plain background.

    scene = sample_scene(rng)                  # a Scene: shape, colour, count, size, position, background
    image = render(scene, 128)                 # (H, W, 3) uint8 RGB, drawn with OpenCV
    caption(scene, rng)                        # "two small red circles on a blue background, top left"
    parse_caption(text)                        # -> Spec of what the caption demands (what the checker tests)

Size and position are sometimes left out of a caption ("a red circle on a white background"); the scene
still has them, so the model learns to choose. Everything is seeded: the same rng state gives the
same scene, image and caption.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

COLOURS = {   # RGB, chosen far apart in RGB so a blurry pixel is still nearest to its own colour
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230), "yellow": (245, 220, 30),
    "orange": (255, 140, 0), "purple": (150, 40, 190), "white": (245, 245, 245), "black": (15, 15, 15),
}
BACKGROUNDS = ("white", "black", "gray", "blue", "yellow", "green")
BG_RGB = {**COLOURS, "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "star")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SIZES = ("small", "large")
# radius (half the bounding box side) in units of the image side
RADIUS = {"small": (0.07, 0.085), "large": (0.16, 0.19)}
WORDS = sorted({w for n in list(COLOURS) + list(BACKGROUNDS) + list(SHAPES) + list(POSITIONS) + list(SIZES)
                + list(COUNT_WORDS.values()) for w in n.split()}
               | {s + "s" for s in SHAPES} | {"on", "background"})


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    count: int
    size: str
    position: str
    background: str
    centres: Tuple[Tuple[float, float], ...]   # (x, y) in [0, 1]
    radius: float                              # in units of the image side


@dataclass(frozen=True)
class Spec:
    """What a caption demands; None = not specified."""
    shape: str
    colour: str
    count: int
    background: str
    size: Optional[str] = None
    position: Optional[str] = None


def region(position: str) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a position word, in [0, 1]."""
    return {"top left": (0, 0, .5, .5), "top right": (.5, 0, 1, .5), "bottom left": (0, .5, .5, 1),
            "bottom right": (.5, .5, 1, 1), "center": (.25, .25, .75, .75)}[position]


def sample_scene(rng: np.random.Generator) -> Scene:
    shape = SHAPES[rng.integers(len(SHAPES))]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]
    colour = colours[rng.integers(len(colours))]
    count = int(rng.integers(1, 4))
    size = "small" if count > 1 else SIZES[rng.integers(2)]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    r = float(rng.uniform(*RADIUS[size]))
    x0, y0, x1, y1 = region(position)
    if count == 1 and size == "large":     # a large shape sits at its region's centre, nudged a little
        cx, cy = (x0 + x1) / 2 + rng.uniform(-.03, .03), (y0 + y1) / 2 + rng.uniform(-.03, .03)
        if position != "center":           # keep it inside the image
            cx, cy = min(max(cx, r + .02), 1 - r - .02), min(max(cy, r + .02), 1 - r - .02)
        centres = [(cx, cy)]
    else:
        centres = []
        for _ in range(200):                # rejection sampling: inside the region, not touching
            if len(centres) == count:
                break
            c = (rng.uniform(x0 + r + .02, x1 - r - .02), rng.uniform(y0 + r + .02, y1 - r - .02))
            if all(math.dist(c, o) > 2.5 * r + 0.04 for o in centres):   # squares' corners reach 1.25 r
                centres.append(c)
        if len(centres) < count:
            return sample_scene(rng)
    return Scene(shape, colour, count, size, position, background, tuple(centres), r)


def _star(cx, cy, r):
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def render(scene: Scene, size: int = 128) -> np.ndarray:
    import cv2
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BG_RGB[scene.background]
    col = tuple(int(v) for v in COLOURS[scene.colour])
    S = 16   # sub-pixel precision (cv2 shift) for smooth edges
    for cx, cy in scene.centres:
        x, y, r = cx * size, cy * size, scene.radius * size
        if scene.shape == "circle":
            cv2.circle(img, (round(x * S), round(y * S)), round(r * S), col, -1, cv2.LINE_AA, shift=4)
            continue
        if scene.shape == "square":
            h = r * 0.88                      # same area feel as the circle
            pts = [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
        elif scene.shape == "triangle":
            pts = [(x, y - r), (x + r * 0.95, y + r * 0.8), (x - r * 0.95, y + r * 0.8)]
        else:
            pts = _star(x, y, r * 1.1)
        arr = np.array([[round(px * S), round(py * S)] for px, py in pts], np.int32)
        cv2.fillPoly(img, [arr], col, cv2.LINE_AA, shift=4)
    return img


def caption(scene: Scene, rng: Optional[np.random.Generator] = None, p_size: float = 0.7,
            p_position: float = 0.7) -> str:
    """Full caption, or with size / position dropped at random (rng given)."""
    with_size = rng is None or rng.random() < p_size
    with_pos = rng is None or rng.random() < p_position
    noun = scene.shape + ("s" if scene.count > 1 else "")
    words = [COUNT_WORDS[scene.count]] + ([scene.size] if with_size else []) + [scene.colour, noun]
    text = " ".join(words) + f" on a {scene.background} background"
    return text + (f", {scene.position}" if with_pos else "")


_CAPTION_RE = re.compile(r"^(a|two|three) (?:(small|large) )?(\w+) (\w+?)s? on a (\w+) background(?:, (.+))?$")


def parse_caption(text: str) -> Spec:
    m = _CAPTION_RE.match(text.strip().lower())
    if not m:
        raise ValueError(f"caption not in the default model's grammar: {text!r}")
    count_w, size, colour, shape, bg, pos = m.groups()
    count = {v: k for k, v in COUNT_WORDS.items()}[count_w]
    for val, allowed, what in ((colour, COLOURS, "colour"), (shape, SHAPES, "shape"), (bg, BG_RGB, "background")):
        if val not in allowed:
            raise ValueError(f"unknown {what} {val!r} in {text!r}")
    if pos is not None and pos not in POSITIONS:
        raise ValueError(f"unknown position {pos!r} in {text!r}")
    return Spec(shape, colour, count, bg, size, pos)


def held_out_prompts(n: int, seed: int = 12345) -> List[str]:
    """A fixed list of full captions (the evaluation set; the seed is not one training uses)."""
    rng = np.random.default_rng(seed)
    return [caption(sample_scene(rng)) for _ in range(n)]
