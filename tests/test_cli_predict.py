"""`hybridtwin predict`: a trained checkpoint personalises new patients from CSV tables."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridtwin.cli import main  # noqa: E402
from hybridtwin.virtual import make_virtual_cohort  # noqa: E402

# trains a twin first (~20 s): `make test-all`; the default run checks `predict` on the shipped twin
# (test_shipped_checkpoint.py)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from training.config import RunConfig
    from training.train import train

    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig.from_dict({"name": "tiny", "out": str(out),
                               "data": {"model": "vaccine_asc", "n_subjects": 16, "n_cohorts": 2, "fractions": [0.75, 0.25]},
                               "twin": {"model": "vaccine_asc", "n_samples": 1},
                               "trainer": {"max_epochs": 1, "batch_size": 8, "progress_bar": False},
                               "estimation": {"saem": {"n_explore": 3, "n_smooth": 2, "n_fisher": 4, "init_steps": 2},
                                              "amortise": {"n_simulations": 48, "epochs": 2, "batch_size": 16}}})
    return train(cfg)[1]


def test_predict_writes_trajectories_and_parameters(run_dir, tmp_path, capsys):
    new = make_virtual_cohort("vaccine_asc", n_subjects=3, n_cohorts=1, seed=7)
    new.covariates.to_csv(tmp_path / "cov.csv", index=False)
    early = new.observations[new.observations.time <= 20].drop(columns="cohort")
    early.to_csv(tmp_path / "obs.csv", index=False)
    new.doses.to_csv(tmp_path / "doses.csv", index=False)
    out = tmp_path / "pred.csv"
    argv = ["predict", str(run_dir), "--covariates", str(tmp_path / "cov.csv"), "--observations",
            str(tmp_path / "obs.csv"), "--doses", str(tmp_path / "doses.csv"), "--times", "120", "--n-times", "5",
            "--samples", "20", "--out", str(out)]
    # no cohort label and a twin of two cohorts: one clear line, nothing written
    assert main(argv) == 2
    assert "no cohort label" in capsys.readouterr().err and not out.exists()
    code = main(argv + ["--reference-cohort"])
    assert code == 0, capsys.readouterr().err
    traj = pd.read_csv(out)
    assert len(traj) == 3 * 5 and {"median", "lower", "upper", "model_median"} <= set(traj.columns)
    assert (traj["lower"] <= traj["upper"]).all()
    par = pd.read_csv(tmp_path / "pred_parameters.csv")
    assert par["subject_id"].nunique() == 3


def test_predict_reports_bad_input(run_dir, tmp_path, capsys):
    assert main(["predict", str(run_dir), "--covariates", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
