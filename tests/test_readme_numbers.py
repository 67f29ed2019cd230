"""Every measured number in the README's headline tables is its board row's, rounded as shown: values, and the
paired 95 % intervals where the row has one (a cell marked `·` is a row measured before per-image files, and its
board row must indeed have no interval). Reads only the committed boards: runs anywhere, in a second."""
from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BOARDS = ROOT / "leaderboards"
QFS = ("25", "18", "15", "10", "7")
INTERVAL = re.compile(r"\*{0,2}([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]\*{0,2}")


def _board(name: str) -> pd.DataFrame:
    from benchmark.boards import leaderboard

    return leaderboard.read(BOARDS / f"{name}.csv", name)  # as strings; columns newer than the file read as ""


def _rounded(cell: str, decimals: int) -> str:
    """A board cell (its decimal string) to `decimals` places, half to even on the decimal digits."""
    return str(Decimal(cell).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN))


def _signed(cell: str, decimals: int) -> str:
    return ("+" if Decimal(cell) >= 0 else "") + _rounded(cell, decimals)


def _table(header_start: str) -> list[list[str]]:
    """The README table whose header line starts with `header_start`: its body rows as stripped cells."""
    lines = README.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, header_start
    return rows


def method_and_preset(name: str) -> tuple[str, str | None]:
    """A task table's first cell, `method (preset[, note])` or `direct (no restoration)` -> (method, preset)."""
    m = re.fullmatch(r"([\w.]+)(?: \((\w+)[^)]*\))?", name)
    assert m, name
    return m[1], (m[2] if m[1] != "direct" else None)


def _check_interval(text: str, row: pd.Series, decimals: int, where: str) -> None:
    """`text` holds the row's interval exactly when the board row has one, bold exactly when it excludes 0."""
    m = INTERVAL.search(text)
    if row.delta_lo == "":
        assert m is None, f"{where}: the README shows an interval the board row does not have"
        return
    assert m is not None, f"{where}: the board row has an interval the README does not show"
    shown = m.groups()
    expected = tuple(_signed(row[c], decimals) for c in ("delta", "delta_lo", "delta_hi"))
    assert shown == expected, where
    distinguishable = Decimal(row.delta_lo) > 0 or Decimal(row.delta_hi) < 0
    assert m.group(0).startswith("**") == distinguishable, f"{where}: bold marks the intervals that exclude 0"


def test_classification_table_is_the_board():
    board = _board("classification")
    rows = board[(board.model == "efficientnet_lite0") & (board.dataset == "imagenet-sample1000") &
                 (board.source == "measured") & (board.metric == "top1") & board.passes.isin(["0", "1"])]
    checked = 0
    for cells in _table("| method (preset) | clean | Q25"):
        method, preset = method_and_preset(cells[0])
        of_it = rows[(rows.method == method) & (rows.preset == preset)] if preset else rows[rows.method == method]
        for column, cell in zip(("clean", *QFS), cells[1:7]):
            if not cell:
                continue
            if column == "clean":
                match = rows[(rows.method == "clean") & (rows.codec == "none")] if method == "direct" else \
                    of_it[of_it.codec == "none"]
            else:
                match = of_it[(of_it.codec == "jpeg") & (of_it.qf == column)]
            assert len(match) == 1, (method, column)
            row = match.iloc[0]
            assert cell.split()[0] == _rounded(row.value, 1), (method, column)
            if method not in ("direct", "clean"):
                _check_interval(cell, row, 1, f"{method} {column}")
                assert ("·" in cell) == (row.delta_lo == ""), f"{method} {column}: `·` marks rows without interval"
            checked += 1
    assert checked >= 50


def test_fidelity_table_is_the_board():
    board = _board("fidelity")
    rows = board[(board.source == "measured") & (board.qf == "10") & (board.codec == "jpeg") & (board.passes == "1")]
    checked = 0
    for cells in _table("| method | source | LIVE1 (RGB)"):
        if cells[1] != "measured":
            continue
        name = cells[0].split(" (")[0]
        method, _, preset = name.partition(".")
        preset = preset or "none"
        for dataset, cell in zip(("live1", "live1-gray", "classic5"), cells[2:5]):
            if not cell:
                continue
            match = rows[(rows.method == method) & (rows.preset == preset) & (rows.dataset == dataset)]
            assert len(match) == 1, (name, dataset)
            row = match.iloc[0]
            values = cell.split(" (")[0].split(" / ")
            decimals = [len(v.split(".")[1]) for v in values]
            assert values == [_rounded(row[m], d) for m, d in zip(("psnr", "ssim", "psnrb"), decimals)], (name, dataset)
            if method != "jpeg":
                _check_interval(cell, row, 2, f"{name} {dataset}")
            checked += 1
    assert checked >= 15


