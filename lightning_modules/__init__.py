"""Everything with weights: restorers (one file per family), their registry and shipped checkpoints.

The names below are loaded on first use (PEP 562), so a light submodule (`lightning_modules.registry`'s name table,
`lightning_modules.task_model_names`) can be imported without torch and Lightning: the command line checks its
arguments before the heavy imports."""
from __future__ import annotations

import importlib

__all__ = ["MethodError", "Preset", "RestorerModule", "available", "create", "register", "resolve_preset"]
_HOME = {"RestorerModule": "lightning_modules.restorers.base"}  # the others live in lightning_modules.registry


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "lightning_modules.registry")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
