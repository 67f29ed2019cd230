"""Degradations: one value type, one function that applies it with Pillow, one on-disk cache.

A `Corruption` has a stable string key (`jpeg:q10:420`, `jpeg:q30>10:420`, `jpeg:x3of25/18/15/10/7:s0:420`,
`avif:q50:420`); everything downstream refers to a corruption by that key. Same pixels + same key -> same bytes.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

CODECS = ("jpeg", "avif")
SUBSAMPLING = {"420": "4:2:0", "444": "4:4:4"}
AFD_QF_SET = (25, 18, 15, 10, 7)  # ImageNet-C JPEG severities, the AFD paper's multi-pass set
MAX_PASSES = 5


class CorruptionError(ValueError):
    """A corruption spec that cannot be used; the message names the bad part."""


def parse_qf(value) -> int:
    """A quality factor: an integer 1..100 (ints, '10', 10.0 accepted; 10.5, 'ten', 0, 101 refused)."""
    try:
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"[+-]?\d+", value):
                raise ValueError
            q = int(value)
        elif isinstance(value, (bool, np.bool_)):
            raise ValueError
        elif isinstance(value, (int, np.integer)):
            q = int(value)
        elif isinstance(value, float) and value.is_integer():
            q = int(value)
        else:
            raise ValueError
    except ValueError:
        raise CorruptionError(f"quality factor {value!r} is not an integer") from None
    if not 1 <= q <= 100:
        raise CorruptionError(f"quality factor {q} is outside 1..100")
    return q


@dataclass(frozen=True)
class Corruption:
    """A degradation.

    - fixed chain: `qf=(10,)` one pass; `qf=(30, 10)` double compression Q1 -> Q2.
    - random multi-pass: `passes=N, draw=True`: each of N passes draws its QF from `qf` (a set), seeded by
      (`seed`, image content), so every image gets its own reproducible sequence.
    """

    codec: str = "jpeg"
    qf: tuple[int, ...] = (10,)
    passes: int = 1
    draw: bool = False
    subsampling: str = "420"
    seed: int = 0

    def __post_init__(self):
        if self.codec not in CODECS:
            raise CorruptionError(f"unknown codec {self.codec!r}: use one of {', '.join(CODECS)}")
        if self.subsampling not in SUBSAMPLING:
            raise CorruptionError(f"unknown chroma subsampling {self.subsampling!r}: use 420 or 444")
        qf = tuple(parse_qf(q) for q in (self.qf if isinstance(self.qf, (tuple, list)) else (self.qf,)))
        if not qf:
            raise CorruptionError("no quality factor given")
        object.__setattr__(self, "qf", qf)
        if not isinstance(self.passes, (int, np.integer)) or not 1 <= self.passes <= MAX_PASSES:
            raise CorruptionError(f"passes={self.passes!r} is outside 1..{MAX_PASSES}")
        if not self.draw and len(qf) != self.passes:
            object.__setattr__(self, "passes", len(qf))
            if len(qf) > MAX_PASSES:
                raise CorruptionError(f"{len(qf)} chained passes exceed {MAX_PASSES}")

    # ---- names -------------------------------------------------------------------------------------------------
    @property
    def qf_label(self) -> str:
        """The leaderboard's `qf` cell: `10`, `30>10`, or the drawn-from set `25/18/15/10/7`."""
        return "/".join(map(str, self.qf)) if self.draw else ">".join(map(str, self.qf))

    @property
    def key(self) -> str:
        parts = [self.codec]
        parts.append(f"x{self.passes}of{self.qf_label}:s{self.seed}" if self.draw else f"q{self.qf_label}")
        parts.append(self.subsampling)
        return ":".join(parts)

    @property
    def file_key(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.key)

    @classmethod
    def from_key(cls, key: str) -> "Corruption":
        m = re.fullmatch(r"(\w+):(?:q([\d>]+)|x(\d)of([\d/]+):s(\d+)):(\d+)", key)
        if not m:
            raise CorruptionError(f"malformed corruption key {key!r}")
        codec, chain, n, qset, seed, sub = m.groups()
        if chain:
            return cls(codec, tuple(int(q) for q in chain.split(">")), subsampling=sub)
        return cls(codec, tuple(int(q) for q in qset.split("/")), passes=int(n), draw=True, seed=int(seed),
                   subsampling=sub)

    # ---- the QFs one image gets --------------------------------------------------------------------------------
    def qf_sequence(self, digest: str) -> tuple[int, ...]:
        if not self.draw:
            return self.qf
        rng = np.random.default_rng([self.seed, int(digest, 16)])
        return tuple(int(q) for q in rng.choice(self.qf, size=self.passes))


