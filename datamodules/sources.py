"""Where clean images come from: folders, the field's named test sets, and the embedded `samples`.

Every image enters as an 8-bit uint8 array, HxW (gray) or HxWx3 (RGB). Modes that convert losslessly are
converted with a warning; everything else is refused with an error naming the file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff"}
if TYPE_CHECKING:
    import torch

MIN_SIDE = 8  # one JPEG block
SCORABLE_MIN_SIDE = 11  # SSIM's 11x11 valid window (benchmark.metrics): the smallest image every metric can score

# name -> folder under the data root (the layout of ../shared/data/test)
NAMED_DATASETS = {
    "live1": "LIVE1_color",
    "live1-gray": "LIVE1_gray",
    "classic5": "Classic5",
    "bsds500": "BSDS500_test",
    "cbsd68": "CBSD68",
    "bsd68": "BSD68",
}
# Natural photos scikit-image ships in its wheel: the embedded default needs no data root.
SAMPLE_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins")
# Other shipped scikit-image images, disjoint from SAMPLE_IMAGES: the offline training fallback.
SAMPLE_TRAIN_IMAGES = ("immunohistochemistry", "hubble_deep_field", "retina", "brick", "grass", "gravel", "cell", "clock")
DATA_ENV = "CARBENCH_DATA"
WNID = re.compile(r"n\d{8}")  # an ImageNet class id (WordNet synset)


def imagenet_layout(folder: str | os.PathLike) -> str:
    """`imagenet` when the folder holds wnid sub-folders (ImageNet val: `n01440764/*.JPEG`), else `imagenet-flat`
    (`n01440764_*.JPEG` files in the folder itself): every other sub-folder (hidden ones, a stray `extra/`) is
    ignored. The one detection `run` ($CARBENCH_IMAGENET) and `bdrate` (--imagenet) share."""
    path = Path(folder).expanduser()
    wnid_dirs = path.is_dir() and any(p.is_dir() and WNID.fullmatch(p.name) for p in path.iterdir())
    return "imagenet" if wnid_dirs else "imagenet-flat"


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


class DatasetError(ValueError):
    """A dataset that cannot be resolved; the message says what to provide."""


@dataclass
class ImageRecord:
    name: str
    pixels: np.ndarray  # uint8 HxW or HxWx3
    source: str = ""  # path or "skimage:<name>"
    _digest: str | None = field(default=None, repr=False)

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def digest(self) -> str:
        """Content hash of the pixels (shape included): the cache key of everything derived from them."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.pixels.shape).encode())
            h.update(np.ascontiguousarray(self.pixels).data)
            self._digest = h.hexdigest()
        return self._digest


def to_uint8_image(img: Image.Image, culprit: str) -> np.ndarray:
    """Pillow image -> uint8 array, converting only where no information is lost."""
    mode = img.mode
    if mode in ("L", "RGB"):
        arr = np.asarray(img)
    elif mode == "1":
        arr = np.asarray(img.convert("L"))
    elif mode == "P":
        if "transparency" in img.info:
            rgba = np.asarray(img.convert("RGBA"))
            if (rgba[..., 3] != 255).any():
                raise ImageError(f"{culprit}: palette image with transparency is not supported (alpha would be lost)")
        warnings.warn(f"{culprit}: palette image converted to RGB (lossless)", stacklevel=3)
        arr = np.asarray(img.convert("RGB"))
    elif mode in ("LA", "RGBA", "PA"):
        arr = np.asarray(img.convert("RGBA" if mode != "LA" else "LA"))
        if (arr[..., -1] != 255).any():
            raise ImageError(f"{culprit}: mode {mode} has a non-opaque alpha channel; flatten it yourself first")
        warnings.warn(f"{culprit}: opaque alpha channel dropped (lossless)", stacklevel=3)
        arr = arr[..., 0] if mode == "LA" else arr[..., :3]
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageError(f"{culprit}: mode {mode} is not 8-bit; convert it to 8-bit gray or RGB first")
    else:  # CMYK, YCbCr, LAB, HSV: conversion is lossy or profile-dependent
        raise ImageError(f"{culprit}: mode {mode} is not supported; convert it to 8-bit gray or RGB first")
    return check_pixels(np.ascontiguousarray(arr), culprit)


