"""Issue 27, the fair trial of the feature de-drifters: training protocols, label-free fine-tuning, clean crops with
the identity target, logit distillation, the learning-curve exports and the `protocol` the rows carry -- all on
tiny budgets (a few steps, photos the tests make, EfficientNet-Lite0 with random weights)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from benchmark.boards import leaderboard
from benchmark.cli.train import ConfigError, fraction_path, parse_fractions, train, trial_choices
from benchmark.evaluate import training_protocol
from datamodules.corruptions import Corruption, apply
from datamodules.fidelity import RandomCrops
from datamodules.sources import ImageRecord
from lightning_modules import create
from lightning_modules.dedrifters.afd import FoldDeDrifted, FoldDeDrifters, distillation_kl

from .conftest import smooth_image

TINY = dict(accelerator="cpu", devices=1, num_workers=0, task_weights="random")


def _photos(folder, rng, n=6, h=72, w=88):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(rng, h + 8 * (i % 2), w)).save(folder / f"p{i}.png")
    return folder


def _flat(folder, rng, n=6):
    """An `imagenet-flat` folder: one photo for each of the first n ImageNet classes (class index = i)."""
    from datamodules.classification import imagenet_wnids

    wn = imagenet_wnids()
    folder.mkdir()
    for i in range(n):
        Image.fromarray(smooth_image(rng, 64 + 8 * (i % 3), 80)).save(folder / f"{wn[i]}_img{i}.JPEG", quality=95)
    return folder


def _recipe(tmp_path, **kw):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"val_items": 2, **kw}))
    return str(path)


# ---- clean crops with the identity target -----------------------------------------------------------------------------
def test_clean_share_crops_are_uncompressed_and_their_target_is_the_clean_features(rng):
    records = [ImageRecord(f"p{i}", smooth_image(rng, 64, 80)) for i in range(4)]
    mixed = RandomCrops(records, crop=32, length=40, seed=3, qf_set=(10, 7), clean_share=0.5)
    plain = RandomCrops(records, crop=32, length=40, seed=3, qf_set=(10, 7))
    n_clean = 0
    for i in range(40):
        x, y, qf = mixed[i]
        px, py, pqf = plain[i]
        assert torch.equal(y, py)  # the same crop (the clean draw has a stream of its own)
        if int(qf) == 0:  # left uncompressed: input = target = the clean crop
            n_clean += 1
            assert torch.equal(x, y)
        else:  # else exactly the share-0 item: its JPEG at its QF
            assert torch.equal(x, px) and int(qf) == int(pqf) and not torch.equal(x, y)
            jpeg, _ = apply((y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), Corruption("jpeg", (int(qf),)))
            assert torch.equal(x, torch.from_numpy(jpeg).permute(2, 0, 1).float() / 255)
    assert 10 <= n_clean <= 30, n_clean
    assert all(int(plain[i][2]) in (10, 7) for i in range(40))  # share 0: never a clean input

    # the de-drifter's training target for a clean crop is its own clean features (the identity target): an
    # identity-initialised AFD has zero loss on clean crops and a positive one on JPEG crops
    module = create("afd.lite0", pretrained=False)
    from lightning_modules.task_models.efficientnet_lite import build_efficientnet_lite

    clf = build_efficientnet_lite("efficientnet_lite0", "random")[0]
    plugged = module.attach(clf, "efficientnet_lite0", deploy=False)
    clean_items = [mixed[i] for i in range(40) if int(mixed[i][2]) == 0][:2]
    jpeg_items = [mixed[i] for i in range(40) if int(mixed[i][2]) != 0][:2]
    batch = [torch.stack([it[k] for it in clean_items]) for k in range(3)]
    with torch.no_grad():
        torch.testing.assert_close(plugged.features(batch[1], dedrift=False), plugged.features(batch[0]))
        assert module.loss(batch).item() == 0.0
        assert module.loss([torch.stack([it[k] for it in jpeg_items]) for k in range(3)]).item() > 0
    plugged.detach_hook()


def test_in_domain_items_keep_their_label_and_clean_share(tmp_path, rng):
    from datamodules.classification import JPEGTrainingSet, imagenet_flat

    samples = imagenet_flat(_flat(tmp_path / "ImageNet_tiny", rng)).samples
    ds = JPEGTrainingSet(samples, (10,), 24, seed=1, resize=64, crop=48, clean_share=0.5)
    kinds = set()
    for i in range(24):
        x, y, label = ds[i]
        kinds.add(torch.equal(x, y))
        assert int(label) in {s[1] for s in samples}
    assert kinds == {True, False}


# ---- label-free distillation -------------------------------------------------------------------------------------------
def test_distillation_loss_is_the_hand_computed_kl():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = np.mean([sum(pt * np.log(pt / ps) for pt, ps in zip(softmax(t), softmax(s)))
                  for s, t in zip(student.numpy().astype(np.float64), teacher.numpy().astype(np.float64))])
    assert distillation_kl(student, teacher).item() == pytest.approx(kl, rel=1e-5)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_label_free_losses_are_the_kl_to_the_frozen_clean_predictions():
    """jpeg_finetune --labels none: KL(frozen net on the clean crop || tuned copy on the JPEG crop); afd --loss
    logit-kl: KL(frozen net on the clean crop || de-drifted net on the JPEG crop). Neither reads the label."""
    from lightning_modules.task_models.efficientnet_lite import build_efficientnet_lite

    torch.manual_seed(0)
    clf = build_efficientnet_lite("efficientnet_lite0", "random")[0].eval()
    jpeg, clean = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    wrong_labels, other_labels = torch.tensor([0, 2]), torch.tensor([4, 6])  # same folds, different classes

    ft = create("jpeg_finetune.lite0", pretrained=False, folds=1)
    ft.net.init_from(clf)
    routed = ft.attach(clf, "efficientnet_lite0", deploy=False)
    ft.labels = False
    routed.train()
    with torch.no_grad():
        ft.net.folds[0]["conv_stem"].weight.mul_(0.9)  # the copy drifts from the frozen classifier
        want = distillation_kl(routed(jpeg, wrong_labels), clf(clean))
        got = ft.training_step([jpeg, clean, wrong_labels], 0)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
        assert ft.training_step([jpeg, clean, other_labels], 0).item() == pytest.approx(got.item(), rel=1e-6)

    afd = create("afd.lite0", pretrained=False)
    afd.loss_name = "logit-kl"
    plugged = afd.attach(clf, "efficientnet_lite0", deploy=False)
    with torch.no_grad():
        assert afd.loss([clean, clean, wrong_labels]).item() == pytest.approx(0.0, abs=1e-6)  # identity start
        want = distillation_kl(clf(jpeg), clf(clean))  # identity de-drifter: the plain classifier on the JPEG
        assert afd.loss([jpeg, clean, wrong_labels]).item() == pytest.approx(want.item(), rel=1e-5)
    plugged.detach_hook()


# ---- the in-domain split ----------------------------------------------------------------------------------------------
def test_in_domain_split_never_trains_a_copy_on_a_photo_it_scores():
    from lightning_modules.task_models.efficientnet_lite import build_efficientnet_lite

    torch.manual_seed(0)
    clf = build_efficientnet_lite("efficientnet_lite0", "random")[0].eval()
    module = create("afd.lite0", pretrained=False, folds=2)
    assert isinstance(module.net, FoldDeDrifters) and module.net.n_folds == 2
    plugged = module.attach(clf, "efficientnet_lite0", deploy=False)
    assert isinstance(plugged, FoldDeDrifted) and plugged.routes_by_label
    with torch.no_grad():  # copy 0 changes the features; copy 1 is still the identity
        for p in module.net.folds[0].fe.out.parameters():
            p.normal_(0, 0.1)
    x, labels = torch.rand(4, 3, 64, 64), torch.tensor([10, 11, 12, 13])
    plain = plugged.features(x, dedrift=False)
    plugged.eval()  # scoring: an image goes to the copy of its own fold (class index mod 2)
    with torch.no_grad():
        out = plugged.features(x, labels=labels)
    assert not torch.allclose(out[[0, 2]], plain[[0, 2]]) and torch.equal(out[[1, 3]], plain[[1, 3]])
    plugged.train()  # learning: an image feeds only the other fold's copy
    module.net.zero_grad()
    even = torch.tensor([0, 2])
    target = plugged.features(x[even], dedrift=False)
    torch.nn.functional.mse_loss(plugged.features(x[even] * 0.9, labels=labels[even]), target).backward()
    grads = [sum(float(p.grad.abs().sum()) for p in copy.parameters() if p.grad is not None)
             for copy in module.net.folds]
    assert grads[0] == 0 and grads[1] > 0  # even photos (scored by copy 0) trained copy 1 alone
    with pytest.raises(ValueError, match="pass the labels"):
        plugged.features(x)
    plugged.detach_hook()


def test_in_domain_run_records_its_protocol_and_its_rows_carry_it(tmp_path, rng):
    """`--protocol in-domain` on a 6-photo ImageNet-layout folder: a cross-fitted AFD whose record says so, loaded
    back by --weights, scored by the task runner; every afd row's `protocol` is the checkpoint's."""
    from benchmark.evaluate.tasks import TaskRequest, run_tasks

    folder = _flat(tmp_path / "ImageNet_tiny", rng)
    out = tmp_path / "afd_in.pt"
    train("afd", "lite0", steps=2, batch_size=2, protocol="in-domain", train_dir=f"imagenet-flat:{folder}",
          clean_share=0.25, out=str(out), config=_recipe(tmp_path, method="afd", preset="lite0"), **TINY)
    meta = torch.load(out, weights_only=True)["carbench"]
    rec = meta["protocol_record"]
    assert rec["protocol"] == "in-domain" and rec["folds"] == 2 and rec["labels"] == "no"
    assert rec["n_images"] == 6 and rec["crop"] == 224 and rec["crops_seen"] == 4 and rec["clean_share"] == 0.25
    assert rec["train_images"] == "imagenet-flat:ImageNet_tiny" and str(tmp_path) not in meta["protocol"]
    assert rec["lr_schedule"] == "Adam 0.001 x0.2 at step 1 of 2" and rec["qf_set"] == [25, 18, 15, 10, 7]
    assert meta["net_kwargs"] == {"backbone": "efficientnet_lite0", "depth": "D2", "folds": 2}
    assert meta["protocol"] == training_protocol.summary(rec)
    assert meta["protocol"].startswith("in-domain: imagenet-flat:ImageNet_tiny (6 photos), 2-fold by class parity")

    req = TaskRequest(["classification"], ["afd"], [Corruption("jpeg", (10,))], dataset=f"imagenet-flat:{folder}",
                      task_model="efficientnet_lite0", task_weights="random", weights=str(out), batch_size=4,
                      progress=False, use_cache=False)
    rows, failures = run_tasks(req)
    assert not failures, failures
    afd_rows = [r for r in rows["classification"] if r["method"] == "afd"]
    assert {r["codec"] for r in afd_rows} == {"jpeg", "none"}  # scored on clean images too
    assert {r["protocol"] for r in afd_rows} == {meta["protocol"]}
    assert {r["protocol"] for r in rows["classification"] if r["method"] in ("clean", "direct")} == {""}
    board = leaderboard.upsert(tmp_path / "classification.csv", rows["classification"], leaderboard.TASK_KEY,
                               leaderboard.TASK_COLUMNS)
    df = leaderboard.read(board, "classification")
    assert set(df[df.method == "afd"].protocol) == {meta["protocol"]}


# ---- out of domain, the learning curve ------------------------------------------------------------------------------
def test_out_of_domain_jpeg_finetune_distils_and_exports_a_learning_curve(tmp_path, rng):
    photos = _photos(tmp_path / "photos", rng)
    out = tmp_path / "ft_ood.pt"
    train("jpeg_finetune", "lite0", steps=4, batch_size=1, crop=64, protocol="out-of-domain", train_dir=str(photos),
          save_at="0.25,0.5,1", out=str(out), config=_recipe(tmp_path, method="jpeg_finetune"), **TINY)
    paths = {f: fraction_path(out, f) for f in (0.25, 0.5, 1)}
    assert paths[0.25].name == "ft_ood.q25.pt" and paths[0.5].name == "ft_ood.q50.pt" and paths[1] == out
    metas = {f: torch.load(p, weights_only=True) for f, p in paths.items()}
    assert [metas[f]["carbench"]["protocol_record"]["steps_done"] for f in (0.25, 0.5, 1)] == [1, 2, 4]
    assert [metas[f]["carbench"]["budget_fraction"] for f in (0.25, 0.5, 1)] == [0.25, 0.5, 1.0]
    rec = metas[1]["carbench"]["protocol_record"]
    assert rec["protocol"] == "out-of-domain" and rec["labels"] == "no" and rec["loss"] == "logit-kl"
    assert rec["folds"] is None and rec["crop"] == 64 and rec["lr_schedule"] == "Adam 0.0002 x0.2 at step 2 of 4"
    assert "photos + skimage-train" in rec["train_images"]
    assert metas[1]["carbench"]["net_kwargs"] == {"backbone": "efficientnet_lite0", "folds": 1, "n_stages": 3}
    assert "1 of 4 steps" in metas[0.25]["carbench"]["protocol"]
    first = metas[0.25]["state_dict"]
    assert any(not torch.equal(first[k], metas[1]["state_dict"][k]) for k in first)  # trained on between them
    module = create("jpeg_finetune.lite0", weights=str(paths[0.5]))  # every export scores as --weights
    assert module.net.n_folds == 1


def test_out_of_domain_defaults_are_one_budget_for_every_method():
    from benchmark.cli.train import PROTOCOL_LR, PROTOCOLS

    for p in PROTOCOLS.values():
        assert p["crop"] == 224 and p["qf_set"] == (25, 18, 15, 10, 7)
        assert p["lr_milestones"] == (0.5,) and p["lr_gamma"] == 0.2
    assert PROTOCOLS["out-of-domain"]["steps"] * PROTOCOLS["out-of-domain"]["batch_size"] == \
        PROTOCOLS["in-domain"]["steps"] * PROTOCOLS["in-domain"]["batch_size"]
    assert set(PROTOCOL_LR) == {"afd", "degradation_prior", "jpeg_finetune"}


# ---- option clashes ---------------------------------------------------------------------------------------------------
def test_trial_options_refuse_what_they_cannot_mean():
    assert trial_choices("jpeg_finetune", "classifier", None, None, None, None) == (True, "cross-entropy", 0.0)
    assert trial_choices("jpeg_finetune", "classifier", "in-domain", None, None, None)[0] is True
    assert trial_choices("jpeg_finetune", "classifier", "out-of-domain", None, None, 0.2) == (False, "logit-kl", 0.2)
    assert trial_choices("jpeg_finetune", "classifier", "in-domain", "none", None, None)[:2] == (False, "logit-kl")
    assert trial_choices("afd", "features", "in-domain", None, "logit-kl", None) == (False, "logit-kl", 0.0)
    with pytest.raises(ConfigError, match="label-free"):
        trial_choices("jpeg_finetune", "classifier", "out-of-domain", "labels", None, None)
    with pytest.raises(ConfigError, match="trains label-free"):
        trial_choices("afd", "features", None, "labels", None, None)
    with pytest.raises(ConfigError, match="logit-kl"):
        trial_choices("jpeg_finetune", "classifier", None, None, "feature-mse", None)
    with pytest.raises(ConfigError, match="clean-share"):
        trial_choices("afd", "features", None, None, None, 1.0)
    with pytest.raises(ConfigError, match="not of dncnn"):
        train("dncnn", protocol="out-of-domain")
    with pytest.raises(ConfigError, match="packaged ImageNet classifiers"):
        train("afd", "compact", steps=1, protocol="out-of-domain", accelerator="cpu")
    assert parse_fractions("1,0.25,0.5") == (0.25, 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        parse_fractions("0,1")


def test_cli_usage_errors_of_the_trial_options(tmp_path, capsys):
    from benchmark.cli import main

    assert main(["train", "--method", "afd", "--preset", "lite0", "--save-at", "2"]) == 2
    assert "--save-at" in capsys.readouterr().err
    assert main(["train", "--method", "afd", "--preset", "lite0", "--clean-share", "1.5"]) == 2
    assert main(["train", "--method", "afd", "--preset", "lite0", "--train-dir", f"imagenet-flat:{tmp_path}/no"]) == 2


# ---- the protocol column --------------------------------------------------------------------------------------------
def test_boards_without_the_protocol_column_still_read(tmp_path):
    old_task = [c for c in leaderboard.TASK_COLUMNS if c != "protocol"]
    row = {c: "" for c in old_task}
    row.update(task="classification", model="m", method="afd", metric="top1", value="50.0", source="measured",
               n_images="4", weights_sha256="abc")
    pd.DataFrame([row], columns=old_task).to_csv(tmp_path / "classification.csv", index=False)
    df = leaderboard.read(tmp_path / "classification.csv", "classification")
    assert list(df.columns) == leaderboard.TASK_COLUMNS and df.protocol.tolist() == [""]
    fid = {c: "" for c in leaderboard.FIDELITY_COLUMNS}
    fid.update(method="jpeg", psnr="30.0", source="measured")
    pd.DataFrame([fid], columns=leaderboard.FIDELITY_COLUMNS).to_csv(tmp_path / "fidelity.csv", index=False)
    assert list(leaderboard.read(tmp_path / "fidelity.csv", "fidelity").columns) == leaderboard.FIDELITY_COLUMNS
    assert "protocol" not in leaderboard.TASK_KEY  # the weights digest already names the checkpoint


def test_protocol_of_older_and_foreign_weights(tmp_path):
    legacy = {"train_data": "/data/x/BSDS500_train + skimage-train, shorter side 256 (bicubic) 128px crops",
              "targets": "clean features at bn1 (MSE, no labels)",
              "config": {"batch_size": 16, "crop": 128, "qf_set": [25, 18, 15, 10, 7], "lr_milestones": [0.5],
                         "lr_gamma": 0.2, "loss": "mse", "steps": 2500, "lr": 0.001}}
    text = training_protocol.of_meta(legacy)
    assert text.startswith("custom: BSDS500_train + skimage-train") and "/data/x" not in text
    assert "labels no; 128px; 2500x16=40000 crops; Adam 0.001 x0.2 at step 1250 of 2500" in text
    assert text.endswith("QF 25/18/15/10/7; clean 0%; feature-mse")
    assert training_protocol.of_weights("") == ""
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    assert training_protocol.of_weights(str(foreign)) == training_protocol.NOT_RECORDED


def test_train_images_limits_the_photos_of_either_protocol(tmp_path, rng):
    """`--train-images N` (the data-size curve): the first N training photos only, and the record says N."""
    from benchmark.cli.train import PROTOCOLS, _plugin_data
    from lightning_modules.task_models import create_task_model

    prep = create_task_model("classification", "efficientnet_lite0", "random").preprocess
    folder = _flat(tmp_path / "ImageNet_tiny", rng)
    cfg = dict(PROTOCOLS["in-domain"], steps=2, batch_size=2, val_items=2, train_images=4)
    train_set, _, _, info = _plugin_data("features", "efficientnet_lite0", f"imagenet-flat:{folder}", cfg, 0,
                                         cross_fitted=True, preprocess=prep, protocol="in-domain")
    assert info["n_images"] == 4 and len(train_set.clean) == 4
    photos = _photos(tmp_path / "photos", rng, n=12)
    cfg = dict(PROTOCOLS["out-of-domain"], crop=64, steps=2, batch_size=2, val_items=2, train_images=3)
    train_set, _, _, info = _plugin_data("features", "efficientnet_lite0", str(photos), cfg, 0, preprocess=prep,
                                         protocol="out-of-domain")
    assert info["n_images"] == 3 and [r.name for r in train_set.records] == ["p0", "p1", "p10"]


# ---- the shipped trial checkpoints ------------------------------------------------------------------------------------
def test_shipped_trial_checkpoints_record_the_protocol_their_preset_names():
    """Each fair-trial preset whose file is shipped was trained as its retrain command says: the protocol, labels,
    loss, clean share, QF set, tap and copies in the file's record match the flags, and the whole budget ran."""
    import shlex

    from benchmark.cli.train import PROTOCOLS
    from lightning_modules.dedrifters.afd import _TRIAL
    from lightning_modules.registry import CHECKPOINT_DIR, resolve_preset

    shipped = 0
    for method, presets in _TRIAL.items():
        for name, (kwargs, flags, _) in presets.items():
            path = CHECKPOINT_DIR / f"{method}_{name}.pt"
            if not path.is_file():
                continue
            shipped += 1
            opts = dict(zip(shlex.split(flags)[::2], shlex.split(flags)[1::2]))
            meta = torch.load(path, map_location="cpu", weights_only=False)["carbench"]
            rec, protocol = meta["protocol_record"], opts["--protocol"]
            assert (meta["method"], rec["protocol"]) == (method, protocol), path
            assert rec["steps"] == rec["steps_done"] == PROTOCOLS[protocol]["steps"], path
            assert rec["batch_size"] == PROTOCOLS[protocol]["batch_size"] and rec["crop"] == 224, path
            assert rec["qf_set"] == [int(q) for q in opts.get("--qf-set", "25,18,15,10,7").split(",")], path
            assert rec["clean_share"] == float(opts.get("--clean-share", 0)), path
            assert rec["labels"] == ("yes" if opts.get("--labels") == "labels" else "no"), path
            if method != "jpeg_finetune":
                assert rec["loss"] == opts.get("--loss", "feature-mse"), path
            preset = resolve_preset(method, name)[2]
            assert {k: meta["net_kwargs"][k] for k in preset.kwargs if k in meta["net_kwargs"]} == \
                {k: v for k, v in preset.kwargs.items() if k in meta["net_kwargs"]}, path
            assert rec["folds"] == (kwargs["folds"] if kwargs.get("folds", 1) > 1 else None), path
            create(method, name, pretrained=True)  # the preset loads its file
    assert shipped >= 3  # the out-of-domain trial of AFD, DDP and fine-tuning at least
