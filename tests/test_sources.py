"""Image sources and bad input: each error names the culprit; one bad file never stops a folder."""
import numpy as np
import pytest
from PIL import Image

from datamodules.sources import (SAMPLE_IMAGES, DatasetError, ImageError, LoadReport, load_folder, load_samples,
                                 read_image, resolve_dataset)

from .conftest import smooth_image


def save(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_reads_gray_rgb_in_all_formats(tmp_path, rng):
    rgb, gray = smooth_image(rng), smooth_image(rng, c=1)
    for ext in ("png", "bmp", "tif"):
        assert np.array_equal(read_image(save(tmp_path / f"a.{ext}", rgb)).pixels, rgb)
        assert np.array_equal(read_image(save(tmp_path / f"g.{ext}", gray)).pixels, gray)
    r = read_image(save(tmp_path / "j.jpg", rgb, quality=95))
    assert r.pixels.shape == rgb.shape and r.name == "j"


def test_truncated_file_names_the_file(tmp_path, rng):
    p = save(tmp_path / "t.png", smooth_image(rng))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageError, match="t.png"):
        read_image(p)
    q = tmp_path / "junk.jpg"
    q.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="junk.jpg: cannot decode"):
        read_image(q)


def test_lossless_modes_are_converted_with_a_warning(tmp_path, rng):
    rgb = smooth_image(rng)
    pal = Image.fromarray(rgb).quantize(64)
    pal.save(tmp_path / "p.png")
    with pytest.warns(UserWarning, match="palette"):
        r = read_image(tmp_path / "p.png")
    assert np.array_equal(r.pixels, np.asarray(pal.convert("RGB")))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    with pytest.warns(UserWarning, match="alpha"):
        assert np.array_equal(read_image(save(tmp_path / "o.png", rgba)).pixels, rgb)


@pytest.mark.parametrize("mode,match", [("RGBA-transparent", "alpha"), ("I;16", "not 8-bit"), ("CMYK", "CMYK")])
def test_lossy_modes_are_refused(tmp_path, rng, mode, match):
    rgb = smooth_image(rng)
    if mode == "RGBA-transparent":
        img = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]))
        path = tmp_path / "x.png"
    elif mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 256)
        path = tmp_path / "x.png"
    else:
        img = Image.fromarray(rgb).convert("CMYK")
        path = tmp_path / "x.tif"
    img.save(path)
    with pytest.raises(ImageError, match=match) as e:
        read_image(path)
    assert "x." in str(e.value)


def test_too_small_refused_odd_size_accepted(tmp_path, rng):
    with pytest.raises(ImageError, match="smaller than one 8x8"):
        read_image(save(tmp_path / "tiny.png", smooth_image(rng, 7, 20)))
    odd = read_image(save(tmp_path / "odd.png", smooth_image(rng, 37, 45)))
    assert odd.pixels.shape == (37, 45, 3)


