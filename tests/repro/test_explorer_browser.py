"""The explorer notebook in a real browser: JupyterLab on the loopback address, headless Chromium driven by
Playwright. The test runs the notebook, moves the image slider, switches the view and checks that the rendered
map changes each time and that no error appears. CI installs Debian's `chromium` (.ci/run) and Playwright (the dev
extra); Playwright cannot download its own browser here."""

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ..conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """The explorer notebook with the `test` profile's parameters (its runs trained once by papermill), served by
    JupyterLab on 127.0.0.1."""
    out = tmp_path / "results"
    prepared = tmp_path / "explore.ipynb"
    params = ["-p", "profile", "test", "-p", "out_dir", str(out)]
    src = REPO / "notebooks" / "40_explore_anomaly_maps.ipynb"
    for extra in ([], ["--prepare-only"]):  # first execute (trains the runs), then only inject the parameters
        r = subprocess.run([sys.executable, "-m", "papermill", str(src), str(prepared), *params, "-k", "python3",
                            "--cwd", str(tmp_path), *extra], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                               f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
                               f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
        yield f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}", tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)


KERNEL_READY = """() => {
    const kernel = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
    return Boolean(kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle');
}"""


def _start_kernel(page) -> None:
    """Wait for the notebook's kernel, accepting JupyterLab's kernel dialog (the default, Python 3) if it asks."""
    for _ in range(240):
        accept = page.locator(".jp-Dialog .jp-mod-accept")
        if accept.count():
            accept.first.click()
        if page.evaluate(KERNEL_READY):
            return
        time.sleep(0.5)
    raise AssertionError("the notebook's kernel did not start")


def _map_image(page) -> str:
    """The explorer's current figure: the PNG the Output widget shows."""
    img = page.locator(".widget-output img").first
    img.wait_for(timeout=120_000)
    return img.get_attribute("src")


def _changed(page, before: str) -> str:
    for _ in range(120):
        now = _map_image(page)
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError("the rendered map did not change")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (CI installs Debian's chromium package)")
def test_explorer_widgets_in_a_real_browser(lab):
    url, folder = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
        _start_kernel(page)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        first = _map_image(page)

        handle = page.locator(".widget-slider:has(label:text-is('image')) .noUi-handle").first
        handle.focus()
        page.keyboard.press("ArrowRight")
        second = _changed(page, first)
        assert page.locator(".widget-slider:has(label:text-is('image')) .widget-readout").first.inner_text() == "1"

        view = page.locator(".widget-dropdown:has(label:text-is('view')) select").first
        options = view.locator("option").all_inner_texts()
        assert len(options) >= 3  # fused, then each student
        view.select_option(options[1])
        _changed(page, second)

        errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr'], "
                              "[data-mime-type='application/vnd.jupyter.error']")
        texts = errors.all_inner_texts()
        assert not any("Error" in t or "Traceback" in t for t in texts), texts
        assert "Traceback" not in page.locator(".jp-Notebook").inner_text()
        browser.close()
    saved = json.loads((folder / "explore.ipynb").read_text())  # the notebook file itself is left as it was
    assert any("parameters" in c["metadata"].get("tags", []) for c in saved["cells"])
