"""FBCNN: the paper's size, the release's state-dict layout (released files load strictly), flexible QF control,
any image size, and the training step's two losses."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

import lightning_modules.restorers.fbcnn  # noqa: F401  (registers "fbcnn": not yet in the registry's built-in imports)
from lightning_modules.restorers.fbcnn import COMPACT, FBCNN, PAPER_COLOR, FBCNNModule, input_to_qf, qf_to_input
from lightning_modules.registry import MethodError, create

PAPER_PARAMS = 71.92e6  # paper, Table 7 / release README
COLOR_PARAMS = 71_921_796  # counted on the release's network_fbcnn.FBCNN(3, 3, [64, 128, 256, 512], 4, 'R')
GRAY_PARAMS = 71_919_490


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def official_layout(in_nc: int, nc=(64, 128, 256, 512), nb: int = 4) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's FBCNN (models/network_fbcnn.py, act_mode 'R'), written out by hand: a residual
    block is `res.0` conv - ReLU - `res.2` conv; the down stages end with the 2x2 stride-2 conv at index nb; each up
    stage starts with the 2x2 transposed conv (weight in x out x 2 x 2); qf_pred = nb blocks, pool, flatten, then
    Linear layers at nb+2, nb+4, nb+6; qf_embed's Linear layers at 0, 2, 4; to_gamma/to_beta Linear at 0."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin, k=3):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def linear(name, fout, fin):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (fout, fin), (fout,)

    def block(prefix, c):
        conv(f"{prefix}.res.0", c, c)
        conv(f"{prefix}.res.2", c, c)

    conv("m_head", nc[0], in_nc)
    for i in (1, 2, 3):
        for b in range(nb):
            block(f"m_down{i}.{b}", nc[i - 1])
        conv(f"m_down{i}.{nb}", nc[i], nc[i - 1], k=2)
    for b in range(nb):
        block(f"m_body_encoder.{b}", nc[3])
        block(f"m_body_decoder.{b}", nc[3])
        block(f"qf_pred.{b}", nc[3])
    linear(f"qf_pred.{nb + 2}", 512, 512)
    linear(f"qf_pred.{nb + 4}", 512, 512)
    linear(f"qf_pred.{nb + 6}", 1, 512)
    linear("qf_embed.0", 512, 1)
    linear("qf_embed.2", 512, 512)
    linear("qf_embed.4", 512, 512)
    for k, c in ((3, nc[2]), (2, nc[1]), (1, nc[0])):
        linear(f"to_gamma_{k}.0", c, 512)
        linear(f"to_beta_{k}.0", c, 512)
    for i, cin, cout in ((3, nc[3], nc[2]), (2, nc[2], nc[1]), (1, nc[1], nc[0])):
        keys[f"m_up{i}.0.weight"], keys[f"m_up{i}.0.bias"] = (cin, cout, 2, 2), (cout,)
        for b in range(1, nb + 1):
            block(f"m_up{i}.{b}", cout)
    conv("m_tail", in_nc, nc[0])
    return keys


@contextlib.contextmanager
def skipped_init():
    """Skip the random initialisation of the 72 M-parameter networks (their weights are loaded or only counted):
    keeps the file fast on a shared CPU."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("kaiming_uniform_", "uniform_"):
            mp.setattr(torch.nn.init, name, lambda t, *a, **k: t)
        yield


@pytest.fixture
def no_init():
    with skipped_init():
        yield


@pytest.fixture(scope="module")
def paper_color():
    with skipped_init():
        return FBCNN(**PAPER_COLOR)


def shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_paper_color_has_the_papers_71_92M_parameters(paper_color):
    assert n_params(paper_color) == COLOR_PARAMS
    assert abs(COLOR_PARAMS / PAPER_PARAMS - 1) < 0.005
    assert paper_color.in_channels == 3 and paper_color.size_multiple == 8


