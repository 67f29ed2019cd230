"""The reference score cache: a warm re-run serves the `jpeg` rows without scoring, with identical values; a newer
metric version or a damaged entry is scored again, never served."""
from unittest import mock

import numpy as np
import pytest
import torch

from benchmark import metrics

from benchmark.evaluate import fidelity as runner
from benchmark.evaluate.score_cache import ReferenceScores
from datamodules.corruptions import Corruption, CorruptionCache, apply
from datamodules.sources import ImageRecord

from .conftest import smooth_image

FIELDS = ("psnr", "ssim", "psnrb", "bpp", "n_images")


@pytest.fixture
def records(rng):
    return [ImageRecord(f"img{i}", smooth_image(rng, 48 + 8 * i, 64, 3)) for i in range(3)]


def _run(records, tmp_path, profile):
    req = runner.FidelityRequest(methods=[], corruptions=[Corruption("jpeg", (q,)) for q in (10, 30)],
                                 datasets=["samples"], cache_dir=str(tmp_path), progress=False)
    with mock.patch("datamodules.fidelity.resolve_dataset", lambda *a, **k: list(records)):
        rows, failures = runner.run_fidelity(req, profile)
    assert not failures
    return [tuple(r[k] for k in FIELDS) for r in rows]


def test_warm_rerun_serves_identical_reference_rows_without_scoring(records, tmp_path):
    cold_profile, warm_profile = {}, {}
    cold = _run(records, tmp_path, cold_profile)
    assert cold_profile["cached_reference_jobs"] == 0
    with mock.patch("benchmark.evaluate.fidelity.FidelityEvaluator.test_step", side_effect=AssertionError("scored again")):
        warm = _run(records, tmp_path, warm_profile)
    assert warm_profile["cached_reference_jobs"] == 1 and warm == cold
    # the served means are the metrics' own per-image means
    per_image = [float(metrics.psnr(torch.from_numpy(apply(r.pixels, Corruption("jpeg", (10,)))[0]).permute(2, 0, 1)[None],
                                    torch.from_numpy(r.pixels).permute(2, 0, 1)[None])) for r in records]
    assert warm[0][0] == pytest.approx(np.mean(per_image), abs=1e-12)


def test_a_new_metric_version_or_a_damaged_entry_is_scored_again(records, tmp_path):
    _run(records, tmp_path, {})
    cache = ReferenceScores(CorruptionCache(tmp_path), "rgb")
    corruptions = [Corruption("jpeg", (10,)), Corruption("jpeg", (30,))]
    assert cache.results(records, corruptions) is not None
    with mock.patch("benchmark.evaluate.score_cache.METRICS_VERSION", metrics.METRICS_VERSION + 1):
        assert cache.results(records, corruptions) is None  # older kernels' values are not served
    cache._path(records[1].digest, corruptions[1]).write_text("{not json")
    assert cache.results(records, corruptions) is None
    profile = {}
    _run(records, tmp_path, profile)  # re-scored and re-stored
    assert profile["cached_reference_jobs"] == 0 and cache.results(records, corruptions) is not None
    assert ReferenceScores(CorruptionCache(tmp_path, enabled=False), "rgb").results(records, corruptions) is None


def test_clean_and_direct_task_rows_are_served_from_the_cache_with_identical_values(tmp_path):
    from benchmark.evaluate import tasks as task_runner

    def run(tmp, **kw):
        req = task_runner.TaskRequest(tasks=["classification", "segmentation"], methods=["jpeg"],
                                      corruptions=[Corruption("jpeg", (10,))], n_images=8, batch_size=8,
                                      cache_dir=str(tmp), progress=False, **kw)
        rows, failures = task_runner.run_tasks(req)
        assert not failures
        return {t: [(r["method"], r["codec"], r["qf"], r["metric"], r["value"], r["n_images"]) for r in rs]
                for t, rs in rows.items()}

    cold = run(tmp_path)
    assert {m for rs in cold.values() for m, *_ in rs} == {"clean", "direct"}
    with mock.patch("benchmark.evaluate.tasks.TaskEvaluator.test_step", side_effect=AssertionError("ran the direct job")):
        assert run(tmp_path) == cold
    # other scenes (another seed) are other content: scored, not served
    with pytest.raises(AssertionError):
        with mock.patch("benchmark.evaluate.tasks.TaskEvaluator.test_step", side_effect=AssertionError("ran")):
            run(tmp_path, seed=1)
