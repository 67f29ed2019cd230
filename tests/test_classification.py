"""Classification: dataset layouts on tiny fixtures, the ImageNet-C JPEG protocol against PIL by hand, top-k
accuracy against hand-computed cases, classifier weights (torchvision, timm, safetensors) and their errors."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.classification import ClassificationSet, cub200, flowers102, imagenet_c_corruption, imagenet_c_jpeg, imagenet_flat, imagenet_folders, load_rgb, resize_center_crop
from benchmark.metrics.classification import TopKAccuracy
from datamodules.sources import DatasetError
from lightning_modules.task_models.classifier import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassifierError,
    build_classifier,
)

from .conftest import SHARED, need_shared, smooth_image

W1, W2 = "n01440764", "n01443537"


pytestmark = pytest.mark.usefixtures("single_thread")


def write_jpeg(path, rng, h=20, w=24, c=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(rng, h, w, c)).save(path, quality=90)
    return path


# ---- layouts -------------------------------------------------------------------------------------------------------
def test_imagenet_wnid_folders(tmp_path, rng):
    for wnid in (W2, W1):
        for k in range(2):
            write_jpeg(tmp_path / wnid / f"ILSVRC2012_val_{wnid}_{k}.JPEG", rng)
    samples, classes = imagenet_folders(tmp_path)  # ImageNet wnids: ImageNet-1k's class order, 1000 classes
    assert classes[:2] == [W1, W2] and len(classes) == 1000
    assert [(p.parent.name, y) for p, y in samples] == [(W1, 0), (W1, 0), (W2, 1), (W2, 1)]
    samples, classes = imagenet_folders(tmp_path, wnids=[W2, W1])  # a given list fixes the indices
    assert {p.parent.name: y for p, y in samples} == {W2: 0, W1: 1}
    with pytest.raises(DatasetError, match=str(tmp_path / "n01484850")):
        imagenet_folders(tmp_path, wnids=[W1, W2, "n01484850"])
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        imagenet_folders(tmp_path / "nope")


def test_imagenet_flat_wnid_prefixed(tmp_path, rng):
    write_jpeg(tmp_path / f"{W2}_goldfish.JPEG", rng)
    write_jpeg(tmp_path / f"{W1}_tench.JPEG", rng)
    gray = write_jpeg(tmp_path / "n01484850_great_white_shark.JPEG", rng, c=1)
    samples, classes = imagenet_flat(tmp_path)
    assert classes[:3] == [W1, W2, "n01484850"] and len(classes) == 1000
    assert [(p.name, y) for p, y in samples] == [(f"{W1}_tench.JPEG", 0), (f"{W2}_goldfish.JPEG", 1),
                                                 ("n01484850_great_white_shark.JPEG", 2)]
    with Image.open(gray) as img:
        assert img.mode == "L"
        ref = np.asarray(img.convert("RGB"))
    px = load_rgb(gray)
    assert px.shape == (20, 24, 3) and np.array_equal(px, ref)
    write_jpeg(tmp_path / "tench.JPEG", rng)  # no wnid prefix: named, skipped, counted
    with pytest.warns(UserWarning, match="tench.JPEG"):
        labeled = imagenet_flat(tmp_path, wnids=[W1, W2, "n01484850"])
    assert len(labeled.samples) == 3 and [os.path.basename(p) for p, _ in labeled.skipped] == ["tench.JPEG"]
    sorted_found = [f"n{k:08d}" for k in (7, 3)]  # not ImageNet wnids: positions among those found, with a warning
    for k, w in enumerate(sorted_found):
        write_jpeg(tmp_path / "other" / f"{w}_x.JPEG", rng)
    with pytest.warns(UserWarning, match="2 wnids found"):
        assert imagenet_flat(tmp_path / "other").classes == sorted(sorted_found)


def write_cub(root, rng):
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    rows = [(1, classes[0], "a1.jpg", 1, 1), (2, classes[0], "a2.jpg", 1, 0),
            (3, classes[1], "b1.jpg", 2, 0), (4, classes[1], "b2.jpg", 2, 1)]
    for _, folder, fname, _, _ in rows:
        write_jpeg(root / "images" / folder / fname, rng)
    (root / "images.txt").write_text("".join(f"{i} {f}/{n}\n" for i, f, n, _, _ in rows))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {y}\n" for i, _, _, y, _ in rows))
    (root / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, _, t in rows))
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))


def test_cub200_test_split(tmp_path, rng):
    root = tmp_path / "CUB_200_2011"
    write_cub(root, rng)
    samples, classes = cub200(tmp_path)  # the parent folder works too
    assert [(p.relative_to(root).as_posix(), y) for p, y in samples] == [
        ("images/001.Black_footed_Albatross/a2.jpg", 0), ("images/002.Laysan_Albatross/b1.jpg", 1)]
    assert len(classes) == 200 and classes[:2] == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [y for _, y in cub200(root, split="train").samples] == [0, 1]
    (root / "images" / "002.Laysan_Albatross" / "b1.jpg").unlink()
    with pytest.raises(DatasetError, match=str(root / "images" / "002.Laysan_Albatross" / "b1.jpg")):
        cub200(root)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match=str(root / "image_class_labels.txt")):
        cub200(root)


def test_flowers102_test_split(tmp_path, rng):
    from scipy.io import savemat

    for i in range(1, 6):
        write_jpeg(tmp_path / "jpg" / f"image_{i:05d}.jpg", rng)
    savemat(tmp_path / "imagelabels.mat", {"labels": np.array([[77, 1, 102, 5, 77]], dtype=np.uint8)})
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1]], dtype=np.uint16),
                                      "valid": np.array([[4]], dtype=np.uint16),
                                      "tstid": np.array([[5, 2, 3]], dtype=np.uint16)})
    samples, classes = flowers102(tmp_path)
    assert [(p.name, y) for p, y in samples] == [("image_00005.jpg", 76), ("image_00002.jpg", 0),
                                                 ("image_00003.jpg", 101)]
    assert len(classes) == 102
    assert [(p.name, y) for p, y in flowers102(tmp_path, "val").samples] == [("image_00004.jpg", 4)]
    (tmp_path / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(DatasetError, match=str(tmp_path / "jpg" / "image_00003.jpg")):
        flowers102(tmp_path)
    (tmp_path / "setid.mat").unlink()
    with pytest.raises(DatasetError, match=str(tmp_path / "setid.mat")):
        flowers102(tmp_path)


@pytest.mark.slow
@need_shared("data", "train", "ImageNet_sample1000")
def test_imagenet_sample1000_layout():
    folder = SHARED / "data" / "train" / "ImageNet_sample1000"
    samples, classes = imagenet_flat(folder)
    assert len(samples) == 1000 and len(classes) == 1000
    assert classes[0] == "n01440764" and classes[-1] == "n15075141"
    assert sorted(y for _, y in samples) == list(range(1000))
    modes = []
    for p, _ in samples:
        with Image.open(p) as img:
            modes.append(img.mode)
    assert modes.count("L") == 23


# ---- ImageNet-C JPEG ------------------------------------------------------------------------------------------------
def by_hand(pixels, q, resave85=False):
    img = Image.fromarray(pixels)
    # 400 x 300: shorter side 300 -> 256, longer int(256 * 400 / 300) = 341
    img = img.resize((341, 256), Image.BILINEAR)
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    img = img.crop((left, top, left + 224, top + 224))
    clean = np.asarray(img)
    for quality in (q, 85) if resave85 else (q,):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return clean, np.asarray(img), buf.getvalue()


def test_imagenet_c_jpeg_matches_pil_by_hand(rng):
    from torchvision import transforms

    pixels = smooth_image(rng, 300, 400)
    clean, ref, ref_bytes = by_hand(pixels, 10)
    out, data = imagenet_c_jpeg(pixels, 4)  # severity 4 = quality 10
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.array_equal(out, ref) and data == ref_bytes
    assert np.array_equal(imagenet_c_jpeg(pixels, qf=10)[0], out)
    tv = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(Image.fromarray(pixels))
    assert np.array_equal(resize_center_crop(pixels), clean) and np.array_equal(np.asarray(tv), clean)

    out85, data85 = imagenet_c_jpeg(pixels, 4, resave85=True)
    _, ref85, ref85_bytes = by_hand(pixels, 10, resave85=True)
    assert data85 != data and data85 == ref85_bytes and np.array_equal(out85, ref85)
    assert imagenet_c_corruption(4, resave85=True).key == "jpeg:q10>85:420"
    with pytest.raises(ValueError):
        imagenet_c_jpeg(pixels, 6)


def test_classification_set(tmp_path, rng):
    a = write_jpeg(tmp_path / "a.JPEG", rng, 240, 300)
    b = write_jpeg(tmp_path / "b.JPEG", rng, 260, 230, c=1)
    ds = ClassificationSet([(a, 3), (b, 7)], imagenet_c_corruption(1))
    x, y, meta = ds[1]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and y == 7 and meta == {"index": 1, "name": "b"}
    ref = imagenet_c_jpeg(load_rgb(b), 1)[0]
    assert np.array_equal(x.permute(1, 2, 0).numpy(), ref)
    x0, _, _ = ClassificationSet([(a, 3)])[0]
    assert np.array_equal(x0.permute(1, 2, 0).numpy(), resize_center_crop(load_rgb(a)))


# ---- accuracy ------------------------------------------------------------------------------------------------------
def test_topk_accuracy_hand_computed_with_duplicate_id():
    logits = torch.tensor([
        [9., 1, 2, 3, 4, 5, 0],  # label 0: rank 1
        [0., 9, 8, 7, 6, 5, 4],  # label 5: rank 5
        [0., 9, 8, 7, 6, 5, 4],  # label 6: rank 6
        [1., 2, 3, 4, 5, 6, 7],  # label 3: rank 4
    ])
    labels = torch.tensor([0, 5, 6, 3])
    m = TopKAccuracy(k=(1, 5))
    m.update(logits[:2], labels[:2], ids=torch.tensor([0, 1]))
    m.update(logits[2:], labels[2:], ids=torch.tensor([2, 3]))
    m.update(logits[:1], labels[:1], ids=torch.tensor([0]))  # DDP padding repeats image 0: counted once
    out = m.compute()
    assert float(out["top1"]) == pytest.approx(25.0) and float(out["top5"]) == pytest.approx(75.0)
    ids, correct = m.per_image()
    assert ids.tolist() == [0, 1, 2, 3] and correct.tolist() == [[1, 1], [0, 1], [0, 0], [0, 1]]
    with pytest.raises(ValueError, match="classes"):
        TopKAccuracy(k=(1, 5)).update(torch.zeros(1, 3), torch.tensor([0]))


# ---- classifiers ---------------------------------------------------------------------------------------------------
def normalised(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "resnet18_random.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_state_dict_reproduces_outputs(resnet18_file, tmp_path, monkeypatch):
    net, path = resnet18_file
    x = (torch.rand(1, 3, 32, 32) * 255).round() / 255
    clf = build_classifier("resnet18", weights=path)
    assert not clf.training and clf.source == "torchvision"
    with torch.no_grad():
        ref = net(normalised(x))
        assert torch.allclose(clf(x), ref, atol=1e-5)
        assert torch.allclose(clf((x * 255).round().to(torch.uint8)), ref, atol=1e-5)  # uint8 input: /255

    # weights=None: the published file from the torch hub cache, else an error naming it and where it goes
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CARBENCH_WEIGHTS", str(tmp_path / "none"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(ClassifierError) as e:
        build_classifier("resnet18")
    assert "resnet18-f37072fd.pth" in str(e.value) and str(hub / "resnet18-f37072fd.pth") in str(e.value)
    with pytest.raises(ClassifierError, match=str(tmp_path / "absent.pth")):
        build_classifier("resnet18", weights=tmp_path / "absent.pth")
    hub.mkdir(parents=True)
    os.symlink(path, hub / "resnet18-f37072fd.pth")
    clf = build_classifier("resnet18")
    assert clf.weights == str(hub / "resnet18-f37072fd.pth")
    with torch.no_grad():
        assert torch.allclose(clf(x), ref, atol=1e-5)


def test_mismatched_weights_list_keys(resnet18_file, tmp_path):
    net, _ = resnet18_file
    sd = dict(net.state_dict())
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ClassifierError) as e:
        build_classifier("resnet18", weights=tmp_path / "bad.pth")
    assert "layer1.0.conv1.weight" in str(e.value) and "extra.weight" in str(e.value)
    with pytest.raises(ClassifierError, match=r"fc.weight: file \(1000, 512\) vs model \(10, 512\)"):
        build_classifier("resnet18", weights=resnet18_file[1], num_classes=10)


def test_timm_checkpoint_and_safetensors_load_identically(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    sd = net.state_dict()
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth.tar")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    x = torch.rand(1, 3, 32, 32)
    cfg = net.pretrained_cfg
    with torch.no_grad():
        ref = net(normalised(x, cfg["mean"], cfg["std"]))
        a = build_classifier("resnet10t", weights=tmp_path / "ckpt.pth.tar", num_classes=10)
        b = build_classifier("timm:resnet10t", weights=str(tmp_path / "model.safetensors"), num_classes=10)
        assert a.source == "timm" and torch.allclose(a(x), ref, atol=1e-5) and torch.equal(a(x), b(x))

    # weights=None: the Hugging Face cache, else an error naming the file and where it goes
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CARBENCH_WEIGHTS", str(tmp_path / "none"))
    with pytest.raises(ClassifierError) as e:
        build_classifier("resnet10t")
    msg = str(e.value)
    assert "timm/resnet10t.c3_in1k" in msg and "model.safetensors" in msg and str(tmp_path / "hf") in msg
    torch.manual_seed(2)
    full = timm.create_model("resnet10t", pretrained=False).eval()
    snap = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    save_file(full.state_dict(), str(snap / "model.safetensors"))
    with torch.no_grad():
        assert torch.allclose(build_classifier("resnet10t")(x), full(normalised(x, cfg["mean"], cfg["std"])),
                              atol=1e-5)


def test_unknown_classifier_name():
    with pytest.raises(ClassifierError, match="unknown classifier"):
        build_classifier("not_a_model_xyz", weights="random")
