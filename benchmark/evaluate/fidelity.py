"""Fidelity: restore each test image and score it (PSNR, SSIM, PSNR-B, bpp; LPIPS, FID and KID on request); the
runner and its evaluator.

One job = one (method, dataset): a single `Trainer.test` over one dataloader per corruption. A failing job (bad
weights, NaN output, missing data) is reported with its culprit and the other jobs go on; every finished job's rows
are handed to `on_rows` as the job ends (the CLI writes them then: an interrupted run keeps its finished jobs).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from benchmark.boards import leaderboard, per_image, published
from benchmark.evaluate.common import JobFailure, codec_lib, progress_bar, quiet_lightning, single_process
from benchmark.evaluate.score_cache import ReferenceScores
from benchmark.metrics import (
    DEFAULT_METRICS,
    DISTRIBUTION_METRICS,
    FIDELITY_METRICS,
    PERCEPTUAL_METRICS,
    PerImageMean,
    fidelity_metrics,
    refuse_ddp,
    to_uint8,
)
from datamodules.corruptions import Corruption, CorruptionCache, codec_versions
from datamodules.fidelity import EvalDataModule
from lightning_modules import create
from lightning_modules.registry import MethodError
from lightning_modules.restorers import tiling

REFERENCE_METHOD = "jpeg"


@dataclass
class FidelityRequest:
    methods: list[str]
    corruptions: list[Corruption]
    datasets: list[str] = field(default_factory=lambda: ["samples"])
    channels: str = "rgb"
    data_root: str | None = None
    preset: str | None = None
    weights: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    add_reference: bool = True
    progress: bool = True
    qf_override: int | None = None  # FBCNN's flexible control: restore as if the input had this QF
    metrics: tuple[str, ...] = DEFAULT_METRICS  # `benchmark.metrics.fidelity_metrics(...)`: the core three + extras
    inception_weights: str | None = None  # FID/KID's Inception file (None: torch-fidelity's cache folder)
    tile: int | None = None  # restore in tiles of at most this side (overlap included)
    memory_budget: float | None = None  # GB; restoration tiles itself above it (None: $CARBENCH_MEMORY_BUDGET or 2)



class NonFiniteOutput(ValueError):  # also: an output of the wrong shape
    pass


def make_metric(name: str, channels: str = "rgb", inception_weights: str | None = None):
    """A fidelity metric by name; the set-level ones (fid, kid) read the Inception file `inception_weights`."""
    if name in DISTRIBUTION_METRICS:
        return DISTRIBUTION_METRICS[name](channels, weights=inception_weights)
    return FIDELITY_METRICS[name](channels)


class FidelityEvaluator(L.LightningModule):
    def __init__(self, restorer: L.LightningModule, n_corruptions: int, channels: str = "rgb",
                 metrics: tuple[str, ...] = DEFAULT_METRICS, inception_weights: str | None = None,
                 tile: int | None = None, memory_budget: float | None = None):
        super().__init__()
        self.restorer, self.channels, self.metric_names = restorer, channels, tuple(metrics)
        self.tile, self.memory_budget = tile, memory_budget
        self.scores = nn.ModuleList(
            MetricCollection({k: make_metric(k, channels, inception_weights) for k in metrics}, compute_groups=False)
            for _ in range(n_corruptions))
        self.bpp = nn.ModuleList(PerImageMean() for _ in range(n_corruptions))
        self.results: list[dict] = []
        self.per_image: list[dict[str, torch.Tensor]] = []  # per corruption: {metric: values in image order}
        self.forward_seconds = 0.0  # time inside the restorer: the rest of a job is overhead

    def setup(self, stage: str) -> None:
        # FID/KID states are sums over images: a DDP pad repeat would count twice (devices="auto" gets here too)
        for name in self.metric_names:
            if name in DISTRIBUTION_METRICS:
                DISTRIBUTION_METRICS[name].check_world_size(self.trainer.world_size, name)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        corrupted, clean, meta = batch
        name = meta["name"][0] if isinstance(meta["name"], (list, tuple)) else meta["name"]
        t0 = time.perf_counter()
        restored = tiling.restore(self.restorer, corrupted.float() / 255.0, self.tile, self.memory_budget,
                                  name=f"{name} ({meta['key'][0]})")
        self.forward_seconds += time.perf_counter() - t0
        if restored.shape != corrupted.shape:  # never score a cropped/resized/channel-changed output
            raise NonFiniteOutput(f"method {getattr(self.restorer, 'method_name', '?')!r} returned shape "
                                  f"{tuple(restored.shape)} for input {tuple(corrupted.shape)} on image {name!r}")
        if not torch.isfinite(restored).all():
            raise NonFiniteOutput(f"method {getattr(self.restorer, 'method_name', '?')!r} produced NaN/inf on image "
                                  f"{name!r} ({meta['key'][0]})")
        try:
            self.scores[dataloader_idx].update(to_uint8(restored), clean, ids=meta["index"])
        except ValueError as e:  # e.g. an image the metrics cannot score: name it
            raise ValueError(f"image {name!r} ({meta['key'][0]}): {e}") from e
        self.bpp[dataloader_idx].update(meta["bpp"].double(), ids=meta["index"])

    def on_test_epoch_end(self) -> None:
        self.results, self.per_image = [], []
        for scores, bpp in zip(self.scores, self.bpp):
            values = {k: float(v) for k, v in scores.compute().items()}
            values["n_images"] = scores["psnr"].n_images()
            values["bpp"] = float(bpp.compute())
            self.results.append(values)
            self.per_image.append({k: m.per_image()[1] for k, m in [*scores.items(), ("bpp", bpp)]
                                   if hasattr(m, "per_image")})  # FID/KID: one value per set
            self.per_image[-1]["_ids"] = scores["psnr"].per_image()[0]  # the images' indices (dataset order)
            scores.reset()
            bpp.reset()



def run_fidelity(req: FidelityRequest, profile: dict | None = None,
                 on_rows: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], list[JobFailure]]:
    """Rows and failures; `profile` (a dict) receives seconds spent in model forwards and the reference jobs served
    from the score cache; `on_rows(job_rows)` is called with each finished job's rows (in job order: a dataset's
    reference job first), before the next job starts."""
    quiet_lightning()
    metrics = fidelity_metrics(req.metrics)  # unknown names: ValueError listing the known ones
    one_process = single_process(req.devices, req.strategy)
    set_level = [n for n in metrics if n in DISTRIBUTION_METRICS]
    if set_level and not one_process:  # refused before any job (FidelityEvaluator.setup catches devices="auto")
        refuse_ddp(set_level, f"devices={req.devices}, strategy={req.strategy}")
    for name in metrics:  # a missing weights file / extra fails the request, before any job runs
        if name in PERCEPTUAL_METRICS or name in DISTRIBUTION_METRICS:
            make_metric(name, req.channels, req.inception_weights)
    methods = list(dict.fromkeys(([REFERENCE_METHOD] if req.add_reference else []) + req.methods))
    cache = CorruptionCache(req.cache_dir, enabled=req.use_cache)
    reference_scores = ReferenceScores(cache, req.channels)
    versions = codec_versions()
    rows, failures = [], []
    profile = {} if profile is None else profile
    profile.update(forward_seconds=0.0, cached_reference_jobs=0)
    for dataset in req.datasets:
        dm = EvalDataModule(dataset, req.corruptions, req.data_root, cache)
        try:
            dm.setup()
        except Exception as e:  # noqa: BLE001 -- reported with its culprit, the other datasets go on
            failures.append(JobFailure("*", dataset, str(e)))
            continue
        gray = [r.source or r.name for r in dm.records if r.is_gray]
        if gray and len(gray) < len(dm.records) and dataset.partition(":")[0] != "samples":  # samples: documented
            warnings.warn(f"{dataset}: {len(gray)} gray image(s) among colour ones, scored on their one channel "
                          f"inside the {req.channels} rows (column n_gray): {', '.join(gray)}", stacklevel=2)
        for method in methods:
            t0 = time.time()
            try:
                is_ref = method == REFERENCE_METHOD
                restorer = create(method, None if is_ref else req.preset, None if is_ref else req.weights)
                if req.qf_override is not None and not is_ref:
                    set_qf_override(restorer, req.qf_override)
                # the score cache holds the core metrics only: a run that asks for more scores the reference too
                cacheable = is_ref and one_process and set(metrics) <= set(DEFAULT_METRICS)
                cached = reference_scores.results(dm.records, req.corruptions) if cacheable else None
                if cached is not None:  # the reference scores the corruption itself: nothing to recompute
                    profile["cached_reference_jobs"] += 1
                    job_rows = []
                    for c, res in zip(req.corruptions, cached):
                        job_rows.append(_row(restorer, dataset, req.channels, c, res, dm, versions, time.time() - t0))
                        job_rows[-1][per_image.KEY] = _per_image(dm.records, res.get("per_image"))
                    rows += job_rows
                    if on_rows is not None:
                        on_rows(job_rows)
                    continue
                evaluator = FidelityEvaluator(restorer, len(req.corruptions), req.channels, metrics,
                                              req.inception_weights, req.tile, req.memory_budget)
                trainer = L.Trainer(accelerator=req.accelerator, devices=req.devices, strategy=req.strategy,
                                    logger=False, enable_checkpointing=False, enable_model_summary=False,
                                    enable_progress_bar=req.progress, callbacks=progress_bar(req.progress))
                trainer.test(evaluator, datamodule=dm, verbose=False)
            except Exception as e:  # noqa: BLE001
                failures.append(JobFailure(method, dataset, f"{type(e).__name__}: {e}"))
                continue
            if trainer.global_rank != 0:
                continue
            profile["forward_seconds"] += evaluator.forward_seconds
            if is_ref and one_process:
                reference_scores.store(dm.records, req.corruptions, evaluator.per_image)
            seconds = time.time() - t0
            job_rows = []
            for c, res, values in zip(req.corruptions, evaluator.results, evaluator.per_image):
                job_rows.append(_row(restorer, dataset, req.channels, c, res, dm, versions, seconds))
                job_rows[-1][per_image.KEY] = _per_image(dm.records, values)
            rows += job_rows
            if on_rows is not None and job_rows:
                on_rows(job_rows)
    return rows, failures


def _per_image(records, values: dict | None) -> dict | None:
    """A row's per-image values for its per-image file: image name, content digest, then each per-image metric;
    `values` holds {metric: values} in image order (`_ids`: their indices into `records`; absent: all records in
    order). None when the values do not cover the images (a DDP rank's share, an old cache entry)."""
    if not values:
        return None
    ids = values.get("_ids")
    ids = list(range(len(records))) if ids is None else [int(i) for i in ids]
    cols = {k: [float(x) for x in v] for k, v in values.items() if k != "_ids"}
    if "psnr" not in cols or any(len(v) != len(ids) for v in cols.values()) or len(set(ids)) != len(records) \
            or not all(0 <= i < len(records) for i in ids):
        return None
    return {"image": [records[i].name for i in ids], "digest": [records[i].digest for i in ids], **cols}


def set_qf_override(restorer, qf: int) -> None:
    """Flexible QF control; the preset column records it (`compact@qf30`) so blind rows are not overwritten."""
    if not hasattr(restorer, "qf_override"):
        raise MethodError(f"{restorer.method_name}: --qf-override needs a method with QF control (fbcnn); "
                          f"{restorer.method_name} has none")
    restorer.qf_override = qf
    restorer.preset_name = f"{restorer.preset_name}@qf{qf}"


def _row(restorer, dataset, channels, c: Corruption, res: dict, dm: EvalDataModule, versions, seconds) -> dict:
    if all(r.is_gray for r in dm.records):
        channels = "gray"  # scored on the one channel they have, whatever --channels says
    return {
        "method": restorer.method_name, "preset": restorer.preset_name, "dataset": dm.label, "channels": channels,
        "codec": c.codec, "qf": c.qf_label, "passes": c.passes, "subsampling": c.subsampling, "seed": c.seed,
        "n_images": res["n_images"], "n_skipped": len(dm.report.skipped),
        "n_gray": 0 if channels == "gray" else sum(r.is_gray for r in dm.records),
        "psnr": res["psnr"], "ssim": res["ssim"], "psnrb": res["psnrb"],
        "lpips": res.get("lpips", ""), "fid": res.get("fid", ""), "kid": res.get("kid", ""),  # "": not requested
        "bpp": res["bpp"], "source": "measured", "weights": restorer.weights_path,
        "weights_sha256": leaderboard.weights_sha256(getattr(restorer, "weights_file", "") or restorer.weights_path),
        "codec_lib": codec_lib(c.codec, versions), "carbench_version": leaderboard.carbench_version(),
        "git_commit": leaderboard.git_commit(), "command": leaderboard.command(), "created_at": leaderboard.now(),
        "seconds": seconds,
    }


EXTRA_COLUMNS = {"lpips": ("LPIPS", "{:.4f}"), "fid": ("FID", "{:.2f}"), "kid": ("KID", "{:.4f}")}  # on request


def _extra_cell(r: dict, name: str) -> str:
    v = r.get(name, "")
    return EXTRA_COLUMNS[name][1].format(v) if isinstance(v, float) else str(v)


def format_table(rows: list[dict]) -> str:
    """Plain-text results table with the JPEG reference delta and the paper's value where one exists."""
    if not rows:
        return "(no results)"
    ref = {(r["dataset"], r["qf"], r["codec"], r["passes"], r["channels"], r["subsampling"], r["seed"]): r
           for r in rows if r["method"] == REFERENCE_METHOD}
    extras = [k for k in EXTRA_COLUMNS if any(r.get(k, "") != "" for r in rows)]
    header = ["method", "preset", "dataset", "ch", "codec", "qf", "pass", "n", "PSNR", "SSIM", "PSNR-B", "dPSNR",
              *(EXTRA_COLUMNS[k][0] for k in extras), "bpp", "paper PSNR/SSIM/PSNR-B"]
    lines = []
    for r in rows:
        base = ref.get((r["dataset"], r["qf"], r["codec"], r["passes"], r["channels"], r["subsampling"], r["seed"]))
        delta = f"{r['psnr'] - base['psnr']:+.2f}" if base is not None and base is not r else ""
        if r.get("_paired") is not None:  # the paired 95 % interval over the per-image files
            delta = r["_paired"].format()
        paper = [published.fidelity_value(r["method"], r["dataset"], r["channels"], r["codec"], r["qf"], m)
                 for m in ("psnr", "ssim", "psnrb")]
        paper_s = "/".join("-" if v is None else f"{v:g}" for v in paper) if any(v is not None for v in paper) else ""
        lines.append([r["method"], r["preset"], r["dataset"], r["channels"], r["codec"], r["qf"], str(r["passes"]),
                      str(r["n_images"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['psnrb']:.2f}", delta,
                      *(_extra_cell(r, k) for k in extras), f"{r['bpp']:.3f}", paper_s])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])
