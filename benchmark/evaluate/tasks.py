"""Downstream runs: for each task, corrupt -> (restore | nothing) -> task model -> task metric.

Per task, one `direct` job scores the uncorrupted images (`clean` rows) and every corruption without restoration
(`direct` rows); then one job per method: a restorer pre-processes the images, a feature de-drifter (`afd`,
`degradation_prior`) is inserted into the classifier, a fine-tuned classifier (`jpeg_finetune`) replaces it. In
classification methods are also scored on the clean images (codec `none`): every method on `shapes`, on real photos
the ones that change the classifier (de-drifters, fine-tuning). A failing job is reported with its
culprit and the others go on. Rows are long-format (one metric per row, values in percent) for `leaderboards/<task>.csv`.

Datasets: `shapes` (procedural, embedded; task models shipped) or a real layout `kind:PATH`:
`imagenet:DIR` (wnid folders), `imagenet-flat:DIR` (`<wnid>_*.JPEG`), `cub200:DIR`, `flowers102:DIR` for
classification, `coco:DIR` (val2017 + annotations) for detection, `voc:DIR` (VOC2012) for segmentation.
Detection also runs on unannotated photos (`photos:DIR`, any image folder, and the ImageNet layouts), scored
against two references named by the metric: `consistency_map*` (COCOeval with the detector's clean-image
detections scoring >= 0.3 as ground truth: the protocol when no annotations exist) and `label_proxy` (photos whose
ImageNet class is a COCO category: is a detection of that category scoring >= 0.3 there?). Segmentation on the
same photos (issue 29) scores a person segmenter (`selfie_seg`, the default there) against its own mask on the clean
photo, on the photos where that mask covers at least `TaskRequest.min_mask_share` of the pixels (the others are
skipped, counted and reported): `consistency_iou` (mean per-photo IoU of the person masks) and
`consistency_boundary_f` (mean per-photo boundary F-score, `benchmark.metrics.segmentation.boundary_f_score`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.boards import leaderboard, per_image
from benchmark.evaluate.common import (
    JobFailure,
    codec_lib,
    progress_bar,
    quiet_lightning,
    single_process,
)
from benchmark.evaluate import training_protocol
from benchmark.evaluate.score_cache import TaskReferenceResults, items_digest
from benchmark.evaluate.task_specs import (  # noqa: F401 -- the request vocabulary, light to import
    NO_RESTORATION,
    PHOTO_KINDS,
    REAL_DATASETS,
    TASKS,
    check_request,
    parse_dataset,
)
from benchmark.metrics import PerImageMean, task_metric
from benchmark.metrics.detection import LabelProxy
from benchmark.metrics.segmentation import (
    boundary_f_score,
    foreground_iou,
    per_image_counts,
)
from datamodules.corruptions import Corruption, CorruptionCache, codec_versions
from datamodules.sources import ImageRecord
from datamodules.tasks import ShapesTaskSet, collate
from lightning_modules import create
from lightning_modules.inference import plan_task_model
from lightning_modules.restorers import tiling
from lightning_modules.task_models import (
    DEFAULT_PHOTO_MODEL,
    DEFAULT_REAL_MODEL,
    create_task_model,
)

DIRECT, CLEAN = "direct", "clean"


# metric of the evaluator -> the row's metric name on unannotated photos (the reference named in the row)
PHOTO_METRICS = {"map": "consistency_map", "map_50": "consistency_map_50", "map_75": "consistency_map_75",
                 "label_proxy": "label_proxy"}
# segmentation on photos: the evaluator's per-photo means, named for their reference (the clean photo's mask)
PHOTO_SEG_METRICS = {"consistency_iou": "consistency_iou", "consistency_boundary_f": "consistency_boundary_f"}
MIN_MASK_SHARE = 0.1  # photos whose clean person mask covers less are skipped (counted and reported)


METRICS = {"classification": ("top1", "top5"), "detection": ("map", "map_50", "map_75"),
           "segmentation": ("mIoU", "mAcc", "aAcc")}


@dataclass
class TaskRequest:
    tasks: list[str]
    methods: list[str]
    corruptions: list[Corruption]
    dataset: str = "shapes"
    n_images: int | None = None  # shapes: scenes per task (default SHAPES_N); real sets: the first n (None = all)
    seed: int = 0
    task_model: str | None = None
    task_weights: str | None = None
    preset: str | None = None
    weights: str | None = None
    batch_size: int = 16
    tile: int | None = None  # restore in tiles of at most this side (overlap included)
    memory_budget: float | None = None  # GB; restoration tiles itself above it (None: $CARBENCH_MEMORY_BUDGET or 2)
    cache_dir: str | None = None
    use_cache: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    progress: bool = True
    imagenet_c_resave: bool = False
    wnids: str | None = None
    seg_mode: str = "whole"  # real PSPNet: mmseg's 'whole' or 'slide' inference
    add_reference: bool = True  # the `clean`/`direct` rows (False: only the methods, e.g. adding one to a board)
    loader_workers: int = 0  # DataLoader processes: corrupting/decoding beside the forwards (`benchmark bench`)
    min_mask_share: float = MIN_MASK_SHARE  # segmentation on photos: the clean mask's share a photo needs


SHAPES_N = {"classification": 300, "detection": 150, "segmentation": 150}


# ---- real layouts: (clean uint8 CHW, target, index) items under one corruption --------------------------------------
class CorruptedSet(Dataset):
    """Wraps a dataset of clean items into (corrupted, clean, target, {"index"}) under one corruption (None = clean)."""

    def __init__(self, clean_items: Dataset, corruption: Corruption | None, cache: CorruptionCache, name: str):
        self.items, self.corruption, self.cache, self.name = clean_items, corruption, cache, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        clean, target = self.items[i]
        if self.corruption is None:
            return clean, clean, target, {"index": i}
        px = np.ascontiguousarray(clean.permute(1, 2, 0).numpy())
        out, _ = self.cache.get(px, ImageRecord(f"{self.name}-{i}", px).digest, self.corruption)
        return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous(), clean, target, {"index": i}


class CleanItems(Dataset):
    """Clean `(uint8 CHW image, target)` items of a real layout (the first `n`); classification images are the
    classifier's centre crops (`preprocess`; None = ImageNet-C's 224), decoded once per run (`DecodedCrops`: bad
    files named, skipped and counted); detection targets keep boxes and COCO category ids."""

    def __init__(self, kind: str, root: str, n: int | None = None, wnids: str | None = None, preprocess=None,
                 progress: bool = False, task: str = "classification"):
        self.skipped: list[tuple[str, str]] = []
        self.converted: list[tuple[str, str]] = []
        if task in ("detection", "segmentation") and kind in PHOTO_KINDS:
            from datamodules.photos import PhotoDetectionSet

            self.base = PhotoDetectionSet(root, "folder" if kind == "photos" else kind, n, progress)
            self.skipped, self.converted = self.base.skipped, self.base.converted
        elif kind in ("imagenet", "imagenet-flat", "cub200", "flowers102"):
            from datamodules import classification as C

            layout = {"imagenet": C.imagenet_folders, "imagenet-flat": C.imagenet_flat,
                      "cub200": C.cub200, "flowers102": C.flowers102}[kind]
            labeled = layout(root, wnids) if kind.startswith("imagenet") else layout(root)
            samples = labeled.samples if n is None else labeled.samples[:n]
            self.base = C.DecodedCrops(samples, preprocess, progress, labeled.skipped if n is None else ())
            self.skipped, self.converted = self.base.skipped, self.base.converted
        elif kind == "coco":
            from datamodules.detection import CocoDetection

            self.base = CocoDetection(root)
        elif kind == "voc":
            from datamodules.segmentation import VOCSegmentation

            self.base = VOCSegmentation(root)
        else:
            raise ValueError(f"unknown dataset kind {kind!r}: use one of {', '.join(REAL_DATASETS)}")
        self.kind, self.n = kind, len(self.base) if n is None else min(n, len(self.base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        item = self.base[i]
        if self.kind == "coco":
            return item[0], {"boxes": item[1]["boxes"], "labels": item[1]["labels"]}  # the boxes COCOeval needs
        return item[0], item[1]


_LABELS: dict[tuple, str] = {}  # (spec, folder, its mtime) -> label: a folder is listed once per run, not per row


def dataset_label(spec: str, n_images: int | None = None) -> str:
    """The name rows carry, without the machine path: `shapes`; a set whose folder names it keeps that name
    (`imagenet-flat:../shared/data/train/ImageNet_sample1000` -> `imagenet-sample1000`, `coco:/data/coco` -> `coco`);
    any other folder is named by its name and content as fidelity rows name one (`datamodules.sources.folder_label`):
    `photos:DIR` -> `folder:NAME@HASH`, `imagenet-flat:DIR/pics` -> `imagenet-flat:pics@HASH`, so two folders of one
    name are two datasets. A subset of the first n images gets `[:n]`."""
    kind, root = parse_dataset(spec)
    if kind == "shapes":
        return "shapes"
    folder = Path(root).resolve()
    name = folder.name.lower().replace("_", "-")
    if kind != "photos" and name.startswith(kind.split("-")[0]):
        label = name
    elif not folder.is_dir():
        label = f"{kind}:{name}"  # nothing to hash (the run itself names the missing folder)
    else:
        key = (spec, str(folder), folder.stat().st_mtime_ns)
        if key not in _LABELS:
            from datamodules.photos import photo_paths
            from datamodules.sources import folder_label

            if kind in PHOTO_KINDS:
                files = photo_paths(folder, "folder" if kind == "photos" else kind)
            else:  # annotated layouts: every file (images and annotations)
                files = sorted(p for p in folder.rglob("*") if p.is_file())
            _LABELS[key] = folder_label(folder, files, "folder" if kind == "photos" else kind)
        label = _LABELS[key]
    return f"{label}[:{n_images}]" if n_images else label


def _loaders(task: str, req: TaskRequest, corruptions: list[Corruption | None], cache: CorruptionCache,
             items: Dataset | None = None):
    kind, _ = parse_dataset(req.dataset)
    if kind == "shapes":
        n = req.n_images or SHAPES_N[task]
        sets = [ShapesTaskSet(task, n, "test", req.seed, c, cache) for c in corruptions]
        bs = req.batch_size
    else:
        sets = [CorruptedSet(items, c, cache, kind) for c in corruptions]
        bs = req.batch_size if task == "classification" else 1  # real detection/segmentation images differ in size
    return [DataLoader(s, batch_size=bs, collate_fn=collate, num_workers=req.loader_workers) for s in sets]


def _resaved(c: Corruption, resave: bool) -> Corruption:
    """ImageNet-C's released files: the JPEG corruption, then a re-save at quality 85."""
    from datamodules.classification import IMAGENET_C_RESAVE_QF

    return Corruption(c.codec, c.qf + (IMAGENET_C_RESAVE_QF,), subsampling=c.subsampling, seed=c.seed) if resave else c


