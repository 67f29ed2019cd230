"""Every board has one schema, checked on write (before the file is touched) and on read."""
from __future__ import annotations

import pytest

from benchmark.boards import leaderboard
from benchmark.boards.leaderboard import LeaderboardError


def _row(**kw):
    return {"method": "m", "preset": "p", "dataset": "d", "channels": "rgb", "codec": "jpeg", "qf": "10", "passes": 1,
            "subsampling": "420", "seed": 0, "source": "measured", "n_images": 6, "psnr": 27.5, **kw}


@pytest.mark.parametrize("bad, message", [
    (dict(source="guessed"), "source 'guessed'"),
    (dict(psnr="high"), "psnr='high' is not a number"),
    (dict(psnr=float("nan")), "finite psnr"),
    (dict(psnr=""), "finite psnr"),
])
def test_bad_rows_are_refused_and_the_file_is_untouched(tmp_path, bad, message):
    path = tmp_path / "fidelity.csv"
    leaderboard.upsert(path, [_row()])
    before = path.read_bytes()
    with pytest.raises(LeaderboardError, match=message):
        leaderboard.upsert(path, [_row(qf="20", **bad)])
    assert path.read_bytes() == before


def test_paper_rows_may_lack_measurement_fields(tmp_path):
    path = tmp_path / "fidelity.csv"
    leaderboard.upsert(path, [_row(source="paper", psnr=27.95, n_images="")])
    assert leaderboard.read(path, "fidelity").source.tolist() == ["paper"]


def test_one_row_per_key_even_within_one_batch(tmp_path):
    path = tmp_path / "fidelity.csv"
    leaderboard.upsert(path, [_row(psnr=27.0), _row(psnr=28.0), _row(qf="20")])
    board = leaderboard.read(path, "fidelity")
    assert sorted(zip(board.qf, board.psnr)) == [("10", "28.0000"), ("20", "27.5000")]  # the later row wins


def test_read_validates_and_names_the_file(tmp_path):
    path = tmp_path / "detection.csv"
    path.write_text("task,model,value\ndetection,x,1\n")
    with pytest.raises(LeaderboardError, match=r"detection.csv: missing columns \['method'"):
        leaderboard.read(path, "detection")


@pytest.mark.parametrize("board", ["fidelity", "classification", "detection", "segmentation", "efficiency"])
def test_committed_boards_fit_their_schema(board):
    df = leaderboard.read(leaderboard.default_path(board), board)
    assert len(df) and set(df.source) <= {"measured", "paper"}


def test_weights_sha256_is_in_the_key_and_an_old_board_reads_it_as_empty(tmp_path):
    path = tmp_path / "fidelity.csv"
    old_columns = [c for c in leaderboard.FIDELITY_COLUMNS if c != "weights_sha256"]
    path.write_text(",".join(old_columns) + "\n" + ",".join(
        {"method": "m", "preset": "p", "dataset": "d", "channels": "rgb", "codec": "jpeg", "qf": "10", "passes": "1",
         "subsampling": "420", "seed": "0", "source": "measured", "n_images": "6", "psnr": "27.5000",
         "weights": "w.pt"}.get(c, "") for c in old_columns) + "\n")
    board = leaderboard.read(path, "fidelity")
    assert list(board.columns) == leaderboard.FIDELITY_COLUMNS and board.weights_sha256.tolist() == [""]
    # two files of one name: two rows, never one silently replacing the other
    leaderboard.upsert(path, [_row(weights="w.pt", weights_sha256="0123456789ab", psnr=28.0),
                              _row(weights="w.pt", weights_sha256="ba9876543210", psnr=29.0)])
    board = leaderboard.read(path, "fidelity")
    assert sorted(zip(board.weights_sha256, board.psnr)) == [("", "27.5000"), ("0123456789ab", "28.0000"),
                                                             ("ba9876543210", "29.0000")]
    assert "weights_sha256" in leaderboard.TASK_KEY and "weights_sha256" in leaderboard.TASK_COLUMNS


def test_weights_sha256_hashes_the_file_once(tmp_path, monkeypatch):
    import hashlib

    f = tmp_path / "w.pt"
    f.write_bytes(b"weights v1")
    assert leaderboard.weights_sha256(f) == hashlib.sha256(b"weights v1").hexdigest()[:12]
    assert leaderboard.weights_sha256("") == "" and leaderboard.weights_sha256(tmp_path / "missing.pt") == ""
    opened = []
    real_open = open
    with monkeypatch.context() as m:
        m.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
        leaderboard.weights_sha256(f)
    assert opened == []  # cached by path, mtime and size
    f.write_bytes(b"weights v2, longer")
    assert leaderboard.weights_sha256(f) == hashlib.sha256(b"weights v2, longer").hexdigest()[:12]
