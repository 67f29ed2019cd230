"""FID / KID from a local Inception file: torch-fidelity's Inception with a random init, saved in its real format and
under its real name. Checks identical sets (FID 0), a damaged set (FID, KID > 0), the values against torchmetrics'
own FID/KID fed the same module, the file lookup and its errors, the missing extra, DDP refusal and `benchmark run`."""
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.cli import main
from benchmark.metrics import distribution
from benchmark.metrics.distribution import (
    FID,
    INCEPTION_FILE,
    INCEPTION_URL,
    KID,
    InceptionWeightsError,
    InceptionWeightsMissing,
    MissingExtra,
    SetLevelDDPError,
)

from .conftest import smooth_image

pytest.importorskip("torch_fidelity")


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict (its keys, shapes and buffers) with a random init,
    saved as weights-inception-2015-12-05-6726825d.pth. The convolutions get a He init so that the 2048-d features
    are not ~0 (torch's default init shrinks them layer after layer) and the distances are visible."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    # the class builds its layers then loads a file: both the (download) fetch and the load are stubbed out
    with mock.patch.object(fe, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's folder in tmp_path (TORCH_HOME): where torch-fidelity would cache the file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    assert folder == tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def images(rng):
    """Four clean images of mixed sizes (the network resizes to 299) and a noised + box-blurred copy of each."""
    clean = [smooth_image(rng, h, w, 3) for h, w in ((75, 75), (96, 80), (128, 100), (80, 128))]
    damaged = []
    for c in clean:
        x = c.astype(np.float64) + rng.normal(0, 25, c.shape)
        x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1)) / 3
        damaged.append(np.clip(x, 0, 255).astype(np.uint8))
    return [_as_tensor(a) for a in clean], [_as_tensor(a) for a in damaged]


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def _score(metric, preds, target):
    for p, t in zip(preds, target):
        metric.update(p, t, ids=None)
    return float(metric.compute())


def test_identical_sets_give_zero_and_a_damaged_set_a_positive_distance(inception_file, images):
    clean, damaged = images
    fid_same = _score(FID(weights=inception_file), clean, clean)
    kid_same = _score(KID(weights=inception_file), clean, clean)
    fid_damaged = _score(FID(weights=inception_file), damaged, clean)
    kid_damaged = _score(KID(weights=inception_file), damaged, clean)
    assert abs(fid_same) < 1e-3 and np.isfinite(fid_damaged) and fid_damaged > 0
    # KID's cross term keeps each image's pair with itself: identical sets give a small (negative) value, not 0
    assert np.isfinite(kid_damaged) and kid_damaged > 0 and abs(kid_same) < 0.1 * kid_damaged
    assert FID.higher_is_better is False and KID.higher_is_better is False


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_values_equal_torchmetrics_fed_the_same_module(inception_file, images):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    clean, damaged = images
    net = distribution.inception(inception_file)
    ref_fid = FrechetInceptionDistance(feature=net)
    ref_kid = KernelInceptionDistance(feature=net, subsets=1, subset_size=len(clean))  # the whole set, once
    for c, d in zip(clean, damaged):
        for ref in (ref_fid, ref_kid):
            ref.update(c, real=True)
            ref.update(d, real=False)
    fid, kid = FID(weights=inception_file), KID(weights=inception_file)
    assert fid.inception is net and kid.inception is net  # one network per file for the whole run
    assert _score(fid, damaged, clean) == pytest.approx(float(ref_fid.compute()), rel=1e-5)
    # KID permutes each feature set with torch.randperm even when the subset is the whole set; the permuted float32
    # kernel sums then differ in their last bits, and KID (k_xx + k_yy - 2 k_xy, ~0.006 here from terms ~1) loses
    # ~3 digits to that cancellation: 4e-5 relative between two permutations. Drawn with our seed, the reference
    # computes the same sums in the same order, so the two must agree exactly.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(distribution.KID_SEED)
        ref_kid_value = float(ref_kid.compute()[0])
    assert _score(kid, damaged, clean) == ref_kid_value


def test_gray_and_y_are_scored_as_their_plane_repeated_to_rgb(inception_file, images):
    from benchmark.metrics.fidelity import _y_uint8

    clean, damaged = (x[:2] for x in images)  # FID's fewest
    gray_c, gray_d = [c[:, :1] for c in clean], [d[:, :1] for d in damaged]
    rgb_c, rgb_d = [g.expand(-1, 3, -1, -1) for g in gray_c], [g.expand(-1, 3, -1, -1) for g in gray_d]
    assert _score(FID(weights=inception_file), gray_d, gray_c) == pytest.approx(
        _score(FID(weights=inception_file), rgb_d, rgb_c), rel=1e-6)
    y_c, y_d = [_y_uint8(c) for c in clean], [_y_uint8(d) for d in damaged]
    assert _score(FID("y", weights=inception_file), damaged, clean) == pytest.approx(
        _score(FID(weights=inception_file), y_d, y_c), rel=1e-6)


def test_kid_subsets_are_capped_at_the_set_and_reproducible(inception_file, images):
    clean, damaged = images
    whole = KID(weights=inception_file)  # default subset size 1000 > 5 images: the whole set, one exact value
    assert whole.subset_size == distribution.KID_SUBSET_SIZE
    v_whole = _score(whole, damaged, clean)  # 4 images
    sub = KID(weights=inception_file, subset_size=3, subsets=20)  # random subsets of 3: the same seed each time
    v_sub = _score(sub, damaged, clean)
    assert np.isfinite(v_whole) and np.isfinite(v_sub) and v_sub != v_whole
    assert float(sub.compute()) == v_sub and sub.subset_size == 3  # the cap is per compute, not kept
    one = FID(weights=inception_file)
    one.update(damaged[0], clean[0])
    with pytest.raises(ValueError, match="at least 2 images"):
        one.compute()


