"""Export a trained run's whole inference path to one file: ONNX, OpenVINO IR (its .xml/.bin pair) or TorchScript.

The graph holds everything from pixels to decision inputs: the teacher's input normalization, teacher, students,
DF embedding, per-student and per-scale maps, the run's map normalization, fusion, smoothing and the image score
(BatchNorm folded). Input `images`: float32, N x 3 x S x S, RGB in [0, 1] (NCHW; S is the run's image size); in
`fit_mode="pad"` also `valid`: bool, N x S x S, True where the input shows the image. Outputs: `map` (N x 1 x S x S),
`score` (N), a cross-fitted model's `set_scores` (N x K: each student set's, which its decision compares with
the folds; one teacher, K student sets in one graph) and, on request, `student_maps` (N x C x S x S, one per
student). The file carries the run's metadata (`metadata()`; its keys: `dskd.decision.stored.FILE_KEYS`), so
`dskd.deploy.predictors` can predict from it alone, without PyTorch. `int8=True`: `dskd.deploy.int8`.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write, refused
from ..decision.stored import file_metadata, set_rt_info
from ..errors import DskdError
from ..model.cross_fitted import CrossFitModel
from ..model.network import DSKD
from ..run.folder import LoadedRun, load_run
from ..version import __version__
from .int8 import STUDENT_NETWORKS, network_nodes, quantize, training_images
from .predictors import FORMATS, SET_SCORES, weights_digest

log = logging.getLogger(__name__)
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}
OPSET = 18


class InferenceGraph(nn.Module):
    """A model from images to (map, score[, set scores][, student maps]), in one traceable forward."""

    def __init__(self, model: DSKD | CrossFitModel, student_maps: bool = False, padded: bool = False) -> None:
        super().__init__()
        self.model, self.student_maps, self.padded = model.float(), student_maps, padded
        self.cross_fitted = isinstance(model, CrossFitModel)
        self.eval()

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None):
        out = self.model.anomaly_map(images, valid=valid if self.padded else None, keep_students=self.student_maps)
        per_set = (out.set_scores,) if self.cross_fitted else ()
        if not self.student_maps:
            return out.map, out.score, *per_set
        return out.map, out.score, *per_set, torch.cat([out.per_student[n] for n in self.model.students], dim=1)


def metadata(loaded: LoadedRun, image_size: int, batch: int | None,
             int8: tuple[int, tuple[str, ...]] | None = None) -> dict[str, str]:
    cfg = loaded.run.config
    return file_metadata(loaded.decision(), version=__version__, fingerprint=cfg.fingerprint(),
                         run_name=loaded.run.path.name, image_size=image_size, fit_mode=cfg.fit_mode, batch=batch,
                         students=loaded.model.students, int8=int8)


def _names(graph: InferenceGraph) -> tuple[list[str], list[str]]:
    inputs = ["images", "valid"] if graph.padded else ["images"]
    return inputs, ["map", "score"] + ([SET_SCORES] if graph.cross_fitted else []) + (
        ["student_maps"] if graph.student_maps else [])


def _onnx_proto(graph: InferenceGraph, example: tuple, batch: int | None, meta: dict[str, str]):
    """The traced graph as one ONNX model in memory (weights inside), with the run's metadata."""
    inputs, outputs = _names(graph)
    shapes = None
    if batch is None:
        n = torch.export.Dim("batch", min=1, max=4096)
        shapes = {"images": {0: n}, **({"valid": {0: n}} if graph.padded else {})}
    with torch.no_grad():
        program = torch.onnx.export(graph, example, None, input_names=inputs, output_names=outputs,
                                    opset_version=OPSET, dynamic_shapes=shapes, dynamo=True, verbose=False)
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def _to_onnx(graph: InferenceGraph, example: tuple, path: Path, batch: int | None, meta: dict[str, str]):
    """Save the graph as one ONNX file; returns the model it saved (its nodes name what INT8 may quantize)."""
    import onnx

    proto = _onnx_proto(graph, example, batch, meta)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return proto


