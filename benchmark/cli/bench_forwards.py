"""`benchmark bench --forwards`: every shipped restorer and task model at the sizes the boards use, against a
reference convolution measured in the same run; each network's forward plan chosen by measurement; whole board
rows timed with the plans off (plain) and on (tuned), side by side in one process.

Per network, the candidates (`lightning_modules.inference.ForwardPlan`) are the memory format (NCHW, channels-last)
x a traced frozen graph or not, timed per image at batch 1, then the batch size the winner is fed in (1, 4 or the
runner's 16). A candidate whose outputs differ from the plain forward by more than `EQUAL_TOL` (relative) is
refused. The plain path is what the runners did before plans existed: NCHW, eager, the whole batch in one forward.
Restorers are timed on the two workloads of the boards: a batch of 224 crops (classification) and a whole photo
(fidelity and detection); task models on their own inputs (Lite0/1/2 224/240/260 crops, CenterNet's 512 letterbox,
NanoDet's 416, the shapes models' 128). GFLOP/s = the network's FLOPs (torch's FlopCounterMode, a multiply-add
counting 2) per second; the goal is >= 50 % of the reference convolution's (64 -> 64 channels, 3x3, 256x256, the
better of NCHW and channels-last).

Timings are best of `--repeat`, the candidates interleaved (a, b, a, b, ...) so that a shared machine's drift
falls on all of them alike; nothing here is asserted.
"""
from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path

CROP, CROP_BATCH, PHOTO = 224, 16, (375, 500)  # the classification crop and the runner's batch; an ImageNet photo
BATCHES = (1, 4, CROP_BATCH)
GOAL_FRACTION, GOAL_ROW = 0.5, 1.5
RESTORERS = ("dncnn.compact", "arcnn.compact", "dagn.compact", "fbcnn.compact", "jarcal.compact",
             "n2n_unet.compact", "dualpriors.compact", "urie.paper")
# task model -> (task, input per image (C, H, W) of its dense network, batch the runner feeds it)
TASK_MODELS = {"efficientnet_lite0": ("classification", (3, 224, 224), CROP_BATCH),
               "efficientnet_lite1": ("classification", (3, 240, 240), CROP_BATCH),
               "efficientnet_lite2": ("classification", (3, 260, 260), CROP_BATCH),
               "centernet_mbv3": ("detection", (3, 512, 512), 1),
               "nanodet_g": ("detection", (3, 416, 416), 1),
               "shapes-cnn": ("classification", (3, 128, 128), CROP_BATCH),
               "shapes-pspnet": ("segmentation", (3, 128, 128), CROP_BATCH)}


def _interleaved_best(fns: list, repeat: int) -> list[float]:
    """Best wall time (s) of each function, calls interleaved, after one warm-up call each."""
    import torch

    best = [math.inf] * len(fns)
    with torch.no_grad():  # not inference_mode: dual priors takes gradients inside its forward
        for fn in fns:  # twice: a traced plan builds its graph when a shape comes the second time
            fn(), fn()
        for _ in range(repeat):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def reference_gflops(repeat: int) -> tuple[float, str]:
    """GFLOP/s of a 64 -> 64 3x3 convolution on 256x256 (the better layout) and a description."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 64, 256, 256, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    xc, wc = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    t_nchw, t_cl = _interleaved_best([lambda: F.conv2d(x, w, padding=1), lambda: F.conv2d(xc, wc, padding=1)],
                                     repeat)
    flops = 2 * 64 * 64 * 9 * 256 * 256
    return flops / min(t_nchw, t_cl) / 1e9, (f"conv 64->64 3x3 256x256: NCHW {flops / t_nchw / 1e9:.1f}, "
                                             f"channels-last {flops / t_cl / 1e9:.1f} GFLOP/s")


def _flops(fn, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops()


class Workload:
    """One network on one input: `call(plan)` builds the planned forward; `x` is a batch of `batch` images."""

    def __init__(self, label: str, make_forward, x, per_image: int):
        self.label, self.make_forward, self.x, self.per_image = label, make_forward, x, per_image


def choose_plan(name: str, workloads: list[Workload], repeat: int, jit: bool = True):
    """(chosen plan, {workload label: {plan label: ms per image}}, refused: {plan label: why}).

    Layout x jit at batch 1 on every workload (score: the mean of plain/candidate time ratios, so a crop and a
    photo weigh alike), then the batch size of the winner on the batched workloads."""
    import torch

    from lightning_modules.inference import PLAIN, ForwardPlan, relative_difference

    layouts = [ForwardPlan(fmt, j, 1) for fmt in ("contiguous", "channels_last") for j in ((False, True) if jit
                                                                                            else (False,))]
    timings: dict[str, dict[str, float]] = {}
    refused: dict[str, str] = {}
    score = {p: 0.0 for p in layouts}
    for wl in workloads:
        one = wl.x[:1] if isinstance(wl.x, torch.Tensor) else wl.x
        with torch.no_grad():
            ref = wl.make_forward(PLAIN)(one)
        fns, plans = [], []
        for p in layouts:
            fwd = wl.make_forward(p)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # refusals are reported in the table
                fwd(one), fwd(one)  # a traced plan builds its graph on the second call of a shape
                diff = relative_difference(fwd(one), ref)
            if diff > 1e-5 or (p.jit and not getattr(_planned_of(fwd), "graphs", None)):
                refused[p.label()] = f"differs by {diff:.1e}" if diff > 1e-5 else "not traceable"
                continue
            fns.append(lambda fwd=fwd: fwd(one))
            plans.append(p)
        fns.append(lambda: wl.make_forward(PLAIN)(one))
        times = _interleaved_best(fns, repeat)
        t_plain = times[-1]
        timings[wl.label] = {p.label(): 1e3 * t for p, t in zip(plans, times)}
        for p, t in zip(plans, times):
            score[p] += t_plain / t
        for p in layouts:
            if p not in plans:
                score[p] = -math.inf
    best = max(layouts, key=lambda p: score[p])
    batched = [wl for wl in workloads if isinstance(wl.x, torch.Tensor) and wl.x.shape[0] > 1]
    if batched:
        wl = batched[0]
        cands = [ForwardPlan(best.memory_format, best.jit, b) for b in BATCHES if b <= wl.x.shape[0]]
        fwds = [wl.make_forward(p) for p in cands] + [wl.make_forward(PLAIN)]
        times = _interleaved_best([lambda f=f: f(wl.x) for f in fwds], repeat)
        n = wl.x.shape[0]
        timings[wl.label] = {**{p.label(): 1e3 * t / n for p, t in zip(cands, times[:-1])},
                             "plain": 1e3 * times[-1] / n}
        best = cands[min(range(len(cands)), key=lambda i: times[i])]
        if best.batch == n:
            best = ForwardPlan(best.memory_format, best.jit, None)  # the whole batch: no chunking
    return best, timings, refused


def _planned_of(fwd):
    """The PlannedForward behind a workload's forward, if any."""
    return getattr(fwd, "planned", fwd)


