"""Everything with weights: restorers (one file per family), their registry and shipped checkpoints."""
from .registry import MethodError, Preset, available, create, register, resolve_preset
from .restorer import RestorerModule

__all__ = ["MethodError", "Preset", "RestorerModule", "available", "create", "register", "resolve_preset"]
