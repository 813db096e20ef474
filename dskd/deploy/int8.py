"""Post-training INT8 quantization of an OpenVINO export (`python -m dskd export --format openvino --int8`).

NNCF quantizes the students and the DF embedding after training, calibrated on the run's own training images
(defect-free by construction, so no test image is seen); `int8_teacher=True` quantizes the teacher too. Kept in
float: everything outside the networks (the map path: cosine distances, normalization, fusion, resampling, score),
found from the module scopes torch.onnx records per node. Quantized, the map path clips every value above the
training images' range, i.e. the defects: MT Defects lost 8.7 points of image AUROC with it, 1.6 without it when the
teacher was still quantized, 0.4 with the teacher in float. Depthwise convolutions stay float too (EfficientNet's;
quantized, they cost MPDD 1.1 points of AUPRO). Accuracy and speed against FP32: results/benchmarks/int8.md and
speed_engines.md.
"""

from __future__ import annotations

import ast
import dataclasses
import logging

import numpy as np

from ..errors import DskdError
from ..run.folder import LoadedRun
from .predictors import as_input

# InferenceGraph's module paths of what --int8 quantizes (a variant holds some of them)
STUDENT_NETWORKS = ("model.se", "model.sd", "model.embed", "model.se2", "model.sd2", "model.embed2")


def training_images(loaded: LoadedRun, size: int, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to `limit` of the run's training images, evenly spaced over its list: float32 N x 3 x S x S in [0, 1]
    and, in pad mode, their valid masks."""
    from ..data import run_images
    from ..run.batch_maps import preload, valid_tensor

    if limit < 1:
        raise DskdError(f"--calibration-images must be at least 1, not {limit}")
    cfg = loaded.run.config
    try:
        train_set = run_images(dataclasses.replace(cfg, image_size=size), "train")
    except DskdError as exc:
        raise DskdError(f"--int8 calibrates on the run's training images, which could not be loaded: {exc}") from exc
    images, _ = preload(train_set, desc="calibration images")
    pick = np.unique(np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int))
    valid = valid_tensor(train_set)
    return as_input(images[pick].numpy()), None if valid is None else valid[pick].numpy()


def network_nodes(proto, modules: tuple[str, ...]) -> set[str]:
    """Names of the ONNX nodes inside `modules` (InferenceGraph paths, e.g. "model.se"), read from the module
    scopes torch.onnx records on every node."""
    inside = set()
    for node in proto.graph.node:
        entry = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if entry and any(".".join(sc.split(".")[:2]) in modules for sc in ast.literal_eval(entry)):
            inside.add(node.name)
    if not inside:
        raise DskdError("--int8: this torch.onnx records no module scopes, so the networks cannot be told from the map "
                        "path; export without --int8")
    return inside


def quantize(model, calibration: tuple[np.ndarray, np.ndarray | None], batch: int | None, inside: set[str]):
    """NNCF post-training quantization of the ops of an OpenVINO model converted from the ONNX nodes in `inside`
    (OpenVINO names an op after its node, or node/part when one node became several; an op named otherwise stays
    float), depthwise convolutions excepted. The slower, full bias correction kept MPDD's AUPRO 0.06 point closer
    to FP32 than the fast one."""
    try:
        import nncf
    except ImportError as exc:
        raise DskdError("--int8 needs NNCF: pip install nncf (with this machine's torch kept as a constraint)") from exc
    images, valid = calibration
    step = batch or 1
    items = [{"images": images[i: i + step], **({} if valid is None else {"valid": valid[i: i + step]})}
             for i in range(0, len(images) - step + 1, step)]
    if not items:
        raise DskdError(f"--int8 with --batch {batch} needs at least {batch} training images, found {len(images)}")
    names = [op.get_friendly_name() for op in model.get_ordered_ops()
             if op.get_friendly_name().split("/")[0] not in inside]
    ignored = nncf.IgnoredScope(names=names, types=["GroupConvolution"], validate=False)
    nncf.set_log_level(logging.WARNING)  # its per-layer INFO lines would bury the CLI's output
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), ignored_scope=ignored,
                         fast_bias_correction=False)
