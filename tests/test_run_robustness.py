"""Robustness of a training run: SIGTERM stops ``hybridtwin train`` promptly with exit status 143 and a resumable
``last.ckpt``; a damaged ``last.ckpt`` given to ``--resume`` is refused in one line (exit status 2); a run folder
is locked, so a second run on it fails at once, and a lock left by a dead process never blocks."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from hybridtwin.cli import main
from training.config import RunConfig
from training.train import LOCK, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3  # 12 training subjects in batches of 4


def tiny_config(out: Path, name: str, **trainer) -> RunConfig:
    """The tiny VI run of test_training (24 vaccine_asc subjects, a small encoder), one epoch by default."""
    from test_training import tiny

    return tiny(out, name, **{"max_epochs": 1, **trainer})


def write_yaml(cfg: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before {path.name} appeared:\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.1)


# -- SIGTERM -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a training subprocess killed and resumed: `make test-all`
def test_sigterm_exits_143_with_a_resumable_checkpoint_and_the_folder_stays_locked(tmp_path, capsys):
    """SIGTERM during `hybridtwin train`: (before: exit status 0 from Lightning's SIGTERMException, no card,
    nothing said) stop at the end of the step, exit 143, keep last.ckpt (the last finished epoch), which
    --resume continues; while the run is alive a second run on its folder is refused."""
    cfg = tiny_config(tmp_path / "out", "term", max_epochs=100_000)
    path = write_yaml(cfg, tmp_path / "term.yaml")
    run_dir, log = cfg.run_dir, tmp_path / "train.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hybridtwin.cli", "train", str(path)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(run_dir / "last.ckpt", proc, log)
        # a second run on the same folder while the first is alive: refused at once, naming the folder
        assert main(["train", str(path), "--resume", "--max-epochs", "2"]) == 2
        one_line_error(capsys.readouterr().err, "in use by another training run", str(run_dir), "--out")
        assert proc.poll() is None, "the running training must not be disturbed"
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        rc = proc.wait(timeout=120)
        stopped_after = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 143, text[-3000:]
    assert stopped_after < 60, stopped_after
    assert "stopped by SIGTERM" in text and "--resume" in text and "Traceback" not in text, text[-3000:]
    assert (run_dir / "last.ckpt").is_file() and not (run_dir / "card.json").exists()
    epoch = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["epoch"]
    # the lock died with the process: resuming works and continues from the end of the saved epoch
    assert main(["train", str(path), "--resume", "--max-epochs", str(epoch + 2)]) == 0, capsys.readouterr().err
    metrics = json.loads((run_dir / "card.json").read_text())["metrics"]
    assert metrics["resumed"] and metrics["epochs"] == epoch + 2
    assert metrics["global_step"] == STEPS_PER_EPOCH * (epoch + 2)


def test_sigterm_before_training_starts_raises_training_interrupted(tmp_path, monkeypatch):
    """A SIGTERM while the data are prepared stops at once (nothing to save) with status 143, and the previous
    SIGTERM handler is back afterwards."""
    tt = importlib.import_module("training.train")  # the module (training.train is also the function)
    real_load = tt.load_data

    def load_then_sigterm(*args, **kwargs):
        data = real_load(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before this ends
        return data

    def outer_handler(signum, frame):  # stands in for the default action (ending pytest) if no guard catches it
        received.append(signum)

    received: list = []
    monkeypatch.setattr(tt, "load_data", load_then_sigterm)
    before = signal.signal(signal.SIGTERM, outer_handler)
    try:
        with pytest.raises(TrainingInterrupted, match="nothing to resume") as info:
            train(tiny_config(tmp_path, "early"))
        assert signal.getsignal(signal.SIGTERM) == outer_handler  # the handler in place before is back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert info.value.code == 143 and not received
    assert not (tmp_path / "early" / "last.ckpt").exists()


# -- a damaged last.ckpt -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch tiny run and its YAML config."""
    folder = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(folder / "out", "run")
    train(cfg)
    return cfg, write_yaml(cfg, folder / "run.yaml")


def _flip_in_member(path: Path, member_suffix: str) -> None:
    """Flip one byte in the middle of the stored zip member whose name ends with ``member_suffix``."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not_a_checkpoint":
        path.write_text("model: not a checkpoint\n")
    elif how == "pickle_flipped":
        _flip_in_member(path, "data.pkl")
    elif how == "tensor_flipped":  # loads without error in torch: only the zip CRC shows it
        with zipfile.ZipFile(path) as archive:
            tensor = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        _flip_in_member(path, tensor.filename)
    elif how == "other_torch_file":
        torch.save({"weights": torch.zeros(3)}, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "not_a_checkpoint", "pickle_flipped", "tensor_flipped",
                                 "other_torch_file"])
def test_damaged_last_ckpt_is_refused_in_one_line(finished, tmp_path, capsys, how):
    cfg, path = finished
    out = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, out / cfg.name)
    last = out / cfg.name / "last.ckpt"
    _damage(last, how)
    damaged = last.read_bytes()
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-epochs", "2"]) == 2
    one_line_error(capsys.readouterr().err, "hybridtwin train: error: cannot resume", str(last))
    assert last.read_bytes() == damaged  # left as it was, for the user to inspect or restore


def test_intact_copy_of_the_run_resumes(finished, tmp_path, capsys):
    """The check above refuses damaged files only: the same copy, undamaged, resumes."""
    cfg, path = finished
    out = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, out / cfg.name)
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-epochs", "2"]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / cfg.name / "card.json").read_text())["metrics"]["epochs"] == 2


# -- the run-folder lock ---------------------------------------------------------------------------------------------
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_locked_run_folder_is_refused_and_a_dead_holder_does_not_block(tmp_path, capsys):
    """Another process holds the run folder's lock: the run fails at once with one line naming the folder
    (before: both ran into the same folder). Once that process is killed (SIGKILL: no cleanup at all, the lock
    file stays), the run proceeds."""
    cfg = tiny_config(tmp_path / "out", "shared")
    path = write_yaml(cfg, tmp_path / "shared.yaml")
    cfg.run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cfg.run_dir / LOCK)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert main(["train", str(path)]) == 2
        assert time.monotonic() - start < 30  # fails fast, does not wait for the lock
        one_line_error(capsys.readouterr().err, "in use by another training run", str(cfg.run_dir),
                       "another name or --out")
        with pytest.raises(ValueError, match="in use by another training run"):
            train(cfg)
        assert not (cfg.run_dir / "last.ckpt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (cfg.run_dir / LOCK).exists()  # a stale lock file ...
    assert main(["train", str(path)]) == 0, capsys.readouterr().err  # ... does not block
    assert (cfg.run_dir / "card.json").is_file()


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "out", "x")
    path = write_yaml(cfg, tmp_path / "x.yaml")
    (tmp_path / "a_file").write_text("")
    assert main(["train", str(path), "--out", str(tmp_path / "a_file" / "runs")]) == 2
    one_line_error(capsys.readouterr().err, "cannot create the run folder", str(tmp_path / "a_file"))