def test_folder_skips_bad_images_and_counts_them(tmp_path, rng):
    save(tmp_path / "a.png", smooth_image(rng))
    save(tmp_path / "b.png", smooth_image(rng, c=1))
    (tmp_path / "c.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "notes.txt").write_text("ignored")
    report = LoadReport()
    with pytest.warns(UserWarning, match="c.png"):
        records = load_folder(tmp_path, report)
    assert [r.name for r in records] == ["a", "b"]
    assert len(report.skipped) == 1 and report.skipped[0][0].endswith("c.png")


def test_folder_skips_images_under_the_metrics_window_and_counts_them(tmp_path, rng):
    """A 9x15 image passes the 8-px JPEG-block check but SSIM's 11x11 window cannot score it: the evaluation
    datamodule skips and counts it with a warning naming it, and scores the rest of the folder."""
    from benchmark.metrics import MIN_SIDE
    from datamodules.corruptions import Corruption
    from datamodules.fidelity import EvalDataModule

    assert MIN_SIDE == 11
    save(tmp_path / "a.png", smooth_image(rng))
    save(tmp_path / "b.png", smooth_image(rng, c=1))
    save(tmp_path / "small.png", smooth_image(rng, 9, 15))
    assert read_image(tmp_path / "small.png").pixels.shape == (9, 15, 3)  # a usable image on its own
    dm = EvalDataModule(str(tmp_path), [Corruption("jpeg", (10,))])
    with pytest.warns(UserWarning, match="small.png: size 15x9 is smaller than 11x11"):
        dm.setup()
    assert [r.name for r in dm.records] == ["a", "b"]
    assert dm.report.skipped == [(str(tmp_path / "small.png"), f"{tmp_path / 'small.png'}: size 15x9 is smaller "
                                  "than 11x11, the smallest image the metrics can score (SSIM's window)")]
    assert [r.name for r in load_folder(tmp_path)] == ["a", "b", "small"]  # training folders keep the 8-px rule


def test_dataset_errors_say_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.delenv("CARBENCH_DATA", raising=False)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        resolve_dataset("nope")
    with pytest.raises(DatasetError, match="LIVE1_color"):
        resolve_dataset("live1", tmp_path)
    with pytest.raises(DatasetError, match="no .* files"):
        resolve_dataset(str(tmp_path))


def test_samples_are_embedded_and_stable():
    a, b = load_samples(), load_samples()
    assert [r.name for r in a] == list(SAMPLE_IMAGES)
    assert any(r.is_gray for r in a) and any(not r.is_gray for r in a)
    assert [r.digest for r in a] == [r.digest for r in b]


def test_y_variant_is_matlab_luma(rng, tmp_path):
    from skimage.color import rgb2ycbcr

    rgb = smooth_image(rng)
    save(tmp_path / "a.png", rgb)
    (rec,) = resolve_dataset(f"{tmp_path}:y")
    assert np.array_equal(rec.pixels, np.round(rgb2ycbcr(rgb)[..., 0]).astype(np.uint8))


def test_gray_training_records_are_matlab_y(tmp_path):
    """A gray network trains on the Y of colour training images (as the gray test sets are made), not on RGB."""
    from PIL import Image

    from datamodules.fidelity import load_train_records
    from datamodules.sources import to_y

    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (gray,), name = load_train_records(str(tmp_path), color=False)
    assert gray.pixels.shape == (20, 24) and name.endswith("(MATLAB Y)")
    y = np.round(16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255)  # no ties here
    np.testing.assert_array_equal(gray.pixels, y.astype(np.uint8))
    np.testing.assert_array_equal(to_y(rgb), gray.pixels)
    (colour,), _ = load_train_records(str(tmp_path), color=True)
    assert colour.pixels.shape == (20, 24, 3)


def test_to_y_rounds_every_colour_half_away_from_zero_as_the_metrics():
    """`to_y` (the `:y` datasets) and the metrics' "y" channels share one luma rounding: MATLAB's, half away from
    zero, exact at the 194 ties where float64 `rgb_to_y(...).round()` went either way (all 2^24 colours)."""
    import torch

    from benchmark.metrics.fidelity import _y_uint8
    from datamodules.sources import to_y

    c = np.arange(1 << 24, dtype=np.int64)
    rgb = np.stack([c >> 16, (c >> 8) & 255, c & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    s = 65481 * (c >> 16) + 128553 * ((c >> 8) & 255) + 24966 * (c & 255)  # 255000 (Y - 16), exact
    expected = (16 + (s + 127500) // 255000).reshape(4096, 4096)
    y = to_y(rgb)
    assert y.dtype == np.uint8 and np.array_equal(y, expected)
    assert int((s % 255000 == 127500).sum()) == 194
    rows = torch.from_numpy(rgb[:64]).permute(2, 0, 1)[None]  # the metrics' path on a slice (the full sweep: test_metrics)
    assert np.array_equal(_y_uint8(rows)[0, 0].numpy(), y[:64])
