"""BD-rate / BD-metric (benchmark.bdrate), the `benchmark bdrate` board and the RD figures (benchmark.rd_plots)."""
from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pytest
from PIL import Image

from benchmark.boards import bdrate
from benchmark.boards.bdrate import BDError, bd_metric, bd_rate
from benchmark.cli import bdrate as bdrate_command

# an RD curve shaped like JPEG on LIVE1 (bpp, PSNR): concave in log-rate, 6 points
RATE = [0.25, 0.38, 0.55, 0.92, 1.43, 2.66]
PSNR = [25.7, 27.0, 28.9, 30.3, 32.8, 36.9]


def test_rates_scaled_by_0_9_at_equal_metric_is_exactly_minus_10_percent():
    # log-rate shifts by ln 0.9 at every metric value, so the mean difference is ln 0.9: BD-rate = 0.9 - 1
    assert bd_rate(RATE, PSNR, [0.9 * r for r in RATE], PSNR) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate([0.9 * r for r in RATE], PSNR, RATE, PSNR) == pytest.approx(100 / 9, abs=1e-9)  # 1/0.9 - 1


def test_metric_plus_one_db_at_equal_rates_is_exactly_plus_one():
    assert bd_metric(RATE, PSNR, RATE, [p + 1 for p in PSNR]) == pytest.approx(1.0, abs=1e-12)
    assert bd_metric(RATE, PSNR, RATE, PSNR) == 0.0 and bd_rate(RATE, PSNR, RATE, PSNR) == 0.0


def test_shifted_curve_bd_rate_by_hand():
    # a straight line in (PSNR, ln rate) is reproduced by PCHIP: ln r = (p - 20) / 5. The test curve, the same
    # rates at +1 dB, is ln r = (p - 21) / 5: ln r_test - ln r_ref = -1/5 on the whole overlap, BD-rate = e^-0.2 - 1
    p = np.array([26.0, 28.0, 30.0, 32.0, 34.0])
    r = np.exp((p - 20) / 5)
    assert bd_rate(r, p, r, p + 1) == pytest.approx(100 * math.expm1(-0.2), abs=1e-9)
    assert bd_metric(r, p, r, p + 1) == pytest.approx(1.0, abs=1e-12)


def test_published_jctvc_examples():
    """Two JCT-VC sequences (rates in kbit/s, PSNR in dB), the expected BD-rates of Netflix VMAF's
    `BDrateCalculatorJCTVCTest` (github.com/Netflix/vmaf, python/test/bd_rate_calculator_test.py: -0.00465215420752807
    and -0.018779823450567612 as fractions, asserted to 4 places; their calculator is PCHIP, "validated against
    JCTVC-E137"). Our exact integral agrees to well within their tolerance."""
    ref1 = ([108048.8736, 61279.976, 33905.6656, 18883.6928], [43.6471, 40.3953, 37.247, 34.2911])
    test1 = ([108061.2784, 61299.9936, 33928.7472, 18910.912], [43.6768, 40.4232, 37.2761, 34.3147])
    ref2 = ([40433.8848, 7622.7456, 2394.488, 1017.6184], [37.5761, 35.3756, 33.8977, 32.0603])
    test2 = ([40370.12, 7587.0024, 2390.0944, 1017.0984], [37.5982, 35.4025, 33.9194, 32.0822])
    assert bd_rate(*ref1, *test1) == pytest.approx(100 * -0.00465215420752807, abs=1e-4)
    assert bd_rate(*ref2, *test2) == pytest.approx(100 * -0.018779823450567612, abs=1e-4)


def test_order_of_points_does_not_matter():
    perm = [3, 0, 5, 1, 4, 2]
    test = [r * 0.8 for r in RATE]
    assert bd_rate([RATE[i] for i in perm], [PSNR[i] for i in perm], test, PSNR) == \
        pytest.approx(bd_rate(RATE, PSNR, test, PSNR), abs=1e-12)


def test_refuses_bad_curves_naming_them():
    with pytest.raises(BDError, match=r"dncnn curve: 3 point\(s\).*at least 4"):
        bd_rate(RATE, PSNR, RATE[:3], PSNR[:3], test_name="dncnn curve")
    bumpy = PSNR[:2] + [PSNR[1] - 0.5] + PSNR[3:]
    with pytest.raises(BDError, match="arcnn: not monotonic"):
        bd_metric(RATE, PSNR, RATE, bumpy, test_name="arcnn")
    with pytest.raises(BDError, match="jpeg: rates must be > 0"):
        bd_rate([0.0] + RATE[1:], PSNR, RATE, PSNR, ref_name="jpeg")
    with pytest.raises(BDError, match="no overlapping metric interval"):
        bd_rate(RATE, PSNR, RATE, [p + 20 for p in PSNR])
    with pytest.raises(BDError, match="4 rates but 5 metric"):
        bd_rate(RATE[:4], PSNR[:5], RATE, PSNR)


# ---- the board -----------------------------------------------------------------------------------------------------
def _fid_row(method, qf, psnr, ssim, bpp, preset="none", dataset="live1"):
    return {"method": method, "preset": preset, "dataset": dataset, "channels": "rgb", "codec": "jpeg", "qf": qf,
            "passes": 1, "subsampling": "420", "seed": 0, "n_images": 29, "n_skipped": 0, "psnr": psnr,
            "ssim": ssim, "psnrb": psnr, "bpp": bpp, "source": "measured"}


