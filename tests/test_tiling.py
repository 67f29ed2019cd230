"""Tiled restoration (lightning_modules/restorers/tiling.py): tiles equal the whole image for every shipped compact
restorer (global parts computed on the whole image where a network has them), the receptive-radius probe, the
memory budget that triggers tiling, and the out-of-memory message."""
import pytest
import torch
from torch import nn

from lightning_modules import RestorerModule, create
from lightning_modules.restorers import tiling

pytestmark = pytest.mark.usefixtures("single_thread")

# method -> measured receptive radius (px) of its compact preset; overlap = radius rounded up to the alignment
COMPACT = {"arcnn": 9, "dncnn": 10, "n2n_unet": 94, "fbcnn": 63, "dagn": 77, "jarcal": 135}


def _both_ways(restorer, extra: int = 37):
    """A photo two tiles high and one and a bit wide (sizes off every grid), restored whole and in tiles."""
    spec = tiling.tiling_spec(restorer)
    core = max(4 * spec.align, 48)
    tile = 2 * spec.overlap + core
    torch.manual_seed(0)
    x = torch.rand(1, 3, 3 * core + 2 * spec.overlap + extra, 2 * core + 2 * spec.overlap + extra + 38)
    return restorer.restore(x), tiling.restore_tiled(restorer, x, tile, spec=spec)


@pytest.mark.parametrize("method", sorted(COMPACT))
def test_tiles_equal_the_whole_image(method):
    restorer = create(method).eval()
    spec = tiling.tiling_spec(restorer)
    assert spec.exact and spec.reach == COMPACT[method]
    assert spec.align % 8 == 0 and spec.align % restorer.size_multiple == 0 and spec.overlap % spec.align == 0
    assert spec.context == (method in {"fbcnn", "dagn", "jarcal"})  # their global part: computed on the whole
    whole, tiled = _both_ways(restorer)
    assert float((whole - tiled).abs().max()) <= 1e-4


def test_fbcnn_with_a_qf_override_is_local_and_exact():
    restorer = create("fbcnn").eval()
    restorer.qf_override = 30
    whole, tiled = _both_ways(restorer)
    assert float((whole - tiled).abs().max()) <= 1e-4


def test_without_the_context_fbcnn_tiles_would_differ():
    """The QF predictor's global average matters: per-tile prediction (what plain tiling does) is not exact."""
    restorer = create("fbcnn").eval()
    spec = tiling.tiling_spec(restorer)
    whole, _ = _both_ways(restorer)
    plain = tiling.TilingSpec(spec.align, spec.overlap, spec.reach, context=False)
    torch.manual_seed(0)
    x = torch.rand(1, 3, whole.shape[-2], whole.shape[-1])
    x[..., : x.shape[-2] // 2, :] = x[..., : x.shape[-2] // 2, :].round()  # halves of different content
    assert float((restorer.restore(x) - tiling.restore_tiled(restorer, x, 2 * spec.overlap + 64,
                                                            spec=plain)).abs().max()) > 1e-4


class Stack(nn.Module):
    """Three 3x3 convs (radius 3), optionally plus the image mean (a global operation)."""

    def __init__(self, global_mean: bool = False):
        super().__init__()
        self.in_channels, self.global_mean = 3, global_mean
        self.body = nn.Sequential(*(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)))

    def forward(self, x):
        y = self.body(x)
        return y + y.mean(dim=(2, 3), keepdim=True) if self.global_mean else y


def test_the_probe_measures_the_receptive_radius():
    spec = tiling.tiling_spec(RestorerModule(Stack()))
    assert (spec.reach, spec.overlap, spec.align, spec.context) == (3, 8, 8, False)


def test_a_global_operation_is_declared_and_not_auto_tiled():
    restorer = RestorerModule(Stack(global_mean=True)).eval()
    assert not tiling.tiling_spec(restorer).exact
    x = torch.rand(1, 3, 100, 120)
    with pytest.warns(UserWarning, match="cannot be tiled exactly: restoring .* whole"):
        out = tiling.restore(restorer, x, budget_gb=1e-6, name="big.png")
    torch.testing.assert_close(out, restorer.restore(x))
    with pytest.warns(UserWarning, match="approximately"):
        tiling.restore(restorer, x, tile=96)


