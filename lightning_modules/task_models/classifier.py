"""Downstream classifiers (torchvision or timm) with local weights only, behind one [0, 1]-RGB interface.

`build_classifier(name, weights=None, num_classes=1000)`:

- `name`: a torchvision classification model (`resnet50`) or a timm model (`repvgg_a2`, `resnet10t.c3_in1k`);
  torchvision wins where both have the name; `timm:NAME` / `torchvision:NAME` force one.
- `weights`: a local file -- torchvision `.pth` state dict, timm checkpoint (`.pth`/`.pth.tar`; its `state_dict_ema`,
  `model_ema`, `state_dict` or `model` entry, in that order, as timm's `load_state_dict` picks), or `.safetensors`.
  For torchvision a weights enum name (`IMAGENET1K_V2`) selects that file from the caches below.
  `weights=None` looks for the published ImageNet file: torchvision -> `torch.hub.get_dir()/checkpoints/<file>` (the
  first of the enum's files found, IMAGENET1K_V1 -- the weights the ImageNet-C era papers used -- first); timm -> the
  Hugging Face cache (`model.safetensors` / `pytorch_model.bin` of the pretrained tag's hub id), then
  `torch.hub.get_dir()/checkpoints/<file of the tag's url>`; both then carbench's weight folders
  (`lightning_modules.registry.weight_search_dirs()`). Nothing is downloaded: a missing file is an error naming the
  file and where to put it. `weights="random"` builds an untrained network (tests, smoke runs).
- A checkpoint that does not fit the network is an error listing missing / unexpected / mis-shaped keys.

The returned `ImageClassifier` takes float RGB in [0, 1] (or uint8), NCHW, and applies the model's own
normalisation: ImageNet mean/std for torchvision, `pretrained_cfg` mean/std for timm. It is in eval mode.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from lightning_modules.registry import mismatch_report

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_FILES = ("model.safetensors", "pytorch_model.bin")


class ClassifierError(ValueError):
    """A classifier that cannot be built; the message says what to provide."""


class ImageClassifier(nn.Module):
    """[0, 1] RGB NCHW -> logits, normalising as the wrapped model was trained."""

    def __init__(self, model: nn.Module, mean, std, name: str = "", source: str = "", weights: str | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.name, self.source, self.weights = name, source, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, source={self.source!r}, weights={self.weights!r}"


# ---- names ---------------------------------------------------------------------------------------------------------
def _torchvision_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def resolve_name(name: str) -> tuple[str, str]:
    """-> ("torchvision" | "timm", model name)."""
    import timm

    lib, sep, rest = name.partition(":")
    if sep and lib in ("timm", "torchvision", "tv"):
        lib = "torchvision" if lib == "tv" else lib
        ok = rest in _torchvision_models() if lib == "torchvision" else timm.is_model(rest)
        if not ok:
            raise ClassifierError(f"{lib} has no classification model {rest!r}")
        return lib, rest
    if name in _torchvision_models():
        return "torchvision", name
    if timm.is_model(name):
        return "timm", name
    raise ClassifierError(f"unknown classifier {name!r}: use a torchvision classification model "
                          f"(torchvision.models.list_models(module=torchvision.models)) or a timm model (timm.list_models())")


# ---- weight files --------------------------------------------------------------------------------------------------
def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env)
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _carbench_weights(filename: str) -> Path | None:
    from lightning_modules.registry import find_weights

    return find_weights(filename)


def _torchvision_candidates(name: str, selector: str | None = None) -> list[tuple[str, str, str]]:
    """[(enum member, file name, url)] of the published weights, IMAGENET1K_V1 first."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return []
    members = list(enum)
    if selector is not None:
        if selector == "DEFAULT":
            members = [enum.DEFAULT]
        elif selector in enum.__members__:
            members = [enum[selector]]
        else:
            raise ClassifierError(f"torchvision {name}: no weights {selector!r} (have {', '.join(enum.__members__)})"
                                  f" and no such file")
    return [(m.name, os.path.basename(m.url), m.url) for m in members]


def _find_torchvision(name: str, selector: str | None = None) -> Path:
    cands = _torchvision_candidates(name, selector)
    if not cands:
        raise ClassifierError(f"torchvision {name} has no published weights: pass --task-weights FILE "
                              f"(weights=FILE in Python)")
    hub = hub_checkpoint_dir()
    for _, fname, _ in cands:
        if (hub / fname).is_file():
            return hub / fname
    for _, fname, _ in cands:
        found = _carbench_weights(fname)
        if found is not None:
            return found
    options = "; ".join(f"{fname} ({member}, from {url})" for member, fname, url in cands)
    raise ClassifierError(f"no local weights for torchvision {name}: put {cands[0][1]} at {hub / cands[0][1]} "
                          f"(torch.hub.get_dir()/checkpoints/; any one of: {options}), or pass --task-weights FILE "
                          f"(weights=FILE in Python). Nothing is downloaded.")


