"""Set-level metrics from a local Inception file: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018).

Both compare the Inception-v3 pool features (2048-d) of the restored images with those of the clean images of one
(method, dataset, corruption) set: one value per row, lower is better. They are torchmetrics'
`FrechetInceptionDistance` / `KernelInceptionDistance` fed with `NoTrainInceptionV3` (torch-fidelity's port of the
TF FID Inception, the network pytorch-fid and torch-fidelity use), built from a **local** file, never downloaded:
`weights-inception-2015-12-05-6726825d.pth`, given by `--inception-weights FILE` or else read where torch-fidelity
caches it (`torch.hub.get_dir()/checkpoints/`, i.e. `$TORCH_HOME/hub/checkpoints/`). A missing file is an
`InceptionWeightsMissing` naming the path, the folder and the URL to fetch it from on a connected machine.
torch-fidelity is an optional extra (`pip install .[fid]`); without it the metrics say so.

Conventions: inputs as the other fidelity metrics (uint8 (N, C, H, W), float [0, 1] rounded; `channels` selects
what is scored, one-channel images repeated to three); the network resizes every image to 299x299 with the
TF1-compatible bilinear resize of the original FID code (`antialias=False`), so values are comparable with
torch-fidelity's and pytorch-fid's.

Caveats (also in the guide): FID is biased on small sets (its expectation falls as the number of images grows;
~2000+ images are usually asked for) and noisy, so FID on the 29..100-image test sets is comparable only between
rows of the same dataset (JARCAL reports it on Classic5 / LIVE1 all the same). KID is the unbiased estimator of a
squared MMD: on small sets it is noisy but not biased by the set size. KID's subset size is min(1000, n images): the
whole set when n <= 1000 (one exact value, no random subsets; torchmetrics refuses a subset larger than the set);
on larger sets, 100 random subsets drawn with a fixed seed so that a re-run gives the same number. On a paired set
the estimator's cross term includes each image with its own restoration, so identical sets give a small negative
KID, not exactly 0.

Under DDP the states are sums / feature lists: a DDP pad repeat would count twice, so these metrics refuse to run
on more than one process (`SetLevelDDPError`): the runner checks the request, the evaluator the trainer's world size.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from benchmark.metrics.fidelity import CHANNELS, _prepare
from benchmark.metrics.perceptual import (
    PerceptualWeightsError,
    PerceptualWeightsMissing,
)

# torch-fidelity's name and release URL for the FID Inception (TF 2015-12-05 graph converted to PyTorch)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FEATURES = 2048  # the pool features every FID/KID paper uses
KID_SUBSET_SIZE, KID_SUBSETS, KID_SEED = 1000, 100, 0  # torchmetrics' defaults; subset size capped at the set


class InceptionWeightsMissing(PerceptualWeightsMissing):
    """The FID Inception file is not at the given path nor in torch-fidelity's cache; the message says where/how."""


class InceptionWeightsError(PerceptualWeightsError):
    """An Inception file that does not fit the network (keys, shapes, or not a state dict)."""


class SetLevelDDPError(ValueError):
    """FID/KID asked of a multi-process (DDP) run: refused, see `refuse_ddp`."""


def refuse_ddp(names, processes: str) -> None:
    """FID/KID states are sums (feature lists for KID) over images: DDP pads the last batches with repeat images,
    which would count twice, and deduplicating sums by image id is not possible after the fact."""
    raise SetLevelDDPError(f"{', '.join(names)}: set-level metrics run on one process only (asked: {processes}); "
                           f"under DDP the padded repeat images would count twice: use --devices 1")


class MissingExtra(ImportError):
    """An optional dependency of a requested metric is not installed; the message names the pip command."""


def inception_path(weights: str | os.PathLike | None = None) -> Path:
    """The FID Inception file: `weights` if given, else torch-fidelity's cache; InceptionWeightsMissing if absent."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = Path(weights) if weights else folder / INCEPTION_FILE
    if not path.is_file():
        where = "given by --inception-weights" if weights else "looked up in torch-fidelity's cache"
        raise InceptionWeightsMissing(
            f"FID/KID need the Inception file {INCEPTION_FILE}, not found at {path} ({where}). Nothing is downloaded "
            f"at run time: on a connected machine fetch {INCEPTION_URL} and put it in {folder} (torch-fidelity's "
            f"cache: $TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints) or pass "
            f"--inception-weights FILE")
    return path


def require_torch_fidelity() -> None:
    """torch-fidelity (the Inception port torchmetrics' FID/KID build on) is an optional extra."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"FID/KID need the torch-fidelity package, not installed ({e}): pip install .[fid] "
                           f"(or pip install 'torch-fidelity>=0.4')") from e