def run_tasks(req: TaskRequest, on_rows: Callable[[str, list[dict]], None] | None = None
              ) -> tuple[dict[str, list[dict]], list[JobFailure]]:
    """-> ({task: rows}, failures); `on_rows(task, job_rows)` is called with each finished job's rows (a task's
    `direct` job first), before the next job starts."""
    quiet_lightning()
    kind = check_request(req.tasks, req.dataset)
    corruptions = [_resaved(c, req.imagenet_c_resave and kind != "shapes") for c in req.corruptions]
    restorers = [m for m in dict.fromkeys(req.methods) if m not in NO_RESTORATION]
    cache = CorruptionCache(req.cache_dir, enabled=req.use_cache)
    versions = codec_versions()
    rows: dict[str, list[dict]] = {t: [] for t in req.tasks}
    failures: list[JobFailure] = []
    for task in req.tasks:
        try:
            defaults = DEFAULT_PHOTO_MODEL if kind in PHOTO_KINDS else DEFAULT_REAL_MODEL
            model_name = req.task_model or (None if kind == "shapes" else defaults[task])
            tm = create_task_model(task, model_name, req.task_weights)
            if hasattr(tm.net, "mode"):  # MMSegInference
                tm.net.mode = req.seg_mode
            items = None
            if kind != "shapes":  # decoded once for every job of this task
                items = CleanItems(kind, parse_dataset(req.dataset)[1], req.n_images, req.wnids, tm.preprocess,
                                   req.progress, task)
                if items.skipped:
                    print(f"{task}: {len(items.skipped)} file(s) skipped: "
                          + "; ".join(f"{Path(p).name} ({why})" for p, why in items.skipped[:5]), file=sys.stderr)
                if items.converted:
                    print(f"{task}: {len(items.converted)} file(s) converted to RGB: "
                          + ", ".join(Path(p).name for p, _ in items.converted[:5])
                          + (" ..." if len(items.converted) > 5 else ""), file=sys.stderr)
            images = _ImageIds(req, cache)
            photos = task == "detection" and kind in PHOTO_KINDS
            if photos:  # the ground truth of consistency mAP: the detector's own clean-image detections
                items = pseudo_labelled(items, tm, cache, req.progress)
            photo_masks = task == "segmentation" and kind in PHOTO_KINDS
            if photo_masks:  # the reference: the segmenter's own mask on each clean photo, photos selected by it
                if tm.num_classes != 2:
                    raise ValueError(f"{tm.name} is not a person segmenter: photos are scored with selfie_seg or "
                                     "meet_seg (background / person)")
                items = pseudo_masked(items, tm, req.min_mask_share, req.progress)
        except Exception as e:  # noqa: BLE001 -- reported with its culprit, the other tasks go on
            failures.append(JobFailure(f"{task} model", req.dataset, f"{type(e).__name__}: {e}"))
            continue
        for method in ([DIRECT] if req.add_reference or not restorers else []) + restorers:
            t0 = time.time()
            scored, plugged = None, None
            try:
                scored = None if method == DIRECT else create(method, _preset_for(method, req.preset, tm.name),
                                                              req.weights)
                method_kind = getattr(scored, "kind", "restorer")
                # classification methods are also scored on the clean images: what they cost there (Table X); on
                # real photos only the methods that change the classifier (de-drifters, fine-tuning)
                on_clean = method == DIRECT or (task == "classification"
                                                and (kind == "shapes" or method_kind != "restorer"))
                job = [None] + corruptions if on_clean else list(corruptions)
                net, restorer = tm.net, None if method_kind != "restorer" else scored
                if method_kind != "restorer":
                    if task != "classification":
                        raise ValueError(f"{method} works inside a classifier; it has no {task} form")
                    plugged = net = scored.attach(tm.net, tm.name)  # de-drifter inserted / classifier replaced
                stored = _direct_results(task, tm, req, items, cache) if method == DIRECT else None
                cached = stored.results(job) if stored is not None else None
                if cached is not None and any("per_image" not in r for r in cached):
                    cached = None  # stored before per-image values were kept: score again, once
                if cached is not None:  # nothing in the loop changes these: the task model on (corrupted) images
                    job_rows = []
                    for c, res in zip(job, cached):
                        job_rows += _rows(task, tm, scored, req, c, res, versions, time.time() - t0,
                                          images(task, items))
                    rows[task] += job_rows
                    if on_rows is not None and job_rows:
                        on_rows(task, job_rows)
                    continue
                # photos: the clean row scores the clean detections already made for the ground truth
                known = [photo_clean_results(items)] if photos and job[0] is None else []
                loaders = _loaders(task, req, job[len(known):], cache, items)
                ev = TaskEvaluator(task, net, len(loaders), tm.num_classes, restorer, req.tile, label_proxy=photos,
                                   memory_budget=req.memory_budget, forward_name=tm.name if net is tm.net else None,
                                   mask_consistency=photo_masks)
                trainer = L.Trainer(accelerator=req.accelerator, devices=req.devices, strategy=req.strategy,
                                    logger=False, enable_checkpointing=False, enable_model_summary=False,
                                    enable_progress_bar=req.progress, callbacks=progress_bar(req.progress),
                                    inference_mode=True)
                trainer.test(ev, dataloaders=loaders, verbose=False)
            except Exception as e:  # noqa: BLE001
                failures.append(JobFailure(f"{task}/{method}", req.dataset, f"{type(e).__name__}: {e}"))
                continue
            finally:
                if hasattr(plugged, "detach_hook"):  # the shared classifier leaves the job as it came
                    plugged.detach_hook()
            if trainer.global_rank != 0:
                continue
            results = known + ev.results
            if stored is not None:
                stored.store(job, results)
            seconds = time.time() - t0
            job_rows = []
            for c, res in zip(job, results):
                job_rows += _rows(task, tm, scored, req, c, res, versions, seconds, images(task, items))
            rows[task] += job_rows
            if on_rows is not None and job_rows:
                on_rows(task, job_rows)
    return rows, failures


