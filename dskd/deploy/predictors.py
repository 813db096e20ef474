"""Predictors behind one interface, whichever engine runs the model: PyTorch (a run folder), or an exported file
through ONNX Runtime or OpenVINO; and a user's images scored through one, image by image (`scored`). The exported
engines need NumPy, Pillow and their runtime, not PyTorch."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import content_mask, fit_to_square, read_image
from ..decision import Decision
from ..decision.stored import from_metadata, openvino_metadata
from ..errors import DskdError

ENGINES = ("torch", "onnxruntime", "openvino")
FORMATS = ("onnx", "openvino", "torchscript")  # what `dskd.deploy.export` writes
# OpenVINO CPU settings that keep a model in FP32 as exported: on CPUs with native bfloat16 OpenVINO would otherwise
# lower the precision (maps 1e-2 off, here).
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
SET_SCORES = "set_scores"  # a cross-fitted model's output: each student set's score (N x K)
OLD_SET_SCORES = "member_scores"  # its name in files exported before 2026-12-07
Infer = Callable[[np.ndarray, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]


@dataclass
class Predictor:
    """`infer(images, valid)`: images N x 3 x S x S uint8 (RGB), valid N x S x S bool (pad mode) or None; returns
    maps N x S x S, scores N and, from a cross-fitted model, each student set's scores (N x K; else None), which
    its decision needs (`Decision.flags`). Exported models take the images as float32 in [0, 1]. `source` is the
    run folder or file the predictor reads, `kind` the engine reading it ("run": PyTorch, "onnx" or "openvino")."""

    infer: Infer
    image_size: int
    fit_mode: str
    decision: Decision  # the deployed decision (`Decision.flags`)
    source: str
    kind: str = "run"

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def pixel_threshold(self) -> float:  # the overlay outlines pixels >= it
        return self.decision.pixel_threshold

    @classmethod
    def from_metadata(cls, infer: Infer, meta: dict[str, str], source: str, kind: str) -> Predictor:
        size, fit_mode, decision = from_metadata(meta, source)
        return cls(infer, size, fit_mode, decision, source, kind)


def as_input(images: np.ndarray) -> np.ndarray:
    """uint8 N x 3 x S x S -> float32 in [0, 1], the exported graph's input."""
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)


