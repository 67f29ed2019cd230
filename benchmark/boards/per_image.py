"""Per-image results kept beside a board, and the paired 95 % interval of each row's delta to its reference.

Every measured row that carries per-image values (fidelity rows; classification rows) gets one file,
`<board dir>/per_image/<board>/<digest>.csv.gz`, where `digest` is the first 16 hex digits of the sha256 of the
row's key values (as the board stores them, joined by NUL, which no CSV cell holds). One line per image in image
order: its name, its content digest, then its values (`repr` floats). gzip with mtime 0 and written atomically
(temp file + rename): the same run gives byte-identical files.

Detection mAP rows (`map*`, `consistency_map*`) keep, instead, `<digest>.coco.gz`: the per-image COCOeval matching
results from which `benchmark.metrics.coco_resample` recomputes COCO mAP on any resample of the images (names,
digests, then per detection: image, category, score, per-IoU-threshold true/false positive bits; per image and
category: non-ignored ground truths; gzip mtime 0, atomic, about 0.2 MB per 1000 photos and 30 detections each).
Label-proxy rows keep their per-photo 0/1 hits, segmentation rows the per-image counts (`inter_XX`, `union_XX`,
`label_XX` per class, `correct`, `total`) in the CSV; segmentation rows on photos add their per-photo
`consistency_iou` and `consistency_boundary_f`.

`delta`, `delta_lo`, `delta_hi`: the row's headline metric minus its reference row's (fidelity: `psnr` vs `jpeg`
on the same data set, channels and corruption; tasks: the row's metric vs `direct`, or `clean` for codec `none`),
paired on the image digest, with the paired bootstrap interval of `benchmark.metrics.paired`: per-image values
(PSNR, 0/1 correctness and hits) resample their mean, set-level metrics (COCO mAP; mIoU, mAcc, aAcc) are recomputed
on each resample of photos for both rows (`paired_delta_of`). A row whose reference has no per-image file gets ""
(no interval is invented).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.metrics.paired import PairedDelta, paired_delta, paired_delta_of

KEY = "_per_image"  # a row's per-image values: {"image": [...], "digest": [...], metric: [...], ...}; never a column
DELTA_COLUMNS = ("delta", "delta_lo", "delta_hi")
FIDELITY_FIELDS = ("psnr", "ssim", "psnrb", "lpips", "bpp")  # in this order, those scored
FIDELITY_MATCH = ("dataset", "channels", "codec", "qf", "passes", "subsampling", "seed")
TASK_MATCH = ("task", "model", "model_weights_sha256", "dataset", "codec", "qf", "passes", "subsampling", "seed",
              "metric")
_SEP = "\x00"
# key columns added after per-image files were written: left out of the digest while empty, so a row of a board
# written before them keeps its file name
_DIGEST_OPTIONAL = ("model_weights_sha256",)


def _cell(v) -> str:
    from benchmark.boards.leaderboard import _fmt

    return _fmt(v)


def row_digest(row: dict, key) -> str:
    """First 16 hex digits of the sha256 of the row's key values, as the board stores them."""
    cells = [_cell(row.get(k, "")) for k in key]
    cells = [v for k, v in zip(key, cells) if v != "" or k not in _DIGEST_OPTIONAL]
    return hashlib.sha256(_SEP.join(cells).encode()).hexdigest()[:16]


def path_for(board_path: str | os.PathLike, row: dict, key, suffix: str = ".csv.gz") -> Path:
    board_path = Path(board_path)
    return board_path.parent / "per_image" / board_path.stem / f"{row_digest(row, key)}{suffix}"


MATCHES_SUFFIX = ".coco.gz"  # detection mAP rows: per-image COCOeval matches (benchmark.metrics.coco_resample)


def _atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_matches(path: str | os.PathLike, values: dict) -> Path:
    """A detection row's per-image matches (`values["_matches"]`, a coco_resample.Matches), atomically."""
    from benchmark.metrics import coco_resample

    return _atomic(Path(path), coco_resample.encode(values["_matches"], values["image"], values["digest"]))