def test_detection_table_is_the_board():
    board = _board("detection")
    bdrate = pd.read_csv(BOARDS / "bdrate.csv", dtype=str, keep_default_na=False)
    bdrate = bdrate[(bdrate.board == "detection") & (bdrate.model == "centernet_mbv3") & (bdrate.codec == "jpeg")
                    & (bdrate.dataset == "imagenet-sample1000") & (bdrate.source == "measured")]
    rows = board[(board.model == "centernet_mbv3") & (board.dataset == "imagenet-sample1000") &
                 (board.source == "measured") & (board.codec == "jpeg") & (board.passes == "1")]

    def row(method, qf, metric):
        match = rows[(rows.method == method) & (rows.qf == qf) & (rows.metric == metric)]
        assert len(match) == 1, (method, qf, metric)
        return match.iloc[0]

    table = _table("| method | Q25 | Q18 | Q15 | Q10 | Q7 |")
    for cells in table:
        method = {"direct (JPEG)": "direct", "urie (authors')": "urie"}.get(cells[0], cells[0])
        for qf, cell in zip(QFS, cells[1:6]):
            assert cell == " / ".join(_rounded(row(method, qf, m).value, 1)
                                      for m in ("consistency_map", "label_proxy")), (method, qf)
        if method != "direct":
            delta = cells[6]
            if delta == "·":
                assert row(method, "10", "consistency_map").delta_lo == ""
            else:
                shown_map, shown_proxy = delta.split(" / ")
                _check_interval(shown_map, row(method, "10", "consistency_map"), 1, f"{method} mAP")
                _check_interval(shown_proxy, row(method, "10", "label_proxy"), 1, f"{method} proxy")
            bd = bdrate[(bdrate.method == method) & (bdrate.metric == "consistency_map")]
            assert len(bd) == 1, (method, "BD-rate")
            bd = bd.iloc[0]
            shown = f"{_rounded(bd.bd_rate_pct, 1)} %"
            if bd.bd_rate_lo != "":  # with its interval (mAP recomputed per resample), bold where it excludes 0
                shown += f" [{_rounded(bd.bd_rate_lo, 1)}, {_rounded(bd.bd_rate_hi, 1)}]"
                if float(bd.bd_rate_hi) < 0 or float(bd.bd_rate_lo) > 0:
                    shown = f"**{shown}**"
            assert cells[7] == shown, (method, "BD-rate")
    assert len(table) >= 8


@pytest.mark.parametrize("board", ["fidelity", "classification", "detection"])
def test_every_interval_shown_has_its_per_image_file(board):
    """A row with an interval on the board keeps the per-image file it was computed from."""
    from benchmark.boards import leaderboard, per_image

    df = leaderboard.read(BOARDS / f"{board}.csv", board)
    key = leaderboard.FIDELITY_KEY if board == "fidelity" else leaderboard.TASK_KEY
    with_interval = df[(df.delta_lo != "") & (df.source == "measured")]
    for r in with_interval.to_dict("records"):
        assert per_image.path_for(BOARDS / f"{board}.csv", r, key).exists() or \
            per_image.path_for(BOARDS / f"{board}.csv", r, key).with_suffix("").with_suffix(".coco.gz").exists(), r


def test_the_readme_stays_a_front_page():
    assert len(README.splitlines()) <= 220  # details go to the guide (benchmark/README.md)


def test_bd_rate_sentence_is_the_board():
    """`dncnn saves 12.7 % [12.0, 13.4]`: minus the BD-rate of the LIVE1 PSNR curve over QF 5-50, with its interval."""
    from benchmark.boards import bdrate

    board = bdrate.read(BOARDS / "bdrate.csv")
    rows = board[(board.board == "fidelity") & (board.dataset == "live1") & (board.metric == "psnr") &
                 (board.qf_range == "5-50") & (board.source == "measured")]
    sentence = README[README.index("Worth in bits"):]
    sentence = " ".join(sentence[:sentence.index("([how]")].split())  # one line: names and numbers wrap
    found = re.findall(r"(\w+) (?:saves )?(\d+\.\d) % \[(\d+\.\d), (\d+\.\d)\]", sentence)
    assert len(found) == 6
    for method, value, lo, hi in found:
        row = rows[(rows.method == method) & (rows.preset == "compact")].iloc[0]
        neg = lambda c: str(-Decimal(c))  # a saving is a negative BD-rate
        assert (value, lo, hi) == (_rounded(neg(row.bd_rate_pct), 1), _rounded(neg(row.bd_rate_hi), 1),
                                   _rounded(neg(row.bd_rate_lo), 1)), method


def test_segmentation_table_is_the_board():
    board = _board("segmentation")
    rows = board[(board.model == "selfie_seg") & board.dataset.str.fullmatch(r"folder:BSDS500_test@[0-9a-f]+\[mask>=0\.1\]")
                 & (board.source == "measured") & (board.codec == "jpeg") & (board.passes == "1")]
    metrics = ("consistency_iou", "consistency_boundary_f")

    def row(method, qf, metric):
        match = rows[(rows.method == method) & (rows.qf == qf) & (rows.metric == metric)]
        assert len(match) == 1, (method, qf, metric)
        return match.iloc[0]

    lines = README.splitlines()
    i = lines.index("| method | Q25 | Q18 | Q15 | Q10 | Q7 | Δ Q10 [95 %] |")
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in
             __import__("itertools").takewhile(lambda line: line.startswith("|"), lines[i + 2:])]
    for cells in table:
        method = {"direct (JPEG)": "direct"}.get(cells[0], cells[0])
        for qf, cell in zip(QFS, cells[1:6]):
            assert cell == " / ".join(_rounded(row(method, qf, m).value, 1) for m in metrics), (method, qf)
        if method != "direct":
            for shown, m in zip(cells[6].split(" / "), metrics):
                _check_interval(shown, row(method, "10", m), 1, f"{method} {m}")
    assert len(table) == 7 and {row("direct", "10", m).n_images for m in metrics} == {"100"}
