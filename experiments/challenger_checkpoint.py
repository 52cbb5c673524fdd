"""Real-data issue, sections 5 and 6: the shipped SARS-CoV-2 twin (``checkpoints/sarscov2_challenger``).

Trains the mechanistic twin of ``estimation_real.py`` (``sarscov2_cd8``, per-patient time offset from
infection to symptom onset with the incubation-period prior, M3 likelihood at each row's LOD, age effects)
by SAEM with standard errors and the amortised encoder (library defaults), on ``challenger2022`` without the
studies of leave-studies-out fold 1 of ``challenger_folds.py`` (study_03, study_17: 94 patients). Those held-out
patients are then personalised from their first sample and their later samples forecast, by the default route
(``method="auto"``), by MAP and by the population alone, next to last-observation-carried-forward; the scores
go into the checkpoint's card. The checkpoint folder gets the weights, the card, the held-out patients' data
(CC BY 4.0, attributed) and a README; the credibility report of the twin on the held-out patients is written
to ``experiments/results/report_sarscov2_challenger/``.

Run ``python experiments/challenger_checkpoint.py`` (about 15 min on 2 cores); ``--report-only`` rebuilds the
report and the README from a saved checkpoint. ``tests/test_shipped_checkpoint.py`` reloads the checkpoint and
recomputes the recorded held-out scores from the shipped files.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from _common import RESULTS, ROOT
from challenger_folds import _pooled_cohort, interval_rows, locf, route_posterior, score, split_early, study_folds
from estimation_real import DATA, TWIN_OFFSET, challenger_data
from hybridtwin.checkpoint import load, read_card, save
from hybridtwin.data import CohortData
from hybridtwin.estimation import SAEMConfig, AmortiseConfig, estimate
from hybridtwin.twin import HybridTwin, TwinConfig

NAME = "sarscov2_challenger"
FOLD = 1
SEED = 0
#: what the held-out scores are computed with (the test recomputes them with the same settings)
SCORE_SETTINGS = {"k": 1, "n_samples": 400, "seed": SEED}
CITATION = ("Challenger JD, Foo CY, Wu Y, Yan AWC, Marjaneh MM, Liew F, Thwaites RS, Okell LC, Cunnington AJ. "
            "Modelling upper respiratory viral load dynamics of SARS-CoV-2. BMC Med 20:25 (2022), "
            "doi:10.1186/s12916-021-02220-0; data via Shedding Hub (CC BY 4.0), which cites each underlying study")


ROUTES = (("auto", "auto", True), ("map", "map", True), ("population", "encoder", False))


def heldout_scores(twin: HybridTwin, covariates: pd.DataFrame, observations: pd.DataFrame, k: int = 1,
                   n_samples: int = 400, seed: int = 0, routes=("auto", "map", "population")) -> dict:
    """Forecast every held-out row after each patient's first ``k`` from those ``k`` (and age), by the default
    route, MAP and the population alone (``routes``: a subset); scores as in ``challenger_folds.score``."""
    early, late = split_early(observations, k)
    late = late[late["subject_id"].isin(set(early["subject_id"]))]
    rows = late[["subject_id", "time", "observable"]]
    out = {}
    for label, method, personal in ROUTES:
        if label not in routes:
            continue
        shown = early if personal else None
        post = route_posterior(twin, covariates, shown, method)
        pred = interval_rows(twin, covariates, shown, rows, post, seed, n_samples)
        out[label] = score(pred, late)
    return out


def split(data: CohortData) -> tuple[CohortData, CohortData, list[str]]:
    studies = study_folds(data, 5)[FOLD]
    obs = data.observations
    test_ids = sorted(obs.loc[obs["study"].isin(studies), "subject_id"].unique())
    return data.subset([s for s in data.subject_ids if s not in set(test_ids)]), data.subset(test_ids), studies


def write_heldout(test: CohortData, folder: Path) -> None:
    obs = test.observations.drop(columns=["study"])
    obs.to_csv(folder / "heldout_observations.csv", index=False)
    split_early(obs, 1)[0].to_csv(folder / "heldout_first_sample.csv", index=False)
    test.covariates.to_csv(folder / "heldout_covariates.csv", index=False)


def readme(card: dict, studies: list[str]) -> str:
    m = card["metrics"]
    s = m["heldout"]
    table = "\n".join(f"| {label} | {v['rmse']:.2f} | {v['coverage50']:.2f} | {v['coverage90']:.2f} | "
                      f"{v['loglik_per_row']:.2f} |" for label, v in s.items())
    pop = pd.DataFrame(card["uncertainty"]["names"], columns=["q"]) if card.get("uncertainty") else None
    n_est = 0 if pop is None else len(pop)
    return f"""# `{NAME}`: a SARS-CoV-2 viral-load twin trained on challenger2022

Written by `experiments/challenger_checkpoint.py`; `tests/test_shipped_checkpoint.py` reloads it and recomputes
the held-out scores below from the files in this folder.

```
hybridtwin predict checkpoints/{NAME} --covariates checkpoints/{NAME}/heldout_covariates.csv \\
    --observations checkpoints/{NAME}/heldout_first_sample.csv --times 30 --out pred.csv
```

## Context of use
Upper-respiratory SARS-CoV-2 viral load (log10 copies/ml) of an adult patient from a day near symptom onset,
given age and any early measurements; the time axis is **days since symptom onset** (negative days allowed).
For research on viral-load dynamics and method comparison. Not for clinical decisions: see the limitations.

