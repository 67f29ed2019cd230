"""Downstream classification: dataset layouts, the ImageNet-C JPEG protocol, Datasets (top-k accuracy: `benchmark.metrics.classification`).

Layouts (each returns `Labeled(samples=[(path, class_index), ...], classes=[class name by index])`):

- `imagenet_folders(root)`: ImageNet val sorted into wnid folders, `<root>/n01440764/*.JPEG`; class index = position
  of the wnid in the sorted wnids found (or in a given wnid list / synset-mapping file), classes = wnids.
- `imagenet_flat(folder)`: one folder whose file names start with the wnid, `n01440764_tench.JPEG` (the layout of
  `../shared/data/train/ImageNet_sample1000`); same indexing, classes = wnids (the readable names are not unique).
- `cub200(root)`: CUB-200-2011 (`images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `images/`);
  labels 1..200 -> 0..199, the official test split by default; classes = `classes.txt` names (`001.Black_footed_...`).
- `flowers102(root)`: Oxford Flowers-102 (`jpg/image_%05d.jpg`, `imagelabels.mat`, `setid.mat`); labels 1..102 ->
  0..101, split `tstid` by default; classes = `"001"` .. `"102"` (the release ships no names).

ImageNet-C JPEG protocol (Hendrycks & Dietterich 2019, `make_imagenet_c.py`): the PIL image is resized with
torchvision `Resize(256)` (shorter side 256, PIL bilinear, long side truncated) and `CenterCrop(224)`, then saved
by Pillow as JPEG at quality (25, 18, 15, 10, 7)[severity - 1] (Pillow's default 4:2:0) and decoded. The released
ImageNet-C files were then written once more with `Image.save(..., quality=85, optimize=True)`, so what a model
reads from the release is that image JPEG-compressed again at 85: `resave85=True` reproduces those pixels
(`optimize=True` only changes Huffman tables, not pixels, so the returned stream can be a few bytes longer than the
released file). The clean reference is the same resize/crop without JPEG.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.corruptions import (
    AFD_QF_SET,
    Corruption,
    CorruptionCache,
    apply,
    is_clean_item,
    parse_qf,
)
from datamodules.sources import (
    IMAGE_SUFFIXES,
    WNID,
    DatasetError,
    ImageError,
    ImageRecord,
    read_image,
    read_wnids,
)

IMAGENET_C_JPEG_QF = AFD_QF_SET  # (25, 18, 15, 10, 7): severities 1..5


IMAGENET_C_RESAVE_QF = 85


RESIZE, CROP = 256, 224


IMAGENET_CLASSES = 1000


_WNID = WNID
_read_wnids = read_wnids  # a wnid list or file -> wnids (light: datamodules.sources; the command line checks --wnids)


class _SamplesClasses(NamedTuple):
    samples: list[tuple[Path, int]]
    classes: list[str]


class Labeled(_SamplesClasses):
    """(samples, classes), plus `skipped`: (file, reason) of the files the layout could not label."""

    def __new__(cls, samples, classes, skipped=()):
        self = super().__new__(cls, samples, classes)
        self.skipped = list(skipped)
        return self


# ---- layouts -------------------------------------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _class_list(found: set[str], wnids, where: str) -> list[str]:
    """The class order: a given wnid list; else ImageNet-1k's (timm's list) when the folder holds ImageNet wnids,
    so indices match a 1000-class model even for a subset; else the sorted wnids found (with a warning)."""
    if wnids is not None:
        return _read_wnids(wnids)

    canonical = imagenet_wnids()
    if found & set(canonical):
        return canonical
    classes = sorted(found)
    if len(classes) != IMAGENET_CLASSES:
        warnings.warn(f"{where}: {len(classes)} wnids found, not {IMAGENET_CLASSES}: class indices are positions in "
                      f"these {len(classes)} and will not match a 1000-class model; pass wnids= to fix them",
                      stacklevel=3)
    return classes


def imagenet_folders(root: str | os.PathLike, wnids: Sequence[str] | str | os.PathLike | None = None) -> Labeled:
    """ImageNet val in wnid folders: `<root>/n01440764/*.JPEG`, ..."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"ImageNet folder {root} does not exist: expected wnid folders like {root}/n01440764/*.JPEG")
    found = {p.name for p in root.iterdir() if p.is_dir() and _WNID.fullmatch(p.name)}
    if not found:
        raise DatasetError(f"{root} holds no wnid folders: expected {root}/n01440764/*.JPEG, ...")
    classes = _class_list(found, wnids, str(root))
    extra = sorted(found - set(classes))
    if extra:
        raise DatasetError(f"{root}: folders {extra[:5]} are not in the given wnid list")
    samples = []
    for idx, wnid in enumerate(classes):
        folder = root / wnid
        if not folder.is_dir() and wnids is None and wnid not in found:  # ImageNet's order over a subset
            continue
        if not folder.is_dir():
            raise DatasetError(f"ImageNet class {wnid} (index {idx}): expected the folder {folder}")
        files = sorted(p for p in folder.iterdir() if _is_image(p))
        if not files:
            raise DatasetError(f"ImageNet class folder {folder} holds no {'/'.join(sorted(IMAGE_SUFFIXES))} images")
        samples += [(p, idx) for p in files]
    return Labeled(samples, classes)


def imagenet_flat(folder: str | os.PathLike, wnids: Sequence[str] | str | os.PathLike | None = None) -> Labeled:
    """One folder of `<wnid>_<anything>.<ext>` files (`n01440764_tench.JPEG`). A file without a wnid prefix, or whose
    wnid is not a class, is named in a warning, skipped and counted (`Labeled.skipped`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist: expected files like {folder}/n01440764_tench.JPEG")
    files = sorted(p for p in folder.iterdir() if _is_image(p))
    if not files:
        raise DatasetError(f"{folder} holds no images: expected files like {folder}/n01440764_tench.JPEG")
    skipped = [(str(p), "file name does not start with a wnid (n01440764_tench.JPEG)")
               for p in files if not _WNID.match(p.name)]
    files = [p for p in files if _WNID.match(p.name)]
    labels = [p.name[:9] for p in files]
    classes = _class_list(set(labels), wnids, str(folder))
    index = {w: i for i, w in enumerate(classes)}
    skipped += [(str(p), f"wnid {w} is not one of the {len(classes)} classes") for p, w in zip(files, labels)
                if w not in index]
    for path, why in skipped:
        warnings.warn(f"skipped {path}: {why}", stacklevel=2)
    samples = [(p, index[w]) for p, w in zip(files, labels) if w in index]
    if not samples:
        raise DatasetError(f"{folder}: no image is labelled by a known wnid ({len(skipped)} skipped)")
    return Labeled(samples, classes, skipped)


def _id_table(path: Path) -> dict[int, str]:
    """`<id> <value>` lines -> {id: value}."""
    if not path.is_file():
        raise DatasetError(f"expected the file {path}")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        out[int(parts[0])] = parts[1].strip()
    return out


def _check_files(samples: list[tuple[Path, int]], what: str) -> None:
    missing = [p for p, _ in samples if not p.is_file()]
    if missing:
        raise DatasetError(f"{what}: {len(missing)} image file(s) missing, first expected at {missing[0]}")


def cub200(root: str | os.PathLike, split: str = "test") -> Labeled:
    """CUB-200-2011; `root` is the `CUB_200_2011` folder (or its parent). split: test | train | all."""
    root = Path(root)
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    if split not in ("test", "train", "all"):
        raise DatasetError(f"CUB-200 split {split!r}: use test, train or all")
    images = _id_table(root / "images.txt")
    labels = _id_table(root / "image_class_labels.txt")
    is_train = _id_table(root / "train_test_split.txt")
    samples, folder_of = [], {}
    for i in sorted(images):
        if i not in labels or i not in is_train:
            raise DatasetError(f"CUB-200: image id {i} of {root / 'images.txt'} has no label in "
                               f"{root / 'image_class_labels.txt'} or no split in {root / 'train_test_split.txt'}")
        label = int(labels[i])
        if not 1 <= label <= 200:
            raise DatasetError(f"CUB-200: image id {i} has label {label}, outside 1..200")
        folder_of.setdefault(label - 1, images[i].split("/")[0])
        if split == "all" or (split == "train") == (is_train[i].strip() == "1"):
            samples.append((root / "images" / images[i], label - 1))
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = _id_table(names_file)
        classes = [names.get(k + 1, folder_of.get(k, str(k + 1))) for k in range(200)]
    else:
        classes = [folder_of.get(k, f"{k + 1:03d}") for k in range(200)]
    if not samples:
        raise DatasetError(f"CUB-200: no {split} images listed in {root / 'train_test_split.txt'}")
    _check_files(samples, f"CUB-200 ({root})")
    return Labeled(samples, classes)


FLOWERS_SPLITS = {"test": "tstid", "train": "trnid", "val": "valid"}


def flowers102(root: str | os.PathLike, split: str = "test") -> Labeled:
    """Oxford Flowers-102; `root` holds `jpg/`, `imagelabels.mat`, `setid.mat`. split: test | train | val."""
    from scipy.io import loadmat

    root = Path(root)
    if split not in FLOWERS_SPLITS:
        raise DatasetError(f"Flowers-102 split {split!r}: use one of {', '.join(FLOWERS_SPLITS)}")
    mats = {}
    for name in ("imagelabels.mat", "setid.mat"):
        if not (root / name).is_file():
            raise DatasetError(f"Flowers-102: expected the file {root / name}")
        mats[name] = loadmat(root / name)
    key = FLOWERS_SPLITS[split]
    if "labels" not in mats["imagelabels.mat"] or key not in mats["setid.mat"]:
        raise DatasetError(f"Flowers-102: {root / 'imagelabels.mat'} needs 'labels' and {root / 'setid.mat'} "
                           f"needs {key!r}")
    labels = np.asarray(mats["imagelabels.mat"]["labels"]).ravel().astype(np.int64)
    ids = np.asarray(mats["setid.mat"][key]).ravel().astype(np.int64)
    if labels.size and not (labels.min() >= 1 and labels.max() <= 102):
        raise DatasetError(f"Flowers-102: labels in {root / 'imagelabels.mat'} are outside 1..102")
    if ids.size == 0 or ids.min() < 1 or ids.max() > labels.size:
        raise DatasetError(f"Flowers-102: {key} ids in {root / 'setid.mat'} do not index the {labels.size} labels")
    samples = [(root / "jpg" / f"image_{i:05d}.jpg", int(labels[i - 1]) - 1) for i in ids.tolist()]
    _check_files(samples, f"Flowers-102 ({root})")
    return Labeled(samples, [f"{k:03d}" for k in range(1, 103)])

def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order (timm ships the list)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def imagenet_lemmas() -> list[str]:
    """A readable name per class index (timm's synset -> lemma table), e.g. 285 -> 'Egyptian cat'."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def default_imagenet_folder() -> Path | None:
    """$CARBENCH_IMAGENET, else the shared ImageNet sample beside the checkout (../shared/data/train/
    ImageNet_sample1000), else None."""
    if os.environ.get("CARBENCH_IMAGENET"):
        return Path(os.environ["CARBENCH_IMAGENET"])
    guess = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "ImageNet_sample1000"
    return guess if guess.is_dir() else None


# ---- ImageNet-C JPEG protocol --------------------------------------------------------------------------------------
def load_rgb_noted(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """(uint8 HxWx3, note): gray is replicated to RGB (as PIL `convert('RGB')`); colour modes `read_image` refuses
    (CMYK, YCbCr, ...) are converted by Pillow as torchvision's `pil_loader` does. `note` says what was converted
    (None: RGB). What `read_image` refuses otherwise raises its ImageError naming the file, which callers skip: 16-bit
    and float images (Pillow's 8-bit conversion clips them to near white), decompression bombs, broken files."""
    note = None
    try:
        px = read_image(path).pixels
    except ImageError as e:
        if "not supported" not in str(e):
            raise
        with Image.open(path) as img:
            note = f"{img.mode} converted to RGB by Pillow"
            px = np.asarray(img.convert("RGB")).copy()
    if px.ndim == 2:
        note = "gray, replicated to RGB"
        px = np.repeat(px[..., None], 3, axis=2)
    return px, note


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """`load_rgb_noted`, warning where a non-RGB mode was converted (gray replication is silent)."""
    px, note = load_rgb_noted(path)
    if note and not note.startswith("gray"):
        warnings.warn(f"{path}: {note}", stacklevel=2)
    return px


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}


def resize_center_crop(pixels: np.ndarray, resize: int = RESIZE, crop: int = CROP,
                       interpolation: str = "bilinear") -> np.ndarray:
    """torchvision `Resize(resize)` + `CenterCrop(crop)` on a PIL image, for uint8 HxW[x3] arrays; `interpolation`
    is PIL's filter (ImageNet-C: bilinear; timm's EfficientNet-Lite: bicubic)."""
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation {interpolation!r}: use one of {', '.join(_RESAMPLE)}")
    img = Image.fromarray(pixels)
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    if size != (w, h):
        img = img.resize(size, _RESAMPLE[interpolation])
    w, h = img.size
    if w < crop or h < crop:
        raise ImageError(f"{w}x{h} after resizing is smaller than the {crop}x{crop} crop")
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)  # torchvision: int(round(...))
    return np.asarray(img.crop((left, top, left + crop, top + crop))).copy()


def imagenet_c_quality(severity: int | None = None, qf: int | None = None) -> int:
    if (severity is None) == (qf is None):
        raise ValueError("give exactly one of severity (1..5) or qf")
    if qf is not None:
        return parse_qf(qf)
    if not isinstance(severity, (int, np.integer)) or isinstance(severity, bool) or not 1 <= severity <= 5:
        raise ValueError(f"ImageNet-C severity {severity!r} is outside 1..5")
    return IMAGENET_C_JPEG_QF[severity - 1]


def imagenet_c_corruption(severity: int | None = None, *, qf: int | None = None, resave85: bool = False) -> Corruption:
    """The `Corruption` of the protocol: `jpeg:q10:420`, or `jpeg:q10>85:420` with the release's re-save."""
    q = imagenet_c_quality(severity, qf)
    return Corruption("jpeg", (q, IMAGENET_C_RESAVE_QF) if resave85 else (q,))


def imagenet_c_jpeg(pixels: np.ndarray, severity: int | None = None, *, qf: int | None = None,
                    resave85: bool = False) -> tuple[np.ndarray, bytes]:
    """Clean uint8 RGB (any size) -> (224x224x3 JPEG-degraded pixels, final encoded stream). See module docstring."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    corruption = imagenet_c_corruption(severity, qf=qf, resave85=resave85)
    return apply(resize_center_crop(pixels), corruption)


class ClassificationSet(Dataset):
    """(uint8 CHW crop, label, {"index", "name"}) per (path, label); `corruption=None` gives the clean crop.

    The crop is the ImageNet-C one (`resize`/`crop`); the corruption is applied to the crop, optionally through a
    `CorruptionCache` keyed by the crop's content hash.
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], corruption: Corruption | None = None,
                 resize: int = RESIZE, crop: int = CROP, cache: CorruptionCache | None = None, preprocess=None):
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.corruption, self.resize, self.crop, self.cache = corruption, resize, crop, cache
        self.interpolation = "bilinear"
        if preprocess is not None:  # the classifier's own (efficientnet_lite.Preprocess)
            self.resize, self.crop, self.interpolation = preprocess.resize, preprocess.crop, preprocess.interpolation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        px = resize_center_crop(load_rgb(path), self.resize, self.crop, self.interpolation)
        if self.corruption is not None:
            digest = ImageRecord(path.stem, px).digest if (self.corruption.draw or self.cache) else None
            if self.cache is not None:
                px, _ = self.cache.get(px, digest, self.corruption)
            else:
                px, _ = apply(px, self.corruption, digest)
        return torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1).contiguous(), label, \
            {"index": index, "name": path.stem}


class DecodedCrops(Dataset):
    """The clean crops of labelled samples, decoded once and kept in memory: `(uint8 CHW crop, label)`.

    An unreadable file (truncated, corrupt) is named in a warning, skipped and counted (`skipped`); a gray or CMYK
    file is converted to RGB and counted (`converted`), with one warning naming them. `preprocess` (resize, crop,
    interpolation) is the classifier's own; None = ImageNet-C's 256/224 bilinear."""

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], preprocess=None, progress: bool = False,
                 skipped: Sequence[tuple[str, str]] = ()):
        resize, crop, interp = (RESIZE, CROP, "bilinear") if preprocess is None else \
            (preprocess.resize, preprocess.crop, preprocess.interpolation)
        self.crops, self.labels, self.names = [], [], []
        self.skipped, self.converted = list(skipped), []
        bar = _bar(len(samples), "decoding", progress)
        for path, label in samples:
            path = Path(path)
            try:
                px, note = load_rgb_noted(path)
                crop_px = resize_center_crop(px, resize, crop, interp)
            except ImageError as e:
                warnings.warn(f"skipped {path}: {e}", stacklevel=2)
                self.skipped.append((str(path), str(e)))
            else:
                if note:
                    self.converted.append((str(path), note))
                self.crops.append(torch.from_numpy(np.ascontiguousarray(crop_px)).permute(2, 0, 1).contiguous())
                self.labels.append(int(label))
                self.names.append(path.stem)
            bar.update(1)
        bar.close()
        if self.converted:
            kinds = sorted({n for _, n in self.converted})
            warnings.warn(f"{len(self.converted)} image(s) converted to RGB ({'; '.join(kinds)}): "
                          f"{', '.join(Path(p).name for p, _ in self.converted[:5])}"
                          f"{' ...' if len(self.converted) > 5 else ''}", stacklevel=2)
        if not self.crops:
            raise DatasetError(f"no usable image among {len(samples)} ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int):
        return self.crops[i], torch.tensor(self.labels[i])


def _bar(total: int, desc: str, enabled: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False)


class JPEGTrainingSet(Dataset):
    """Labelled training items for fine-tuning on JPEG data (the transfer-learning baseline): the ImageNet-C crop of
    each image, JPEG-compressed at a QF drawn from `qf_set`; -> (float JPEG CHW, float clean CHW, label).
    Item i is a pure function of (seed, i); `clean_share` of the items are left uncompressed (input = the clean
    crop; drawn from a stream of its own, so share 0 gives the items of earlier runs)."""

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], qf_set: Sequence[int], length: int,
                 seed: int = 0, resize: int = RESIZE, crop: int = CROP, preprocess=None, flip: bool = False,
                 clean_share: float = 0.0):
        if not samples or not qf_set:
            raise DatasetError("JPEGTrainingSet needs images and a QF set")
        self.clean = ClassificationSet(samples, None, resize, crop, preprocess=preprocess)
        self.qf_set, self.length, self.seed, self.flip = tuple(qf_set), length, seed, flip
        self.clean_share = float(clean_share)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        px, label, _ = self.clean[int(rng.integers(len(self.clean)))]
        qf = int(self.qf_set[rng.integers(len(self.qf_set))])
        if self.flip and rng.random() < 0.5:  # mirrored before compression: a new block grid over the content
            px = px.flip(-1)
        if is_clean_item(self.seed, i, self.clean_share):
            return px.float() / 255, px.float() / 255, torch.tensor(label)
        jpeg, _ = apply(np.ascontiguousarray(px.permute(1, 2, 0).numpy()), Corruption("jpeg", (qf,)))
        return (torch.from_numpy(np.ascontiguousarray(jpeg)).permute(2, 0, 1).float() / 255, px.float() / 255,
                torch.tensor(label))