def _restorer_workloads(name: str, seed: int = 0):
    """`module.restore` (padding, channel adaptation, clamp) with the network run under each candidate plan."""
    import torch

    from lightning_modules import create
    from lightning_modules.inference import PlannedForward

    module = create(name).eval()
    g = torch.Generator().manual_seed(seed)

    def make_forward(plan):
        fwd = PlannedForward(module.net, plan, name)

        def run(x):
            module.__dict__["_inference_net"] = lambda: fwd  # restore() runs the network as this candidate
            try:
                return module.restore(x)
            finally:
                del module.__dict__["_inference_net"]
        run.planned = fwd
        return run

    crops = torch.rand(CROP_BATCH, 3, CROP, CROP, generator=g)
    photo = torch.rand(1, 3, *PHOTO, generator=g)
    return module, [Workload(f"{CROP_BATCH}x{CROP}^2 crops", make_forward, crops, 1),
                    Workload(f"photo {PHOTO[1]}x{PHOTO[0]}", make_forward, photo, 1)]


def _task_workload(name: str, seed: int = 0):
    import torch

    from lightning_modules.inference import PlannedForward
    from lightning_modules.task_models import create_task_model

    task, shape, batch = TASK_MODELS[name]
    tm = create_task_model(task, name)
    net = tm.net.eval()
    dense = getattr(net, "dense_net", None)
    target = dense if dense is not None else net  # detectors: the fixed-size network inside pre/post-processing
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g)

    def make_forward(plan):
        return PlannedForward(target, plan, name)

    return net, [Workload(f"{batch}x{shape[1]}x{shape[2]}", make_forward, x, 1)]


def bench_forwards(args) -> dict:
    """Print the table; return {name: plan entry} for `--record`."""
    import torch

    from benchmark.evaluate.efficiency import cpu_name
    from lightning_modules.inference import PLAIN, plan_entry
    from lightning_modules.registry import MethodError
    from lightning_modules.task_models import TaskModelError

    repeat = max(1, int(getattr(args, "repeat", 3)))
    ref, ref_desc = reference_gflops(repeat)
    print(f"\n[F] forwards: torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    print(f"    reference {ref_desc}: {ref:.1f} GFLOP/s (goal: every network >= {GOAL_FRACTION:.0%} of it)")
    print(f"    {'network':<20}{'workload':<20}{'plain ms/img':>13}{'tuned ms/img':>13}{'x':>6}"
          f"{'GFLOP/s':>9}{'% ref':>7}  plan (refused)")
    entries = {}
    names = [n for n in RESTORERS if _wanted(n, args)] + [n for n in TASK_MODELS if _wanted(n, args)]
    for name in names:
        try:
            if name in TASK_MODELS:
                _, workloads = _task_workload(name)
            else:
                _, workloads = _restorer_workloads(name)
        except (MethodError, TaskModelError, FileNotFoundError, ImportError, ValueError) as e:
            print(f"    {name:<20}skipped: {str(e).splitlines()[0][:110]}")
            continue
        try:
            plan, timings, refused = choose_plan(name, workloads, repeat, jit=True)
        except Exception as e:  # noqa: BLE001 -- one network's failure is reported, the others are measured
            print(f"    {name:<20}failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        for wl in workloads:
            flops = _flops(wl.make_forward(PLAIN), wl.x[:1] if isinstance(wl.x, torch.Tensor) else wl.x)
            fwd_plain, fwd_tuned = wl.make_forward(PLAIN), wl.make_forward(plan)
            t_plain, t_tuned = _interleaved_best([lambda: fwd_plain(wl.x), lambda: fwd_tuned(wl.x)], repeat)
            n = wl.x.shape[0] if isinstance(wl.x, torch.Tensor) else 1
            gflops = flops / (t_tuned / n) / 1e9
            print(f"    {name:<20}{wl.label:<20}{1e3 * t_plain / n:>13.1f}{1e3 * t_tuned / n:>13.1f}"
                  f"{t_plain / t_tuned:>6.2f}{gflops:>9.1f}{gflops / ref:>7.0%}  {plan.label()}"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in refused.items())})" if refused else ""))
            timings.setdefault(wl.label, {})["chosen"] = 1e3 * t_tuned / n
            timings[wl.label]["plain"] = 1e3 * t_plain / n
        entries[name] = plan_entry(plan, ms_per_image={k: {p: round(t, 2) for p, t in v.items()}
                                                       for k, v in timings.items()},
                                   refused=refused)
    return entries


