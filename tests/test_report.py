"""The credibility report (`hybridtwin report`, `credibility_report`): every section is written, and its tables
agree with independent recomputations from the data and the per-row prediction table."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hybridtwin as ht  # noqa: E402
from hybridtwin.checkpoint import load, read_card, save  # noqa: E402
from hybridtwin.cli import main  # noqa: E402
from hybridtwin.diagnostics.credibility import SECTIONS, credibility_report  # noqa: E402
from hybridtwin.virtual import make_virtual_cohort  # noqa: E402

FIXED = ("delta_Ag", "K_Ag", "rho_M", "M_max", "alpha_S", "alpha_L", "delta_L")
FAST = dict(n_samples=60, n_replicates=20)
LEVELS = (0.5, 0.8, 0.9, 0.95)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A vaccine_asc twin estimated by a few SAEM iterations on 10 virtual patients in 2 cohorts, saved."""
    from hybridtwin.estimation import SAEMConfig, estimate
    from hybridtwin.twin import HybridTwin, TwinConfig

    data = make_virtual_cohort("vaccine_asc", n_subjects=10, n_cohorts=2, seed=0)
    twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", fixed=FIXED, covariate_effects=False,
                                           solver={"rtol": 1e-4, "atol": 1e-4, "max_steps": 2000}), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # so few iterations: expect degeneracy findings
        estimate(twin, data, SAEMConfig(n_explore=2, n_smooth=1, n_fisher=4, init_steps=0, progress=False), False)
    summary = {"cohorts": data.cohorts, "train": {"n_subjects": 10}}  # as hybridtwin train records it
    return save(twin, tmp_path_factory.mktemp("runs") / "tiny", data_summary=summary)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    new = make_virtual_cohort("vaccine_asc", n_subjects=6, n_cohorts=2, seed=3)
    folder = tmp_path_factory.mktemp("tables")
    new.observations.to_csv(folder / "obs.csv", index=False)
    new.covariates.to_csv(folder / "cov.csv", index=False)
    new.doses.to_csv(folder / "doses.csv", index=False)
    return folder


@pytest.mark.parametrize("case, message", [("missing_data", "--data: no such file"),
                                           ("missing_run", "does not exist"),
                                           ("unknown_observable", "does not know"),
                                           ("empty_data", "empty")])
