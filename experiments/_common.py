"""Shared pieces of the experiments: training through the Lightning trainer, resource measurement, the
oracle (a twin that knows the true population model of a virtual cohort), early/late observation splits and
error metrics."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `training/` lives beside the library, not inside it
    sys.path.insert(0, str(ROOT))

from hybridtwin.data import CohortData, split_subjects  # noqa: E402
from hybridtwin.twin import HybridTwin  # noqa: E402

RESULTS = ROOT / "experiments" / "results"


def write_results(out: Path, stem: str, text: str, payload) -> None:
    """Write an experiment's report ``out/stem.md`` and its numbers ``out/stem.json``, and print the report."""
    (Path(out) / f"{stem}.md").write_text(text)
    (Path(out) / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    print(text)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_twin(name: str, data_spec: dict, twin_cfg: dict, trainer: dict, out: Path):
    """Train by amortised VI through training.train (Lightning; accelerator="auto" picks a GPU when there is one).

    Returns (twin, run_dir, seconds, peak RSS in MB, peak GPU memory in MB or None)."""
    from training.config import RunConfig
    from training.train import train

    import shutil

    shutil.rmtree(Path(out) / name, ignore_errors=True)  # an experiment re-run starts a fresh run
    cfg = RunConfig.from_dict({"name": name, "out": str(out), "data": data_spec, "twin": twin_cfg,
                               "trainer": {"progress_bar": False, **trainer}, "estimation": {"method": "vi"}})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    twin, run_dir = train(cfg)
    seconds = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return twin.cpu().eval(), run_dir, seconds, peak_rss_mb(), gpu


def test_split(data: CohortData, fractions, split_seed: int) -> list:
    """The held-out subjects of the split the trainer used (same function, same seed)."""
    return list(split_subjects(data, tuple(fractions), seed=split_seed)[-1])


def early_late(data: CohortData, n_early: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per subject: the baseline (time 0) and the first ``n_early`` later observations vs the rest."""
    obs = data.observations.sort_values(["subject_id", "time"], kind="stable")
    after = obs["time"] > 0
    rank = after.groupby(obs["subject_id"]).cumsum()
    early_mask = (~after) | (rank <= n_early)
    return obs[early_mask].reset_index(drop=True), obs[~early_mask].reset_index(drop=True)


def covariates_with_cohort(data: CohortData) -> pd.DataFrame:
    cohort = data.observations.groupby("subject_id")["cohort"].first()
    return data.covariates.assign(cohort=data.covariates["subject_id"].map(cohort).to_numpy())


def r2(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Coefficient of determination of estimates against the truth (1 - SSE/SST)."""
    sse = float(np.sum((estimate - truth) ** 2))
    sst = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - sse / sst if sst > 0 else float("nan")


def later_error(pred: pd.DataFrame, late: pd.DataFrame) -> dict:
    """RMSE of predicted medians against uncensored later observations, and coverage of the intervals."""
    m = late.merge(pred, on=["subject_id", "time", "observable"], how="left")
    unc = m[~m["censored"]]
    err = unc["median"] - unc["value"]
    inside = (unc["value"] >= unc["lower"]) & (unc["value"] <= unc["upper"])
    cens = m[m["censored"]]
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "coverage": float(inside.mean()), "n_later_uncensored": int(len(unc)),
            "censored_later_below_upper": float((cens["lower"] <= cens["lloq"]).mean()) if len(cens) else float("nan")}


class OracleTwin(HybridTwin):
    """A twin that knows the true population model of a ``make_virtual_cohort`` data set.

    Its prior for subject i is the generator's: ``log p_pop + sum beta x_i`` (nonlinear terms included) with the
    true omega; its noise is the true sd and its cohort calibration the true assay scale/offset. It has no
    encoder: personalise it with ``method="map"`` (Bayes-optimal point estimates under the true model).
    """

    def set_truth(self, data: CohortData, subject_ids: list) -> "OracleTwin":
        gt = data.meta["ground_truth"]
        feats = gt["features"].set_index("subject_id").loc[subject_ids]
        space = self.model.parameter_space
        pop = {**space.defaults(), **gt["population"]}
        rows = []
        for _ in subject_ids:
            rows.append([pop[n] for n in self.patient_names])
        base = torch.tensor(rows, dtype=self.dtype)
        z = torch.stack([space[n].to_unconstrained(base[:, i]) for i, n in enumerate(self.patient_names)], dim=1)
        for _, (param, term, coef) in gt["effects"].iterrows():
            if param in self.patient_names:
                z[:, self.patient_names.index(param)] += coef * torch.tensor(feats[term].to_numpy(float), dtype=self.dtype)
        self._prior_mean = z
        omega = torch.tensor([gt["omega"].get(n, 1e-3) for n in self.patient_names], dtype=self.dtype)
        with torch.no_grad():
            self.log_omega.copy_(torch.log(omega))
            for n in self.population_names:
                i = self.population_names.index(n)
                self.mu_population[i] = space[n].to_unconstrained(torch.tensor(pop[n], dtype=self.dtype))
            obs = list(self.config.observables)
            for k, o in enumerate(obs):
                self.observation.log_sigma_add[k] = math.log(gt["noise"]["sd"][o])
            assay = gt["assay"]
            for c, name in enumerate(self.cohort_names):
                for k, o in enumerate(obs):
                    row = assay[(assay.cohort == name) & (assay.observable == o)].iloc[0]
                    self.observation.log_scale[c, k] = math.log(row["scale"])
                    self.observation.offset[c, k] = row["offset"]
        return self

    def prior(self, covariates: torch.Tensor):
        if covariates.shape[0] != self._prior_mean.shape[0]:
            raise ValueError("the oracle's prior was set for another set of subjects")
        return self._prior_mean, self.log_omega.exp().expand_as(self._prior_mean)


def surrogate_recipes(domain, train: dict, held: dict, specs, stem: str, out: Path = RESULTS, engine=None,
                      timing=None, extra: dict | None = None) -> list:
    """Train and certify one surrogate per recipe ``ARCH:HIDDEN:BATCH:EPOCHS[:WEIGHT_DECAY[:MEMBERS]]`` (e.g.
    ``grid:128,128,128:64:1000:1e-6:5``) on the same data; each row is printed and appended to
    ``out/<stem>.jsonl``. ``timing``: a function of the trained surrogate returning a dict of throughput
    figures, merged into its row; ``extra``: fields recorded in every row (e.g. which held-out pairs)."""
    import json

    from hybridtwin.surrogate import certify, fit_surrogate

    rows = []
    for spec in specs:
        arch, hidden, batch, epochs, *rest = spec.split(":")
        wd, members = (float(rest[0]) if rest else 1e-6), (int(rest[1]) if len(rest) > 1 else 5)
        t = time.perf_counter()
        s = fit_surrogate(domain, members=members, hidden=tuple(int(h) for h in hidden.split(",")), epochs=int(epochs),
                          batch_size=int(batch), weight_decay=wd, progress=False, seed=0, data=train, arch=arch,
                          engine=engine)
        cert = certify(s, data=held)
        row = {"recipe": spec, "n_train": int(train["ok"].sum()), "train_seconds": time.perf_counter() - t,
               **cert["overall"], "coverage90": cert["calibration"]["coverage90"], **(extra or {})}
        if timing is not None:
            row.update(timing(s))
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / f"{stem}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return rows


def gp_recipe(train: dict, held: dict, stem: str, out: Path = RESULTS) -> dict:
    """The Gaussian process of ``bench_surrogate.py`` fitted on all of ``train``'s successful simulations and
    certified on ``held``: a row like :func:`surrogate_recipes`' (recipe ``"gaussian_process"``), printed and
    appended to ``out/<stem>.jsonl``."""
    import json

    from bench_surrogate import gaussian_process

    row = {"recipe": "gaussian_process", **gaussian_process(train, int(train["ok"].sum()), held)}
    print(json.dumps(row), flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / f"{stem}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row
