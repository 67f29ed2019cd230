"""DAGN: architecture sizes, each loss on hand-made cases, both training stages, checkpoints, ablation switches."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import create
from lightning_modules.restorers.dagn import (ABLATIONS, COMPACT, PAPER, DAGN, CrossFeatureFusion, DAGNModule, GuidanceBlock,
                                    content_loss, insensitive_loss, pyramid_pool, sensitive_loss)
from lightning_modules.registry import MethodError

TINY = dict(in_channels=3, widths=(8, 16, 16, 16), blocks=1, encoder_width=4, encoder_layers=(1, 1, 1, 1), embed=16)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_preset_is_within_5_percent_of_109_9M_and_has_the_papers_layout():
    net = create("dagn", preset="paper", pretrained=False).net
    assert abs(n_params(net) / 109.9e6 - 1) < 0.05
    enc = net.insensitive_encoder
    assert enc.out_channels == 2048 and [len(getattr(enc, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert enc.layer4[0].conv2.stride == (1, 1) and enc.layer3[0].conv2.stride == (2, 2)
    assert [m.out_channels for m in (net.head, *[d[-1] for d in net.down])] == [64, 128, 256, 512]
    assert all(len(d.sensitive) == 4 and len(d.insensitive) == 4 for d in net.up)
    assert [h.out_features // 2 for h in net.insensitive_guider.heads] == [256, 128, 64]
    # the ablation rows drop what they do not use
    base = DAGN(**{**PAPER, **ABLATIONS["baseline"]})
    assert base.insensitive_encoder is None and base.sensitive_encoder is None and base.fusion is None
    assert n_params(base) < n_params(DAGN(**{**PAPER, **ABLATIONS["w_cigm"]})) < n_params(net)


def test_compact_preset_fits_the_5MB_limit_and_restores_any_size():
    module = create("dagn", pretrained=False).eval()
    assert n_params(module.net) * 4 < 5e6
    x = torch.rand(2, 3, 37, 50)
    assert module.restore(x).shape == x.shape
    assert module.restore(torch.rand(1, 1, 20, 24)).shape == (1, 1, 20, 24)  # gray through the colour net


def test_feature_map_sizes():
    net = DAGN(**TINY).eval()
    x = torch.rand(1, 3, 64, 96)
    assert net.insensitive_encoder(x).shape == (1, 4 * 8 * 4, 4, 6)  # 1/16: layer4 keeps layer3's stride
    assert pyramid_pool(torch.rand(2, 5, 9, 7)).shape == (2, 5, 1 + 4 + 16 + 64)


def test_cross_feature_fusion_is_eq10_by_hand():
    torch.manual_seed(0)
    cfm = CrossFeatureFusion(6, 4, sizes=(1,))
    f_cif, f_bf = torch.rand(1, 6, 3, 3), torch.rand(1, 4, 2, 2)
    # one pooled token: the softmax over a single token is 1, so every position gets C2(F_cif)'s mean, plus F_bf
    c2_mean = cfm.c2(f_cif).mean(dim=(2, 3))
    expected = f_bf + c2_mean[..., None, None]
    assert torch.allclose(cfm(f_cif, f_bf), expected, atol=1e-6)


def test_guidance_block_eq12_and_disabled_guidance_is_identity_modulation():
    torch.manual_seed(0)
    block = GuidanceBlock(3).eval()
    x = torch.rand(2, 3, 5, 5)
    r = block.body(x)
    scale, shift = torch.rand(2, 3), torch.rand(2, 3)
    assert torch.allclose(block(x, scale, shift), x + scale[..., None, None] * r + shift[..., None, None])
    assert torch.allclose(block(x), block(x, torch.ones(2, 3), torch.zeros(2, 3)))


def test_losses_on_hand_made_cases():
    c, o = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert content_loss(c + 0.5, c, o - 0.25, o).item() == pytest.approx(0.5 * (0.5 + 0.25))
    zero = torch.zeros(4, 1)
    assert insensitive_loss(zero, zero).item() == pytest.approx(0.0)  # J = 1/2 for both: -log.5 + log.5
    # J(E(c)) = 1/2, J(E(o)) -> 1: L = (-log 1/2 + log 1) / 2
    assert insensitive_loss(zero, zero + 50).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    qf = torch.tensor([10, 37])
    perfect_c = torch.full((2, 100), -1e4).scatter(1, (qf - 1)[:, None], 1e4)
    perfect_o = torch.full((2, 100), -1e4)
    perfect_o[:, 99] = 1e4
    assert sensitive_loss(perfect_c, qf, perfect_o).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, 100)  # p = 0.01 everywhere: |0.01 - 1| + 99 * 0.01 = 1.98 per image
    assert sensitive_loss(uniform, qf, uniform).item() == pytest.approx(1.98, rel=1e-6)
    assert sensitive_loss(uniform, qf, perfect_o).item() == pytest.approx(0.99, rel=1e-6)


def _batches(n_steps: int, size: int = 32):
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, size, size, generator=g)
    corrupted = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    qf = torch.tensor([10, 20, 30, 40])
    data = TensorDataset(corrupted.repeat(n_steps, 1, 1, 1), clean.repeat(n_steps, 1, 1, 1), qf.repeat(n_steps))
    return DataLoader(data, batch_size=4), (corrupted, clean, qf)


def _fit(module: DAGNModule, stage: str, steps: int):
    module.set_stage(stage)
    module.train()
    loader, _ = _batches(steps)
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, loader)


def test_stage1_updates_the_autoencoders_and_lowers_their_loss():
    torch.manual_seed(0)
    module = DAGNModule(DAGN(**TINY), ae_lr=1e-3)
    module.set_stage("autoencoders")
    _, (c, o, qf) = _batches(1)
    enc, dec = module.net.insensitive_encoder, module.aux.insensitive_decoder
    enc.eval(), dec.eval()
    with torch.no_grad():
        before = content_loss(dec(enc(c)), c, dec(enc(o)), o).item()
    base_before = module.net.head.weight.clone()
    _fit(module, "autoencoders", 30)
    enc.eval(), dec.eval()
    with torch.no_grad():
        after = content_loss(dec(enc(c)), c, dec(enc(o)), o).item()
    assert after < before
    assert torch.equal(module.net.head.weight, base_before)  # stage 1 leaves the restoring network alone


def test_stage2_lowers_l1_and_keeps_the_encoders_frozen():
    torch.manual_seed(0)
    module = DAGNModule(DAGN(**TINY), lr=1e-3)
    _, (c, o, _) = _batches(1)
    module.eval()
    with torch.no_grad():
        before = (module(c) - o).abs().mean().item()
    frozen = {k: v.clone() for k, v in module.net.sensitive_encoder.state_dict().items()}
    _fit(module, "restorer", 20)
    module.eval()
    with torch.no_grad():
        after = (module(c) - o).abs().mean().item()
    assert after < before
    # weights and BN running statistics of the encoders are untouched by stage 2
    assert all(torch.equal(v, module.net.sensitive_encoder.state_dict()[k]) for k, v in frozen.items())


def test_unknown_stage_is_named():
    with pytest.raises(ValueError, match="bogus"):
        DAGNModule(DAGN(**TINY)).set_stage("bogus")


def test_ablation_switches_change_the_output():
    torch.manual_seed(0)
    full = DAGN(**TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    outs = {}
    for name, switches in ABLATIONS.items():
        variant = DAGN(**{**TINY, **switches}).eval()
        variant.load_state_dict({k: v for k, v in full.state_dict().items() if k in variant.state_dict()})
        with torch.no_grad():
            outs[name] = variant(x)
    with torch.no_grad():
        outs["full"] = full(x)
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(outs[a], outs[b], atol=1e-6), (a, b)


def test_checkpoint_round_trip_plain_and_lightning_and_mismatch(tmp_path):
    torch.manual_seed(0)
    module = create("dagn", pretrained=False).eval()
    x = torch.rand(1, 3, 48, 48)
    expected = module.restore(x)
    plain = tmp_path / "dagn.pth"
    torch.save(module.net.state_dict(), plain)
    assert torch.equal(create("dagn", weights=plain).eval().restore(x), expected)
    ckpt = tmp_path / "dagn.ckpt"  # what a Lightning checkpoint of the DAGNModule holds
    torch.save({"state_dict": {f"net.{k}": v for k, v in module.net.state_dict().items()}, "epoch": 3}, ckpt)
    assert torch.equal(create("dagn", weights=ckpt).eval().restore(x), expected)
    # a checkpoint of another variant: the error lists what is missing and unexpected
    other = tmp_path / "baseline.pth"
    torch.save(DAGN(**{**COMPACT, **ABLATIONS["baseline"]}).state_dict(), other)
    with pytest.raises(MethodError, match=r"missing keys \[.*insensitive_encoder"):
        create("dagn", weights=other)
    torch.save({**module.net.state_dict(), "extra.weight": torch.zeros(1)}, other)
    with pytest.raises(MethodError, match=r"unexpected keys \['extra.weight'\]"):
        create("dagn", weights=other)


def test_a_real_lightning_checkpoint_of_stage1_loads(tmp_path):
    torch.manual_seed(0)
    module = create("dagn", pretrained=False)
    module.set_stage("autoencoders")
    module.train()
    loader, _ = _batches(1)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, loader)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    assert any(k.startswith("aux.") for k in torch.load(path, weights_only=False)["state_dict"])
    loaded = create("dagn", weights=path).eval()
    module.eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.restore(x), module.restore(x))


def test_paper_preset_without_weights_says_where_to_put_them():
    with pytest.raises(MethodError, match="dagn_paper.pth"):
        create("dagn", preset="paper")


def test_shipped_compact_checkpoint_loads_and_beats_identity_on_a_jpeg():
    import numpy as np

    from datamodules.corruptions import Corruption, apply
    from datamodules.sources import load_samples

    module = create("dagn").eval()
    img = load_samples()[0].pixels[:128, :128]
    jpeg, _ = apply(img, Corruption("jpeg", (10,)))
    to_t = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    clean, x = to_t(img), to_t(jpeg)
    restored = (module.restore(x) * 255).round() / 255
    assert (restored - clean).pow(2).mean() < (x - clean).pow(2).mean()
