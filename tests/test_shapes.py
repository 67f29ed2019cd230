"""The procedural shapes set: deterministic, labels/boxes/masks consistent, texture is what JPEG destroys."""
import numpy as np
import pytest

from datamodules.corruptions import Corruption, apply
from datamodules.shapes import CLASSES, generate_scene, texture


def test_same_seed_same_scene_and_splits_differ():
    a, b = generate_scene(3, "test", seed=1), generate_scene(3, "test", seed=1)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.mask, b.mask) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.pixels, generate_scene(3, "train", seed=1).pixels)
    assert not np.array_equal(a.pixels, generate_scene(3, "test", seed=2).pixels)
    with pytest.raises(ValueError, match="unknown split"):
        generate_scene(0, "holdout")


def test_boxes_labels_and_mask_agree():
    for i in range(20):
        s = generate_scene(i)
        assert s.pixels.shape == (128, 128, 3) and s.pixels.dtype == np.uint8
        assert len(s.boxes) == len(s.labels) >= 1
        for (x0, y0, x1, y1), cls in zip(s.boxes.astype(int), s.labels):
            inside = s.mask[y0:y1, x0:x1]
            assert (inside == 1 + cls).any()
            # the box is tight: its border rows/columns touch the object
            assert (s.mask[y0, x0:x1] == 1 + cls).any() and (s.mask[y1 - 1, x0:x1] == 1 + cls).any()
        assert set(np.unique(s.mask)) <= set(range(len(CLASSES) + 1))
        assert s.label in s.labels


def test_class_textures_degrade_with_quality():
    rng = np.random.default_rng(0)
    kept = {}
    for cls, name in enumerate(CLASSES):
        t = texture(cls, 64, 64, rng)
        assert abs(t.std() - 1) < 1e-6 and abs(t.mean()) < 1e-9
        img = np.repeat(np.clip(128 + 24 * t, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        corr = [np.corrcoef(apply(img, Corruption("jpeg", (q,)))[0][..., 1].ravel().astype(float),
                            img[..., 1].ravel().astype(float))[0, 1] for q in (90, 30, 10)]
        assert corr[0] > corr[1] > corr[2], (name, corr)
        kept[name] = corr[2]
    # the finest texture suffers most, the smoothest least: the classes become confusable at low QF
    assert kept["speckle"] == min(kept.values()) and kept["blotch"] == max(kept.values())
