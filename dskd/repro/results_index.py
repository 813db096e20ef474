"""`<out>/README.md`: the index of a results folder: every table and figure, the notebook that made it, what produced
it, and the command that regenerates it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..atomic import write_text
from .notebook_exec import NOTEBOOKS, REPO


def _owner(stem: str, sources: dict[str, str]) -> str:
    """The notebook that writes a file: it names the file, or the file's name starts with an f-string's prefix."""
    for nb, text in sources.items():
        if f'"{stem}"' in text or any(stem.startswith(p) for p in re.findall(r'f"(\w+?_)\{', text)):
            return nb
    return "?"


def write_index(out_dir: Path, profile: str, data_root: str | None) -> Path:
    """`<out>/README.md`: every table and figure, the notebook that made it, what produced it, and the command."""
    sources = {nb.stem: "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
               for nb in sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))}
    command = "./run_all.sh" + ("" if profile == "demo" else f" --profile {profile}") + \
        (f" --data-root {os.path.relpath(NOTEBOOKS / data_root, REPO)}" if data_root else "")
    size = sum(f.stat().st_size for sub in ("tables", "figures", "notebooks") for f in (out_dir / sub).glob("*.*")
               if f.suffix in (".md", ".csv", ".png", ".pdf", ".ipynb"))
    lines = [f"# {out_dir.name}: the `{profile}` profile", "",
             f"Regenerate with `{command}` (one notebook: add `--only NAME`). Tables, figures and executed notebooks: "
             f"{size / 1e6:.1f} MB.", "", "| file | notebook | what produced it |", "|---|---|---|"]
    for table in sorted((out_dir / "tables").glob("*.md")):
        said = next((ln for ln in table.read_text().splitlines()[1:] if ln.strip()), "")
        lines.append(f"| [tables/{table.name}](tables/{table.name}) | {_owner(table.stem, sources)} | {said} |")
    for fig in sorted((out_dir / "figures").glob("*.png")):
        lines.append(f"| [figures/{fig.name}](figures/{fig.name}) (+ .pdf) | {_owner(fig.stem, sources)} | |")
    for nb in sorted((out_dir / "notebooks").glob("*.ipynb")):
        lines.append(f"| [notebooks/{nb.name}](notebooks/{nb.name}) | {nb.stem} | executed copy, with outputs |")
    return write_text(out_dir / "README.md", "\n".join(lines) + "\n")