## Model
`sarscov2_cd8` (Hernandez-Vargas & Velasco-Hernandez 2020, target cells, virus and CD8+ T cells), with a
per-patient time from infection to symptom onset (`t_offset`, prior: the incubation period, log-normal with
median 5.1 days and log-SD 0.418, Lauer et al. 2020); random effects on p, c_T and t_offset; c and the
carrying capacity K_V estimated at population level; age (per 10 years above 50, with a missing indicator)
on p and c_T; additive normal noise on log10 copies/ml; rows below a study's limit of detection enter by
their probability (M3). Estimated by SAEM with standard errors ({n_est} population quantities, see
`card.json` and `hybridtwin report`), the encoder amortised on simulations from the fitted model.

## Data
Challenger et al. 2022 (BMC Med 20:25), 17 pooled studies, 605 patients. Trained on
{m['n_train']} patients of every study except {', '.join(studies)}; those {m['n_heldout']} patients are held out and
shipped here (`heldout_*.csv`, CC BY 4.0): {CITATION}.

## Held-out scores (patients of studies never seen in training)
Each held-out patient personalised from their first sample (and age); every later sample forecast
({s['auto']['n_rows']} rows, {s['auto']['n_quantified']} quantified). RMSE and coverage on quantified rows;
log-likelihood per row with censored rows scored by P(y < LOD).

| route | RMSE (log10) | 50 % coverage | 90 % coverage | log-lik / row |
|---|---|---|---|---|
{table}

Fit: {m['fit_seconds'] / 60:.1f} min on 2 CPU cores; residual SD {m['noise_sd']:.2f} log10.

## Limitations
- The residual SD is large (about 1.5 log10): swab-to-swab variation, sampling site and Ct-to-copies
  conversion (some studies) are all in it; the 90 % intervals are correspondingly wide.
- From one sample, personalising does not improve the RMSE of later samples on the population curve
  (table above: {s['auto']['rmse']:.2f} by the default route, {s['map']['rmse']:.2f} by MAP vs {s['population']['rmse']:.2f});
  it improves the log-likelihood only slightly, and gradient boosting on (age, day) has the lower RMSE in
  leave-studies-out (`experiments/results/challenger_folds.md`). It beats carrying the first value forward.
- Children, immunocompromised patients and variants after 2021 are barely or not represented.
"""


def main(report_only: bool = False, path=DATA, out: Path | str = ROOT / "checkpoints" / NAME,
         saem: dict | None = None, amortise: dict | None = None, max_train: int | None = None,
         report_dir: Path | str = RESULTS / f"report_{NAME}") -> dict:
    """saem, amortise: overrides of the library defaults, and max_train: fewer training patients (smoke tests)."""
    torch.set_num_threads(1)
    out = Path(out)
    data = _pooled_cohort(challenger_data(path, time_offset=True))
    train, test, studies = split(data)
    if max_train:
        train = train.subset(list(train.subject_ids)[:max_train])
    if not report_only:
        torch.manual_seed(SEED)
        twin = HybridTwin.from_data(TwinConfig(**TWIN_OFFSET), train)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # findings are in the card's diagnostics
            estimate(twin, train, SAEMConfig(seed=SEED, **(saem or {})), AmortiseConfig(seed=SEED, **(amortise or {})))
        fit_seconds = time.perf_counter() - t0
        print(f"fitted {len(train.subject_ids)} patients in {fit_seconds / 60:.1f} min", flush=True)
        twin.eval()
        scores = heldout_scores(twin, test.covariates, test.observations.drop(columns=["study"]), **SCORE_SETTINGS)
        early, late = split_early(test.observations, 1)
        late = late[late["subject_id"].isin(set(early["subject_id"]))]
        scores["LOCF"] = score(locf(train.observations, early, late, 1), late)
        metrics = {"heldout": scores, "score_settings": SCORE_SETTINGS, "fit_seconds": fit_seconds,
                   "noise_sd": float(twin.observation.log_sigma_add.detach().exp()[0]),
                   "n_train": len(train.subject_ids), "n_heldout": len(test.subject_ids),
                   "heldout_studies": studies}
        save(twin, out, metrics=metrics,
             data_summary={"source": "challenger2022", "citation": CITATION, "heldout_studies": studies,
                           "n_train_patients": len(train.subject_ids), "n_train_rows": len(train.observations),
                           "time_axis": "days since symptom onset", "observable": "log10_V (log10 copies/ml)"},
             training={"estimation": "SAEM (library defaults) + amortised encoder", "seed": SEED,
                       "twin": {k: (list(v) if isinstance(v, tuple) else v) for k, v in TWIN_OFFSET.items()}})
        write_heldout(test, out)
    twin, card = load(out), read_card(out)
    (out / "README.md").write_text(readme(card, studies))
    from hybridtwin.diagnostics import credibility_report

    heldout = CohortData(pd.read_csv(out / "heldout_observations.csv"), test.doses,
                         pd.read_csv(out / "heldout_covariates.csv"), {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = credibility_report(twin, heldout, report_dir, method="map", card=card, seed=SEED)
    print(json.dumps(card["metrics"]["heldout"], indent=1))
    print(f"report: {report}")
    return card["metrics"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report-only", action="store_true", help="rebuild README and report from the saved checkpoint")
    main(report_only=ap.parse_args().report_only)
