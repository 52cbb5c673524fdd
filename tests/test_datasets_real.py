"""Real-data loaders (hybridtwin.datasets): counts, censoring, covariates, time ranges, validation round trip.

The expected numbers come from the original files in ``shared/data`` (see each loader's docstring for the
rule that produces them). Tests skip when the shared data folder is absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hybridtwin.data import CohortData, validate
from hybridtwin.datasets import load_baccam2006, load_challenger2022, load_kissler2021, load_tsang2016

# loader, folder, file, observable, subjects, rows, censored rows, {cohort: subjects}, covariates, time range
CASES = {
    "challenger2022": dict(
        loader=load_challenger2022, folder="challenger2022_covid_vl_combined", file="Viral_Load.csv",
        observable="log10_vl", subjects=605, rows=2171, censored=658,
        cohorts={"study_01": 2, "study_02": 11, "study_03": 1, "study_04": 3, "study_05": 19, "study_06": 18,
                 "study_07": 12, "study_08": 9, "study_09": 5, "study_10": 37, "study_11": 6, "study_12": 230,
                 "study_13": 64, "study_14": 54, "study_15": 29, "study_16": 12, "study_17": 93},
        covariates=["age", "sex", "severity", "who_max", "who_first", "died"], time=(-2.0, 54.0),
        excluded={"exact duplicate rows (every column equal to an earlier row)": 1}),
    "kissler2021": dict(
        loader=load_kissler2021, folder="kissler2021_nba_ct", file="ct_dat_clean.csv",
        observable="log10_ge", subjects=68, rows=2406, censored=2181, cohorts={"kissler2021": 68},
        covariates=["infection", "symptomatic"], time=(-56.0, 76.0),
        excluded={"exact duplicate rows (every column equal to an earlier row)": 4,
                  "same-day replicate tests merged into their mean (log10 scale)": 1}),
    "tsang2016": dict(
        loader=load_tsang2016, folder="tsang2016_flu_households", file="data.csv",
        observable="log10_vl", subjects=478, rows=1154, censored=345,
        cohorts={"seasonal_H1N1": 182, "seasonal_H3N2": 156, "unsubtyped_A": 86, "pandemic_H1N1": 54},
        covariates=["age", "sex", "vaccinated", "antiviral", "asymptomatic", "chronic_disease", "smoking",
                    "co_index", "fever", "sore_throat", "cough", "runny_nose", "phlegm", "muscle_pain", "headache",
                    "index_case", "onset_time", "household", "household_size", "intervention"],
        time=(0.0, 12.0),
        excluded={"household members without PCR-confirmed infection (no viral load)": 1055}),
    "baccam2006": dict(
        loader=load_baccam2006, folder="baccam2006_influenza_6pt", file="Influenza.csv",
        observable="log10_V", subjects=6, rows=42, censored=7, cohorts={"baccam2006": 6}, covariates=[],
        time=(1.0, 7.0), excluded={}),
}


def _load(shared_data, name: str) -> CohortData:
    case = CASES[name]
    return case["loader"](shared_data / case["folder"])


@pytest.mark.parametrize("name", list(CASES))
def test_counts_cohorts_covariates_and_times(shared_data, name):
    case, data = CASES[name], _load(shared_data, name)
    obs, cov = data.observations, data.covariates
    assert isinstance(data, CohortData)
    assert obs["subject_id"].nunique() == data.report["n_subjects"] == case["subjects"]
    assert len(obs) == data.report["n_observations"] == case["rows"]
    assert int(obs["censored"].sum()) == data.report["n_censored"] == case["censored"]
    assert obs.groupby("cohort")["subject_id"].nunique().to_dict() == case["cohorts"]
    assert set(obs["observable"]) == {case["observable"]}
    assert (obs["time"].min(), obs["time"].max()) == case["time"]
    assert sorted(c for c in cov.columns if c != "subject_id") == sorted(case["covariates"])
    assert len(cov) == case["subjects"] and cov["subject_id"].is_unique
    assert set(cov["subject_id"]) == set(obs["subject_id"])
    assert len(data.doses) == 0
    assert data.report["excluded"] == case["excluded"]
    assert data.report["source"] == name and data.meta["citation"] and data.meta["licence"]


@pytest.mark.parametrize("name", list(CASES))
def test_censoring_convention(shared_data, name):
    obs = _load(shared_data, name).observations
    assert obs["lloq"].notna().all()
    cens = obs[obs["censored"]]
    np.testing.assert_array_equal(cens["value"].to_numpy(), cens["lloq"].to_numpy())
    assert (obs.loc[~obs["censored"], "value"] > obs.loc[~obs["censored"], "lloq"]).all()


@pytest.mark.parametrize("name", list(CASES))
def test_output_passes_validate_round_trip(shared_data, name):
    data = _load(shared_data, name)
    model = "baccam2006" if name == "baccam2006" else None
    again = validate(data.observations, data.doses, data.covariates, model=model)
    pd.testing.assert_frame_equal(again.observations, data.observations)
    pd.testing.assert_frame_equal(again.doses, data.doses)
    pd.testing.assert_frame_equal(again.covariates, data.covariates)
    assert not (set(again.report) & {"censored_values_set_to_lloq", "uncensored_below_lloq",
                                      "ignored_observation_columns"})


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_folder_names_the_expected_file(shared_data, tmp_path, name):
    case = CASES[name]
    with pytest.raises(FileNotFoundError, match=case["file"]):
        case["loader"](tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        case["loader"](tmp_path / "missing")
    with pytest.raises(ValueError, match="no default"):
        case["loader"](None)


def test_file_without_expected_columns_is_named(tmp_path):
    (tmp_path / "Viral_Load.csv").write_text("Day,value\n1,2.0\n")
    with pytest.raises(ValueError, match=r"Viral_Load.csv lacks column\(s\) \['Age'"):
        load_challenger2022(tmp_path)
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="data.csv should have 40 or 41 columns"):
        load_tsang2016(tmp_path)


def test_challenger_rule_gives_659_censored_rows_in_the_file(shared_data):
    raw = pd.read_csv(shared_data / CASES["challenger2022"]["folder"] / "Viral_Load.csv")
    at_or_below = raw["value"] <= raw["LOD"]
    assert at_or_below.sum() == 659
    assert (raw["value"] == 1).sum() == 658  # the sheet's below-LOD placeholder ...
    odd = raw[at_or_below & (raw["value"] != 1)]  # ... plus one Ct-converted value below its LOD
    assert odd[["PatientID", "Day", "Ctvalue"]].values.tolist() == [["14-53", 13, 41.4]]
    dup = raw[raw.duplicated(keep=False)]
    assert dup[["PatientID", "Day", "value"]].drop_duplicates().values.tolist() == [["7-8", 9, 1.0]]
    data = load_challenger2022(shared_data / CASES["challenger2022"]["folder"])
    assert data.report["n_censored"] == 659 - 1  # the duplicated row is a censored one
    row = data.observations.query("subject_id == '14-53' and time == 13").iloc[0]
    assert row["censored"] and row["value"] == pytest.approx(np.log10(67.24))


def test_challenger_ids_covariates_and_limits(shared_data):
    data = load_challenger2022(shared_data / CASES["challenger2022"]["folder"])
    obs, cov = data.observations, data.covariates.set_index("subject_id")
    assert (obs["subject_id"].str.split("-").str[0].astype(int)
            == obs["cohort"].str.removeprefix("study_").astype(int)).all()
    assert set(np.round(10 ** obs["lloq"].unique(), 4)) == {3.0, 5.0, 40.0, 67.24, 100.0, 277.3461, 694.12,
                                                            2323.319, 2690.0}
    assert cov["age"].isna().sum() == 41 and cov["sex"].isna().sum() == 41
    assert set(cov["sex"].dropna()) == {"F", "M"}
    assert cov["severity"].value_counts().to_dict() == {"Mild": 501, "Moderate": 65, "Severe": 39}
    assert cov.loc["1-1", ["age", "sex", "severity", "who_max", "who_first", "died"]].tolist() == [
        35.0, "F", "Moderate", 5.0, 2.0, 0.0]


def test_kissler_detection_limit_from_ct_conversion(shared_data):
    folder = shared_data / CASES["kissler2021"]["folder"]
    raw = pd.read_csv(folder / "ct_dat_clean.csv")
    slope, intercept = np.polyfit(raw["CT.Mean"], raw["log10_GEperML"], 1)
    assert slope == pytest.approx(-1 / 3.609714, rel=1e-6)
    assert intercept + 40 * slope == pytest.approx(2.657610, abs=1e-6)
    assert (raw["CT.Mean"] == 40).sum() == 2185  # 4 of them exact duplicates
    data = load_kissler2021(folder)
    obs, cov = data.observations, data.covariates
    assert obs["lloq"].unique() == pytest.approx([intercept + 40 * slope], abs=1e-9)
    merged = obs.query("subject_id == '3357' and time == 0")["value"]
    assert merged.tolist() == pytest.approx([(3.472079 + 3.965192) / 2], abs=1e-6)
    assert cov["infection"].value_counts().to_dict() == {"Novel": 56, "Persistent": 12}
    assert cov["symptomatic"].value_counts().to_dict() == {"Yes": 22, "No": 19}  # NaN for the other 27


def test_tsang_infected_members_days_and_covariates(shared_data):
    data = load_tsang2016(shared_data / CASES["tsang2016"]["folder"])
    obs, cov = data.observations, data.covariates.set_index("subject_id")
    per_subject = obs.groupby("subject_id").size()
    assert per_subject.value_counts().to_dict() == {1: 23, 2: 234, 3: 221}
    assert obs["lloq"].unique() == pytest.approx([np.log10(900)])
    assert set(obs["time"]) <= set(range(13))
    assert cov["index_case"].sum() == 386 and cov["household"].nunique() == 386
    assert cov.loc[cov["index_case"] == 1, "onset_time"].eq(0).all()
    assert cov["onset_time"].between(0, 9).all()
    assert cov["antiviral"].value_counts().to_dict() == {0.0: 322, 1.0: 156}
    assert cov["vaccinated"].isna().sum() == 1
    assert set(cov["sex"]) == {"F", "M"} and set(cov["intervention"]) == {
        "control", "hand_hygiene", "hand_hygiene_facemask"}
    first = obs[obs["subject_id"] == "1-0"]  # household 1, index case: days 1, 4, 7 sampled
    assert first["time"].tolist() == [1.0, 4.0, 7.0]
    assert first["value"].tolist() == pytest.approx([6.54406804435028, 5.22271647114758, 3.58319877396862])


def test_baccam_days_limit_and_model(shared_data):
    data = load_baccam2006(shared_data / CASES["baccam2006"]["folder"])
    obs = data.observations
    assert (obs.groupby("subject_id")["time"].apply(list) == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]] * 6).all()
    assert (obs["lloq"] == 0.5).all()
    censored = obs.loc[obs["censored"], ["subject_id", "time"]].values.tolist()
    assert censored == [["patient_1", 6.0]] + [[f"patient_{k}", 7.0] for k in range(1, 7)]
    p4 = obs[obs["subject_id"] == "patient_4"]["value"].tolist()
    assert p4 == [3.5, 5.5, 6.5, 5.5, 3.5, 4.0, 0.5]
    validate(obs, model="baccam2006")