def test_the_budget_tiles_a_large_image_and_the_result_is_the_same(monkeypatch):
    restorer = create("dncnn").eval()
    x = torch.rand(1, 3, 150, 170)
    calls = []
    real = restorer.restore
    monkeypatch.setattr(restorer, "restore", lambda t: calls.append(tuple(t.shape[-2:])) or real(t))
    whole = real(x)
    calls.clear()
    out = tiling.restore(restorer, x)  # default budget: fits, restored whole
    assert calls[-1] == (150, 170)
    calls.clear()
    bpp = tiling.activation_bytes_per_pixel(restorer)
    budget = bpp * 64 * 64 / 2 ** 30  # room for a 64 x 64 tile
    out = tiling.restore(restorer, x, budget_gb=budget)
    assert len(calls) > 4 and max(max(c) for c in calls) <= 64
    assert float((out - whole).abs().max()) <= 1e-4
    monkeypatch.setenv(tiling.BUDGET_ENV, str(budget))  # the environment variable does the same
    calls.clear()
    tiling.restore(restorer, x)
    assert len(calls) > 4


def test_the_memory_estimate_scales_with_pixels():
    restorer = create("arcnn").eval()
    bpp = tiling.activation_bytes_per_pixel(restorer)
    # conv1's 64 float32 channels alone are 256 bytes per pixel; all layers together well under 2 KB
    assert 256 <= bpp <= 2048
    x = torch.rand(1, 3, 256, 256)
    peak = tiling.peak_activation_bytes(restorer, x)
    assert abs(peak - bpp * 256 * 256) / peak < 0.1


def test_the_budget_setting(monkeypatch):
    monkeypatch.delenv(tiling.BUDGET_ENV, raising=False)
    assert tiling.memory_budget() == 2 * 2 ** 30
    assert tiling.memory_budget(0.5) == 2 ** 29
    monkeypatch.setenv(tiling.BUDGET_ENV, "1")
    assert tiling.memory_budget() == 2 ** 30
    monkeypatch.setenv(tiling.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="CARBENCH_MEMORY_BUDGET"):
        tiling.memory_budget()


def test_a_tile_too_small_for_the_overlap_is_refused():
    with pytest.raises(ValueError, match="--tile 40 or more"):
        tiling.restore_tiled(create("dncnn"), torch.rand(1, 3, 70, 90), tile=32)


class OOMNet(nn.Module):
    in_channels = 3

    def __init__(self, error: Exception):
        super().__init__()
        self.error, self.conv = error, nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.shape[-1] > 64:
            raise self.error
        return self.conv(x)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 6000000000 bytes"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.cuda.OutOfMemoryError("CUDA out of memory."),
])
def test_out_of_memory_names_the_image_and_the_options(error):
    restorer = RestorerModule(OOMNet(error)).eval()
    restorer.method_name = "fake"
    with pytest.raises(tiling.RestorationOutOfMemory) as e:
        tiling.restore(restorer, torch.rand(1, 3, 100, 200), name="IMG_0001.jpg (jpeg-q10)")
    msg = str(e.value)
    assert "IMG_0001.jpg" in msg and "fake" in msg and "--tile" in msg and "--memory-budget" in msg
    assert e.value.__cause__ is error
    with pytest.raises(tiling.RestorationOutOfMemory, match="in tiles of 100 px"):  # and when already tiled
        tiling.restore(restorer, torch.rand(1, 3, 100, 200), tile=100, name="IMG_0001.jpg")


def test_other_errors_pass_through():
    restorer = RestorerModule(OOMNet(ValueError("not memory"))).eval()
    with pytest.raises(ValueError, match="not memory"):
        tiling.restore(restorer, torch.rand(1, 3, 100, 200), tile=100)


def test_fidelity_runs_name_the_image_when_memory_runs_out():
    from benchmark.evaluate.fidelity import FidelityEvaluator

    restorer = RestorerModule(OOMNet(RuntimeError("DefaultCPUAllocator: can't allocate memory"))).eval()
    ev = FidelityEvaluator(restorer, 1)
    batch = (torch.zeros(1, 3, 80, 80, dtype=torch.uint8), torch.zeros(1, 3, 80, 80, dtype=torch.uint8),
             {"name": ["kodim01"], "key": ["jpeg-q10"], "index": torch.tensor([0]), "bpp": torch.tensor([1.0])})
    with pytest.raises(tiling.RestorationOutOfMemory, match="kodim01.*--tile"):
        ev.test_step(batch, 0)