def _wanted(name: str, args) -> bool:
    import fnmatch

    pattern = getattr(args, "models", None) or "*"
    return any(fnmatch.fnmatch(name, p) for p in pattern.split(","))


# ---- whole board rows: plain vs tuned (and a loader worker), in one process ----------------------------------
def bench_rows(args) -> None:
    import os

    from benchmark.evaluate.tasks import TaskRequest, run_tasks
    from datamodules.corruptions import Corruption
    from lightning_modules.inference import forward_mode

    folder = os.environ.get("CARBENCH_IMAGENET") or str(Path("../shared/data/train/ImageNet_sample1000"))
    if not Path(folder).is_dir():
        print(f"\n[R] whole board rows skipped: no ImageNet sample at {folder} (set $CARBENCH_IMAGENET)")
        return
    n, method = int(getattr(args, "row_images", 100)), getattr(args, "row_method", "jarcal")
    print(f"\n[R] whole board rows: {method} at JPEG QF 10 on the first {n} photos of {folder}, one process, cold "
          f"caches (every configuration encodes, decodes and detects anew in its own cache folder)")
    tasks = getattr(args, "row_tasks", None) or "classification,detection"
    for task, model in (("classification", "efficientnet_lite0"), ("detection", "centernet_mbv3")):
        if task not in tasks.split(","):
            continue
        times = {}
        for label, mode, workers in (("plain", "plain", 0), ("tuned", "tuned", 0), ("tuned + loader worker",
                                                                                   "tuned", 1)):
            with tempfile.TemporaryDirectory(prefix="carbench-rows-") as tmp, forward_mode(mode):
                req = TaskRequest(tasks=[task], methods=[method], corruptions=[Corruption("jpeg", (10,))],
                                  dataset=f"imagenet-flat:{folder}", n_images=n, task_model=model, cache_dir=tmp,
                                  add_reference=False, progress=False, loader_workers=workers)
                t0 = time.perf_counter()
                rows, failures = run_tasks(req)
                times[label] = time.perf_counter() - t0
                if failures:
                    print(f"    {model} {label}: failed: {failures[0]}")
                    break
                value = next(r for r in rows[task] if r["metric"] in ("top1", "consistency_map"))
                print(f"    {model:<20}{label:<24}{times[label]:8.1f} s  {value['metric']} {value['value']:.2f}",
                      flush=True)
        if "plain" in times and "tuned" in times:
            best = min(v for k, v in times.items() if k != "plain")
            print(f"    {model:<20}{'row speed-up':<24}{times['plain'] / best:8.2f}x   (goal >= {GOAL_ROW}x: "
                  f"{'ok' if times['plain'] / best >= GOAL_ROW else 'below goal'})")


def main(args) -> int:
    import torch

    from benchmark.evaluate.efficiency import cpu_name
    from lightning_modules import inference

    t0 = time.perf_counter()
    entries = bench_forwards(args)
    if getattr(args, "record", False) and entries:
        merged = {**_recorded(), **entries}
        inference.write_plans(merged, {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                       "cpu": cpu_name(), "command": "benchmark bench --forwards --record"})
        print(f"    plans of {len(entries)} networks written to {inference.PLANS_FILE}")
    if entries:  # the rows run under the plans just chosen
        inference._PLANS = {k: inference.ForwardPlan(**v["plan"]) for k, v in {**_recorded(), **entries}.items()}
    if getattr(args, "row_images", 0):
        bench_rows(args)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


def _recorded() -> dict:
    import json

    from lightning_modules.inference import PLANS_FILE

    try:
        return json.loads(PLANS_FILE.read_text()).get("plans", {})
    except FileNotFoundError:
        return {}
