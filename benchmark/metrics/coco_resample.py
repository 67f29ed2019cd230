"""COCO box mAP recomputed on any multiset of images from per-image matching results (issue 26: paired intervals
of set-level metrics).

`matches_from_eval(ev)` keeps, from a pycocotools `COCOeval` after `evaluate()`, exactly what its `accumulate()`
reads for areaRng `all` and maxDets 100: per image and category, the detections left after the per-image maxDets
cut (in COCOeval's per-image order: score descending, stable), each with its score and two bit masks over the ten
IoU thresholds (bit t: matched to a non-ignored ground truth at iouThrs[t] / unmatched and not ignored; a detection
matched to an ignored (crowd) box has neither bit), and the number of non-ignored ground truths. Categories that
have no non-ignored ground truth anywhere are dropped (COCOeval leaves their precision -1 and the mean skips them).

`MapResampler(matches).scores(indices)` is COCOeval's `accumulate()` + `summarize()` (AP@[.50:.95], AP50, AP75)
on the images `indices` (positions 0..n-1, repeats allowed: an image drawn twice counts twice), equal to pycocotools
on a dataset holding the drawn images in increasing position order, the copies of one image under new, adjacent ids
(that fixes the order of tied scores, which COCOeval breaks by image order). On the full set it equals COCOeval's own
stats bit for bit: same float64 operations, same (t, r, k) summation order. Nothing is materialised per detection copy
but the true positives: precision at recall threshold r is the maximum precision over the positions whose recall is
>= r, and only a true positive can raise it (a false positive or an ignored detection keeps the recall and lowers or
keeps the precision); each true positive's count of detections before it comes from where its copy lands in the
resampled sequence. Vectorised over thresholds and categories (`maximum.reduceat` per (IoU threshold, category,
recall bucket) run): a few milliseconds per call on ~30k detections.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools.cocoeval import Params

_P = Params(iouType="bbox")
IOU_THRS = _P.iouThrs  # 10
REC_THRS = _P.recThrs  # 101
T, R = len(IOU_THRS), len(REC_THRS)
MAX_DETS = _P.maxDets[-1]  # 100
_EPS = np.spacing(1)
_FIELDS = ("det_image", "det_cat", "det_score", "det_tp", "det_fp", "gt_image", "gt_cat", "gt_count", "categories",
           "image_ids")


@dataclass
class Matches:
    """Per-image COCOeval matching results (areaRng all, maxDets 100) of `n_images` images (positions 0..n-1)."""

    n_images: int
    det_image: np.ndarray  # int32 (D,): image position
    det_cat: np.ndarray  # int32 (D,): index into `categories`
    det_score: np.ndarray  # float64 (D,)
    det_tp: np.ndarray  # uint16 (D,): bit t = true positive at IOU_THRS[t]
    det_fp: np.ndarray  # uint16 (D,): bit t = false positive at IOU_THRS[t]
    gt_image: np.ndarray  # int32 (G,): image position
    gt_cat: np.ndarray  # int32 (G,)
    gt_count: np.ndarray  # int32 (G,): non-ignored ground truths of (image, category), > 0
    categories: np.ndarray  # int64 (K,): COCO category ids, increasing (those with ground truth)
    image_ids: np.ndarray = field(default=None)  # int64 (n,): the COCO image id at each position

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_arrays(cls, n_images: int, arrays: dict) -> Matches:
        dtypes = {"det_image": np.int32, "det_cat": np.int32, "det_score": np.float64, "det_tp": np.uint16,
                  "det_fp": np.uint16, "gt_image": np.int32, "gt_cat": np.int32, "gt_count": np.int32,
                  "categories": np.int64, "image_ids": np.int64}
        return cls(int(n_images), **{k: np.asarray(arrays[k], dtype=dtypes[k]).reshape(-1) for k in _FIELDS})

    def to_json(self) -> dict:
        """Lists (JSON; the task-results cache)."""
        return {"n_images": self.n_images, **{k: v.tolist() for k, v in self.arrays().items()}}

    @classmethod
    def from_json(cls, d: dict) -> Matches:
        return cls.from_arrays(d["n_images"], d)

    def subset(self, positions) -> Matches:
        """The images at `positions` (distinct, increasing), renumbered 0..m-1."""
        positions = np.asarray(positions, dtype=np.int64)
        new = np.full(self.n_images, -1, dtype=np.int64)
        new[positions] = np.arange(len(positions))
        d, g = new[self.det_image] >= 0, new[self.gt_image] >= 0
        return Matches(len(positions), new[self.det_image[d]].astype(np.int32), self.det_cat[d], self.det_score[d],
                       self.det_tp[d], self.det_fp[d], new[self.gt_image[g]].astype(np.int32), self.gt_cat[g],
                       self.gt_count[g], self.categories, self.image_ids[positions])


def matches_from_eval(ev) -> Matches:
    """A pycocotools `COCOeval` after `evaluate()` (iouType bbox, default iouThrs / recThrs / maxDets, useCats)
    -> its per-image results for areaRng all, maxDets 100."""
    p = ev.params
    if not (np.array_equal(p.iouThrs, IOU_THRS) and np.array_equal(p.recThrs, REC_THRS) and p.maxDets[-1] == MAX_DETS
            and p.useCats):
        raise ValueError("per-image mAP results need COCOeval's default thresholds, maxDets and useCats")
    image_ids = np.asarray(sorted(p.imgIds), dtype=np.int64)
    pos = {int(i): k for k, i in enumerate(image_ids)}
    area_all = list(p.areaRng[p.areaRngLbl.index("all")])
    bits = (1 << np.arange(T)).astype(np.uint16)
    det, gt = [], []
    for e in ev.evalImgs:
        if e is None or list(e["aRng"]) != area_all or e["maxDet"] != MAX_DETS:
            continue
        img, cat = pos[int(e["image_id"])], int(e["category_id"])
        npig = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if npig:
            gt.append((img, cat, npig))
        scores = np.asarray(e["dtScores"][:MAX_DETS], dtype=np.float64)
        if len(scores):
            dtm = np.asarray(e["dtMatches"])[:, :MAX_DETS] != 0
            dtig = np.asarray(e["dtIgnore"])[:, :MAX_DETS].astype(bool)
            tp = ((dtm & ~dtig) * bits[:, None]).sum(0).astype(np.uint16)
            fp = ((~dtm & ~dtig) * bits[:, None]).sum(0).astype(np.uint16)
            det += [(img, cat, s, a, b) for s, a, b in zip(scores.tolist(), tp.tolist(), fp.tolist())]
    return _build(len(image_ids), det, gt, image_ids)


def _build(n: int, det: list[tuple], gt: list[tuple], image_ids) -> Matches:
    """From (image, category id, score, tp, fp) in COCOeval's per-image order and (image, category id, count)."""
    categories = np.asarray(sorted({c for _, c, _ in gt}), dtype=np.int64)
    index = {int(c): k for k, c in enumerate(categories)}
    det = [d for d in det if d[1] in index]  # a category without ground truth never counts
    # stored image by image, categories increasing, COCOeval's per-image order inside
    order = sorted(range(len(det)), key=lambda j: (det[j][0], index[det[j][1]], j))
    det = [det[j] for j in order]
    gt = sorted(gt, key=lambda g: (g[0], index[g[1]]))
    return Matches(
        n,
        np.asarray([d[0] for d in det], dtype=np.int32), np.asarray([index[d[1]] for d in det], dtype=np.int32),
        np.asarray([d[2] for d in det], dtype=np.float64), np.asarray([d[3] for d in det], dtype=np.uint16),
        np.asarray([d[4] for d in det], dtype=np.uint16),
        np.asarray([g[0] for g in gt], dtype=np.int32), np.asarray([index[g[1]] for g in gt], dtype=np.int32),
        np.asarray([g[2] for g in gt], dtype=np.int32), categories, np.asarray(image_ids, dtype=np.int64))


