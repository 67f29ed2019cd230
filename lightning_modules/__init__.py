"""Everything with weights: restorers (one file per family), their registry and shipped checkpoints."""
from lightning_modules.registry import MethodError, Preset, available, create, register, resolve_preset
from lightning_modules.restorers.base import RestorerModule

__all__ = ["MethodError", "Preset", "RestorerModule", "available", "create", "register", "resolve_preset"]
