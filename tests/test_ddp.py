"""Metrics are exact across processes: 2 gloo ranks with DistributedSampler padding == 1 process."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from benchmark.metrics import PSNR, PSNRB, SSIM, psnr, psnrb, ssim
from datamodules.corruptions import Corruption, apply

from .conftest import smooth_image

N_IMAGES = 5  # odd: the sampler pads rank 1 with a repeat of image 0


def make_pairs():
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(N_IMAGES):
        clean = smooth_image(rng, 40 + 8 * i, 56, 3)
        out = apply(clean, Corruption("jpeg", (10 + 5 * i,)))[0]
        pairs.append((torch.from_numpy(clean).permute(2, 0, 1)[None], torch.from_numpy(out).permute(2, 0, 1)[None]))
    return pairs


def _worker(rank, world, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    pairs = make_pairs()
    sampler = DistributedSampler(range(N_IMAGES), num_replicas=world, rank=rank, shuffle=False)
    metrics = [PSNR(), SSIM(), PSNRB()]
    for i in sampler:
        clean, out = pairs[i]
        for m in metrics:
            m.update(out, clean, ids=torch.tensor([i]))
    values = [float(m.compute()) for m in metrics] + [metrics[0].n_images()]  # counted over both ranks
    if rank == 0:
        results.extend(values)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    pairs = make_pairs()
    expected = [np.mean([float(fn(o, c)) for c, o in pairs]) for fn in (psnr, ssim, psnrb)] + [N_IMAGES]
    sampler = DistributedSampler(range(N_IMAGES), num_replicas=2, rank=1, shuffle=False)
    assert list(sampler).count(0) == 1 and len(list(sampler)) == 3  # padding happens
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        got = list(results)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# ---- the downstream evaluator under Lightning DDP (2 CPU processes, gloo) --------------------------------------------
TASK_N = 5  # odd again: Lightning's DistributedSampler pads rank 1 with a repeat


def _task_net(task):
    """The shipped shapes model: trained weights give non-trivial scores, so equality means something."""
    from lightning_modules.task_models import create_task_model

    return create_task_model(task).net


def _task_results(task, world, rank=0):
    import lightning as L
    from torch.utils.data import DataLoader

    from benchmark.evaluate.tasks import TaskEvaluator
    from datamodules.corruptions import Corruption
    from datamodules.shapes import CLASSES
    from datamodules.tasks import ShapesTaskSet, collate
    from lightning_modules import create

    torch.set_num_threads(1)
    corruptions = [None, Corruption("jpeg", (10,))]
    loaders = [DataLoader(ShapesTaskSet(task, TASK_N, corruption=c), batch_size=2, collate_fn=collate)
               for c in corruptions]
    restorer = create("dncnn") if task == "classification" else None
    ev = TaskEvaluator(task, _task_net(task), len(corruptions), len(CLASSES) + 1, restorer)
    kw = dict(strategy="ddp", devices=world) if world > 1 else dict(devices=1)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              **kw).test(ev, loaders, verbose=False)
    return ev.results


def _task_worker(rank, world, port, task, results):
    import os

    # what torchrun sets: Lightning then joins these processes instead of launching its own
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    out = _task_results(task, world, rank)
    if rank == 0:
        results.append(out)
    # both ranks leave together: without it Lightning's atexit teardown let one rank drop gloo while the other still
    # held the store, and that rank died with SIGABRT ("terminate called without an active exception", CI stop 32)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_task_evaluator_two_ddp_processes_equal_one(task):
    single = _task_results(task, 1)
    assert [r["n_images"] for r in single] == [TASK_N, TASK_N]
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_task_worker, args=(2, _free_port(), task, results), nprocs=2, join=True)
        (ddp,) = list(results)
    assert [r["n_images"] for r in ddp] == [TASK_N, TASK_N]  # the padded repeat counted once
    for a, b in zip(ddp, single):
        assert a.keys() == b.keys()
        for k in a:
            if k == "per_image":  # every image's 0/1 outcome / counts / COCOeval matches, each once, as one process
                assert a[k] == b[k]
            else:
                assert a[k] == pytest.approx(b[k], abs=1e-9, nan_ok=True), (k, a[k], b[k])
    assert len(single[0]["per_image"]["ids"]) == TASK_N  # classification, segmentation, detection alike
