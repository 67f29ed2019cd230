"""AR-CNN: architecture size, the authors' CSV layout (round trip, errors, against the independent npz conversion)
and the published QF10 numbers of the official model."""
import numpy as np
import pytest
import torch

from benchmark.evaluate.fidelity import FidelityRequest, run_fidelity
from datamodules.corruptions import Corruption
from lightning_modules.restorers.arcnn import ARCNN, LAYERS, load_arcnn_csv
from lightning_modules.registry import MethodError, create

from .conftest import SHARED, TEST_DATA, need_shared

CSV_DIR = SHARED / "weights" / "arcnn_csv"
PUBLISHED = {"classic5": 29.03, "live1-gray": 28.96}  # QF10, gray, ../shared/weights/README.md


def write_arcnn_csv(net: ARCNN, folder) -> None:
    """The inverse of `load_arcnn_csv`: one row per output channel, MATLAB (H, W, In) column-major, 5 digits."""
    for name, *_ in LAYERS:
        conv = getattr(net, name)
        w = conv.weight.detach().numpy().transpose(0, 1, 3, 2)  # (Out, In, W, H): C order == Fortran (H, W, In)
        np.savetxt(folder / f"weights_{name}.csv", w.reshape(w.shape[0], -1), fmt="%.5g", delimiter=",")
        np.savetxt(folder / f"biases_{name}.csv", conv.bias.detach().numpy().reshape(-1, 1), fmt="%.5g")


def test_parameter_count():
    expected = (9 * 9 * 64 + 64) + (7 * 7 * 64 * 32 + 32) + (32 * 16 + 16) + (5 * 5 * 16 + 1)
    assert expected == 106_561
    assert sum(p.numel() for p in ARCNN().parameters()) == expected


def test_output_keeps_size_and_is_not_clamped():
    net = ARCNN()
    with torch.no_grad():
        net.conv3.bias.fill_(5.0)
        y = net(torch.rand(1, 1, 13, 17))
    assert y.shape == (1, 1, 13, 17) and y.min() > 1


def test_csv_round_trip(tmp_path):
    torch.manual_seed(0)
    net = ARCNN()
    write_arcnn_csv(net, tmp_path)
    state = load_arcnn_csv(tmp_path / "weights_conv1.csv")
    assert set(state) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert state[k].shape == v.shape and state[k].dtype == torch.float32
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-9)  # 5 significant digits
    m = create("arcnn.paper", weights=tmp_path / "weights_conv1.csv")
    assert m.in_channels == 1
    torch.testing.assert_close(m.net.conv2.weight, state["conv2.weight"])


def test_garbled_csv_names_file_and_shape(tmp_path):
    write_arcnn_csv(ARCNN(), tmp_path)
    bad = tmp_path / "weights_conv22.csv"
    bad.write_text("\n".join(",".join(["0.1"] * 31) for _ in range(16)) + "\n")  # one value short per row
    with pytest.raises(MethodError, match=r"weights_conv22\.csv.*16 rows x 32"):
        load_arcnn_csv(tmp_path / "weights_conv1.csv")
    bad.write_text("0.1,abc\n")
    with pytest.raises(MethodError, match=r"weights_conv22\.csv.*cannot be parsed.*16 rows x 32"):
        load_arcnn_csv(tmp_path / "weights_conv1.csv")
    bad.unlink()
    with pytest.raises(MethodError, match=r"weights_conv22\.csv does not exist"):
        create("arcnn.paper", weights=tmp_path / "weights_conv1.csv")


@need_shared("weights", "arcnn_csv", "arcnn_pytorch_layout.npz")
def test_official_csv_matches_npz_conversion():
    state = load_arcnn_csv(CSV_DIR / "weights_conv1.csv")
    ref = np.load(CSV_DIR / "arcnn_pytorch_layout.npz")
    assert set(ref.files) == set(state)
    for k in ref.files:
        assert state[k].shape == ref[k].shape, k
        np.testing.assert_allclose(state[k].numpy(), ref[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.slow
@need_shared("data", "test")
@need_shared("weights", "arcnn_csv", "weights_conv1.csv")
def test_official_arcnn_reproduces_published_psnr(tmp_path):
    req = FidelityRequest(methods=["arcnn.paper"], corruptions=[Corruption("jpeg", (10,))],
                          datasets=list(PUBLISHED), data_root=str(TEST_DATA), progress=False, add_reference=False,
                          weights=str(CSV_DIR / "weights_conv1.csv"), cache_dir=str(tmp_path))
    rows, failures = run_fidelity(req)
    assert not failures, failures
    got = {r["dataset"]: r["psnr"] for r in rows if int(r["qf"]) == 10}
    assert set(got) == set(PUBLISHED)
    for dataset, paper in PUBLISHED.items():
        assert abs(got[dataset] - paper) <= 0.01 + 1e-9, f"{dataset}: measured {got[dataset]:.3f}, published {paper}"
