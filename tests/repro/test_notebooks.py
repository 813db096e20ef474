import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from dskd.model.config import ModelConfig
from dskd.repro import experiment_config, notebook_exec, runall
from dskd.repro.explorer import MapExplorer
from dskd.run import archive

from ..conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_committed_clean_with_parameters_cell():
    assert len(NOTEBOOKS) >= 10
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), path.name
        params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, path.name
        for name in ("profile", "data_root", "categories", "backbone", "image_size", "epochs", "seeds", "out_dir"):
            assert f"{name} =" in "".join(params[0]["source"]), (path.name, name)


ABSOLUTE = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|mnt|scratch|private)/")


def test_committed_results_name_no_machines_folders():
    """Executed notebooks, tables and notes under results/ record paths relative to the repository or as the user
    named them, never where one machine keeps its files."""
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    texts = [REPO / p for p in tracked if p.endswith((".ipynb", ".md", ".csv", ".json"))]
    assert len(texts) > 50
    found = {str(p.relative_to(REPO)): m.group(0) for p in texts if (m := ABSOLUTE.search(p.read_text()))}
    assert not found, found


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_every_notebook_executes_under_the_test_profile(tmp_path):
    code = runall.main(["--profile", "test", "--out", str(tmp_path), "--jobs", "2"])
    assert code == 0, [p.read_text()[-2000:] for p in (tmp_path / "notebooks").glob("*.log")]
    tables = {p.stem for p in (tmp_path / "tables").glob("*.csv")}
    assert {"table_mvtec_ad", "table_mvtec3d_rgb", "table_mt_defects", "table_mt_defects_per_defect",
            "ablation_students", "ablation_df_embedding", "ablation_multiscale", "backbones_complexity",
            "backbones_accuracy", "decisions_mvtec_ad", "decisions_mt_defects", "claims", "claims_summary"} <= tables
    claims = (tmp_path / "tables" / "claims.md").read_text()
    assert "synthetic textures" in claims and "none is the paper's" in claims
    verdicts = set(pd.read_csv(tmp_path / "tables" / "claims.csv")["verdict"])
    assert verdicts == {"inconclusive"}  # one seed: no spread, so nothing is more than inconclusive
    decisions = (tmp_path / "tables" / "decisions_mvtec_ad.md").read_text()
    assert "| false alarms | consistent | shift p | recall |" in decisions and "Clopper–Pearson" in decisions
    for name in tables:
        assert (tmp_path / "tables" / f"{name}.md").is_file()
    md = (tmp_path / "tables" / "table_mvtec_ad.md").read_text()
    assert "synthetic textures standing in for MVTec AD" in md and "64 px" in md and "seeds 0" in md
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "qualitative_synthetic_stripes.png" in figures and "qualitative_synthetic_stripes.pdf" in figures
    assert len(list((tmp_path / "notebooks").glob("*.ipynb"))) == len(NOTEBOOKS)
    # A second run finds everything up to date and runs nothing.
    again = subprocess.run([sys.executable, "-m", "dskd.repro.runall", "--profile", "test", "--out",
                            str(tmp_path), "--only", "22"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_run_all_help_documents_every_option():
    out = subprocess.run([str(REPO / "run_all.sh"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for option in ("--profile", "--data-root", "--only", "--force", "--jobs", "demo", "quick", "paper"):
        assert option in out, option


def test_run_all_reports_failures_and_unknown_names(tmp_path, capsys):
    assert runall.main(["--only", "99_nothing", "--out", str(tmp_path)]) == 2
    assert "99_nothing" in capsys.readouterr().err


@pytest.fixture
def fake_run(tmp_path):
    """A run directory whose saved maps are known exactly."""
    n, s = 3, 32
    masks = np.zeros((n, s, s), bool)
    masks[1, 4:12, 4:12] = True  # 64 defect pixels
    maps = np.zeros((n, s, s), np.float32)
    maps[1, 4:12, 4:16] = 1.0  # 96 predicted pixels, 64 of them right: IoU 64/96
    maps16 = maps.astype(np.float16)
    saved = archive.SavedMaps(
        images=np.zeros((n, s, s, 3), np.uint8), masks=masks, labels=np.array([0, 1, 0]),
        scores=maps.reshape(n, -1).max(1), maps=maps16, paths=["a.png", "b.png", "c.png"],
        defect_types=["good", "hole", "good"], threshold=0.5, per_student={"se": maps16, "sd": maps16 * 2},
        per_scale={name: [maps[:, ::f, ::f] for f in (4, 8, 16)] for name in ("se", "sd")},
        norm=np.zeros((2, 2, 3), np.float32), fusion=archive.SavedMaps.fusion_of(ModelConfig()))
    run = tmp_path / "run"
    archive.save(run / "maps.npz", saved)
    return run


def test_explorer_starts_at_the_runs_deployed_pixel_threshold(fake_run):
    saved = archive.load(fake_run)
    saved.pixel_threshold = 0.75
    archive.save(fake_run / "maps.npz", saved)
    ex = MapExplorer({"fake": fake_run})
    assert ex.threshold == pytest.approx(0.75)  # the overlay's outline, not the image threshold (0.5)
    ex.set_view("student sd")
    assert ex.threshold == pytest.approx(np.percentile(ex.current_map(), 99))


def test_explorer_callbacks_and_iou(fake_run):
    ex = MapExplorer({"fake": fake_run})
    assert ex.threshold == pytest.approx(0.5) and ex.iou() == 1.0  # image 0: nothing predicted, nothing true
    ex.set_image(1)
    assert ex.iou() == pytest.approx(64 / 96)
    ex.set_threshold(2.0)  # above the map: a flagged image keeps its peak outlined, as the overlay draws it
    assert ex.iou() == pytest.approx(64 / 96)
    ex.set_threshold(0.0)
    ex.set_image(2)  # passed by the decision: no outline at any threshold
    assert not ex.prediction().any() and ex.iou() == 1.0
    ex.set_image(1)
    ex.set_view("student sd")
    ex.set_threshold(1.5)
    assert ex.iou() == pytest.approx(64 / 96)
    assert "scale 3 of se" in ex.views
    ex.set_view("scale 1 of se")
    assert ex.current_map().shape == (32, 32)
    ex.set_opacity(3.0)
    assert ex.opacity == 1.0
    with pytest.raises(ValueError, match="out of range"):
        ex.set_image(7)
    with pytest.raises(ValueError, match="fused"):
        ex.set_view("nonsense")
    box = ex.widget()  # builds every control without a running kernel
    assert len(box.children) == 4
    ex.set_cmap("viridis")
    fig = ex.figure()
    assert any("IoU" in ax.get_title() for ax in fig.axes)


def _notebook(path, *cells):
    """A notebook with run_all's parameters cell, then `cells`."""
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    params = nbformat.v4.new_code_cell('profile = "demo"\nout_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_notebook_past_its_limit_is_stopped_retried_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    books = tmp_path / "notebooks"
    books.mkdir()
    _notebook(books / "01_sleeps.ipynb", "import time\ntime.sleep(10 ** 6)")
    _notebook(books / "02_dies.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    _notebook(books / "03_works.ipynb", "from pathlib import Path\nPath(out_dir, 'done.txt').write_text('yes')")
    monkeypatch.setattr(runall, "NOTEBOOKS", books)
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.perf_counter()
    code = runall.main(["--profile", "test", "--out", str(out), "--timeout", "8"])
    seconds = time.perf_counter() - t0
    said = capsys.readouterr().out
    assert code == 1
    rows = {line.split()[0]: line for line in said.splitlines() if line.startswith(("01_", "02_", "03_"))}
    assert "timed out twice" in rows["01_sleeps"] and "kernel died twice" in rows["02_dies"], said
    assert rows["03_works"].split()[1] == "ok" and (out / "done.txt").read_text() == "yes"
    assert said.count("retrying once in a fresh kernel") == 2
    for stem in ("01_sleeps", "02_dies"):  # both attempts' logs are kept, and say what stopped them
        assert (out / "notebooks" / f"{stem}.attempt1.log").is_file() and (out / "notebooks" / f"{stem}.log").is_file()
    assert "CellTimeoutError" in (out / "notebooks" / "01_sleeps.log").read_text()
    assert "2 failed" in said and seconds < 300  # two 8 s cells, each twice, plus kernel starts: far from forever


def test_the_wall_clock_limit_stops_a_notebook_whose_client_never_returns(tmp_path):
    """papermill's own cell limit cannot fire when papermill itself is stuck; the process limit still does."""
    nb = tmp_path / "stuck.ipynb"
    _notebook(nb, "print('hello')")
    assert notebook_exec.Limits(cell_s=1, start_s=1).total_s(nb) == 1 + 1 * 2 + 60  # start, each code cell, a minute

    class ThreeSeconds(notebook_exec.Limits):
        def total_s(self, notebook):
            return 3

    fake = tmp_path / "fake" / "papermill"  # a papermill that hangs before running anything
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import time\ntime.sleep(10 ** 6)\n")
    t0 = time.perf_counter()
    why = notebook_exec.papermill(nb, tmp_path / "out.ipynb", {}, tmp_path / "log.txt", ThreeSeconds(cell_s=1),
                                  env={"PYTHONPATH": str(fake.parent)})
    assert why == notebook_exec.TIMED_OUT and time.perf_counter() - t0 < 30
    assert "wall-clock limit" in (tmp_path / "log.txt").read_text()


def test_run_all_refuses_a_timeout_that_is_not_a_positive_number(capsys):
    with pytest.raises(SystemExit) as exc:
        runall.main(["--timeout", "0"])
    assert exc.value.code == 2 and "--timeout" in capsys.readouterr().err


def _execute_counting_replies(path, monkeypatch) -> tuple[dict, list]:
    """Execute a notebook with nbclient (papermill's client) in this process; every comm message its Output-widget
    stand-in sends back to the kernel on the shell channel is recorded."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.output_widget import OutputWidget

    sent, original = [], OutputWidget.send
    monkeypatch.setattr(OutputWidget, "send", lambda self, *a, **k: (sent.append(a), original(self, *a, **k))[1])
    client = NotebookClient(nbformat.read(path, 4), timeout=300, startup_timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return client.widget_state, sent


@pytest.mark.timeout(600)
def test_the_explorer_sends_nothing_back_to_the_kernel_under_papermill(fake_run, tmp_path, monkeypatch):
    """The cause of the explorer's hang (docs/findings.md section 21): drawing into an Output widget by capture makes
    nbclient answer on the shell channel while it waits there for the cell's reply. The explorer draws by setting
    the widget's outputs, so nothing is sent; the control, a capture, does send."""
    explorer = tmp_path / "explorer.ipynb"
    _notebook(explorer, "from dskd.repro.explorer import MapExplorer\n"
                        f"ex = MapExplorer({{'fake': {str(fake_run)!r}}})\n"
                        "box = ex.widget()\nex.set_image(1)\nex.set_threshold(2.0)\nbox")
    state, sent = _execute_counting_replies(explorer, monkeypatch)
    shown = [o for s in state.values() if s.get("_model_name") == "OutputModel" for o in s.get("outputs", [])]
    assert sent == [] and len(shown) == 1 and "image/png" in shown[0]["data"]
    capture = tmp_path / "capture.ipynb"
    _notebook(capture, "import ipywidgets as w\nfrom IPython.display import display\nout = w.Output()\n"
                       "with out:\n    display('drawn by capture')\nout")
    assert len(_execute_counting_replies(capture, monkeypatch)[1]) >= 1


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_explorer_notebook_finishes_within_its_limit_beside_a_training_run(tmp_path, data_root):
    """The notebook that hung, run three times under papermill while a training run keeps the CPU busy."""
    busy = subprocess.Popen([sys.executable, "-m", "dskd", "train", "--profile", "test", "--epochs", "200",
                             "--data-root", str(data_root), "--out", str(tmp_path / "busy"), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notebook = REPO / "notebooks" / "40_explore_anomaly_maps.ipynb"
        limits = notebook_exec.Limits(cell_s=240)
        params = {"profile": "test", "out_dir": str(tmp_path / "results")}
        for attempt in range(3):  # the first trains the notebook's runs; the others find them cached
            assert busy.poll() is None, "the training run beside ended early"
            log = tmp_path / f"attempt{attempt}.log"
            t0 = time.perf_counter()
            why = notebook_exec.papermill(notebook, tmp_path / "executed.ipynb", params, log, limits)
            assert why is None, (attempt, why, log.read_text()[-2000:])
            assert time.perf_counter() - t0 < limits.total_s(notebook)
    finally:
        busy.kill()
        busy.wait()


def test_every_notebook_declares_the_generated_parameters_and_resolves_them_in_one_call():
    """The parameters cell is `ExperimentConfig`'s fields, generated (`experiment_config.parameters_cell`); a
    notebook turns them into its experiment with one call."""
    cell = experiment_config.parameters_cell()
    for path in NOTEBOOKS:
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        params = next(c for c in code if "parameters" in c.get("metadata", {}).get("tags", []))
        assert "".join(params["source"]) == cell, f"{path.name}: regenerate its parameters cell"
        body = "".join("".join(c["source"]) for c in code if c is not params)
        assert "suite.from_parameters(globals())" in body and "profile=profile" not in body, path.name


def test_a_new_parameter_is_one_field(monkeypatch, capsys):
    """Adding a field to ExperimentConfig gives run_all its flag, every notebook its parameter line, and run_all
    passes the flag's value to the notebooks, with nothing else edited."""
    from dskd.settings import setting

    extended = dataclasses.make_dataclass(
        "ExperimentConfig", [("target_false_alarm", float, setting(0.01, "the false-alarm target"))],
        bases=(experiment_config.ExperimentConfig,), frozen=True)
    monkeypatch.setattr(experiment_config, "ExperimentConfig", extended)
    assert "target_false_alarm = 0.01" in experiment_config.parameters_cell()
    args = runall._parser().parse_args(["--target-false-alarm", "0.05", "--profile", "test"])
    config = experiment_config.from_parameters(vars(args))
    assert config.target_false_alarm == 0.05 and config.profile == "test"
    told = runall.notebook_params(vars(args), config, REPO / "results" / "test")
    assert told == {"target_false_alarm": 0.05, "profile": "test", "out_dir": "../results/test"}
    with pytest.raises(SystemExit):
        runall._parser().parse_args(["--help"])
    assert "--target-false-alarm" in capsys.readouterr().out


def test_run_all_tells_the_notebooks_paths_they_can_share(tmp_path):
    """A data root named by a relative path reaches the notebooks relative to notebooks/, never as this machine's
    absolute path; an absolute one outside the repository stays as named."""
    rel = os.path.relpath(tmp_path, REPO)
    assert runall._shown(rel) == os.path.relpath(tmp_path, REPO / "notebooks")
    assert runall._shown(str(tmp_path)) == str(tmp_path)
    assert runall._shown(REPO / "results" / "quick") == "../results/quick"
