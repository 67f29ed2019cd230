"""What the fidelity and task runners share: job failures, quiet Lightning, progress bars on stderr, codec labels."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass

from lightning.pytorch.callbacks import TQDMProgressBar


@dataclass
class JobFailure:
    method: str
    dataset: str
    error: str


def quiet_lightning() -> None:
    """Keep Lightning's per-Trainer banner lines (GPU available..., tips) out of a long run's output."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def _on_stderr(name: str):
    def init(self):
        with contextlib.redirect_stdout(sys.stderr):  # Lightning builds each bar with file=sys.stdout
            return getattr(super(StderrTQDMProgressBar, self), name)()
    return init


class StderrTQDMProgressBar(TQDMProgressBar):
    """Lightning's TQDMProgressBar with its bars on stderr: the tables stay alone on stdout."""
    init_sanity_tqdm = _on_stderr("init_sanity_tqdm")
    init_train_tqdm = _on_stderr("init_train_tqdm")
    init_predict_tqdm = _on_stderr("init_predict_tqdm")
    init_validation_tqdm = _on_stderr("init_validation_tqdm")
    init_test_tqdm = _on_stderr("init_test_tqdm")


def progress_bar(enabled: bool = True) -> list:
    """tqdm bars, on stderr (`> table.txt` holds no bar): they also update in CI logs, where rich's only draw at
    the end."""
    return [StderrTQDMProgressBar(refresh_rate=1)] if enabled else []


def codec_lib(codec: str, versions: dict) -> str:
    """The `codec_lib` column: the library that encoded, and Pillow's version."""
    if codec == "avif":
        lib = f"libavif {versions['libavif']}"
    else:
        lib = versions["libjpeg_turbo"] and f"libjpeg-turbo {versions['libjpeg_turbo']}" or f"libjpeg {versions['libjpeg']}"
    return f"{lib}; pillow {versions['pillow']}"


def single_process(devices, strategy: str) -> bool:
    """One process sees every image: per-image results can be cached (under DDP each rank sees a share)."""
    return str(devices) in ("1", "auto") and strategy in ("auto", "single_device")