def pseudo_labelled(photos: Dataset, tm, cache: CorruptionCache, progress: bool) -> Dataset:
    """The photos with the detector's clean-image detections scoring >= LABEL_PROXY_SCORE as their boxes; computed
    once per (detector, weights, photos) and cached beside the corruptions."""
    from benchmark.evaluate.score_cache import PseudoBoxes
    from benchmark.metrics.detection import LABEL_PROXY_SCORE
    from datamodules.photos import WithPseudoBoxes

    store = PseudoBoxes(cache, tm.name, _weights_key(tm), items_digest(photos), LABEL_PROXY_SCORE)
    boxes = store.load(len(photos))
    if boxes is None:
        from tqdm.auto import tqdm

        boxes = []
        it = tqdm(range(len(photos)), desc=f"{tm.name} on the clean photos", leave=False, file=sys.stderr,
                  disable=not progress)
        forward = plan_task_model(tm.net, tm.name)
        with torch.inference_mode():
            for i in it:
                (out,) = forward([photos[i][0].float() / 255.0])
                keep = out["scores"] >= LABEL_PROXY_SCORE
                boxes.append({k: out[k][keep].cpu() for k in ("boxes", "labels", "scores")})
        store.save(boxes)
    return WithPseudoBoxes(photos, boxes)