SCORES = ("map", "map_50", "map_75")
_T_OF = {"map_50": int(np.argmin(np.abs(IOU_THRS - 0.5))), "map_75": int(np.argmin(np.abs(IOU_THRS - 0.75)))}


class MapResampler:
    """COCO mAP of any multiset of a `Matches`' images (see the module doc)."""

    def __init__(self, m: Matches, memo: bool = False):
        """`memo`: remember the scores of each multiset asked for (the map, map_50 and map_75 rows of one set of
        results are resampled on the same photos)."""
        self.m, self.n, self.K = m, m.n_images, len(m.categories)
        self.memo: dict | None = {} if memo else None
        block = m.det_image * np.int64(self.K) + m.det_cat
        pos_in_image = np.arange(len(block)) - np.searchsorted(block, block)
        # accumulate()'s order within a category: score descending, then image, then the per-image order
        order = np.lexsort((pos_in_image, m.det_image, -m.det_score, m.det_cat))
        self.cat, self.img = m.det_cat[order].astype(np.int64), m.det_image[order].astype(np.int64)
        score = m.det_score[order]
        D = len(order)
        # runs of equal (category, score, image): the copies of an image drawn k times repeat the whole run k times
        same = np.zeros(D, dtype=bool)
        same[1:] = (np.diff(self.cat) == 0) & (np.diff(score) == 0) & (np.diff(self.img) == 0)
        self.run = np.cumsum(~same) - 1
        self.run_size = np.bincount(self.run, minlength=0).astype(np.int64)
        self.run_first = np.flatnonzero(~same)
        self.offset = np.arange(D) - self.run_first[self.run]
        self.ties = bool(same.any())
        self.cat_first = np.searchsorted(self.cat, np.arange(self.K))  # first detection of each category (or D)
        # (threshold, detection) pairs, threshold-major: true positives, and ignored detections
        tp, fp = m.det_tp[order], m.det_fp[order]
        bit = (1 << np.arange(T, dtype=np.uint16))[:, None]
        self.tp_t, self.tp_e = np.nonzero(tp[None, :] & bit)
        self.ig_t, self.ig_e = np.nonzero(~(tp | fp)[None, :] & bit)

    def _positions(self, counts: np.ndarray, t: np.ndarray, e: np.ndarray, keep: np.ndarray):
        """Every copy of the (threshold, detection) pairs: (threshold, detection, position in the resampled
        category sequence), sorted by threshold and position."""
        reps = np.where(keep, counts[self.img[e]], 0)
        pick = np.repeat(np.arange(len(e)), reps)
        copy = np.arange(len(pick)) - np.repeat(np.cumsum(reps) - reps, reps)
        e = e[pick]
        pos = self._start[e] + self.run_size[self.run[e]] * copy
        t = t[pick]
        if self.ties:  # copies of a tied run interleave: order by position
            order = np.lexsort((pos, t))
            t, e, pos = t[order], e[order], pos[order]
        return t, e, pos

    def precision(self, indices) -> np.ndarray:
        """COCOeval's precision[:, :, :, all, maxDets 100] (T, R, K), -1 for categories without ground truth."""
        q, valid = self._envelope(indices)
        out = np.full((T, R, self.K), -1.0)
        out[:, :, valid] = q[1:, :, valid].transpose(1, 0, 2)
        return out

    def _envelope(self, indices):
        """(q (R + 1, T, K): q[r + 1, t, k] = precision at REC_THRS[r], categories with ground truth `valid`)."""
        counts = np.bincount(np.asarray(indices, dtype=np.int64).reshape(-1), minlength=self.n)
        npig = np.bincount(self.m.gt_cat, weights=counts[self.m.gt_image] * self.m.gt_count, minlength=self.K)
        valid = npig > 0
        q = np.zeros((R + 1, T, self.K))  # recall bucket first: the envelope runs along axis 0
        if not valid.any():
            return q, valid
        # where each detection's first copy lands in the resampled sequence (all categories one after another)
        w = counts[self.img]
        run_out = self.run_size * w[self.run_first]
        self._start = (np.cumsum(run_out) - run_out)[self.run] + self.offset
        total = int(run_out.sum())
        cat_start = np.append(self._start, total)[self.cat_first]
        t, e, pos = self._positions(counts, self.tp_t, self.tp_e, valid[self.cat[self.tp_e]])
        if len(t):
            k = self.cat[e]
            group = t * self.K + k
            first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            tp = np.arange(len(t)) - np.repeat(first, np.diff(np.r_[first, len(t)])) + 1  # true positives so far
            seen = pos - cat_start[k] + 1  # detections so far in the category: tp + fp + ignored
            if len(self.ig_t):
                it, _, ipos = self._positions(counts, self.ig_t, self.ig_e, valid[self.cat[self.ig_e]])
                ikey = it * (total + 1) + ipos
                seen = seen - (np.searchsorted(ikey, t * (total + 1) + pos, side="right")
                               - np.searchsorted(ikey, t * (total + 1) + cat_start[k], side="left"))
            tp = tp.astype(np.float64)
            fp = (seen - tp).astype(np.float64)
            rc = tp / npig[k]
            pr = tp / (fp + tp + _EPS)
            # a detection that is no true positive never raises the precision envelope (same recall as the last
            # true positive before it, no more precision): the true positives alone give it
            bucket = np.searchsorted(REC_THRS, rc, side="right")  # recall thresholds <= rc: q[r] may use it, r < b
            key = group * (R + 1) + bucket  # non-decreasing: runs of one (threshold, category, bucket)
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            q.reshape(-1)[bucket[starts] * (T * self.K) + group[starts]] = np.maximum.reduceat(pr, starts)
            q = np.maximum.accumulate(q[::-1], axis=0)[::-1]  # best precision at recall >= bucket
        return q, valid

    def scores(self, indices, names=SCORES) -> dict[str, float]:
        """map, map_50, map_75 (fractions; NaN where no category has ground truth), as COCOeval.summarize."""
        if self.memo is not None:
            key = np.asarray(indices, dtype=np.int64).tobytes()
            if key not in self.memo:
                if len(self.memo) >= 8192:
                    self.memo.clear()
                self.memo[key] = self._scores(indices, SCORES)
            return {k: self.memo[key][k] for k in names}
        return self._scores(indices, names)

    def _scores(self, indices, names) -> dict[str, float]:
        q, valid = self._envelope(indices)
        q = q[1:, :, valid]  # (R, T, valid K)
        out = {}
        for name in names:
            v = (q if name == "map" else q[:, [_T_OF[name]]]).transpose(1, 0, 2).ravel()  # s[s > -1], same order
            out[name] = float(np.mean(v)) if len(v) else float("nan")
        return out

    def statistic(self, metric: str = "map"):
        """`indices -> the metric` (a fraction)."""
        if metric not in SCORES:
            raise ValueError(f"per-image mAP results give {', '.join(SCORES)}, not {metric!r}")
        return lambda indices: self.scores(indices, (metric,))[metric]