def inception(weights: str | os.PathLike | None = None) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 (2048-d pool features) from the local file, eval mode, no gradients.
    Built once per file (path, mtime, size): every FID/KID metric of a run shares it."""
    require_torch_fidelity()
    path = inception_path(weights)
    st = path.stat()
    return _inception(str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _inception(path: str, mtime_ns: int, size: int) -> nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    # torch-fidelity reads the file with weights_only=False (arbitrary pickles): check it is a plain state dict first
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: name it
        raise InceptionWeightsError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path}: expected torch-fidelity's Inception state dict, got "
                                    f"{type(state).__name__}")
    try:  # the path is given, so torch-fidelity loads it (strictly) and never downloads
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURES)],
                                 feature_extractor_weights_path=path, antialias=False)
    except RuntimeError as e:  # load_state_dict: missing / unexpected / mis-shaped keys
        raise InceptionWeightsError(f"{path} does not fit the FID Inception: {e}") from e
    net.num_features = FEATURES  # tells torchmetrics the feature size (it would otherwise run a dummy image)
    return net.eval().requires_grad_(False)


def _to_inception_input(img: torch.Tensor, device) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, 3, H, W) on `device`; one channel repeated to three."""
    img = img.to(device)
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img


class SetLevelMetric:
    """Mixin of the set-level metrics: (restored, clean) updates, one value per set, no per-image values."""

    set_level = True
    higher_is_better = False
    channels: str

    @staticmethod
    def _check_channels(channels: str) -> str:
        if channels not in CHANNELS:
            raise ValueError(f"channels={channels!r}: use one of {CHANNELS}")
        return channels

    def update(self, preds: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Restored `preds` are the 'fake' set, clean `target` the 'real' one; `ids` is accepted for the common
        signature and unused (single process only: see check_world_size)."""
        p, t = _prepare(preds, target, self.channels)
        device = next(self.inception.parameters()).device
        with torch.no_grad():
            super().update(_to_inception_input(t, device), real=True)
            super().update(_to_inception_input(p, device), real=False)

    @staticmethod
    def check_world_size(world_size: int, name: str) -> None:
        if world_size > 1:
            refuse_ddp([name], f"{world_size} processes")


class FID(SetLevelMetric, FrechetInceptionDistance):
    """FID between the restored and the clean images of a set (lower is better)."""

    def __init__(self, channels: str = "rgb", weights: str | os.PathLike | None = None, **kwargs):
        self._check_channels(channels)  # before the network is built
        super().__init__(feature=inception(weights), reset_real_features=True, normalize=False, **kwargs)
        self.channels = channels

    def compute(self) -> torch.Tensor:
        n = int(min(self.real_features_num_samples, self.fake_features_num_samples))
        if n < 2:
            raise ValueError(f"FID needs at least 2 images in a set (a covariance), got {n}")
        return super().compute()


class KID(SetLevelMetric, KernelInceptionDistance):
    """KID (mean over subsets) between the restored and the clean images of a set (lower is better); subset size
    min(`subset_size`, n images), the whole set in one exact value when it fits (see the module doc)."""

    def __init__(self, channels: str = "rgb", weights: str | os.PathLike | None = None,
                 subset_size: int = KID_SUBSET_SIZE, subsets: int = KID_SUBSETS, **kwargs):
        self._check_channels(channels)  # before the network is built
        with warnings.catch_warnings():  # "will save all extracted features": 2048 floats per image, known
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            super().__init__(feature=inception(weights), subsets=subsets, subset_size=subset_size, **kwargs)
        self.channels = channels
        self.max_subset_size, self.max_subsets = subset_size, subsets

    def compute(self) -> torch.Tensor:
        n = min(len(dim_zero_cat(self.real_features)), len(dim_zero_cat(self.fake_features)))
        if n < 2:
            raise ValueError(f"KID needs at least 2 images in a set, got {n}")
        # subsets of the whole set are all the same set: one is exact
        self.subset_size, self.subsets = (n, 1) if n <= self.max_subset_size else (self.max_subset_size,
                                                                                   self.max_subsets)
        try:
            with torch.random.fork_rng(devices=[]):  # the subsets are drawn with torch.randperm: a fixed seed
                torch.manual_seed(KID_SEED)
                mean, _std = super().compute()
        finally:
            self.subset_size, self.subsets = self.max_subset_size, self.max_subsets
        return mean


METRICS = {"fid": FID, "kid": KID}  # the fidelity board's set-level columns (on request: --metrics ...,fid,kid)