def pseudo_masked(photos: Dataset, tm, min_share: float, progress: bool) -> Dataset:
    """The photos whose clean mask (the segmenter's argmax on the clean photo) covers at least `min_share` of their
    pixels, with that mask as their target; the skipped photos are counted and reported on stderr."""
    from tqdm.auto import tqdm

    from datamodules.photos import WithPseudoMasks

    masks = []
    forward = plan_task_model(tm.net, tm.name)
    it = tqdm(range(len(photos)), desc=f"{tm.name} on the clean photos", leave=False, file=sys.stderr,
              disable=not progress)
    with torch.inference_mode():
        for i in it:
            masks.append(forward(photos[i][0][None].float() / 255.0).argmax(1)[0].cpu())
    selected = WithPseudoMasks(photos, masks, min_share)
    print(f"segmentation: {len(selected)} of {len(photos)} photos selected (the clean {tm.name} mask covers >= "
          f"{min_share:.0%} of the pixels); {len(selected.skipped)} skipped"
          + (": " + ", ".join(f"{n} ({s:.1%})" for n, s in selected.skipped[:5]) if selected.skipped else "")
          + (" ..." if len(selected.skipped) > 5 else ""), file=sys.stderr)
    return selected


def photo_clean_results(items: Dataset) -> dict:
    """The clean row on photos from the stored clean detections: consistency mAP against themselves (100 by
    construction, the reference point) and the label proxy; no second detector pass."""
    from benchmark.metrics.detection import DetectionMAP

    cmap, proxy = DetectionMAP(), LabelProxy()
    for i in range(len(items)):
        target, ids = items[i][1], torch.tensor([i])
        out = {"boxes": target["boxes"], "labels": target["labels"], "scores": items.boxes[i]["scores"]}
        cmap.update([out], [target], ids)
        proxy.update([out], [target], ids)
    out = {**cmap.compute(), **proxy.compute(), "n_images": len(items)}
    if cmap.matches is not None and cmap.matches.n_images == len(items):
        out["per_image"] = {"ids": cmap.matches.image_ids.tolist(), "matches": cmap.matches.to_json()}
    if proxy.hits is not None:
        out["per_image_proxy"] = {"ids": proxy.hits[0].tolist(), "label_proxy": proxy.hits[1].tolist()}
    return out


