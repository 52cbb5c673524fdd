"""Dose schedules that used to be silently misread: a dropped interval, a NaN duration read as a bolus and an
ADDL so large that expanding it ran for minutes."""

import time

import numpy as np
import pandas as pd
import pytest

import hybridtwin as ht
from hybridtwin.dosing import MAX_EXPANDED_DOSES, BatchSchedule, Dose

STATES = ["T", "I1", "I2", "V"]


def _table(**cols):
    base = dict(subject_id=["a"], time=[1.0], amount=[5.0], target=["V"])
    base.update(cols)
    return pd.DataFrame(base)


@pytest.mark.parametrize("interval", [7.0, 0.0])
def test_interval_without_additional_is_refused(interval):
    with pytest.raises(ValueError, match=r"interval=.* is given but additional=0"):
        Dose(1.0, 5.0, "V", interval=interval)
    assert Dose(1.0, 5.0, "V").expand() == [Dose(1.0, 5.0, "V")]


def test_nan_duration_is_refused_not_read_as_a_bolus():
    with pytest.raises(ValueError, match="duration must be finite"):
        Dose(1.0, 5.0, "V", duration=float("nan"))
    bad = _table(duration=[np.nan])
    with pytest.raises(ValueError, match=r"duration must be finite.*rows \[0\] \(subjects \['a'\]\)"):
        BatchSchedule.from_frame(bad, ["a"], STATES)
    with pytest.raises(ValueError, match="duration must be finite"):
        ht.simulate("baccam2006", [0, 2], params=pd.DataFrame({"subject_id": ["a"]}), doses=bad)
    # no duration column at all still means boluses; NaN interval/additional still mean "no repeat"
    s = BatchSchedule.from_frame(_table(), ["a"], STATES)
    assert s.bolus_time.tolist() == [[1.0]]
    s = BatchSchedule.from_frame(_table(duration=[0.5], interval=[np.nan], additional=[np.nan]), ["a"], STATES)
    assert s.inf_start.tolist() == [[1.0]] and s.inf_end.tolist() == [[1.5]]


def test_a_huge_additional_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"additional=10000000 expands to 10000001 single doses.*MAX_EXPANDED_DOSES"):
        Dose(0.0, 1.0, "V", interval=0.001, additional=1e7)
    with pytest.raises(ValueError, match=r"subject 'a' would receive 10000001 single doses.*row 0"):
        BatchSchedule.from_frame(_table(interval=[0.001], additional=[1e7]), ["a"], STATES)
    with pytest.raises(ValueError, match="subject 'b' would receive"):
        ht.simulate("baccam2006", [0, 2], params=pd.DataFrame({"subject_id": ["a", "b"]}),
                    doses=pd.DataFrame({"subject_id": ["a", "b"], "time": [0.0, 0.0], "amount": [1.0, 1.0],
                                        "target": ["V", "V"], "interval": [1.0, 1e-6], "additional": [3, 10**8]}))
    with pytest.raises(ValueError, match="additional"):  # not an OverflowError from int(inf)
        BatchSchedule.from_frame(_table(interval=[1.0], additional=[np.inf]), ["a"], STATES)
    assert time.perf_counter() - start < 5.0


def test_the_cap_counts_all_doses_of_a_subject():
    half = MAX_EXPANDED_DOSES // 2
    doses = [Dose(0.0, 1.0, "V", interval=1.0, additional=half), Dose(0.5, 1.0, "V", interval=1.0, additional=half)]
    with pytest.raises(ValueError, match=rf"subject 1: its 2 dose\(s\) expand to {2 * half + 2} single doses"):
        BatchSchedule.from_doses([[], doses], STATES)
    table = pd.DataFrame({"subject_id": "a", "time": [0.0, 0.5], "amount": 1.0, "target": "V",
                          "interval": 1.0, "additional": half})
    with pytest.raises(ValueError, match=rf"subject 'a' would receive {2 * half + 2} single doses"):
        BatchSchedule.from_frame(table, ["a", "b"], STATES)
    with pytest.raises(ValueError, match="MAX_EXPANDED_DOSES"):  # a list given to every subject goes the same way
        ht.simulate("baccam2006", [0, 1], doses=doses)
    # exactly at the cap is fine
    ok = BatchSchedule.from_frame(table.assign(additional=[half - 1, half - 1]), ["a"], STATES)
    assert int(np.isfinite(ok.bolus_time.numpy()).sum()) == MAX_EXPANDED_DOSES


def test_expand_checks_the_cap_too():
    d = Dose(0.0, 1.0, "V", interval=1.0, additional=3)
    assert len(d.expand()) == 4
    object.__setattr__(d, "additional", 10**7)  # bypassing the constructor's check
    with pytest.raises(ValueError, match="MAX_EXPANDED_DOSES"):
        d.expand()


@pytest.mark.parametrize("additional", ["3", True, 2.5, -1, float("nan"), float("inf")])
def test_bad_additional_is_refused(additional):
    with pytest.raises(ValueError, match="additional"):
        Dose(0.0, 1.0, "V", interval=1.0, additional=additional)


def test_one_expansion_serves_doses_tables_and_the_training_dataset():
    """Dose.expand, BatchSchedule.from_frame and SubjectDataset expand II/ADDL identically, and the training
    dataset also refuses more than MAX_EXPANDED_DOSES single doses per subject."""
    import pandas as pd

    from hybridtwin import models
    from hybridtwin.data import SubjectDataset, validate
    from hybridtwin.dosing import MAX_EXPANDED_DOSES, BatchSchedule, Dose

    m = models.get("vaccine_asc")
    d = Dose(1.5, 2.0, "Ag", interval=7.0, additional=3)
    single = [x.time for x in d.expand()]
    table = pd.DataFrame({"subject_id": ["a"], "time": [1.5], "amount": [2.0], "target": ["Ag"], "duration": [0.0],
                          "interval": [7.0], "additional": [3]})
    sched = BatchSchedule.from_frame(table, ["a"], m.all_state_names)
    assert single == [1.5, 8.5, 15.5, 22.5] == sched.bolus_time[0].tolist()
    obs = pd.DataFrame({"subject_id": ["a"], "time": [30.0], "observable": ["log10_Ab"], "value": [1.0]})
    ds = SubjectDataset(validate(obs, table, model="vaccine_asc"), model=m)
    assert ds[0].dose_time.tolist() == single
    huge = table.assign(additional=[MAX_EXPANDED_DOSES], interval=[0.001])
    with pytest.raises(ValueError, match="MAX_EXPANDED_DOSES"):
        SubjectDataset(validate(obs, huge, model="vaccine_asc"), model=m)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_simulate_batch_size_must_be_a_positive_integer(bad):
    import hybridtwin as ht

    with pytest.raises(ValueError, match="batch_size"):
        ht.simulate("baccam2006", [0.0, 1.0], batch_size=bad)


def test_simulate_exposes_a_time_budget():
    import numpy as np
    import pandas as pd

    import hybridtwin as ht

    pop = pd.DataFrame({"subject_id": ["ok", "stiff"], "beta": [5e-5, 1e-2]})
    with pytest.warns(RuntimeWarning, match="failed"):
        df = ht.simulate("baccam2006", np.linspace(0, 10, 11), params=pop, max_seconds=1e-9)
    assert set(df.attrs["status"].values()) <= {"ok", "time_budget"} and "time_budget" in df.attrs["status"].values()
    with pytest.raises(ValueError, match="max_seconds"):
        ht.simulate("baccam2006", [0.0, 1.0], max_seconds=-1.0)
