"""Inference engines side by side on this CPU: dskd through PyTorch, ONNX Runtime and OpenVINO, and, when anomalib is
installed, its Reverse Distillation and STFPM through PyTorch and through anomalib's own OpenVINO export.

    python -m benchmarks.engines [--backbone resnet18] [--image-size 256] [--repeats 5]
    (also: python -m benchmarks.speed --engines)

FP32, random weights (speed does not depend on them). Every engine is built first, then all are timed in one
process, A/B alternated over the repeats; each number is the median of the repeats: batch-1 latency and batch-16
throughput, with the GFLOPs of one image beside them (dskd needs more than RD: per-FLOP efficiency is the fair
comparison). Writes results/benchmarks/speed_engines.csv and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.ceiling import ceiling
from benchmarks.common import REPO, anomalib_available, machine
from dskd.atomic import atomic_write, write_text
from dskd.deploy.predictors import OPENVINO_FP32
from dskd.repro.tables import markdown

Run = Callable[[np.ndarray], object]


def _gflops(module: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 1e9


def _ov_compile(path: Path) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", OPENVINO_FP32)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def dskd_engines(backbone: str, size: int, work: Path) -> tuple[dict[str, Run], float, torch.nn.Module]:
    import onnxruntime as ort

    import dskd
    from dskd.deploy.export import InferenceGraph, export_model
    from dskd.deploy.int8 import STUDENT_NETWORKS

    model = dskd.build_model(backbone, "dskd", pretrained=False).eval().for_inference()
    graph = InferenceGraph(model)
    meta = {"image_size": str(size), "fit_mode": "stretch", "threshold": "0"}
    onnx_path = export_model(model, "onnx", work / "dskd.onnx", meta, image_size=size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    xml = export_model(model, "openvino", work / "dskd.xml", meta, image_size=size)
    # INT8 as `--int8` makes it (NNCF, map post-processing in float); calibrated here on random images, as the
    # weights are random too: speed depends on the quantized graph, not on the values.
    calibration = (np.random.default_rng(0).random((32, 3, size, size), dtype=np.float32), None)
    xml8 = export_model(model, "openvino", work / "dskd_int8.xml", meta, image_size=size, calibration=calibration)
    xml8t = export_model(model, "openvino", work / "dskd_int8_teacher.xml", meta, image_size=size,
                         calibration=calibration, quantized=(*STUDENT_NETWORKS, "model.teacher"))

    def torch_run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return graph(torch.from_numpy(x))

    engines = {"dskd / torch": torch_run, "dskd / onnxruntime": lambda x: session.run(None, {"images": x}),
               "dskd / openvino": _ov_compile(xml), "dskd / openvino int8": _ov_compile(xml8),
               "dskd / openvino int8 teacher too": _ov_compile(xml8t)}
    return engines, _gflops(graph, torch.rand(1, 3, size, size)), graph


def _anomalib_lightning(name: str):
    """anomalib's Lightning module with a ResNet18 teacher and random weights (its teachers download otherwise)."""
    from anomalib.models import ReverseDistillation, Stfpm
    from anomalib.models.image.stfpm import torch_model as stfpm

    if name == "anomalib RD":
        return ReverseDistillation(backbone="resnet18", pre_trained=False)
    real = stfpm.TimmFeatureExtractor
    stfpm.TimmFeatureExtractor = lambda **kw: real(**{**kw, "pre_trained": False})
    try:
        return Stfpm(backbone="resnet18")
    finally:
        stfpm.TimmFeatureExtractor = real


def anomalib_engines(size: int, work: Path) -> tuple[dict[str, Run], dict[str, float]]:
    """anomalib's models as its users run them: the torch model in eval mode, and the OpenVINO export (FP32)."""
    engines, flops = {}, {}
    for name in ("anomalib RD", "anomalib STFPM"):
        model = _anomalib_lightning(name).eval()
        net = model.model.eval()

        def torch_run(x: np.ndarray, net=net) -> object:
            with torch.inference_mode():
                return net(torch.from_numpy(x))

        engines[f"{name} / torch"] = torch_run
        flops[name] = _gflops(net, torch.rand(1, 3, size, size))
        xml = model.to_openvino(export_root=work / name.replace(" ", "_"), input_size=(size, size))
        engines[f"{name} / openvino"] = _ov_compile(Path(xml))
    return engines, flops


