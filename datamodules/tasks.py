"""Task data for downstream evaluation: (corrupted, clean, target, meta) items for classification, detection and
segmentation, over the procedural shapes set (the embedded default)."""
from __future__ import annotations

from functools import lru_cache

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.corruptions import Corruption, CorruptionCache, apply
from datamodules.fidelity import to_tensor
from datamodules.shapes import TASKS, generate_scene  # noqa: F401 -- TASKS: defined with the scenes, kept here
from datamodules.sources import ImageRecord


class ShapesTaskSet(Dataset):
    """Shapes scenes under one corruption (None = clean). Targets: class index, box dict, or mask."""

    def __init__(self, task: str, n: int, split: str = "test", seed: int = 0, corruption: Corruption | None = None,
                 cache: CorruptionCache | None = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        self.task, self.n, self.split, self.seed, self.corruption = task, n, split, seed, corruption
        self.cache = cache or CorruptionCache()

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int):
        return _scene(i, self.split, self.seed, 1 if self.task == "classification" else 3)

    def __getitem__(self, i: int):
        s = self.scene(i)
        clean = s.pixels
        if self.corruption is None:
            corrupted = clean
        else:
            rec = ImageRecord(f"shapes-{self.split}-{i}", clean)
            corrupted, _ = self.cache.get(clean, rec.digest, self.corruption)
        if self.task == "classification":
            target = torch.tensor(s.label, dtype=torch.long)
        elif self.task == "segmentation":
            target = torch.from_numpy(s.mask.astype(np.int64))
        else:
            target = {"boxes": torch.from_numpy(s.boxes), "labels": torch.from_numpy(s.labels) + 1}  # 0 = background
        return to_tensor(corrupted), to_tensor(clean), target, {"index": i}


@lru_cache(maxsize=2048)
def _scene(index: int, split: str, seed: int, max_objects: int):
    """Scenes are pure functions of their arguments: one evaluation scores the same scene under every corruption."""
    return generate_scene(index, split, seed, max_objects=max_objects)


def collate(batch):
    corrupted, clean, targets, metas = zip(*batch)
    if isinstance(targets[0], dict):
        target = list(targets)
    else:
        target = torch.stack(targets)
    return torch.stack(corrupted), torch.stack(clean), target, {"index": torch.tensor([m["index"] for m in metas])}


class ShapesTrainModule(L.LightningDataModule):
    """Clean shapes scenes for training task models (train split; val split for validation)."""

    def __init__(self, task: str, n_train: int = 2000, n_val: int = 200, batch_size: int = 32, seed: int = 0,
                 jpeg_qf_range: tuple[int, int] | None = None):
        super().__init__()
        self.task, self.n_train, self.n_val, self.batch_size, self.seed = task, n_train, n_val, batch_size, seed
        self.jpeg_qf_range = jpeg_qf_range

    def train_dataloader(self):
        # one worker draws scenes while the main process trains
        return DataLoader(ShapesTaskSet(self.task, self.n_train, "train", self.seed), batch_size=self.batch_size,
                          shuffle=True, collate_fn=collate, num_workers=1, persistent_workers=True)

    def val_dataloader(self):
        return DataLoader(ShapesTaskSet(self.task, self.n_val, "val", self.seed), batch_size=self.batch_size,
                          collate_fn=collate, num_workers=0)


class ShapesJPEGPairs(Dataset):
    """Training pairs for feature de-drifters and fine-tuning: (JPEG float CHW, clean float CHW, class) over the
    first `n_scenes` scenes of a split, each compressed once at a QF drawn from `qf_set` (then cropped to `crop`,
    where given: the class label then describes the whole scene). Item i is a pure
    function of (seed, i); `scene_seed` picks the shapes world (0: the one the shipped task models know)."""

    def __init__(self, qf_set: tuple[int, ...], length: int, n_scenes: int = 2000, split: str = "train",
                 seed: int = 0, scene_seed: int = 0, crop: int | None = None):
        if not qf_set:
            raise ValueError("ShapesJPEGPairs needs a non-empty QF set")
        if crop is not None and crop % 16:
            raise ValueError(f"crop {crop} must be a multiple of 16 (the 4:2:0 JPEG block grid)")
        self.qf_set, self.length, self.n_scenes, self.split, self.seed = tuple(qf_set), length, n_scenes, split, seed
        self.scene_seed, self.crop = scene_seed, crop

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        s = _scene(int(rng.integers(self.n_scenes)), self.split, self.scene_seed, 1)
        qf = int(self.qf_set[rng.integers(len(self.qf_set))])
        corrupted, clean = apply(s.pixels, Corruption("jpeg", (qf,)))[0], s.pixels
        if self.crop is not None and self.crop < min(clean.shape[:2]):
            # the whole scene is compressed, then a crop on its block grid is taken (features are local)
            y, x = (16 * rng.integers((n - self.crop) // 16 + 1) for n in clean.shape[:2])
            corrupted, clean = corrupted[y:y + self.crop, x:x + self.crop], clean[y:y + self.crop, x:x + self.crop]
        return (to_tensor(np.ascontiguousarray(corrupted)).float() / 255,
                to_tensor(np.ascontiguousarray(clean)).float() / 255, torch.tensor(s.label, dtype=torch.long))
