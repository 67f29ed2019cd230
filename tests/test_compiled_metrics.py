"""The opt-in fused PSNR / PSNR-B kernels (`benchmark.metrics.compile_kernels`) give the numpy path's values exactly,
serve the calls they claim (grad, no-grad and inference mode; any thread count), and flag NaN/inf as the numpy path.
The reference values are the numpy kernels', themselves tested against scikit-image in test_metrics."""
import numpy as np
import pytest
import torch

from benchmark.metrics import compiled, psnr, psnrb


@pytest.fixture(scope="module")
def kernels():
    compiled.disable()
    yield compiled.compile_kernels()  # a few seconds once (inductor builds C++ with the system compiler)
    compiled.disable()


def _numpy_values(fn, *args, **kw):
    served = compiled._state["sse"]
    compiled.disable()
    try:
        return fn(*args, **kw)
    finally:
        compiled._state["sse"] = served


def _pairs():
    g = torch.Generator().manual_seed(0)
    h, w = 37, 53  # 5883 values per plane: not a multiple of the kernel's 256-value rows
    clean = torch.rand(2, 3, h, w, generator=g)
    noisy = (clean + 0.1 * torch.randn(2, 3, h, w, generator=g))  # outside [0, 1] too: clamped
    # exact rounding ties: x * 255 == k + 0.5 in float32 for these x (half to even decides)
    ties = torch.tensor([np.float32((k + 0.5) / 255) for k in range(255)], dtype=torch.float32)
    ties = ties[(ties * 255) == torch.arange(255) + 0.5]
    assert ties.numel() > 10
    noisy.view(-1)[:ties.numel()] = ties
    u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return [
        (noisy, clean),  # float32 [0, 1]
        (noisy.double(), clean.double()),
        (u8(noisy), u8(clean)),
        (noisy.contiguous(memory_format=torch.channels_last), clean),  # another layout: the numpy path serves it
        (u8(noisy), clean),  # mixed types
        (noisy[:, :1], clean[:, :1]),  # gray
    ]


@pytest.mark.parametrize("fn", [psnr, psnrb], ids=["psnr", "psnrb"])
@pytest.mark.parametrize("channels", ["rgb", "y"])
def test_fused_values_equal_the_numpy_path_exactly(kernels, fn, channels):
    calls = compiled._state["calls"]
    for p, t in _pairs():
        expected = _numpy_values(fn, p, t, channels=channels)
        got = fn(p, t, channels=channels)
        assert torch.equal(got, expected), (p.dtype, p.shape)
    assert compiled._state["calls"] > calls  # the fused kernel served (most of) them


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference", "two_threads"])
def test_fused_kernel_serves_every_mode(kernels, mode):
    p, t = _pairs()[0]
    expected = _numpy_values(psnr, p, t)
    threads = torch.get_num_threads()
    calls = compiled._state["calls"]
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference": torch.inference_mode}.get(mode)
    try:
        if mode == "two_threads":
            torch.set_num_threads(2)
            got = psnr(p, t)
        else:
            with ctx():
                got = psnr(p.clone(), t.clone())  # inference tensors in inference mode
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, expected)
    assert compiled._state["calls"] == calls + 2  # one call per image of the batch: not the numpy fallback
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", [0, 1])
def test_fused_kernel_flags_nan_and_inf(kernels, bad, which):
    p, t = (x.clone() for x in _pairs()[0])
    (p, t)[which].view(-1)[1000] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        psnr(p, t)
    with pytest.raises(ValueError, match="NaN or inf"):
        _numpy_values(psnr, p, t)


def test_kernels_are_off_by_default_and_switched_by_the_environment(monkeypatch):
    compiled.disable()
    monkeypatch.setitem(compiled._state, "env_checked", False)
    monkeypatch.delenv(compiled.ENV, raising=False)
    assert not compiled.enabled()
    monkeypatch.setitem(compiled._state, "env_checked", False)
    monkeypatch.setenv(compiled.ENV, "compiled")
    try:
        assert compiled.enabled()
    finally:
        compiled.disable()
