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

# per-method training defaults (one table, pyiqa-style); YAML configs (`--config`) and CLI flags override.
# lr_milestones are fractions of the steps; DAGN's ae_* keys configure its stage 1 (the two auto-encoders).
TRAIN_DEFAULTS = {
    "dncnn": dict(steps=2500, batch_size=16, crop=48, lr=1e-3, qf_range=(5, 50), loss="l1"),
    "n2n_unet": dict(steps=2500, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l2",
                     betas=(0.9, 0.99)),  # the paper's L2 and Adam(1e-3, 0.9, 0.99)
    # CPU-sized (compact preset); the paper's recipe is benchmark/configs/dagn_paper.yaml
    "dagn": dict(steps=2000, batch_size=16, crop=64, lr=1e-3, qf_range=(5, 50), loss="l1",
                 ae_steps=200, ae_batch_size=16, ae_crop=64, ae_lr=1e-3, ae_milestones=(), lambda_ci=1e-3, lambda_cs=1e-3),
}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_RUN_KEYS = ("method", "preset", "seed", "train_dir", "noise2noise", "stages")


def load_config(path: str | Path) -> dict:
    """A training recipe in YAML: run keys (method, preset, seed, ...) and TRAIN_DEFAULTS keys."""
    import yaml

    path = Path(path)
    if not path.is_file() and (CONFIG_DIR / path).is_file():
        path = CONFIG_DIR / path
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"training config {path}: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"training config {path}: expected a mapping of keys, got {type(cfg).__name__}")
    return cfg


def train(method: str | None = None, preset: str | None = None, steps: int | None = None,
          batch_size: int | None = None, crop: int | None = None, lr: float | None = None, seed: int | None = None, train_dir: str | None = None,
          out: str | None = None, accelerator: str = "auto", devices="auto", num_workers: int = 1,
          noise2noise: bool = False, qf_range: tuple[int, int] | None = None, init: str | None = None,
          resume: str | None = None, ckpt_dir: str | None = None, stages: list[str] | None = None,
          config: str | None = None) -> Path:
    """Train `method[.preset]` and save its network's weights.

    init: weights to start from (fine-tuning, or DAGN's stage 2 after a separate stage 1); resume: a Lightning
    checkpoint that `ckpt_dir` got from an interrupted run with the same arguments (optimizer, scheduler and step
    count continue); stages: for a multi-stage method (DAGN: autoencoders, restorer), which to run (default all);
    config: a YAML recipe (explicit arguments win over it)."""
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
    unknown = set(recipe) - set(cfg) - {"lr_milestones", "lr_gamma", "betas"}
    if unknown:
        raise ValueError(f"training config {config}: unknown keys {sorted(unknown)}; known: "
                         f"{sorted(set(cfg) | {'lr_milestones', 'lr_gamma', 'betas', *_RUN_KEYS})}")
    cfg.update(recipe)
    for k, v in dict(steps=steps, batch_size=batch_size, crop=crop, lr=lr, qf_range=qf_range).items():
        if v is not None:
            cfg[k] = v
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    quiet_lightning()
    L.seed_everything(seed, workers=True)
    module = create(entry.name, preset_name, weights=init, pretrained=init is not None)
    module.lr, module.loss_name = cfg["lr"], cfg["loss"]
    module.betas = tuple(cfg.get("betas", module.betas))
    module.lr_gamma = cfg.get("lr_gamma", module.lr_gamma)
    for k in ("lambda_ci", "lambda_cs", "ae_lr"):
        if k in cfg and hasattr(module, k):
            setattr(module, k, cfg[k])
    color = (getattr(module.net, "in_channels", 3) or 3) == 3
    plan = _stage_plan(module, cfg, stages)
    t0, val, log = time.time(), None, {}
    for i, (stage, n_steps, batch, crop_size, milestones) in enumerate(plan):
        if stage is not None:
            module.set_stage(stage)
            print(f"stage {i + 1}/{len(plan)}: {stage} ({n_steps} steps)")
        module.lr_milestones = tuple(int(n_steps * f) for f in milestones)
        dm = TrainDataModule(train_dir, cfg["qf_range"], crop_size, batch, n_steps, seed + i,
                             num_workers=num_workers, color=color, noise2noise=noise2noise)
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
    out_path = Path(out) if out else CHECKPOINT_DIR / (p.weights or f"{entry.name}_{preset_name}.pt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": entry.name, "preset": preset_name, "seed": seed, "train_data": dm.source_name,
            "init": str(init) if init else None, "stages": [s for s, *_ in plan if s] or None, "metrics": log,
            "targets": "second JPEG of the same crop (Noise2Noise)" if noise2noise else "clean crops",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "val_psnr": float(val) if val is not None else None, "train_seconds": round(time.time() - t0, 1),
            "command": "benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else "",
            "torch": str(torch.__version__)}
    if init:
        meta["init_record"] = _record_of(init)  # the lineage: how the starting weights were made
    state = {k: v.detach().cpu().clone() for k, v in module.net.state_dict().items()}
    torch.save({"state_dict": state, "carbench": meta}, out_path)
    print(f"saved {out_path} ({out_path.stat().st_size / 1e6:.2f} MB); validation PSNR {meta['val_psnr']}")
    return out_path


def _record_of(path: str) -> dict | None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a foreign file simply has no record
        return None
    return obj.get("carbench") if isinstance(obj, dict) else None


def _stage_plan(module, cfg: dict, stages: list[str] | None) -> list[tuple]:
    """[(stage or None, steps, batch size, crop, lr-milestone fractions)] for this run."""
    restorer_milestones = tuple(cfg.get("lr_milestones", (0.6, 0.9)))
    known = getattr(module, "stages", None)
    if not known:
        if stages:
            raise ValueError(f"{module.method_name} trains in one stage; --stage does not apply")
        return [(None, cfg["steps"], cfg["batch_size"], cfg["crop"], restorer_milestones)]
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
                         tuple(cfg["ae_milestones"]) if first else restorer_milestones))
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
