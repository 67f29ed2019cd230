"""Native PSPNet (mmseg key layout), mmseg-format checkpoints, slide/whole inference, VOC loader and IoU metrics."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from benchmark.metrics.segmentation import SegmentationScores, scores_from_confusion, segmentation_confusion
from datamodules.segmentation import VOCSegmentation
from lightning_modules.task_models.pspnet import mmseg_test_size
from lightning_modules.task_models.pspnet import (
    MMSEG_MEAN,
    MMSEG_STD,
    PSPNet,
    load_mmseg_checkpoint,
    normalize,
    predict,
    slide_inference,
    whole_inference,
)


pytestmark = pytest.mark.usefixtures("single_thread")


TINY = {"depth": 50, "stem_channels": 8, "base_channels": 4, "channels": 16, "aux_channels": 8}


def tiny(aux=False, num_classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    model = PSPNet(num_classes=num_classes, aux=aux, **{**TINY, **kw})
    with torch.no_grad():  # non-trivial BN statistics, so a load that skips them would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def rand_input(h=65, w=65, n=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.rand(n, 3, h, w, generator=g))


# ----------------------------------------------------------------------------------------------------------------
# the full ResNet-50-D8 layout, against keys/shapes read off mmseg's source (ResNetV1c deep stem, ResLayer,
# PSPHead/PSPModule, FCNHead, mmcv ConvModule) and configs/_base_/models/pspnet_r50-d8.py

MMSEG_KEYS = {
    # deep stem: Sequential(conv, bn, relu) x 3, convs bias-free; stem_channels 64 -> 32, 32, 64
    "backbone.stem.0.weight": (32, 3, 3, 3),
    "backbone.stem.1.weight": (32,),
    "backbone.stem.1.running_mean": (32,),
    "backbone.stem.1.num_batches_tracked": (),
    "backbone.stem.3.weight": (32, 32, 3, 3),
    "backbone.stem.4.bias": (32,),
    "backbone.stem.6.weight": (64, 32, 3, 3),
    "backbone.stem.7.running_var": (64,),
    # Bottleneck stages (3, 4, 6, 3), planes 64..512, expansion 4
    "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.layer1.0.conv2.weight": (64, 64, 3, 3),
    "backbone.layer1.0.conv3.weight": (256, 64, 1, 1),
    "backbone.layer1.0.bn3.weight": (256,),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.0.downsample.1.running_mean": (256,),
    "backbone.layer1.2.bn3.bias": (256,),
    "backbone.layer2.0.conv1.weight": (128, 256, 1, 1),
    "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
    "backbone.layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "backbone.layer2.3.conv3.weight": (512, 128, 1, 1),
    "backbone.layer3.0.conv1.weight": (256, 512, 1, 1),
    "backbone.layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
    "backbone.layer3.5.conv3.weight": (1024, 256, 1, 1),
    "backbone.layer3.5.bn3.running_mean": (1024,),
    "backbone.layer4.0.conv1.weight": (512, 1024, 1, 1),
    "backbone.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "backbone.layer4.0.downsample.1.weight": (2048,),
    "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "backbone.layer4.2.bn3.bias": (2048,),
    # PSPHead: psp_modules.i = Sequential(AdaptiveAvgPool2d, ConvModule 1x1 2048->512)
    "decode_head.psp_modules.0.1.conv.weight": (512, 2048, 1, 1),
    "decode_head.psp_modules.0.1.bn.weight": (512,),
    "decode_head.psp_modules.3.1.conv.weight": (512, 2048, 1, 1),
    "decode_head.psp_modules.3.1.bn.running_var": (512,),
    "decode_head.psp_modules.3.1.bn.num_batches_tracked": (),
    "decode_head.bottleneck.conv.weight": (512, 4096, 3, 3),
    "decode_head.bottleneck.bn.weight": (512,),
    "decode_head.conv_seg.weight": (21, 512, 1, 1),
    "decode_head.conv_seg.bias": (21,),
    # FCNHead(num_convs=1, concat_input=False) on stage 3
    "auxiliary_head.convs.0.conv.weight": (256, 1024, 3, 3),
    "auxiliary_head.convs.0.bn.bias": (256,),
    "auxiliary_head.conv_seg.weight": (21, 256, 1, 1),
    "auxiliary_head.conv_seg.bias": (21,),
}
NOT_MMSEG_KEYS = [
    "backbone.conv1.weight",  # ResNetV1c has no 7x7 stem
    "backbone.stem.2.weight",  # ReLU
    "backbone.layer1.1.downsample.0.weight",  # only the first block downsamples
    "backbone.layer1.0.conv1.bias",
    "decode_head.bottleneck.conv.bias",  # ConvModule with norm: bias-free
    "decode_head.psp_modules.0.1.conv.bias",
    "auxiliary_head.convs.0.conv.bias",
    "auxiliary_head.conv_cat.conv.weight",  # concat_input=False
    "decode_head.psp_modules.0.0.weight",  # the pool has no parameters
]
# parameter count by hand: torchvision ResNet-50 23,508,032 without fc (25,557,032 - 2,049,000), its 7x7 stem
# (9,408 + BN 128) replaced by the deep stem (864 + 9,216 + 18,432 + BN 64 + 64 + 128): backbone 23,527,264.
# PSPHead: 4 x (2048*512 + 1024) + (4096*512*9 + 1024) + (512*21 + 21) = 23,084,565.
# FCNHead: 1024*256*9 + 512 + 256*21 + 21 = 2,365,205.
R50_D8_PARAMS = 23_527_264 + 23_084_565 + 2_365_205
# state-dict entries: stem 3 convs + 3 BNs (5 entries each) = 18; 16 bottlenecks x 18; 4 downsamples x 6;
# PSPHead 4 x 6 + 6 + 2; FCNHead 6 + 2
R50_D8_ENTRIES = 18 + 16 * 18 + 4 * 6 + (4 * 6 + 6 + 2) + (6 + 2)


def test_full_r50_d8_matches_mmseg_layout():
    model = PSPNet(num_classes=21, aux=True)
    sd = model.state_dict()
    for key, shape in MMSEG_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    for key in NOT_MMSEG_KEYS:
        assert key not in sd, key
    assert len(sd) == R50_D8_ENTRIES
    assert sum(p.numel() for p in model.parameters()) == R50_D8_PARAMS == 48_977_034
    # D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4) with contract_dilation, stride on the 3x3 conv
    b = model.backbone
    assert b.stem[0].stride == (2, 2) and b.stem[3].stride == (1, 1)
    assert b.layer2[0].conv2.stride == (2, 2) and b.layer2[0].conv1.stride == (1, 1)
    assert b.layer2[0].downsample[0].stride == (2, 2)
    assert b.layer3[0].conv2.stride == (1, 1) and b.layer4[0].conv2.stride == (1, 1)
    assert b.layer3[0].conv2.dilation == (1, 1) and b.layer3[1].conv2.dilation == (2, 2)
    assert b.layer4[0].conv2.dilation == (2, 2) and b.layer4[2].conv2.dilation == (4, 4)
    assert b.layer4[2].conv2.padding == (4, 4)
    no_aux = PSPNet(num_classes=21, aux=False).state_dict()
    assert set(no_aux) == {k for k in sd if not k.startswith("auxiliary_head.")}


def test_tiny_forward_shapes_and_aux():
    model = tiny(aux=True)
    x = rand_input(65, 65)
    assert model(x).shape == (1, 5, 65, 65)
    main, aux = model.forward_with_aux(x)
    assert torch.equal(main, model(x)) and aux.shape == (1, 5, 65, 65)
    # feature map is 1/8 (rounded up through the stride-2 convs): 65 -> 33 -> 17 -> 9
    assert model.backbone(x)[3].shape[2:] == (9, 9)
    basic = PSPNet(num_classes=3, depth=18, stem_channels=8, base_channels=4, channels=8).eval()
    assert basic(rand_input(33, 41)).shape == (1, 3, 33, 41)
    assert "backbone.layer1.0.conv3.weight" not in basic.state_dict()


def test_normalize_matches_mmseg():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 1).clone()
    got = normalize(x).flatten()
    want = [(v * 255 - m) / s for v, m, s in zip([0.0, 0.5, 1.0], MMSEG_MEAN, MMSEG_STD)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    u8 = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    torch.testing.assert_close(normalize(u8), normalize(torch.ones(1, 3, 1, 1)))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def test_mmseg_checkpoint_roundtrip(tmp_path):
    src = tiny(aux=True, seed=0)
    path = tmp_path / "pspnet_tiny.pth"
    torch.save({"meta": {"CLASSES": ["a", "b", "c", "d", "e"], "PALETTE": [[0, 0, 0]] * 5},
                "state_dict": src.state_dict()}, path)
    x = rand_input(65, 65)
    for aux in (True, False):
        dst = tiny(aux=aux, seed=123)
        assert not torch.equal(dst(x), src(x))
        sd = load_mmseg_checkpoint(path, dst)
        assert set(sd) == set(src.state_dict())  # keys come back unchanged, aux included
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # without a model: just the state dict; the model's own loader drops aux keys
    fresh = tiny(aux=False, seed=7)
    fresh.load_mmseg_state_dict(load_mmseg_checkpoint(path))
    torch.testing.assert_close(fresh(x), src(x), rtol=0, atol=0)


class HubLike:
    """Stands for objects in mmseg's `meta` (mmengine's message hub) that torch's safe unpickler refuses."""