def _model_sha256(tm) -> str:
    """The row's `model_weights_sha256`: the user-given weights file's digest ("" for the default weights)."""
    return leaderboard.weights_sha256(tm.weights_file) if getattr(tm, "weights_file", "") else ""


def _weights_key(tm) -> str:
    try:  # the file's bytes, where there is one (a user's TF.js graph: its .bin)
        return f"{tm.weights}@{leaderboard.weights_sha256(tm.weights)}" + \
            (f"@{_model_sha256(tm)}" if getattr(tm, "weights_file", "") else "")
    except (OSError, ValueError):
        return str(tm.weights)  # a package's weights: its name and version


def _direct_results(task: str, tm, req: TaskRequest, items: Dataset | None, cache: CorruptionCache):
    """The cache of this task's `clean`/`direct` results, keyed by the task model, its weights and the content of the
    clean items; None where results are not cacheable (several processes: each sees a share)."""
    if not cache.enabled or not single_process(req.devices, req.strategy):
        return None
    if items is None:  # shapes: the procedural scenes themselves
        items = ShapesTaskSet(task, req.n_images or SHAPES_N[task], "test", req.seed, None, cache)
    return TaskReferenceResults(cache, task, tm.name, _weights_key(tm), items_digest(items))


def _preset_for(method: str, preset: str | None, task_model: str) -> str | None:
    """A plug-in method named without a preset takes the preset trained for this classifier where there is one
    (`afd` on efficientnet_lite0 -> `afd.lite0`)."""
    from lightning_modules.registry import get_entry, split_name

    name, named = split_name(method, preset)
    if named:
        return named
    short = task_model.replace("efficientnet_", "")
    try:
        return short if short in get_entry(name).presets else None
    except ValueError:
        return None


