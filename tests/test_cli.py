"""The command line: models table, simulate to CSV, quickstart outputs, errors."""

import pandas as pd
import pytest

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


@pytest.mark.slow  # the quickstart end to end (tiny sizes): `make test-all`
def test_quickstart_runs_every_step_and_writes_the_report(tmp_path, capsys):
    import json

    import hybridtwin.models as hm

    assert main(["quickstart", "--out", str(tmp_path), "--fast", "--replicates", "5"]) == 0
    for name in hm.available():
        png = tmp_path / "models" / f"{name}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    for name in ("report.md", "report.html", "heldout_predictions.png", "endpoints.png", "power.png", "landscape.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "twin" / "weights.pt").is_file()
    summary = json.loads((tmp_path / "quickstart.json").read_text())
    rates = {r["arm"]: r["estimate"] for r in summary["trial"] if r["endpoint"] == "protected at 18 m"}
    assert set(rates) == {"no booster", "booster 3 m", "booster 6 m", "booster 12 m"}
    assert rates["booster 12 m"] >= rates["no booster"]  # a booster never lowers protection
    text = (tmp_path / "report.md").read_text()
    for section in ("1. Data", "2. The hybrid twin", "3. Held-out patients", "4. Surrogate", "5. Virtual booster trial",
                    "Power vs sample size", "Schedule optimisation"):
        assert section in text, section
    assert "report.md" in capsys.readouterr().out


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-all` (keeps the default run near the ~3 min budget)
def test_real_data_quickstart_forecasts_the_held_out_studies(tmp_path, capsys):
    assert main(["quickstart", "--data", "challenger2022", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "study_03 + study_17" in text and (tmp_path / "sarscov2_predictions.png").is_file()
    row = [line for line in text.splitlines() if line.startswith("| twin")][0].split("|")
    patients, rmse, coverage = int(row[3]), float(row[5]), float(row[7])
    # the checkpoint's card records 44 patients with a later quantified row, RMSE 2.14 and 90 % coverage 0.96
    assert patients == 44 and abs(rmse - 2.14) < 0.1 and abs(coverage - 0.96) < 0.03
    assert main(["quickstart", "--data", "challenger2022", "--data-dir", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# -- clear one-line errors (exit status 2) for bad paths and numbers --------------------------------------------------
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the training package, for the checkpoint below

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # file permissions do not bind root


def one_line_error(err: str, command: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"hybridtwin {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def twin_files(tmp_path_factory):
    """An (untrained) twin checkpoint and a covariates CSV of two new subjects, for `predict`."""
    from hybridtwin.checkpoint import save
    from hybridtwin.virtual import make_virtual_cohort
    from hybridtwin.twin import TwinConfig
    from training.datamodule import CohortDataModule

    folder = tmp_path_factory.mktemp("twin")
    data = make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=1, seed=0)
    dm = CohortDataModule(data, fractions=(0.5, 0.5), batch_size=4)
    save(dm.make_twin(TwinConfig(model="vaccine_asc", n_samples=1)), folder / "twin")
    data.covariates.head(2).to_csv(folder / "cov.csv", index=False)
    return folder / "twin", folder / "cov.csv"


def _predict(twin_files, out, *extra):
    twin, cov = twin_files
    return ["predict", str(twin), "--covariates", str(cov), "--n-times", "3", "--samples", "2", "--out", str(out),
            *extra]


def test_out_under_a_file_is_one_line(tmp_path, twin_files, capsys):
    """--out whose parent is a file (before: a FileExistsError / NotADirectoryError traceback, exit status 1)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for command, argv in [("simulate", ["simulate", "baccam2006", "--out", str(blocker / "x.csv")]),
                          ("cohort", ["cohort", "vaccine_asc", "--subjects", "4", "--out", str(blocker / "c")]),
                          ("quickstart", ["quickstart", "--fast", "--out", str(blocker / "q")]),
                          ("predict", _predict(twin_files, blocker / "deeper" / "p.csv"))]:
        assert main(argv) == 2, command
        one_line_error(capsys.readouterr().err, command, str(blocker), "is a file, not a folder")
    assert main(_predict(twin_files, tmp_path)) == 2  # a folder where a file is expected
    one_line_error(capsys.readouterr().err, "predict", "is a folder")
    assert blocker.read_text() == ""


@pytest.mark.skipif(AS_ROOT, reason="root may write into read-only folders")
def test_out_in_a_read_only_folder_is_one_line(tmp_path, twin_files, capsys):
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["simulate", "baccam2006", "--out", str(locked / "x.csv")]) == 2
        one_line_error(capsys.readouterr().err, "simulate", str(locked), "cannot write")
        assert main(_predict(twin_files, locked / "sub" / "p.csv")) == 2
        one_line_error(capsys.readouterr().err, "predict", str(locked))
    finally:
        locked.chmod(0o700)


def test_train_config_that_cannot_be_read_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    one_line_error(capsys.readouterr().err, "train", "does not exist", "missing.yaml")
    assert main(["train", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, "train", "is a folder")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert main(["train", str(tmp_path / "binary.yaml")]) == 2
    one_line_error(capsys.readouterr().err, "train", "not a text")


@pytest.mark.skipif(AS_ROOT, reason="root may read any file")
def test_train_config_without_read_permission_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "secret.yaml"
    cfg.write_text("name: x\n")
    cfg.chmod(0)
    try:
        assert main(["train", str(cfg)]) == 2
        one_line_error(capsys.readouterr().err, "train", "cannot read config file", str(cfg))
    finally:
        cfg.chmod(0o600)


def test_predict_missing_checkpoint_is_one_line(tmp_path, twin_files, capsys):
    _, cov = twin_files
    assert main(["predict", str(tmp_path / "no_such_checkpoint"), "--covariates", str(cov),
                 "--out", str(tmp_path / "p.csv")]) == 2
    one_line_error(capsys.readouterr().err, "predict", "no_such_checkpoint", "does not exist")


@pytest.mark.parametrize("extra, message", [
    (["--samples", "0"], "--samples must be an integer >= 1, got 0"),
    (["--samples", "-3"], "--samples must be an integer >= 1, got -3"),
    (["--n-times", "0"], "--n-times must be an integer >= 1, got 0"),
    (["--level", "1.5"], "--level must be in (0, 1)"),
    (["--level", "0"], "--level must be in (0, 1)"),
    (["--times", "0"], "the end time must be a positive number"),
    (["--times", "-5"], "the end time must be a positive number"),
    (["--times", "nan"], "the end time must be a positive number"),
    (["--times", "ten"], "--times must be an end time (a number) or a .csv/.parquet table"),
])
def test_predict_bad_numbers_are_one_line(tmp_path, twin_files, capsys, extra, message):
    """Before: --samples 0 / -3 gave a traceback (exit status 1), --n-times 0 wrote an empty table (status 0)."""
    out = tmp_path / "p.csv"
    assert main(_predict(twin_files, out, *extra)) == 2
    one_line_error(capsys.readouterr().err, "predict", message)
    assert not out.exists()


def test_predict_accepts_good_numbers(tmp_path, twin_files, capsys):
    out = tmp_path / "deep" / "p.csv"
    assert main(_predict(twin_files, out, "--times", "30", "--level", "0.5", "--n-times", "1")) == 0, \
        capsys.readouterr().err
    assert len(pd.read_csv(out)) >= 2  # one time point per subject and observable


@pytest.mark.parametrize("argv, message", [
    (["simulate", "baccam2006", "--n-times", "0"], "--n-times must be an integer >= 1, got 0"),
    (["simulate", "baccam2006", "--n-times", "-3"], "--n-times must be an integer >= 1, got -3"),
    (["simulate", "baccam2006", "--rtol", "-1"], "--rtol must be a positive number"),
    (["cohort", "vaccine_asc", "--subjects", "0"], "--subjects must be an integer >= 1, got 0"),
    (["cohort", "vaccine_asc", "--cohorts", "-1"], "--cohorts must be an integer >= 1, got -1"),
    (["cohort", "vaccine_asc", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["quickstart", "--iterations", "0"], "--iterations must be an integer >= 1, got 0"),
    (["quickstart", "--subjects", "10"], "--subjects must be an integer >= 30"),
    (["quickstart", "--replicates", "-1"], "--replicates must be an integer >= 1, got -1"),
    (["train", "training/configs/vaccine_small.yaml", "--devices", "0"], "--devices must be an integer >= 1"),
    (["train", "training/configs/vaccine_small.yaml", "--devices", "-1"], "--devices must be an integer >= 1"),
    (["train", "training/configs/vaccine_small.yaml", "--max-epochs", "-2"], "--max-epochs must be an integer >= 1"),
])
def test_bad_counts_are_one_line_before_any_work(tmp_path, capsys, argv, message):
    """Before: --twin-epochs -1 silently skipped the twin demo (status 0), simulate --n-times -3 said 'Number of
    samples, -3, must be non-negative.'; now every count is checked up front, before anything is written."""
    out = tmp_path / "out"
    if argv[0] != "train":
        argv = [*argv, "--out", str(out / "x.csv" if argv[0] == "simulate" else out)]
    else:
        argv = [argv[0], str(Path(__file__).resolve().parents[1] / argv[1]), *argv[2:], "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, argv[0], message)
    assert not out.exists()


def test_permission_errors_are_one_line_even_as_root(tmp_path, twin_files, capsys, monkeypatch):
    """The tests above need a non-root user; here the OS refusals are simulated, so the handling is checked
    everywhere: a folder that refuses new files (read-only) and a config that refuses reading."""
    import errno
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert main(["simulate", "baccam2006", "--out", str(tmp_path / "ro" / "x.csv")]) == 2
    one_line_error(capsys.readouterr().err, "simulate", str(tmp_path / "ro"), "cannot write", "Permission denied")
    assert main(_predict(twin_files, tmp_path / "ro" / "p.csv")) == 2
    one_line_error(capsys.readouterr().err, "predict", "cannot write", "Permission denied")
    monkeypatch.undo()

    cfg = tmp_path / "secret.yaml"
    cfg.write_text("name: x\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == cfg:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert main(["train", str(cfg)]) == 2
    one_line_error(capsys.readouterr().err, "train", "cannot read config file", str(cfg), "Permission denied")


def test_an_os_error_anywhere_is_one_line(tmp_path, capsys, monkeypatch):
    """The last line of defence in main(): an OSError a command did not foresee is one line, status 2."""
    import errno

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.csv"))

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    assert main(["simulate", "baccam2006", "--n-times", "3", "--out", str(tmp_path / "x.csv")]) == 2
    one_line_error(capsys.readouterr().err, "simulate", "No space left on device", str(tmp_path / "x.csv"))
