"""The command line: models table, simulate to CSV, quickstart outputs, errors."""

import pandas as pd

from hybridtwin.cli import main


def test_models_lists_every_builtin(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("baccam2006", "reynolds2006", "vaccine_asc", "sarscov2_cd8"):
        assert name in out


def test_simulate_writes_csv_with_dose_and_param(tmp_path, capsys):
    out = tmp_path / "flu.csv"
    code = main(["simulate", "baccam2006", "--t-end", "8", "--n-times", "17", "--param", "beta=4e-5",
                 "--dose", "2:5:antiviral", "--out", str(out)])
    assert code == 0
    df = pd.read_csv(out)
    assert len(df) == 17 and df["time"].iloc[-1] == 8.0 and "C_nai" in df.columns
    assert abs(df.loc[df.time == 2.0, "C_nai"].iloc[0] - 5.0) < 1e-12


def test_simulate_reports_bad_input(tmp_path, capsys):
    assert main(["simulate", "baccam2006", "--param", "bta=1", "--out", str(tmp_path / "x.csv")]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["simulate", "baccam2006", "--dose", "1:2", "--out", str(tmp_path / "x.csv")]) == 2
    assert "time:amount:target" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_quickstart_writes_one_png_per_model_and_a_csv(tmp_path, capsys):
    import hybridtwin.models as hm

    assert main(["quickstart", "--out", str(tmp_path), "--twin-subjects", "30", "--twin-epochs", "1",
                 "--twin-iterations", "6"]) == 0
    for name in hm.available():
        png = tmp_path / f"{name}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(tmp_path / "simulations.csv")
    assert set(hm.available()) <= set(table["model"])
    assert table["value"].notna().all()
    # the twin demo: trained checkpoint, personalised predictions with intervals, a figure
    pred = pd.read_csv(tmp_path / "twin_predictions.csv")
    assert pred["subject_id"].nunique() == 4 and (pred["lower"] <= pred["upper"]).all()
    assert (tmp_path / "twin_predictions.png").exists() and (tmp_path / "twin_run" / "weights.pt").exists()
