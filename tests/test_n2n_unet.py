"""N2N U-Net: the paper's 23-layer structure, parameter counts, size handling, one training step, no silent random
weights."""
import pytest
import torch

from lightning_modules import create
from lightning_modules.restorers.n2n_unet import UNet, count_convs
from lightning_modules.registry import MethodError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_paper_unet_has_23_convolutions_and_ronneberger_parameter_count():
    net = create("n2n_unet.paper", pretrained=False).net
    assert count_convs(net) == 23
    # Ronneberger's U-Net (64..1024 ch, 3x3 convs with bias, 2x2 up-convs, 1x1 head) for 3 -> 3 channels
    widths = [64, 128, 256, 512, 1024]
    down = sum(9 * a * b + b + 9 * b * b + b for a, b in zip([3] + widths[:-1], widths))
    up = sum(4 * w * (w // 2) + w // 2 + 9 * w * (w // 2) + w // 2 + 9 * (w // 2) ** 2 + w // 2 for w in widths[:0:-1])
    head = 64 * 3 + 3
    assert sum(p.numel() for p in net.parameters()) == down + up + head == 31_031_875


def test_compact_keeps_the_structure_and_any_image_size_works():
    module = create("n2n_unet.compact", pretrained=False)
    assert count_convs(module.net) == 23
    x = torch.rand(1, 3, 37, 50)  # not a multiple of 16: RestorerModule pads and crops back
    assert module.restore(x).shape == x.shape


def test_one_training_step_lowers_the_l2_loss():
    torch.manual_seed(0)
    net = UNet(3, width=4, depth=2)
    clean = torch.rand(4, 3, 16, 16)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-3, betas=(0.9, 0.99), eps=1e-8)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(net(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_no_weights_means_an_error_not_a_random_network():
    with pytest.raises(MethodError, match="n2n_unet.paper has no published or shipped weights"):
        create("n2n_unet.paper")
    assert create("n2n_unet").weights_path.endswith("n2n_unet_compact.pt")  # the shipped compact checkpoint loads


def test_noise2noise_pairs_never_contain_the_clean_crop():
    import numpy as np

    from datamodules.corruptions import Corruption, apply
    from datamodules.fidelity import RandomCrops
    from datamodules.sources import ImageRecord

    rng = np.random.default_rng(0)
    img = ImageRecord("r", rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    sup = RandomCrops([img], (10, 40), crop=32, length=4, seed=3)
    n2n = RandomCrops([img], (10, 40), crop=32, length=4, seed=3, noise2noise=True)
    for i in range(4):
        (x_s, clean, _), (x_n, target, _) = sup[i], n2n[i]
        assert torch.equal(x_s, x_n)  # same crop, same first compression
        assert not torch.equal(target, clean)
        clean_u8 = (clean * 255).round().byte().permute(1, 2, 0).numpy()
        # the target is that crop compressed again at some QF of the range, and the pair repeats exactly
        assert any(np.array_equal((target * 255).round().byte().permute(1, 2, 0).numpy(),
                                  apply(clean_u8, Corruption("jpeg", (q,)))[0]) for q in range(10, 41))
        assert torch.equal(n2n[i][1], target)
