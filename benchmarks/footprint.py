"""What the speed benchmark measures besides throughput: a model's peak memory in a fresh process, and the
metrics' time and memory over 500 maps."""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch

from benchmarks.bench_models import build_bench
from benchmarks.common import REPO


def metrics_seconds(n: int = 500, size: int = 256) -> tuple[float, float]:
    """Seconds for image AUROC, pixel AUROC and AUPRO over n maps, and their peak extra memory / the maps' size."""
    from dskd.run.metrics import aupro, image_auroc, pixel_auroc

    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), bool)
    for i in range(0, n, 2):
        y, x = rng.integers(0, size - 40, 2)
        masks[i, y: y + rng.integers(4, 40), x: x + rng.integers(4, 40)] = True
    maps = (rng.random((n, size, size), dtype=np.float32) + 0.5 * masks).astype(np.float32)
    labels = masks.reshape(n, -1).any(1)
    tracemalloc.start()
    t0 = time.perf_counter()
    image_auroc(labels, maps.reshape(n, -1).max(1))
    pixel_auroc(masks, maps)
    aupro(masks, maps)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / maps.nbytes


def peak_memory_mb(model: str, backbone: str, image_size: int, batch: int) -> float:
    """RSS high-water mark (VmHWM) of a fresh process that builds the model and runs training and inference steps.

    VmHWM, not getrusage: ru_maxrss survives fork and exec, so a child would report the parent's peak.
    """
    code = (f"import torch, sys; sys.path.insert(0, {str(REPO)!r}); from benchmarks.bench_models import build_bench; "
            f"b = build_bench({model!r}, {backbone!r}, {image_size}); "
            f"x = torch.rand({batch}, 3, {image_size}, {image_size}); "
            "[b.train_step(x) for _ in range(3)]; b.infer(torch.rand(16, 3, x.shape[2], x.shape[3])); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # VmHWM is in KiB


def cuda_peak_memory_mb(model: str, backbone: str, image_size: int, batch: int) -> float:
    b = build_bench(model, backbone, image_size)
    b.model.cuda()
    b.infer_model.cuda()
    torch.cuda.reset_peak_memory_stats()
    x = torch.rand(batch, 3, image_size, image_size, device="cuda")
    for _ in range(3):
        b.train_step(x)
    b.infer(torch.rand(16, 3, image_size, image_size, device="cuda"))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20