def _find_timm(name: str, cfg: dict) -> Path:
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url") or ""
    files = [f for f in (cfg.get("hf_hub_filename"), *HF_FILES) if f]
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for f in files:
                hit = try_to_load_from_cache(hub_id, f, cache_dir=str(hf_cache_dir()))
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    url_file = os.path.basename(url) if url else ""
    if url_file and (hub_checkpoint_dir() / url_file).is_file():
        return hub_checkpoint_dir() / url_file
    for f in ([url_file] if url_file else []) + ([f"{hub_id.split('/')[-1]}.safetensors"] if hub_id else []):
        found = _carbench_weights(f)
        if found is not None:
            return found
    ways = []
    if hub_id:
        ways.append(f"download https://huggingface.co/{hub_id}/resolve/main/{files[0]} and pass --task-weights FILE "
                    f"(weights=FILE in Python), or put it in the Hugging Face cache {hf_cache_dir()} "
                    f"(`huggingface-cli download {hub_id} {files[0]}`)")
    if url_file:
        ways.append(f"put {url_file} (from {url}) at {hub_checkpoint_dir() / url_file}")
    if not ways:
        ways.append("pass --task-weights FILE (weights=FILE in Python; timm publishes no weights for it)")
    raise ClassifierError(f"no local weights for timm {name}: " + "; or ".join(ways) + ". Nothing is downloaded.")


def load_weights_file(path: str | os.PathLike) -> dict:
    """A state dict from `.pth`/`.pth.tar`/`.pt` (plain or wrapped in state_dict_ema/model_ema/state_dict/model,
    `module.`/`_orig_mod.` prefixes removed) or `.safetensors`."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"weights file {path} does not exist")
    try:
        state = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as e:
        raise ClassifierError(f"weights file {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _mismatch(model: nn.Module, state: dict) -> list[str]:
    # BatchNorm's num_batches_tracked is optional (old torchvision files lack it; BatchNorm fills it in)
    return mismatch_report(model.state_dict(), state, optional_suffixes=("num_batches_tracked",))


def load_into(model: nn.Module, state: dict, culprit: str, filter_fn=None) -> None:
    """Strict load; if the keys do not fit and `filter_fn(state, model)` (timm's checkpoint converter) makes them
    fit, use that; else an error listing what does not fit."""
    problems = _mismatch(model, state)
    if problems and filter_fn is not None:
        try:
            converted = filter_fn(state, model)
        except Exception:  # noqa: BLE001 - any failure of a converter means "does not fit"
            converted = None
        if isinstance(converted, dict) and not _mismatch(model, converted):
            state, problems = converted, []
    if problems:
        raise ClassifierError(f"weights {culprit} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)  # keys checked above; strict=False lets BatchNorm fill num_batches


# ---- build ---------------------------------------------------------------------------------------------------------
def build_classifier(name: str, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> ImageClassifier:
    """See the module docstring."""
    lib, arch = resolve_name(name)
    random_init = isinstance(weights, str) and weights == "random"
    path: Path | None = None
    if weights is not None and not random_init:
        path = Path(weights)
        if not path.is_file():
            if lib == "torchvision" and isinstance(weights, str) and os.sep not in weights and "." not in weights:
                path = _find_torchvision(arch, weights)  # an enum name: IMAGENET1K_V2, DEFAULT
            else:
                raise ClassifierError(f"weights file {path} does not exist")

    if lib == "torchvision":
        import torchvision

        if path is None and not random_init:  # find the file before building: a missing one fails fast
            if num_classes != 1000:
                raise ClassifierError(f"torchvision {arch}: the published weights have 1000 classes; for "
                                      f"num_classes={num_classes} pass --task-weights FILE (weights=FILE in "
                                      f"Python): a fine-tuned checkpoint")
            path = _find_torchvision(arch)
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        mean, std, filter_fn = IMAGENET_MEAN, IMAGENET_STD, None
    else:
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if path is None and not random_init:
            published = cfg.get("num_classes", 1000)
            if num_classes != published:
                raise ClassifierError(f"timm {arch}: the published weights have {published} classes; for "
                                      f"num_classes={num_classes} pass --task-weights FILE (weights=FILE in "
                                      f"Python): a fine-tuned checkpoint")
            path = _find_timm(arch, cfg)

    if path is not None:
        load_into(model, load_weights_file(path), str(path), filter_fn)
    return ImageClassifier(model, mean, std, name=name, source=lib,
                           weights=None if path is None else str(path)).eval()
