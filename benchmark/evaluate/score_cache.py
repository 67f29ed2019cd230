"""Scores that cannot change, cached beside the corruption they score.

The `jpeg` reference row scores the decoded corruption itself: its per-image PSNR / SSIM / PSNR-B and bpp are a
function of (image content, corruption key, channels, metric kernels) only. They are stored next to the cached
pixels (`<digest>/<corruption>.scores-<channels>-v<METRICS_VERSION>.json`), so a re-run reads 4 numbers per image
instead of decoding and scoring; `METRICS_VERSION` changes whenever a kernel's values change, which orphans the old
entries instead of serving them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmark.metrics import METRICS_VERSION
from datamodules.corruptions import Corruption, CorruptionCache, atomic_write

FIELDS = ("psnr", "ssim", "psnrb", "bpp")


class ReferenceScores:
    """Per-image reference scores on disk, keyed by (image digest, corruption key, channels, metric version)."""

    def __init__(self, cache: CorruptionCache, channels: str):
        self.cache, self.channels = cache, channels

    def _path(self, digest: str, corruption: Corruption) -> Path:
        raw, _ = self.cache.paths(digest, corruption)
        return raw.with_name(f"{corruption.file_key}.scores-{self.channels}-v{METRICS_VERSION}.json")

    def results(self, records, corruptions: list[Corruption]) -> list[dict] | None:
        """The evaluator's `results` (one dict per corruption) when every image is cached, else None."""
        if not self.cache.enabled:
            return None
        results = []
        for c in corruptions:
            per_image = []
            for r in records:
                try:
                    per_image.append(json.loads(self._path(r.digest, c).read_text()))
                except (OSError, ValueError):  # absent, or a damaged entry: score it again
                    return None
            if any(set(FIELDS) - set(v) for v in per_image):
                return None
            # the metrics' own reduction: float64 per-image values in image order, then the mean
            res = {k: float(torch.tensor([v[k] for v in per_image], dtype=torch.float64).mean()) for k in FIELDS}
            res["n_images"] = len(per_image)
            res["per_image"] = {k: [float(v[k]) for v in per_image] for k in FIELDS}  # in record order
            results.append(res)
        return results

    def store(self, records, corruptions: list[Corruption], per_image: list[dict[str, torch.Tensor]]) -> None:
        """Write each image's scores (per corruption: {field: values in image order})."""
        if not self.cache.enabled:
            return
        for c, values in zip(corruptions, per_image):
            if any(len(values[k]) != len(records) for k in FIELDS):
                continue  # a partial set (e.g. one DDP rank's share) is never cached
            for i, r in enumerate(records):
                path = self._path(r.digest, c)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps({k: float(values[k][i]) for k in FIELDS}).encode())


def items_digest(dataset) -> str:
    """Content digest of a task set's clean items (images and targets), whatever produced them (procedural scenes,
    decoded photos): what the `clean`/`direct` results of a fixed task model depend on."""
    import hashlib

    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    for i in range(len(dataset)):
        item = dataset[i]
        for part in item[:2] if isinstance(item, tuple) else (item,):
            _update(h, part, np)
    return h.hexdigest()


def _update(h, part, np) -> None:
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    if isinstance(part, np.ndarray):
        h.update(f"{part.dtype}{part.shape}".encode())
        h.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(part, dict):
        for k in sorted(part):
            h.update(str(k).encode())
            _update(h, part[k], np)
    else:
        h.update(repr(part).encode())


class TaskReferenceResults:
    """`clean` and `direct` task results (no method in the loop) on disk, one JSON per (task, task model and its
    weights, content of the clean items, corruption key, metric version): a warm re-run skips the direct job."""

    def __init__(self, cache: CorruptionCache, task: str, model: str, weights: str, items: str):
        import hashlib

        self.enabled = cache.enabled
        ident = json.dumps([task, model, weights, items, METRICS_VERSION])
        self.folder = cache.root.parent / "task-scores" / hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()

    def _path(self, corruption: Corruption | None) -> Path:
        return self.folder / f"{'clean' if corruption is None else corruption.file_key}.json"

    def results(self, corruptions: list[Corruption | None]) -> list[dict] | None:
        if not self.enabled:
            return None
        try:
            return [json.loads(self._path(c).read_text()) for c in corruptions]
        except (OSError, ValueError):
            return None

    def store(self, corruptions: list[Corruption | None], results: list[dict]) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for c, res in zip(corruptions, results):
            atomic_write(self._path(c), json.dumps({k: (float(v) if isinstance(v, float) else v)
                                                    for k, v in res.items()}).encode())


class PseudoBoxes:
    """A detector's clean-image detections (boxes, labels above a score) per photo: the ground truth of consistency
    mAP, stored once per (detector, its weights, the photos' content, the score threshold)."""

    def __init__(self, cache: CorruptionCache, model: str, weights: str, items: str, score: float):
        import hashlib

        self.enabled = cache.enabled
        ident = json.dumps([model, weights, items, score, "boxes+labels+scores"])
        self.path = cache.root.parent / "pseudo-boxes" / f"{hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()}.pt"

    def load(self, n: int) -> list[dict[str, torch.Tensor]] | None:
        if not self.enabled:
            return None
        try:
            boxes = torch.load(self.path, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):  # absent or damaged: detect again
            return None
        return boxes if isinstance(boxes, list) and len(boxes) == n else None

    def save(self, boxes: list[dict[str, torch.Tensor]]) -> None:
        if not self.enabled:
            return
        import io

        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(boxes, buf)
        atomic_write(self.path, buf.getvalue())
