"""`benchmark compare --rows A B`: two rows of a board paired on their per-image files, and the report's intervals
(issue 26)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.boards import leaderboard, per_image
from benchmark.cli import main
from benchmark.metrics.paired import paired_delta

ROOT = Path(__file__).resolve().parents[1]
N = 60


def _task_row(method, value, **kw):
    row = {c: "" for c in leaderboard.TASK_COLUMNS}
    row.update(task="classification", model="net", method=method, preset="compact", dataset="photos", codec="jpeg",
               qf="10", passes="1", subsampling="420", seed="0", metric="top1", value=value, n_images=str(N),
               source="measured")
    row.update(kw)
    return row


def _values(correct, digests=None):
    digests = digests or [f"d{i:03d}" for i in range(len(correct))]
    return {"image": [f"img{d}" for d in digests], "digest": digests, "top1": np.asarray(correct, dtype=float)}


@pytest.fixture()
def board(tmp_path):
    """A classification board: fbcnn and dagn (per-image files), direct (file), arcnn (no file), top1 and top5."""
    rng = np.random.default_rng(7)
    a, b, d = (rng.random(N) < p for p in (0.7, 0.55, 0.5))
    rows = [_task_row("fbcnn", f"{100 * a.mean():.4f}"), _task_row("dagn", f"{100 * b.mean():.4f}"),
            _task_row("direct", f"{100 * d.mean():.4f}", preset=""), _task_row("arcnn", "50.0000"),
            _task_row("fbcnn", "90.0000", metric="top5"), _task_row("dagn", "88.0000", metric="top5"),
            _task_row("fbcnn", "40.0000", qf="20")]
    path = tmp_path / "classification.csv"
    pd.DataFrame(rows, columns=leaderboard.TASK_COLUMNS).to_csv(path, index=False)
    for r, v in zip(rows[:3], (a, b, d)):
        per_image.write(per_image.path_for(path, r, leaderboard.TASK_KEY), _values(v))
    return path, a, b, rows


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_two_rows_give_the_hand_computed_paired_delta(board, capsys):
    path, a, b, _ = board
    rc, out, err = _run(["compare", "--rows", "method=fbcnn,qf=10", "method=dagn", "--leaderboard", str(path.parent)],
                        capsys)
    assert rc == 0, err
    expect = paired_delta(a.astype(float), b.astype(float))  # the same seed and resamples
    assert 100 * expect.delta == pytest.approx(100 * (a.mean() - b.mean()))
    lo, hi = 100 * expect.lo, 100 * expect.hi
    assert f"{100 * expect.delta:+.1f} [{lo:+.1f}, {hi:+.1f}] points" in out
    assert f"{N} images paired" in out and "classification board" in out and "top1" in out
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    assert f"discordant images: {better} A right / B wrong, {worse} A wrong / B right" in out
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "tie"
    assert f"verdict: {'A is ' + verdict if verdict != 'tie' else 'tie'}" in out


def test_the_library_result_equals_paired_delta(board):
    from benchmark.boards import compare_rows as cr

    path, a, b, rows = board
    c = cr.compare(path, "classification", {k: str(v) for k, v in rows[0].items()},
                   {k: str(v) for k, v in rows[1].items()})
    expect = paired_delta(a.astype(float), b.astype(float))
    got = c.headline.result
    assert (got.delta, got.lo, got.hi) == pytest.approx((100 * expect.delta, 100 * expect.lo, 100 * expect.hi))
    assert (got.better, got.worse, got.n_images) == (expect.better, expect.worse, N)


def test_different_image_sets_are_paired_on_the_common_images(tmp_path, capsys):
    path = tmp_path / "classification.csv"
    rows = [_task_row("fbcnn", "50.0000"), _task_row("dagn", "50.0000")]
    pd.DataFrame(rows, columns=leaderboard.TASK_COLUMNS).to_csv(path, index=False)
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 1]
    per_image.write(per_image.path_for(path, rows[0], leaderboard.TASK_KEY), _values(a))
    per_image.write(per_image.path_for(path, rows[1], leaderboard.TASK_KEY),
                    _values(b, ["d005", "d001", "d002", "d003"]))  # another order, two images fewer
    rc, out, err = _run(["compare", "--rows", "method=fbcnn", "method=dagn", "--leaderboard", str(path)], capsys)
    assert rc == 0, err
    assert "4 images paired (the images in both: 6 in A, 4 in B)" in out
    expect = paired_delta([0, 1, 1, 1], [0, 1, 1, 0])  # d001, d002, d003, d005 in A's order
    assert f"{100 * expect.delta:+.1f} [{100 * expect.lo:+.1f}, {100 * expect.hi:+.1f}]" in out


def test_a_row_without_per_image_file_gets_no_interval(board, capsys):
    path, *_ = board
    rc, out, err = _run(["compare", "--rows", "method=fbcnn,qf=10", "method=arcnn", "--leaderboard",
                         str(path.parent)], capsys)
    assert rc == 1
    assert "row B has no per-image top1 values" in out and "no paired interval" in out
    assert "unpaired, no interval" in out and "[" not in out.split("board values")[1]


@pytest.mark.parametrize("rows,where,msg", [
    (["method=fbcnn", "method=dagn"], None, "row A 'method=fbcnn' matches 2 rows of the classification board; add "
                                            "conditions on qf to pick one:\n  qf=10\n  qf=20"),
    (["method=fbcnn,qf=10", "method=nosuch"], None, "method=nosuch: none; the rows matching the other conditions "
                                                    "have method in 'arcnn', 'dagn', 'direct', 'fbcnn'"),
    (["method=fbcnn,qf=10", "method=dagn,qf=30"], None, "qf=30: none; the rows matching the other conditions have qf "
                                                        "in '10'"),
    (["method=fbcnn,qf=10", "method=dagn,color=red"], None, "no column 'color' on the classification board"),
    (["method=fbcnn,qf=10", "method=dagn"], "model=other", "row A 'method=fbcnn,qf=10' (with --where 'model=other') "
                                                           "matches no row"),
    (["method=fbcnn,qf=10", "method=fbcnn,qf=10"], None, "both selectors pick the same row"),
    (["method=fbcnn,qf=10,metric=top1", "method=dagn,metric=top5"], None, "row A is a top1 row and row B a top5 row"),
])
def test_selector_errors_name_what_tells_rows_apart(board, capsys, rows, where, msg):
    path, *_ = board
    rc, out, err = _run(["compare", "--rows", *rows, "--board", "classification", "--leaderboard", str(path.parent),
                         *(["--where", where] if where else [])], capsys)
    assert rc == 2 and msg in err, err


def test_the_metric_defaults_to_the_headline_and_can_be_named(board, capsys):
    path, *_ = board
    rc, out, _ = _run(["compare", "--rows", "method=fbcnn,qf=10", "method=dagn", "--leaderboard", str(path.parent)],
                      capsys)
    assert "top1 (percent)" in out
    rc, out, _ = _run(["compare", "--rows", "method=fbcnn,qf=10", "method=dagn", "--where", "metric=top5",
                       "--leaderboard", str(path.parent)], capsys)
    assert rc == 1 and "no per-image top5 values" in out and "board values A - B: +2.00" in out


@pytest.mark.parametrize("args,msg", [
    (["compare"], "compare needs --method (your method against the baselines) or --rows A B"),
    (["compare", "--rows", "method=fbcnn", "qf"], "--rows 'qf': 'qf' is not COLUMN=VALUE"),
    (["compare", "--rows", "a=1", "b=2", "--where", "qf=1,qf=2"], "--where 'qf=1,qf=2': column 'qf' given twice"),
    (["compare", "--rows", "a=1", "b=2", "--method", "dncnn"], "use one of them"),
    (["compare", "--rows", "a=1", "b=2", "--qf", "10"], "--rows: --qf applies to `compare --method`"),
    (["compare", "--rows", "a=1", "b=2", "--leaderboard", "/no/such/dir"], "--leaderboard /no/such/dir: folder does "
                                                                           "not exist"),
    (["compare", "--rows", "a=1", "b=2", "--leaderboard", "x/bdrate.csv"], "a board CSV is one of fidelity.csv"),
    (["compare", "--method", "dncnn", "--where", "qf=10"], "--where: only with --rows A B"),
])
def test_usage_errors_come_before_heavy_imports(args, msg):
    probe = ("import sys; from benchmark.cli import main; rc = main(sys.argv[1:]); "
             "heavy = [m for m in ('torch', 'pandas', 'lightning') if m in sys.modules]; "
             "print('RC', rc, 'HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "RC 2 HEAVY []" in out.stdout, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and msg in out.stderr


def test_the_committed_board_compares_without_torch_in_under_two_seconds():
    """fbcnn vs dagn, Lite0 QF 10: the committed per-image files; torch is never imported."""
    import time

    probe = ("import sys, time; t = time.perf_counter(); from benchmark.cli import main; "
             "rc = main(['compare', '--rows', 'method=fbcnn,qf=10', 'method=dagn,qf=10', '--where', "
             "'model=efficientnet_lite0,codec=jpeg,dataset=imagenet-sample1000']); "
             "print('RC', rc, 'TORCH', 'torch' in sys.modules, 'S', time.perf_counter() - t)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t
    assert "RC 0 TORCH False" in out.stdout, out.stdout + out.stderr
    assert "1000 images paired" in out.stdout and "discordant images:" in out.stdout
    assert wall < 4  # < 2 s on an idle machine; slack for a loaded CI runner
    board = leaderboard.read(leaderboard.default_path("classification"))
    fb = board[(board.method == "fbcnn") & (board.qf == "10") & (board.model == "efficientnet_lite0")
               & (board.codec == "jpeg") & (board.metric == "top1") & (board.dataset == "imagenet-sample1000")].iloc[0]
    assert f"top1 {fb.value}" in out.stdout


def test_the_report_shows_intervals_and_draws_error_bars(board, tmp_path):
    from benchmark.boards.report import build, interval_text

    path, *_ = board
    df = leaderboard.read(path)
    df.loc[(df.method == "fbcnn") & (df.qf == "10") & (df.metric == "top1"), ["delta", "delta_lo", "delta_hi"]] = \
        ["2.5000", "0.5000", "4.5000"]
    df.loc[(df.method == "dagn") & (df.metric == "top1"), ["delta", "delta_lo", "delta_hi"]] = \
        ["0.5000", "-1.2000", "2.3000"]
    df.to_csv(path, index=False)
    out = build(path.parent, tmp_path / "report")
    md = out["markdown"].read_text()
    assert "+2.5 [+0.5, +4.5] |" in md and "+0.5 [-1.2, +2.3] (tie) |" in md and "dtop1 [95 % CI]" in md
    assert "+2.5 [+0.5, +4.5]" in out["html"].read_text()
    png = tmp_path / "report" / "delta_classification_net_photos_jpeg_top1.png"
    assert png.stat().st_size > 5000 and png.name in md
    assert interval_text("", "", "") == "" and interval_text("1.25", "", "") == "+1.25"


def test_boards_without_intervals_keep_their_plots_and_tables(tmp_path):
    from benchmark.boards.plots import delta_interval_series
    from benchmark.boards.report import build

    path = tmp_path / "classification.csv"
    pd.DataFrame([_task_row("fbcnn", "60.0000"), _task_row("fbcnn", "70.0000", qf="20"),
                  _task_row("direct", "50.0000", preset="")], columns=leaderboard.TASK_COLUMNS).to_csv(path,
                                                                                                     index=False)
    assert delta_interval_series(path, "classification") == {}
    out = build(tmp_path, tmp_path / "report")
    md = out["markdown"].read_text()
    assert "[95 % CI]" not in md and "| fbcnn | compact | jpeg | 20 |" in md
    assert not list((tmp_path / "report").glob("delta_*.png"))
