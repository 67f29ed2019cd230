"""timm-style method registry: `register` a builder with its presets, `create("name[.preset]")`, `available("d*")`.

Outside packages add methods through the `carbench.methods` entry-point group: each entry point is a callable
that is imported and called once (it calls `register`).
"""
from __future__ import annotations

import fnmatch
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where weights are read: the names and presets here need no torch
    import torch


class MethodError(ValueError):
    """Unknown method/preset or unusable weights; the message names the culprit."""


@dataclass
class Preset:
    """One row of a method's defaults table: constructor kwargs plus where its weights come from."""
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None  # file under lightning_modules/checkpoints/, or an absolute path
    loader: Callable[[str], dict] | None = None  # foreign format -> state dict
    description: str = ""
    self_contained: bool = False  # the builder returns a ready network (loads its own weights, or has none)


@dataclass
class MethodEntry:
    name: str
    build: Callable[..., torch.nn.Module]
    presets: dict[str, Preset]
    default_preset: str
    description: str = ""
    module_cls: type | None = None  # LightningModule class; RestorerModule when None


_REGISTRY: dict[str, MethodEntry] = {}
# the built-in families: one module each, loaded on first use like the entry-point plugins (by name: the registry
# imports no family, so the families' `register` imports make no circle)
BUILTIN_MODULES = tuple(f"lightning_modules.restorers.{m}" for m in (
    "arcnn", "dagn", "dcsc", "dncnn", "dualpriors", "fbcnn", "identity", "jarcal", "n2n_unet", "urie")) + (
    "lightning_modules.dedrifters.afd",)
_plugins_loaded = False
# the built-in methods and their presets, known without importing a family (torch, Lightning):
# the command line checks --method/--preset against it before any heavy import (`check_name`);
# tests/test_usage_errors.py keeps it equal to what the families register
BUILTIN_PRESETS: dict[str, tuple[str, ...]] = {
    "afd": ("compact", "compact_pixels", "compact_shuffled", "compact_pooled", "compact_fenet", "paper", "lite0",
            "lite0_ood", "lite0_in", "lite0_ood_clean20", "lite0_ood_kl", "lite0_ood_d3", "lite0_ood_qf10",
            "paper_repvgg"),
    "arcnn": ("compact", "paper"),
    "dagn": ("compact", "paper", "paper_baseline", "paper_w_cigm", "paper_w_csgm", "paper_w_cfm"),
    "dcsc": ("paper",),
    "degradation_prior": ("compact", "lite0", "lite0_ood", "lite0_in", "paper"),
    "dncnn": ("compact", "paper"),
    "dualpriors": ("compact", "paper"),
    "fbcnn": ("compact", "paper", "paper_gray"),
    "jarcal": ("compact", "paper", "paper_no_encoder", "paper_no_pretrain", "paper_concat", "paper_concat_no_effm",
               "paper_no_fft"),
    "jpeg": ("none",),
    "jpeg_finetune": ("compact", "lite0", "lite0_ood", "lite0_in_labels", "lite0_in_distil", "paper"),
    "n2n_unet": ("compact", "compact_qf10", "paper"),
    "urie": ("paper",),
}
_EXTERNAL: dict[str, str] = {}  # `file.py:Class` spec -> registered name
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def register(name: str, presets: dict[str, Preset], default_preset: str | None = None, description: str = "",
             module_cls: type | None = None):
    """Decorator for a network builder `build(**kwargs) -> nn.Module`."""
    def deco(build):
        _REGISTRY[name] = MethodEntry(name, build, presets, default_preset or next(iter(presets)), description,
                                      module_cls)
        return build
    return deco


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib

    for module in BUILTIN_MODULES:  # built-ins register on import, found by name as plugins are
        importlib.import_module(module)

    for ep in metadata.entry_points(group="carbench.methods"):
        try:
            ep.load()()
        except Exception as e:  # a broken plugin must not take the built-ins down
            warnings.warn(f"carbench.methods plugin {ep.name!r} failed to load: {e}", stacklevel=2)