def _boards(tmp_path):
    from benchmark.boards import leaderboard

    qfs = [10, 20, 30, 40, 50]
    rows = [_fid_row("jpeg", q, p, s, b) for q, p, s, b in zip(qfs, PSNR, [.70, .78, .83, .87, .90], RATE)]
    # a restorer +1 dB / +0.01 SSIM at every QF (same bytes: the same corruption)
    rows += [_fid_row("dncnn", q, p + 1, s + 0.01, b, "compact")
             for q, p, s, b in zip(qfs, PSNR, [.70, .78, .83, .87, .90], RATE)]
    rows += [_fid_row("arcnn", q, p + 1, 0.8, b, "compact") for q, p, b in zip(qfs[:3], PSNR, RATE)]  # 3 QFs
    rows += [_fid_row("fbcnn", q, 30.0 - i, 0.8 + i / 100, b, "compact")  # PSNR falls with rate
             for i, (q, b) in enumerate(zip(qfs, RATE))]
    leaderboard.upsert(tmp_path / "fidelity.csv", rows)
    return tmp_path


def _args(**kw):
    ns = {"boards": None, "leaderboard": None, "imagenet": None, "plot": None, "quiet": True}
    ns.update(kw)
    return argparse.Namespace(**ns)


def test_command_writes_the_board(tmp_path, capsys):
    boards = _boards(tmp_path / "boards")
    out = tmp_path / "out" / "bdrate.csv"
    assert bdrate_command.main(_args(boards=str(boards), leaderboard=str(out), imagenet=str(tmp_path / "none"))) == 0
    df = bdrate.read(out)
    dn = df[df.method == "dncnn"].set_index("metric")
    assert set(dn.index) == {"psnr", "ssim"}
    assert float(dn.loc["psnr", "bd_metric"]) == pytest.approx(1.0, abs=1e-6)
    assert float(dn.loc["ssim", "bd_metric"]) == pytest.approx(0.01, abs=1e-6)
    assert float(dn.loc["psnr", "bd_rate_pct"]) == pytest.approx(
        bd_rate(RATE[:5], PSNR[:5], RATE[:5], [p + 1 for p in PSNR[:5]]), abs=1e-4)
    assert dn.loc["psnr", "qf_range"] == "10-50" and dn.loc["psnr", "n_points"] == "5"
    assert dn.loc["psnr", "reference"] == "jpeg" and dn.loc["psnr", "source"] == "measured"
    assert bdrate.parse_rates(dn.loc["psnr", "rates"]) == {q: pytest.approx(b) for q, b in
                                                            zip([10, 20, 30, 40, 50], RATE)}
    # arcnn: 3 QFs; fbcnn: its PSNR falls with the rate (left out), its SSIM curve is fine
    assert sorted(zip(df.method, df.metric)) == [("dncnn", "psnr"), ("dncnn", "ssim"), ("fbcnn", "ssim")]
    err = capsys.readouterr().err
    assert "arcnn.compact on live1" in err and "3 QF(s)" in err
    assert "fbcnn.compact psnr curve of live1" in err and "not monotonic" in err
    # re-running replaces the rows (one per key)
    assert bdrate_command.main(_args(boards=str(boards), leaderboard=str(out), imagenet=str(tmp_path / "none"))) == 0
    assert len(bdrate.read(out)) == 3


def test_the_cli_knows_the_command():
    from benchmark.cli import build_parser

    args = build_parser().parse_args(["bdrate", "--boards", "b", "--plot", "p"])
    assert args.module == "bdrate" and args.boards == "b" and args.plot == "p"


