"""How precisely do the kissler2021 forecasts measure issue 9's target? People resampled with replacement.

``kissler_forecast.py`` scores each method on the held-out people of a 5-fold split and pools the folds: 65, 52,
38 and 14 people at k = 1, 2, 3, 5 samples shown. The target is a ratio of two such pooled RMSEs (every later sample
as reported): the twin's RMSE at most 0.8 times the best listed baseline's (LOCF, the shifted population template,
the per-patient mechanistic fit). With so few people a ratio of 0.85 and one of 0.75 may not be told apart. This
script reads the per-person sums that ``kissler_forecast.py`` writes (``STEM_people.csv``: squared errors and row
counts per fold, k, method and person) and resamples the **people** (a cluster bootstrap; Efron & Tibshirani 1993,
ch. 6): each replicate draws as many people as were forecast, with replacement, and recomputes every method's
pooled RMSE, the best listed baseline (chosen again in each replicate) and the ratios. The fitted twins are held
fixed: the interval covers the choice of people forecast, not the refitting of the twins, so it is if anything
too narrow.

For each k and each method: the observed ratio to the best listed baseline, its 90 % bootstrap interval
(percentiles), and the share of replicates in which it meets the 0.8 target. And the difference in RMSE between
the twin's routes and the best flexible learner (gradient boosting's conditional mean), with its interval: is the
twin's shortfall, where it falls short, larger than what resampling people moves?

Run ``python experiments/kissler_uncertainty.py`` after ``kissler_forecast.py --stem kissler_forecast_people``
(and ``--methods "per-patient mechanistic fit" --ks 1,2 --stem kissler_forecast_people_ls``; the variants in
``DEFAULT_PEOPLE`` come from the ``--library-ess 200`` and ``--random c`` / ``--random r`` runs); seconds. Results:
``experiments/results/kissler_uncertainty.{md,json}``.

Example
-------
>>> import pandas as pd
>>> people = pd.DataFrame({"k": 1, "method": ["a", "a", "b", "b"], "subject_id": ["x", "y", "x", "y"],
...                        "n_rows": 10, "sse_reported": [1.0, 3.0, 4.0, 4.0]})
>>> r = bootstrap(people, ["a"], ["b"], k=1, n_boot=200, seed=0)
>>> round(r["ratio"]["a"]["observed"], 3)  # sqrt(4 / 20) / sqrt(8 / 20)
0.707
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from _common import RESULTS, write_results

#: the baselines issue 9 lists for its target
LISTED = ("LOCF", "population template", "per-patient mechanistic fit")
#: the twin's own routes (the target is about these)
TWIN = ("twin fine-tuned (MAP)", "twin fine-tuned (library posterior)", "twin fine-tuned (MAP/library blend)")
#: references a forecaster could reach from the same samples without a mechanism, and the twin + learner stack
OTHERS = ("reference: later samples by day", "reference: gradient boosting on the k samples",
          "reference: gradient boosting on the k samples (mean)",
          "twin fine-tuned (library) + boosting (mean): equal average")
LEARNER = "reference: gradient boosting on the k samples (mean)"
TARGET = 0.8
DEFAULT_PEOPLE = ("kissler_forecast_people_people.csv", "kissler_forecast_people_ls_people.csv",
                  "kissler_forecast_ess_people_people.csv@ESS 200",
                  # the fine-tune with the clearance rate c, or the CD8+ expansion rate r, per person (--random)
                  "kissler_forecast_rc_people.csv@c per person", "kissler_forecast_rr_people.csv@r per person")


def _table(people: pd.DataFrame, k: int, methods: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n_people, n_methods) squared-error sums and row counts at ``k``; people missing a method raise."""
    sub = people[(people["k"] == k) & people["method"].isin(methods)]
    sse = sub.pivot_table(index="subject_id", columns="method", values="sse_reported", aggfunc="sum")
    n = sub.pivot_table(index="subject_id", columns="method", values="n_rows", aggfunc="sum")
    absent = [m for m in methods if m not in sse.columns]
    if absent:
        raise ValueError(f"k = {k}: no rows for {absent}")
    sse, n = sse[methods], n[methods]
    if sse.isna().any().any():
        bad = sse.columns[sse.isna().any()].tolist()
        raise ValueError(f"k = {k}: {bad} lack some people the other methods forecast; score them on the same people")
    return sse.to_numpy(float), n.to_numpy(float), list(sse.index)


