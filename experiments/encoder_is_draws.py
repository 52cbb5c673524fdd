"""Does importance sampling's interval coverage depend on its number of draws? (experiment 7 follow-up)

Loads a twin fitted by ``experiments/estimation.py`` (``results/estimation/<model>_seed<seed>_twin``), personalises
its 200 forecast subjects on their first k = 2, 3 samples by ``encoder_is`` with 256 / 1024 draws (and a wider,
more defensive proposal), forecasts their later samples and prints RMSE, 90 % coverage of quantified later
values, the median effective sample size and the seconds per call. Writes
``results/encoder_is_draws_<model>_seed<seed>.txt``.

    python experiments/encoder_is_draws.py baccam2006 0
"""

import sys
import time
import warnings

import numpy as np
import torch

import estimation as E
import hybridtwin as ht
from _common import RESULTS
from hybridtwin.checkpoint import load

SETTINGS = (dict(n_draws=256), dict(n_draws=1024), dict(n_draws=1024, inflate=2.5, defensive=0.2))


def main(model: str, seed: int) -> list[str]:
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = load(RESULTS / "estimation" / f"{model}_seed{seed}_twin")
    _, _, test = E.make_data(model, 600, 200, seed)
    cohort = test.observations.groupby("subject_id")["cohort"].first()
    cov = test.covariates.assign(cohort=test.covariates["subject_id"].map(cohort).to_numpy())
    lines = []
    for k in (2, 3):
        early, late = E.first_k(test.observations, k)
        for opts in SETTINGS:
            ds, _ = ht.personalise._tables(twin, cov, early, test.doses, False)
            t0 = time.perf_counter()
            post = ht.personalise.importance_posterior(twin, ds.batch(), seed=seed, **opts)
            seconds = time.perf_counter() - t0
            pred, _ = twin.predict(cov, early, test.doses, times=late[["subject_id", "time", "observable"]],
                                   given=post, n_samples=200, seed=seed)
            m = late.merge(pred, on=["subject_id", "time", "observable"])
            q = m[~m["censored"].astype(bool)]
            rmse = float(np.sqrt(((q["value"] - q["median"]) ** 2).mean()))
            cov90 = float(((q["value"] >= q["lower"]) & (q["value"] <= q["upper"])).mean())
            lines.append(f"k={k} {opts}: RMSE {rmse:.3f}, 90 % coverage {cov90:.3f}, median ESS "
                         f"{float(post.ess.median()):.0f}, importance sampling {seconds:.1f} s for {len(cov)} subjects")
            print(lines[-1], flush=True)
    (RESULTS / f"encoder_is_draws_{model}_seed{seed}.txt").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "baccam2006", int(sys.argv[2]) if len(sys.argv) > 2 else 0)
