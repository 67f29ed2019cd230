"""LightningDataModules: full images for evaluation, seeded random crops for training."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.corruptions import Corruption, CorruptionCache, apply, is_clean_item
from datamodules.sources import (SAMPLE_TRAIN_IMAGES, SCORABLE_MIN_SIDE, DatasetError, ImageRecord, LoadReport,
                                 load_folder, load_samples,
                      as_y, dataset_label, resolve_dataset)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxW / HxWx3 -> uint8 CxHxW."""
    t = torch.from_numpy(np.array(pixels, copy=True))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


class CorruptedImages(Dataset):
    """(corrupted uint8 CHW, clean uint8 CHW, meta) for every image under one corruption."""

    def __init__(self, records: list[ImageRecord], corruption: Corruption, cache: CorruptionCache | None = None):
        self.records, self.corruption = records, corruption
        self.cache = cache or CorruptionCache()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        out, nbytes = self.cache.get(r.pixels, r.digest, self.corruption)
        h, w = r.pixels.shape[:2]
        meta = {"index": i, "name": r.name, "height": h, "width": w, "key": self.corruption.key,
                "bpp": 8.0 * nbytes / (h * w)}
        return to_tensor(out), to_tensor(r.pixels), meta


class EvalDataModule(L.LightningDataModule):
    """One test dataloader per corruption over one dataset (full images, batch size 1: sizes differ)."""

    def __init__(self, dataset: str, corruptions: list[Corruption], data_root: str | None = None,
                 cache: CorruptionCache | None = None, num_workers: int = 0):
        super().__init__()
        self.dataset, self.corruptions, self.data_root = dataset, list(corruptions), data_root
        self.cache, self.num_workers = cache or CorruptionCache(), num_workers
        self.report = LoadReport()
        self.records: list[ImageRecord] | None = None
        self.label = dataset

    def setup(self, stage: str | None = None) -> None:
        if self.records is None:
            self.records = resolve_dataset(self.dataset, self.data_root, self.report, SCORABLE_MIN_SIDE)
            self.label = dataset_label(self.dataset)  # what rows record: a folder by name and content, not path

    def test_dataloader(self):
        self.setup()
        return [DataLoader(CorruptedImages(self.records, c, self.cache), batch_size=1, shuffle=False,
                           num_workers=self.num_workers) for c in self.corruptions]


