"""`benchmark train`: train a method's preset from scratch with Lightning and save a compact checkpoint."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from benchmark.evaluate.fidelity import progress_bar, quiet_lightning
from benchmark.evaluate.training_protocol import lr_schedule, summary, without_paths
from datamodules.corruptions import AFD_QF_SET
from datamodules.fidelity import TrainDataModule
from lightning_modules import create
from lightning_modules.registry import CHECKPOINT_DIR, resolve_preset, user_weights_dir
from lightning_modules.task_models import PACKAGED_CLASSIFIERS

# per-method training defaults (one table, pyiqa-style); YAML configs (`--config`) and CLI flags override.
# lr_milestones are fractions of the steps; DAGN's ae_* keys configure its stage 1 (the two auto-encoders).
TRAIN_DEFAULTS = {
    "dncnn": dict(steps=2500, batch_size=16, crop=48, lr=1e-3, qf_range=(5, 50), loss="l1"),
    # AR-CNN compact: 32x32 crops as the paper (its SGD 5e-4 needs far more steps than a CPU budget: Adam)
    "arcnn": dict(steps=3000, batch_size=16, crop=32, lr=1e-3, qf_range=(5, 50), loss="l1"),
    # FBCNN compact: the official recipe (the release's options/train_fbcnn_color.json, QF_LOSS_WEIGHT in
    # lightning_modules/fbcnn.py) weighs the QF term 0.001; at 2500 steps that leaves the QF predictor untrained,
    # so the compact recipe weighs it 0.1
    "fbcnn": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l1", qf_loss_weight=0.1),
    # JARCAL compact: stage 1 (`encoder`, MoCo) sees QFs 10..90 step 10 as the paper; the restorer is trained
    # blind on 5..50 like the other compact models (the paper's recipe: benchmark/configs/jarcal_paper.yaml)
    "jarcal": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l1",
                   ae_steps=300, ae_batch_size=16, ae_crop=64, ae_lr=1e-3, ae_milestones=(),
                   ae_qf_set=tuple(range(10, 100, 10))),
    # dual priors compact (gray, trains on Y): stage 1 the gradient-domain classifier (BCE), stage 2 the rest (MAE)
    "dualpriors": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l1",
                       ae_steps=300, ae_batch_size=16, ae_crop=64, ae_lr=1e-3, ae_milestones=()),
    "n2n_unet": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l2",
                     betas=(0.9, 0.99)),  # the paper's L2 and Adam(1e-3, 0.9, 0.99)
    # CPU-sized (compact preset); the paper's recipe is benchmark/configs/dagn_paper.yaml
    "dagn": dict(steps=2000, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l1",
                 ae_steps=200, ae_batch_size=16, ae_crop=64, ae_lr=1e-3, ae_milestones=(), lambda_ci=1e-3, lambda_cs=1e-3),
}
# feature de-drifters (label-free, MSE to the clean features) and the fine-tuning baseline: CPU-sized schedules
# with the paper's shape (Adam, lr x0.2 at half the steps, QFs drawn from 25/18/15/10/7); the paper's recipe is
# benchmark/configs/afd_paper.yaml
_PLUGIN = dict(batch_size=16, crop=64, qf_set=AFD_QF_SET, lr_milestones=(0.5,), lr_gamma=0.2, loss="mse")
TRAIN_DEFAULTS.update({
    "afd": dict(_PLUGIN, steps=1500, lr=1e-3),
    "degradation_prior": dict(_PLUGIN, steps=1500, lr=1e-3),
    "jpeg_finetune": dict(_PLUGIN, steps=400, batch_size=32, crop=224, lr=5e-4, loss="ce"),
})
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A training recipe (--config) or option that cannot be used; the message names it."""

# the fair trial of the feature de-drifters (issue 27): one protocol for every task-side trained method, the same
# crops seen (steps x batch) and crop size for all of them. The schedule has the paper's shape (Adam, lr x0.2 at
# half the steps, as its 1e-4 -> 2e-5 at 7500 of 15000; QFs 25/18/15/10/7, 224 crops); the budget is what one
# 3-hour CPU session holds for the three out-of-domain runs (measured on 2 quiet cores: AFD 5.5 min, DDP 10 min,
# fine-tuning ~13 min): 500 x 16 = 8 000 crops, 1.7 % of the paper's 15 000 x 32; the --save-at learning curve says
# whether more would help. Each method keeps its own learning rate.
#  out-of-domain: label-free, ../shared/data/train/BSDS500_train + the scikit-image training photos (never the
#                 evaluation sample), resized as the classifier resizes; `jpeg_finetune` distils the frozen
#                 classifier's clean predictions (no labels exist there)
#  in-domain:     the ImageNet sample, 2-fold by class parity (copy k learns only from the other fold, scores only
#                 its own: no photo scored by a model that saw it); the classifier's own 224 crops; label-free for
#                 the de-drifters (the class index only picks the fold), with or without labels for fine-tuning
PROTOCOLS = {
    "out-of-domain": dict(steps=500, batch_size=16, crop=224, qf_set=AFD_QF_SET, lr_milestones=(0.5,), lr_gamma=0.2),
    "in-domain": dict(steps=500, batch_size=16, crop=224, qf_set=AFD_QF_SET, lr_milestones=(0.5,), lr_gamma=0.2),
}
PROTOCOL_LR = {"afd": 1e-3, "degradation_prior": 1e-3, "jpeg_finetune": 2e-4}
IN_DOMAIN_FOLDS = 2
LOSSES = ("feature-mse", "logit-kl")


