"""AFD-Module, DDP and the fine-tuning baseline: DCT and block layout against scipy, exact re-parameterisation,
the paper preset's size, the plug-in hook, training, and the runner path."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from lightning_modules import create
from lightning_modules.dedrifters.afd import (
    AFDNet,
    DeDrifted,
    DegradationPrior,
    RepConv,
    block_dct,
    blockwise_fill,
    image_blocks,
    shuffled_dct,
)
from lightning_modules.registry import MethodError
from lightning_modules.task_models import ShapesClassifier

from .conftest import SHARED, need_shared


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the shipped init zeroes the output block, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def test_block_dct_matches_scipy_per_block():
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 3, 24, 40)).astype(np.float32)
    coeffs = block_dct(torch.from_numpy(rgb)).numpy()
    assert coeffs.shape == (2, 192, 3, 5)  # a 224x224 image gives 192x28x28
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = np.einsum("ij,njhw->nihw", m, rgb) - np.array([0.5, 0, 0])[None, :, None, None]
    for n, c, by, bx in [(0, 0, 0, 0), (1, 2, 2, 4), (0, 1, 1, 3)]:
        ref = dctn(ycc[n, c, 8 * by:8 * by + 8, 8 * bx:8 * bx + 8], norm="ortho")  # Eq. 3 is the orthonormal DCT
        got = coeffs[n, 64 * c:64 * c + 64, by, bx].reshape(8, 8)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_partial_blocks_are_edge_replicated():
    x = torch.rand(1, 3, 13, 20)
    blocks = image_blocks(x)
    assert blocks.shape == (1, 192, 2, 3)
    padded = torch.nn.functional.pad(x, (0, 4, 0, 3), mode="replicate")
    assert torch.equal(blocks[0, 8 * 7 + 7, 1, 2], padded[0, 0, 15, 23])  # colour 0, pixel (7, 7) of block (1, 2)


def test_shuffled_dct_permutes_within_each_block():
    x = torch.rand(2, 3, 32, 32)
    ref, shuf = block_dct(x), shuffled_dct(x)
    assert torch.equal(shuffled_dct(x), shuf)  # a fixed order
    assert not torch.allclose(ref, shuf)
    # each block keeps its own 192 coefficients (a permutation of them), blocks do not mix
    torch.testing.assert_close(ref.sort(dim=1).values, shuf.sort(dim=1).values)
    orders = [torch.argsort(shuf[0, :, i, j]) for i, j in [(0, 0), (0, 1)]]
    assert not torch.equal(orders[0], orders[1])  # the order differs from block to block


def test_blockwise_fill_fills_each_block_with_its_value():
    fdm = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)  # (N, C, H/8, W/8) for a 24x32 image
    up = blockwise_fill(fdm, (24, 32), (12, 16))  # stride-2 features: 4x4 features per block
    ref = np.kron(fdm.numpy(), np.ones((1, 1, 4, 4), dtype=np.float32))
    np.testing.assert_array_equal(up.numpy(), ref)
    assert torch.equal(blockwise_fill(fdm, (24, 32), (24, 32)), torch.from_numpy(
        np.kron(fdm.numpy(), np.ones((1, 1, 8, 8), dtype=np.float32))))
    pooled = torch.rand(1, 2, 1, 1)
    assert blockwise_fill(pooled, (24, 32), (12, 16)) is pooled  # the release's per-channel map broadcasts


def test_repconv_reparameterisation_is_exact():
    block = _randomize(RepConv(5, 7)).eval()
    x = torch.randn(2, 5, 11, 9)
    with torch.no_grad():
        y_train = block(x)
        block.reparameterize()
        y_deploy = block(x)
    assert block.branch_13 is None and isinstance(block.fused, torch.nn.Conv2d)
    assert set(dict(block.named_parameters())) == {"fused.weight", "fused.bias"}
    torch.testing.assert_close(y_deploy, y_train, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset,feature", [("paper", (64, 56, 56)), ("compact", (16, 37, 45))])
def test_afd_deploy_form_equals_training_form(preset, feature):
    net = _randomize(create(f"afd.{preset}", pretrained=False).net).eval()
    deploy = copy.deepcopy(net)
    deploy.reparameterize()
    assert not any(isinstance(m, torch.nn.Sequential) for m in deploy.fe.modules())
    scale = 2 if preset == "paper" else 1
    f = torch.rand(2, *feature)
    img = torch.rand(2, 3, feature[1] * scale, feature[2] * scale)
    with torch.no_grad():
        torch.testing.assert_close(deploy(f, img), net(f, img), atol=1e-5, rtol=0)


def test_paper_preset_size_and_flops_against_resnet50():
    """Table VII: 0.11 M parameters (deploy form, the module's own) and 0.36 GFLOPs next to ResNet-50's 4.12."""
    import torchvision

    from benchmark.evaluate.efficiency import count_flops

    module = create("afd.paper", pretrained=False)
    module.net.reparameterize()
    params = sum(p.numel() for p in module.net.parameters())
    assert abs(params / 0.11e6 - 1) <= 0.05, params
    resnet = torchvision.models.resnet50(weights=None).eval()
    x = torch.rand(1, 3, 224, 224)
    base = count_flops(resnet, x)
    plugged = DeDrifted(copy.deepcopy(resnet), module.net, module.net.layers)
    added = count_flops(plugged, x) - base
    assert 0 < added <= 0.10 * base, (added, base)
    assert plugged.layer == "relu"  # D2: after the first ReLU
    training_form = create("afd.paper", pretrained=False).net
    assert sum(p.numel() for p in training_form.parameters()) > 2 * params  # the branches fold away


def test_identity_init_leaves_the_classifier_unchanged_and_features_stop_early():
    clf = ShapesClassifier(4, 16).eval()
    module = create("afd.compact", pretrained=False)
    plugged = DeDrifted(clf, module.net, module.net.layers)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        plain = clf(x)
        torch.testing.assert_close(plugged(x), plain)  # zero-initialised residual: the identity
        feats = plugged.features(x, dedrift=False)
        torch.testing.assert_close(feats, clf.features[0]((x - 0.5) / 0.25))  # D2: the first conv-BN-ReLU
    plugged.detach_hook()
    _randomize(module.net)
    with torch.no_grad():
        assert torch.equal(clf(x), plain)  # hook gone: the classifier is as it was


def test_plug_in_errors_name_the_culprit():
    clf = ShapesClassifier(4, 16)
    net = AFDNet("shapes-cnn", "D2")
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        DeDrifted(clf, net, "layer9")
    shared = torch.nn.ReLU()
    twice = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), shared, torch.nn.Conv2d(16, 16, 1), shared)
    with pytest.raises(RuntimeError, match="more than once"):
        DeDrifted(twice, AFDNet(layer="1", channels=16), "1")(torch.rand(1, 3, 16, 16))
    module = create("afd.compact", pretrained=False)
    with pytest.raises(ValueError, match="trained for shapes-cnn, not resnet50"):
        module.attach(clf, "resnet50")
    with pytest.raises(ValueError, match="depth 'D7'"):
        AFDNet("resnet50", "D7")


def test_degradation_prior_size_and_identity_start():
    ddp = DegradationPrior("resnet50", "D2")
    assert sum(p.numel() for p in ddp.parameters()) == 117_472  # the AFD authors' re-implementation's count
    f = torch.rand(1, 64, 28, 28)
    torch.testing.assert_close(ddp(f, torch.rand(1, 3, 56, 56)), f)


def test_training_reduces_the_feature_error():
    torch.manual_seed(0)
    from datamodules.tasks import ShapesJPEGPairs
    from lightning_modules.task_models import create_task_model

    clf = create_task_model("classification").net  # the shipped shapes-cnn
    module = create("afd.compact", pretrained=False)
    plugged = module.attach(clf, "shapes-cnn", deploy=False)
    items = [ShapesJPEGPairs((10, 7), 8, n_scenes=8, crop=32)[i] for i in range(8)]
    corrupted, clean = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
    with torch.no_grad():
        target = plugged.features(clean, dedrift=False)
    opt = torch.optim.Adam(module.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(plugged.features(corrupted), target)  # training_step's loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses[::8]
    assert all(p.grad is None for p in clf.parameters())  # the classifier stays frozen
    plugged.detach_hook()


def test_shapes_pairs_are_seeded_and_block_aligned():
    from datamodules.tasks import ShapesJPEGPairs

    ds = ShapesJPEGPairs((25, 7), 4, n_scenes=4, crop=48)
    a, b = ds[1], ds[1]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (3, 48, 48) and not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="multiple of 16"):
        ShapesJPEGPairs((10,), 4, crop=40)


def test_checkpoint_records_how_the_network_was_built(tmp_path):
    net = AFDNet("shapes-cnn", "D4")  # 32 channels, not the preset's D2 (16)
    path = tmp_path / "afd_d4.pt"
    torch.save({"state_dict": net.state_dict(), "carbench": {"net_kwargs": {"backbone": "shapes-cnn", "depth": "D4"}}},
               path)
    module = create("afd.compact", weights=str(path))
    assert module.net.depth == "D4" and module.net.channels == 32 and module.net.layers == ("features.2",)
    bad = tmp_path / "plain.pt"
    torch.save(net.state_dict(), bad)  # no record: built as the preset (D2, 16 channels) and refused
    with pytest.raises(MethodError, match="shape mismatches"):
        create("afd.compact", weights=str(bad))


def test_paper_recipe_trains_on_a_resnet50_weight_file(tmp_path):
    """The paper path end to end on files the test makes: a random ResNet-50 saved as torchvision's weight file,
    a folder of photos; two steps of afd_paper.yaml write a checkpoint that `create` loads back."""
    import torchvision
    from PIL import Image

    from benchmark.cli.train import train

    weights = tmp_path / "resnet50-0676ba61.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (96, 112, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "afd_paper.pt"
    train(config="afd_paper.yaml", steps=2, batch_size=2, crop=64, train_dir=str(photos), out=str(out),
          task_weights=str(weights), accelerator="cpu", devices=1, num_workers=0)
    saved = torch.load(out, weights_only=True)
    meta = saved["carbench"]
    assert meta["net_kwargs"] == {"backbone": "resnet50", "depth": "D2"}
    assert meta["config"]["lr"] == 1e-4 and meta["config"]["lr_milestones"] == [0.5]
    assert meta["config"]["qf_set"] == [25, 18, 15, 10, 7]
    assert meta["task_weights"] == weights.name
    module = create("afd.paper", weights=str(out))
    assert module.net.channels == 64 and module.net.layers == ("relu", "act1")


def test_fine_tuning_needs_labels_for_a_real_classifier(tmp_path):
    from benchmark.cli.train import _plugin_data

    with pytest.raises(ValueError, match="needs labelled images"):
        _plugin_data("classifier", "resnet50", str(tmp_path), {"qf_set": (10,), "steps": 1, "batch_size": 1,
                                                               "crop": 224}, 0)


@need_shared("published", "classification.csv")
def test_paper_classification_rows_are_the_published_numbers(tmp_path):
    import pandas as pd

    from benchmark.cli import main

    assert main(["import-paper", "--paper", "afd", "--leaderboard-dir", str(tmp_path)]) == 0
    board = pd.read_csv(tmp_path / "classification.csv", dtype=str, keep_default_na=False)
    published = pd.read_csv(SHARED / "published" / "classification.csv", dtype=str, keep_default_na=False)
    published = published[(published.paper == "afd") & (published.qf != "avg") & (published.passes != "avg")]
    assert set(board.source) == {"paper"}
    # Tables V and X print the same ImageNet-C direct and afd numbers: one row each, naming both tables
    assert len(board) == len(published) - 10 and board.weights.str.contains("also afd Table X").sum() == 10

    def top1(**kw):
        sel = board
        for k, v in kw.items():
            sel = sel[sel[k] == v]
        assert len(sel) == 1, kw
        return sel.value.iloc[0]

    # Table V, VI, X as printed (hand-read from the paper), under carbench's names and conventions
    assert top1(model="resnet50", method="afd", dataset="imagenet-c", codec="jpeg", qf="10", passes="1") == "57.24"
    assert top1(model="resnet50", method="degradation_prior", dataset="imagenet-c", qf="7", passes="1") == "47.64"
    assert top1(model="resnet50", method="afd", dataset="imagenet-val", codec="jpeg", passes="5") == "47.51"
    assert top1(model="resnet50", method="jpeg_finetune", codec="none") == "70.32"
    assert top1(model="resnet50", method="afd", codec="avif", qf="7") == "53.32"


def test_runner_scores_a_dedrifter_inside_the_classifier(tmp_path):
    """An identity de-drifter (its shipped zero-initialised output) must reproduce `direct` and `clean` exactly;
    a feature method on a detection task fails its own job, named, and the rest of the run goes on."""
    from benchmark.evaluate.tasks import TaskRequest, run_tasks
    from datamodules.corruptions import Corruption

    identity = tmp_path / "afd_identity.pt"
    torch.save({"state_dict": AFDNet("shapes-cnn", "D2").state_dict()}, identity)
    req = TaskRequest(["classification", "detection"], ["jpeg", "afd"], [Corruption("jpeg", (10,))], n_images=24,
                      weights=str(identity), batch_size=8, progress=False, cache_dir=str(tmp_path / "cache"))
    rows, failures = run_tasks(req)
    assert [f.method for f in failures] == ["detection/afd"] and "inside a classifier" in failures[0].error
    top1 = {(r["method"], r["codec"]): r["value"] for r in rows["classification"] if r["metric"] == "top1"}
    assert top1[("afd", "jpeg")] == top1[("direct", "jpeg")]
    assert top1[("afd", "none")] == top1[("clean", "none")]  # every classification method is scored on clean images
    afd_row = next(r for r in rows["classification"] if r["method"] == "afd")
    assert afd_row["preset"] == "compact" and afd_row["weights"] == str(identity) and afd_row["source"] == "measured"
    assert len(rows["detection"]) > 0  # the direct detection rows are still there


def test_efficiency_rows_of_a_plugin():
    from benchmark.evaluate.efficiency import measure_forms

    rows = measure_forms("afd.compact", repeat=1)
    by = {(r["method"], r["form"]): r for r in rows}
    assert set(by) == {("shapes-cnn", "deploy"), ("afd", "train"), ("afd", "deploy"), ("shapes-cnn+afd", "train"),
                       ("shapes-cnn+afd", "deploy")}
    base, train, deploy = by[("shapes-cnn", "deploy")], by[("afd", "train")], by[("afd", "deploy")]
    assert deploy["params_m"] < 0.6 * train["params_m"]  # the branches fold into one 3x3 per block
    assert 0 < deploy["gflops"] < train["gflops"]
    # the classifier with the module costs the classifier plus the module, in parameters and FLOPs
    plugged = by[("shapes-cnn+afd", "deploy")]
    assert plugged["params_m"] == pytest.approx(base["params_m"] + deploy["params_m"])
    assert plugged["gflops"] == pytest.approx(base["gflops"] + deploy["gflops"])
    assert all(r["input"] == "128x128 rgb" and r["latency_ms"] > 0 for r in rows)


def test_compare_keeps_feature_methods_off_the_fidelity_board():
    from benchmark.cli.common import baseline_methods

    restorers, plugins = baseline_methods([]), baseline_methods([], restorers=False)
    assert {"dncnn", "dagn"} <= set(restorers) and not {"afd", "degradation_prior", "jpeg_finetune"} & set(restorers)
    assert {"afd", "degradation_prior", "jpeg_finetune"} <= set(plugins)  # shipped: they run on the embedded task