def encode(pixels: np.ndarray, codec: str, qf: int, subsampling: str = "420") -> bytes:
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    if codec == "jpeg":
        # gray -> single-component JPEG; colour -> YCbCr with the requested chroma subsampling
        kw = {} if img.mode == "L" else {"subsampling": SUBSAMPLING[subsampling]}
        img.save(buf, format="JPEG", quality=qf, **kw)
    else:
        # AVIF is colour-only in libavif's common builds: gray goes in as RGB and comes back as luma
        if img.mode == "L":
            img = img.convert("RGB")
        img.save(buf, format="AVIF", quality=qf, subsampling=SUBSAMPLING[subsampling], speed=6, max_threads=1)
    return buf.getvalue()


def decode(data: bytes, gray: bool) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if gray and img.mode != "L":
            img = img.convert("L")
        elif not gray and img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img).copy()


def apply(pixels: np.ndarray, corruption: Corruption, digest: str | None = None) -> tuple[np.ndarray, bytes]:
    """Degrade uint8 pixels; returns (decoded pixels, the final encoded stream)."""
    if corruption.draw and digest is None:
        raise CorruptionError("a drawn multi-pass corruption needs the image digest as its seed")
    gray = pixels.ndim == 2
    out, data = pixels, b""
    for q in corruption.qf_sequence(digest or ""):
        data = encode(out, corruption.codec, q, corruption.subsampling)
        out = decode(data, gray)
    return out, data


def codec_versions() -> dict[str, str]:
    """The codec libraries behind the numbers; recorded with results."""
    import PIL

    return {
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg") or "?",
        "libjpeg_turbo": features.version("libjpeg_turbo") or "",
        "libavif": features.version("avif") or "",
    }


def default_cache_dir() -> Path:
    return Path(os.environ.get("CARBENCH_CACHE", Path.home() / ".cache" / "carbench"))


class CorruptionCache:
    """Decoded corrupted pixels on disk, keyed by (image content digest, corruption key).

    The decoded pixels (raw uint8 `.u8`, the clean image's shape: a codec never changes it) are what re-runs read,
    so a warm run neither encodes nor decodes nor parses a header; the final encoded stream is kept beside it (bits
    per pixel, inspection). Writes go to a temporary name and are renamed into place,
    so concurrent runs (DDP ranks) never read half a file.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root else default_cache_dir() / "corruptions"
        self.enabled = enabled

    def paths(self, digest: str, corruption: Corruption) -> tuple[Path, Path]:
        """(decoded pixels, encoded stream) of one image under one corruption."""
        d = self.root / digest[:2] / digest
        ext = "jpg" if corruption.codec == "jpeg" else "avif"
        return d / f"{corruption.file_key}.u8", d / f"{corruption.file_key}.{ext}"

    def get(self, pixels: np.ndarray, digest: str, corruption: Corruption) -> tuple[np.ndarray, int]:
        """(corrupted pixels, size of the encoded stream in bytes)."""
        if not self.enabled:
            out, data = apply(pixels, corruption, digest)
            return out, len(data)
        raw, stream = self.paths(digest, corruption)
        try:
            out = np.fromfile(raw, dtype=np.uint8)
            if out.size == pixels.size:  # else a foreign or damaged file: recompute it
                return out.reshape(pixels.shape), stream.stat().st_size
        except (FileNotFoundError, OSError):
            pass
        out, data = apply(pixels, corruption, digest)
        raw.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(stream, data)  # the stream first: a present .u8 implies its stream is there
        atomic_write(raw, np.ascontiguousarray(out).tobytes())
        return out, len(data)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename into place: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def is_clean_item(seed: int, i: int, share: float) -> bool:
    """Whether training item i of a run with this seed is left uncompressed (its own random stream: share 0 leaves
    every other draw as it was)."""
    return share > 0 and np.random.default_rng([seed, i, 7919]).random() < share
