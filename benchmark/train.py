"""`benchmark train`: train a method's preset from scratch with Lightning and save a compact checkpoint."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch

from datamodules.fidelity import TrainDataModule
from lightning_modules import create
from lightning_modules.registry import CHECKPOINT_DIR, resolve_preset

from .runner import progress_bar, quiet_lightning

# per-method training defaults (one table, pyiqa-style); CLI flags override
TRAIN_DEFAULTS = {
    "dncnn": dict(steps=2500, batch_size=16, crop=48, lr=1e-3, qf_range=(5, 50), loss="l1"),
    "n2n_unet": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l2",
                     betas=(0.9, 0.99)),  # the paper's L2 and Adam(1e-3, 0.9, 0.99)
}


def train(method: str, preset: str | None = None, steps: int | None = None, batch_size: int | None = None,
          crop: int | None = None, lr: float | None = None, seed: int = 0, train_dir: str | None = None,
          out: str | None = None, accelerator: str = "auto", devices="auto", num_workers: int = 1,
          noise2noise: bool = False) -> Path:
    entry, preset_name, p = resolve_preset(method, preset)
    cfg = dict(TRAIN_DEFAULTS.get(entry.name, TRAIN_DEFAULTS["dncnn"]))
    for k, v in dict(steps=steps, batch_size=batch_size, crop=crop, lr=lr).items():
        if v is not None:
            cfg[k] = v
    quiet_lightning()
    L.seed_everything(seed, workers=True)
    module = create(entry.name, preset_name, pretrained=False)
    module.lr, module.loss_name = cfg["lr"], cfg["loss"]
    module.betas = tuple(cfg.get("betas", module.betas))
    module.lr_milestones = (int(cfg["steps"] * 0.6), int(cfg["steps"] * 0.9))
    color = (getattr(module.net, "in_channels", 3) or 3) == 3
    dm = TrainDataModule(train_dir, cfg["qf_range"], cfg["crop"], cfg["batch_size"], cfg["steps"], seed,
                         num_workers=num_workers, color=color, noise2noise=noise2noise)
    trainer = L.Trainer(max_steps=cfg["steps"], accelerator=accelerator, devices=devices, logger=False,
                        enable_checkpointing=False, val_check_interval=max(cfg["steps"] // 4, 1),
                        check_val_every_n_epoch=None, deterministic=True, log_every_n_steps=50,
                        callbacks=progress_bar(), enable_model_summary=False)
    t0 = time.time()
    trainer.fit(module, dm)
    out_path = Path(out) if out else CHECKPOINT_DIR / (p.weights or f"{entry.name}_{preset_name}.pt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    val = trainer.callback_metrics.get("val_psnr")
    meta = {"method": entry.name, "preset": preset_name, "seed": seed, "train_data": dm.source_name,
            "targets": "second JPEG of the same crop (Noise2Noise)" if noise2noise else "clean crops",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "val_psnr": float(val) if val is not None else None, "train_seconds": round(time.time() - t0, 1),
            "command": "benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else "",
            "torch": str(torch.__version__)}
    state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
    torch.save({"state_dict": state, "carbench": meta}, out_path)
    print(f"saved {out_path} ({out_path.stat().st_size / 1e6:.2f} MB); validation PSNR {meta['val_psnr']}")
    return out_path


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
    out_path = Path(out) if out else CHECKPOINT_DIR / spec.weights
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    meta = {"task": task, "model": name, "seed": seed, "train_data": f"shapes train split (seed {seed}, "
            f"{cfg['steps'] * cfg['batch_size']} scenes drawn from {n_train})", "config": cfg, "val": scores, "init": init,
            "train_seconds": round(time.time() - t0, 1),
            "command": "benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else "",
            "torch": str(torch.__version__)}
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(net).state_dict().items()}
    torch.save({"state_dict": state, "carbench": meta}, out_path)
    print(f"saved {out_path} ({out_path.stat().st_size / 1e6:.2f} MB); validation {scores}")
    return out_path


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
