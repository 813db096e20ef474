"""The most FP32 throughput dskd's graph could have on this CPU: tells a slow engine from a target the CPU cannot meet.

    python -m benchmarks.ceiling [--backbone resnet18] [--image-size 256]
    (also part of: python -m benchmarks.engines)

Almost all of dskd's FLOPs are convolutions. Each is timed here at the rate OpenVINO (FP32) reaches on a chain of
3x3 convolutions with the same output width and resolution, batch 16: its kernels' best case, with no layout
changes between layers. The ceiling charges every convolution of the graph at that rate and everything else nothing.
This is generous: the 7x7 stem on 3 channels, the 1x1 shortcuts and the 2x2 transposed convolutions run slower
than a 3x3 chain of their width. It is an estimate, not a proof: an engine with other kernels (Winograd, say) could
pass it; one built on these kernels should not.
Writes results/benchmarks/ceiling.csv and .md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import REPO
from dskd.atomic import atomic_write, write_text
from dskd.deploy.predictors import OPENVINO_FP32
from dskd.repro.tables import markdown

BATCH, DEPTH = 16, 8  # chain: DEPTH 3x3 convolutions with ReLU, timed at batch BATCH


def conv_gflops(graph: torch.nn.Module, size: int) -> dict[tuple[int, int], float]:
    """GFLOPs per image of the graph's convolutions, grouped by (output channels, output side)."""
    groups: dict[tuple[int, int], float] = defaultdict(float)

    def count(m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = math.prod(m.kernel_size)
        if isinstance(m, torch.nn.ConvTranspose2d):  # spreads each input value over k outputs per channel
            macs = inputs[0].numel() * m.out_channels // m.groups * k
        else:  # each output value reads k inputs per channel
            macs = out.numel() * m.in_channels // m.groups * k
        groups[(out.shape[1], out.shape[-1])] += 2 * macs / 1e9

    convs = [m for m in graph.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    hooks = [m.register_forward_hook(count) for m in convs]
    try:
        with torch.inference_mode():
            graph(torch.rand(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return dict(groups)


def chain_rate(channels: int, side: int, repeats: int = 5) -> float:
    """GFLOP/s of OpenVINO (FP32, every core) on a chain of 3x3 convolutions, median over the repeats."""
    import openvino as ov

    layers = [m for _ in range(DEPTH) for m in (torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU())]
    x = torch.rand(BATCH, channels, side, side)
    model = ov.convert_model(torch.nn.Sequential(*layers).eval(), example_input=x)
    request = ov.Core().compile_model(model, "CPU", OPENVINO_FP32).create_infer_request()
    request.infer({0: x.numpy()})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer({0: x.numpy()})
        times.append(time.perf_counter() - t0)
    return 2 * DEPTH * BATCH * channels**2 * 9 * side**2 / statistics.median(times) / 1e9


def ceiling(graph: torch.nn.Module, size: int) -> tuple[float, pd.DataFrame]:
    """Images per second at the ceiling, and its table: per group of convolutions, FLOPs, rate and time."""
    rows = []
    for (channels, side), gflops in sorted(conv_gflops(graph, size).items()):
        rate = chain_rate(channels, side)
        rows.append({"convolutions": f"{channels} out, {side} x {side}", "gflops_per_image": gflops,
                     "chain_gflop_s": rate, "ms_per_image": 1000 * gflops / rate})
    table = pd.DataFrame(rows).set_index("convolutions")
    return 1000 / table["ms_per_image"].sum(), table


def main(argv: list[str] | None = None) -> int:
    import dskd
    from benchmarks.common import machine
    from dskd.deploy.export import InferenceGraph

    p = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    graph = InferenceGraph(dskd.build_model(args.backbone, "dskd", pretrained=False).eval().for_inference())
    ips, table = ceiling(graph, args.image_size)
    out = Path(args.out)
    atomic_write(out / "ceiling.csv", lambda t: table.round(3).to_csv(t))
    text = "\n".join([
        f"# FP32 ceiling of dskd's graph ({args.backbone}, {args.image_size} px)", "",
        f"Measured by `python -m benchmarks.ceiling` on {machine()}: each group of convolutions charged at the "
        f"rate of a chain of {DEPTH} 3x3 convolutions of its output width and side (OpenVINO FP32, batch {BATCH}, "
        "median of 5), everything else free.", "", markdown(table.round(2)), "",
        f"Ceiling: {ips:.1f} img/s ({table['gflops_per_image'].sum():.2f} GFLOPs of convolutions per image).", ""])
    write_text(out / "ceiling.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