def default_in_domain_set() -> str:
    """`imagenet-flat:<repo>/../shared/data/train/ImageNet_sample1000`, the in-domain protocol's photos."""
    return "imagenet-flat:" + str(Path(__file__).resolve().parents[3] / "shared" / "data" / "train" /
                                  "ImageNet_sample1000")


def parse_fractions(text: str | None) -> tuple[float, ...]:
    """`0.25,0.5,1` -> (0.25, 0.5, 1.0): budget fractions at which `--save-at` exports the network."""
    if not text:
        return ()
    try:
        out = tuple(sorted({float(t) for t in str(text).split(",") if t.strip()}))
    except ValueError:
        raise ConfigError(f"--save-at {text!r}: a comma list of fractions of the steps, e.g. 0.25,0.5,1") from None
    if not out or any(not 0 < f <= 1 for f in out):
        raise ConfigError(f"--save-at {text!r}: every fraction must lie in (0, 1]")
    return out


def fraction_path(out: Path, fraction: float) -> Path:
    """Where `--save-at` puts the network at this fraction of the budget: `<out>.q25.pt` (1: `<out>` itself)."""
    if fraction >= 1:
        return out
    return out.with_name(f"{out.stem}.q{round(100 * fraction)}{out.suffix or '.pt'}")


_RUN_KEYS = ("method", "preset", "seed", "train_dir", "noise2noise", "stages", "task_model", "depth")


def load_config(path: str | Path) -> dict:
    """A training recipe in YAML: run keys (method, preset, seed, ...) and TRAIN_DEFAULTS keys."""
    import yaml

    path = Path(path)
    if not path.is_file() and (CONFIG_DIR / path).is_file():
        path = CONFIG_DIR / path
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"training config {path} does not exist (nor in {CONFIG_DIR}: {shipped})")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"training config {path}: {' '.join(str(e).split())}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"training config {path}: expected a mapping of keys, got {type(cfg).__name__}")
    return cfg


