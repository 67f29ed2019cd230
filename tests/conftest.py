import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("CARBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TEST_DATA = SHARED / "data" / "test"
WEIGHTS = SHARED / "weights"
PUBLISHED = SHARED / "published"


def need_shared(*parts):
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (real data lives in ../shared)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # every test gets its own corruption cache: no test sees another's files
    monkeypatch.setenv("CARBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def smooth_image(rng, h=64, w=80, c=3):
    """A natural-ish image: smooth gradients plus texture, so JPEG has something to destroy."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    chans = [base + 30 * np.sin((xx + 13 * k) / (3.0 + k)) + rng.normal(0, 8, (h, w)) for k in range(c)]
    img = np.stack(chans, -1) if c > 1 else chans[0]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny forwards: intra-op threads only contend (on a busy 2-core machine 2 threads were up to 100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _builtins_registered():
    # tests that monkeypatch a copy of the registry must copy it with the built-ins in it, whatever runs first
    from lightning_modules.registry import _load_plugins

    _load_plugins()
