"""Metrics are exact across processes: 2 gloo ranks with DistributedSampler padding == 1 process."""
import numpy as np
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
    values = [float(m.compute()) for m in metrics]
    if rank == 0:
        results.extend(values)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    pairs = make_pairs()
    expected = [np.mean([float(fn(o, c)) for c, o in pairs]) for fn in (psnr, ssim, psnrb)]
    sampler = DistributedSampler(range(N_IMAGES), num_replicas=2, rank=1, shuffle=False)
    assert list(sampler).count(0) == 1 and len(list(sampler)) == 3  # padding happens
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        got = list(results)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