def check_pixels(arr: np.ndarray, culprit: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageError(f"{culprit}: dtype {arr.dtype} is not uint8")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageError(f"{culprit}: shape {arr.shape} is neither HxW gray nor HxWx3 RGB")
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{culprit}: size {arr.shape[1]}x{arr.shape[0]} is smaller than one {MIN_SIDE}x{MIN_SIDE} JPEG block")
    return arr


def read_image(path: str | os.PathLike) -> ImageRecord:
    """Decode one file fully (truncation is detected here, not later)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = to_uint8_image(img, str(path))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # over twice Image.MAX_IMAGE_PIXELS: refused, not decoded
        raise ImageError(f"{path}: too large to decode safely (Pillow's decompression-bomb limit: {e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    return ImageRecord(name=path.stem, pixels=arr, source=str(path))


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"image folder {folder} holds no {'/'.join(sorted(IMAGE_SUFFIXES))} files")
    return files


@dataclass
class LoadReport:
    """What a dataset load skipped, so a run can count it in its output."""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def load_folder(folder: str | os.PathLike, report: LoadReport | None = None,
                min_side: int = MIN_SIDE) -> list[ImageRecord]:
    """All usable images of a folder; a bad file is skipped with a warning and recorded in `report`.
    min_side: the smallest side the consumer can use (evaluation: the metrics' SSIM window); smaller images are
    skipped the same way, so one tiny file cannot fail a whole dataset."""
    records = []
    for path in list_image_files(folder):
        try:
            rec = read_image(path)
            h, w = rec.pixels.shape[:2]
            if min(h, w) < min_side:
                raise ImageError(f"{path}: size {w}x{h} is smaller than {min_side}x{min_side}, the smallest image "
                                 f"the metrics can score (SSIM's window)")
            records.append(rec)
        except ImageError as e:
            warnings.warn(f"skipped: {e}", stacklevel=2)
            if report is not None:
                report.skipped.append((str(path), str(e)))
    if not records:
        raise DatasetError(f"no usable image in {folder}")
    return records


def load_samples(names=SAMPLE_IMAGES) -> list[ImageRecord]:
    import skimage.data

    out = []
    for name in names:
        arr = getattr(skimage.data, name)()
        out.append(ImageRecord(name=name, pixels=check_pixels(np.ascontiguousarray(arr), f"skimage.data.{name}"),
                               source=f"skimage:{name}"))
    return out


def read_wnids(wnids: Sequence[str] | str | os.PathLike) -> list[str]:
    """A wnid list, or a file whose lines start with a wnid (`LOC_synset_mapping.txt`, `wnids.txt`)."""
    if isinstance(wnids, (str, os.PathLike)):
        path = Path(wnids)
        if not path.is_file():
            raise DatasetError(f"wnid list {path} does not exist")
        wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    wnids = list(wnids)
    bad = [w for w in wnids if not WNID.fullmatch(w)]
    if bad:
        raise DatasetError(f"not ImageNet wnids (nXXXXXXXX): {bad[:5]}")
    if len(set(wnids)) != len(wnids):
        raise DatasetError("the wnid list repeats wnids")
    return wnids


def default_data_root() -> Path | None:
    """$CARBENCH_DATA, else ../shared/data/test beside a checkout, else None."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    guess = Path(__file__).resolve().parents[2] / "shared" / "data" / "test"
    return guess if guess.is_dir() else None


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """MATLAB rgb2ycbcr luma for RGB in [0, 255] (..., 3, H, W) -> (..., 1, H, W) in [16, 235], unrounded."""
    r, g, b = img.unbind(-3)
    return ((65.481 * r + 128.553 * g + 24.966 * b) / 255.0 + 16.0).unsqueeze(-3)


# MATLAB luma of integer RGB, Y = 16 + S / 255000 with S = 65481 R + 128553 G + 24966 B, rounded half away from zero
# as MATLAB rounds to uint8: 16 + (S + 127500) // 255000 in integers, exact at the 194 ties (S = 127500 mod 255000)
# where float64 `rgb_to_y(...).round()` lands on either side (and torch rounds half to even: 107 ties went down).
# All four constants are multiples of 3: divided by 3, each channel's product is below 2^24, exact in float32; only
# the full sum needs int32. The one rounding of luma in carbench: the `:y` datasets and the metrics' "y" channels.
_LUMA_R, _LUMA_G, _LUMA_B, _LUMA_DIV = 21827, 42851, 8322, 85000
_LUMA_OFFSET = 16 * _LUMA_DIV + _LUMA_DIV // 2  # the 16 and the rounding half, folded into the sum


def _fresh(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype)


def luma_rounded(r: np.ndarray, g: np.ndarray, b: np.ndarray, out: np.ndarray, scratch=_fresh) -> np.ndarray:
    """Rounded MATLAB luma (16..235) of integer-valued RGB planes (uint8 or float32 in [0, 255], any layout) into
    `out` (any real dtype, the planes' shape). `scratch(name, shape, dtype)` gives the work arrays (e.g. buffers
    kept between calls); fresh ones by default. No table to build (the 2^24-entry one took 1.4 s)."""
    rb = np.multiply(r, np.float32(_LUMA_R), out=scratch("rb", r.shape, np.float32))
    rb += np.multiply(b, np.float32(_LUMA_B), out=scratch("f", r.shape, np.float32))
    rb += _LUMA_OFFSET  # <= 9.1e6: still exact
    gg = np.multiply(g, np.float32(_LUMA_G), out=scratch("f", r.shape, np.float32))
    s = scratch("s", r.shape, np.int32)
    np.copyto(s, rb, casting="unsafe")
    sg = scratch("g", r.shape, np.int32)
    np.copyto(sg, gg, casting="unsafe")
    s += sg  # up to 2e7 > 2^24: summed in int32
    s //= _LUMA_DIV
    np.copyto(out, s, casting="unsafe")
    return out


def to_y(pixels: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma of a uint8 RGB image (H, W, 3), rounded to uint8 (16..235) as MATLAB rounds (half away
    from zero), as the field's gray tables use."""
    r, g, b = np.moveaxis(pixels, -1, 0)
    return luma_rounded(r, g, b, np.empty(r.shape, np.uint8))


def resolve_dataset(name: str, data_root: str | os.PathLike | None = None,
                    report: LoadReport | None = None, min_side: int = MIN_SIDE) -> list[ImageRecord]:
    """`samples`, a named set (under the data root), or a folder path.

    A `:y` suffix (`bsds500:y`) evaluates the MATLAB-Y (gray) version of a colour set, the field's gray protocol.
    Folder images under `min_side` pixels on a side are skipped and recorded in `report`.
    """
    folder = dataset_folder(name, data_root)
    records = load_samples() if folder is None else load_folder(folder, report, min_side)
    return as_y(records) if name.partition(":")[2] == "y" else records


def dataset_folder(name: str, data_root: str | os.PathLike | None = None) -> str | Path | None:
    """Where `resolve_dataset(name)` reads its images (None: the embedded samples), found without reading one:
    a DatasetError names what is missing (an unknown name, no data root, no such folder)."""
    base, _, variant = name.partition(":")
    if variant not in ("", "y"):
        raise DatasetError(f"dataset {name!r}: unknown variant {variant!r} (only ':y')")
    if base == "samples":
        return None
    if base in NAMED_DATASETS:
        root = Path(data_root) if data_root else default_data_root()
        if root is None:
            raise DatasetError(f"dataset {base!r} needs a data root: pass --data-root DIR or set ${DATA_ENV} to the "
                               f"folder that holds {NAMED_DATASETS[base]}/")
        folder = root / NAMED_DATASETS[base]
        if not folder.is_dir():
            raise DatasetError(f"dataset {base!r}: expected the folder {folder} (data root {root})")
        return folder
    if Path(base).is_dir():
        return base
    known = ", ".join(["samples", *NAMED_DATASETS])
    raise DatasetError(f"unknown dataset {base!r}: use one of {known}, or a folder path")


def dataset_label(name: str) -> str:
    """The `dataset` a row records: `samples` and named sets as given; a folder path as `folder:NAME@HASH`, its
    folder name plus a short hash of its sorted image files (names and sizes), so `../x`, `/abs/x` and `/abs/x/`
    give one row and no machine path reaches a board (a `:y` suffix is kept)."""
    base, sep, variant = name.partition(":")
    if base == "samples" or base in NAMED_DATASETS or not Path(base).is_dir():
        return name
    folder = Path(base).resolve()
    return folder_label(folder, list_image_files(folder)) + (f":{variant}" if sep else "")


def folder_label(folder: str | os.PathLike, files: Sequence[str | os.PathLike], prefix: str = "folder") -> str:
    """`PREFIX:NAME@HASH`: the folder's name and a short hash of its image files (paths relative to it, and sizes), so
    two folders of one name are two datasets and no machine path reaches a board (fidelity and task runs)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in map(Path, files):  # in the order given (sorted by the listings)
        rel = p.relative_to(folder).as_posix() if p.is_relative_to(folder) else p.name
        h.update(f"{rel}\0{p.stat().st_size}\n".encode())
    return f"{prefix}:{folder.resolve().name}@{h.hexdigest()[:6]}"


def as_y(records: list[ImageRecord]) -> list[ImageRecord]:
    """Colour records replaced by their MATLAB Y; gray ones kept."""
    return [r if r.is_gray else ImageRecord(r.name, to_y(r.pixels), r.source) for r in records]
