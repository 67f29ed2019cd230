"""DCSC: architecture size, the npz loader (round trip, errors) and the published Classic5 QF10 number of the
official model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.evaluate.fidelity import FidelityRequest, run_fidelity
from datamodules.corruptions import Corruption
from lightning_modules.restorers.dcsc import DCSC, load_dcsc_npz
from lightning_modules.registry import MethodError, create

from .conftest import SHARED, TEST_DATA, need_shared

NPZ = SHARED / "weights" / "dcsc_tf" / "dcsc_pytorch_layout.npz"


def test_parameter_count():
    branches = 3 * (9 * 48 + 48)
    expected = branches + 144 * 128 * 9 + 128 * 128 * 9 + (128 * 9 + 1)
    assert sum(p.numel() for p in DCSC().parameters()) == expected == 315_937


def test_forward_is_the_unfolded_ista():
    """An independent transcription of the recurrence with functional convs."""
    torch.manual_seed(0)
    net = DCSC(iterations=3).eval()
    x = torch.rand(1, 1, 19, 23)
    feats = torch.cat([F.conv2d(x, getattr(net, n).weight, getattr(net, n).bias, padding=d, dilation=d)
                       for n, d in (("X1", 1), ("X2", 2), ("X4", 4))], 1)
    gx = F.conv2d(feats, net.G_X.weight, padding=1)
    u = gx.clamp_min(0)
    for _ in range(3):
        u = (gx + F.conv2d(u, net.S_U.weight, padding=1)).clamp_min(0)
    ref = x + F.conv2d(u, net.residual.weight, net.residual.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
        net.truncate = True
        torch.testing.assert_close(net(x), ref - 0.5 / 255)


def test_truncate_makes_rounding_equal_floor():
    y = torch.tensor([0.1234, 0.5, 0.99, 0.0041])
    shifted = DCSC(iterations=0)
    assert torch.equal(((y - 0.5 / 255) * 255).round(), (y * 255).floor())
    assert shifted.truncate is False


def test_npz_round_trip_and_errors(tmp_path):
    torch.manual_seed(1)
    net = DCSC()
    np.savez(tmp_path / "dcsc.npz", **{k: v.numpy() for k, v in net.state_dict().items()})
    m = create("dcsc.paper", weights=tmp_path / "dcsc.npz")
    torch.testing.assert_close(m.net.S_U.weight, net.S_U.weight)
    assert m.in_channels == 1 and m.net.truncate
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    state["S_U.weight"] = state["S_U.weight"][:64]
    np.savez(tmp_path / "bad.npz", **state)
    with pytest.raises(MethodError, match=r"S_U\.weight.*\(64, 128, 3, 3\)"):
        create("dcsc.paper", weights=tmp_path / "bad.npz")
    (tmp_path / "garbled.npz").write_bytes(b"not a zip")
    with pytest.raises(MethodError, match=r"garbled\.npz"):
        load_dcsc_npz(tmp_path / "garbled.npz")
    with pytest.raises(MethodError, match="does not exist"):
        load_dcsc_npz(tmp_path / "absent.npz")


@pytest.mark.slow
@need_shared("data", "test", "Classic5")
@need_shared("weights", "dcsc_tf", "dcsc_pytorch_layout.npz")
def test_official_dcsc_reproduces_published_psnr(tmp_path):
    req = FidelityRequest(methods=["dcsc.paper"], corruptions=[Corruption("jpeg", (10,))], datasets=["classic5"],
                          data_root=str(TEST_DATA), progress=False, add_reference=False, weights=str(NPZ),
                          cache_dir=str(tmp_path))
    rows, failures = run_fidelity(req)
    assert not failures, failures
    (got,) = [r["psnr"] for r in rows if (r["method"], r["preset"]) == ("dcsc", "paper")]
    assert abs(got - 29.62) <= 0.01 + 1e-9, f"measured {got:.3f}, published 29.62"
