"""The shipped SARS-CoV-2 twin (``checkpoints/sarscov2_challenger``, made by experiments/challenger_checkpoint.py):
it loads with ``weights_only``, reproduces the held-out scores recorded in its card from the held-out data
shipped beside it, and ``hybridtwin predict`` works on those files from a fresh clone."""

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hybridtwin as ht

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "checkpoints" / "sarscov2_challenger"
sys.path.insert(0, str(ROOT / "experiments"))


def _reproduce(routes):
    from challenger_checkpoint import heldout_scores

    twin, card = ht.load(FOLDER), ht.checkpoint.read_card(FOLDER)
    cov = pd.read_csv(FOLDER / "heldout_covariates.csv")
    obs = pd.read_csv(FOLDER / "heldout_observations.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = heldout_scores(twin, cov, obs, routes=routes, **card["metrics"]["score_settings"])
    for route in routes:
        want = card["metrics"]["heldout"][route]
        assert got[route]["n_rows"] == want["n_rows"] and got[route]["n_quantified"] == want["n_quantified"]
        for key in ("rmse", "coverage50", "coverage90", "loglik_per_row"):
            assert math.isclose(got[route][key], want[key], rel_tol=1e-3, abs_tol=0.02 if "coverage" in key else 1e-3), \
                (route, key, got[route][key], want[key])
    return twin, card


def test_shipped_twin_loads_and_reproduces_its_population_scores():
    twin, card = _reproduce(("population",))
    assert card["training_data"]["source"] == "challenger2022" and "CC BY" in card["training_data"]["citation"]
    assert card["metrics"]["n_heldout"] == pd.read_csv(FOLDER / "heldout_covariates.csv")["subject_id"].nunique()
    assert card["training_data"]["heldout_studies"] == card["metrics"]["heldout_studies"]
    # not degenerate: the data's SD of quantified values is 1.96 log10; the noise SD is the twin's own
    assert card["metrics"]["noise_sd"] < 0.9 * 1.96
    assert math.isclose(float(twin.observation.log_sigma_add.detach().exp()[0]), card["metrics"]["noise_sd"])


@pytest.mark.slow
def test_shipped_twin_reproduces_its_personalised_scores():
    _reproduce(("auto", "map"))


def test_predict_cli_runs_on_the_shipped_twin_and_files(tmp_path):
    out = tmp_path / "pred.csv"
    from hybridtwin.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["predict", str(FOLDER), "--covariates", str(FOLDER / "heldout_covariates.csv"),
                     "--observations", str(FOLDER / "heldout_first_sample.csv"), "--times", "20", "--n-times", "5",
                     "--samples", "50", "--out", str(out)])
    assert code in (0, None)
    pred = pd.read_csv(out)
    n = pd.read_csv(FOLDER / "heldout_covariates.csv")["subject_id"].nunique()
    assert len(pred) == n * 5 and np.isfinite(pred[["median", "lower", "upper"]].to_numpy()).all()
    assert (pred["lower"] <= pred["median"]).all() and (pred["median"] <= pred["upper"]).all()
