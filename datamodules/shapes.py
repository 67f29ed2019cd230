"""Procedural "shapes" task data: the embedded default for classification, detection and segmentation.

Objects (ellipses and rectangles) sit on crops of natural photos; an object's class is carried only by its fine
texture (thin streaks, speckle, blotches), exactly the high frequencies JPEG quantises away, so task accuracy falls
with the quality factor. Every scene is a pure function of (seed, split, index).

Backgrounds: the `train` split crops scikit-image photos outside the evaluation `samples`, the `test` split crops
the `samples` photos, so no background is shared between the splits.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datamodules.sources import SAMPLE_IMAGES, SAMPLE_TRAIN_IMAGES, load_samples

TASKS = ("classification", "detection", "segmentation")  # what a scene serves (and downstream evaluation knows)
CLASSES = ("hstreaks", "vstreaks", "speckle", "blotch")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Scene:
    pixels: np.ndarray  # uint8 HxWx3
    boxes: np.ndarray  # float32 (K, 4) xyxy, pixel units
    labels: np.ndarray  # int64 (K,) in 0..len(CLASSES)-1
    mask: np.ndarray  # uint8 HxW: 0 background, 1 + class id of the visible object

    @property
    def label(self) -> int:
        """The class of the largest visible object (classification target)."""
        areas = [(self.mask == 1 + c).sum() for c in range(len(CLASSES))]
        return int(np.argmax(areas))


@lru_cache(maxsize=2)
def _backgrounds(split: str) -> tuple[np.ndarray, ...]:
    names = SAMPLE_IMAGES if split == "test" else SAMPLE_TRAIN_IMAGES
    out = []
    for r in load_samples(names):
        px = r.pixels if not r.is_gray else np.repeat(r.pixels[..., None], 3, axis=2)
        out.append(px)
    return tuple(out)


def texture(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance band-limited noise whose class lives in its fine structure: streaks one or two pixels thin
    across (horizontal or vertical), isotropic speckle, or smooth blotches. Energy spread over many DCT
    coefficients is what JPEG quantisation removes progressively as the QF falls."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal((h, w))
    sigma = {"hstreaks": (0.6, 6.0), "vstreaks": (6.0, 0.6), "speckle": (0.6, 0.6), "blotch": (2.5, 2.5)}[CLASSES[cls]]
    t = gaussian_filter(noise, sigma, mode="wrap")
    return (t - t.mean()) / (t.std() + 1e-12)


def generate_scene(index: int, split: str = "test", seed: int = 0, size: int = 128, max_objects: int = 3,
                   min_objects: int = 1) -> Scene:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    bgs = _backgrounds(split)
    bg = bgs[rng.integers(len(bgs))]
    y0 = int(rng.integers(bg.shape[0] - size + 1))
    x0 = int(rng.integers(bg.shape[1] - size + 1))
    img = bg[y0:y0 + size, x0:x0 + size].astype(np.float64)
    instances = np.full((size, size), -1, np.int16)  # which object is visible at each pixel
    labels = []
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(int(rng.integers(min_objects, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        h, w = (int(v) for v in rng.integers(size // 5, size // 2, size=2))
        cy, cx = int(rng.integers(h // 2, size - h // 2)), int(rng.integers(w // 2, size - w // 2))
        if rng.random() < 0.5:  # ellipse
            inside = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        else:
            inside = (np.abs(yy - cy) <= h / 2) & (np.abs(xx - cx) <= w / 2)
        colour = rng.uniform(70, 185, size=3)
        amp = rng.uniform(8, 20)  # faint enough that QF 20 already blurs the class cue
        obj = colour[None, None, :] + amp * texture(cls, size, size, rng)[..., None]
        img[inside] = obj[inside]
        instances[inside] = k
        labels.append(cls)
    # boxes of what stays visible (a later object may cover an earlier one); tiny remnants are dropped
    boxes, kept = [], []
    mask = np.zeros((size, size), np.uint8)
    for k, cls in enumerate(labels):
        sel = instances == k
        mask[sel] = 1 + cls
        if sel.sum() < 64:
            continue
        ys, xs = np.nonzero(sel)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        kept.append(cls)
    pixels = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return Scene(pixels, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(kept, np.int64), mask)
