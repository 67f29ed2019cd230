"""Where a user's outputs go: `benchmark train` never replaces a shipped checkpoint by default; runs go to a user
board unless --leaderboard names one; folder datasets are keyed by name and content, not by path."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from lightning_modules.registry import CHECKPOINT_DIR


def _photos(folder, n=10, gray=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (64, 72) if i in gray else (64, 72, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_train_without_out_never_touches_the_shipped_checkpoint(tmp_path, monkeypatch, capsys):
    from benchmark.cli.train import train

    shipped = CHECKPOINT_DIR / "dncnn_compact.pt"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    weights = tmp_path / "weights"
    monkeypatch.setenv("CARBENCH_WEIGHTS", str(weights))
    out = train("dncnn", steps=2, batch_size=2, crop=32, train_dir=str(_photos(tmp_path / "photos")),
                accelerator="cpu", devices=1, num_workers=0)
    assert out == weights / "dncnn_compact.pt" and out.is_file()
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and f"--weights {out}" in printed


def test_a_folder_dataset_is_keyed_by_name_and_content_not_by_path(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from benchmark.cli import main
    from datamodules.sources import dataset_label

    folder = _photos(tmp_path / "kodak", n=2)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    lb = tmp_path / "f.csv"
    spellings = ["../kodak", str(folder), str(folder) + "/"]
    for spelling in spellings:
        assert main(["run", "--method", "jpeg", "--qf", "10", "--dataset", spelling, "--leaderboard", str(lb),
                     "--quiet"]) == 0
    df = pd.read_csv(lb, dtype=str, keep_default_na=False)
    listing = "".join(f"{p.name}\0{p.stat().st_size}\n" for p in sorted(folder.iterdir()))
    label = f"folder:kodak@{hashlib.sha256(listing.encode()).hexdigest()[:6]}"
    assert list(df.dataset) == [label] and len(df) == 1  # one row, no machine path
    assert {dataset_label(s) for s in spellings} == {label} and dataset_label("live1") == "live1"
    assert dataset_label("../kodak:y") == label + ":y"
    (folder / "p0.png").write_bytes((folder / "p0.png").read_bytes() + b"\0")  # other content, other label
    assert dataset_label(str(folder)) != label


def test_a_run_without_leaderboard_goes_to_the_user_board(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from benchmark.boards import leaderboard
    from benchmark.cli import main

    committed = tmp_path / "committed"  # stands in for leaderboards/: a default run must never write there
    monkeypatch.setattr(leaderboard, "LEADERBOARD_DIR", committed)
    monkeypatch.delenv("CARBENCH_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--method", "jpeg", "--qf", "10", "--quiet"]) == 0
    mine = tmp_path / "carbench-results" / "fidelity.csv"
    assert list(pd.read_csv(mine, dtype=str).qf) == ["10"] and not committed.exists()
    assert "1 rows -> carbench-results/fidelity.csv (your results board" in capsys.readouterr().out

    monkeypatch.setenv("CARBENCH_RESULTS", str(tmp_path / "elsewhere"))
    assert main(["run", "--method", "jpeg", "--qf", "20", "--quiet"]) == 0
    assert list(pd.read_csv(tmp_path / "elsewhere" / "fidelity.csv", dtype=str).qf) == ["20"]
    assert "your results board" in capsys.readouterr().out
    # an explicit folder (as maintainers name leaderboards/) gets its fidelity.csv, and no hint
    assert main(["run", "--method", "jpeg", "--qf", "30", "--quiet", "--leaderboard", str(committed) + "/"]) == 0
    assert list(pd.read_csv(committed / "fidelity.csv", dtype=str).qf) == ["30"]
    assert "your results board" not in capsys.readouterr().out


def test_a_gray_image_in_a_colour_folder_is_warned_about_and_counted(tmp_path, capsys):
    import pandas as pd
    import pytest

    from benchmark.cli import main

    folder = _photos(tmp_path / "mixed", n=3, gray=(1,))
    lb = tmp_path / "f.csv"
    with pytest.warns(UserWarning, match=r"1 gray image\(s\) among colour ones.*p1\.png"):
        assert main(["run", "--method", "jpeg", "--qf", "10", "--dataset", str(folder), "--leaderboard", str(lb),
                     "--quiet"]) == 0
    row = pd.read_csv(lb, dtype=str, keep_default_na=False).iloc[0]
    assert (row.channels, row.n_images, row.n_gray) == ("rgb", "3", "1")
    assert "note: 1 gray image(s)" in capsys.readouterr().out
    # an all-colour folder records 0
    assert main(["run", "--method", "jpeg", "--qf", "10", "--dataset", str(_photos(tmp_path / "colour", n=2)),
                 "--leaderboard", str(lb), "--quiet"]) == 0
    assert sorted(pd.read_csv(lb, dtype=str).n_gray) == ["0", "1"]


def _has_bar(text: str) -> bool:
    return "it/s" in text or "%|" in text or "s/it" in text


def test_progress_bars_go_to_stderr_and_the_table_to_stdout(tmp_path, capsys):
    from benchmark.cli import main

    assert main(["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(tmp_path / "f.csv")]) == 0
    out, err = capsys.readouterr()
    assert not _has_bar(out) and "method  preset  dataset" in out
    assert _has_bar(err) and "Testing" in err
    # compare takes --quiet like run (and bars, without it, on stderr too)
    args = ["compare", "--method", "jpeg", "--baselines", "", "--qf", "10", "--no-report",
            "--leaderboard", str(tmp_path / "boards")]
    assert main([*args, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert not _has_bar(out) and not _has_bar(err) and "rows -> " in out
    fresh = [a if a != "10" else "20" for a in args]  # QF 10's reference scores are cached now: nothing to show
    assert main(fresh) == 0
    out, err = capsys.readouterr()
    assert not _has_bar(out) and _has_bar(err)
