"""Inference forwards at this CPU's rate: one measured plan per network (`benchmark bench --forwards`).

A plan says how a network's forward runs at test time, each choice made by measurement on this kind of CPU, never
assumed (on a 2-core CPU, batch 16 was slower per image than batch 4, and channels-last doubled one network's speed
and slowed another's):

- `memory_format`: `contiguous` (NCHW) or `channels_last` (oneDNN's native layout: a copy of the weights in it,
  inputs converted on the fly; outputs come back NCHW);
- `jit`: run a traced, frozen graph (`torch.jit.freeze` + `torch.jit.optimize_for_inference`: conv/BN folding and
  oneDNN weight pre-packing). A trace bakes in its input's shape, so one graph is built per input shape (at most
  `JIT_SHAPES`, traced when a shape comes a second time; others run eagerly), and each new graph is checked against the eager forward on its first input
  (max |difference| <= `EQUAL_TOL` x max(1, max |output|), else the network stays eager and a warning says so): a fast path that differed
  would be a different method;
- `batch`: the most images fed to one forward (the rest of the batch is split into chunks of that size).

Plans live in `forward_plans.json` beside this file, written by `benchmark bench --forwards --record` together
with every candidate's timing, the thread count, torch version and CPU they were measured on. A network without a
plan runs plainly. `CARBENCH_FORWARD=plain` (or `forward_mode("plain")`) turns every plan off: the bench runs both
paths side by side, and a user can rule the plans out when chasing a difference.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

PLANS_FILE = Path(__file__).resolve().parent / "forward_plans.json"
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
JIT_SHAPES = 4  # traced graphs kept per network (LRU by input shape): crops and detector inputs have one shape
EQUAL_TOL = 1e-5  # a fast path gives the plain path's outputs to this, relative to max(1, |output|): float32 sums
# reassociated by another kernel differ by a few ulps of the output's scale (logits of ~15: ~1e-6 each)
MODES = ("tuned", "plain")
_mode = threading.local()


@dataclass(frozen=True)
class ForwardPlan:
    memory_format: str = "contiguous"
    jit: bool = False
    batch: int | None = None  # None: the whole batch in one forward

    def __post_init__(self):
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format {self.memory_format!r}: use one of {sorted(MEMORY_FORMATS)}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch {self.batch}: must be >= 1 (or None)")

    @property
    def is_plain(self) -> bool:
        return self == PLAIN

    def label(self) -> str:
        parts = [self.memory_format.replace("contiguous", "nchw").replace("channels_last", "cl")]
        parts += ["jit"] if self.jit else []
        return "+".join(parts) + f" b{self.batch or 'all'}"


PLAIN = ForwardPlan()
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # parameters, buffers, submodules, hooks, `training`


def forward_mode_now() -> str:
    """'tuned' (plans apply) or 'plain' (every network runs its plain forward): `forward_mode` or $CARBENCH_FORWARD."""
    mode = getattr(_mode, "value", None) or os.environ.get("CARBENCH_FORWARD", "tuned")
    if mode not in MODES:
        raise ValueError(f"CARBENCH_FORWARD={mode!r}: use one of {MODES}")
    return mode


@contextlib.contextmanager
def forward_mode(mode: str):
    """Run a block with the plans on ('tuned') or off ('plain'), e.g. to time both paths in one process."""
    if mode not in MODES:
        raise ValueError(f"forward mode {mode!r}: use one of {MODES}")
    before = getattr(_mode, "value", None)
    _mode.value = mode
    try:
        yield
    finally:
        _mode.value = before


def load_plans(path: str | os.PathLike = PLANS_FILE) -> dict[str, ForwardPlan]:
    """{network name: plan} from the plans file (missing file: no plans)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    return {name: ForwardPlan(**entry["plan"]) for name, entry in data.get("plans", {}).items()}


_PLANS: dict[str, ForwardPlan] | None = None


def plan_for(name: str) -> ForwardPlan:
    """The recorded plan of a network (`dncnn.compact`, `efficientnet_lite0`, ...); PLAIN where none is recorded or
    the mode is 'plain'."""
    global _PLANS
    if forward_mode_now() == "plain":
        return PLAIN
    if _PLANS is None:
        _PLANS = load_plans()
    return _PLANS.get(name, PLAIN)


def write_plans(entries: dict[str, dict], context: dict, path: str | os.PathLike = PLANS_FILE) -> None:
    """Write the plans file atomically: {name: {"plan": asdict(plan), "timings_ms": {...}, ...}} plus the context
    (threads, torch, CPU) they were measured in."""
    global _PLANS
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"context": context, "plans": entries}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    _PLANS = None


def plan_entry(plan: ForwardPlan, **measured) -> dict:
    return {"plan": asdict(plan), **measured}