def train(method: str | None = None, preset: str | None = None, steps: int | None = None,
          batch_size: int | None = None, crop: int | None = None, lr: float | None = None, seed: int | None = None, train_dir: str | None = None,
          out: str | None = None, accelerator: str = "auto", devices="auto", num_workers: int = 1,
          noise2noise: bool = False, qf_range: tuple[int, int] | None = None, init: str | None = None,
          resume: str | None = None, ckpt_dir: str | None = None, stages: list[str] | None = None,
          config: str | None = None, task_model: str | None = None, task_weights: str | None = None,
          depth: str | None = None, qf_set: tuple[int, ...] | None = None, protocol: str | None = None,
          labels: str | None = None, clean_share: float | None = None, loss: str | None = None,
          save_at: str | tuple | None = None, train_images: int | None = None) -> Path:
    """Train `method[.preset]` and save its network's weights.

    init: weights to start from (fine-tuning, or DAGN's stage 2 after a separate stage 1); resume: a Lightning
    checkpoint that `ckpt_dir` got from an interrupted run with the same arguments (optimizer, scheduler and step
    count continue); stages: for a multi-stage method (DAGN: autoencoders, restorer), which to run (default all);
    config: a YAML recipe (explicit arguments win over it). Feature de-drifters and `jpeg_finetune` train inside a
    frozen classifier: task_model (default: the preset's backbone) with task_weights, at tap `depth` (D1-D4).
    The fair trial's options (those methods only): protocol `out-of-domain` / `in-domain` (PROTOCOLS), labels
    `labels` / `none` (jpeg_finetune: cross-entropy or distillation), clean_share (share of crops left
    uncompressed, target = the clean features), loss `feature-mse` / `logit-kl` (de-drifters), save_at (budget
    fractions to export, `<out>.q25.pt` ...)."""
    recipe = load_config(config) if config else {}
    run = {k: recipe.pop(k) for k in _RUN_KEYS if k in recipe}
    method = method or run.get("method") or "dncnn"
    preset = preset or run.get("preset")
    seed = seed if seed is not None else run.get("seed", 0)
    train_dir = train_dir or run.get("train_dir")
    noise2noise = noise2noise or bool(run.get("noise2noise", False))
    stages = stages or run.get("stages")
    entry, preset_name, p = resolve_preset(method, preset)
    cfg = dict(TRAIN_DEFAULTS.get(entry.name, TRAIN_DEFAULTS["dncnn"]))
    plugin = getattr(entry.module_cls, "kind", None) in ("features", "classifier")
    trial = dict(protocol=protocol, labels=labels, clean_share=clean_share, loss=loss, save_at=save_at,
                 train_images=train_images)
    if not plugin and any(v not in (None, "", ()) for v in trial.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in trial.items() if v not in (None, "", ()))
        raise ConfigError(f"{given}: options of the feature de-drifters and jpeg_finetune, not of {entry.name}")
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        cfg.update(PROTOCOLS[protocol], lr=PROTOCOL_LR.get(entry.name, cfg["lr"]))
    unknown = set(recipe) - set(cfg) - {"lr_milestones", "lr_gamma", "betas", "qf_set", "ae_qf_set", "ae_qf_range",
                                        "val_items", "train_images"}
    if unknown:
        raise ConfigError(f"training config {config}: unknown keys {sorted(unknown)}; known: "
                         f"{sorted(set(cfg) | {'lr_milestones', 'lr_gamma', 'betas', *_RUN_KEYS})}")
    cfg.update(recipe)
    for k, v in dict(steps=steps, batch_size=batch_size, crop=crop, lr=lr, qf_range=qf_range, qf_set=qf_set,
                     train_images=train_images).items():
        if v is not None:
            cfg[k] = v
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    quiet_lightning()
    if plugin:
        return train_plugin(entry.name, preset_name, p, cfg, seed=seed, train_dir=train_dir, out=out,
                            accelerator=accelerator, devices=devices, init=init, resume=resume, ckpt_dir=ckpt_dir,
                            task_model=task_model or run.get("task_model"), task_weights=task_weights,
                            depth=depth or run.get("depth"), num_workers=num_workers, protocol=protocol,
                            labels=labels, clean_share=clean_share, loss=loss, save_at=parse_fractions(save_at)
                            if isinstance(save_at, str) else tuple(save_at or ()))
    L.seed_everything(seed, workers=True)
    module = create(entry.name, preset_name, weights=init, pretrained=init is not None)
    module.lr, module.loss_name = cfg["lr"], cfg["loss"]
    module.betas = tuple(cfg.get("betas", module.betas))
    module.lr_gamma = cfg.get("lr_gamma", module.lr_gamma)
    for k in ("lambda_ci", "lambda_cs", "ae_lr", "qf_loss_weight"):
        if k in cfg and hasattr(module, k):
            setattr(module, k, cfg[k])
    color = (getattr(module.net, "in_channels", 3) or 3) == 3
    plan = _stage_plan(module, cfg, stages)
    t0, val, log = time.time(), None, {}
    for i, (stage, n_steps, batch, crop_size, milestones, qf_range_i, qf_set_i) in enumerate(plan):
        if stage is not None:
            module.set_stage(stage)
            print(f"stage {i + 1}/{len(plan)}: {stage} ({n_steps} steps)")
        module.lr_milestones = tuple(int(n_steps * f) for f in milestones)
        dm = TrainDataModule(train_dir, qf_range_i, crop_size, batch, n_steps, seed + i, num_workers=num_workers,
                             color=color, noise2noise=noise2noise, qf_set=qf_set_i)
        stage_dir = None if ckpt_dir is None else str(Path(ckpt_dir) / (stage or "train"))
        trainer = L.Trainer(max_steps=n_steps, accelerator=accelerator, devices=devices, logger=False,
                            enable_checkpointing=ckpt_dir is not None, val_check_interval=max(n_steps // 4, 1),
                            check_val_every_n_epoch=None, deterministic=True, log_every_n_steps=50,
                            callbacks=progress_bar() + _checkpointing(stage_dir, n_steps),
                            enable_model_summary=False)
        trainer.fit(module, dm, ckpt_path=resume if i == 0 else None)
        log[stage or "train"] = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        val = trainer.callback_metrics.get("val_psnr", val)
    if trainer.global_rank != 0:
        return Path(out or "")
    out_path = Path(out) if out else default_out(p.weights or f"{entry.name}_{preset_name}.pt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": entry.name, "preset": preset_name, "seed": seed, "train_data": dm.source_name,
            "init": str(init) if init else None, "stages": [s for s, *_ in plan if s] or None, "metrics": log,
            "targets": "second JPEG of the same crop (Noise2Noise)" if noise2noise else "clean crops",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "val_psnr": float(val) if val is not None else None, "train_seconds": round(time.time() - t0, 1)}
    if init:
        meta["init_record"] = _record_of(init)  # the lineage: how the starting weights were made
    return _save_checkpoint(out_path, module.net, meta, f"validation PSNR {meta['val_psnr']}")


def trial_choices(method: str, kind: str, protocol: str | None, labels: str | None, loss: str | None,
                  clean_share: float | None) -> tuple[bool, str, float]:
    """(labelled, loss, clean share) of a de-drifter / fine-tuning run, or ConfigError naming the clash."""
    if labels not in (None, "labels", "none"):
        raise ConfigError(f"--labels {labels!r}: labels or none")
    if loss not in (None, *LOSSES):
        raise ConfigError(f"--loss {loss!r}: use one of {', '.join(LOSSES)}")
    share = float(clean_share or 0.0)
    if not 0 <= share < 1:
        raise ConfigError(f"--clean-share {clean_share}: a share of the crops in [0, 1)")
    if kind == "features":
        if labels == "labels":
            raise ConfigError(f"{method} trains label-free (--labels none); only jpeg_finetune can learn from labels")
        return False, loss or "feature-mse", share
    if loss == "feature-mse":
        raise ConfigError(f"{method} changes the classifier itself: its label-free loss is logit-kl (--labels none)")
    if loss == "logit-kl" and labels == "labels":
        raise ConfigError("--loss logit-kl is the label-free distillation: it cannot go with --labels labels")
    if protocol == "out-of-domain" and labels == "labels":
        raise ConfigError("--protocol out-of-domain is label-free (BSDS500 and scikit-image photos have no ImageNet "
                          "labels): jpeg_finetune distils there (--labels none)")
    labelled = labels == "labels" or (labels is None and loss is None and protocol != "out-of-domain")
    return labelled, "cross-entropy" if labelled else "logit-kl", share


class _SaveAt(L.Callback):
    """Exports the network at fractions of the budget (the learning curve of `--save-at`)."""

    def __init__(self, steps: int, fractions: tuple[float, ...], save):
        self.targets = {max(1, round(steps * f)): f for f in fractions if f < 1}
        self.save = save

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        f = self.targets.pop(trainer.global_step, None)
        if f is not None and trainer.global_rank == 0:
            self.save(trainer, f)


def train_plugin(method: str, preset_name: str, preset, cfg: dict, *, seed: int, train_dir: str | None,
                 out: str | None, accelerator, devices, init: str | None, resume: str | None, ckpt_dir: str | None,
                 task_model: str | None, task_weights: str | None, depth: str | None, num_workers: int,
                 protocol: str | None = None, labels: str | None = None, clean_share: float | None = None,
                 loss: str | None = None, save_at: tuple[float, ...] = ()) -> Path:
    """Train a feature de-drifter (label-free: MSE to the clean image's features at the tap of the frozen
    classifier, or KL to its clean-image predictions) or fine-tune the classifier itself on JPEG images
    (`jpeg_finetune`: labels, or distillation from the frozen classifier's clean predictions)."""
    from torch.utils.data import DataLoader

    from lightning_modules.task_models import create_task_model

    L.seed_everything(seed, workers=True)
    kind = getattr(resolve_preset(method, preset_name)[0].module_cls, "kind", None)
    labelled, loss_name, share = trial_choices(method, kind, protocol, labels, loss, clean_share)
    cfg = {**cfg, "loss": loss_name}  # the record's config names the loss that ran (feature-mse, logit-kl, ...)
    overrides = {k: v for k, v in dict(depth=depth, backbone=task_model).items() if v}
    if method == "jpeg_finetune":
        overrides.pop("depth", None)
    backbone = overrides.get("backbone", preset.kwargs.get("backbone"))
    if protocol is not None:
        if backbone not in PACKAGED_CLASSIFIERS:
            raise ConfigError(f"--protocol is defined for the packaged ImageNet classifiers "
                              f"({', '.join(PACKAGED_CLASSIFIERS)}), not {backbone}: pick a preset such as lite0")
        cross = protocol == "in-domain"
        if kind == "features" and cross:
            overrides["folds"] = IN_DOMAIN_FOLDS
        elif kind == "classifier" and "folds" in preset.kwargs:  # one tuned copy out of domain, one per fold in
            overrides["folds"] = IN_DOMAIN_FOLDS if cross else 1
    module = create(method, preset_name, weights=init, pretrained=init is not None, **overrides)
    backbone = module.net.backbone
    tm = create_task_model("classification", backbone, task_weights)  # frozen, with its trained weights
    if module.kind == "classifier" and init is None:  # transfer learning starts from the classifier
        if hasattr(module.net, "init_from"):
            module.net.init_from(tm.net)
        else:
            module.net.classifier.load_state_dict(tm.net.state_dict())
    module.lr, module.lr_gamma = cfg["lr"], cfg["lr_gamma"]
    module.lr_milestones = tuple(int(cfg["steps"] * f) for f in cfg["lr_milestones"])
    if module.kind == "classifier":
        module.labels = labelled
    else:
        module.loss_name = loss_name
    module.attach(tm.net, tm.name, deploy=False)
    folds = getattr(module.net, "n_folds", None)
    train_set, val_set, source, info = _plugin_data(
        module.kind, backbone, train_dir, cfg, seed, cross_fitted=folds is not None and folds > 1,
        preprocess=tm.preprocess, protocol=protocol, clean_share=share)
    loaders = [DataLoader(train_set, batch_size=cfg["batch_size"], num_workers=num_workers,
                          persistent_workers=num_workers > 0),
               DataLoader(val_set, batch_size=16, num_workers=0)]
    out_path = Path(out) if out else default_out(preset.weights or f"{method}_{preset_name}.pt")
    net_kwargs = {"backbone": backbone} if module.kind == "classifier" else \
        {"backbone": backbone, "depth": module.net.depth}
    if folds is not None:  # cross-fitted copies: rebuilt from the record with --weights
        net_kwargs["folds"] = folds
        if hasattr(module.net, "n_stages"):
            net_kwargs["n_stages"] = module.net.n_stages
    if module.kind == "classifier":
        targets = "labels (cross-entropy)" if labelled else \
            "the frozen classifier's clean-image predictions (KL distillation, no labels)"
    else:
        targets = f"clean features at {module.net.layers[0]} (MSE, no labels)" if loss_name == "feature-mse" else \
            "the frozen classifier's clean-image predictions (KL distillation, no labels)"
    steps, batch = cfg["steps"], cfg["batch_size"]
    t0 = time.time()

    def meta_at(trainer, steps_done: int) -> dict:
        record = {"protocol": protocol or "custom", "train_images": info["train_images"],
                  "n_images": info["n_images"], "folds": folds if folds and folds > 1 else None,
                  "labels": "yes" if labelled else "no", "crop": info["crop"], "steps": steps, "batch_size": batch,
                  "steps_done": steps_done, "crops_seen": steps_done * batch,
                  "lr_schedule": lr_schedule(cfg["lr"], cfg["lr_milestones"], cfg["lr_gamma"], steps),
                  "qf_set": list(cfg["qf_set"]), "clean_share": share, "loss": loss_name}
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        return {"method": method, "preset": preset_name, "seed": seed, "train_data": source,
                "net_kwargs": net_kwargs, "task_model": tm.name,
                "task_weights": Path(tm.weights).name if tm.weights else "", "targets": targets,
                "init": str(init) if init else None, "metrics": metrics,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                "protocol": summary(record), "protocol_record": record, "budget_fraction": round(steps_done / steps, 4),
                "train_seconds": round(time.time() - t0, 1)}

    def export(trainer, fraction: float) -> None:
        path = fraction_path(out_path, fraction)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = meta_at(trainer, trainer.global_step)
        _save_checkpoint(path, module.net, meta, f"{fraction:g} of the budget; validation {meta['metrics']}")

    callbacks = progress_bar() + _checkpointing(ckpt_dir, steps)
    if save_at:
        callbacks.append(_SaveAt(steps, save_at, export))
    trainer = L.Trainer(max_steps=steps, accelerator=accelerator, devices=devices, logger=False,
                        enable_checkpointing=ckpt_dir is not None, val_check_interval=max(steps // 4, 1),
                        check_val_every_n_epoch=None, deterministic=True, log_every_n_steps=50,
                        callbacks=callbacks, enable_model_summary=False)
    trainer.fit(module, *loaders, ckpt_path=resume)
    if trainer.global_rank != 0:
        return Path(out or "")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta_at(trainer, steps)
    return _save_checkpoint(out_path, module.net, meta, f"validation {meta['metrics']}")


def _plugin_data(kind: str, backbone: str, train_dir: str | None, cfg: dict, seed: int, cross_fitted: bool = False,
                 preprocess=None, protocol: str | None = None, clean_share: float = 0.0):
    """(train set, validation set, description, {train_images, n_images, crop}). Items: (JPEG float CHW, clean
    float CHW, label or QF); `clean_share` of the training items are left uncompressed (input = target = clean).

    The embedded classifier trains on shapes scenes of the train split (validation: the val split); real
    classifiers on crops of a photo folder (features and the out-of-domain protocol, default
    ../shared/data/train/BSDS500_train + scikit-image photos) or on an ImageNet layout (`imagenet:DIR` wnid
    folders or `imagenet-flat:DIR`: fine-tuning, and every method of the in-domain protocol, cross-fitted)."""
    from datamodules.fidelity import RandomCrops, load_train_records
    from datamodules.tasks import ShapesJPEGPairs
    from lightning_modules.task_models import SHAPES_TASK_MODELS

    qf_set, n = tuple(cfg["qf_set"]), cfg["steps"] * cfg["batch_size"]
    n_val = int(cfg.get("val_items", 64))  # validation crops (a recipe's `val_items`: tests keep it tiny)
    limit = cfg.get("train_images")  # the data-size curve (AFD Fig. 11): train on the first N photos only
    if backbone in SHAPES_TASK_MODELS and train_dir in (None, "shapes"):
        if clean_share:
            raise ConfigError("--clean-share needs photo or ImageNet training data, not the shapes scenes")
        crop = cfg["crop"] if kind == "features" else None  # a crop can lose the object a label names
        return (ShapesJPEGPairs(qf_set, n, seed=seed, crop=crop),
                ShapesJPEGPairs(qf_set, 64, n_scenes=64, split="val", seed=seed),
                f"shapes train split (first 2000 scenes), {crop or 128}px, JPEG QF {qf_set}",
                {"train_images": "shapes train split (first 2000 scenes)", "n_images": None, "crop": crop or 128})
    layout, sep, root = (train_dir or "").partition(":")
    imagenet = sep and layout in ("imagenet", "imagenet-flat")
    if protocol == "in-domain" and not train_dir:
        train_dir = default_in_domain_set()
        layout, sep, root = train_dir.partition(":")
        imagenet = True
    if protocol == "in-domain" and not imagenet:
        raise ConfigError(f"--protocol in-domain trains on the ImageNet sample (imagenet-flat:DIR or imagenet:DIR), "
                          f"not {train_dir!r}")
    if protocol == "out-of-domain" and imagenet:
        raise ConfigError(f"--protocol out-of-domain never trains on the evaluation photos ({train_dir}); give a "
                          f"photo folder or nothing (BSDS500 train + scikit-image photos)")
    if protocol == "in-domain" and cfg["crop"] != preprocess.crop:
        raise ConfigError(f"--protocol in-domain trains on the classifier's own {preprocess.crop} crops, not "
                          f"--crop {cfg['crop']}")
    if kind == "classifier" and protocol != "out-of-domain" or protocol == "in-domain":
        from datamodules import classification as C

        if not imagenet:
            raise ValueError(f"fine-tuning {backbone} needs labelled images: --train-dir imagenet:DIR (wnid folders) "
                             f"or imagenet-flat:DIR (<wnid>_*.JPEG), not {train_dir!r}")
        samples = (C.imagenet_folders if layout == "imagenet" else C.imagenet_flat)(root).samples
        if limit and cross_fitted:  # the copies still never score a photo they saw; the others train nothing
            samples = samples[:limit]
        named = f"{layout}:{Path(root).name}"
        if cross_fitted:  # every image trains the fold copies that never score it; validation = held-out folds
            return (C.JPEGTrainingSet(samples, qf_set, n, seed, preprocess=preprocess, flip=True,
                                      clean_share=clean_share),
                    C.JPEGTrainingSet(samples[::16], qf_set, n_val, seed + 1, preprocess=preprocess),
                    f"{train_dir}, JPEG QF {qf_set}, cross-fitted by class parity",
                    {"train_images": named, "n_images": len(samples), "crop": preprocess.crop})
        val, train = samples[-64:], samples[:-64] or samples
        train = train[:limit] if limit else train
        return (C.JPEGTrainingSet(train, qf_set, n, seed, clean_share=clean_share),
                C.JPEGTrainingSet(val, qf_set, n_val, seed + 1), f"{train_dir}, JPEG QF {qf_set}",
                {"train_images": named, "n_images": len(train), "crop": C.CROP})
    records, name = load_train_records(None if train_dir == "shapes" else train_dir)
    crop = cfg["crop"]
    if (train_dir is None or protocol == "out-of-domain") and backbone in PACKAGED_CLASSIFIERS:
        records, name = _photos_at_classifier_scale(records, name, backbone)
    val, train = records[-8:], records[:-8] or records
    train = train[:limit] if limit else train
    train_set = RandomCrops(train, crop=crop, length=n, seed=seed, qf_set=qf_set, clean_share=clean_share)

    return (train_set, RandomCrops(val, crop=crop, length=n_val, seed=seed + 1, qf_set=qf_set),
            f"{name} {crop}px crops, JPEG QF {qf_set}",
            {"train_images": without_paths(name), "n_images": len(train_set.records), "crop": crop})


def _photos_at_classifier_scale(records, name: str, backbone: str):
    """BSDS500 train plus scikit-image's training photos (never the ImageNet evaluation sample), each resized as the
    classifier resizes its inputs (shorter side to its `resize`, PIL bicubic), so JPEG blocks cover as much content
    as on the evaluation crops."""
    from PIL import Image

    from datamodules.sources import SAMPLE_TRAIN_IMAGES, ImageRecord, load_samples
    from lightning_modules.task_models import create_task_model

    if name != "skimage-train":
        records = records + [r for r in load_samples(SAMPLE_TRAIN_IMAGES) if not r.is_gray]
        name = f"{name} + skimage-train"
    prep = create_task_model("classification", backbone).preprocess
    out = []
    for r in records:
        h, w = r.pixels.shape[:2]
        s = prep.resize / min(h, w)
        size = (max(round(w * s), prep.resize), max(round(h * s), prep.resize))
        px = np.asarray(Image.fromarray(r.pixels).resize(size, Image.BICUBIC))
        out.append(ImageRecord(r.name, px, r.source))
    return out, f"{name}, shorter side {prep.resize} (bicubic)"


def default_out(filename: str) -> Path:
    """Where `benchmark train` saves without `--out`: the user's weights folder ($CARBENCH_WEIGHTS, else
    ~/.cache/carbench/weights/), never the shipped lightning_modules/checkpoints/ (maintainers replace a shipped
    file with an explicit `--out lightning_modules/checkpoints/FILE`)."""
    return user_weights_dir() / filename


def _save_checkpoint(out_path: Path, net: torch.nn.Module, meta: dict, summary: str) -> Path:
    """`{"state_dict", "carbench"}` with the run's record (plus the command line and torch version) -> out_path."""
    meta = {**meta, "command": "benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1
            else "", "torch": str(torch.__version__)}
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "carbench": meta}, out_path)
    print(f"saved {out_path} ({out_path.stat().st_size / 1e6:.2f} MB); {summary}")
    shipped = CHECKPOINT_DIR / out_path.name
    if out_path.resolve() != shipped.resolve():
        print(f"use it with --weights {out_path}" + (f" (it does not replace the shipped {shipped}, which "
                                                     f"runs without --weights still read)" if shipped.is_file()
                                                     else ""))
    return out_path


