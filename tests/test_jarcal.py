"""JARCAL: parameter count, the invertible fusion, InfoNCE and the MoCo queue by hand, both training stages, the FFT
loss of Eq. 9-10 by hand, presets (odd sizes, Table 5 ablations) and checkpoints."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_modules.restorers.jarcal  # noqa: F401  (registers "jarcal": the registry's built-in list does not import it yet)
from lightning_modules import create
from lightning_modules.restorers.jarcal import (
    ABLATIONS,
    JARCAL,
    ConcatFusion,
    InvertibleFusion,
    JARCALModule,
    MoCoAuxiliaries,
    QualityEncoder,
    fft_loss,
    info_nce,
    random_patches,
)

TINY = dict(in_channels=3, width=8, encoder_widths=(8, 8, 8, 16), encoder_blocks=(1, 1, 1), n_mid=1,
            n_recovery=(1, 1, 1), scale=1, zero_tail=False, queue_size=8, momentum=0.9)
PAPER_PARAMS = 13_882_435  # restorer + compression quality encoder (no momentum encoder, queue or head)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_paper_preset_has_13_88M_parameters_and_the_release_layout():
    net = create("jarcal.paper", pretrained=False).net
    assert n_params(net) == PAPER_PARAMS
    assert abs(n_params(net) / 13.88e6 - 1) < 0.05
    enc = net.encoder
    assert n_params(enc) == 2_775_104  # ResNet-18 trunk up to layer3, 3x3 stride-1 stem
    assert [len(enc.layer1), len(enc.layer2), len(enc.layer3)] == [2, 2, 2] and enc.stem.stride == (1, 1)
    assert [len(r) - 1 for r in net.recovery] == [2, 4, 4]  # RNAN groups after each INM
    assert all(isinstance(f, InvertibleFusion) for f in net.fusions) and len(net.fusions) == 3
    assert net.tail.kernel_size == (1, 1) and net.size_multiple == 8
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 32, 48))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6)]


@pytest.mark.parametrize("clamp", [0.8, None])
def test_invertible_fusion_inverts(clamp):
    torch.manual_seed(0)
    inm = InvertibleFusion(6, clamp=clamp).double()
    e, d = torch.randn(2, 6, 8, 8, dtype=torch.double), torch.randn(2, 6, 8, 8, dtype=torch.double)
    with torch.no_grad():
        f = inm(e, d)
        e_back, d_back = inm.inverse(f)
    assert f.shape == (2, 12, 8, 8)
    assert torch.allclose(e_back, e, atol=1e-10) and torch.allclose(d_back, d, atol=1e-10)
    # Eq. 5: the first half is E + phi1(D)
    assert torch.allclose(f[:, :6], e + inm.phi1(d).detach())


def test_info_nce_by_hand():
    tau = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.8, -0.6]])
    # query 1: positive 0.6, negatives 1, -1, 0.8; query 2: positive 1, negatives 0, 0, -0.6
    l1 = -math.log(math.exp(0.6 / tau) / sum(math.exp(v / tau) for v in (0.6, 1.0, -1.0, 0.8)))
    l2 = -math.log(math.exp(1.0 / tau) / sum(math.exp(v / tau) for v in (1.0, 0.0, 0.0, -0.6)))
    assert info_nce(q, k, queue, tau).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    # and the explicit log-softmax form
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / tau
    assert info_nce(q, k, queue, tau).item() == pytest.approx(-logits.log_softmax(1)[:, 0].mean().item(), rel=1e-6)


def test_queue_is_a_ring_buffer():
    aux = MoCoAuxiliaries(QualityEncoder(3, (4, 4, 4, 4), (1, 1, 1)), queue_size=5)
    assert aux.queue.shape == (5, 4) and torch.allclose(aux.queue.norm(dim=1), torch.ones(5))
    keys = torch.arange(1.0, 41.0).reshape(10, 4)
    aux.enqueue(keys[0:2])
    assert int(aux.queue_ptr) == 2 and torch.equal(aux.queue[:2], keys[0:2])
    aux.enqueue(keys[2:4])
    assert int(aux.queue_ptr) == 4 and torch.equal(aux.queue[2:4], keys[2:4])
    aux.enqueue(keys[4:6])  # wraps: the oldest key (row 0) leaves
    assert int(aux.queue_ptr) == 1
    assert torch.equal(aux.queue, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    aux.enqueue(keys[3:10])  # more keys than the queue holds: the last 5 stay, written from the pointer on
    assert int(aux.queue_ptr) == 1
    assert torch.equal(aux.queue, torch.stack([keys[9], keys[5], keys[6], keys[7], keys[8]]))


def test_random_patches_lie_on_the_8_pixel_grid():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(48.0), indexing="ij")
    x = torch.stack([yy, xx, yy * 0]).expand(6, 3, 64, 48)
    p = random_patches(x, 16)
    assert p.shape == (6, 3, 16, 16)
    assert (p[:, 0, 0, 0] % 8 == 0).all() and (p[:, 1, 0, 0] % 8 == 0).all()
    assert torch.equal(p[:, 0, :, 0] - p[:, 0, :1, 0], torch.arange(16.0).expand(6, 16))


def test_fft_loss_is_eq9_by_hand():
    # a 2x2 DFT is real: X = [[a+b+c+d, a-b+c-d], [a+b-c-d, a-b-c+d]] for x = [[a, b], [c, d]]
    pred, target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.zeros(1, 1, 2, 2)
    spectrum = torch.tensor([10.0, -2.0, -4.0, 0.0])
    # mean over real and imaginary parts (the imaginary parts are 0)
    assert fft_loss(pred, target).item() == pytest.approx(spectrum.abs().sum().item() / 8)
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    diff = torch.fft.fft2(a) - torch.fft.fft2(b)
    expected = (diff.real.abs().sum() + diff.imag.abs().sum()) / (2 * diff.numel())
    assert fft_loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def _loader(n_steps: int, size: int = 32, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(batch, 3, size, size, generator=g)
    corrupted = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    qf = torch.tensor([10, 20, 30, 40][:batch])
    data = TensorDataset(corrupted.repeat(n_steps, 1, 1, 1), clean.repeat(n_steps, 1, 1, 1), qf.repeat(n_steps))
    return DataLoader(data, batch_size=batch), (corrupted, clean, qf)


def _trainer(steps: int, val: bool = False, callbacks=()):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1 if val else 0,
                     callbacks=list(callbacks), accelerator="cpu")


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_encoder_stage_updates_the_encoder_only_and_the_key_encoder_by_ema():
    torch.manual_seed(0)
    module = JARCALModule(JARCAL(**TINY))
    module.set_stage("encoder")
    aux, enc = module.aux, module.net.encoder
    assert not module.automatic_optimization and all(p.requires_grad for p in enc.parameters())
    q0 = [p.detach().clone() for p in enc.parameters()]
    k0 = [p.detach().clone() for p in aux.key_encoder.parameters()]
    restorer0 = {k: v for k, v in _snapshot(module.net).items() if not k.startswith("encoder.")}
    loader, _ = _loader(1)
    trainer = _trainer(1)
    trainer.fit(module, loader)
    assert math.isfinite(float(trainer.callback_metrics["train_infonce"]))
    # MoCo: theta_k <- m theta_k + (1 - m) theta_q, with theta_q before this step's update
    for k_before, q_before, k_after in zip(k0, q0, aux.key_encoder.parameters()):
        assert torch.allclose(k_after, 0.9 * k_before + 0.1 * q_before, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(q0, enc.parameters()))  # the encoder learnt
    after = _snapshot(module.net)
    assert all(torch.equal(v, after[k]) for k, v in restorer0.items())  # the restorer did not
    assert int(aux.queue_ptr) == 4  # the batch's keys entered the queue
    assert "aux.queue" not in module.net.state_dict() and not any("key_encoder" in k for k in module.net.state_dict())
    torch.manual_seed(1)  # the validation patches are drawn at random: drawn again below from the same seed
    metrics = _trainer(1, val=True).validate(module, loader, verbose=False)[0]
    corrupted = next(iter(loader))[0]
    torch.manual_seed(1)
    module.eval()
    with torch.no_grad():
        size = module._patch_size(corrupted)
        p_query, p_key = random_patches(corrupted, size), random_patches(corrupted, size)
        q, k = aux.query(enc, p_query).numpy(), aux.key(p_key).numpy()
    # by hand: a query's top-1 is right when its own key is the most similar (dot product) of the batch's keys
    nearest = [max(range(len(k)), key=lambda j: float(q[i] @ k[j])) for i in range(len(q))]
    assert metrics["val_top1"] == pytest.approx(sum(j == i for i, j in enumerate(nearest)) / len(q))
    assert metrics["val_qf_top1"] == 0.0  # the four images have four different QFs: no other image shares one


def test_restorer_stage_freezes_the_encoder_and_its_loss_is_l1_plus_fft():
    torch.manual_seed(0)
    module = JARCALModule(JARCAL(**TINY), lr=1e-3)
    module.set_stage("restorer")
    enc = module.net.encoder
    assert module.automatic_optimization and not any(p.requires_grad for p in enc.parameters())
    _, (c, o, qf) = _loader(1)
    # Eq. 10 with lambda = 0.1 (the logging call is a no-op outside a Trainer)
    module.train()
    assert not enc.training  # BN statistics frozen too
    with torch.no_grad():
        loss = module.training_step((c, o, qf), 0)
        pred = module(c)
    assert torch.allclose(loss, F.l1_loss(pred, o) + 0.1 * fft_loss(pred, o), rtol=1e-5)
    frozen = _snapshot(enc)
    head0 = module.net.head.weight.detach().clone()
    modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.net.encoder.training)

    loader, _ = _loader(3)
    trainer = _trainer(3, val=True, callbacks=[Spy()])
    trainer.val_check_interval = 1
    trainer.fit(module, loader, val_dataloaders=loader)
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert "val_psnr" in trainer.callback_metrics
    assert modes and not any(modes)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in frozen.items())  # weights and BN statistics
    assert not torch.equal(head0, module.net.head.weight)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 3


def test_no_pretrain_variant_trains_its_encoder_jointly_and_has_no_stage_1():
    module = JARCALModule(JARCAL(**TINY, encoder_pretrained=False))
    assert all(p.requires_grad for p in module.net.encoder.parameters())
    module.train()
    assert module.net.encoder.training
    with pytest.raises(ValueError, match="stages"):
        module.set_stage("encoder")
    with pytest.raises(ValueError, match="no compression quality encoder"):
        JARCALModule(JARCAL(**TINY, use_encoder=False)).set_stage("encoder")
    with pytest.raises(ValueError, match="bogus"):
        module.set_stage("bogus")
    # no FFT term (model-4)
    m4 = JARCALModule(JARCAL(**TINY, fft_weight=0.0))
    _, (c, o, qf) = _loader(1)
    with torch.no_grad():
        assert torch.allclose(m4.training_step((c, o, qf), 0), F.l1_loss(m4(c), o))


def test_compact_preset_restores_odd_sizes_and_gray():
    module = create("jarcal.compact", pretrained=False).eval()
    assert module.size_multiple == 8 and module.in_channels == 3
    for shape in [(2, 3, 37, 50), (1, 3, 9, 13), (1, 1, 20, 24)]:
        x = torch.rand(shape)
        assert module.restore(x).shape == x.shape
    assert module.net(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)  # the network pads on its own too


def test_ablation_presets_build_and_run():
    x = torch.rand(1, 3, 16, 24)
    counts = {}
    for name in ABLATIONS:
        module = create(f"jarcal.paper_{name}", pretrained=False).eval()
        counts[name] = n_params(module.net)
        assert module.restore(x).shape == x.shape
        net = module.net
        if name == "no_encoder":
            assert net.encoder is None
        if name.startswith("concat"):
            assert all(isinstance(f, ConcatFusion) for f in net.fusions)
            assert (net.effm is None) == (name == "concat_no_effm")
    assert counts["no_pretrain"] == counts["no_fft"] == PAPER_PARAMS
    # "the network does not make much difference in terms of the number of parameters" (model-3)
    assert abs(counts["concat"] / PAPER_PARAMS - 1) < 0.02 and abs(counts["concat_no_effm"] / PAPER_PARAMS - 1) < 0.02
    assert counts["no_encoder"] < PAPER_PARAMS - 2_775_104


def test_stage1_lightning_checkpoint_loads_as_the_network(tmp_path):
    torch.manual_seed(0)
    module = JARCALModule(JARCAL(**TINY))
    module.set_stage("encoder")
    loader, (c, _, _) = _loader(1)
    trainer = _trainer(1)
    trainer.fit(module, loader)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert "aux.queue" in state and any(k.startswith("aux.key_encoder.") for k in state)
    loaded = create("jarcal.compact", weights=path, **TINY).eval()
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded.restore(c), module.restore(c))
