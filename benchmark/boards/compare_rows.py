"""Two rows of one board, compared on the same images: `benchmark compare --rows A B` (issue 26).

Each selector (`method=fbcnn,qf=10`, plus the `--where` conditions both share) must pick exactly one row; a selector
that matches none or several is refused, naming the values that would tell the candidates apart. A task board's rows
come one per metric: a selector that names no `metric` takes the board's headline (classification top1, detection
map, segmentation mIoU) where the candidates have it. The two rows' per-image files (`benchmark.boards.per_image`)
are paired on the image digest and the delta A - B of the headline metric (fidelity: psnr, then ssim, psnrb, lpips;
tasks: the row's metric, in percent) is printed with its paired 95 % bootstrap interval, the images paired, the
discordant images of 0/1 values and the verdict. A row without a per-image file gets no interval: the board values'
plain difference is printed and said to be unpaired.

Light at import (no pandas, numpy, torch): `parse_selector` also serves the usage checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BOARDS = ("fidelity", "classification", "detection", "segmentation")
TASK_HEADLINE = {"classification": "top1", "detection": "map", "segmentation": "mIoU"}
FIDELITY_METRICS = ("psnr", "ssim", "psnrb", "lpips")  # those in both per-image files, in this order
LOWER_IS_BETTER = ("lpips",)
DIGITS = {"psnr": 2, "psnrb": 2, "ssim": 4, "lpips": 4}  # tasks: percent, 1 decimal
MAX_LISTED = 15  # candidate rows listed in a selection error


class RowSelectionError(ValueError):
    """A selector that picks no row or several; the message lists what tells the candidates apart."""


def parse_selector(text: str) -> dict[str, str]:
    """`method=fbcnn,qf=10` -> {"method": "fbcnn", "qf": "10"}; ValueError on a malformed item or a repeated
    column. An empty value (`preset=`) matches an empty cell."""
    out: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        col, eq, value = item.partition("=")
        col, value = col.strip(), value.strip()
        if not eq or not col:
            raise ValueError(f"{item!r} is not COLUMN=VALUE (e.g. method=fbcnn,qf=10)")
        if col in out and out[col] != value:
            raise ValueError(f"column {col!r} given twice ({out[col]!r} and {value!r})")
        out[col] = value
    if not out:
        raise ValueError("no COLUMN=VALUE condition (e.g. method=fbcnn,qf=10)")
    return out


def _fmt_selector(sel: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sel.items())


def _matches(row: dict, sel: dict) -> bool:
    return all(str(row.get(k, "")) == v for k, v in sel.items())


def _differing(rows: list[dict], columns) -> list[str]:
    return [c for c in columns if len({str(r.get(c, "")) for r in rows}) > 1]


def board_rows(path: str | Path, board: str) -> tuple[list[dict], list[str]]:
    """(the board's rows as string dicts, its columns); ([], []) when there is no file."""
    from benchmark.boards import leaderboard

    df = leaderboard.read(path)
    if df.empty:
        return [], []
    return df.to_dict("records"), list(df.columns)


def key_of(board: str) -> list[str]:
    from benchmark.boards import leaderboard

    return list(leaderboard.FIDELITY_KEY if board == "fidelity" else leaderboard.TASK_KEY)


def select(rows: list[dict], columns: list[str], board: str, selector: dict, where: dict, name: str = "A",
           where_from: str = "") -> dict:
    """The one row matching `where` and `selector` (RowSelectionError otherwise)."""
    sel = {**where, **selector}
    unknown = [c for c in sel if c not in columns]
    if unknown:
        raise RowSelectionError(f"row {name} {_fmt_selector(selector)!r}: no column {', '.join(map(repr, unknown))} "
                                f"on the {board} board; its columns: {', '.join(columns)}")
    found = [r for r in rows if _matches(r, sel)]
    headline = TASK_HEADLINE.get(board)
    if len(found) > 1 and "metric" not in sel and headline and any(r.get("metric") == headline for r in found):
        found = [r for r in found if r.get("metric") == headline]
    if len(found) == 1:
        return found[0]
    what = f"row {name} {_fmt_selector(selector)!r}" + (f" (with --where {_fmt_selector(where)!r})" if where else "")
    if not found:
        hints = []
        for col, value in sel.items():
            rest = {k: v for k, v in sel.items() if k != col}
            near = sorted({str(r.get(col, "")) for r in rows if _matches(r, rest)}, key=_natural)
            if near:
                hints.append(f"  {col}={value}: none; the rows matching the other conditions have {col} in "
                             f"{', '.join(repr(v) for v in near[:MAX_LISTED])}"
                             + (f" (+{len(near) - MAX_LISTED} more)" if len(near) > MAX_LISTED else ""))
        raise RowSelectionError(f"{what} matches no row of the {board} board"
                                + (":\n" + "\n".join(hints) if hints else " (no row matches any single relaxation "
                                                                          "of it either)"))
    cols = _differing(found, key_of(board)) or _differing(found, columns)
    lines = ["  " + " ".join(f"{c}={r.get(c, '')}" for c in cols) for r in found[:MAX_LISTED]]
    if len(found) > MAX_LISTED:
        lines.append(f"  ... and {len(found) - MAX_LISTED} more")
    raise RowSelectionError(f"{what} matches {len(found)} rows of the {board} board; add conditions on "
                            f"{', '.join(cols)} to pick one:\n" + "\n".join(lines))


def _natural(v: str):
    return (0, float(v), "") if v.replace(".", "", 1).isdigit() else (1, 0.0, v)


def infer_board(folder: Path, a: dict, b: dict, where: dict) -> str:
    """The one board of `folder` in which both selectors match some row (after `where`)."""
    hits = []
    for board in BOARDS:
        rows, columns = board_rows(folder / f"{board}.csv", board)
        if not rows:
            continue
        ok = [all(c in columns for c in {**where, **s}) and any(_matches(r, {**where, **s}) for r in rows)
              for s in (a, b)]
        if all(ok):
            hits.append(board)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise RowSelectionError(f"no board in {folder} has rows matching both {_fmt_selector(a)!r} and "
                                f"{_fmt_selector(b)!r}" + (f" (with --where {_fmt_selector(where)!r})" if where else "")
                                + f"; name it with --board ({', '.join(BOARDS)})")
    raise RowSelectionError(f"both selectors match rows on the {', '.join(hits[:-1])} and {hits[-1]} boards: name "
                            f"one with --board")


@dataclass
class MetricDelta:
    metric: str
    result: object  # PairedDelta
    unit: str
    digits: int

    def verdict(self) -> str:
        v = self.result.verdict()
        if self.metric in LOWER_IS_BETTER and v != "tie":
            v = "worse" if v == "better" else "better"
        return v


@dataclass
class RowComparison:
    board: str
    board_path: Path
    a: dict
    b: dict
    metric: str  # the headline per-image column
    value_a: str
    value_b: str
    unit: str
    files: tuple  # the two per-image paths
    missing: list[str] = field(default_factory=list)  # "A" / "B": rows without a per-image file (or without metric)
    deltas: list[MetricDelta] = field(default_factory=list)  # headline first
    n_a: int = 0  # images in each file
    n_b: int = 0
    error: str = ""  # pairing failed (no image in common, NaN values)

    @property
    def headline(self) -> MetricDelta | None:
        return self.deltas[0] if self.deltas else None


def compare(board_path: str | Path, board: str, a: dict, b: dict) -> RowComparison:
    """Pair the two rows' per-image files on the image digest: the headline metric's delta A - B first."""
    from benchmark.boards import per_image

    board_path = Path(board_path)
    key = key_of(board)
    metric, scale = per_image.headline(board, a)
    if board != "fidelity" and str(b.get("metric")) != metric:
        raise RowSelectionError(f"row A is a {metric} row and row B a {b.get('metric')} row: compare rows of one "
                                f"metric")
    value_col = "psnr" if board == "fidelity" else "value"
    unit = "dB" if board == "fidelity" else "points (percent)"
    files = (per_image.existing_path(board_path, a, key), per_image.existing_path(board_path, b, key))
    out = RowComparison(board, board_path, a, b, metric, str(a.get(value_col, "")), str(b.get(value_col, "")), unit,
                        files)
    values = []
    for name, r in zip("AB", (a, b)):
        v = per_image.read_any(board_path, r, key)  # detection mAP rows: COCOeval matches, recomputed per resample
        if v is None or not per_image.gives(v, metric):
            out.missing.append(name)
        values.append(v)
    if out.missing:
        return out
    va, vb = values
    out.n_a, out.n_b = len(va["digest"]), len(vb["digest"])
    metrics = [m for m in FIDELITY_METRICS if m in va and m in vb] if board == "fidelity" else [metric]
    try:
        for m in metrics:
            p = per_image.paired(va, vb, m, scale)
            out.deltas.append(MetricDelta(m, p.result, "dB" if m in ("psnr", "psnrb") else "" if board == "fidelity"
                                          else "points", DIGITS.get(m, 1 if board != "fidelity" else 4)))
    except ValueError as e:
        out.error = str(e)
        out.deltas = []
    return out


def _label(r: dict) -> str:
    return r["method"] if r.get("preset", "") in ("", "none") else f"{r['method']}.{r['preset']}"


def report(c: RowComparison) -> list[str]:
    """The lines `benchmark compare --rows` prints."""
    from benchmark.metrics.paired import LEVEL, RESAMPLES

    key = key_of(c.board)
    differ = _differing([c.a, c.b], key)
    shared = [k for k in key if k not in differ and str(c.a.get(k, "")) not in ("",)]
    lines = [f"{c.board} board {c.board_path}: {c.metric}" + (" (percent)" if c.board != "fidelity" else " (dB)"),
             "  shared: " + " ".join(f"{k}={c.a.get(k, '')}" for k in shared)]
    for name, r, v in (("A", c.a, c.value_a), ("B", c.b, c.value_b)):
        lines.append(f"  {name}: {_label(r):<18} " + " ".join(f"{k}={r.get(k, '')}" for k in differ
                                                              if k not in ("method", "preset"))
                     + f"  {c.metric} {v}")
    if c.missing:
        for name, path in zip("AB", c.files):
            if name in c.missing:
                lines.append(f"  row {name} has no per-image {c.metric} values ({path} not found): no paired "
                             f"interval")
        try:
            diff = float(c.value_a) - float(c.value_b)
            lines.append(f"  board values A - B: {diff:+.2f} (unpaired, no interval: re-run the row(s) to record "
                         f"per-image values)")
        except ValueError:
            pass
        return lines
    if c.error:
        lines.append(f"  no paired interval: {c.error} ({c.n_a} images in A, {c.n_b} in B)")
        return lines
    h = c.headline
    n = h.result.n_images
    pairs = f"{n} images paired" + ("" if n == c.n_a == c.n_b else
                                     f" (the images in both: {c.n_a} in A, {c.n_b} in B)")
    lines.append(f"  {pairs}; paired bootstrap, {RESAMPLES} resamples, {LEVEL * 100:.0f} % interval")
    for d in c.deltas:
        unit = f" {d.unit}" if d.unit else ""
        lines.append(f"  delta A - B {d.metric:<6} {d.result.format(d.digits)}{unit}  {d.verdict()}")
    if h.result.better is not None:
        lines.append(f"  discordant images: {h.result.better} A right / B wrong, {h.result.worse} A wrong / B right")
    v = h.verdict()
    lines.append(f"verdict: A is {v} than B on {c.metric}" if v != "tie" else
                 f"verdict: tie on {c.metric} (the 95 % interval contains 0)")
    return lines