def _record_of(path: str) -> dict | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a foreign file simply has no record
        return None
    return obj.get("carbench") if isinstance(obj, dict) else None


def _stage_plan(module, cfg: dict, stages: list[str] | None) -> list[tuple]:
    """[(stage or None, steps, batch size, crop, lr-milestone fractions, QF range, QF set)] for this run; the first
    of several stages reads the `ae_*` keys (e.g. JARCAL's encoder: `ae_qf_set` 10..90)."""
    restorer_milestones = tuple(cfg.get("lr_milestones", (0.6, 0.9)))
    known = getattr(module, "stages", None)
    if not known:
        if stages:
            raise ValueError(f"{module.method_name} trains in one stage; --stage does not apply")
        return [(None, cfg["steps"], cfg["batch_size"], cfg["crop"], restorer_milestones, tuple(cfg["qf_range"]),
                 tuple(cfg.get("qf_set", ())))]
    chosen = list(stages or known)
    bad = [s for s in chosen if s not in known]
    if bad:
        raise ValueError(f"unknown stage(s) {bad} for {module.method_name}; stages: {list(known)}")
    plan = []
    for s in known:  # in the method's order, whatever order they were named in
        if s in chosen:
            first = s == known[0]
            key = (lambda k: f"ae_{k}") if first else (lambda k: k)
            plan.append((s, cfg[key("steps")], cfg[key("batch_size")], cfg[key("crop")],
                         tuple(cfg.get("ae_milestones", ())) if first else restorer_milestones,
                         tuple(cfg.get(key("qf_range"), cfg["qf_range"])), tuple(cfg.get(key("qf_set"), ()))))
    return plan


