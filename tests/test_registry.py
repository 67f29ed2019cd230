"""Registry, weight loading in real formats (files the tests write), and clear errors for bad checkpoints."""
import re

import h5py
import numpy as np
import pytest
import torch

from lightning_modules import MethodError, available, create
from lightning_modules.restorers.dncnn import DnCNN, load_matconvnet
from lightning_modules.registry import load_state_dict_file

from .conftest import WEIGHTS, need_shared


def test_available_and_wildcards():
    names = available()
    assert {"jpeg.none", "dncnn.compact", "dncnn.paper"} <= set(names)
    assert available("dncnn*") == ["dncnn.compact", "dncnn.paper"]
    assert available("*.paper") == ["afd.paper", "arcnn.paper", "dagn.paper", "dcsc.paper", "degradation_prior.paper",
                                    "dncnn.paper", "dualpriors.paper", "fbcnn.paper", "jarcal.paper",
                                    "jpeg_finetune.paper", "n2n_unet.paper", "urie.paper"]
    assert available("dagn.paper_*") == ["dagn.paper_baseline", "dagn.paper_w_cfm", "dagn.paper_w_cigm", "dagn.paper_w_csgm"]


def test_unknown_method_and_preset_name_the_culprit():
    with pytest.raises(MethodError, match="unknown method 'dagn2'"):
        create("dagn2")
    with pytest.raises(MethodError, match="no preset 'huge'"):
        create("dncnn.huge")


def test_pytorch_checkpoint_roundtrip_and_prefixes(tmp_path):
    net = DnCNN(3, depth=4, width=8)
    x = torch.rand(1, 3, 20, 24)
    for prefix in ("", "net.", "module."):
        path = tmp_path / f"w{prefix or 'plain'}.pt"
        state = {prefix + k: v for k, v in net.state_dict().items()}
        torch.save({"state_dict": state} if prefix == "net." else state, path)
        m = create("dncnn", "compact", weights=path, depth=4, width=8)
        assert torch.equal(m(x), net(x))


def test_mismatched_checkpoint_lists_what_does_not_fit(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(DnCNN(3, depth=4, width=8).state_dict(), path)
    with pytest.raises(MethodError, match="shape mismatch|missing keys") as e:
        create("dncnn", "compact", weights=path, depth=4, width=16)
    assert str(path) in str(e.value)
    with pytest.raises(MethodError, match="does not exist"):
        create("dncnn", "compact", weights=tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(MethodError, match=f"^{re.escape(str(bad))} is not a PyTorch checkpoint \\("):
        load_state_dict_file(bad)


def test_random_bytes_are_not_a_checkpoint_without_torchs_unpickling_text(tmp_path):
    bad = tmp_path / "random.pth"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MethodError) as e:
        create("dncnn", "compact", weights=bad)
    msg = str(e.value)
    assert re.fullmatch(re.escape(f"{bad} is not a PyTorch checkpoint (UnpicklingError: ") + r"[^()\n]+\)", msg), msg
    assert "file an issue" not in msg and "weights_only" not in msg
    # a real checkpoint that pickles objects the safe loader refuses is told apart
    pickled = tmp_path / "numpy.pt"
    torch.save({"w": np.zeros(3)}, pickled)
    with pytest.raises(MethodError, match=f"^{re.escape(str(pickled))} is a PyTorch checkpoint holding objects the "
                                          "safe loader refuses \\(Unsupported global: GLOBAL numpy"):
        load_state_dict_file(pickled)


def test_missing_default_weights_say_where_to_put_them(monkeypatch, tmp_path):
    import lightning_modules.registry as R

    monkeypatch.setattr(R, "weight_search_dirs", lambda: [tmp_path])
    with pytest.raises(MethodError, match="DnCNN3.mat.*not found.*put it in"):
        create("dncnn.paper")


def write_matconvnet(path, convs):
    """A MATLAB v7.3 MatConvNet simplenn file as MATLAB writes it: net.layers is a cell of references to structs,
    conv weights stored with reversed axes (O, I, W, H) and trailing singleton dims dropped."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        layer_refs = []
        for i, (w, b) in enumerate(convs):
            for kind in ("conv", "relu") if i < len(convs) - 1 else ("conv",):
                g = refs.create_group(f"L{len(layer_refs)}")
                g["type"] = np.array([ord(ch) for ch in kind], np.uint16)[:, None]
                if kind == "conv":
                    stored = w.transpose(0, 1, 3, 2)  # (O, I, H, W) -> (O, I, W, H)
                    if stored.shape[0] == 1:
                        stored = stored[0]
                    refs[f"W{i}"] = stored
                    refs[f"B{i}"] = b[None, :]
                    g.create_dataset("weights", data=np.array([[refs[f"W{i}"].ref], [refs[f"B{i}"].ref]],
                                                              dtype=h5py.ref_dtype))
                layer_refs.append(g.ref)
        net = f.create_group("net")
        net.create_dataset("layers", data=np.array(layer_refs, dtype=h5py.ref_dtype)[:, None])


def test_matconvnet_loader_on_a_file_the_test_writes(tmp_path):
    ref = DnCNN(1, depth=3, width=4)
    convs = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in ref.model if isinstance(m, torch.nn.Conv2d)]
    write_matconvnet(tmp_path / "m.mat", convs)
    m = create("dncnn", "paper", weights=tmp_path / "m.mat", depth=3, width=4)
    x = torch.rand(1, 1, 16, 16)
    assert torch.allclose(m(x), ref(x))
    with pytest.raises(MethodError, match="not a MATLAB v7.3"):
        load_matconvnet(tmp_path / "absent-or-not-hdf5.mat")


@need_shared("weights", "dncnn3_matconvnet", "DnCNN3.mat")
def test_official_dncnn3_equals_authors_pytorch_conversion():
    state = load_matconvnet(WEIGHTS / "dncnn3_matconvnet" / "DnCNN3.mat")
    npz = np.load(WEIGHTS / "dncnn3_matconvnet" / "dncnn3_kair_keys.npz")
    assert set(state) == set(npz.files)
    for k in npz.files:
        np.testing.assert_array_equal(state[k].numpy(), npz[k])


def test_channel_adaptation_and_padding():
    gray_net = create("dncnn", "compact", pretrained=False, in_channels=1, depth=3, width=4)
    rgb = torch.rand(2, 3, 17, 23)
    out = gray_net(rgb)
    assert out.shape == rgb.shape
    assert torch.allclose(out[:, 1:2], gray_net(rgb[:, 1:2]))  # channel by channel
    colour_net = create("dncnn", "compact", pretrained=False, depth=3, width=4)
    assert colour_net(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    ident = create("jpeg")
    assert torch.equal(ident(rgb), rgb)