def load_external(spec: str) -> str:
    """`path/to/file.py:ClassName` or `package.module:ClassName` -> registered under `classname` (preset `none`).
    The class (or factory) is called without arguments and must return a ready network: it loads its own weights
    (or pass --weights FILE)."""
    import importlib
    import importlib.util

    if _EXTERNAL.get(spec) in _REGISTRY:  # imported once per process: the user's module is not executed again per create()
        return _EXTERNAL[spec]
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise MethodError(f"method {spec!r}: expected path/to/file.py:ClassName or package.module:ClassName")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise MethodError(f"method {spec!r}: file {path} does not exist")
            mod_spec = importlib.util.spec_from_file_location(f"carbench_external_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except MethodError:
        raise
    except Exception as e:  # the user's code: name it and what went wrong
        raise MethodError(f"method {spec!r}: importing {target} failed: {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise MethodError(f"method {spec!r}: {target} has no {attr!r}")
    name = attr.lower()
    register(name, presets={"none": Preset(self_contained=True, description=f"external: {spec}")},
             description=f"external method {spec}")(getattr(module, attr))
    _EXTERNAL[spec] = name
    return name


def get_entry(name: str) -> MethodEntry:
    _load_plugins()
    if ":" in name:
        name = load_external(name)
    if name not in _REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _plugin_entry_points() -> bool:
    """Whether any `carbench.methods` entry point is installed (read from the package metadata, nothing imported)."""
    return any(True for _ in metadata.entry_points(group="carbench.methods"))


def check_name(name: str, preset: str | None = None) -> bool:
    """Refuse a `name[.preset]` that cannot resolve, from the name tables alone: no method family is imported (no
    torch, no Lightning), so the command line answers a typo at once. Raises MethodError with the message
    `resolve_preset` would give. -> True: it resolves; False: only the full registry can tell (an external
    `file.py:Class` spec, or a name a `carbench.methods` plugin may register: `resolve_preset` decides)."""
    if ":" in name:  # an external spec: its form and its file are checked here, its import is the registry's
        target, _, attr = name.rpartition(":")
        if not target or not attr:
            raise MethodError(f"method {name!r}: expected path/to/file.py:ClassName or package.module:ClassName")
        if target.endswith(".py") and not Path(target).is_file():
            raise MethodError(f"method {name!r}: file {Path(target)} does not exist")
        return False
    base, _, dotted = name.partition(".")
    if dotted and preset and dotted != preset:
        raise MethodError(f"method {name!r} names preset {dotted!r} but preset={preset!r} was also given")
    chosen = dotted or preset
    presets = tuple(_REGISTRY[base].presets) if base in _REGISTRY else BUILTIN_PRESETS.get(base)
    if presets is not None and (not chosen or chosen in presets):
        return True
    if not _plugins_loaded and _plugin_entry_points():  # a plugin may register it (or more presets of it)
        return False
    if presets is None:
        raise MethodError(f"unknown method {base!r}; available: {', '.join(sorted({*BUILTIN_PRESETS, *_REGISTRY}))}")
    raise MethodError(f"method {base!r} has no preset {chosen!r}; presets: {', '.join(presets)}")


def split_name(name: str, preset: str | None = None) -> tuple[str, str | None]:
    """`dncnn.paper` -> ('dncnn', 'paper'); an explicit preset must agree with the dotted one."""
    if ":" in name:  # an external `file.py:Class` spec: its dots are not a preset
        return load_external(name), preset
    base, _, dotted = name.partition(".")
    if dotted and preset and dotted != preset:
        raise MethodError(f"method {name!r} names preset {dotted!r} but preset={preset!r} was also given")
    return base, dotted or preset


def available(pattern: str = "*") -> list[str]:
    """`method.preset` names matching a wildcard, sorted."""
    _load_plugins()
    names = [f"{m}.{p}" for m, e in _REGISTRY.items() for p in e.presets]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.split(".")[0], pattern))