def test_cli_bad_input_gives_one_line_and_exit_2(run_dir, tables, tmp_path, capsys, case, message):
    data, run = tables / "obs.csv", run_dir
    if case == "missing_data":
        data = tmp_path / "nope.csv"
    elif case == "missing_run":
        run = tmp_path / "no_run"
    elif case == "unknown_observable":
        data = tmp_path / "other.csv"
        pd.read_csv(tables / "obs.csv").assign(observable="log10_V").to_csv(data, index=False)
    else:
        data = tmp_path / "empty.csv"
        pd.read_csv(tables / "obs.csv").iloc[:0].to_csv(data, index=False)
    assert main(["report", str(run), "--data", str(data), "--covariates", str(tables / "cov.csv"),
                 "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("hybridtwin report: error:")
    assert not (tmp_path / "rep" / "report.md").exists()


@pytest.mark.slow
def test_cli_writes_the_report(run_dir, tables, tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["report", str(run_dir), "--data", str(tables / "obs.csv"), "--covariates", str(tables / "cov.csv"),
                 "--doses", str(tables / "doses.csv"), "--method", "encoder", "--samples", "50", "--replicates", "20",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "report.md" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert all(f"## {s}" in text for s in SECTIONS) and (out / "report.html").is_file()
    assert "cohorts recorded in the card's training data: ['cohort_1', 'cohort_2']" in text
    assert "training subjects: train: 10 subjects" in text and "data source: not recorded" in text


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    """The report of the twin on 8 new virtual patients (the encoder personalises them: fast)."""
    data = make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=2, seed=1)
    out = tmp_path_factory.mktemp("report")
    card = {**read_card(run_dir), "context_of_use": "demo: forecasting antibody titres of virtual vaccinees"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = credibility_report(load(run_dir), data, out, method="encoder", levels=LEVELS, card=card, **FAST)
    return path, data


def test_report_has_every_section_figure_and_the_model_card(report):
    path, data = report
    out, text = path.parent, path.read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    for png in ("observed_vs_predicted.png", "residuals.png", "vpc.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and all(s in page for s in SECTIONS)
    assert "demo: forecasting antibody titres" in text  # the recorded context of use is shown ...
    assert "| numpy | not recorded |" in text  # ... and what the card lacks is said to be missing
    assert "### Assumptions\n\nRecorded in the card: not recorded" in text
    summary = text.split("### Data of this report")[1]
    for cohort, g in data.observations.groupby("cohort"):
        assert f"| {cohort} | {g.subject_id.nunique()} | {len(g)} |" in summary
    shrink = pd.read_csv(out / "shrinkage.csv")
    assert np.allclose(shrink["shrinkage"], 1 - shrink["sd_conditional_mean"] / shrink["omega"])
    ident = pd.read_csv(out / "identifiability.csv")
    assert set(ident["parameter"]) == set(ht.models.get("vaccine_asc").parameter_names)
    for name in ident.loc[~ident["informed"], "parameter"]:  # the uninformed parameters are named in the text
        assert name in text.split("Not informed: ")[1].split("\n")[0]


def test_calibration_equals_coverage_recomputed_from_the_prediction_table(report):
    path, data = report
    pred, cal = pd.read_csv(path.parent / "predictions.csv"), pd.read_csv(path.parent / "calibration.csv")
    assert len(pred) == len(data.observations) and pred["censored"].sum() == data.observations["censored"].sum()
    merged = pred.merge(data.observations, on=["subject_id", "time", "observable"], suffixes=("", "_data"))
    assert len(merged) == len(pred) and np.allclose(merged["value"], merged["value_data"])
    quantified = pred[~pred["censored"]]
    assert list(cal["nominal"]) == list(LEVELS) and (cal["n_rows"] == len(quantified)).all()
    for level, empirical in zip(cal["nominal"], cal["empirical"]):
        p = f"{100 * level:g}"
        assert (pred[f"lower_{p}"] <= pred[f"upper_{p}"]).all()
        inside = (quantified["value"] >= quantified[f"lower_{p}"]) & (quantified["value"] <= quantified[f"upper_{p}"])
        assert empirical == pytest.approx(inside.mean(), abs=1e-12)
    assert pred.loc[pred["censored"], "residual"].isna().all()
    assert np.allclose(quantified["residual"], quantified["value"] - quantified["prediction"])


def test_vpc_observed_quantiles_are_the_data_quantiles_per_bin(report):
    path, data = report
    vpc, obs = pd.read_csv(path.parent / "vpc.csv"), data.observations
    for (cohort, name), v in vpc.groupby(["cohort", "observable"]):
        d = obs[(obs["cohort"] == cohort) & (obs["observable"] == name)]
        assert v["n_obs"].sum() == len(d)  # the bins partition the rows
        last = v["bin"].max()
        for _, row in v.iterrows():
            t = d["time"]
            sel = d[(t >= row["t_lo"]) & ((t < row["t_hi"]) | ((t <= row["t_hi"]) & (row["bin"] == last)))]
            assert len(sel) == row["n_obs"]
            assert np.allclose(np.quantile(sel["value"], [0.05, 0.5, 0.95]),
                               row[["obs_q05", "obs_q50", "obs_q95"]].to_numpy(float))
            assert row["obs_blq"] == pytest.approx(sel["censored"].mean())
            # simulations are censored at each row's limit, as the data are
            assert row["sim_q05"] >= sel["lloq"].min() - 1e-12 and 0 <= row["sim_blq"] <= 1
            assert row["sim_q05_lo"] <= row["sim_q05"] <= row["sim_q05_hi"]
    early = vpc[vpc["bin"] == 0]  # day 0 samples are below the limit in the data and in the simulations
    assert (early["obs_blq"] > 0).all() and (early["sim_blq"] > 0).all()


def test_subgroups_by_cohort_sex_and_age_match_the_prediction_table(report):
    path, data = report
    groups = pd.read_csv(path.parent / "subgroups.csv", keep_default_na=False)
    q = pd.read_csv(path.parent / "predictions.csv").query("~censored")
    assert set(groups["subgroup"]) == {"all", "cohort", "sex", "age"}
    for by, g in groups.groupby("subgroup"):
        assert g["n_rows"].sum() == len(q) and g["n_subjects"].sum() == q["subject_id"].nunique()
    sex = q["subject_id"].map(data.covariates.set_index("subject_id")["sex"])
    for level, g in q.groupby(sex):
        row = groups[(groups["subgroup"] == "sex") & (groups["level"] == level)].iloc[0]
        assert row["rmse"] == pytest.approx(np.sqrt(np.mean((g["value"] - g["prediction"]) ** 2)))
        assert row["coverage90"] == pytest.approx(((g["value"] >= g["lower_90"]) & (g["value"] <= g["upper_90"])).mean())


@pytest.mark.slow
def test_map_personalisation_and_validation(run_dir, tmp_path):
    twin = load(run_dir)
    data = make_virtual_cohort("vaccine_asc", n_subjects=4, n_cohorts=2, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = credibility_report(twin, data, tmp_path / "map", n_samples=50, n_replicates=10, levels=(0.9,))
    assert "by `map`" in path.read_text() and "conditional modes (MAP)" in path.read_text()
    unlabelled = ht.data.validate(data.observations.drop(columns="cohort"), data.doses, data.covariates)
    with pytest.raises(ValueError, match="no cohort labels"):
        credibility_report(twin, unlabelled, tmp_path / "x")
    other = ht.data.validate(data.observations.assign(observable="log10_V"), data.doses, data.covariates)
    with pytest.raises(ValueError, match=r"observable\(s\) \['log10_V'\] are not observables of this twin"):
        credibility_report(twin, other, tmp_path / "x")
    with pytest.raises(ValueError, match="levels"):
        credibility_report(twin, data, tmp_path / "x", levels=(0.9, 1.5))
