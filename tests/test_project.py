"""The project's own promises: dependency lists agree, the README states the two commands, CI calls the tests."""

import re
import subprocess
import sys

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
    """One job per module: no module over 250 lines, and none within 10 lines of that ceiling (a module grows by
    splitting along an idea, not where it hits the line), no function over 40, in the package and the benchmarks."""
    import ast

    too_long = []
    for path in sorted([*(REPO / "dskd").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        text, name = path.read_text(), path.relative_to(REPO)
        if len(text.splitlines()) > 240:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 40:
                too_long.append(f"{name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_the_module_map_names_every_module_and_only_modules():
    """docs/architecture.md's map of modules is checked against the package: a module added, renamed or removed
    without its row fails here."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("## Map of modules"):].split("\n## ")[0]
    named = {name for row in table.splitlines() if row.startswith("| ") for name in re.findall(r"`([\w/]+\.py)`", row)}
    present = {str(p.relative_to(REPO / "dskd")) for p in (REPO / "dskd").rglob("*.py")}
    assert named == present, (sorted(present - named), sorted(named - present))


def _imports(path, package: str) -> set[str]:
    """The project modules a file imports, at its top or inside a function (both can close a cycle at run time)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out |= {target, *(f"{target}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of dskd/ and benchmarks/ it imports."""
    files = {}
    for top in ("dskd", "benchmarks"):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import one another, directly or around a loop (strongly connected components)."""
    order, low, stack, found = {}, {}, [], []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself works
    graph = import_graph()
    assert {"dskd.repro.task", "dskd.repro.executors", "benchmarks.common"} <= set(graph)
    assert cycles(graph) == []


LAYERS = ("base", "decision", "data", "model", "run", "deploy", "repro", "top")  # bottom up: docs/architecture.md


def layer(module: str) -> int:
    """A dskd module's layer: its subpackage, or base (errors, atomic writes, settings, stats, version) and top (the
    package's public names, the command line, the notebooks' namespace) for the modules beside them."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return LAYERS.index("base" if parts[-1] in ("errors", "atomic", "settings", "stats", "version") else "top")


def test_lower_layers_never_import_upper_ones():
    assert [layer(m) for m in ("dskd.errors", "dskd.decision.record", "dskd.model.maps", "dskd.repro.claims",
                               "dskd.cli", "dskd")] == [0, 1, 3, 6, 7, 7]  # the check itself
    graph = {m: deps for m, deps in import_graph().items() if m.startswith("dskd")}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert not upward, upward
    assert {m.split(".")[1] for m in graph if m.count(".") > 1} == {"decision", "data", "model", "run", "deploy",
                                                                     "repro"}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_tables_and_charts_never_reach_the_executors():
    """Tables, plots, figures and ablations read results (metrics, saved maps) and the experiment's config; the
    machinery that produces results (executors, Ray, the grid, run_all) stays above them."""
    graph = import_graph()
    above = {f"dskd.repro.{m}" for m in ("executors", "ray_executor", "experiments", "planning", "runall")}
    above.add("dskd.suite")
    for low in (f"dskd.repro.{m}" for m in ("tables", "plots", "figures", "ablations", "claims", "experiment_config")):
        assert not _reachable(graph, low) & above, (low, _reachable(graph, low) & above)


def test_the_errors_catalog_lists_every_message_the_code_can_raise():
    """docs/errors.md ends with a catalog generated from every `raise DskdError(...)`: a message added or changed
    without regenerating it fails here."""
    r = subprocess.run([sys.executable, "scripts/errors_catalog.py", "--check"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO / "docs" / "errors.md").read_text()
    assert "| `settings.py` | `check_value` | …=… is not allowed; choose one of … |" in text


def test_the_package_finds_the_repositorys_folders():
    """Modules that read the notebooks or the published references find them from where they now live."""
    from dskd.repro import runall, tables

    assert runall.REPO == REPO and len(runall._chosen(None)) >= 11
    assert tables.REFERENCE_DIR == REPO / "results" / "reference" and tables.REFERENCE_DIR.is_dir()


def test_the_decoding_rule_in_the_docs_is_the_code_s():
    """docs/errors.md quotes the one image decoder's rule (`dskd.data.images.DECODING`) word for word."""
    from dskd.data.images import DECODING

    doc = (REPO / "docs" / "errors.md").read_text()
    assert all(f"> {line}" in doc for line in DECODING.splitlines())


def test_results_readme_lists_every_benchmark_file():
    """`results/benchmarks/` keeps only what something links to, and `results/README.md` names every file there (a
    folder by its name)."""
    index = (REPO / "results" / "README.md").read_text()
    unlisted = [p.name for p in sorted((REPO / "results" / "benchmarks").iterdir())
                if f"`{p.name}`" not in index and f"`benchmarks/{p.name}`" not in index
                and f"`benchmarks/{p.name}/`" not in index]
    assert not unlisted, unlisted


def test_the_readme_s_counts_are_the_repository_s():
    """The front page's counts in prose: its test functions and its notebooks, each one listed by name."""
    import ast

    readme = (REPO / "README.md").read_text()
    functions = sum(isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and node.col_offset == 0
                    for path in (REPO / "tests").rglob("test_*.py") for node in ast.walk(ast.parse(path.read_text())))
    assert f"({functions} test functions" in readme, f"the README should say {functions} test functions"
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    listed = readme[readme.index("## Notebooks"):].split("\n## ")[0]
    assert sorted(re.findall(r"`(\d\d_\w+)`", listed)) == notebooks
    assert len(readme.splitlines()) <= 200