def resolve_preset(name: str, preset: str | None = None) -> tuple[MethodEntry, str, Preset]:
    base, preset = split_name(name, preset)
    entry = get_entry(base)
    preset = preset or entry.default_preset
    if preset not in entry.presets:
        raise MethodError(f"method {base!r} has no preset {preset!r}; presets: {', '.join(entry.presets)}")
    return entry, preset, entry.presets[preset]


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A carbench/Lightning checkpoint or a plain state dict (`.pt`, `.pth`, `.ckpt`)."""
    path = Path(path)
    if not path.is_file():
        raise MethodError(f"weights file {path} does not exist")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MethodError(unreadable_checkpoint(path, e)) from e
    lightning = isinstance(obj, dict) and "pytorch-lightning_version" in obj
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MethodError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    if lightning and any(k.startswith("net.") for k in obj):
        # a LightningModule's checkpoint: the network is `net.*`; training-only parts (DAGN's stage-1 decoders,
        # discriminator, QF predictor) are not part of the restorer
        obj = {k: v for k, v in obj.items() if k.startswith("net.")}
    # Lightning prefixes the network's keys with "net."; DataParallel with "module."
    for prefix in ("net.", "module."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def unreadable_checkpoint(path, e: Exception) -> str:
    """What a file torch.load refused is, in one line. torch's own text for a file that is not a checkpoint at all
    talks about weights_only and asks to file an issue, which misleads: keep only its reason."""
    text = str(e)
    reason = text.split("WeightsUnpickler error:", 1)[-1].strip()
    reason = reason.split("\n\n")[0].strip() or type(e).__name__
    if "Unsupported global" in reason:  # a real checkpoint that pickles objects the safe loader refuses
        reason = reason.split(" was not an allowed global")[0]
        return (f"{path} is a PyTorch checkpoint holding objects the safe loader refuses ({reason}); save its "
                f"state dict alone (torch.save(model.state_dict(), ...))")
    return f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {' '.join(reason.split())[:200]})"


def mismatch_report(own: dict, state: dict, optional_suffixes: tuple[str, ...] = ()) -> list[str]:
    """What keeps `state` from loading strictly into a model whose state dict is `own` (empty: it fits).
    Keys ending in `optional_suffixes` may be absent from the file."""
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(optional_suffixes))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        parts.append(f"shape mismatches {shapes[:4]}{' ...' if len(shapes) > 4 else ''}")
    return parts


def load_weights_into(net: torch.nn.Module, state: dict, culprit: str) -> None:
    """Strict load with an error that lists what does not fit."""
    parts = mismatch_report(net.state_dict(), state)
    if parts:
        raise MethodError(f"weights {culprit} do not match the network: " + "; ".join(parts))
    net.load_state_dict(state)


def user_weights_dir() -> Path:
    """The user's weights folder: $CARBENCH_WEIGHTS if set, else ~/.cache/carbench/weights (where `benchmark
    train` saves by default)."""
    env = os.environ.get("CARBENCH_WEIGHTS")
    return Path(env) if env else Path.home() / ".cache" / "carbench" / "weights"


def weight_search_dirs() -> list[Path]:
    """Where a preset's default weights file is looked for, in order."""
    dirs = [CHECKPOINT_DIR]
    if os.environ.get("CARBENCH_WEIGHTS"):
        dirs.append(Path(os.environ["CARBENCH_WEIGHTS"]))
    dirs.append(Path.home() / ".cache" / "carbench" / "weights")
    shared = Path(__file__).resolve().parents[2] / "shared" / "weights"
    if shared.is_dir():
        dirs.append(shared)
    return dirs


def find_weights(filename: str) -> Path | None:
    for d in weight_search_dirs():
        for candidate in (d / filename, *sorted(d.glob(f"*/{filename}"))):
            if candidate.is_file():
                return candidate
    return None


def checkpoint_net_kwargs(path: str | os.PathLike) -> dict:
    """The `net_kwargs` a carbench training run recorded in its checkpoint ({} for other files)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
        return {}
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- unreadable files are reported by the loader that follows
        return {}
    meta = obj.get("carbench") if isinstance(obj, dict) else None
    return dict(meta.get("net_kwargs") or {}) if isinstance(meta, dict) else {}


def create(name: str, preset: str | None = None, weights: str | os.PathLike | None = None,
           pretrained: bool = True, **overrides):
    """A ready LightningModule for `name` (`method` or `method.preset`).

    weights: None -> the preset's default weights file, looked for in `weight_search_dirs()`; a path -> that
    file (the preset's foreign-format loader reads files that are not PyTorch checkpoints).
    pretrained=False -> random initialisation (training from scratch).
    """
    from lightning_modules.restorers.base import RestorerModule

    entry, preset_name, preset = resolve_preset(name, preset)
    # a carbench checkpoint says how its network was built (e.g. a de-drifter trained at another depth)
    built_as = checkpoint_net_kwargs(weights) if weights is not None else {}
    kwargs = {**preset.kwargs, **built_as, **overrides}
    net = entry.build(**kwargs)
    source = weights if weights is not None else (preset.weights if pretrained else None)
    if source is None and pretrained and not preset.self_contained and any(True for _ in net.parameters()):
        # never score a random network as if it were the method
        raise MethodError(f"{entry.name}.{preset_name} has no published or shipped weights: pass --weights FILE "
                          f"(or train it: benchmark train --method {entry.name} --preset {preset_name})")
    if source is not None:
        path = Path(source)
        if weights is None:
            found = find_weights(preset.weights)
            if found is None:
                where = ", ".join(str(d) for d in weight_search_dirs())
                raise MethodError(f"{entry.name}.{preset_name}: weights file {preset.weights!r} not found; put it in "
                                  f"one of: {where} (or set $CARBENCH_WEIGHTS, or pass --weights FILE)"
                                  + (f" -- {preset.description}" if preset.description else ""))
            path = found
        elif not path.is_file():
            raise MethodError(f"{entry.name}.{preset_name}: weights file {path} does not exist")
        if preset.loader is not None and path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
            state = preset.loader(str(path))
        else:
            state = load_state_dict_file(path)
        load_weights_into(net, state, str(path))
    cls = entry.module_cls or RestorerModule
    module = cls(net)
    module.method_name, module.preset_name = entry.name, preset_name
    # a forward plan was measured for the preset's own network: one built with other kwargs runs plainly
    if not overrides and all(preset.kwargs.get(k) == v for k, v in built_as.items()):
        module.forward_plan = f"{entry.name}.{preset_name}"
    module.weights_path = str(source) if source is not None else ""
    module.weights_file = str(path) if source is not None else ""  # the file read (rows hash it: weights_sha256)
    return module