def measure(engines: dict[str, Run], size: int, repeats: int, steps: int) -> pd.DataFrame:
    x1 = np.random.rand(1, 3, size, size).astype(np.float32)
    x16 = np.random.rand(16, 3, size, size).astype(np.float32)
    for run in engines.values():  # warm-up, and the first-call compilation some engines do
        run(x1)
        run(x16)
    latency: dict[str, list[float]] = {k: [] for k in engines}
    throughput: dict[str, list[float]] = {k: [] for k in engines}
    batches = max(1, steps // 4)
    for _ in range(repeats):
        for name, run in engines.items():  # A/B/A/B: each repeat visits every engine in turn
            t0 = time.perf_counter()
            for _ in range(steps):
                run(x1)
            latency[name].append(1000 * (time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            for _ in range(batches):
                run(x16)
            throughput[name].append(16 * batches / (time.perf_counter() - t0))
    base = throughput["dskd / torch"]
    ratios = {k: [a / b for a, b in zip(v, base, strict=True)] for k, v in throughput.items()}
    return pd.DataFrame({"latency_ms": {k: statistics.median(v) for k, v in latency.items()},
                         "img_s_batch16": {k: statistics.median(v) for k, v in throughput.items()},
                         "latency_spread_pct": {k: _spread(v) for k, v in latency.items()},
                         "throughput_spread_pct": {k: _spread(v) for k, v in throughput.items()},
                         "vs_dskd_torch": {k: statistics.median(v) for k, v in ratios.items()},
                         "vs_dskd_torch_spread_pct": {k: _spread(v) for k, v in ratios.items()}})


def _spread(values: list[float]) -> float:
    """(max - min) / median, percent: how far one repeat can sit from another."""
    return 100 * (max(values) - min(values)) / statistics.median(values)


def report(table: pd.DataFrame, flops: dict[str, float], limit: float, args: argparse.Namespace) -> str:
    table = table.copy()
    table["gflops_per_image"] = [flops[name.split(" / ")[0]] for name in table.index]
    table["gflop_s"] = table["img_s_batch16"] * table["gflops_per_image"]  # achieved rate: FLOPs per image x img/s
    torch_ips = table.loc["dskd / torch", "img_s_batch16"]
    fp32 = [i for i in table.index if i.startswith("dskd") and "int8" not in i]
    best = table.loc[fp32, "img_s_batch16"].idxmax()
    lines = [f"# Inference engines ({args.backbone}, {args.image_size} px, FP32 and INT8, random weights)", "",
             f"Measured by `python -m benchmarks.engines` on {machine()}, {args.repeats} repeats A/B alternated, "
             f"medians; batch-1 latency over {args.steps} calls, batch-16 throughput over {max(1, args.steps // 4)} "
             "batches per repeat. Spreads: (max - min) / median over the repeats; `vs_dskd_torch`: throughput over "
             "dskd through PyTorch's in the same repeat, its median. INT8: `dskd export --int8` (NNCF: the students "
             "and the DF embedding; `teacher too`: with `--int8-teacher`), calibrated on random images here as the "
             "weights are random.",
             "", markdown(table.round(2)), "",
             f"- dskd's fastest FP32 engine, {best}: {table.loc[best, 'img_s_batch16'] / torch_ips:.2f} x dskd "
             "through PyTorch (target >= 1.5 x).",
             "- FP32 ceiling of dskd's graph on this CPU (`benchmarks.ceiling`: every convolution at the rate OpenVINO "
             f"reaches on a chain of 3x3 convolutions of its width, everything else free): {limit:.1f} img/s, "
             f"{limit / torch_ips:.2f} x dskd through PyTorch; {best} reaches "
             f"{100 * table.loc[best, 'img_s_batch16'] / limit:.0f} % of it. 1.5 x PyTorch would be "
             f"{1.5 * torch_ips:.1f} img/s."]
    if "anomalib RD / openvino" in table.index:
        ratio = table.loc[best, "gflop_s"] / table.loc["anomalib RD / openvino", "gflop_s"]
        lines.append(f"- Per FLOP, {best} is {ratio:.2f} x as efficient as anomalib Reverse Distillation's OpenVINO "
                     "export (target >= 0.9 x).")
        rd = table.loc["anomalib RD / openvino", "img_s_batch16"]
        int8, int8t = (table.loc[f"dskd / openvino int8{k}", "img_s_batch16"] / rd for k in ("", " teacher too"))
        lines.append(f"- dskd INT8 through OpenVINO: {int8:.2f} x the throughput of anomalib Reverse Distillation's "
                     f"FP32 OpenVINO export (target >= 1.0 x); {int8t:.2f} x with the teacher quantized too.")
    else:
        lines.append("- anomalib is not installed here: its rows are missing (`pip install anomalib` with this "
                     "machine's torch kept).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        engines, gflops, graph = dskd_engines(args.backbone, args.image_size, Path(tmp))
        flops = {"dskd": gflops}
        if anomalib_available():
            more, more_flops = anomalib_engines(args.image_size, Path(tmp))
            engines.update(more)
            flops.update(more_flops)
        table = measure(engines, args.image_size, args.repeats, args.steps)
    limit, _ = ceiling(graph, args.image_size)
    out = Path(args.out)
    atomic_write(out / "speed_engines.csv", lambda t: table.round(3).to_csv(t))
    text = report(table, flops, limit, args)
    write_text(out / "speed_engines.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