def test_checkpoint_meta_needs_full_unpickler(tmp_path):
    src = tiny()
    path = tmp_path / "mmseg1x.pth"
    torch.save({"meta": {"message_hub": HubLike()}, "state_dict": src.state_dict()}, path)
    with pytest.raises(Exception):  # noqa: B017 -- the safe path really refuses it
        torch.load(path, weights_only=True)
    dst = tiny(seed=5)
    load_mmseg_checkpoint(path, dst)
    x = rand_input(33, 33)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_mmseg_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_mmseg_checkpoint(bad)
    sd = tiny(aux=False).state_dict()
    sd.pop("decode_head.conv_seg.bias")
    sd["decode_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "mismatch.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    with pytest.raises(ValueError) as err:
        load_mmseg_checkpoint(path, tiny())
    msg = str(err.value)
    assert "mismatch.pth" in msg and "missing keys: decode_head.conv_seg.bias" in msg
    assert "unexpected keys: decode_head.extra.weight" in msg
    wrong_classes = tmp_path / "classes.pth"
    torch.save({"meta": {}, "state_dict": tiny(num_classes=7).state_dict()}, wrong_classes)
    with pytest.raises(ValueError, match=r"decode_head.conv_seg.weight: checkpoint \(7, 16, 1, 1\)"):
        load_mmseg_checkpoint(wrong_classes, tiny(num_classes=5))


# ----------------------------------------------------------------------------------------------------------------
# inference


def test_slide_equals_whole_when_one_crop_covers():
    model = tiny()
    x = rand_input(65, 65)
    whole = whole_inference(model, x)
    for crop in ((65, 65), (80, 96)):  # a crop larger than the image is clipped to it, as in mmseg
        torch.testing.assert_close(slide_inference(model, x, crop=crop, stride=(43, 43)), whole, rtol=0, atol=0)


def test_slide_averages_overlaps():
    # a pointwise model gives the same logits whatever the window: the count-matrix average must reproduce them
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1).eval()
    x = torch.randn(2, 3, 50, 70)
    out = slide_inference(conv, x, crop=(32, 32), stride=(21, 21), num_classes=4)
    torch.testing.assert_close(out, conv(x).detach())
    model = tiny()
    big = rand_input(97, 130)
    out = slide_inference(model, big, crop=(65, 65), stride=(43, 43))
    assert out.shape == (1, 5, 97, 130) and torch.isfinite(out).all()
    labels = predict(model, big, mode="slide", crop=(65, 65), stride=(43, 43), out_size=(48, 65))
    assert labels.shape == (1, 48, 65) and labels.dtype == torch.long


