"""A deterministic judge of whether an image shows what a default-model caption says.

OpenCV only: the background is the median of the border pixels; foreground = pixels far from it;
each connected component is one object, its colour the nearest palette colour of its core pixels, its
shape from contour geometry (solidity for stars, polygon vertices and circularity for the rest),
its size from its area and its place from its centroid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

from .shapes import BG_RGB, COLOURS, RADIUS, Spec, parse_caption, region

MIN_AREA_FRAC = 0.004       # components smaller than this share of the image are noise
FG_DISTANCE = 70.0          # RGB distance from the background that makes a pixel foreground


@dataclass
class ObjectFound:
    colour: str
    shape: str
    size: str
    centre: tuple           # (x, y) in [0, 1]
    area_frac: float


@dataclass
class CheckResult:
    ok: bool
    spec: Spec
    background: str
    objects: List[ObjectFound] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)


def _nearest(rgb, table) -> str:
    names = list(table)
    d = [np.linalg.norm(np.asarray(rgb, float) - np.asarray(table[n], float)) for n in names]
    return names[int(np.argmin(d))]


def classify_shape(mask: np.ndarray) -> str:
    import cv2
    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(cnts, key=cv2.contourArea)
    area = cv2.contourArea(c)
    hull = cv2.contourArea(cv2.convexHull(c))
    per = cv2.arcLength(c, True)
    if area <= 0 or per <= 0:
        return "unknown"
    solidity = area / max(hull, 1e-6)
    circularity = 4 * np.pi * area / per ** 2
    if solidity < 0.8:
        return "star"
    # fill ratio of the axis-aligned bounding box: square ~1, circle ~pi/4, triangle ~1/2
    x, y, w, h = cv2.boundingRect(c)
    fill = area / max(w * h, 1)
    if fill > 0.88:
        return "square"
    if fill < 0.62:
        return "triangle"
    return "circle" if circularity > 0.75 else ("square" if fill > 0.8 else "triangle")


def find_objects(image: np.ndarray):
    """-> (background name, [ObjectFound])."""
    import cv2
    img = image.astype(np.float32)
    H, W = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BG_RGB)
    fg = np.linalg.norm(img - bg_rgb, axis=-1) > FG_DISTANCE
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(fg, connectivity=8)
    objs = []
    split = RADIUS["small"][1] + RADIUS["large"][0]   # bounding-box side between 2 r_small and 2 r_large
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA] / (H * W)
        if area < MIN_AREA_FRAC:
            continue
        m = labels == i
        core = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        px = img[core] if core.sum() >= 5 else img[m]
        colours = {k: v for k, v in COLOURS.items() if k != background}
        colour = _nearest(np.median(px, axis=0), colours)
        side = max(stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]) / max(H, W)
        objs.append(ObjectFound(colour, classify_shape(m), "large" if side > split else "small",
                                (cents[i][0] / W, cents[i][1] / H), float(area)))
    return background, objs


def in_region(centre, position: str, slack: float = 0.04) -> bool:
    x0, y0, x1, y1 = region(position)
    return x0 - slack <= centre[0] <= x1 + slack and y0 - slack <= centre[1] <= y1 + slack


def check(image: np.ndarray, caption: str) -> CheckResult:
    spec = parse_caption(caption)
    background, objs = find_objects(image)
    fails = []
    if background != spec.background:
        fails.append(f"background {background} != {spec.background}")
    if len(objs) != spec.count:
        fails.append(f"{len(objs)} objects != {spec.count}")
    for o in objs:
        if o.colour != spec.colour:
            fails.append(f"colour {o.colour} != {spec.colour}")
        if o.shape != spec.shape:
            fails.append(f"shape {o.shape} != {spec.shape}")
        if spec.size and o.size != spec.size:
            fails.append(f"size {o.size} != {spec.size}")
        if spec.position and not in_region(o.centre, spec.position):
            fails.append(f"centre ({o.centre[0]:.2f}, {o.centre[1]:.2f}) not {spec.position}")
    return CheckResult(not fails, spec, background, objs, fails)
