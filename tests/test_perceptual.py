"""LPIPS from local weights: a random-initialised torchvision backbone saved where torchvision caches its files (the
real format and name), the `lpips` wheel's heads. Checks the metric's properties and its per-image mean against the
`lpips` package's own forward, the errors for a missing or mis-shaped file, and `benchmark run --metrics`."""
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from benchmark.cli import main
from benchmark.metrics import perceptual
from benchmark.metrics.perceptual import LPIPS, PerceptualWeightsError, PerceptualWeightsMissing, lpips

from .conftest import need_shared, smooth_image


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's folder in tmp_path (TORCH_HOME): its checkpoints/ holds what a test saves there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"  # nothing set torch.hub's dir in-process
    folder.mkdir(parents=True)
    return folder


def _save_alexnet(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path = folder / perceptual.BACKBONE_FILES["alex"]
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)  # features.* and classifier.*
    return path


@pytest.fixture
def alexnet(hub):
    return _save_alexnet(hub)


@pytest.fixture
def images(rng):
    # two pairs of natural-ish images of different sizes (the sets mix sizes), each a clean and a noisier copy
    clean = [smooth_image(rng, h, w, 3) for h, w in ((64, 80), (72, 64))]
    noisy = [np.clip(c + rng.normal(0, 12, c.shape), 0, 255).astype(np.uint8) for c in clean]
    as_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    return [as_t(a) for a in clean], [as_t(a) for a in noisy]


def _reference(path: Path, net: str = "alex"):
    """lpips.LPIPS with the backbone loaded module by module from a torchvision model (not by key renaming)."""
    import lpips as lpips_pkg

    ref = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
    tv = torchvision.models.alexnet(weights=None)
    tv.load_state_dict(torch.load(path, weights_only=True))
    for k in range(1, ref.net.N_slices + 1):
        for name, module in getattr(ref.net, f"slice{k}").named_children():
            module.load_state_dict(tv.features[int(name)].state_dict())
    return ref


def test_values_are_finite_zero_on_identical_images_and_symmetric(alexnet, images):
    clean, noisy = images
    for c, n in zip(clean, noisy):
        d = lpips(n, c)
        assert d.shape == (1,) and d.dtype == torch.float64 and torch.isfinite(d).all() and d.item() > 0
        assert lpips(c, c).abs().max() < 1e-7
        assert torch.allclose(lpips(c, n), d, rtol=1e-6, atol=0)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum):UserWarning")  # lpips' own torchvision call
def test_per_image_mean_equals_the_lpips_package_per_image(alexnet, images):
    clean, noisy = images
    ref = _reference(alexnet)
    with torch.no_grad():  # the package's own [0, 1] -> [-1, 1] (normalize=True) on float images
        expected = [float(ref(n.float() / 255, c.float() / 255, normalize=True)) for c, n in zip(clean, noisy)]
    ours = [lpips(n, c).item() for c, n in zip(clean, noisy)]
    assert np.allclose(ours, expected, rtol=1e-5, atol=1e-7)
    m = LPIPS()
    assert m.higher_is_better is False
    m.update(noisy[0], clean[0], ids=torch.tensor([0]))
    m.update(noisy[1], clean[1], ids=torch.tensor([1]))
    m.update(noisy[0], clean[0], ids=torch.tensor([0]))  # a DDP pad repeat of image 0: counts once
    assert m.n_images() == 2
    assert m.compute().item() == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_gray_and_y_are_scored_as_their_plane_repeated_to_rgb(alexnet, images):
    from benchmark.metrics.fidelity import _y_uint8

    clean, noisy = images
    gray_c, gray_n = clean[0][:, :1], noisy[0][:, :1]
    assert lpips(gray_n, gray_c).item() == pytest.approx(
        lpips(gray_n.expand(-1, 3, -1, -1), gray_c.expand(-1, 3, -1, -1)).item(), rel=1e-6)
    y_c, y_n = _y_uint8(clean[0]), _y_uint8(noisy[0])
    assert lpips(noisy[0], clean[0], channels="y").item() == pytest.approx(lpips(y_n, y_c).item(), rel=1e-6)


def test_a_missing_file_names_it_where_it_goes_and_its_url(hub, images):
    with pytest.raises(PerceptualWeightsMissing) as e:
        LPIPS()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(hub / "alexnet-owt-7be5be79.pth") in msg and str(hub) in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg


