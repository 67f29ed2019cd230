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

from benchmark.boards import leaderboard, published

REPARAM_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")  # timm's / RepVGG's conventions


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
    """Has branches that fuse for inference (RepVGG-style blocks, conv+BN pairs with a `fuse`) -- a method, not a
    submodule that happens to be called `fuse` (JARCAL's EFFM has one)."""
    return any(callable(getattr(m, hook, None)) and not isinstance(getattr(m, hook), torch.nn.Module)
               for m in net.modules() for hook in REPARAM_HOOKS)


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
    """A row per form of `name` (see `forms`), building the network once. Methods that work inside a classifier
    (feature de-drifters, fine-tuned classifiers) are measured in it: see `measure_plugin`."""
    from lightning_modules import create

    module = create(name, pretrained=False).eval()
    if getattr(module, "kind", "restorer") != "restorer":
        return measure_plugin(module, repeat=max(repeat, 15))
    return [_measure(module, form, size, repeat, channels) for form in _forms_of(module.net)]


PLUGIN_INPUT = {"shapes-cnn": 128}  # the classifier's own input size (ImageNet models: the 224 crop of ImageNet-C)


def _latencies_ms(fns: list, repeat: int) -> list[float]:
    """Median wall time of each function, the calls interleaved (a, b, c, a, b, c, ...) so that a machine's drift
    during the measurement falls on all of them alike: their ratios are what is compared."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for fn in fns:
            fn()  # warm-up
        for _ in range(repeat):
            for fn, t in zip(fns, times):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
    return [1000 * statistics.median(t) for t in times]


def measure_plugin(module, repeat: int = 5) -> list[dict]:
    """A de-drifter in its classifier (random weights: cost does not depend on them), per form (train, deploy):
    the module's own parameters, FLOPs (the classifier with it minus without it) and latency alone on its inputs;
    then the classifier alone and the classifier with the module, for the latency the module adds. A fine-tuned
    classifier costs what its classifier costs: one row."""
    import copy

    from lightning_modules.dedrifters.afd import DeDrifted
    from lightning_modules.task_models import SHAPES_TASK_MODELS

    backbone = module.net.backbone
    if backbone in SHAPES_TASK_MODELS:
        classifier = SHAPES_TASK_MODELS[backbone].build().eval()
    else:
        from lightning_modules.task_models.classifier import build_classifier

        classifier = build_classifier(backbone, "random").eval()
    size = PLUGIN_INPUT.get(backbone, 224)
    x = torch.rand(1, 3, size, size)
    base_flops = count_flops(classifier, x)
    base = {"input": f"{size}x{size} rgb", "device": f"cpu: {cpu_name()}", "threads": torch.get_num_threads(),
            "source": "measured", "gpu_latency_ms": "", "gpu": "", "torch": torch.__version__}

    def row(method, preset, form, params, flops, ms, note):
        return {**base, "method": method, "preset": preset, "form": form, "params_m": params / 1e6,
                "gflops": flops / 1e9, "gmacs": flops / 2e9, "latency_ms": ms,
                "note": f"median of {repeat} after 1 warm-up; {note}"}

    n_classifier = sum(p.numel() for p in classifier.parameters())
    if module.kind == "classifier":
        (plain_ms,) = _latencies_ms([lambda: classifier(x)], repeat)
        return [row(backbone, "", "deploy", n_classifier, base_flops, plain_ms, "the classifier alone"),
                row(module.method_name, module.preset_name, "deploy", n_classifier, base_flops, plain_ms,
                    f"{backbone} with fine-tuned weights: the classifier's cost")]
    forms = {form: _deploy_copy(module.net) if form == "deploy" else module.net for form in _forms_of(module.net)}
    # one classifier per form (each holds its own hook), all timed interleaved with the classifier alone
    plugged = {f: DeDrifted(copy.deepcopy(classifier), net, net.layers) for f, net in forms.items()}
    with torch.no_grad():
        features = next(iter(plugged.values())).features(x, dedrift=False)
    calls = [lambda: classifier(x)]
    for f, net in forms.items():
        calls += [lambda net=net: net(features, x), lambda p=plugged[f]: p(x)]
    plain_ms, *timed = _latencies_ms(calls, repeat)
    rows = [row(backbone, "", "deploy", n_classifier, base_flops, plain_ms, "the classifier alone")]
    alone = dict(zip(forms, timed[0::2]))
    for i, (form, net) in enumerate(forms.items()):
        flops = count_flops(plugged[form], x) - base_flops
        params = sum(p.numel() for p in net.parameters())
        where = f"at {backbone} {net.depth} ({net.layers[0]}, {tuple(features.shape[1:])} features)"
        speed = (f"; {alone['train'] / alone[form]:.2f}x faster than the training form ({alone['train']:.1f} ms) "
                 f"in this run" if form == "deploy" and "train" in alone else "")
        rows.append(row(module.method_name, module.preset_name, form, params, flops, alone[form],
                        f"the module alone {where}; FLOPs it adds to {backbone}{speed}"))
        with_ms = timed[2 * i + 1]
        rows.append(row(f"{backbone}+{module.method_name}", module.preset_name, form, n_classifier + params,
                        base_flops + flops, with_ms, f"{backbone} with the module inserted {where}; {backbone} "
                        f"alone {plain_ms:.1f} ms in this run ({with_ms / plain_ms:.2f}x)"))
    return rows


def _deploy_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The network as it runs at test time: a re-parameterised copy (timm's `reparameterize_model`), or itself."""
    if not reparameterizable(net):
        return net
    from timm.utils.model import reparameterize_model

    return reparameterize_model(net)  # a fused copy: the training form stays intact


def _measure(module, form: str, size: int, repeat: int, channels: int) -> dict:
    trained = module.net
    if form == "deploy":
        module.net = _deploy_copy(trained)
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
        ms = r["runtime_ms"] or r["cpu_ms"] or r["gpu_ms"]  # our latencies are CPU ones
        rows.append({"method": r["method"], "preset": "paper", "form": "deploy", "input": r["input"],
                     "device": r["device"],
                     "params_m": r["params_m"], "gflops": "", "gmacs": r["flops_g"], "latency_ms": ms,
                     "threads": "", "source": "paper",
                     "note": f"{r['paper']} Table {r['table']}: "
                             + ("'FLOPs' as printed (read as multiply-adds); " if r["flops_g"] not in ("", None) else "")
                             + r["note"]})
    return rows


def write(rows: list[dict], path=None) -> None:
    stamp = {"carbench_version": leaderboard.carbench_version(), "git_commit": leaderboard.git_commit(),
             "created_at": leaderboard.now(), "command": leaderboard.command()}
    leaderboard.upsert(path or leaderboard.default_path("efficiency"),
                       [{**r, **(stamp if r["source"] == "measured" else {})} for r in rows],
                       key=leaderboard.EFFICIENCY_KEY, columns=leaderboard.EFFICIENCY_COLUMNS)


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<30}{'preset':<18}{'form':<8}{'source':<10}{'params M':>10}{'GMACs':>10}{'latency ms':>12}  device"
    lines = [head]
    for r in rows:
        def num(v, fmt):
            return format(float(v), fmt) if v not in ("", None) else "-".rjust(int(fmt.split(".")[0]))
        lines.append(f"{r['method']:<30}{r['preset']:<18}{r.get('form', ''):<8}{r['source']:<10}{num(r['params_m'], '10.2f')}"
                     f"{num(r['gmacs'], '10.1f')}{num(r['latency_ms'], '12.1f')}  {r['device']}")
    return "\n".join(lines)
