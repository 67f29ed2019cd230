"""Per-image files beside the boards and the paired intervals of each row's delta (issue 26)."""
import gzip
import math

import numpy as np
import pandas as pd
import pytest

from benchmark.boards import leaderboard, per_image
from benchmark.cli import main
from benchmark.metrics.paired import paired_delta


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def _files(board_path, df, key):
    return {r["method"] + ("" if "metric" not in r else f"/{r['codec']}"): per_image.path_for(board_path, r, key)
            for r in df.to_dict("records")}


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
    folder = tmp_path_factory.mktemp("boards")
    cache = tmp_path_factory.mktemp("cache")
    args = ["run", "--method", "jpeg,dncnn", "--qf", "10", "--leaderboard", f"{folder}/", "--quiet",
            "--cache-dir", str(cache)]
    assert main(args) == 0
    board = folder / "fidelity.csv"
    df = leaderboard.read(board, "fidelity")
    files = _files(board, df, leaderboard.FIDELITY_KEY)
    first = {m: p.read_bytes() for m, p in files.items()}
    assert main(args) == 0  # the reference now comes from the score cache
    return board, leaderboard.read(board, "fidelity"), files, first


def test_fidelity_rows_keep_per_image_values(fidelity):
    board, df, files, _ = fidelity
    assert set(files) == {"jpeg", "dncnn"}
    for r in df.to_dict("records"):
        values = per_image.read(files[r["method"]])
        assert values is not None and len(values["image"]) == int(r["n_images"]) == 6
        assert len(set(values["digest"])) == 6 and all(len(d) == 32 for d in values["digest"])
        assert list(values)[2:] == ["psnr", "ssim", "psnrb", "bpp"]
        for m in ("psnr", "ssim", "psnrb", "bpp"):  # the row is the mean of its images, to the board's precision
            assert leaderboard._fmt(float(np.mean(values[m]))) == r[m], m
    # the file is the row's: named by its key's digest under per_image/<board>/
    assert files["jpeg"].parent == board.parent / "per_image" / "fidelity"
    assert files["jpeg"].name == per_image.row_digest(df[df.method == "jpeg"].iloc[0].to_dict(),
                                                      leaderboard.FIDELITY_KEY) + ".csv.gz"


def test_fidelity_per_image_files_are_byte_identical_on_a_rerun(fidelity):
    _, _, files, first = fidelity
    for m, p in files.items():
        assert p.read_bytes() == first[m], m
        assert gzip.decompress(first[m]).startswith(b"image,digest,psnr,")
    assert not list(files["jpeg"].parent.glob(".*.tmp"))


def test_fidelity_delta_is_the_paired_interval_of_the_two_files(fidelity):
    _, df, files, _ = fidelity
    rows = df.set_index("method")
    assert rows.loc["jpeg", ["delta", "delta_lo", "delta_hi"]].tolist() == ["", "", ""]  # the reference
    a, b = per_image.read(files["dncnn"]), per_image.read(files["jpeg"])
    assert a["digest"] == b["digest"]
    expect = paired_delta(a["psnr"], b["psnr"])
    got = [float(rows.loc["dncnn", c]) for c in ("delta", "delta_lo", "delta_hi")]
    assert got == [float(leaderboard._fmt(v)) for v in (expect.delta, expect.lo, expect.hi)]
    assert expect.lo <= expect.delta <= expect.hi
    # the delta is the difference of the rows' PSNRs (to the stored precision)
    assert math.isclose(got[0], float(rows.loc["dncnn", "psnr"]) - float(rows.loc["jpeg", "psnr"]), abs_tol=2e-4)


def test_the_table_prints_the_interval(tmp_path, capsys):
    out = _run(["run", "--method", "jpeg,dncnn", "--qf", "10", "--leaderboard", f"{tmp_path}/", "--quiet",
                "--cache-dir", str(tmp_path / "cache")], capsys)
    line = next(l for l in out.splitlines() if l.startswith("dncnn"))
    df = leaderboard.read(tmp_path / "fidelity.csv").set_index("method")
    lo, hi = float(df.loc["dncnn", "delta_lo"]), float(df.loc["dncnn", "delta_hi"])
    assert f"[{lo:+.2f}, {hi:+.2f}]" in line