def export(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, image_size: int | None = None,
           batch: int | None = None, student_maps: bool = False, int8: bool = False, int8_teacher: bool = False,
           calibration_images: int = 300) -> Path:
    """Write a run's inference path to `out` (default: `<run>/model<suffix>`, `<run>/model_int8.xml` with `int8`);
    `batch=None` exports a dynamic batch dimension. Returns the file (OpenVINO: the .xml beside its .bin)."""
    if fmt not in FORMATS:
        raise DskdError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    if int8 and fmt != "openvino":
        raise DskdError(f"--int8 quantizes an OpenVINO model: use --format openvino, not {fmt}")
    if int8_teacher and not int8:
        raise DskdError("--int8-teacher quantizes the teacher as well: it needs --int8")
    loaded = load_run(run_dir, "cpu")
    if int8 and loaded.run.config.cross_fitted:
        raise DskdError(f"--int8 does not quantize a cross-fitted run ({loaded.run.config.folds} student sets) yet; "
                        "export it in FP32")
    size = image_size or loaded.run.config.image_size
    target = Path(out) if out else loaded.run.path / f"model{'_int8' if int8 else ''}{SUFFIX[fmt]}"
    meta = metadata(loaded, size, batch)
    present = tuple(m for m in STUDENT_NETWORKS if getattr(loaded.model, m.removeprefix("model."), None) is not None)
    calibration, quantized = None, present + (("model.teacher",) if int8_teacher else ())
    if int8:
        calibration = training_images(loaded, size, calibration_images)
        meta = metadata(loaded, size, batch, (len(calibration[0]), tuple(m.removeprefix("model.") for m in quantized)))
        log.warning("INT8 changes the maps: measure it on this run's test split before deploying it "
                    "(python -m benchmarks.int8; see results/benchmarks/int8.md for what it cost there)")
    export_model(loaded.model, fmt, target, meta, image_size=size, batch=batch, student_maps=student_maps,
                 padded=loaded.run.config.fit_mode == "pad", calibration=calibration, quantized=quantized)
    log.info("exported %s to %s", loaded.run.path, target)
    return target


def export_model(model: DSKD | CrossFitModel, fmt: str, target: Path, meta: dict[str, str], *, image_size: int,
                 batch: int | None = None, student_maps: bool = False, padded: bool = False,
                 calibration: tuple[np.ndarray, np.ndarray | None] | None = None,
                 quantized: tuple[str, ...] = STUDENT_NETWORKS) -> Path:
    """Export a model (converted with `for_inference()`) with the given metadata; `calibration` (images and, in
    pad mode, valid masks) quantizes the `quantized` networks of an OpenVINO export to INT8."""
    if image_size % 32 or image_size < 32:
        raise DskdError(f"--image-size {image_size} must be a multiple of 32 and at least 32")
    if target.suffix != SUFFIX[fmt]:
        raise DskdError(f"{target}: a {fmt} export needs the suffix {SUFFIX[fmt]}")
    graph = InferenceGraph(model, student_maps, padded)
    n = batch or 2
    example = (torch.rand(n, 3, image_size, image_size),)
    example += (torch.ones(n, image_size, image_size, dtype=torch.bool),) if padded else ()
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        atomic_write(target, lambda tmp: _to_onnx(graph, example, tmp, batch, meta))
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(graph, example, check_trace=False)
        atomic_write(target, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files={"dskd.json": json.dumps(meta)}))
    else:
        _to_openvino(graph, example, target, batch, meta, calibration, quantized)
    return target


def _to_openvino(graph: InferenceGraph, example: tuple, target: Path, batch: int | None, meta: dict[str, Any],
                 calibration: tuple[np.ndarray, np.ndarray | None] | None = None,
                 quantized: tuple[str, ...] = STUDENT_NETWORKS) -> None:
    """Through ONNX (OpenVINO's own PyTorch frontend would also do; ONNX keeps one traced graph for both)."""
    import openvino as ov

    onnx_tmp, tmp_xml = target.with_suffix(".tmp.onnx"), target.with_name(f".{target.stem}.tmp.xml")
    try:
        proto = _to_onnx(graph, example, onnx_tmp, batch, meta)
        model = ov.convert_model(str(onnx_tmp))
        if calibration is not None:
            model = quantize(model, calibration, batch, network_nodes(proto, quantized))
        for key, value in meta.items():
            model.set_rt_info(value, ["dskd", key])
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        except RuntimeError as exc:  # OpenVINO reports a full disk or a read-only folder as its own error
            raise refused(target, exc) from exc
        _seal(tmp_xml)
        tmp_xml.with_suffix(".bin").replace(target.with_suffix(".bin"))
        tmp_xml.replace(target)
    except OSError as exc:  # the intermediate ONNX file
        raise refused(target, exc) from exc
    finally:
        for leftover in (onnx_tmp, tmp_xml, tmp_xml.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


def _seal(xml: Path) -> None:
    """Record the weights' digest in the .xml and flush both to disk before either replaces a file: a crash
    between the two renames leaves a pair that `openvino_predictor` refuses, never one it reads."""
    tree = ET.parse(xml)
    digest = weights_digest(xml.with_suffix(".bin"))
    set_rt_info(tree.getroot().find("rt_info").find("dskd"), {"weights_sha256": digest})
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    for part in (xml, xml.with_suffix(".bin")):
        with open(part, "rb+") as f:
            os.fsync(f.fileno())


