"""The regression gate's comparison: a re-measured board against the committed one (`benchmark check` re-runs the
suite: `benchmark.cli.check`).

Every committed `source=measured` row that the re-run produces again is compared metric by metric with the
tolerances of `leaderboards/tolerances.yaml`; a row the re-run produces that the committed board lacks is a
failure too (the board is stale). Exit status 0: all within tolerance; 1: regressions (a table names each one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from benchmark.boards import leaderboard

TOLERANCE_FILE = leaderboard.LEADERBOARD_DIR / "tolerances.yaml"


TASK_BOARDS = ("classification", "detection", "segmentation")


# identity of a row beyond its key: a changed count is a regression whatever the tolerance
EXACT = ("n_images",)


@dataclass
class Finding:
    board: str
    row: str
    metric: str
    committed: str
    measured: str
    tolerance: float | None
    verdict: str  # ok | REGRESSION | NOT COMMITTED

    @property
    def failed(self) -> bool:
        return self.verdict != "ok"


def load_tolerances(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    import yaml

    path = Path(path) if path else TOLERANCE_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"tolerance file {path}: {e}") from e
    bad = [f"{b}.{m}" for b, ms in data.items() for m, v in (ms or {}).items()
           if not isinstance(v, (int, float)) or v < 0]
    if bad:
        raise ValueError(f"tolerance file {path}: tolerances must be numbers >= 0: {bad}")
    return {b: {m: float(v) for m, v in (ms or {}).items()} for b, ms in data.items()}


def _key_and_metrics(board: str):
    if board == "fidelity":
        return leaderboard.FIDELITY_KEY, ["psnr", "ssim", "psnrb", "bpp"]
    return leaderboard.TASK_KEY, ["value"]


def _label(row, key) -> str:
    return " ".join(f"{k}={row[k]}" for k in key if row[k] not in ("", "measured"))


def compare(board: str, committed_csv: Path, measured_csv: Path, tolerances: dict[str, float]) -> list[Finding]:
    key, metrics = _key_and_metrics(board)
    old, new = leaderboard.read(committed_csv, board), leaderboard.read(measured_csv, board)
    if new.empty:
        return []
    committed = {tuple(r[k] for k in key): r for _, r in old.iterrows()} if not old.empty else {}
    findings = []
    for _, r in new.iterrows():
        k = tuple(r[c] for c in key)
        label = _label(r, key)
        if k not in committed:
            findings.append(Finding(board, label, "*", "-", _why_new(committed, key, k), None, "NOT COMMITTED"))
            continue
        c = committed[k]
        for m in metrics:
            tol = tolerances.get(m, 0.0)
            a, b = c.get(m, ""), r.get(m, "")
            fa, fb = _num(a), _num(b)
            same = (math.isnan(fa) and math.isnan(fb)) or abs(fa - fb) <= tol + 1e-12
            findings.append(Finding(board, label, m, a, b, tol, "ok" if same else "REGRESSION"))
        for m in EXACT:
            if m in r and c.get(m, "") != r[m]:
                findings.append(Finding(board, label, m, c.get(m, ""), r[m], 0.0, "REGRESSION"))
    return findings


def _why_new(committed: dict, key: list[str], k: tuple) -> str:
    """A re-measured row without a committed twin; says so where only its weights file differs."""
    i = key.index("weights_sha256")
    others = [c for c in committed if c[:i] + c[i + 1:] == k[:i] + k[i + 1:]]
    if any(c[i] == "" for c in others):
        return "(new row: the committed one has no weights_sha256; run `benchmark migrate-boards`)"
    if others:
        return f"(new row: other weights file; committed {', '.join(c[i] for c in others)})"
    if "model_weights_sha256" in key:
        j = key.index("model_weights_sha256")
        others = [c for c in committed if c[:j] + c[j + 1:] == k[:j] + k[j + 1:]]
        if others:
            return (f"(new row: other task-model weights file {k[j] or '(the default)'}; committed "
                    f"{', '.join(c[j] or '(the default)' for c in others)})")
    return "(new row)"


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def format_findings(findings: list[Finding], all_rows: bool = False) -> str:
    shown = [f for f in findings if all_rows or f.failed]
    n_fail = sum(f.failed for f in findings)
    head = f"{len(findings)} values compared, {n_fail} regression(s)"
    if not shown:
        return head
    lines = [head, "", "| board | row | metric | committed | measured | diff | tolerance | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for f in shown:
        diff = _num(f.measured) - _num(f.committed)
        d = f"{diff:+.4f}" if not math.isnan(diff) else "-"
        tol = "-" if f.tolerance is None else f"{f.tolerance:g}"
        lines.append(f"| {f.board} | {f.row} | {f.metric} | {f.committed} | {f.measured} | {d} | {tol} | {f.verdict} |")
    return "\n".join(lines)
