import pytest

from dskd import DskdError
from dskd.run.config import RunConfig


def test_fields_added_later_keep_earlier_run_names():

    # the settings of 2026-11-26's quick profile, spelled out so that a later profile change cannot move them
    cfg = RunConfig().with_overrides(
        dataset="mt_defects", category="mt_defects", data_root="../shared/data", backbone="efficientnet_lite0",
        split_file="../shared/data/mt_defects/splits/differnet_train_free.txt", image_size=64, epochs=6, batch_size=8,
    ).validate()
    old = cfg.with_overrides(recalibrate_bn=False, lr_schedule="constant", df_input="raw", val_fraction=0.0)
    # the name the 3-seed quick benchmark's seed-0 dskd run had before these fields existed (2026-11-26)
    assert old.fingerprint() == "20e493b2cb24"
    assert cfg.fingerprint() != old.fingerprint()  # recalibrated runs are other runs
    assert RunConfig.from_dict(old.to_dict()).fingerprint() == old.fingerprint()
    # a config.json written before a field existed reads as what that run did, not as today's default
    written_then = {k: v for k, v in old.to_dict().items() if k not in ("recalibrate_bn", "val_fraction")}
    assert RunConfig.from_dict(written_then) == old
    # the image score's pixel count (retired for a share of the map) keeps the names of the runs that had it
    counted = old.to_dict()
    counted["model"] = {**{k: v for k, v in counted["model"].items() if k != "score_share"}, "score_topk": 0}
    assert RunConfig.from_dict(counted).fingerprint() == "20e493b2cb24"
    counted["model"]["score_topk"] = 64
    assert RunConfig.from_dict(counted).model.score_share == 64 / 64 ** 2




def test_train_parser_has_a_flag_for_every_setting():
    """A new settings field without a flag fails here: the parser is generated from the dataclasses."""
    import dataclasses

    from dskd.cli import build_parser
    from dskd.model.config import ModelConfig
    from dskd.run.config import OptimConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest: a for a in train._actions}
    wanted = {f.name for f in dataclasses.fields(ModelConfig)}
    wanted |= {f"{o}_{f.name}" for o in ("se_optim", "sd_optim") for f in dataclasses.fields(OptimConfig)}
    wanted |= {f.name for f in dataclasses.fields(RunConfig) if f.name not in ("model", "se_optim", "sd_optim")
               and f.metadata["cli"]}
    assert wanted <= set(dests), sorted(wanted - set(dests))
    assert set(dests["student_fusion"].choices) == {"sum", "mean", "max"}
    assert set(dests["precision"].choices) == {"auto", "float32", "bfloat16", "float16"}
    from dskd.run.profiles import PROFILES

    assert "quick: each dataset's own: mvtec_ad 256, mvtec3d 256, mt_defects 128" in dests["image_size"].help
    assert f"test: {PROFILES['test']['image_size']}" in build_parser("test")._subparsers._group_actions[0].choices[
        "train"]._option_string_actions["--image-size"].help
    assert dests["scale_weights"].nargs == 3


def test_flags_reach_the_run_config():
    from dskd.cli import build_parser, setting_fields
    from dskd.run.profiles import profile_config

    args = build_parser().parse_args(["train", "--out", "x", "--score-share", "0.05", "--student-fusion", "max",
                                      "--scale-weights", "1", "2", "3", "--se-optim-lr", "0.1", "--no-recalibrate-bn",
                                      "--precision", "bfloat16", "--sigma", "2"])
    overrides = {name: getattr(args, name) for name, _, _ in setting_fields()}
    cfg = profile_config("quick", **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    assert (cfg.model.score_share, cfg.model.student_fusion, cfg.model.sigma) == (0.05, "max", 2.0)
    assert cfg.model.scale_weights == (1.0, 2.0, 3.0) and cfg.se_optim.lr == 0.1 and cfg.sd_optim.lr == 0.005
    assert cfg.recalibrate_bn is False and cfg.precision == "bfloat16"
    assert cfg.size_from == "dataset" and cfg.image_size == 128  # synthetic's own size


def test_precision_is_part_of_a_runs_identity():
    from dskd.run.profiles import profile_config

    base = profile_config("test")
    assert base.with_device("cpu").precision == "float32"
    assert base.fingerprint() == base.with_overrides(precision="float32").fingerprint()  # auto is float32
    bf16 = base.with_overrides(precision="bfloat16")
    assert bf16.fingerprint() != base.fingerprint() and bf16.run_name() != base.run_name()
    with pytest.raises(DskdError, match="float16 needs a CUDA"):
        base.with_overrides(precision="float16").with_device("cpu")
    with pytest.raises(DskdError, match="precision='double'"):
        base.with_overrides(precision="double").validate()


def test_settings_are_validated_with_one_line_errors():
    from dskd.run.profiles import profile_config

    for bad, words in ((dict(student_fusion="median"), "student_fusion"), (dict(sigma=-1), "sigma"),
                       (dict(scale_weights=(1.0, 1.0)), "scale_weights"), (dict(se_optim_name="rmsprop"), "name"),
                       (dict(variant="sd_only", df_source="se"), "sd_only")):
        with pytest.raises(DskdError) as e:
            profile_config("test", **bad).validate()
        assert words in str(e.value) and "\n" not in str(e.value)


def test_quick_takes_each_kind_of_datas_own_image_size_and_says_so(tmp_path):
    """MT Defects' small tiles at 128 px, photographs (and a user's own folder) at 256; a given size wins and the
    run records which applied; training says so on the command line."""
    import json
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from dskd.run.profiles import profile_config

    from ..conftest import REPO

    mt, own = profile_config("quick", dataset="mt_defects"), profile_config("quick", dataset="folder")
    assert (mt.image_size, mt.epochs, own.image_size, own.epochs, own.size_from) == (128, 21, 256, 10, "dataset")
    given = profile_config("quick", dataset="folder", image_size=128)
    assert (given.image_size, given.size_from) == (128, "given") and given.fingerprint() != own.fingerprint()
    good = tmp_path / "parts" / "washer" / "good"
    good.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(90, 130, (40, 40, 3), dtype=np.uint8)).save(good / f"{i}.png")
    r = subprocess.run([sys.executable, "-m", "dskd", "train", "--dataset", "folder", "--category", "washer",
                        "--data-root", str(tmp_path / "parts"), "--epochs", "1", "--out", str(tmp_path / "run"),
                        "--quiet", "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "image size 256 px, 1 epochs: folder's own under the quick profile" in r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["image_size"], config["size_from"]) == (256, "dataset")
