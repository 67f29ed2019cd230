"""Evaluation: expand a request into jobs (method x dataset, one dataloader per corruption), run each through
Lightning, collect rows. Fidelity is a task like the others: `run` takes either request and returns rows per board.

- `fidelity`: `FidelityRequest`, `run_fidelity`, `FidelityEvaluator` (restore, score per image).
- `tasks`: `TaskRequest`, `run_tasks`, `TaskEvaluator` (corrupt -> restore | de-drift | nothing -> task model).
- `common`: job failures, progress bars; `score_cache`: cached reference scores; `efficiency`: params/FLOPs/latency.
"""
from __future__ import annotations


def run(request) -> tuple[dict[str, list[dict]], list]:
    """Any request -> ({board name: rows}, failures): `fidelity` rows for a `FidelityRequest`, one board per task
    for a `TaskRequest`."""
    from benchmark.evaluate.fidelity import FidelityRequest, run_fidelity
    from benchmark.evaluate.tasks import TaskRequest, run_tasks

    if isinstance(request, FidelityRequest):
        rows, failures = run_fidelity(request)
        return {"fidelity": rows}, failures
    if isinstance(request, TaskRequest):
        return run_tasks(request)
    raise TypeError(f"unknown request {type(request).__name__}: use FidelityRequest or TaskRequest")