class PlannedForward:
    """`net`'s forward under a plan (not an nn.Module, so it adds no keys to a state dict): memory format, batch
    chunks, traced graphs per input shape checked against the eager forward. Call it under no_grad/inference_mode."""

    def __init__(self, net: nn.Module, plan: ForwardPlan, name: str = ""):
        self.plan, self.name, self.net = plan, name or type(net).__name__, net
        self.graphs: OrderedDict[tuple, object] = OrderedDict()
        self.seen: dict[tuple, int] = {}
        self.jit_ok = plan.jit
        self._copy, self._copied_at = None, None

    @property
    def eager(self) -> nn.Module:
        """The network in the plan's layout: the module itself (NCHW), or a channels-last copy remade whenever the
        module's weights change (their in-place version counters: an optimizer step, a load_state_dict). The module
        itself is never converted: it stays what it was for training, saving and the plain path."""
        if self.plan.memory_format == "contiguous":
            return self.net
        version = _weights_version(self.net)
        if self._copy is None or self._copied_at != version:
            # made as normal tensors even inside inference_mode (Lightning's test loop): a network that takes
            # gradients in its forward (dual priors) cannot use inference-mode weights
            with torch.inference_mode(False):
                self._copy = copy.deepcopy(self.net).to(memory_format=MEMORY_FORMATS[self.plan.memory_format])
            self._copied_at = version
        # settings given to the module after the copy (FBCNN's qf_override, tiling's `_tile_state`) reach the copy
        for k, v in vars(self.net).items():
            if k not in _MODULE_INTERNALS:
                self._copy.__dict__[k] = v
        return self._copy

    def __call__(self, x):
        if not isinstance(x, torch.Tensor):  # e.g. a detector's list of images: the layout alone applies
            return self.eager(x)
        b = self.plan.batch
        if b is not None and x.shape[0] > b:
            return _cat([self._one(x[i:i + b]) for i in range(0, x.shape[0], b)])
        return self._one(x)

    def _one(self, x: torch.Tensor):
        if self.plan.memory_format == "channels_last" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # a network fed per-call state (tiling's `_tile_state`: the whole image's global context) runs eagerly: a
        # graph would freeze the state of the call it was traced on
        fn = self._graph(x) if self.jit_ok and getattr(self.net, "_tile_state", None) is None else None
        return _as_contiguous((fn or self.eager)(x))

    def _graph(self, x: torch.Tensor):
        # a frozen graph holds the weights and the network's settings (e.g. FBCNN's qf_override) as constants: the
        # weights' in-place version counters and the top module's scalar attributes key it too
        settings = tuple(sorted((k, v) for k, v in vars(self.eager).items()
                                if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))))
        key = (tuple(x.shape), x.dtype, _weights_version(self.net), settings)
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return self.graphs[key]
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] < 2:  # trace a shape seen twice: whole photos of one-off sizes are not worth a trace
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings: the shape is the graph's key, by design
                graph = torch.jit.optimize_for_inference(torch.jit.freeze(
                    torch.jit.trace(self.eager, x, check_trace=False)))
            diff = relative_difference(graph(x), self.eager(x))
        except Exception as e:  # noqa: BLE001 -- an untraceable network runs eagerly
            self.jit_ok = False
            lines = str(e).strip().splitlines() or [""]
            # TorchScript puts the interpreter's stack before the error: its last line is the reason
            reason = (lines[-1] if lines[0].startswith("The following operation failed") else lines[0])[:200]
            warnings.warn(f"{self.name}: traced forward unavailable ({type(e).__name__}: {reason}); running eagerly",
                          stacklevel=3)
            return None
        if diff > EQUAL_TOL:
            self.jit_ok = False
            warnings.warn(f"{self.name}: traced forward differs from the eager one by {diff:.1e} > {EQUAL_TOL} on "
                          f"input {tuple(x.shape)}; running eagerly", stacklevel=3)
            return None
        self.graphs[key] = graph
        if len(self.graphs) > JIT_SHAPES:
            self.graphs.popitem(last=False)
        return graph


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def relative_difference(a, b) -> float:
    """max |a - b| / max(1, max |b|) over every tensor of two outputs (nested tuples/lists/dicts); inf when their
    structure or shapes differ."""
    fa, fb = _flat(a), _flat(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return float("inf")
    return max((float((x.float() - y.float()).abs().max()) / max(1.0, float(y.float().abs().max()))
                for x, y in zip(fa, fb) if x.numel()), default=0.0)


def _as_contiguous(out):
    if isinstance(out, torch.Tensor):
        return out.contiguous()
    if isinstance(out, tuple):
        return tuple(_as_contiguous(o) for o in out)
    if isinstance(out, list):
        return [_as_contiguous(o) for o in out]
    return out


def _cat(outs: list):
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outs)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([o[i] for o in outs]) for i in range(len(first)))
    raise TypeError(f"cannot join batch chunks of {type(first).__name__} outputs")


def planned(net: nn.Module, name: str, plan: ForwardPlan | None = None):
    """A callable running `net` under `plan` (default: the recorded plan of `name`); `net` itself when the plan is
    plain, so the plain path is exactly the module's own forward."""
    plan = plan_for(name) if plan is None else plan
    return net if plan.is_plain else PlannedForward(net, plan, name)


def _weights_version(net: nn.Module) -> tuple:
    """Changes whenever a weight or buffer is modified in place or replaced."""
    return tuple((id(t), t._version) for t in (*net.parameters(), *net.buffers()))


def plan_task_model(net: nn.Module, name: str, plan: ForwardPlan | None = None):
    """The callable a task model runs as, under its plan. A detector that letterboxes and decodes around a dense
    network (`dense_net`: CenterNet, NanoDet) gets the plan on that network, fed one fixed-size tensor; anything
    else is planned whole (a list-taking detector then gets the memory format alone)."""
    inner = getattr(net, "dense_net", None)
    if isinstance(inner, nn.Module):
        net.__dict__["planned_dense"] = planned(inner, name, plan)  # not a submodule: no state-dict keys
        return net
    return planned(net, name, plan)


def dense(detector: nn.Module):
    """The detector's dense network as its plan runs it (set by `plan_task_model`), else the network itself."""
    return detector.__dict__.get("planned_dense") or detector.dense_net