def _photo_folder(folder, sizes, wnid):
    """ImageNet-flat PNGs of the given (h, w): gradients plus noise, so JPEG has something to spend bits on."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        px = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        Image.fromarray(px).save(folder / f"{wnid}_{i}.png")
    return folder


def test_classification_rate_is_the_crops_bytes(tmp_path):
    """The bpp of a classification row: the classifier's crop (shorter side 256 bicubic, centre 224) encoded at
    the QF; checked against Pillow directly on the same files."""
    sizes = [(300, 400), (500, 333)]
    folder = _photo_folder(tmp_path / "imagenet_sample", sizes, "n01440764")
    got = bdrate.classification_rates(folder, "jpeg", [10, 25], resize=256, crop=224, interpolation="bicubic")
    first = bdrate.classification_rates(folder, "jpeg", [10, 25], n=1)  # rows of `dataset[:1]`
    for q in (10, 25):
        bits = []
        for i, (h, w) in enumerate(sizes):
            img = Image.open(folder / f"n01440764_{i}.png").convert("RGB")
            nw, nh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
            img = img.resize((nw, nh), Image.BICUBIC)
            top, left = round((nh - 224) / 2), round((nw - 224) / 2)
            buf = io.BytesIO()
            img.crop((left, top, left + 224, top + 224)).save(buf, format="JPEG", quality=q, subsampling=2)
            bits.append(8 * len(buf.getvalue()) / (224 * 224))
        assert got[q] == pytest.approx(np.mean(bits), rel=1e-12)
        assert first[q] == pytest.approx(bits[0], rel=1e-12)
    assert got[10] < got[25]


def test_classification_board_rows(tmp_path, monkeypatch):
    from benchmark.boards import leaderboard

    qfs, direct = [7, 10, 15, 18, 25], [50.1, 61.9, 70.2, 72.4, 75.1]
    fake = {7: 0.31, 10: 0.40, 15: 0.52, 18: 0.58, 25: 0.72}
    monkeypatch.setattr(bdrate, "_imagenet_spec", lambda *a: (tmp_path, None, 256, 224, "bicubic"))
    monkeypatch.setattr(bdrate, "classification_rates", lambda folder, codec, need, *a: {q: fake[q] for q in need})
    rows = []
    for method, preset, shift in (("direct", "", 0.0), ("afd", "lite0", 2.0)):
        for q, v in zip(qfs, direct):
            for metric, val in (("top1", v + shift), ("top5", v + 20 + shift)):
                rows.append({"task": "classification", "model": "efficientnet_lite0", "method": method,
                             "preset": preset, "dataset": "imagenet-sample1000", "codec": "jpeg", "qf": q,
                             "passes": 1, "subsampling": "420", "seed": 0, "metric": metric, "value": val,
                             "n_images": 1000, "source": "measured",
                             "model_weights": "x (resize 256 bicubic, crop 224)"})
    leaderboard.upsert(tmp_path / "classification.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    out, notes = bdrate.build(tmp_path, tmp_path)
    assert notes == [] and {(r["method"], r["metric"]) for r in out} == {("afd", "top1"), ("afd", "top5")}
    top1 = next(r for r in out if r["metric"] == "top1")
    assert float(top1["bd_metric"]) == pytest.approx(2.0, abs=1e-6)
    assert float(top1["bd_rate_pct"]) == pytest.approx(
        bd_rate([fake[q] for q in qfs], direct, [fake[q] for q in qfs], [v + 2 for v in direct]), abs=1e-4)
    assert top1["reference"] == "direct" and bdrate.parse_rates(top1["rates"]) == pytest.approx(fake)


def test_detection_board_rows_use_the_whole_photos_bytes(tmp_path):
    """Real detectors on photos: consistency mAP vs the bpp of the whole photos (Pillow on the same files), and a
    rate-accuracy figure from the rows."""
    from benchmark.boards import leaderboard, rd_plots

    sizes = [(120, 160), (90, 130)]
    folder = _photo_folder(tmp_path / "imagenet_sample1000", sizes, "n02085620")
    qfs, direct = [7, 10, 15, 18, 25], [40.0, 52.0, 60.0, 64.0, 70.0]
    rows = []
    for method, shift in (("direct", 0.0), ("fbcnn", 3.0)):
        for q, v in zip(qfs, direct):
            for metric in ("consistency_map", "consistency_map_50", "label_proxy"):
                rows.append({"task": "detection", "model": "centernet_mbv3", "method": method,
                             "preset": "" if method == "direct" else "compact", "dataset": "imagenet-sample1000",
                             "codec": "jpeg", "qf": q, "passes": 1, "subsampling": "420", "seed": 0,
                             "metric": metric, "value": v + shift, "n_images": 2, "source": "measured",
                             "model_weights": "centernet.json"})
    boards = tmp_path / "boards"
    leaderboard.upsert(boards / "detection.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    out, notes = bdrate.build(boards, folder)
    assert notes == [] and {(r["board"], r["metric"]) for r in out} == {
        ("detection", "consistency_map"), ("detection", "consistency_map_50")}  # no BD on the label proxy
    row = next(r for r in out if r["metric"] == "consistency_map")
    assert float(row["bd_metric"]) == pytest.approx(3.0, abs=1e-6) and float(row["bd_rate_pct"]) < 0
    rates = bdrate.parse_rates(row["rates"])
    for q in qfs:
        bits = []
        for i, (h, w) in enumerate(sizes):
            buf = io.BytesIO()
            Image.open(folder / f"n02085620_{i}.png").convert("RGB").save(buf, format="JPEG", quality=q,
                                                                          subsampling=2)
            bits.append(8 * len(buf.getvalue()) / (h * w))
        assert rates[q] == pytest.approx(np.mean(bits), rel=1e-3)  # the column keeps 4 decimals
    bdrate.write(boards / "bdrate.csv", out)
    plots = rd_plots.write_plots(boards, tmp_path / "report")
    assert any("centernet_mbv3" in title for title in plots)


def test_rd_figures(tmp_path):
    from benchmark.boards import rd_plots

    boards = _boards(tmp_path / "boards")
    from benchmark.boards import leaderboard

    extra = [_fid_row(f"m{k}", q, p + 0.1 * k, 0.8, b, "compact") for k in range(9)
             for q, p, b in zip([10, 20, 30, 40, 50], PSNR, RATE)]
    leaderboard.upsert(boards / "fidelity.csv", extra)
    fig = rd_plots.rd_figure(leaderboard.read(boards / "fidelity.csv"), "live1", "rgb", "jpeg")
    # jpeg + 12 methods (dncnn, arcnn, fbcnn, m0..m8) -> panels of <= 8 series, jpeg in each
    counts = [len(ax.get_lines()) for ax in fig.axes]
    assert all(c <= rd_plots.MAX_SERIES for c in counts) and sum(counts) == 12 + len(counts)
    assert all(ax.get_lines()[0].get_label() == "jpeg" for ax in fig.axes)
    paths = rd_plots.write_plots(boards, tmp_path / "plots")
    assert [p.name for p in paths.values()] == ["rd_live1_rgb_jpeg.png"]
    assert paths["Rate-distortion: live1 (rgb, jpeg)"].stat().st_size > 5000


def test_qf_sets_add_the_training_range():
    sweep = [5, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert bdrate.qf_sets(sweep) == [sweep, [5, 10, 20, 30, 40, 50]]
    assert bdrate.qf_sets([10, 20, 30, 40]) == [[10, 20, 30, 40]]  # already inside: no duplicate row
    assert bdrate.qf_sets([10, 20, 30, 60, 70]) == [[10, 20, 30, 60, 70]]  # 3 QFs <= 50: too few for a row


# ---- bootstrap intervals over the images ---------------------------------------------------------------------------
def _per_image_curves(n, qfs=5, gain=0.3, seed=0):
    """Per-image (rate, PSNR) of a reference and a test curve on the same n photos: each photo has its own difficulty
    (shared by both curves and all QFs) and rate; the test curve is `gain` dB better on average at the same rate."""
    rng = np.random.default_rng(seed)
    base_rate = np.exp(np.linspace(np.log(0.25), np.log(2.7), qfs))
    rate = base_rate[:, None] * rng.lognormal(0, 0.2, n)[None, :]
    psnr = 25 + 5 * np.log(rate / 0.25) + rng.normal(0, 2, n)[None, :]
    return rate, psnr, psnr + gain + rng.normal(0, 0.4, (qfs, n))


def test_bd_many_agrees_with_bd_rate_and_bd_metric_and_refuses_the_same_curves():
    rng = np.random.default_rng(1)
    k, q = 400, 5
    r1 = np.sort(np.exp(rng.normal(0, 0.8, (k, q))), 1)
    m1 = np.sort(rng.normal(30, 3, (k, q)), 1)
    r2 = (r1 * np.exp(rng.normal(0, 0.05, (k, q))))[:, ::-1]  # unsorted points
    m2 = (m1 + rng.normal(0.3, 0.3, (k, q)))[:, ::-1]  # some not monotonic
    m2[:5] += 50  # no overlapping metric interval
    rate, metric = bdrate.bd_many(r1, m1, r2, m2)
    for i in range(k):
        for f, got in ((bd_rate, rate[i]), (bd_metric, metric[i])):
            try:
                assert got == pytest.approx(f(r1[i], m1[i], r2[i], m2[i]), abs=1e-9)
            except BDError:
                assert math.isnan(got)
    assert 0 < np.isnan(rate).sum() < k and np.isnan(rate[:5]).all()


def test_interval_covers_the_point_estimate_and_shrinks_with_more_images():
    widths = []
    for n in (40, 640):
        rate, ref, test = _per_image_curves(n)
        iv = bdrate.bd_interval(rate, ref, rate, test)
        point_rate = bd_rate(rate.mean(1), ref.mean(1), rate.mean(1), test.mean(1))
        point_metric = bd_metric(rate.mean(1), ref.mean(1), rate.mean(1), test.mean(1))
        assert iv.rate_lo < point_rate < iv.rate_hi < 0  # a real saving: the interval lies below 0
        assert 0 < iv.metric_lo < point_metric < iv.metric_hi
        assert iv.n_images == n and iv.resamples == 2000 and iv.dropped == 0
        widths.append((iv.rate_hi - iv.rate_lo, iv.metric_hi - iv.metric_lo))
    # 16x the images: about a quarter of the width
    assert widths[1][0] < 0.5 * widths[0][0] and widths[1][1] < 0.5 * widths[0][1]


def test_identical_curves_give_exactly_zero_and_the_same_seed_the_same_interval():
    rate, ref, _ = _per_image_curves(60)
    iv = bdrate.bd_interval(rate, ref, rate, ref)
    assert (iv.rate_lo, iv.rate_hi, iv.metric_lo, iv.metric_hi, iv.dropped) == (0.0, 0.0, 0.0, 0.0, 0)
    rate, ref, test = _per_image_curves(60)
    a, b = bdrate.bd_interval(rate, ref, rate, test), bdrate.bd_interval(rate, ref, rate, test)
    assert a == b
    c = bdrate.bd_interval(rate, ref, rate, test, seed=1)
    assert (c.rate_lo, c.rate_hi) != (a.rate_lo, a.rate_hi)


def test_resamples_without_a_bd_value_are_counted_and_can_make_the_interval_undefined():
    # no resample dropped: numpy's percentiles
    v = np.random.default_rng(0).normal(size=2000)
    assert bdrate._worst_case_percentiles(v, 0, 0.95) == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])))
    lo, hi = bdrate._worst_case_percentiles(v[:1990], 10, 0.95)  # 10 worst cases either side: wider
    assert lo <= np.percentile(v[:1990], 2.5) and hi >= np.percentile(v[:1990], 97.5)
    assert bdrate._worst_case_percentiles(v[:1900], 100, 0.95) == (None, None)  # 5 % dropped > the 2.5 % tails
    # a test curve flat between two QFs: about half of the resampled curves are not monotonic
    rate, ref, test = _per_image_curves(30)
    test[2] = test[1] + np.random.default_rng(3).normal(0, 0.5, 30)
    test[2] += test[1].mean() - test[2].mean()  # the same mean PSNR at two QFs: refused as it stands
    iv = bdrate.bd_interval(rate, ref, rate, test, resamples=500)
    assert iv.dropped > 100 and iv.rate_lo is None and iv.metric_hi is None


def test_the_bootstrap_of_a_large_case_takes_seconds():
    """2000 resamples of 10 QFs x 2 curves x 1000 images (per-image rates too): index blocks -> count matrices ->
    resampled means in one product per block, the BD values of a block's curves at once (`bd_many`): about 0.2 s
    on one core (2 s with scipy's PCHIP per resample)."""
    import time

    rate, ref, test = _per_image_curves(1000, qfs=10)
    t0 = time.perf_counter()
    iv = bdrate.bd_interval(rate, ref, rate * 1.01, test)
    assert time.perf_counter() - t0 < 10 and iv.rate_lo is not None


def _fidelity_board_with_files(folder, n=40):
    """A fidelity board (jpeg and dncnn.compact at 5 QFs) whose rows are the means of per-image files beside it."""
    from benchmark.boards import leaderboard, per_image

    qfs = [10, 20, 30, 40, 50]
    rate, ref, test = _per_image_curves(n)
    ssim = np.clip(0.6 + 0.05 * np.log(rate / 0.25) + np.random.default_rng(5).normal(0, 0.02, n), 0, 1)
    images = [f"img{i}" for i in range(n)]
    digests = [f"{i:032x}" for i in range(n)]
    rows = []
    ssim_test = ssim + 0.01 + np.random.default_rng(6).normal(0, 0.005, ssim.shape)
    for method, preset, psnr, s in (("jpeg", "", ref, ssim), ("dncnn", "compact", test, ssim_test)):
        for i, q in enumerate(qfs):
            row = _fid_row(method, q, float(psnr[i].mean()), float(s[i].mean()), float(rate[i].mean()), preset)
            row["n_images"] = n
            values = {"image": images, "digest": digests, "psnr": psnr[i], "ssim": s[i], "psnrb": psnr[i],
                      "bpp": rate[i]}
            per_image.write(per_image.path_for(folder / "fidelity.csv", row, leaderboard.FIDELITY_KEY), values)
            rows.append(row)
    leaderboard.upsert(folder / "fidelity.csv", rows)
    return folder, rows


def test_command_writes_intervals_from_the_per_image_files(tmp_path, capsys):
    from benchmark.boards import leaderboard, per_image

    boards, rows = _fidelity_board_with_files(tmp_path / "boards")
    out = tmp_path / "out" / "bdrate.csv"
    assert bdrate_command.main(_args(boards=str(boards), leaderboard=str(out), imagenet=str(tmp_path / "none"))) == 0
    df = bdrate.read(out).set_index("metric")
    for metric in ("psnr", "ssim"):
        r = df.loc[metric]
        assert float(r.bd_rate_lo) < float(r.bd_rate_pct) < float(r.bd_rate_hi) < 0
        assert float(r.bd_metric_lo) < float(r.bd_metric) < float(r.bd_metric_hi)
        assert (r.n_paired, r.resamples, r.dropped) == ("40", "2000", "0")
        assert "paired bootstrap over 40 images" in r.interval_note and "per-image bpp" in r.interval_note
    text = capsys.readouterr().out
    assert f"{float(df.loc['psnr', 'bd_rate_pct']):+.2f} [{float(df.loc['psnr', 'bd_rate_lo']):+.2f}, " in text
    assert "intervals: 2 of 2 rows" in text and "0 tie(s)" in text

    # one point without its file: no interval (the point estimate stays), and the note and the output say why
    per_image.path_for(boards / "fidelity.csv", rows[-1], leaderboard.FIDELITY_KEY).unlink()
    assert bdrate_command.main(_args(boards=str(boards), leaderboard=str(out), imagenet=str(tmp_path / "none"))) == 0
    df2 = bdrate.read(out).set_index("metric")
    for c in bdrate.INTERVAL_COLUMNS[:-1]:
        assert (df2[c] == "").all()
    assert df2.loc["psnr", "bd_rate_pct"] == df.loc["psnr", "bd_rate_pct"]
    assert df2.loc["psnr", "interval_note"] == \
        "no interval: per-image files missing (1 of 10 points: dncnn.compact QF 50)"
    text = capsys.readouterr().out
    assert "intervals: 0 of 2 rows" in text and "2 row(s): no interval: per-image files missing" in text

    # a file that does not give its row's value (a stale or foreign file): no interval either
    per_image.write(per_image.path_for(boards / "fidelity.csv", rows[-1], leaderboard.FIDELITY_KEY),
                    {"image": ["a"], "digest": ["d"], "psnr": [1.0], "ssim": [0.5], "bpp": [2.0]})
    rows_out, _ = bdrate.build(boards)
    assert all(r["bd_rate_lo"] == "" and f"does not give the row's {r['metric']}" in r["interval_note"]
               for r in rows_out)


def test_identical_methods_on_the_board_are_a_tie_at_zero(tmp_path):
    from benchmark.boards import leaderboard, per_image

    boards, rows = _fidelity_board_with_files(tmp_path)
    twins = []
    for r in rows[:5]:  # jpeg's rows and files under another method's name
        twin = {**r, "method": "identity", "preset": "compact"}
        per_image.write(per_image.path_for(boards / "fidelity.csv", twin, leaderboard.FIDELITY_KEY),
                        per_image.read(per_image.path_for(boards / "fidelity.csv", r, leaderboard.FIDELITY_KEY)))
        twins.append(twin)
    leaderboard.upsert(boards / "fidelity.csv", twins)
    out = [r for r in bdrate.build(boards)[0] if r["method"] == "identity"]
    assert len(out) == 2
    for r in out:
        assert [float(r[c]) for c in ("bd_rate_pct", "bd_rate_lo", "bd_rate_hi", "bd_metric", "bd_metric_lo",
                                      "bd_metric_hi")] == [0.0] * 6
        assert bdrate.verdict(r) == "tie"
    assert "tie" in bdrate.format_table(out).splitlines()[1]


def test_classification_intervals_hold_the_rate_fixed(tmp_path, monkeypatch):
    """Rate-accuracy rows: per-image correctness (0/1) resampled, the computed mean bpp held fixed (noted); top5 has
    no per-image files here, so its row has no interval."""
    from benchmark.boards import leaderboard, per_image

    n, qfs = 400, [7, 10, 15, 18, 25]
    p_direct = [0.40, 0.55, 0.65, 0.72, 0.80]
    fake = {7: 0.31, 10: 0.40, 15: 0.52, 18: 0.58, 25: 0.72}
    monkeypatch.setattr(bdrate, "_imagenet_spec", lambda *a: (tmp_path, None, 256, 224, "bicubic"))
    monkeypatch.setattr(bdrate, "classification_rates", lambda folder, codec, need, *a: {q: fake[q] for q in need})
    u = np.random.default_rng(0).random(n)  # each photo's difficulty: right at every QF above its threshold
    rows = []
    for method, preset, shift in (("direct", "", 0.0), ("afd", "lite0", 0.03)):
        for q, p in zip(qfs, p_direct):
            correct = (u < p + shift).astype(float)
            for metric in ("top1", "top5"):
                row = {"task": "classification", "model": "efficientnet_lite0", "method": method, "preset": preset,
                       "dataset": "imagenet-sample1000", "codec": "jpeg", "qf": q, "passes": 1, "subsampling": "420",
                       "seed": 0, "metric": metric, "value": 100 * correct.mean() + (20 if metric == "top5" else 0),
                       "n_images": n, "source": "measured", "model_weights": "x (resize 256 bicubic, crop 224)"}
                if metric == "top1":
                    per_image.write(per_image.path_for(tmp_path / "classification.csv", row, leaderboard.TASK_KEY),
                                    {"image": [f"i{i}" for i in range(n)], "digest": [f"{i:x}" for i in range(n)],
                                     "top1": correct})
                rows.append(row)
    leaderboard.upsert(tmp_path / "classification.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    out, notes = bdrate.build(tmp_path, tmp_path)
    assert notes == []
    top1, top5 = (next(r for r in out if r["metric"] == m) for m in ("top1", "top5"))
    assert float(top1["bd_metric_lo"]) < float(top1["bd_metric"]) < float(top1["bd_metric_hi"])
    assert float(top1["bd_rate_lo"]) < float(top1["bd_rate_pct"]) < float(top1["bd_rate_hi"])
    assert "rate held at the rows' mean bpp" in top1["interval_note"] and top1["n_paired"] == n
    assert top5["bd_rate_lo"] == "" and "per-image files missing (10 of 10 points" in top5["interval_note"]


def test_a_board_written_before_the_intervals_still_reads(tmp_path):
    boards = _boards(tmp_path / "boards")
    rows, _ = bdrate.build(boards)
    old_columns = [c for c in bdrate.BDRATE_COLUMNS if c not in bdrate.INTERVAL_COLUMNS]
    old = tmp_path / "bdrate.csv"
    import pandas as pd

    pd.DataFrame([{c: str(r[c]) for c in old_columns} for r in rows]).to_csv(old, index=False)
    df = bdrate.read(old)
    assert list(df.columns) == bdrate.BDRATE_COLUMNS and (df.bd_rate_lo == "").all()
    assert list(df.bd_rate_pct) == [r["bd_rate_pct"] for r in rows]
    bdrate.write(old, rows)  # upsert onto the old layout: the new one
    assert list(bdrate.read(old).columns) == bdrate.BDRATE_COLUMNS and len(bdrate.read(old)) == len(rows)


# ---- fault 6: refused curves, the ImageNet layout, a folder without boards -----------------------------------------
def test_a_curve_refused_now_removes_its_old_row(tmp_path, capsys):
    from benchmark.boards import leaderboard

    boards = _boards(tmp_path / "boards")
    out = tmp_path / "out" / "bdrate.csv"
    args = _args(boards=str(boards), leaderboard=str(out), imagenet=str(tmp_path / "none"))
    assert bdrate_command.main(args) == 0
    assert set(bdrate.read(out)[lambda d: d.method == "dncnn"].metric) == {"psnr", "ssim"}
    # dncnn's PSNR re-measured: it now falls at QF 50 (not monotonic); its SSIM curve still stands
    leaderboard.upsert(boards / "fidelity.csv", [_fid_row("dncnn", 50, PSNR[2], 0.91, RATE[4], "compact")])
    assert bdrate_command.main(args) == 0
    captured = capsys.readouterr()
    assert "dncnn.compact psnr curve of live1" in captured.err and "not monotonic" in captured.err
    assert set(bdrate.read(out)[lambda d: d.method == "dncnn"].metric) == {"ssim"}  # the stale psnr row is gone
    assert "1 row(s) of refused curves removed" in captured.out


def test_the_imagenet_layout_is_the_run_commands(tmp_path):
    """Wnid sub-folders make the `imagenet` layout; any other sub-folder (hidden, stray) is ignored, as `run` does."""
    folder = _photo_folder(tmp_path / "imagenet_sample", [(300, 400), (240, 320)], "n01440764")
    flat = bdrate.classification_rates(folder, "jpeg", [10])
    photos = bdrate.photo_rates(folder, "jpeg", [10])
    (folder / ".ipynb_checkpoints").mkdir()  # an empty hidden folder: a traceback before
    stray = _photo_folder(folder / "extra", [(64, 64)], "n09999999")  # a stray sub-folder: silently its bpp before
    assert bdrate.photo_rates(folder, "jpeg", [10]) == photos
    assert bdrate.classification_rates(folder, "jpeg", [10]) == flat
    from datamodules.sources import imagenet_layout

    assert imagenet_layout(folder) == "imagenet-flat"
    wnids = tmp_path / "val"
    wnids.mkdir()
    stray.rename(wnids / "n09999999")
    assert imagenet_layout(wnids) == "imagenet"
    assert bdrate.photo_rates(wnids, "jpeg", [10])[10] > 0


def test_an_unusable_imagenet_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from benchmark.cli import main

    qfs, rows = [7, 10, 15, 18, 25], []
    for method, shift in (("direct", 0.0), ("fbcnn", 3.0)):
        for q, v in zip(qfs, [50.1, 61.9, 70.2, 72.4, 75.1]):
            rows.append({"task": "classification", "model": "efficientnet_lite0", "method": method,
                         "preset": "" if method == "direct" else "compact", "dataset": "imagenet-sample1000",
                         "codec": "jpeg", "qf": q, "passes": 1, "subsampling": "420", "seed": 0, "metric": "top1",
                         "value": v + shift, "n_images": 2, "source": "measured",
                         "model_weights": "lite0.pth (resize 256 bicubic, crop 224)"})
    from benchmark.boards import leaderboard

    boards = tmp_path / "boards"
    leaderboard.upsert(boards / "classification.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    empty = tmp_path / "imagenet_sample1000"
    (empty / ".cache").mkdir(parents=True)  # no image, only a hidden folder
    rc = main(["bdrate", "--boards", str(boards), "--imagenet", str(empty), "--leaderboard", str(tmp_path / "o/"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: --imagenet {empty}" in err and "holds no images" in err


def test_a_boards_folder_without_boards_is_a_usage_error(tmp_path, capsys):
    from benchmark.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["bdrate", "--boards", str(tmp_path / "empty"), "--leaderboard", str(tmp_path / "o/"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and f"--boards {tmp_path / 'empty'}" in err and "holds no board" in err
    assert "no curve pair" not in out


# ---- set-level intervals (detection mAP) and the segmentation board ----------------------------------------------
def _matches_at(n: int, hit: np.ndarray, seed: int):
    """Per-image COCOeval matches of n photos, one ground-truth box each (category 1 + i % 3); a photo whose
    `hit` is True gets a true positive at every IoU threshold, the others a false positive; random scores."""
    from benchmark.metrics import coco_resample

    rng = np.random.default_rng(seed)
    det = [(i, 1 + i % 3, float(rng.random()), 1023 if hit[i] else 0, 0 if hit[i] else 1023) for i in range(n)]
    return coco_resample._build(n, det, [(i, 1 + i % 3, 1) for i in range(n)], np.arange(n))


def _detection_board_with_matches(boards, n=200, gain=0.1, twin=False):
    """direct and a restorer at five QFs, each row with its `.coco.gz` matches and the mAP they give."""
    from benchmark.boards import leaderboard, per_image
    from benchmark.metrics.coco_resample import MapResampler

    qfs, p = [7, 10, 15, 18, 25], [0.2, 0.35, 0.5, 0.65, 0.8]
    u = np.random.default_rng(1).random(n)
    names, digests = [f"n0_{i}.png" for i in range(n)], [f"{i:032x}" for i in range(n)]
    rows, matches = [], {}
    for method in ("direct", "dncnn"):
        for k, q in enumerate(qfs):
            m = matches["direct", q] if twin and method == "dncnn" else \
                _matches_at(n, u < p[k] + (gain if method == "dncnn" else 0), seed=0)
            matches[method, q] = m
            for metric, score in (("consistency_map", "map"), ("consistency_map_50", "map_50")):
                row = {"task": "detection", "model": "centernet_mbv3", "method": method,
                       "preset": "" if method == "direct" else "compact", "dataset": "imagenet-sample1000",
                       "codec": "jpeg", "qf": q, "passes": 1, "subsampling": "420", "seed": 0, "metric": metric,
                       "value": round(100 * MapResampler(m).scores(np.arange(n))[score], 4), "n_images": n,
                       "source": "measured", "model_weights": "centernet.json"}
                per_image.write_matches(
                    per_image.path_for(boards / "detection.csv", row, leaderboard.TASK_KEY, per_image.MATCHES_SUFFIX),
                    {"_matches": m, "image": names, "digest": digests})
                rows.append(row)
    leaderboard.upsert(boards / "detection.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    return qfs, matches


def test_bd_interval_of_a_set_metric_equals_the_brute_force_bootstrap():
    """`bd_interval_of`: per resample, the mAP of every point recomputed on the resampled photos, then the BD values
    by the scalar `bd_rate` / `bd_metric`; the percentiles of these 300 equal the function's interval."""
    from benchmark.metrics.coco_resample import MapResampler
    from benchmark.metrics.paired import bootstrap_indices

    n, qfs = 200, [7, 10, 15, 18, 25]
    u = np.random.default_rng(3).random(n)
    p = [0.2, 0.35, 0.5, 0.65, 0.8]  # far apart: no resample of 200 photos gives a flat curve
    ref = [MapResampler(_matches_at(n, u < p[k], 0)) for k in range(5)]  # same scores: nested hits rise
    test = [MapResampler(_matches_at(n, u < p[k] + 0.1, 0)) for k in range(5)]
    rates = [0.3, 0.4, 0.55, 0.65, 0.8]

    def curves(idx):
        return (np.array([100 * r.scores(idx, ("map",))["map"] for r in ref]),
                np.array([100 * t.scores(idx, ("map",))["map"] for t in test]))

    iv = bdrate.bd_interval_of(curves, n, rates, rates, resamples=300, seed=5)
    by_hand_r, by_hand_m = [], []
    for block in bootstrap_indices(n, 300, 5):
        for idx in block:
            a, b = curves(idx)
            by_hand_r.append(bd_rate(rates, a, rates, b))
            by_hand_m.append(bd_metric(rates, a, rates, b))
    assert iv.dropped == 0 and iv.resamples == 300 and iv.n_images == n
    assert [iv.rate_lo, iv.rate_hi] == pytest.approx(list(np.percentile(by_hand_r, [2.5, 97.5])), abs=1e-9)
    assert [iv.metric_lo, iv.metric_hi] == pytest.approx(list(np.percentile(by_hand_m, [2.5, 97.5])), abs=1e-9)
    assert len(qfs) == 5


def test_detection_bd_rows_get_intervals_from_the_per_image_matches(tmp_path, monkeypatch):
    fake = {7: 0.31, 10: 0.40, 15: 0.52, 18: 0.58, 25: 0.72}
    monkeypatch.setattr(bdrate, "_imagenet_spec", lambda *a: (tmp_path, None, 0, 0, ""))
    monkeypatch.setattr(bdrate, "photo_rates", lambda folder, codec, need, *a: {q: fake[q] for q in need})
    boards = tmp_path / "boards"
    _detection_board_with_matches(boards)
    out, notes = bdrate.build(boards, tmp_path)
    assert notes == [] and {r["metric"] for r in out} == {"consistency_map", "consistency_map_50"}
    for r in out:
        assert float(r["bd_rate_lo"]) < float(r["bd_rate_pct"]) < float(r["bd_rate_hi"]) < 0
        assert float(r["bd_metric_lo"]) < float(r["bd_metric"]) < float(r["bd_metric_hi"])
        assert r["n_paired"] == 200 and "recomputed from the per-image COCOeval matches" in r["interval_note"]
    twins = tmp_path / "twins"
    _detection_board_with_matches(twins, twin=True)  # the restorer's matches are direct's: a tie at exactly 0
    for r in bdrate.build(twins, tmp_path)[0]:
        assert [float(r[c]) for c in ("bd_rate_pct", "bd_rate_lo", "bd_rate_hi", "bd_metric", "bd_metric_lo",
                                      "bd_metric_hi")] == [0.0] * 6
        assert bdrate.verdict(r) == "tie"


def test_segmentation_bd_rows_use_the_bytes_of_the_photos_the_mask_selected(tmp_path):
    """Person-mask consistency vs bpp: the rate is the mean over the photos the rows scored (those in the reference
    row's per-image file: the clean mask's selection), Pillow on the same files; IoU resampled per photo."""
    from benchmark.boards import leaderboard, per_image
    from benchmark.evaluate.tasks import dataset_label

    sizes = [(120, 160), (90, 130), (100, 100), (80, 120)]
    folder = _photo_folder(tmp_path / "people", sizes, "p")
    label = dataset_label(f"photos:{folder}") + "[mask>=0.1]"
    chosen = ["p_0.png", "p_2.png", "p_3.png"]  # photo p_1 "had no person": not scored
    qfs, iou = [7, 10, 15, 18, 25], np.array([[0.5, 0.6, 0.7, 0.75, 0.8], [0.4, 0.55, 0.6, 0.7, 0.78],
                                              [0.6, 0.62, 0.72, 0.8, 0.85]])
    rows = []
    for method, gain in (("direct", 0.0), ("dncnn", 0.05)):
        for k, q in enumerate(qfs):
            values = iou[:, k] + gain
            for metric in ("consistency_iou", "consistency_boundary_f"):
                rows.append({"task": "segmentation", "model": "selfie_seg", "method": method,
                             "preset": "" if method == "direct" else "compact", "dataset": label, "codec": "jpeg",
                             "qf": q, "passes": 1, "subsampling": "420", "seed": 0, "metric": metric,
                             "value": 100 * values.mean(), "n_images": 3, "source": "measured",
                             "model_weights": "selfie.json"})
                per_image.write(per_image.path_for(tmp_path / "boards" / "segmentation.csv", rows[-1],
                                                   leaderboard.TASK_KEY),
                                {"image": chosen, "digest": ["a", "b", "c"], "consistency_iou": values,
                                 "consistency_boundary_f": values})
    leaderboard.upsert(tmp_path / "boards" / "segmentation.csv", rows, leaderboard.TASK_KEY,
                       leaderboard.TASK_COLUMNS)
    out, notes = bdrate.build(tmp_path / "boards", None, photo_roots=[tmp_path])
    assert notes == [] and {(r["board"], r["metric"]) for r in out} == {
        ("segmentation", "consistency_iou"), ("segmentation", "consistency_boundary_f")}
    row = next(r for r in out if r["metric"] == "consistency_iou")
    assert float(row["bd_metric"]) == pytest.approx(5.0, abs=1e-6) and float(row["bd_rate_pct"]) < 0
    assert row["n_paired"] == 3 and "3 whole photos scored" in row["rate"]
    rates = bdrate.parse_rates(row["rates"])
    for q in qfs:
        bits = []
        for name in chosen:
            img = Image.open(folder / name).convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=q, subsampling=2)
            bits.append(8 * len(buf.getvalue()) / (img.height * img.width))
        assert rates[q] == pytest.approx(np.mean(bits), rel=1e-3)
    from benchmark.boards import rd_plots

    bdrate.write(tmp_path / "boards" / "bdrate.csv", out)
    plots = rd_plots.write_plots(tmp_path / "boards", tmp_path / "report")
    (png,) = [p for title, p in plots.items() if "selfie_seg" in title]
    assert png.exists() and png.name == f"rate_accuracy_selfie_seg_{label.replace(':', '_')[:-11]}_maskge0.1_jpeg.png"
    assert sorted(rd_plots.accuracy_series(leaderboard.read(tmp_path / "boards" / "segmentation.csv"),
                                    bdrate.read(tmp_path / "boards" / "bdrate.csv"), "selfie_seg", label, "jpeg",
                                    "consistency_iou", "segmentation")["direct"]) == \
        sorted((rates[q], round(100 * iou[:, k].mean(), 4)) for k, q in enumerate(qfs))
    _, notes = bdrate.build(tmp_path / "boards", None, photo_roots=[tmp_path / "elsewhere"])
    assert any("--photos DIR" in n for n in notes)  # the folder not found: said, no invented rate
