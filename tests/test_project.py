"""The project's own promises: dependency lists agree, the README states the two commands, CI calls the tests."""

import re

import tomllib

from .conftest import REPO


def _norm(name: str) -> str:
    return re.split(r"[<>=!~ \[]", name.strip())[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_norm(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pip_lines, in_pip = [], False
    for line in (REPO / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            in_pip = True
        elif in_pip and line.strip().startswith("- "):
            pip_lines.append(line.strip()[2:])
    listed = {_norm(x) for x in pip_lines if not x.startswith("-e")}
    assert listed == wanted
    assert "-e ." in pip_lines


def test_readme_states_the_two_commands_and_ci_runs_the_tests():
    readme = (REPO / "README.md").read_text()
    assert "./run_all.sh" in readme and "./run_tests.sh" in readme
    assert "run_tests.sh" in (REPO / ".ci" / "run").read_text()


def test_modules_and_functions_stay_small():
    """One job per module: no module over 250 lines, no function over 45 (the structure issue's rule)."""
    import ast

    too_long = []
    for path in sorted((REPO / "dskd").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 250:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 45:
                too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