class _ImageIds:
    """(names, content digests) of a task set's clean items in index order, computed once per task on first use
    (the per-image files)."""

    def __init__(self, req: TaskRequest, cache: CorruptionCache):
        self.req, self.cache, self.value = req, cache, None

    def __call__(self, task: str, items: Dataset | None):
        if self.value is None or self.value[0] != task:
            import hashlib

            if items is None:  # shapes: the procedural scenes themselves
                n = self.req.n_images or SHAPES_N[task]
                items = ShapesTaskSet(task, n, "test", self.req.seed, None, self.cache)
                names = [f"shapes-{task[:3]}-{self.req.seed}-{i}" if task != "classification"
                         else f"shapes-{self.req.seed}-{i}" for i in range(n)]
            else:
                base = getattr(items, "base", None)
                known = list(getattr(items, "names", None) or getattr(base, "names", None) or [])
                names = [str(known[i]) if i < len(known) else str(i) for i in range(len(items))]
            digests = []
            for i in range(len(items)):
                item = items[i]
                px = item[1] if len(item) == 4 else item[0]  # (corrupted, clean, target, meta) or (clean, target)
                px = px.detach().cpu().numpy() if isinstance(px, torch.Tensor) else np.asarray(px)
                h = hashlib.blake2b(digest_size=16)
                h.update(str(px.shape).encode())
                h.update(np.ascontiguousarray(px).tobytes())
                digests.append(h.hexdigest())
            self.value = (task, names, digests)
        return self.value[1:]


def _rows(task, tm, scored, req: TaskRequest, c: Corruption | None, res: dict, versions, seconds, images=None):
    """Rows of one (method, corruption) result; `scored` is the method's module (None: the plain task model);
    `images`: (names, digests) by item index, for the per-image values of classification rows."""
    method_name = (CLEAN if c is None else DIRECT) if scored is None else scored.method_name
    preset = "" if scored is None else scored.preset_name
    if c is None:
        codec, qf, passes, sub = "none", "", 0, ""
    else:
        codec, qf, passes, sub = c.codec, c.qf_label, c.passes, c.subsampling
    dataset = dataset_label(req.dataset, req.n_images)
    if task == "segmentation" and parse_dataset(req.dataset)[0] in PHOTO_KINDS:  # the photos the clean mask selects
        dataset += f"[mask>={req.min_mask_share:g}]"
    base = {
        "task": task, "model": tm.name, "method": method_name, "preset": preset,
        "dataset": dataset,
        "codec": codec, "qf": qf, "passes": passes, "subsampling": sub, "seed": req.seed, "n_images": res["n_images"],
        "source": "measured", "model_weights": tm.weights, "model_weights_sha256": _model_sha256(tm),
        "weights": "" if scored is None else scored.weights_path,
        "weights_sha256": "" if scored is None else
        leaderboard.weights_sha256(getattr(scored, "weights_file", "") or scored.weights_path),
        # how that file was trained (the checkpoint's record; "" without a file)
        "protocol": "" if scored is None else
        training_protocol.of_weights(getattr(scored, "weights_file", "") or scored.weights_path),
        "codec_lib": codec_lib(codec, versions) if c is not None else "",
        "carbench_version": leaderboard.carbench_version(), "git_commit": leaderboard.git_commit(),
        "command": leaderboard.command(),
        "created_at": leaderboard.now(), "seconds": round(seconds, 1),
    }
    scale = 1.0 if task == "classification" else 100.0  # every value in percent, as the papers print them
    on_photos = parse_dataset(req.dataset)[0] in PHOTO_KINDS
    names = PHOTO_METRICS if task == "detection" and on_photos else \
        PHOTO_SEG_METRICS if task == "segmentation" and on_photos else {m: m for m in METRICS[task]}
    out = []
    for metric, name in names.items():
        if metric in res and res[metric] == res[metric]:  # skip NaN (e.g. top5 with < 5 classes, AP75 w/o boxes)
            n = res["n_label"] if metric == "label_proxy" else res["n_images"]
            out.append({**base, "metric": name, "value": scale * res[metric], "n_images": n})
            kept = _per_image_values(task, metric, res, images)
            if kept is not None:
                out[-1][per_image.KEY] = kept
    return out