def test_mmseg_test_size():
    assert mmseg_test_size(375, 500) == (512, 683)  # VOC's usual 500x375: short side -> 512
    assert mmseg_test_size(500, 500) == (512, 512)


# ----------------------------------------------------------------------------------------------------------------
# metrics


def test_iou_metrics_by_hand():
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])  # the last pixel is ignored (its prediction too)
    conf = segmentation_confusion(pred, gt, num_classes=4)
    assert conf.sum() == 5
    # class 0: I 1, gt 2, pred 2 -> IoU 1/3, Acc 1/2; class 1: I 2, gt 2, pred 3 -> 2/3, 1;
    # class 2: I 0, gt 1, pred 0 -> 0, 0; class 3: in neither -> NaN, NaN (left out of the means)
    s = scores_from_confusion(conf)
    np.testing.assert_allclose(s["IoU"][:3].numpy(), [1 / 3, 2 / 3, 0.0])
    assert math.isnan(s["IoU"][3]) and math.isnan(s["Acc"][3])
    assert float(s["mIoU"]) == pytest.approx(1 / 3)
    assert float(s["mAcc"]) == pytest.approx(0.5)
    assert float(s["aAcc"]) == pytest.approx(3 / 5)
    # a class predicted but not in the ground truth: IoU 0 (counted), Acc NaN (not counted)
    s = scores_from_confusion(segmentation_confusion(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]), 4))
    assert float(s["mIoU"]) == pytest.approx(0.25)
    assert float(s["mAcc"]) == pytest.approx(0.5) and float(s["aAcc"]) == pytest.approx(0.5)
    # logits are argmaxed; bad labels are errors
    logits = torch.nn.functional.one_hot(pred.clamp(max=3), 4).permute(2, 0, 1)[None].float()
    assert torch.equal(segmentation_confusion(logits, gt[None], 4), conf)
    with pytest.raises(ValueError, match="outside"):
        segmentation_confusion(pred, torch.tensor([[0, 0, 1], [1, 9, 255]]), 4)