def read_matches(path: str | os.PathLike) -> dict | None:
    """{"image", "digest", "_matches"}; None when there is no file."""
    from benchmark.metrics import coco_resample

    try:
        m, image, digest = coco_resample.decode(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    return {"image": image, "digest": digest, "_matches": m}


def columns_of(values: dict) -> list[str]:
    """The value columns of a per-image dict, in a fixed order."""
    fixed = [c for c in FIDELITY_FIELDS if c in values]
    return fixed + sorted(c for c in values if c not in fixed and c not in ("image", "digest"))


def encode(values: dict) -> bytes:
    cols = columns_of(values)
    n = len(values["image"])
    if len(values["digest"]) != n or any(len(values[c]) != n for c in cols):
        raise ValueError("per-image values: columns of different lengths")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "digest", *cols])
    for i in range(n):
        w.writerow([values["image"][i], values["digest"][i], *(repr(float(values[c][i])) for c in cols)])
    return gzip.compress(buf.getvalue().encode(), compresslevel=9, mtime=0)


def write(path: str | os.PathLike, values: dict) -> Path:
    """Atomic: a temp file in the same folder, then a rename."""
    return _atomic(Path(path), encode(values))


def read(path: str | os.PathLike) -> dict | None:
    """{"image": [...], "digest": [...], metric: float64 array, ...}; None when there is no file."""
    try:
        text = gzip.decompress(Path(path).read_bytes()).decode()
    except FileNotFoundError:
        return None
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    out: dict = {"image": [r[0] for r in body], "digest": [r[1] for r in body]}
    for j, c in enumerate(header[2:], start=2):
        out[c] = np.array([float(r[j]) for r in body], dtype=np.float64)
    return out


@dataclass(frozen=True)
class Paired:
    result: PairedDelta
    note: str  # "" when both files hold the same images


def _common(a: dict, b: dict):
    """Positions in `a` and `b` of the images in both (a's order; a digest seen k times pairs its k-th
    occurrences), and a note when the sets differ."""
    def keyed(v):
        seen: Counter = Counter()
        out = {}
        for i, d in enumerate(v["digest"]):
            out[(d, seen[d])] = i
            seen[d] += 1
        return out

    ka, kb = keyed(a), keyed(b)
    common = [k for k in ka if k in kb]  # a's image order
    note = ""
    if len(common) != len(ka) or len(common) != len(kb):
        note = (f"paired on the {len(common)} image(s) in both ({len(ka)} in the row, {len(kb)} in its "
                f"reference)")
    return np.array([ka[k] for k in common], dtype=np.int64), np.array([kb[k] for k in common], dtype=np.int64), note


def paired(a: dict, b: dict, metric: str, scale: float = 1.0) -> Paired:
    """`a`'s metric minus `b`'s, paired on the image digest (a digest seen k times pairs its k-th occurrences);
    only images in both files count, and the note says when the sets differ. Set-level metrics (detection
    `_matches`: COCO mAP; segmentation counts: mIoU, mAcc, aAcc) are recomputed for both on each resample; a metric
    kept as a per-image column (segmentation on photos: `consistency_iou`, `consistency_boundary_f`) resamples its
    mean."""
    ia, ib, note = _common(a, b)
    if "_matches" in a or ("inter_00" in a and metric not in a):
        sa, sb = set_statistic(a, metric), set_statistic(b, metric)
        if sa is None or sb is None:
            raise ValueError(f"no per-image results for {metric}")
        if not len(ia):
            raise ValueError("no image in both")
        r = paired_delta_of(lambda i: (sa(ia[i]), sb(ib[i])), len(ia))
    else:
        r = paired_delta(a[metric][ia], b[metric][ib])
    if scale != 1.0:
        r = PairedDelta(r.delta * scale, r.lo * scale, r.hi * scale, r.n_images, r.resamples, r.better, r.worse)
    return Paired(r, note)


_RESAMPLERS: dict = {}  # id(Matches) -> MapResampler (its memo serves the map / map_50 / map_75 rows alike)


def set_statistic(values: dict, metric: str):
    """`positions -> metric` (a fraction) for set-level per-image results, None when they do not give it."""
    if "_matches" in values:
        from benchmark.metrics.coco_resample import SCORES, MapResampler

        name = metric.removeprefix("consistency_")
        if name not in SCORES:
            return None
        m = values["_matches"]
        rs = _RESAMPLERS.get(id(m))
        if rs is None or rs.m is not m:
            if len(_RESAMPLERS) > 16:
                _RESAMPLERS.clear()
            rs = _RESAMPLERS[id(m)] = MapResampler(m, memo=True)
        return rs.statistic(name)
    if "inter_00" in values:
        from benchmark.metrics.segmentation import counts_statistic

        try:
            return counts_statistic(values, metric)
        except ValueError:
            return None
    return None


def read_any(board_path, row: dict, key) -> dict | None:
    """The row's per-image results: its matches file (detection mAP rows) or its CSV; None when neither."""
    return read_matches(path_for(board_path, row, key, MATCHES_SUFFIX)) or read(path_for(board_path, row, key))