def _needs(module: str, extra: str = "deploy"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DskdError(f"{module} is not installed; pip install 'dskd[{extra}]' (or pip install {module})") from None


def onnxruntime_predictor(path: Path) -> Predictor:
    ort = _needs("onnxruntime")
    try:
        runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own types for bad files
        raise DskdError(f"{path}: not a readable ONNX model ({type(exc).__name__}); export it again") from exc
    inputs = [i.name for i in runtime.get_inputs()]
    per_set = [o.name for o in runtime.get_outputs() if o.name in (SET_SCORES, OLD_SET_SCORES)]

    def infer(images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        feed = {"images": as_input(images), **({"valid": valid} if "valid" in inputs else {})}
        amap, score, *set_scores = runtime.run(["map", "score", *per_set], feed)
        return amap[:, 0], score, set_scores[0] if set_scores else None

    return Predictor.from_metadata(infer, runtime.get_modelmeta().custom_metadata_map, str(path), "onnx")


def openvino_predictor(path: Path) -> Predictor:
    ov = _needs("openvino")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError for bad files
        raise DskdError(f"{path}: not a readable OpenVINO model ({type(exc).__name__}); export it again") from exc
    meta = openvino_metadata(model)
    _check_weights(path, meta.get("weights_sha256"))
    compiled = core.compile_model(model, "CPU", OPENVINO_FP32)
    inputs = [p.get_any_name() for p in compiled.inputs]
    names = {name for p in compiled.outputs for name in p.get_names()}
    per_set = next((n for n in (SET_SCORES, OLD_SET_SCORES) if n in names), None)

    def infer(images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        out = compiled({"images": as_input(images), **({"valid": valid} if "valid" in inputs else {})})
        return (out[compiled.output("map")][:, 0], out[compiled.output("score")],
                out[compiled.output(per_set)] if per_set else None)

    return Predictor.from_metadata(infer, meta, str(path), "openvino")


def weights_digest(path: Path) -> str:
    """SHA-256 of an IR's weights (.bin), which its .xml records so that a pair left mismatched is refused."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_weights(xml: Path, recorded: str | None) -> None:
    if recorded is not None and weights_digest(xml.with_suffix(".bin")) != recorded:
        raise DskdError(f"{xml}: its weights ({xml.with_suffix('.bin').name}) are not the ones it was exported with "
                        "(an export or a copy was cut short); export it again")


def torch_predictor(run_dir: Path, device: str = "auto") -> Predictor:
    import torch

    from ..run.batch_maps import maps_in_batches
    from ..run.folder import load_run

    loaded = load_run(run_dir, device)
    decision = loaded.decision()

    def infer(images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x = torch.from_numpy(np.ascontiguousarray(images))
        v = None if valid is None else torch.from_numpy(valid)
        (_, _, out), = maps_in_batches(loaded.model, x, loaded.device, len(x), loaded.precision, valid=v,
                                       keep_students=False)
        members = None if out.set_scores is None else out.set_scores.float().cpu().numpy()
        return out.map[:, 0].float().cpu().numpy(), out.score.float().cpu().numpy(), members

    cfg = loaded.run.config
    return Predictor(infer, cfg.image_size, cfg.fit_mode, decision, str(run_dir), "run")


def open_predictor(run: str | Path | None = None, model: str | Path | None = None, engine: str | None = None,
                   device: str = "auto") -> Predictor:
    """A predictor from a run folder (engine torch) or an exported file (engine from its suffix unless given)."""
    if (run is None) == (model is None):
        raise DskdError("give either --run RUN_DIR (PyTorch) or --model FILE (an exported model), not both")
    if run is not None:
        if engine not in (None, "torch"):
            raise DskdError(f"--engine {engine} runs an exported file: export the run, then pass --model FILE")
        return torch_predictor(Path(run), device)
    path = Path(model)
    if not path.is_file():
        raise DskdError(f"{path}: no such model file; export one with 'python -m dskd export --run RUN'")
    engine = engine or ("openvino" if path.suffix.lower() == ".xml" else "onnxruntime")
    if engine == "torch":
        raise DskdError("--engine torch needs --run RUN_DIR; an exported file runs on onnxruntime or openvino")
    return onnxruntime_predictor(path) if engine == "onnxruntime" else openvino_predictor(path)


def predict_image(predictor: Predictor, original: np.ndarray) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(S x S map, score, each student set's score of a cross-fitted model or None) of one H x W x 3 uint8 image."""
    size, mode = predictor.image_size, predictor.fit_mode
    x = fit_to_square(original, size, Image.BILINEAR, mode).transpose(2, 0, 1)[None]
    valid = content_mask(original.shape[1], original.shape[0], size, mode)[None] if mode == "pad" else None
    maps, scores, set_scores = predictor.infer(np.ascontiguousarray(x), valid)
    return maps[0], float(scores[0]), None if set_scores is None else set_scores[0]


def scored(predictor: Predictor, paths: list[Path], desc: str, quiet: bool
           ) -> Iterator[tuple[Path, np.ndarray | None, np.ndarray | None, float | DskdError, np.ndarray | None]]:
    """(path, image, map, score, set scores) for each path in turn (`predict_image`), or (path, None, None, the
    error, None) for an unreadable one.
    Close it (`contextlib.closing`) when stopping early: its progress bar then ends its line before an error's."""
    with tqdm(total=len(paths), desc=desc, disable=quiet, unit="image") as bar:
        for path in paths:
            try:
                original = read_image(path)
            except DskdError as exc:
                yield path, None, None, exc, None
            else:
                yield path, original, *predict_image(predictor, original)
            bar.update()
