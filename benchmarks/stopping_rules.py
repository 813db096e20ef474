"""The stopping rule's candidates replayed on the trajectories `benchmarks.stopping` recorded, and the one the
criterion written down before the data (docs/findings.md section 29) chooses.

Each candidate (patience x tolerance) stops each run where `dskd.run.stopping.stop_reason` says so on the run's
logged held-out losses; what the run scores there is read off its trajectory. A candidate's score is the mean over
runs and metrics (image AUROC, pixel AUROC, AUPRO) at its stops; the highest wins, candidates within `TIE` points of
it count as tied, and among those the fewest epochs in all wins. Beside each: the fixed budgets the `quick` profile
had (21 epochs at 128 px, 10 at 256 px) and each run's best epoch (test-fitted: a reference, never a rule).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dskd.atomic import write_text
from dskd.run.stopping import stop_reason

PATIENCE = (2, 3, 5)
TOLERANCE = (0.0, 0.005, 0.01, 0.02)
TIE = 0.2  # points: candidates this close to the best score count as tied
METRICS = ("image_auroc", "pixel_auroc", "aupro")
FIXED = {128: 21, 256: 10}  # the quick profile's budgets before the rule


def stop_epoch(losses: list[float], patience: int, tolerance: float, most: int) -> int | None:
    """The epoch a rule stops at on these held-out losses (epoch 1 first), or None when the trajectory ends first."""
    for epoch in range(1, min(len(losses), most) + 1):
        if stop_reason(losses[:epoch], patience, tolerance, most):
            return epoch
    return None


def load(folder: Path) -> dict[str, pd.DataFrame]:
    """Every trajectory in `folder`, by run name (`<category>-<backbone>-<variant>-s<seed>`)."""
    return {p.stem: pd.read_csv(p).set_index("epoch") for p in sorted(folder.glob("*.csv"))}


def replay(runs: dict[str, pd.DataFrame], most: dict[str, int]) -> pd.DataFrame:
    """One row per candidate and run: where it stops and what the run scores there (`most`: each run's maximum)."""
    rows = []
    for name, t in runs.items():
        losses = t["held_out_total"].tolist()
        candidates = [(f"patience {p}, {100 * d:g} %", stop_epoch(losses, p, d, most[name]))
                      for p in PATIENCE for d in TOLERANCE]
        candidates += [("fixed (quick before)", FIXED[image_size(name)]), ("best epoch (test-fitted)", None)]
        for rule, epoch in candidates:
            if rule.startswith("best"):
                epoch = int(t[list(METRICS)].mean(axis=1).idxmax())
            if epoch is None or epoch not in t.index:
                rows.append({"rule": rule, "run": name, "epoch": None})
                continue
            rows.append({"rule": rule, "run": name, "epoch": epoch, **t.loc[epoch, list(METRICS)].to_dict()})
    return pd.DataFrame(rows)


def image_size(run: str) -> int:
    """The `quick` profile's image size of a trajectory's run: MT Defects' tiles 128 px, photographs 256."""
    return 128 if run.startswith("mt_defects") else 256


def choose(replayed: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Per candidate: its score, epochs in all, runs it left unfinished; and the chosen rule (None while any
    candidate leaves a run unfinished: the trajectories are then too short to judge it)."""
    scored = replayed.assign(mean=replayed[list(METRICS)].mean(axis=1))
    table = scored.groupby("rule", sort=False).agg(score=("mean", "mean"), epochs=("epoch", "sum"),
                                                   unfinished=("epoch", lambda e: int(e.isna().sum())))
    rules = table[table.index.str.startswith("patience")]
    if rules["unfinished"].any():
        return table, None
    best = rules["score"].max()
    tied = rules[rules["score"] >= best - TIE]
    return table, str(tied["epochs"].idxmin())


def write_rules(folder: Path) -> Path:
    runs = load(folder)
    most = {name: int(t.index.max()) for name, t in runs.items()}
    replayed = replay(runs, most)
    table, chosen = choose(replayed)
    out = folder.parent / "stopping_rules.md"
    per_run = replayed.pivot(index="rule", columns="run", values="epoch")
    text = "\n".join([
        "# The stopping rule's candidates on the recorded trajectories",
        "",
        f"Runs: {', '.join(runs)} (`quick` profile: EfficientNet-Lite0 unless the name says otherwise, float32, "
        "trained for a fixed budget; `python -m benchmarks.stopping`). Score: the mean of image AUROC, pixel AUROC "
        "and AUPRO (percent) at the epoch each rule stops, over the runs; epochs: in all. "
        "Chosen by the criterion of docs/findings.md section 29: "
        f"**{chosen or 'not yet (a rule left a run unfinished)'}**.",
        "",
        table.round(2).to_markdown(),
        "",
        "Where each rule stops each run (epoch; empty: after the recorded trajectory):",
        "",
        per_run.to_markdown(),
        "",
    ])
    write_text(out, text)
    return out
