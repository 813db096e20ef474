"""Where a decision is stored, with one reader and one writer for each place: a run's `decision.json`, a student set's
out-of-fold scores (`out_of_fold_scores.json`), and an exported file's metadata (ONNX metadata_props, the OpenVINO
IR's rt_info). Every metadata key an exported file carries is named here, so that export, prediction and calibration
agree on them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, read_json, write_json
from ..errors import DskdError
from .record import Decision

DECISION_FILE = "decision.json"
OUT_OF_FOLD_FILE = "out_of_fold_scores.json"
# An exported file's metadata: what it is, how to feed it, and its decision (all values are strings).
FILE_KEYS = ("dskd_version", "fingerprint", "run_name", "image_size", "fit_mode", "batch", "precision", "students",
             "input_layout", "calibration", "int8_networks", "weights_sha256", "decision")
# Files exported before 2026-12-07 also repeated the decision's thresholds in keys of their own; older ones carried
# only these (read, never written).
OLD_DECISION_KEYS = ("threshold", "threshold_rule", "pixel_threshold")
RUN_REMEDY = "calibrating the run again"


def write_decision(path: Path, decision: Decision) -> Path:
    """A run's decision.json (atomically)."""
    return write_json(path, decision.to_dict())


def read_decision(path: Path, remedy: str = RUN_REMEDY) -> Decision:
    """A run's decision.json, in any schema; `remedy` says what to do when it cannot be read."""
    return Decision.from_dict(read_json(path, remedy), str(path))


def write_out_of_fold(folder: Path, scores: list[float]) -> Path:
    """A student set's scores of the fold it never trained on (sorted); the run's cross-conformal decision is made
    from every set's."""
    return write_json(folder / OUT_OF_FOLD_FILE, {"schema": 2, "scores": sorted(float(s) for s in scores)})


def read_out_of_fold(folder: Path, remedy: str) -> list[float]:
    """A student set's sorted out-of-fold scores; a set trained before 2026-12-07 kept them in a decision (schema 1
    of the file also kept an outline threshold, no longer used)."""
    path = folder / OUT_OF_FOLD_FILE
    earlier = not path.is_file() and (folder / DECISION_FILE).is_file()
    if earlier:
        path = folder / DECISION_FILE
    stored = read_json(path, remedy)
    try:
        return [float(s) for s in stored["calibration_scores" if earlier else "scores"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DskdError(f"{path}: not a student set's out-of-fold scores ({type(exc).__name__}); fix it by "
                        f"{remedy}") from exc


def file_metadata(decision: Decision, *, version: str, fingerprint: str, run_name: str, image_size: int, fit_mode: str,
                  batch: int | None, students: tuple[str, ...], int8: tuple[int, tuple[str, ...]] | None = None,
                  ) -> dict[str, str]:
    """An exported file's metadata (`FILE_KEYS`; `from_metadata` reads it back): what the file is, how to feed it,
    and its decision; `int8`: (how many training images calibrated it, the networks quantized)."""
    meta = {"dskd_version": version, "fingerprint": fingerprint, "run_name": run_name, "image_size": str(image_size),
            "fit_mode": fit_mode, "batch": "dynamic" if batch is None else str(batch), "precision": "fp32",
            "students": ",".join(students), **to_metadata(decision),
            "input_layout": "images: float32 N x 3 x S x S, RGB in [0, 1]" + (
                "; valid: bool N x S x S" if fit_mode == "pad" else "")}
    if int8 is not None:
        meta.update(precision="int8", calibration=f"{int8[0]} training images of the run (NNCF)",
                    int8_networks=", ".join(int8[1]))
    return meta


def to_metadata(decision: Decision) -> dict[str, str]:
    """The decision as an exported file's metadata carries it."""
    return {"decision": json.dumps(decision.to_dict())}


def from_metadata(meta: dict[str, str], source: str) -> tuple[int, str, Decision]:
    """(image size, fit mode, decision) of an exported file's metadata, in any version's keys."""
    missing = [k for k in ("image_size", "fit_mode") if k not in meta] + \
        ([] if "decision" in meta or "threshold" in meta else ["decision"])
    if missing:
        raise DskdError(f"{source} lacks dskd metadata ({', '.join(missing)}); export it with "
                        "'python -m dskd export --run RUN'")
    try:
        stored = json.loads(meta["decision"]) if "decision" in meta else {
            "threshold": float(meta["threshold"]), "rule": meta.get("threshold_rule", "val_false_alarm"),
            "pixel_threshold": float(meta.get("pixel_threshold", meta["threshold"])),
            "source": "the exported file's metadata", "n_images": 0}
        size = int(meta["image_size"])
    except ValueError as exc:
        raise DskdError(f"{source}: its dskd metadata is corrupt ({exc}); export it again") from exc
    return size, meta["fit_mode"], Decision.from_dict(stored, f"{source} (decision metadata)")


def openvino_metadata(model: Any) -> dict[str, str]:
    """An OpenVINO model's dskd metadata: our IR's own section, or, for an ONNX file read by OpenVINO, the
    "framework" section its metadata lands in."""
    meta = {}
    for key in (*FILE_KEYS, *OLD_DECISION_KEYS):
        for section in ("dskd", "framework"):
            if key not in meta and model.has_rt_info([section, key]):
                meta[key] = model.get_rt_info([section, key]).astype(str)
    return meta


def write_file_decision(path: Path, decision: Decision) -> None:
    """Replace the decision in an exported ONNX or OpenVINO file (atomically), its graph and weights untouched;
    keys older versions wrote for the decision go."""
    if path.suffix.lower() == ".onnx":
        _rewrite_onnx(path, to_metadata(decision))
    else:
        _rewrite_openvino(path, to_metadata(decision))


def _rewrite_onnx(path: Path, meta: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise DskdError("calibrating an .onnx file needs the onnx package: pip install onnx") from None
    proto = onnx.load_model(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in meta and p.key not in OLD_DECISION_KEYS]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(path, lambda tmp: onnx.save_model(proto, str(tmp), save_as_external_data=False))


def _rewrite_openvino(path: Path, meta: dict[str, str]) -> None:
    """The IR's rt_info rewritten; the weights (.bin) are untouched, so only the .xml is replaced (atomically)."""
    tree = ET.parse(path)
    info = tree.getroot().find("rt_info")
    section = None if info is None else info.find("dskd")
    if section is None:
        raise DskdError(f"{path}: no dskd metadata in this IR; export it with 'python -m dskd export --run RUN "
                        "--format openvino'")
    set_rt_info(section, meta)
    for key in OLD_DECISION_KEYS:
        for old in section.findall(key):
            section.remove(old)
    atomic_write(path, lambda tmp: tree.write(tmp, encoding="utf-8", xml_declaration=True))


def set_rt_info(section: ET.Element, meta: dict[str, str]) -> None:
    """Set keys of an IR's rt_info section (an .xml element), as OpenVINO writes them."""
    for key, value in meta.items():
        entry = section.find(key)
        if entry is None:
            entry = ET.SubElement(section, key)
        entry.set("value", value)