def _per_image_values(task: str, metric: str, res: dict, images) -> dict | None:
    """A row's per-image values (benchmark.boards.per_image.KEY): classification its 0/1 outcomes, segmentation
    the per-image counts, detection the per-image COCOeval matches (`_matches`) or the label-proxy hits."""
    values = res.get("per_image_proxy" if metric == "label_proxy" else "per_image")
    if images is None or not values:
        return None
    ids = [int(i) for i in values["ids"]]
    if task in ("classification", "detection") and metric != "label_proxy" and len(ids) != len(images[0]):
        return None  # a share of the images (e.g. one process's)
    if any(i < 0 or i >= len(images[0]) for i in ids):
        return None
    kept = {"image": [images[0][i] for i in ids], "digest": [images[1][i] for i in ids]}
    if task == "detection" and metric != "label_proxy":
        from benchmark.metrics.coco_resample import Matches

        kept["_matches"] = Matches.from_json(values["matches"])
    elif task == "segmentation":
        if len(ids) != len(images[0]):
            return None
        kept.update({k: list(v) for k, v in values.items() if k != "ids"})
    elif metric in values:
        kept[metric] = list(values[metric])
    else:
        return None
    return kept


def format_task_table(task: str, rows: list[dict]) -> str:
    """Wide table per task: one line per (method, corruption), metrics as columns, Δ vs `direct` on the first, and
    the published value of the first metric where a paper reports this protocol (direct rows and `.paper` presets)."""
    from benchmark.boards.published import task_value

    if not rows:
        return f"{task}: (no results)"
    known = METRICS[task] + (tuple(PHOTO_METRICS.values()) if task == "detection" else
                             tuple(PHOTO_SEG_METRICS.values()) if task == "segmentation" else ())
    metrics = [m for m in known if any(r["metric"] == m for r in rows)]
    lines: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["method"], r["preset"], r["codec"], r["qf"], r["passes"], r["dataset"])
        lines.setdefault(key, {"n": r["n_images"]})[r["metric"]] = r["value"]
        if r.get("_paired") is not None:
            lines[key]["_paired_" + r["metric"]] = r["_paired"]
    direct = {(k[0], k[3], k[4], k[5], k[6]): v for k, v in lines.items() if k[1] in (DIRECT, CLEAN)}
    header = ["model", "method", "preset", "codec", "qf", "pass", "n", *metrics, f"d{metrics[0]}", f"paper {metrics[0]}"]
    table = []
    for k, v in lines.items():
        ref = direct.get((k[0], k[3], k[4], k[5], k[6]))
        delta = "" if ref is None or k[1] in (DIRECT, CLEAN) else f"{v[metrics[0]] - ref[metrics[0]]:+.2f}"
        if v.get("_paired_" + metrics[0]) is not None:  # the paired 95 % interval over the per-image files
            delta = v["_paired_" + metrics[0]].format()
        paper = None
        if k[1] == DIRECT or k[2] == "paper":
            paper = task_value(task, k[6].partition(":")[0], k[0], k[1], k[3], str(k[4]), metrics[0])
        table.append([k[0], k[1], k[2], k[3], str(k[4]), str(k[5] or ""), str(v["n"]),
                      *(f"{v[m]:.2f}" if m in v else "-" for m in metrics), delta, "" if paper is None else f"{paper:g}"])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([f"[{task}] {rows[0]['dataset']} (percent)", fmt(header), fmt(["-" * w for w in widths]),
                      *map(fmt, table)])