def test_paper_state_dict_is_the_releases_layout(paper_color):
    expected = official_layout(3)
    assert shapes(paper_color) == expected
    spot = {"m_head.weight": (64, 3, 3, 3), "m_down1.0.res.0.weight": (64, 64, 3, 3),
            "m_down1.4.weight": (128, 64, 2, 2), "m_down3.4.weight": (512, 256, 2, 2),
            "m_body_encoder.3.res.2.weight": (512, 512, 3, 3), "qf_pred.3.res.2.bias": (512,),
            "qf_pred.6.weight": (512, 512), "qf_pred.10.weight": (1, 512), "qf_embed.0.weight": (512, 1),
            "qf_embed.4.bias": (512,), "to_gamma_3.0.weight": (256, 512), "to_beta_1.0.bias": (64,),
            "m_up3.0.weight": (512, 256, 2, 2), "m_up3.4.res.2.weight": (256, 256, 3, 3),
            "m_up1.1.res.0.weight": (64, 64, 3, 3), "m_tail.weight": (3, 64, 3, 3)}
    for k, shape in spot.items():
        assert expected[k] == shape, k


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under the release's names and shapes. Every tensor is a view at a random offset into one shared
    random pool, so the saved file holds the pool once (~10 MB instead of 288 MB) and the test stays fast."""
    g = torch.Generator().manual_seed(seed)
    biggest = max(math.prod(s) for s in layout.values())
    pool = torch.randn(2 * biggest, generator=g) * 0.01
    offsets = torch.randint(0, biggest, (len(layout),), generator=g).tolist()
    return {k: pool[o:o + math.prod(s)].view(s) for o, (k, s) in zip(offsets, layout.items())}


@pytest.mark.parametrize("preset, in_nc, count", [("paper", 3, COLOR_PARAMS), ("paper_gray", 1, GRAY_PARAMS)])
def test_released_files_load_strictly(tmp_path, no_init, preset, in_nc, count):
    state = random_state(official_layout(in_nc))
    path = tmp_path / ("fbcnn_color.pth" if in_nc == 3 else "fbcnn_gray.pth")
    torch.save(state, path)  # the release's format: a plain state dict (main_test_fbcnn_*.py: strict=True)
    module = create(f"fbcnn.{preset}", weights=path)
    assert isinstance(module, FBCNNModule) and module.in_channels == in_nc
    assert n_params(module.net) == count
    loaded = module.net.state_dict()
    for k in ("m_head.weight", "qf_pred.10.weight", "to_gamma_3.0.weight", "m_up3.0.weight", "m_tail.bias"):
        assert torch.equal(loaded[k], state[k]), k


def _cheap_state(layout):
    # one-element storages expanded to the right shapes: tiny files, enough to test key/shape checks
    return {k: torch.zeros(1).expand(s) for k, s in layout.items()}


def test_a_missing_or_renamed_key_is_named(tmp_path, no_init):
    state = _cheap_state(official_layout(1))
    removed = dict(state)
    del removed["qf_embed.2.weight"]
    torch.save(removed, tmp_path / "removed.pth")
    with pytest.raises(MethodError, match=r"missing keys.*qf_embed\.2\.weight"):
        create("fbcnn.paper_gray", weights=tmp_path / "removed.pth")
    renamed = dict(state)
    renamed["to_gamma_9.0.weight"] = renamed.pop("to_gamma_2.0.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(MethodError, match=r"to_gamma_2\.0\.weight.*unexpected keys.*to_gamma_9\.0\.weight"):
        create("fbcnn.paper_gray", weights=tmp_path / "renamed.pth")
    # a colour file is no gray model
    torch.save(_cheap_state(official_layout(3)), tmp_path / "color.pth")
    with pytest.raises(MethodError, match=r"m_head\.weight: file \(64, 3, 3, 3\) vs model \(64, 1, 3, 3\)"):
        create("fbcnn.paper_gray", weights=tmp_path / "color.pth")


def test_single_block_stages_keep_the_releases_unindexed_keys():
    # the release's sequential() returns a lone module as is: nb=1 -> m_body_encoder.res.0.weight
    keys = FBCNN(3, 3, nc=(4, 8, 8, 8), nb=1, qf_dim=8).state_dict()
    assert "m_body_encoder.res.0.weight" in keys and "m_body_decoder.res.2.bias" in keys
    assert "m_down1.1.weight" in keys and "qf_pred.3.weight" in keys and "m_up1.1.res.0.weight" in keys


def test_qf_convention_is_the_releases():
    assert qf_to_input(10) == pytest.approx(0.9) and qf_to_input(100) == 0.0
    assert float(input_to_qf(torch.tensor(0.7))) == pytest.approx(30)


@pytest.fixture
def compact_module(single_thread):
    torch.manual_seed(0)
    return create("fbcnn.compact", pretrained=False).eval()


def test_qf_override_is_flexible_control(compact_module):
    net = compact_module.net
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        blind, q = net.forward_with_qf(x)
        assert q.shape == (2, 1) and bool(((q > 0) & (q < 1)).all())
        assert torch.equal(net(x), blind)
        net.qf_override = 30
        forced = net(x)
        assert not torch.allclose(forced, blind, atol=1e-5)
        assert torch.equal(forced, net.forward_with_qf(x, 0.7)[0])
        assert torch.equal(forced, net.forward_with_qf(x, torch.tensor([[0.7]]))[0])
        assert torch.allclose(forced, net.forward_with_qf(x, torch.full((2, 1), 0.7))[0], atol=1e-6)
        compact_module.qf_override = 90  # through the LightningModule (what --qf-override sets)
        assert net.qf_override == 90
        assert torch.allclose(compact_module(x), net.forward_with_qf(x, 0.1)[0], atol=1e-6)
        compact_module.qf_override = None
        assert torch.equal(net(x), blind)
    for bad in (0, 101, -5, "x", 50.5, True, "50"):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            net.qf_override = bad
    assert net.qf_override is None
    with pytest.raises(ValueError, match="101"):
        FBCNN(**{**COMPACT, "qf_override": 101})
    assert create("fbcnn.compact", pretrained=False, qf_override=25).net.qf_override == 25


def test_any_size_and_gray_through_the_restorer_module(compact_module):
    assert compact_module.size_multiple == 8 and compact_module.in_channels == 3
    with torch.no_grad():
        x = torch.rand(1, 3, 37, 51)
        assert compact_module(x).shape == x.shape
        assert compact_module.restore(torch.rand(1, 1, 37, 51)).shape == (1, 1, 37, 51)
        assert compact_module.net(x).shape == x.shape  # the network alone pads like the release (replicate)
        out, q = compact_module.restore_with_qf(x)
        assert out.shape == x.shape and q.shape == (1, 1)


def test_compact_preset_is_cpu_sized():
    net = FBCNN(**COMPACT)
    assert 0.3e6 < n_params(net) < 1.5e6
    assert net.global_residual and not FBCNN(**PAPER_COLOR | dict(nc=(4, 8, 8, 8), nb=1, qf_dim=8)).global_residual


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_combines_image_and_qf_losses(compact_module):
    module = compact_module.train()
    torch.manual_seed(1)
    corrupted, clean = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    qf = torch.tensor([10, 50, 90])
    loss = module.training_step((corrupted, clean, qf), 0)
    assert torch.isfinite(loss)
    with torch.no_grad():
        pred, q = module.net.forward_with_qf(corrupted)
    expected = (pred - clean).abs().mean() + 1e-3 * (q.reshape(-1) - torch.tensor([0.9, 0.5, 0.1])).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [p.grad for p in module.net.qf_pred.parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    assert module.net.qf_pred[-2].weight.grad.abs().sum() > 0  # the last Linear: reached by the QF loss
    # unknown QFs get no QF loss; the image loss stays
    module.zero_grad()
    only_image = module.training_step((corrupted, clean, torch.tensor([float("nan"), 0.0, 101.0])), 0)
    assert only_image.item() == pytest.approx((pred - clean).abs().mean().item(), rel=1e-5)
    assert math.isfinite(module.qf_loss(q, torch.tensor([float("nan")] * 3)).item())


def test_cli_qf_override_rows_and_errors(tmp_path, capsys):
    """`benchmark run --qf-override`: rows keep the blind ones (preset `compact@qfN`), the QF changes the result,
    a method without QF control and a bad QF are refused by name."""
    import pandas as pd

    from benchmark.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "fbcnn_random.pt"
    torch.save(create("fbcnn.compact", pretrained=False).net.state_dict(), weights)
    lb = tmp_path / "f.csv"
    base = ["run", "--method", "fbcnn.compact", "--weights", str(weights), "--qf", "10", "--leaderboard", str(lb),
            "--quiet", "--no-reference"]
    for qf in ("5", "95"):
        assert main([*base, "--qf-override", qf]) == 0, capsys.readouterr()
    assert main(base) == 0
    df = pd.read_csv(lb, dtype=str).set_index("preset")
    assert sorted(df.index) == ["compact", "compact@qf5", "compact@qf95"]
    assert df.psnr["compact@qf5"] != df.psnr["compact@qf95"]
    capsys.readouterr()
    assert main(["run", "--method", "dncnn", "--qf", "10", "--qf-override", "30", "--leaderboard",
                 str(tmp_path / "g.csv"), "--quiet", "--no-reference"]) == 1
    assert "dncnn: --qf-override needs a method with QF control" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--qf-override", "0"])
    assert exit_.value.code == 2
    assert "bad --qf-override '0'" in capsys.readouterr().err
