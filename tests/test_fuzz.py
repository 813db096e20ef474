"""The input surface fuzzed (hypothesis): the command line's numeric flags, image files of every dtype, shape and
format, and the JSON of run folders. Whatever comes in, the answer is a value or one `DskdError` line, never another
exception, so that the next round of odd inputs is found here and not by users."""

import json
import math
import warnings

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from dskd import DskdError
from dskd.cli import build_parser, setting_fields
from dskd.data.images import read_image, read_mask
from dskd.decision import Decision
from dskd.run.profiles import profile_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMERIC = [name for name, f, owner in setting_fields() if owner.__annotations__.get(f.name) in
           ("int", "float", "int | None", "float | None")]

text_numbers = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                         st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", " 3", "3.5", "-0", "1_000"]),
                         st.text(max_size=6))


def test_the_fuzzed_flags_are_every_numeric_setting():
    assert {"seed", "image_size", "sigma", "batch_size", "epochs", "target_false_alarm", "val_fraction"} <= set(NUMERIC)


@FUZZ
@given(flag=st.sampled_from(NUMERIC), value=text_numbers)
def test_numeric_flags_give_a_setting_or_one_line(flag, value):
    parser = build_parser("test")
    try:
        args = parser.parse_args(["train", "--out", "x", f"--{flag.replace('_', '-')}={value}"])
        cfg = profile_config("test", **{flag: getattr(args, flag)}).validate()
    except DskdError as exc:
        assert "\n" not in str(exc) and flag in str(exc)
        return
    got = getattr(cfg, flag, None)
    got = getattr(cfg.model, flag) if got is None and hasattr(cfg.model, flag) else got
    assert got is None or (isinstance(got, (int, float)) and math.isfinite(got))


images = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, bool]),
               st.tuples(st.integers(1, 12), st.integers(1, 12)) | st.tuples(st.integers(1, 12), st.integers(1, 12),
                                                                           st.sampled_from([1, 2, 3, 4]))),
)


@FUZZ
@given(a=images, fmt=st.sampled_from(["png", "tif"]))
def test_any_image_file_reads_as_a_picture_or_one_line(tmp_path_factory, a, fmt):
    path = tmp_path_factory.mktemp("fuzz") / f"x.{fmt}"
    try:
        if fmt == "tif":
            tifffile.imwrite(path, a, photometric="rgb" if a.ndim == 3 and a.shape[2] in (3, 4) else "minisblack")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[2] == 1 else a).save(path)
    except (TypeError, ValueError, KeyError, OSError):
        return  # a file no writer makes is no input of ours
    for read in (read_image, read_mask):
        try:
            out = read(path)
        except DskdError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            continue
        assert out.shape[:2] == a.shape[:2] or fmt == "tif"  # tifffile may lay a small array out otherwise
        assert out.ndim == (3 if read is read_image else 2) and out.dtype == (np.uint8 if read is read_image else bool)


decisions = Decision.on_good_images(scores=np.linspace(0, 1, 30, dtype=np.float32),
                                    target=0.01, source="x").to_dict()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=6)


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(sorted(decisions)), json_values, max_size=4),
       dropped=st.sets(st.sampled_from(sorted(decisions)), max_size=3))
def test_any_decision_json_is_a_decision_or_one_line(edits, dropped):
    d = {k: v for k, v in {**decisions, **edits}.items() if k not in dropped}
    try:
        decision = Decision.from_dict(json.loads(json.dumps(d)), "run/decision.json")
    except DskdError as exc:
        assert "run/decision.json" in str(exc) and "\n" not in str(exc)
        return
    assert math.isfinite(decision.threshold) and decision.rule in ("val_false_alarm", "line_false_alarm",
                                                                   "train_mean_plus_3std", "f1_max_on_folder")


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(["image_size", "seed", "epochs", "dataset", "model", "batch_size",
                                              "se_optim", "fit_mode", "sigma"]), json_values, max_size=3))
def test_any_config_json_is_a_run_or_one_line(tmp_path_factory, edits):
    from dskd.run.folder import open_run

    folder = tmp_path_factory.mktemp("run")
    cfg = profile_config("test").to_dict()
    cfg.update(edits)
    (folder / "config.json").write_text(json.dumps({"config": cfg}))
    (folder / "checkpoint.pt").write_bytes(b"")
    try:
        run = open_run(folder)
    except DskdError as exc:
        assert "config.json" in str(exc) and "\n" not in str(exc)
        return
    assert run.config.validate() is not None


def test_a_whole_number_beyond_any_float_is_one_line(tmp_path):
    with pytest.raises(DskdError, match="seed=10+ must be a finite number"):
        profile_config("test", seed=10**400).validate()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "100000"])
def test_the_parser_and_the_settings_refuse_with_the_same_line(value):
    """`--sigma` given on the command line or in Python: the same words."""
    with pytest.raises(DskdError) as by_flag:
        build_parser("test").parse_args(["train", "--out", "x", "--sigma", value])
    with pytest.raises(DskdError) as by_settings:
        profile_config("test", sigma=float(value)).validate()
    assert str(by_settings.value) in str(by_flag.value)