def test_the_file_is_read_from_torch_fidelitys_cache_when_not_given(hub, inception_file):
    with pytest.raises(InceptionWeightsMissing) as e:
        FID()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert str(hub / INCEPTION_FILE) in msg and str(hub) in msg and INCEPTION_URL in msg
    assert INCEPTION_URL.startswith("https://github.com/toshas/torch-fidelity/releases/")
    (hub / INCEPTION_FILE).symlink_to(inception_file)
    assert distribution.inception_path() == hub / INCEPTION_FILE
    assert isinstance(KID(), KID)


def test_a_given_path_that_is_missing_or_does_not_fit_is_named(tmp_path, hub):
    missing = tmp_path / "nowhere" / INCEPTION_FILE
    with pytest.raises(InceptionWeightsMissing, match=str(missing)) as e:
        FID(weights=missing)
    assert "--inception-weights" in str(e.value) and INCEPTION_URL in str(e.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InceptionWeightsError, match="Mixed_7c") as e:  # a missing key is named
        FID(weights=wrong)
    assert str(wrong) in str(e.value)
    torch.save([1, 2], wrong)
    with pytest.raises(InceptionWeightsError, match="got list"):
        FID(weights=wrong)


def test_without_torch_fidelity_the_error_names_the_extra(inception_file, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # `import torch_fidelity` raises ImportError
    with pytest.raises(MissingExtra, match=r"pip install \.\[fid\]"):
        FID(weights=inception_file)
    lb = tmp_path / "fidelity.csv"
    with mock.patch("benchmark.evaluate.fidelity.FidelityEvaluator.test_step", side_effect=AssertionError("ran")):
        rc = main(["run", "--method", "jpeg", "--qf", "10", "--metrics", "kid", "--inception-weights",
                   str(inception_file), "--leaderboard", str(lb), "--quiet"])
    assert rc == 1 and "pip install .[fid]" in capsys.readouterr().err and not lb.exists()


def test_ddp_is_refused_before_any_job(inception_file, tmp_path, capsys):
    from benchmark.evaluate.fidelity import FidelityRequest, run_fidelity
    from datamodules.corruptions import Corruption

    with pytest.raises(SetLevelDDPError, match="fid.*--devices 1"):
        run_fidelity(FidelityRequest(methods=["jpeg"], corruptions=[Corruption(qf=(10,))], devices=2,
                                     metrics=("psnr", "fid"), inception_weights=str(inception_file)))
    with pytest.raises(SetLevelDDPError, match="kid.*2 processes"):
        KID.check_world_size(2, "kid")
    KID.check_world_size(1, "kid")  # one process: allowed
    rc = main(["run", "--method", "jpeg", "--qf", "10", "--metrics", "fid", "--devices", "2", "--inception-weights",
               str(inception_file), "--leaderboard", str(tmp_path / "f.csv"), "--quiet"])
    assert rc == 2 and "--devices 1" in capsys.readouterr().err and not (tmp_path / "f.csv").exists()


def test_run_writes_finite_fid_and_kid_and_the_cache_never_serves_rows_without_them(inception_file, tmp_path,
                                                                                    capsys):
    lb = tmp_path / "fidelity.csv"
    base = ["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(lb), "--quiet"]
    assert main(base) == 0  # default metrics: warms the reference score cache, fid/kid empty
    row = pd.read_csv(lb, dtype=str, keep_default_na=False).iloc[0]
    assert row.fid == "" and row.kid == ""
    capsys.readouterr()
    rc = main(base + ["--metrics", "psnr,ssim,psnrb,fid,kid", "--inception-weights", str(inception_file)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "score cache" not in out.out and "FID" in out.out and "KID" in out.out
    row = pd.read_csv(lb, dtype=str, keep_default_na=False).iloc[0]
    assert np.isfinite(float(row.fid)) and float(row.fid) > 0 and np.isfinite(float(row.kid))
    assert row.n_images == "6" and row.psnr and row.lpips == ""  # one row per set, the core metrics in it
    rc = main(base + ["--inception-weights", str(inception_file)])  # the file without fid/kid: a usage error
    assert rc == 2 and "--inception-weights" in capsys.readouterr().err
    rc = main(base + ["--metrics", "psnr,fidd"])
    err = capsys.readouterr().err
    assert rc == 2 and all(m in err for m in ("fidd", "fid", "kid", "lpips"))


def test_an_older_board_reads_fid_and_kid_as_empty(tmp_path):
    from benchmark.boards import leaderboard

    path = tmp_path / "fidelity.csv"
    old = [c for c in leaderboard.FIDELITY_COLUMNS if c not in ("fid", "kid")]
    values = {"method": "m", "preset": "p", "dataset": "d", "channels": "rgb", "codec": "jpeg", "qf": "10",
              "passes": "1", "subsampling": "420", "seed": "0", "source": "measured", "n_images": "6",
              "psnr": "27.5000", "lpips": "0.2000"}
    path.write_text(",".join(old) + "\n" + ",".join(values.get(c, "") for c in old) + "\n")
    board = leaderboard.read(path, "fidelity")
    assert list(board.columns) == leaderboard.FIDELITY_COLUMNS
    assert board.fid.tolist() == [""] and board.kid.tolist() == [""] and board.lpips.tolist() == ["0.2000"]
