"""URIE SKUNet: strict loading of the authors' checkpoint format, the [0, 1] <-> ImageNet-normalised convention,
a selective-kernel unit against a numpy forward, and the released weights on a real JPEG."""
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules import MethodError, create
from lightning_modules.restorers.urie import IMAGENET_MEAN, IMAGENET_STD, SelectiveConv, SKUNet

from .conftest import TEST_DATA, WEIGHTS, need_shared

pytestmark = pytest.mark.usefixtures("single_thread")


def legacy_checkpoint(path, state: dict) -> None:
    """As the authors saved it: a DataParallel state dict (`module.` keys), pre-1.6 (non-zip) torch.save."""
    torch.save({f"module.{k}": v for k, v in state.items()}, path, _use_new_zipfile_serialization=False)


def random_skunet() -> SKUNet:
    torch.manual_seed(0)
    net = SKUNet()
    for m in net.modules():  # non-trivial BN statistics, so a wrongly mapped BN key would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_random_skunet_loads_strictly_from_the_authors_format_and_any_size_works(tmp_path):
    net = random_skunet()
    legacy_checkpoint(tmp_path / "w.ckpt.pt", net.state_dict())
    module = create("urie", weights=tmp_path / "w.ckpt.pt").eval()
    for k, v in net.state_dict().items():
        assert torch.equal(module.net.state_dict()[k], v), k
    for shape in ((1, 3, 64, 96), (1, 3, 61, 83)):
        x = torch.rand(shape)
        with torch.no_grad():
            y = module(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_residual_is_added_in_imagenet_normalised_space():
    net = random_skunet()
    torch.nn.init.zeros_(net.up3.weight)
    torch.nn.init.zeros_(net.up3.bias)
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.allclose(net(x), x, atol=1e-6)  # zero residual: the image comes back
        net.up3.bias.fill_(1.0)  # residual +1 in normalised units is +std in [0, 1] units
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        assert torch.allclose(net(x), (x + std).clamp(0, 1), atol=1e-6)
    assert torch.tensor(IMAGENET_MEAN).equal(net.mean.flatten())
    assert "mean" not in net.state_dict()  # not in the authors' file: strict loading must not expect it


def test_missing_or_misshaped_key_is_named(tmp_path):
    state = random_skunet().state_dict()
    missing = {k: v for k, v in state.items() if k != "up1.conv.selector.att_conv2.bias"}
    legacy_checkpoint(tmp_path / "missing.pt", missing)
    with pytest.raises(MethodError, match=r"missing keys.*up1\.conv\.selector\.att_conv2\.bias"):
        create("urie", weights=tmp_path / "missing.pt")
    misshaped = {**state, "down1.weight": torch.zeros(32, 3, 3, 3)}
    legacy_checkpoint(tmp_path / "misshaped.pt", misshaped)
    with pytest.raises(MethodError, match=r"shape mismatches.*down1\.weight: file \(32, 3, 3, 3\)"):
        create("urie", weights=tmp_path / "misshaped.pt")


def numpy_selective_conv(unit: SelectiveConv, x: np.ndarray) -> np.ndarray:
    """The authors' SelectiveConv written out in numpy (float64): BN (running stats) / InstanceNorm branches, each
    LeakyReLU(0.01) + 3x3 conv, 4x4 adaptive average pool of the sum, FC-ReLU, two heads, softmax over the branches
    per cell, nearest upsampling (output pixel i reads cell floor(4 i / H)), weighted sum."""
    p = {k: v.double().numpy() for k, v in unit.state_dict().items() if v.ndim}
    n, c, h, w = x.shape
    bn = (x - p["BN.running_mean"][:, None, None]) / np.sqrt(p["BN.running_var"][:, None, None] + 1e-5)
    bn = bn * p["BN.weight"][:, None, None] + p["BN.bias"][:, None, None]
    inorm = (x - x.mean((2, 3), keepdims=True)) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-5)

    def conv3x3(a, weight):
        a = np.pad(np.where(a > 0, a, 0.01 * a), ((0, 0), (0, 0), (1, 1), (1, 1)))
        return sum(np.einsum("nchw,oc->nohw", a[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
                   for dy in range(3) for dx in range(3))

    out1, out2 = conv3x3(bn, p["conv1.weight"]), conv3x3(inorm, p["conv2.weight"])
    s = out1 + out2
    rows = [(i * h // 4, -(-(i + 1) * h // 4)) for i in range(4)]  # adaptive pooling windows (they overlap when H % 4)
    cols = [(j * w // 4, -(-(j + 1) * w // 4)) for j in range(4)]
    pooled = np.stack([np.stack([s[:, :, r0:r1, c0:c1].mean((2, 3)) for c0, c1 in cols], -1)
                       for r0, r1 in rows], -2).reshape(n, -1)
    z = np.maximum(pooled @ p["selector.fc.0.weight"].T, 0)
    a1 = z @ p["selector.att_conv1.weight"].T + p["selector.att_conv1.bias"]
    a2 = z @ p["selector.att_conv2.weight"].T + p["selector.att_conv2.bias"]
    att1 = (1 / (1 + np.exp(a2 - a1))).reshape(n, -1, 4, 4)  # softmax of two = sigmoid of the difference
    iy, ix = np.arange(h) * 4 // h, np.arange(w) * 4 // w
    att1 = att1[:, :, iy][:, :, :, ix]
    return out1 * att1 + out2 * (1 - att1)


@pytest.mark.parametrize("h,w", [(8, 12), (6, 10)])
def test_selective_conv_matches_numpy(h, w):
    torch.manual_seed(1)
    unit = SelectiveConv(3, 2)  # 2 channels x 16 cells = 32 features, reduced 16x to 2
    with torch.no_grad():
        for prm in unit.parameters():
            prm.uniform_(-1, 1)
        unit.BN.running_mean.uniform_(-0.5, 0.5)
        unit.BN.running_var.uniform_(0.5, 2.0)
    unit.eval()
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        got = unit(x).double().numpy()
    np.testing.assert_allclose(got, numpy_selective_conv(unit, x.double().numpy()), rtol=1e-4, atol=1e-5)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.slow
@need_shared("weights", "urie", "ECCV_SKUNET_OURS.ckpt.pt")
@need_shared("data", "test", "LIVE1_color", "parrots.bmp")
def test_released_weights_load_strictly_and_keep_a_real_jpeg_intact():
    from datamodules.corruptions import Corruption, apply

    module = create("urie").eval()
    # create() loads strictly; check it loaded this file's tensors
    raw = torch.load(WEIGHTS / "urie" / "ECCV_SKUNET_OURS.ckpt.pt", map_location="cpu", weights_only=True)
    assert len(raw) == len(module.net.state_dict()) == 52
    assert all(torch.equal(v, module.net.state_dict()[k.removeprefix("module.")]) for k, v in raw.items())
    clean = np.asarray(Image.open(TEST_DATA / "LIVE1_color" / "parrots.bmp").convert("RGB"))
    jpeg, _ = apply(clean, Corruption("jpeg", (10,)))
    x = torch.from_numpy(jpeg.copy()).permute(2, 0, 1)[None].float() / 255
    y = module.restore(x)
    assert torch.isfinite(y).all()
    out = (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert not np.array_equal(out, jpeg)
    # URIE is trained for a classifier's loss, not fidelity: it need not raise PSNR, but it must not wreck the image
    # (a wrong input convention, e.g. [0, 1] fed without ImageNet normalisation, lands far below this)
    assert psnr(out, clean) > 20
