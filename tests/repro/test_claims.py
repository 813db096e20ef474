"""The claims ledger: the verdict rule, the rows it builds from runs, and the committed real-data ledger."""

import pandas as pd
import pytest

from dskd.repro.claims import CLAIMS, claims_summary, ledger, verdict

from ..conftest import REPO


@pytest.mark.parametrize(("differences", "expected"), [
    ([1.0, 1.2, 0.8], "holds"),  # mean 1.0, spread 0.2
    ([-1.0, -1.2, -0.8], "does not hold"),
    ([1.0, -1.0, 0.5], "inconclusive"),  # within the spread
    ([2.0, 2.0, 2.0], "holds"),  # no spread at all
    ([0.05, 0.06, 0.05], "inconclusive"),  # consistent, but below 0.1 points
    ([3.0], "inconclusive"),  # one seed: no spread to judge by
    ([1.0, float("nan"), 1.1], "holds"),  # a seed a side lacks is left out
    ([0.3, 0.9, 0.6], "holds"),  # mean 0.6 > spread 0.3
    ([0.0, 1.2, 0.3], "inconclusive"),  # mean 0.5 < spread 0.62
])
def test_the_verdict_rule(differences, expected):
    assert verdict(differences) == expected


def _runs():
    """Two datasets, three seeds: dskd beats both single students on A; on B, sd_only beats it; no dual controls."""
    rows = []
    for seed, noise in enumerate((0.0, 0.004, -0.004)):
        for method, a, b in (("dskd", 0.95, 0.90), ("se_only", 0.90, 0.85), ("sd_only", 0.92, 0.95),
                             ("dskd_no_df", 0.95 + noise, 0.90)):
            rows.append({"dataset": "A", "category": "a", "method": method, "seed": seed,
                         "image_auroc": a + noise / 2, "pixel_auroc": None, "aupro": None})
            rows.append({"dataset": "B", "category": "b", "method": method, "seed": seed,
                         "image_auroc": b, "pixel_auroc": b, "aupro": b})
    return pd.DataFrame(rows)


def test_ledger_rows_from_known_runs():
    table = ledger(_runs(), {"A": "set A", "B": "set B"})
    row = table.set_index(["claim", "dataset", "metric"])
    a = row.loc[("dual_vs_single", "A", "image_auroc")]
    assert (a["against"], a["ours_mean"], a["against_mean"], a["difference"], a["verdict"]) == (
        "sd_only", 95.0, 92.0, 3.0, "holds")
    assert row.loc[("dual_vs_single", "B", "aupro"), "verdict"] == "does not hold"  # sd_only 95 > dskd 90
    assert row.loc[("dual_vs_single", "A", "aupro"), "verdict"] == "no evidence"  # no masks on A
    assert row.loc[("df_embedding", "A", "image_auroc"), "verdict"] == "inconclusive"  # equal but for noise
    inversion = row.loc[("inversion", "B", "image_auroc")]
    assert inversion["verdict"] == "no evidence" and "dual_se, dual_sd" in inversion["note"]
    assert set(table["evidence"]) == {"set A", "set B"}
    summary = claims_summary(table)
    assert summary.loc["dual_vs_single", "overall"] == "mixed (1 holds, 3 does not hold)"
    assert summary.loc["inversion", "overall"] == "no evidence"
    assert list(summary.index) == [c.key for c in CLAIMS]


def test_the_committed_ledger_agrees_with_the_tables_it_cites():
    """results/benchmarks: the ledger rebuilt from the per-run table equals the committed ledger, and the dual
    student's claim against the single students reads the same means as accuracy_real.csv."""
    bench = REPO / "results" / "benchmarks"
    runs = pd.read_csv(bench / "accuracy_real_runs.csv")
    committed = pd.read_csv(bench / "accuracy_real_claims.csv")
    described = dict(zip(committed["dataset"], committed["evidence"], strict=False))
    rebuilt = ledger(runs, described)
    assert rebuilt.to_csv(index=False) == (bench / "accuracy_real_claims.csv").read_text()
    accuracy = pd.read_csv(bench / "accuracy_real.csv").set_index(["dataset", "config"])
    rows = rebuilt[(rebuilt["claim"] == "dual_vs_single") & (rebuilt["verdict"] != "no evidence")]
    assert len(rows) >= 4
    for _, r in rows.iterrows():
        mean = accuracy[f"{r['metric']}_mean"]
        assert r["ours_mean"] == pytest.approx(100 * mean[(r["dataset"], "dskd")], abs=0.01)
        best = max(("se_only", "sd_only"), key=lambda m: mean[(r["dataset"], m)])
        assert r["against"] == best
        assert r["against_mean"] == pytest.approx(100 * mean[(r["dataset"], best)], abs=0.01)