@pytest.mark.parametrize("damage, culprit", [
    (lambda sd: sd.update({"features.3.weight": torch.zeros(7, 64, 5, 5)}), "features.3.weight"),
    (lambda sd: sd.pop("features.10.bias"), "features.10.bias"),
    (lambda sd: sd.update({"features.13.weight": torch.zeros(1)}), "features.13.weight"),
])
def test_a_file_that_does_not_fit_names_the_key(hub, damage, culprit):
    path = _save_alexnet(hub)
    sd = torch.load(path, weights_only=True)
    damage(sd)
    torch.save(sd, path)
    with pytest.raises(PerceptualWeightsError, match=culprit.replace(".", r"\.")) as e:
        LPIPS()
    assert str(path) in str(e.value)


def test_the_vgg_backbone_maps_strictly_too(hub, images):
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features  # the classifier (500 MB) is not needed by LPIPS
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, hub / perceptual.BACKBONE_FILES["vgg"])
    clean, noisy = images
    net = perceptual.network("vgg").net
    assert torch.equal(dict(net.slice5.named_children())["28"].weight, features[28].weight)  # the last conv
    d = lpips(noisy[0], clean[0], net="vgg")
    assert torch.isfinite(d).all() and d.item() > 0 and lpips(clean[0], clean[0], net="vgg").abs().max() < 1e-7


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_run_with_lpips_writes_a_finite_column_and_the_cache_never_serves_rows_without_it(alexnet, tmp_path, capsys):
    lb = tmp_path / "fidelity.csv"
    base = ["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(lb), "--quiet"]
    rc, out, err = _run(base, capsys)  # default metrics: warms the reference score cache
    assert rc == 0, err
    assert pd.read_csv(lb, dtype=str, keep_default_na=False).lpips.tolist() == [""]
    rc, out, err = _run(base + ["--metrics", "psnr,ssim,psnrb,lpips"], capsys)
    assert rc == 0, err
    assert "score cache" not in out and "LPIPS" in out
    row = pd.read_csv(lb, dtype=str, keep_default_na=False).iloc[0]
    assert np.isfinite(float(row.lpips)) and float(row.lpips) > 0 and row.n_images == "6"
    assert row.psnr and row.ssim and row.psnrb  # the core metrics are always in the row


def test_run_refuses_unknown_metrics_and_a_missing_backbone_by_name(hub, tmp_path, capsys):
    lb = tmp_path / "fidelity.csv"
    base = ["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(lb), "--quiet"]
    rc, _, err = _run(base + ["--metrics", "psnr,bogus"], capsys)
    assert rc == 2 and "bogus" in err and all(m in err for m in ("psnr", "ssim", "psnrb", "lpips"))
    with mock.patch("benchmark.evaluate.fidelity.FidelityEvaluator.test_step", side_effect=AssertionError("ran")):
        rc, _, err = _run(base + ["--metrics", "lpips"], capsys)
    assert rc == 1 and str(hub / "alexnet-owt-7be5be79.pth") in err and not lb.exists()
    rc, _, err = _run(["run", "--task", "classification", "--method", "jpeg", "--metrics", "lpips", "--dry-run"],
                      capsys)
    assert rc == 2 and "--metrics" in err


@need_shared("published", "fidelity.csv")
def test_import_paper_brings_jarcal_table_2_lpips_into_the_table_1_rows(tmp_path):
    from benchmark.boards import leaderboard, published

    assert main(["import-paper", "--paper", "jarcal", "--leaderboard-dir", str(tmp_path)]) == 0
    board = leaderboard.read(tmp_path / "fidelity.csv", "fidelity")
    assert set(board.source) == {"paper"}
    src = published.load("fidelity")
    src = src[(src.paper == "jarcal")].set_index(["table", "method", "dataset", "channels", "qf", "metric"]).value
    lpips_rows = board[board.lpips != ""]
    table2 = src.xs("2", level="table").xs("lpips", level="metric")
    assert len(lpips_rows) == len(table2) > 0
    for r in lpips_rows.itertuples():
        assert float(r.lpips) == float(table2[(r.method, r.dataset, r.channels, r.qf)])
        # the same setting's Table 1 numbers stay in the row (they were lost when Table 2 replaced it)
        assert float(r.psnr) == float(src[("1", r.method, r.dataset, r.channels, r.qf, "psnr")])
        assert "Table 1" in r.weights and "Table 2" in r.weights


def test_two_tables_disagreeing_on_one_metric_are_an_error(monkeypatch):
    from benchmark.boards import published

    rows = [{"paper": "p", "table": t, "dataset": "d", "channels": "y", "codec": "jpeg", "qf": "10", "method": "m",
             "metric": "lpips", "value": v, "note": ""} for t, v in (("1", "0.10"), ("2", "0.20"))]
    monkeypatch.setattr(published, "load", lambda name="fidelity": pd.DataFrame(rows))
    with pytest.raises(ValueError, match="lpips 0.10 .*p Table 1.* vs 0.20 .*p Table 2"):
        published.paper_fidelity_rows("p")