def test_scores_metric_ids_counted_once():
    a_gt, a_pred = torch.tensor([[[0, 0, 1], [1, 2, 255]]]), torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    b_gt, b_pred = torch.tensor([[[2, 2, 2], [0, 0, 0]]]), torch.tensor([[[2, 2, 0], [0, 0, 0]]])
    want = scores_from_confusion(segmentation_confusion(torch.cat([a_pred, b_pred]), torch.cat([a_gt, b_gt]), 4))
    m = SegmentationScores(num_classes=4)
    m.update(a_pred, a_gt, ids=torch.tensor([0]))
    m.update(torch.cat([b_pred, a_pred]), torch.cat([b_gt, a_gt]), ids=torch.tensor([1, 0]))  # 0 repeated
    got = m.compute()
    for k in ("mIoU", "mAcc", "aAcc"):
        assert float(got[k]) == pytest.approx(float(want[k]), abs=1e-12), k
    anon = SegmentationScores(num_classes=4)  # without ids nothing is deduplicated
    anon.update(a_pred, a_gt)
    anon.update(a_pred, a_gt)
    assert torch.equal(anon.confusion(), 2 * segmentation_confusion(a_pred, a_gt, 4))


def test_scores_exact_across_ranks():
    # 3 images on 2 ranks: the distributed sampler pads rank 1 with a repeat of image 0. The cross-rank gather is
    # emulated with torchmetrics' own state reduction (merge_state: "cat" lists, "sum" tensors), then in the form
    # a real sync leaves behind (list states concatenated into tensors).
    g = torch.Generator().manual_seed(3)
    gts = [torch.randint(0, 4, (1, 9, 11), generator=g) for _ in range(3)]
    preds = [torch.where(torch.rand(t.shape, generator=g) < 0.7, t, torch.randint(0, 4, t.shape, generator=g))
             for t in gts]
    want = scores_from_confusion(segmentation_confusion(torch.cat(preds), torch.cat(gts), 4))
    ranks = []
    for rank in range(2):
        sampler = list(DistributedSampler(range(3), num_replicas=2, rank=rank, shuffle=False))
        m = SegmentationScores(num_classes=4)
        for i in sampler:
            m.update(preds[i], gts[i], ids=torch.tensor([i]))
        ranks.append(m)
    assert list(DistributedSampler(range(3), num_replicas=2, rank=1, shuffle=False)) == [1, 0]
    ranks[0].merge_state(ranks[1])
    got = ranks[0].compute()
    for k in ("mIoU", "mAcc", "aAcc"):
        assert float(got[k]) == pytest.approx(float(want[k]), abs=1e-12), k
    synced = SegmentationScores(num_classes=4)
    synced.confusions = torch.cat(ranks[0].confusions)
    synced.ids = torch.cat(ranks[0].ids)
    assert torch.equal(synced.confusion(), segmentation_confusion(torch.cat(preds), torch.cat(gts), 4))


# ----------------------------------------------------------------------------------------------------------------
# VOC layout


def write_voc(root, names, size=(12, 16)):
    from PIL import Image

    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]  # 255 = boundary
    masks = []
    for k, name in enumerate(names):
        h, w = size
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[2:6, 3:9] = 1 + k
        mask[6, :] = 255
        m = Image.frombytes("P", (w, h), mask.tobytes())
        m.putpalette(palette)
        m.save(root / "SegmentationClass" / f"{name}.png")
        masks.append(mask)
    return masks


def test_voc_loader(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    masks = write_voc(root, ["2007_000032", "2007_000039"])
    for where in (root, root.parent):  # the VOC2012 folder or the VOCdevkit above it
        ds = VOCSegmentation(where, split="val")
        assert len(ds) == 2
        img, mask, meta = ds[1]
        assert img.dtype == torch.uint8 and img.shape == (3, 12, 16)
        assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(masks[1]).long())
        assert meta == {"index": 1, "name": "2007_000039"}
        assert set(mask.unique().tolist()) == {0, 2, 255}
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/train\.txt"):
        VOCSegmentation(root, split="train")
    (root / "SegmentationClass" / "2007_000032.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2007_000032\.png"):
        VOCSegmentation(root)[0]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCSegmentation(tmp_path / "nowhere")


def test_mmseg_inference_wrapper_resizes_like_mmseg_and_back():
    from lightning_modules.task_models import MMSegInference

    net = tiny().eval()
    x = torch.rand(1, 3, 30, 40)
    same = MMSegInference(net, scale=(40, 30))  # the image already fits: no resize at all
    with torch.no_grad():
        torch.testing.assert_close(same(x), net(normalize(x)))
    seen = []
    net.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        out = MMSegInference(net, scale=(2048, 512))(x)
    assert seen[-1] == mmseg_test_size(30, 40) == (512, 683)  # short side -> 512, long side 40 * 512 / 30
    assert out.shape == (1, 5, 30, 40)  # logits back at the image size
