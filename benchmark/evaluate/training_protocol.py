"""How a checkpoint was trained, in one line: the `protocol` column of task-board rows.

`benchmark train` records a `protocol_record` in the checkpoint's `carbench` entry (training images and their count,
labels yes/no, crop, steps x batch, lr schedule, QF set, clean share, loss) and its one-line `summary` as
`protocol`; a row scored with that file carries the same string. Checkpoints written before the record existed get
a summary derived from what they did record (`custom` protocol: config, training data, targets); a weights file
without any record reads `not recorded`; a method without a weights file, "".
"""
from __future__ import annotations

import re
from pathlib import Path

NOT_RECORDED = "not recorded"
_CACHE: dict[tuple, str] = {}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def lr_schedule(lr: float, milestones, gamma, steps: int) -> str:
    """`Adam 0.001 x0.2 at step 750 of 1500` (the milestones are fractions of the steps)."""
    if milestones is None:
        return f"Adam {_num(lr)}, the method's schedule"
    at = [int(steps * f) for f in milestones]
    tail = f" x{_num(gamma)} at step {'/'.join(map(str, at))} of {steps}" if at else " constant"
    return f"Adam {_num(lr)}{tail}"


def summary(record: dict) -> str:
    """The one-line protocol of a `protocol_record`."""
    r = record
    images = r.get("train_images", "?")
    if r.get("n_images"):
        images += f" ({r['n_images']} photos)"
    if r.get("folds"):
        images += f", {r['folds']}-fold by class parity"
    steps = f"{r['steps_done']} of {r['steps']} steps " if r.get("steps_done") not in (None, r.get("steps")) \
        else r.get("steps")
    crops = r.get("crops_seen", "")
    qf = r.get("qf_set") or r.get("qf_range") or ()
    qf = "/".join(map(str, qf)) if r.get("qf_set") else ("..".join(map(str, qf)) if qf else "?")
    parts = [f"{r.get('protocol', 'custom')}: {images}", f"labels {r.get('labels', '?')}", f"{r.get('crop', '?')}px",
             f"{steps}x{r.get('batch_size', '?')}" + (f"={crops} crops" if crops != "" else ""),
             r.get("lr_schedule", "?"), f"QF {qf}", f"clean {round(100 * float(r.get('clean_share') or 0))}%",
             r.get("loss", "?")]
    return "; ".join(parts)


def without_paths(text: str) -> str:
    """`/work/shared/data/train/BSDS500_train + ...` -> `BSDS500_train + ...`: rows name folders, not machines."""
    return re.sub(r"(?:[^\s:,()]*/)+([^\s/,()]+)", r"\1", str(text))


def legacy_record(meta: dict) -> dict:
    """A protocol record for a checkpoint written before `benchmark train` recorded one."""
    cfg = meta.get("config") or {}
    steps, batch = cfg.get("steps"), cfg.get("batch_size")
    targets = str(meta.get("targets", ""))
    loss = {"mse": "feature-mse" if "features" in targets else "mse", "ce": "cross-entropy"}.get(cfg.get("loss"),
                                                                                                cfg.get("loss", "?"))
    labels = "yes" if "labels" in targets and "no labels" not in targets else "no"
    rec = {"protocol": "custom", "train_images": without_paths(meta.get("train_data", "?")), "labels": labels,
           "crop": cfg.get("crop", "?"), "steps": steps, "batch_size": batch,
           "crops_seen": steps * batch if isinstance(steps, int) and isinstance(batch, int) else "",
           "lr_schedule": lr_schedule(cfg["lr"], cfg.get("lr_milestones"), cfg.get("lr_gamma", "?"), steps)
           if "lr" in cfg and isinstance(steps, int) else "?",
           "qf_set": cfg.get("qf_set"), "qf_range": cfg.get("qf_range"), "clean_share": 0.0, "loss": loss}
    return rec


def of_meta(meta: dict | None) -> str:
    if not isinstance(meta, dict):
        return NOT_RECORDED
    if meta.get("protocol"):
        return str(meta["protocol"])
    if "config" not in meta:
        return NOT_RECORDED
    return summary(legacy_record(meta))


def of_weights(path: str | None) -> str:
    """The `protocol` of a row scored with this weights file ("" without one); read once per file."""
    if not path:
        return ""
    p = Path(path)
    if not p.is_file():
        return NOT_RECORDED
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        meta = None
        if p.suffix.lower() in (".pt", ".pth", ".ckpt"):
            import torch

            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
                meta = obj.get("carbench") if isinstance(obj, dict) else None
            except Exception:  # noqa: BLE001 -- a foreign file simply has no record
                meta = None
        _CACHE[key] = of_meta(meta)
    return _CACHE[key]