class TaskEvaluator(L.LightningModule):
    def __init__(self, task: str, task_model: nn.Module, n_corruptions: int, num_classes: int,
                 restorer: L.LightningModule | None = None, tile: int | None = None, label_proxy: bool = False,
                 memory_budget: float | None = None, forward_name: str | None = None,
                 mask_consistency: bool = False):
        super().__init__()
        self.task, self.task_model, self.restorer, self.tile = task, task_model.eval(), restorer, tile
        self.memory_budget = memory_budget
        # the task model under its measured forward plan (`forward_name`: the plain task model's name; a plugged or
        # replaced classifier runs its own forward); kept out of the module tree
        self.__dict__["task_forward"] = plan_task_model(self.task_model, forward_name) if forward_name \
            else self.task_model
        self.scores = nn.ModuleList(task_metric(task, num_classes) for _ in range(n_corruptions))
        # unannotated photos: also "is the photo's ImageNet class detected?"
        self.proxy = nn.ModuleList(LabelProxy() for _ in range(n_corruptions)) if label_proxy else None
        self.seen = nn.ModuleList(PerImageMean() for _ in range(n_corruptions))  # distinct images scored
        # segmentation on photos: the per-photo boundary F-score against the clean photo's mask
        self.boundary = nn.ModuleList(PerImageMean() for _ in range(n_corruptions)) if mask_consistency else None
        self.results: list[dict] = []

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        corrupted, _, target, meta = batch
        x = corrupted.float() / 255.0
        if self.restorer is not None:
            x = tiling.restore(self.restorer, x, self.tile, self.memory_budget,
                               name=f"images {meta['index'].tolist()}")
            if not torch.isfinite(x).all():
                raise ValueError(f"method {getattr(self.restorer, 'method_name', '?')!r} produced NaN/inf "
                                 f"(images {meta['index'].tolist()})")
            x = (x.clamp(0, 1) * 255).round() / 255  # restored images are 8-bit images, as saved
        ids = meta["index"]
        self.seen[dataloader_idx].update(torch.ones(len(ids), dtype=torch.float64), ids)
        metric = self.scores[dataloader_idx]
        if self.task == "classification":
            # a cross-fitted classifier (jpeg_finetune.lite0) picks its fold copy by the label's fold, nothing else
            logits = self.task_model(x, target) if getattr(self.task_model, "routes_by_label", False) \
                else self.task_forward(x)
            metric.update(logits, target, ids=ids)
        elif self.task == "segmentation":
            pred = self.task_forward(x).argmax(1)
            metric.update(pred, target, ids=ids)
            if self.boundary is not None:
                f = [boundary_f_score(p.cpu().numpy() == 1, t.cpu().numpy() == 1) for p, t in zip(pred, target)]
                self.boundary[dataloader_idx].update(torch.tensor(f, dtype=torch.float64), ids)
        else:
            outputs = self.task_forward(list(x))
            metric.update(outputs, target, ids)
            if self.proxy is not None:
                self.proxy[dataloader_idx].update(outputs, target, ids)

    def on_test_epoch_end(self) -> None:
        self.results = []
        for metric, seen in zip(self.scores, self.seen):
            values = metric.compute()
            values = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor) or v.numel() == 1}
            values["n_images"] = seen.n_images()
            if self.task == "classification":  # per-image 0/1 correctness, for the paired intervals
                with metric.sync_context():  # under DDP: every process's images, the sampler's repeats once
                    ids, correct = metric.per_image()
                if len(ids) == values["n_images"]:
                    values["per_image"] = {"ids": ids.tolist(),
                                           **{f"top{k}": correct[:, i].tolist() for i, k in enumerate(metric.k)}}
            if self.task == "segmentation":  # per-image counts: mIoU & co. of any resample of the images
                with metric.sync_context():
                    ids, conf = metric.per_image()
                if len(ids) == values["n_images"]:
                    values["per_image"] = {"ids": ids.tolist(), **per_image_counts(conf)}
                if self.boundary is not None:  # photos: per-photo person IoU and boundary F, and their means
                    boundary = self.boundary[len(self.results)]
                    with boundary.sync_context():
                        b_ids, b_values = boundary.per_image()
                    if not torch.equal(b_ids.cpu(), ids.cpu()):
                        raise RuntimeError("boundary scores and confusion matrices cover different photos")
                    counts = per_image_counts(conf)
                    iou = foreground_iou(counts["inter_01"], counts["union_01"])
                    values["consistency_iou"] = float(iou.mean())
                    values["consistency_boundary_f"] = float(b_values.double().mean())
                    if "per_image" in values:
                        values["per_image"]["consistency_iou"] = iou.tolist()
                        values["per_image"]["consistency_boundary_f"] = b_values.double().tolist()
                    boundary.reset()
            # detection: compute() ran on every process's rows
            if self.task == "detection" and metric.matches is not None and \
                    metric.matches.n_images == values["n_images"]:
                values["per_image"] = {"ids": metric.matches.image_ids.tolist(),
                                       "matches": metric.matches.to_json()}
            if self.proxy is not None:
                proxy = self.proxy[len(self.results)]
                values.update(proxy.compute())
                if proxy.hits is not None:
                    values["per_image_proxy"] = {"ids": proxy.hits[0].tolist(), "label_proxy": proxy.hits[1].tolist()}
                proxy.reset()
            self.results.append(values)
            metric.reset()
            seen.reset()
