"""The command line end to end on the embedded samples (jpeg reference only: fast), and its error paths."""
import pandas as pd
import pytest

from benchmark import leaderboard
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
    from benchmark import published

    # live1 rgb is a mapped dataset, but no reference table reports DnCNN on it: no value, no crash
    assert published.fidelity_value("dncnn", "live1", "rgb", "jpeg", "10", "psnr") is None
    assert published.fidelity_value("jpeg", "cbsd68", "rgb", "jpeg", "10", "psnr") is None
    if not published.load("fidelity").empty:
        assert published.fidelity_value("jpeg", "live1", "rgb", "jpeg", "10", "psnr") == 25.69


def test_named_qf_lists():
    from benchmark.cli import parse_corruptions

    assert [c.qf_label for c in parse_corruptions("unseen", "jpeg", None, 0, "420")] == ["15", "25", "35", "45"]
    assert [c.qf_label for c in parse_corruptions(" seen", "jpeg", None, 0, "420")] == ["10", "20", "30", "40"]
