"""The command line end to end on the embedded samples (jpeg reference only: fast), and its error paths."""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from benchmark.boards import leaderboard
from benchmark.cli import main


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_writes_leaderboard_and_rerun_replaces_rows(tmp_path, capsys):
    lb = tmp_path / "fidelity.csv"
    rc, out, _ = run(["run", "--method", "jpeg", "--qf", "10,30>10", "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 0, out
    df = pd.read_csv(lb, dtype=str)
    assert set(leaderboard.FIDELITY_COLUMNS) <= set(df.columns)
    assert sorted(df.qf) == ["10", "30>10"] and set(df.source) == {"measured"} and set(df.n_images) == {"6"}
    first = df.set_index("qf").psnr
    rc, _, _ = run(["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(lb), "--quiet"], capsys)
    df2 = pd.read_csv(lb, dtype=str)
    assert len(df2) == 2 and df2.set_index("qf").psnr["10"] == first["10"]  # same seed -> same numbers
    # double compression at a lower second QF is at least as damaging as the single pass
    assert float(first["30>10"]) <= float(first["10"]) + 0.05


def test_multipass_rows_put_the_set_in_qf(tmp_path, capsys):
    lb = tmp_path / "f.csv"
    rc, out, _ = run(["run", "--method", "jpeg", "--passes", "1,3", "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 0, out
    df = pd.read_csv(lb, dtype=str)
    assert set(df.qf) == {"25/18/15/10/7"} and sorted(df.passes) == ["1", "3"]
    p = df.set_index("passes").psnr.astype(float)
    assert p["3"] < p["1"]  # more passes at these QFs -> more loss


@pytest.mark.parametrize("args,msg", [
    (["--qf", "0"], "outside 1..100"), (["--qf", "10.5"], "not an integer"), (["--qf", "abc"], "not an integer"),
    (["--method", "nosuch"], "unknown method 'nosuch'"), (["--passes", "9"], "outside 1..5"),
    # an empty item is a typo, never silently dropped
    (["--qf", "10,,20"], "error: --qf '10,,20': item 2 is empty"),
    (["--qf", "10,20,"], "error: --qf '10,20,': item 3 is empty"),
    (["--qf", "30>,20"], "error: --qf '30>,20': item 1 '30>' has an empty QF in its chain"),
    (["--passes", "1,,3"], "error: --passes '1,,3': item 2 is empty"),
])
def test_bad_arguments_exit_2_with_the_culprit(tmp_path, capsys, args, msg):
    # a later --method overrides the first, as argparse does
    rc, _, err = run(["run", "--method", "jpeg", *args, "--leaderboard", str(tmp_path / "x.csv")], capsys)
    assert rc == 2 and msg in err
    assert not (tmp_path / "x.csv").exists()


def test_unknown_dataset_fails_that_job_only(tmp_path, capsys):
    lb = tmp_path / "f.csv"
    rc, out, err = run(["run", "--method", "jpeg", "--qf", "20", "--dataset", "samples,nosuchset",
                        "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 1 and "unknown dataset 'nosuchset'" in err
    assert len(pd.read_csv(lb)) == 1  # the good dataset's row is kept


def test_nan_output_is_named_and_other_methods_survive(tmp_path, capsys, monkeypatch):
    import torch

    from lightning_modules import registry
    from lightning_modules.registry import Preset, register

    class Broken(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    register("broken", presets={"none": Preset()})(lambda: Broken())
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    lb = tmp_path / "f.csv"
    rc, out, err = run(["run", "--method", "broken", "--qf", "20", "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 1 and "'broken' produced NaN" in err and "astronaut" in err
    assert list(pd.read_csv(lb).method) == ["jpeg"]
    registry._REGISTRY.pop("broken", None)


def test_list(capsys):
    rc, out, _ = run(["list"], capsys)
    assert rc == 0 and "dncnn.paper" in out and "live1-gray" in out


def test_upsert_is_atomic_and_keeps_other_rows(tmp_path, monkeypatch):
    lb = tmp_path / "f.csv"
    row = {"method": "a", "preset": "p", "dataset": "d", "channels": "rgb", "codec": "jpeg", "qf": "10",
           "passes": 1, "subsampling": "420", "seed": 0, "source": "measured", "psnr": 30.0}
    leaderboard.upsert(lb, [row, {**row, "method": "b"}])
    before = lb.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError):
        leaderboard.upsert(lb, [{**row, "psnr": 31.0}])
    assert lb.read_bytes() == before  # the failed write left the old file intact
    monkeypatch.undo()
    leaderboard.upsert(lb, [{**row, "psnr": 31.0}])
    df = pd.read_csv(lb)
    assert len(df) == 2 and df.set_index("method").psnr["a"] == 31.0


def test_embedded_default_dncnn_beats_jpeg(tmp_path, capsys):
    """The main job: the shipped compact DnCNN on the embedded samples improves on the compressed input."""
    lb = tmp_path / "f.csv"
    rc, out, _ = run(["run", "--method", "dncnn", "--qf", "10,20", "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 0, out
    df = pd.read_csv(lb)
    assert set(df.method) == {"jpeg", "dncnn"} and set(df.preset) == {"none", "compact"}
    psnr = df.pivot(index="qf", columns="method", values="psnr")
    ssim = df.pivot(index="qf", columns="method", values="ssim")
    assert (psnr.dncnn > psnr.jpeg + 0.3).all(), psnr
    assert (ssim.dncnn > ssim.jpeg).all(), ssim


def test_paper_column_lookup_for_methods_the_papers_lack():
    from benchmark.boards import published

    # live1 rgb is a mapped dataset, but no reference table reports DnCNN on it: no value, no crash
    assert published.fidelity_value("dncnn", "live1", "rgb", "jpeg", "10", "psnr") is None
    assert published.fidelity_value("jpeg", "cbsd68", "rgb", "jpeg", "10", "psnr") is None
    if not published.load("fidelity").empty:
        assert published.fidelity_value("jpeg", "live1", "rgb", "jpeg", "10", "psnr") == 25.69


def test_named_qf_lists():
    from benchmark.cli.common import parse_corruptions

    assert [c.qf_label for c in parse_corruptions("unseen", "jpeg", None, 0, "420")] == ["15", "25", "35", "45"]
    assert [c.qf_label for c in parse_corruptions(" seen", "jpeg", None, 0, "420")] == ["10", "20", "30", "40"]


ROOT = Path(__file__).resolve().parents[1]


def _jpeg_psnr(folder: Path, names: list[str], qf: int = 10) -> float:
    """The jpeg row's PSNR computed independently: skimage per image, capped at 100 dB, then the mean."""
    from datamodules.corruptions import Corruption, apply

    vals = []
    for n in names:
        clean = np.asarray(Image.open(folder / n))
        with np.errstate(divide="ignore"):
            vals.append(min(peak_signal_noise_ratio(clean, apply(clean, Corruption("jpeg", (qf,)))[0],
                                                    data_range=255), 100.0))
    return float(np.mean(vals))


def test_a_flat_image_no_longer_loses_the_whole_run(tmp_path, capsys, rng):
    """JPEG reproduces a flat image exactly (PSNR +inf before the cap): every row is still written, finite."""
    from .conftest import smooth_image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(rng)).save(data / f"img{i}.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(data / "flat.png")
    lb = tmp_path / "x.csv"
    rc, out, err = run(["run", "--method", "dncnn", "--qf", "10", "--dataset", str(data), "--leaderboard", str(lb),
                        "--quiet"], capsys)
    assert rc == 0, err
    df = pd.read_csv(lb).set_index("method")
    assert sorted(df.index) == ["dncnn", "jpeg"] and set(df.n_images) == {4}
    assert all(math.isfinite(v) for v in df[["psnr", "psnrb"]].values.ravel())
    expected = _jpeg_psnr(data, ["flat.png", "img0.png", "img1.png", "img2.png"])
    assert df.psnr["jpeg"] == pytest.approx(expected, abs=6e-5)
    assert expected > _jpeg_psnr(data, ["img0.png", "img1.png", "img2.png"]) + 10  # the flat image counts, at 100


def test_a_row_the_board_refuses_is_named_and_the_others_are_written(tmp_path, capsys, monkeypatch):
    from benchmark.evaluate import fidelity as runner

    real = runner.run_fidelity

    def bad(rows):
        return [{**r, "psnr": float("nan")} if r["qf"] == "10" else r for r in rows]

    def one_bad_row(req, profile=None, on_rows=None):  # each job's rows go to the board as the job ends
        rows, failures = real(req, profile, on_rows=None if on_rows is None else lambda job: on_rows(bad(job)))
        return bad(rows), failures

    monkeypatch.setattr(runner, "run_fidelity", one_bad_row)
    lb = tmp_path / "f.csv"
    rc, out, err = run(["run", "--method", "jpeg", "--qf", "10,20", "--leaderboard", str(lb), "--quiet"], capsys)
    assert rc == 1
    assert ("FAILED, not written: row (method=jpeg preset=none dataset=samples channels=rgb codec=jpeg qf=10 passes=1 "
            "subsampling=420 seed=0 source=measured): a measured row needs a finite psnr, got 'nan'") in err
    assert list(pd.read_csv(lb, dtype=str).qf) == ["20"]  # the valid row is on the board


def test_an_image_under_the_ssim_window_is_skipped_not_fatal(tmp_path, capsys, rng):
    from .conftest import smooth_image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(rng)).save(data / f"img{i}.png")
    Image.fromarray(smooth_image(rng, 9, 15)).save(data / "small.png")
    lb = tmp_path / "x.csv"
    with pytest.warns(UserWarning, match=re.escape(f"skipped: {data / 'small.png'}: size 15x9 is smaller than 11x11")):
        rc, out, err = run(["run", "--method", "jpeg", "--qf", "10", "--dataset", str(data), "--leaderboard",
                            str(lb), "--quiet"], capsys)
    assert rc == 0, err
    (row,) = pd.read_csv(lb).to_dict("records")
    assert (row["n_images"], row["n_skipped"]) == (2, 1)
    assert row["psnr"] == pytest.approx(_jpeg_psnr(data, ["img0.png", "img1.png"]), abs=6e-5)
    from datamodules.sources import dataset_label

    assert row["dataset"] == dataset_label(str(data)) and row["dataset"].startswith("folder:data@")
    assert f"note: 1 unusable image(s) skipped in {row['dataset']}" in out


def test_dry_run_lists_the_jobs_and_evaluates_nothing(tmp_path, capsys, monkeypatch):
    from benchmark.evaluate import fidelity as runner, tasks as task_runner

    def boom(*args, **kwargs):
        raise AssertionError("--dry-run evaluated")

    monkeypatch.setattr(runner, "run_fidelity", boom)
    monkeypatch.setattr(task_runner, "run_tasks", boom)
    lb = tmp_path / "x.csv"
    rc, out, _ = run(["run", "--method", "dncnn", "--qf", "10,30>10", "--dataset", "samples,live1", "--dry-run",
                      "--leaderboard", str(lb)], capsys)
    assert rc == 0 and not lb.exists()
    assert out.splitlines() == [
        "method         dataset  corruption",
        "jpeg.none      samples  jpeg:q10:420",
        "jpeg.none      samples  jpeg:q30>10:420",
        "jpeg.none      live1    jpeg:q10:420",
        "jpeg.none      live1    jpeg:q30>10:420",
        "dncnn.compact  samples  jpeg:q10:420",
        "dncnn.compact  samples  jpeg:q30>10:420",
        "dncnn.compact  live1    jpeg:q10:420",
        "dncnn.compact  live1    jpeg:q30>10:420",
        "dry run: 8 rows; nothing evaluated or written"]
    rc, out, _ = run(["run", "--task", "classification,detection", "--method", "dncnn", "--qf", "10", "--dry-run",
                      "--no-reference", "--leaderboard", str(tmp_path / "boards")], capsys)
    assert rc == 0 and not (tmp_path / "boards").exists()
    assert out.splitlines() == [
        "task            method  dataset  corruption",
        "classification  dncnn   shapes   jpeg:q10:420",
        "detection       dncnn   shapes   jpeg:q10:420",
        "dry run: 2 jobs; nothing evaluated or written"]


def test_task_leaderboard_must_be_a_folder_not_a_csv(tmp_path, capsys):
    lb = tmp_path / "x.csv"
    rc, _, err = run(["run", "--task", "classification", "--method", "jpeg", "--qf", "10", "--leaderboard", str(lb),
                      "--quiet"], capsys)
    assert rc == 2 and not lb.exists()
    assert err == (f"error: with --task, --leaderboard is a folder (one <task>.csv per task is written in it), not a "
                   f"CSV file: got {str(lb)!r}\n")


def test_train_config_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["train", "--config", "nosuch.yaml"], capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: training config nosuch.yaml does not exist (nor in ")
    (tmp_path / "bad.yaml").write_text("method: dncnn\nbogus: 1\n")
    rc, out, err = run(["train", "--config", "bad.yaml"], capsys)
    assert rc == 2 and err.startswith("error: training config bad.yaml: unknown keys ['bogus']")


def test_recipes_cited_in_the_train_command_exist():
    cited = set(re.findall(r"benchmark/configs/(\w+\.yaml)", (ROOT / "benchmark" / "cli" / "train.py").read_text()))
    assert cited and all((ROOT / "benchmark" / "configs" / name).is_file() for name in cited), cited


def test_shell_redirect_chains_are_quoted_in_readme_and_help():
    """`--qf 30>10` pasted into a shell redirects to a file named 10: examples must quote the chain."""
    from benchmark.cli import build_parser

    unquoted = re.compile(r"--qf[ =]+[^'\"\s]*\d>\d")
    readme = (ROOT / "README.md").read_text()
    assert "benchmark run --method jpeg --qf '30>10'" in readme
    assert not [line for line in readme.splitlines() if unquoted.search(line)]
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "'30>10'" in run_help and not re.search(r"[^'\d]\d+>\d+", run_help)


def test_bad_weights_file_says_it_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc, _, err = run(["run", "--method", "dncnn", "--weights", str(bad), "--qf", "10", "--no-reference",
                      "--leaderboard", str(tmp_path / "x.csv"), "--quiet"], capsys)
    assert rc == 1 and f"FAILED dncnn on samples: MethodError: {bad} is not a PyTorch checkpoint (" in err
    assert "file an issue" not in err and "weights_only" not in err


def test_real_task_model_errors_name_the_cli_flag(tmp_path, monkeypatch):
    import torch

    from lightning_modules.task_models.classifier import ClassifierError, build_classifier
    from lightning_modules.task_models import TaskModelError, create_task_model

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(TaskModelError, match=re.escape("or pass --task-weights FILE (weights=FILE in Python); "
                                                       "nothing is downloaded")):
        create_task_model("detection", "fasterrcnn_resnet50_fpn")
    with pytest.raises(ClassifierError, match=re.escape("for num_classes=10 pass --task-weights FILE (weights=FILE "
                                                        "in Python): a fine-tuned checkpoint")):
        build_classifier("resnet18", num_classes=10)