def _checkpointing(ckpt_dir: str | None, steps: int) -> list:
    """Lightning checkpoints (`last.ckpt`, every ~5% of the run) for `--resume`; none unless asked for."""
    if ckpt_dir is None:
        return []
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                            every_n_train_steps=max(steps // 20, 1))]


# task models for the shapes set: one table of defaults (CLI flags override)
TASK_TRAIN_DEFAULTS = {
    "classification": dict(steps=600, batch_size=32, lr=3e-3),
    "detection": dict(steps=1200, batch_size=8, lr=2e-3),
    "segmentation": dict(steps=600, batch_size=16, lr=3e-3),
}


def train_task(task: str, model: str | None = None, steps: int | None = None, batch_size: int | None = None,
               lr: float | None = None, seed: int = 0, n_train: int = 20000, n_val: int = 128,
               out: str | None = None, accelerator: str = "auto", devices="auto") -> Path:
    """Train a compact shapes task model on clean scenes of the `train` split (backgrounds never seen in `test`)."""
    from datamodules.tasks import ShapesTrainModule
    from lightning_modules.task_models import DEFAULT_SHAPES_MODEL, SHAPES_TASK_MODELS, TaskModule

    name = model or DEFAULT_SHAPES_MODEL.get(task)
    if name not in SHAPES_TASK_MODELS or SHAPES_TASK_MODELS[name].task != task:
        choices = [n for n, s in SHAPES_TASK_MODELS.items() if s.task == task]
        raise ValueError(f"no trainable {task!r} model {name!r}; choose from {choices}")
    spec = SHAPES_TASK_MODELS[name]
    cfg = dict(TASK_TRAIN_DEFAULTS[task])
    for k, v in dict(steps=steps, batch_size=batch_size, lr=lr).items():
        if v is not None:
            cfg[k] = v
    quiet_lightning()
    L.seed_everything(seed, workers=True)
    net = spec.build()
    init = _init_detector_backbone(net) if task == "detection" else None
    module = TaskModule(net, task, lr=cfg["lr"], max_steps=cfg["steps"])
    dm = ShapesTrainModule(task, n_train=n_train, n_val=n_val, batch_size=cfg["batch_size"], seed=seed)
    trainer = L.Trainer(max_steps=cfg["steps"], accelerator=accelerator, devices=devices, logger=False,
                        enable_checkpointing=False, val_check_interval=max(cfg["steps"] // 3, 1),
                        check_val_every_n_epoch=None, log_every_n_steps=20, callbacks=progress_bar(),
                        enable_model_summary=False, num_sanity_val_steps=0)
    t0 = time.time()
    trainer.fit(module, dm)
    out_path = Path(out) if out else default_out(spec.weights)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    meta = {"task": task, "model": name, "seed": seed, "train_data": f"shapes train split (seed {seed}, "
            f"{cfg['steps'] * cfg['batch_size']} scenes drawn from {n_train})", "config": cfg, "val": scores, "init": init,
            "train_seconds": round(time.time() - t0, 1)}
    return _save_checkpoint(out_path, _unwrap(net), meta, f"validation {scores}")


def _init_detector_backbone(net: torch.nn.Module) -> str:
    """Start the detector's backbone from the trained shapes classifier (the ImageNet-pretraining of the shapes
    world); -> what was loaded, for the checkpoint's record."""
    from lightning_modules.task_models import create_task_model

    classifier = create_task_model("classification", "shapes-cnn")
    net.backbone.load_state_dict(classifier.net.features.state_dict())
    return f"backbone from {Path(classifier.weights).name}"


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """Save the network without wrappers that only normalise (PSPNet keeps mmseg's key names)."""
    return getattr(net, "net", net)


from benchmark.cli.common import EXIT_USAGE


def main(args) -> int:
    from benchmark.cli.train import ConfigError, load_config, train, train_task

    if args.config:  # a missing or broken recipe is a usage error, before anything is built
        try:
            load_config(args.config)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    if args.task:
        train_task(args.task, args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed if args.seed is not None else 0, out=args.out, accelerator=args.accelerator)
        return 0
    try:
        train(args.method, args.preset, steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
              seed=args.seed, train_dir=args.train_dir, out=args.out, accelerator=args.accelerator,
              devices=args.devices, noise2noise=args.noise2noise, qf_range=args.qf_range, init=args.init,
              resume=args.resume, ckpt_dir=args.ckpt_dir, stages=args.stage, config=args.config,
              task_model=args.task_model, task_weights=args.task_weights, depth=args.depth, qf_set=args.qf_set,
              protocol=args.protocol, labels=args.labels, clean_share=args.clean_share, loss=args.loss,
              save_at=args.save_at, train_images=args.train_images)
    except ConfigError as e:  # e.g. unknown keys in the recipe
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