def bootstrap(people: pd.DataFrame, twins: list[str], baselines: list[str], k: int, n_boot: int = 10000,
              seed: int = 0, others: list[str] = (), learner: str | None = None) -> dict:
    """Cluster bootstrap over people of pooled every-sample RMSEs and their ratios to the best baseline.

    ``people``: rows of (k, method, subject_id, n_rows, sse_reported), as ``kissler_forecast.py`` writes them.
    Returns, for each method of ``twins`` and ``others``, the observed ratio to the best of ``baselines`` (best
    chosen again in every replicate), its 5/50/95 % bootstrap percentiles and the share of replicates at or below
    ``TARGET``; each method's RMSE with its interval; and, given ``learner``, each twin's RMSE minus the learner's.
    """
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot}")
    if not baselines:
        raise ValueError("at least one baseline is needed")
    methods = list(dict.fromkeys([*twins, *others, *baselines, *([learner] if learner else [])]))
    sse, n, ids = _table(people, k, methods)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=n_boot)  # (R, people)
    boot = np.sqrt((counts @ sse) / (counts @ n))  # (R, methods)
    obs = np.sqrt(sse.sum(0) / n.sum(0))
    col = {m: i for i, m in enumerate(methods)}
    base = [col[b] for b in baselines]
    best_obs, best_boot = obs[base].min(), boot[:, base].min(1)

    def interval(x):
        return dict(zip(("p05", "p50", "p95"), np.percentile(x, [5, 50, 95]).tolist()))

    out = {"k": k, "n_people": len(ids), "n_boot": n_boot,
           "best_baseline": baselines[int(np.argmin(obs[base]))],
           "best_baseline_share": {b: float(np.mean(np.argmin(boot[:, base], 1) == i)) for i, b in enumerate(baselines)},
           "rmse": {m: {"observed": float(obs[col[m]]), **interval(boot[:, col[m]])} for m in methods},
           "ratio": {}, "minus_learner": {}}
    for m in [*twins, *others]:
        r = boot[:, col[m]] / best_boot
        out["ratio"][m] = {"observed": float(obs[col[m]] / best_obs), **interval(r),
                           "share_meeting_target": float(np.mean(r <= TARGET))}
    if learner:
        for m in twins:
            d = boot[:, col[m]] - boot[:, col[learner]]
            out["minus_learner"][m] = {"observed": float(obs[col[m]] - obs[col[learner]]), **interval(d)}
    # how concentrated the error is: the share of the method's squared error from its three worst people
    out["top3_share"] = {m: float(np.sort(sse[:, col[m]])[-3:].sum() / sse[:, col[m]].sum()) for m in methods}
    return out


def read_people(spec: str, out: Path) -> pd.DataFrame:
    """One per-person score file; ``"FILE@TAG"`` appends ``" [TAG]"`` to its methods (a variant of the same
    methods, e.g. another library size). Relative names are under ``out``."""
    name, _, tag = spec.partition("@")
    path = Path(name) if Path(name).is_absolute() else out / name
    people = pd.read_csv(path, dtype={"subject_id": str})
    if tag:
        people["method"] = people["method"] + f" [{tag}]"
    return people


def run(files=DEFAULT_PEOPLE, out: Path | str = RESULTS, n_boot: int = 10000, seed: int = 0) -> list[dict]:
    out = Path(out)
    people = pd.concat([read_people(f, out) for f in files], ignore_index=True)
    dup = people.duplicated(["k", "method", "subject_id"])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} (k, method, person) rows appear twice across {list(files)}")
    results = []
    for k in sorted(people["k"].unique()):
        have = set(people.loc[people["k"] == k, "method"])
        baselines = [b for b in LISTED if b in have]
        # each known method, then its tagged variants ("NAME [TAG]", see read_people)
        twins = [m for name in TWIN for m in sorted(have) if m == name or m.startswith(name + " [")]
        others = [m for name in OTHERS for m in sorted(have) if m == name or m.startswith(name + " [")]
        results.append(bootstrap(people, twins, baselines, int(k), n_boot, seed, others,
                                 LEARNER if LEARNER in have else None))
    write_results(out, "kissler_uncertainty", summarise(results), results)
    return results


def summarise(results: list[dict]) -> str:
    lines = ["# kissler2021 forecasts: how precisely the 0.8x target is measured (people resampled)", "",
             "Cluster bootstrap over the held-out people (fitted twins held fixed); every-sample RMSE as reported. "
             "Ratio: a method's RMSE over the best listed baseline's (LOCF, population template, per-patient "
             f"mechanistic fit where scored), the best chosen again in each replicate. Target: ratio <= {TARGET}. "
             "See the script's docstring.", ""]
    for r in results:
        listed = ", ".join(f"{b} {s:.0%}" for b, s in r["best_baseline_share"].items())
        lines += [f"## k = {r['k']} ({r['n_people']} people, {r['n_boot']} replicates)", "",
                  f"Best listed baseline: {r['best_baseline']} (RMSE {r['rmse'][r['best_baseline']]['observed']:.3f}); "
                  f"best in the replicates: {listed}.", "",
                  "| method | RMSE | 90 % interval | ratio | 90 % interval | replicates meeting 0.8x | top-3 people's share of SE |",
                  "|---|---|---|---|---|---|---|"]
        for m, q in r["ratio"].items():
            e = r["rmse"][m]
            lines.append(f"| {m} | {e['observed']:.3f} | {e['p05']:.3f}-{e['p95']:.3f} | {q['observed']:.3f} | "
                         f"{q['p05']:.3f}-{q['p95']:.3f} | {q['share_meeting_target']:.0%} | {r['top3_share'][m]:.0%} |")
        if r["minus_learner"]:
            lines += ["", f"Twin minus gradient boosting's conditional mean (RMSE {r['rmse'][LEARNER]['observed']:.3f}):", ""]
            for m, d in r["minus_learner"].items():
                lines.append(f"- {m}: {d['observed']:+.3f} (90 % interval {d['p05']:+.3f} to {d['p95']:+.3f})")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", nargs="+", default=list(DEFAULT_PEOPLE),
                    help="per-person score files (names under experiments/results/ or absolute paths); "
                         "FILE@TAG tags its methods ' [TAG]'")
    ap.add_argument("--n-boot", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.n_boot < 100:
        ap.error(f"--n-boot must be at least 100, got {a.n_boot}")
    for spec in a.people:
        name = spec.partition("@")[0]
        if not (Path(name) if Path(name).is_absolute() else RESULTS / name).is_file():
            ap.error(f"no per-person score file {name!r} (under {RESULTS} unless absolute); kissler_forecast.py "
                     "writes STEM_people.csv")
    run(a.people, n_boot=a.n_boot, seed=a.seed)