def test_a_reference_without_per_image_file_gives_no_interval(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    _run(["run", "--method", "jpeg", "--qf", "10", "--leaderboard", f"{tmp_path}/", "--quiet", "--cache-dir", cache],
         capsys)
    for f in (tmp_path / "per_image" / "fidelity").glob("*.csv.gz"):
        f.unlink()  # a board measured before per-image files existed
    _run(["run", "--method", "dncnn", "--no-reference", "--qf", "10", "--leaderboard", f"{tmp_path}/", "--quiet",
          "--cache-dir", cache], capsys)
    df = leaderboard.read(tmp_path / "fidelity.csv", "fidelity").set_index("method")
    assert df.loc["dncnn", ["delta", "delta_lo", "delta_hi"]].tolist() == ["", "", ""]
    assert per_image.path_for(tmp_path / "fidelity.csv", df.reset_index().iloc[0].to_dict(),
                              leaderboard.FIDELITY_KEY).parent.exists()


def test_old_boards_read_the_delta_columns_as_empty(tmp_path):
    old = [c for c in leaderboard.FIDELITY_COLUMNS if c not in per_image.DELTA_COLUMNS]
    pd.DataFrame([{c: "" for c in old} | {"method": "jpeg", "psnr": "27.0", "source": "measured"}],
                 columns=old).to_csv(tmp_path / "fidelity.csv", index=False)
    board = leaderboard.read(tmp_path / "fidelity.csv", "fidelity")
    assert list(board.columns) == leaderboard.FIDELITY_COLUMNS and board.delta.tolist() == [""]
    old = [c for c in leaderboard.TASK_COLUMNS if c not in per_image.DELTA_COLUMNS]
    pd.DataFrame([{c: "" for c in old} | {"method": "direct", "value": "80", "source": "measured"}],
                 columns=old).to_csv(tmp_path / "classification.csv", index=False)
    board = leaderboard.read(tmp_path / "classification.csv", "classification")
    assert list(board.columns) == leaderboard.TASK_COLUMNS and board.delta_hi.tolist() == [""]


def test_pairing_uses_the_images_in_both_files():
    a = {"image": ["x", "y", "z"], "digest": ["1", "2", "3"], "psnr": np.array([30.0, 31.0, 32.0])}
    b = {"image": ["z", "x"], "digest": ["3", "1"], "psnr": np.array([29.0, 28.0])}
    p = per_image.paired(a, b, "psnr")
    assert p.result.n_images == 2 and p.result.delta == pytest.approx(2.5)
    assert "2 image(s) in both" in p.note
    assert per_image.paired(a, a, "psnr").note == ""


def test_classification_rows_keep_per_image_correctness(tmp_path, capsys):
    args = ["run", "--task", "classification", "--method", "dncnn", "--qf", "10", "--n-images", "40",
            "--leaderboard", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    out = _run(args, capsys)
    board = tmp_path / "classification.csv"
    df = leaderboard.read(board, "classification")
    files = {(r["method"], r["codec"], r["metric"]): per_image.path_for(board, r, leaderboard.TASK_KEY)
             for r in df.to_dict("records")}
    first = {k: p.read_bytes() for k, p in files.items()}
    for r in df.to_dict("records"):
        values = per_image.read(files[(r["method"], r["codec"], r["metric"])])
        assert len(values["image"]) == int(r["n_images"]) == 40
        assert set(values[r["metric"]]) <= {0.0, 1.0}
        assert leaderboard._fmt(float(np.mean(values[r["metric"]]) * 100)) == r["value"]
    rows = {(r["method"], r["codec"]): r for r in df[df.metric == "top1"].to_dict("records")}
    for ref in ("clean", "direct"):
        codec = "none" if ref == "clean" else "jpeg"
        assert [rows[(ref, codec)][c] for c in per_image.DELTA_COLUMNS] == ["", "", ""]
        a = per_image.read(files[("dncnn", codec, "top1")])
        b = per_image.read(files[(ref, codec, "top1")])
        expect = paired_delta(a["top1"], b["top1"])
        got = [float(rows[("dncnn", codec)][c]) for c in per_image.DELTA_COLUMNS]
        assert got == pytest.approx([100 * v for v in (expect.delta, expect.lo, expect.hi)], abs=1e-4)
    line = next(l for l in out.splitlines() if l.split()[1:2] == ["dncnn"] and " jpeg " in l)
    assert "[" in line
    # the direct results come from the cache on a re-run, per-image values included: same bytes
    _run(args, capsys)
    assert {k: p.read_bytes() for k, p in files.items()} == first
