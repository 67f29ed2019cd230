"""Efficiency of restorer presets: parameters, FLOPs (torch's FlopCounterMode) and CPU latency at one input size,
written to `leaderboards/efficiency.csv` next to the papers' own tables (source=paper rows).

Counting conventions, so rows compare: `gflops` counts a multiply-add as 2 FLOPs (FlopCounterMode's convention);
`gmacs` = gflops / 2 is what most CAR papers (thop/ptflops) print as "FLOPs". Latency is the median wall time of
`repeat` forward passes (batch 1, no grad) after one warm-up, with the machine's torch thread count; where CUDA is
available, `gpu_latency_ms` is the same on the GPU (CUDA events). Cost is the network as it runs at test time.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch

from . import leaderboard, published

EFFICIENCY_KEY = ["method", "preset", "form", "input", "device", "source"]
REPARAM_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")  # timm's / RepVGG's conventions
EFFICIENCY_COLUMNS = EFFICIENCY_KEY[:-1] + ["params_m", "gflops", "gmacs", "latency_ms", "threads", "gpu_latency_ms",
                                            "gpu", "source", "note",
                                            "torch", "carbench_version", "git_commit", "created_at"]


def count_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return counter.get_total_flops()


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reparameterizable(net: torch.nn.Module) -> bool:
    """Has branches that fuse for inference (RepVGG-style blocks, conv+BN pairs with a `fuse`)."""
    return any(hasattr(m, hook) for m in net.modules() for hook in REPARAM_HOOKS)


def forms(name: str) -> list[str]:
    """`train` and `deploy` for a re-parameterisable network, else just `deploy` (the two are the same)."""
    from lightning_modules import create

    return _forms_of(create(name, pretrained=False).net)


def _forms_of(net: torch.nn.Module) -> list[str]:
    return ["train", "deploy"] if reparameterizable(net) else ["deploy"]


def measure(name: str, size: int = 512, repeat: int = 3, channels: int = 3, form: str = "deploy") -> dict:
    """One row for `method[.preset]` (random weights: cost does not depend on them). form=deploy re-parameterises
    the network first (timm's `reparameterize_model`) when it can be."""
    from lightning_modules import create

    if form not in ("train", "deploy"):
        raise ValueError(f"efficiency form {form!r}: train or deploy")
    return _measure(create(name, pretrained=False).eval(), form, size, repeat, channels)


def measure_forms(name: str, size: int = 512, repeat: int = 3, channels: int = 3) -> list[dict]:
    """A row per form of `name` (see `forms`), building the network once."""
    from lightning_modules import create

    module = create(name, pretrained=False).eval()
    return [_measure(module, form, size, repeat, channels) for form in _forms_of(module.net)]


def _measure(module, form: str, size: int, repeat: int, channels: int) -> dict:
    trained = module.net
    if form == "deploy" and reparameterizable(trained):
        from timm.utils.model import reparameterize_model

        module.net = reparameterize_model(trained)  # a fused copy: the training form stays intact
    try:
        return _measure_as_is(module, form, size, repeat, channels)
    finally:
        module.net = trained


def _measure_as_is(module, form: str, size: int, repeat: int, channels: int) -> dict:
    x = torch.rand(1, channels, size, size)
    params = sum(p.numel() for p in module.net.parameters())
    flops = count_flops(module, x)
    times = []
    with torch.no_grad():
        module(x)  # warm-up: allocator, kernels
        for _ in range(repeat):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    gpu_ms, gpu = "", ""
    if torch.cuda.is_available():  # a second latency on the GPU when there is one (CUDA events, synchronised)
        gpu = torch.cuda.get_device_name(0)
        module_gpu, xg = module.cuda(), x.cuda()
        with torch.no_grad():
            module_gpu(xg)
            gpu_times = []
            for _ in range(repeat):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                module_gpu(xg)
                end.record()
                torch.cuda.synchronize()
                gpu_times.append(start.elapsed_time(end))
        module.cpu()  # the next form is timed on the CPU again
        gpu_ms = statistics.median(gpu_times)
    return {"method": module.method_name, "preset": module.preset_name, "form": form, "input": f"{size}x{size} rgb",
            "gpu_latency_ms": gpu_ms, "gpu": gpu,
            "device": f"cpu: {cpu_name()}", "params_m": params / 1e6, "gflops": flops / 1e9, "gmacs": flops / 2e9,
            "latency_ms": 1000 * statistics.median(times), "threads": torch.get_num_threads(), "source": "measured",
            "note": f"median of {repeat} after 1 warm-up", "torch": torch.__version__}


def paper_rows(methods: list[str]) -> list[dict]:
    """The papers' efficiency tables for these methods (and their comparison rows), as source=paper."""
    table = published.load("efficiency")
    if table.empty:
        return []
    rows = []
    for _, r in table[table["paper"].isin(methods)].iterrows():
        ms = r["runtime_ms"] or r["gpu_ms"] or r["cpu_ms"]
        rows.append({"method": r["method"], "preset": "paper", "form": "deploy", "input": r["input"],
                     "device": r["device"],
                     "params_m": r["params_m"], "gflops": "", "gmacs": r["flops_g"], "latency_ms": ms,
                     "threads": "", "source": "paper",
                     "note": f"{r['paper']} Table {r['table']}: 'FLOPs' as printed (read as multiply-adds); "
                             + r["note"]})
    return rows


def write(rows: list[dict], path=None) -> None:
    stamp = {"carbench_version": leaderboard.carbench_version(), "git_commit": leaderboard.git_commit(),
             "created_at": leaderboard.now()}
    leaderboard.upsert(path or leaderboard.default_path("efficiency"),
                       [{**r, **(stamp if r["source"] == "measured" else {})} for r in rows],
                       key=EFFICIENCY_KEY, columns=EFFICIENCY_COLUMNS)


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<12}{'preset':<18}{'form':<8}{'source':<10}{'params M':>10}{'GMACs':>10}{'latency ms':>12}  device"
    lines = [head]
    for r in rows:
        def num(v, fmt):
            return format(float(v), fmt) if v not in ("", None) else "-"
        lines.append(f"{r['method']:<12}{r['preset']:<18}{r.get('form', ''):<8}{r['source']:<10}{num(r['params_m'], '10.2f')}"
                     f"{num(r['gmacs'], '10.1f')}{num(r['latency_ms'], '12.1f')}  {r['device']}")
    return "\n".join(lines)