# ---- storage: a compact, deterministic binary file ------------------------------------------------------------------
MAGIC = b"carbench-coco-matches-v1\n"


def encode(m: Matches, image: list[str], digest: list[str]) -> bytes:
    """gzip (mtime 0) of MAGIC, a JSON header (names, digests, n), then the arrays as .npy blocks in _FIELDS order."""
    import gzip
    import io
    import json

    if len(image) != m.n_images or len(digest) != m.n_images:
        raise ValueError("per-image matches: names / digests and images of different lengths")
    buf = io.BytesIO()
    buf.write(MAGIC)
    head = json.dumps({"n_images": m.n_images, "image": list(image), "digest": list(digest),
                       "fields": list(_FIELDS)}, separators=(",", ":")).encode()
    buf.write(f"{len(head)}\n".encode())
    buf.write(head)
    for v in m.arrays().values():
        np.lib.format.write_array(buf, np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")), allow_pickle=False)
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def decode(data: bytes) -> tuple[Matches, list[str], list[str]]:
    import gzip
    import io
    import json

    buf = io.BytesIO(gzip.decompress(data))
    if buf.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a carbench per-image matches file")
    head = json.loads(buf.read(int(buf.readline())))
    arrays = {k: np.lib.format.read_array(buf, allow_pickle=False) for k in head["fields"]}
    return Matches.from_arrays(head["n_images"], arrays), head["image"], head["digest"]