def existing_path(board_path, row: dict, key) -> Path:
    """The row's per-image file: its matches file where there is one, else its CSV (which may not exist)."""
    matches = path_for(board_path, row, key, MATCHES_SUFFIX)
    return matches if matches.exists() else path_for(board_path, row, key)


def reference_of(board: str, row: dict, candidates: list[dict]) -> dict | None:
    """The row's reference among `candidates` (the first match), None for a reference row or when none."""
    if board == "fidelity":
        ref, match = "jpeg", FIDELITY_MATCH
    else:
        ref, match = ("clean" if _cell(row.get("codec")) == "none" else "direct"), TASK_MATCH
    if row.get("method") in (("jpeg",) if board == "fidelity" else ("direct", "clean")):
        return None
    for c in candidates:
        if c.get("method") == ref and c.get("source") == "measured" and \
                all(_cell(c.get(k, "")) == _cell(row.get(k, "")) for k in match):
            return c
    return None


def headline(board: str, row: dict) -> tuple[str, float]:
    """(per-image column, scale to the row's unit): fidelity psnr; tasks the row's metric, 0/1 -> percent."""
    return ("psnr", 1.0) if board == "fidelity" else (str(row["metric"]), 100.0)


def _content(values: dict) -> str:
    """A digest of per-image matches (images and arrays): rows with the same content share one object."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_SEP.join(values["digest"]).encode())
    for v in values["_matches"].arrays().values():
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def gives(values: dict, metric: str) -> bool:
    """Whether per-image results give `metric`: a per-image column, or a set-level statistic of them."""
    if metric in values and metric not in ("image", "digest"):  # a per-image column
        return True
    if "_matches" in values or "inter_00" in values:
        return set_statistic(values, metric) is not None
    return False


def _reference_values(board_path, ref: dict, key, cache: dict) -> dict | None:
    """The reference's per-image results: from this run's row where it has them (same bytes as its file), else
    from its file; one object per content, so that a reference's mAP is recomputed once for its three rows."""
    values = ref.get(KEY) if ref.get("source", "measured") == "measured" else None
    if not values:
        values = read_any(board_path, ref, key)
        if values is None:
            return None
    if "_matches" in values:
        values = cache.setdefault(_content(values), values)
    else:
        values = {k: (list(v) if k in ("image", "digest") else np.asarray(v, dtype=np.float64))
                  for k, v in values.items()}
    return values


def record(board_path: str | os.PathLike, board: str, rows: list[dict], key, existing: list[dict] = ()) -> list[str]:
    """Write each row's per-image file and fill its delta columns (in place); `existing`: the board's rows before
    this run (references measured earlier). Returns notes (intersections, failures) to print."""
    notes: list[str] = []
    for r in rows:
        if r.get(KEY) and r.get("source", "measured") == "measured":
            try:
                if "_matches" in r[KEY]:
                    write_matches(path_for(board_path, r, key, MATCHES_SUFFIX), r[KEY])
                else:
                    write(path_for(board_path, r, key), r[KEY])
            except (OSError, ValueError) as e:
                notes.append(f"per-image file of {r.get('method')} {r.get('qf')} not written: {e}")
    candidates = list(rows) + list(existing)
    cache: dict = {}  # reference files read once (map, map_50, map_75 rows share a reference's matches object)
    for r in rows:
        for c in DELTA_COLUMNS:
            r[c] = ""
        ref = reference_of(board, r, candidates)
        if ref is None or not r.get(KEY):
            continue
        metric, scale = headline(board, r)
        ref_values = _reference_values(board_path, ref, key, cache)
        own = {k: (list(v) if k in ("image", "digest") else v if k == "_matches" else np.asarray(v, dtype=np.float64))
               for k, v in r[KEY].items()}
        if "_matches" in own:
            own = cache.setdefault(_content(own), own)
        if ref_values is None or not (gives(own, metric) and gives(ref_values, metric)):
            continue
        try:
            p = paired(own, ref_values, metric, scale)
        except ValueError as e:  # no common image, NaN/inf values
            notes.append(f"{r.get('method')} {r.get('qf')}: no paired interval ({e})")
            continue
        r["delta"], r["delta_lo"], r["delta_hi"] = p.result.delta, p.result.lo, p.result.hi
        r["_paired"] = p.result
        if p.note:
            notes.append(f"{r.get('method')} {r.get('dataset')} {r.get('qf')}: {p.note}")
    return notes