class RandomCrops(Dataset):
    """Seeded training pairs: crop (aligned to the 16-pixel 4:2:0 MCU grid), then compress at a random QF.

    Items are (corrupted, target, qf) float [0, 1] CHW crops and the QF of the input's compression.
    Item i is a pure function of (seed, i): same seed -> same crops, QFs and bytes, whatever the worker count.
    `noise2noise=True`: the target is a second, independent compression of the same crop (QF drawn again), so no
    clean image is ever seen (Noise2Noise training, N2N U-Net paper).
    `clean_share`: the share of items left uncompressed (input = target = the clean crop, QF 0), drawn from a
    stream of its own so that share 0 gives the very items of earlier runs.
    """

    def __init__(self, records: list[ImageRecord], qf_range=(5, 50), crop: int = 64, length: int = 16000,
                 seed: int = 0, subsampling: str = "420", noise2noise: bool = False, qf_set: tuple[int, ...] = (),
                 clean_share: float = 0.0):
        self.noise2noise, self.clean_share = noise2noise, float(clean_share)
        self.qf_set = tuple(qf_set)  # QFs to draw from (AFD's 25/18/15/10/7) instead of the range
        self.records = [r for r in records if min(r.pixels.shape[:2]) >= crop]
        if not self.records:
            raise DatasetError(f"no training image is at least {crop}x{crop}")
        self.qf_range, self.crop, self.length, self.seed, self.subsampling = qf_range, crop, length, seed, subsampling

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        r = self.records[rng.integers(len(self.records))]
        h, w = r.pixels.shape[:2]
        y = 16 * rng.integers((h - self.crop) // 16 + 1)
        x = 16 * rng.integers((w - self.crop) // 16 + 1)
        clean = r.pixels[y:y + self.crop, x:x + self.crop]
        k = rng.integers(4)  # flips/rotations
        clean = np.ascontiguousarray(np.rot90(clean, k) if k else clean)
        if clean.ndim == 3 and rng.random() < 0.5:
            clean = np.ascontiguousarray(clean[:, ::-1])
        qf = self._draw_qf(rng)
        if is_clean_item(self.seed, i, self.clean_share):
            return to_tensor(clean).float() / 255, to_tensor(clean).float() / 255, torch.tensor(0)
        corrupted, _ = apply(clean, Corruption("jpeg", (qf,), subsampling=self.subsampling))
        if self.noise2noise:
            qf2 = self._draw_qf(rng)
            clean, _ = apply(clean, Corruption("jpeg", (qf2,), subsampling=self.subsampling))
        # the QF is the label of DAGN's compression-sensitive auto-encoder; restorers ignore it
        return to_tensor(corrupted).float() / 255, to_tensor(clean).float() / 255, torch.tensor(qf)

    def _draw_qf(self, rng: np.random.Generator) -> int:
        if self.qf_set:
            return int(self.qf_set[rng.integers(len(self.qf_set))])
        return int(rng.integers(self.qf_range[0], self.qf_range[1] + 1))


def default_train_folder() -> Path | None:
    if os.environ.get("CARBENCH_TRAIN"):
        return Path(os.environ["CARBENCH_TRAIN"])
    guess = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "BSDS500_train"
    return guess if guess.is_dir() else None


def load_train_records(train_dir: str | None, color: bool = True) -> tuple[list[ImageRecord], str]:
    """Training images: a folder (default ../shared/data/train/BSDS500_train), else scikit-image's shipped photos
    that are *not* in the evaluation `samples` set; colour ones only for a colour network, their Y for a gray one."""
    folder = Path(train_dir) if train_dir else default_train_folder()
    if folder is not None:
        records, name = load_folder(folder), str(folder)
    else:
        records, name = load_samples(SAMPLE_TRAIN_IMAGES), "skimage-train"
    if color:
        records = [r for r in records if not r.is_gray] or records
    else:  # a gray network trains on MATLAB-Y images compressed as gray JPEGs, as the gray test sets are made
        records = as_y(records)
        name = f"{name} (MATLAB Y)"
    return records, name


class TrainDataModule(L.LightningDataModule):
    def __init__(self, train_dir: str | None = None, qf_range=(5, 50), crop: int = 64, batch_size: int = 16,
                 steps: int = 1000, seed: int = 0, num_workers: int = 1, val_images: int = 8, color: bool = True,
                 noise2noise: bool = False, qf_set: tuple[int, ...] = ()):
        super().__init__()
        # noise2noise changes training targets only: validation always scores against clean crops
        self.noise2noise, self.qf_set = noise2noise, tuple(qf_set)
        self.train_dir, self.qf_range, self.crop, self.batch_size = train_dir, qf_range, crop, batch_size
        self.steps, self.seed, self.num_workers, self.val_images, self.color = steps, seed, num_workers, val_images, color

    def setup(self, stage: str | None = None) -> None:
        records, self.source_name = load_train_records(self.train_dir, self.color)
        # hold out the last images for validation: never the test sets
        val, train = records[-self.val_images:], records[:-self.val_images] or records
        self.train_set = RandomCrops(train, self.qf_range, self.crop, self.steps * self.batch_size, self.seed,
                                     noise2noise=self.noise2noise, qf_set=self.qf_set)
        val_crop = min(self.crop * 2, min(min(r.pixels.shape[:2]) for r in val) // 16 * 16)
        self.val_set = RandomCrops(val, self.qf_range, max(val_crop, self.crop), 64, self.seed + 1, qf_set=self.qf_set)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=16, num_workers=0)
