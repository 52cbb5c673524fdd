"""``train(config) -> (twin, run_dir)``: one run from a :class:`~training.config.RunConfig` (or its YAML file).

With ``estimation.method: saem`` (the default) the population model is estimated by SAEM on the training
subjects, with standard errors and degeneracy checks, and the encoder is amortised on simulations from the
fitted model (:func:`train_saem`; the run folder gets ``weights.pt``, ``card.json``, ``saem_history.csv`` and
``amortisation.csv``). With ``estimation.method: vi`` the ELBO is trained by Lightning, as follows.

The run folder ``<out>/<name>/`` receives ``last.ckpt`` (Lightning, to resume), ``best.ckpt``, ``weights.pt`` +
``card.json`` (the best-validation twin, loadable with :func:`hybridtwin.load`), and ``logs/`` (CSV always,
TensorBoard when it is installed). With ``deterministic`` (the default) two CPU runs with the same seed give
identical weights, and an interrupted run resumed with ``resume=True`` ends where an uninterrupted one does.

Robustness: a run holds an exclusive lock on its folder (``.train.lock``, ``fcntl.flock``; the kernel releases it
when the process ends, so a crashed run never blocks the next one), and a second run on the same folder is
refused at once. SIGTERM stops the run at the end of the current training or validation step (a second SIGTERM
stops it at once) and raises :class:`TrainingInterrupted` (a ``SystemExit`` with code 143, as a shell reports a
SIGTERM); ``last.ckpt`` is the checkpoint of the last finished epoch, so ``resume=True`` continues exactly. A
``last.ckpt`` that cannot be read (e.g. truncated) is refused with a ``ValueError`` before anything starts.

Example
-------
>>> import tempfile
>>> from training.config import RunConfig
>>> cfg = RunConfig.from_dict({"name": "demo", "out": tempfile.mkdtemp(),
...     "data": {"model": "vaccine_asc", "n_subjects": 12, "n_cohorts": 2, "fractions": [0.5, 0.5]},
...     "twin": {"model": "vaccine_asc", "n_samples": 1},
...     "trainer": {"max_epochs": 1, "batch_size": 6, "progress_bar": False}, "estimation": {"method": "vi"}})
>>> twin, run_dir = train(cfg)
>>> sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".json", ".ckpt"))
['best.ckpt', 'card.json', 'last.ckpt', 'weights.pt']
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from hybridtwin.checkpoint import CARD, save
from hybridtwin.data import CohortData, validate

from .config import DataSpec, RunConfig
from .datamodule import CohortDataModule
from .module import TwinModule, evaluate


def load_data(spec: DataSpec, twin_model: str) -> CohortData:
    """The cohort a :class:`DataSpec` describes (a simulated virtual cohort, validated CSV tables or a named
    public data set), with its observables mapped onto the model's (``spec.observables``)."""
    from hybridtwin.data import map_observables

    if spec.source == "virtual":
        from hybridtwin.virtual.cohort import make_virtual_cohort

        data = make_virtual_cohort(spec.model or twin_model, n_subjects=spec.n_subjects, n_cohorts=spec.n_cohorts,
                                   seed=spec.seed, **spec.options)
    elif spec.source == "csv":
        folder = Path(spec.path)
        if not (folder / "observations.csv").is_file():
            raise ValueError(f"data.path {folder} has no observations.csv (expected observations.csv and optionally "
                             "doses.csv, covariates.csv, as written by `hybridtwin cohort`)")
        tables = {n: pd.read_csv(folder / f"{n}.csv") if (folder / f"{n}.csv").is_file() else None
                  for n in ("observations", "doses", "covariates")}
        data = validate(tables["observations"], tables["doses"], tables["covariates"])
    else:
        from hybridtwin.datasets import load

        data = load(spec.source, spec.path)
    data = map_observables(data, dict(spec.observables), model=twin_model)
    from hybridtwin import models as _models

    model = _models.get(twin_model)
    known = {*model.observable_names, *model.all_state_names}
    missing = sorted(set(data.observables) - known)
    if missing:
        raise ValueError(f"the data's observable(s) {missing} are not computed by model {model.name!r} (its "
                         f"observables: {list(model.observable_names)}); map them in the config, e.g. "
                         f"data: {{observables: {{{missing[0]}: {model.observable_names[0]}}}}} when the units agree")
    if spec.source == "virtual" and not spec.observables:
        return data  # validated by the generator; keeps its ground truth
    # checked against the model now that the names agree; provenance and what the loader excluded are kept
    checked = validate(data.observations, data.doses, data.covariates, model=twin_model)
    kept = {k: v for k, v in data.report.items() if k in ("excluded", "observable_mapping")}
    return dataclasses.replace(checked, report={**checked.report, **kept}, meta=dict(data.meta),
                               true_parameters=data.true_parameters, trajectories=data.trajectories)


def _strategy(name: str) -> str:
    # some twin parameters get no gradient (e.g. the cohort scale/offset of an observable without cohort
    # calibration), which plain DDP rejects: let DDP look for unused parameters
    return {"ddp": "ddp_find_unused_parameters_true",
            "ddp_spawn": "ddp_spawn_find_unused_parameters_true"}.get(name, name)


def _loggers(run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard"))
    return loggers


def _best_weights(module: TwinModule, best_path: str) -> int | None:
    """Load the best checkpoint's twin weights into ``module.twin``; returns the best epoch."""
    if not best_path or not Path(best_path).is_file():
        return None
    ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
    prefix = "twin."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    module.twin.load_state_dict(state, strict=True)
    return int(ckpt.get("epoch", -1))


def _number(v):
    v = v.detach().cpu().double().item() if isinstance(v, torch.Tensor) else v
    return float(v) if isinstance(v, (int, float)) else None


# -- robustness: SIGTERM, the run-folder lock, unreadable checkpoints ------------------------------------------------
LOCK = ".train.lock"


class TrainingInterrupted(SystemExit):
    """A run stopped by a signal (SIGTERM). ``code`` is ``128 + signal number`` (143), the exit status a shell
    reports for a process ended by SIGTERM; the message says what was kept and how to continue."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))
        self.message, self.signum = message, int(signum)

    def __str__(self) -> str:
        return self.message


class _SignalGuard:
    """Catches SIGTERM for the duration of a run (main thread only; the previous handler is restored).

    Outside ``deferred()`` blocks a SIGTERM raises :class:`TrainingInterrupted` at once (nothing is being written
    then). Inside them (the Lightning fit, writing the checkpoint) it is only recorded: :class:`_StopOnSignal`
    acts on it at the end of the current step, and :meth:`check` after the block; a second SIGTERM inside
    ``fit`` raises at once (a step that takes too long must still be stoppable)."""

    def __init__(self):
        self.signum: int | None = None
        self._defer = 0
        self._force_second = False
        self._previous = None
        self._installed = False
        self.finished = False  # the run's results were saved

    def __getstate__(self):  # ddp_spawn pickles the callbacks: carry the state, not the handler
        return {**self.__dict__, "_previous": None, "_installed": False}

    def install(self) -> None:
        """(Re)take SIGTERM; Lightning installs its own handler when ``fit`` starts, which this replaces (its
        handler kills the DDP children and broadcasts from inside the handler, which can hang a DDP run)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._installed:
            self._previous = signal.getsignal(signal.SIGTERM)
            self._installed = True
        signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        again = self.signum is not None
        self.signum = signum
        if not self._defer or (again and self._force_second):
            raise TrainingInterrupted("", signum)

    @contextlib.contextmanager
    def deferred(self, force_second: bool = False):
        self._defer += 1
        self._force_second = force_second
        try:
            yield
        finally:
            self._defer -= 1
            self._force_second = False

    def check(self) -> None:
        if self.signum is not None:
            raise TrainingInterrupted("", self.signum)


def _stop_on_signal_callback(guard: _SignalGuard):
    from lightning.pytorch.callbacks import Callback

    class _StopOnSignal(Callback):
        """Stops ``fit`` at the end of a step once a rank has received SIGTERM. All ranks agree first (one
        all-reduce per step under DDP, where every rank runs the same number of steps), so they stop together
        at the same step and none waits in a collective for a rank that has left."""

        def on_sanity_check_start(self, trainer, pl_module):
            guard.install()

        def on_train_start(self, trainer, pl_module):
            guard.install()

        def _check(self, trainer):
            if trainer.strategy.reduce_boolean_decision(guard.signum is not None, all=False):
                raise TrainingInterrupted("", guard.signum or signal.SIGTERM)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._check(trainer)

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self._check(trainer)

    return _StopOnSignal()


def _interrupted(exc: BaseException, run_dir: Path, method: str, finished: bool) -> TrainingInterrupted:
    signum = getattr(exc, "signum", signal.SIGTERM)
    last = run_dir / "last.ckpt"
    if finished:
        what = f"the run had finished and its twin was saved in {run_dir}"
    elif method == "saem":
        what = "nothing was saved (an SAEM run cannot be resumed): run it again"
    elif last.is_file():
        what = (f"{last} holds the last finished epoch: continue with --resume (train(config, resume=True)); the "
                "steps of the unfinished epoch are run again")
    else:
        what = "no epoch had finished, so there is nothing to resume: run it again without --resume"
    return TrainingInterrupted(f"stopped by {signal.Signals(signum).name}; {what}", signum)


@contextlib.contextmanager
def _guarded(run_dir: Path, method: str):
    """The run folder's lock and the SIGTERM guard for one run; a stop by SIGTERM (ours, or Lightning's own
    ``SIGTERMException``, a ``SystemExit`` with code ``None``, i.e. status 0, if it is raised) leaves as a
    :class:`TrainingInterrupted` saying what was kept."""
    try:
        from lightning.pytorch.utilities.exceptions import SIGTERMException
    except ImportError:  # pragma: no cover - older Lightning
        SIGTERMException = TrainingInterrupted
    guard = _SignalGuard()
    with _run_lock(run_dir):
        guard.install()
        try:
            yield guard
        except (TrainingInterrupted, SIGTERMException) as exc:
            guard._defer += 1  # a further SIGTERM while this is reported changes nothing
            raise _interrupted(exc, run_dir, method, guard.finished) from None
        finally:
            guard.restore()


def _is_main_process() -> bool:
    """False in the extra processes of a multi-process run (their rank variables are set and not 0)."""
    return all(os.environ.get(k, "0") in ("", "0")
               for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Create ``run_dir`` and hold an exclusive ``flock`` on ``run_dir/.train.lock`` while the block runs.

    Another run on the same folder fails at once with a ValueError naming the folder. The lock belongs to the
    open file: the kernel drops it when the process exits, however it exits, so a stale lock file never
    blocks. The extra processes of a multi-process run (DDP ranks > 0) take no lock: their launcher holds it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644) if _is_main_process() else None
    except OSError as exc:
        raise ValueError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}"
                         f"{f' ({exc.filename})' if exc.filename else ''}; choose a writable --out (config 'out')"
                         ) from None
    try:
        if fd is not None:
            try:
                import fcntl
            except ImportError:  # not POSIX: no lock
                fcntl = None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 64).decode(errors="replace").strip()
                    raise ValueError(f"{run_dir} is in use by another training run"
                                     f"{f' (process {holder})' if holder.isdigit() else ''}; wait for it to finish, "
                                     "or choose another name or --out") from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _check_resumable(last: Path) -> None:
    """Refuse, with one clear line, a ``last.ckpt`` that cannot be read (truncated copy, disk full, another file)."""
    import zipfile

    advice = "restore it, or start a new run (another name or --out)"
    if not zipfile.is_zipfile(last):  # torch.save writes a zip archive whose directory is at the very end
        raise ValueError(f"cannot resume: {last} is truncated or not a checkpoint (not a complete torch archive, "
                         f"{last.stat().st_size} bytes); {advice}")
    try:
        with zipfile.ZipFile(last) as archive:
            damaged = archive.testzip()  # torch.load does not check the CRCs: a flipped bit in a tensor loads
        if damaged is not None:
            raise ValueError(f"{damaged} fails its checksum")
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever zip/torch/pickle raise for a damaged file
        detail = (str(exc).strip().splitlines() or [""])[0][:120]
        if "Weights only load failed" in detail:
            detail = "its pickled contents are invalid"
        raise ValueError(f"cannot resume: {last} is damaged and cannot be read ({type(exc).__name__}"
                         f"{f': {detail}' if detail else ''}); {advice}") from None
    missing = [k for k in ("state_dict", "epoch", "loops", "optimizer_states")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"cannot resume: {last} is not a Lightning training checkpoint (no {', '.join(missing)}); "
                         f"{advice}")


def train(config: RunConfig | str | Path, *, resume: bool = False):
    """Train the twin a run config describes; returns ``(twin, run_dir)`` (on the main process the twin
    holds the best-validation weights, which are also the ones saved).

    resume: continue from ``<run_dir>/last.ckpt`` (e.g. with a larger ``max_epochs``); without it, a run
    folder that already holds a finished or interrupted run is refused rather than overwritten. The run holds
    the folder's lock throughout (a second run on it raises ValueError); SIGTERM raises
    :class:`TrainingInterrupted` (see the module docstring).
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_yaml(config)
    if cfg.estimation.method == "saem":
        return train_saem(cfg, resume=resume)
    with _guarded(cfg.run_dir, "vi") as guard:
        return _train_vi(cfg, resume, guard)


def _train_vi(cfg: RunConfig, resume: bool, guard: _SignalGuard):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    run_dir, ts = cfg.run_dir, cfg.trainer
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ValueError(f"cannot resume: {last} does not exist (train without --resume first)")
    if not resume and (last.exists() or (run_dir / CARD).exists()):
        raise ValueError(f"{run_dir} already holds a run; resume it (--resume) or choose another --out or name")
    if resume:
        _check_resumable(last)
    L.seed_everything(ts.seed, workers=False, verbose=False)
    data = load_data(cfg.data, cfg.twin.model)
    dm = CohortDataModule(data, fractions=cfg.data.fractions, split_seed=cfg.data.split_seed,
                          batch_size=ts.batch_size, seed=ts.seed)
    torch.manual_seed(ts.seed)  # the twin's initial weights
    twin = dm.make_twin(cfg.twin)
    module = TwinModule(twin, lr=ts.lr, seed=ts.seed, n_samples=ts.n_samples, val_n_samples=ts.val_n_samples,
                        max_failed_share=ts.max_failed_share)
    best_ckpt = ModelCheckpoint(dirpath=str(run_dir), filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                enable_version_counter=False)
    # Lightning >= 2.5 writes save_last only when a top-k checkpoint was written too: keep "last" separately
    last_ckpt = ModelCheckpoint(dirpath=str(run_dir), filename="last", save_top_k=1, enable_version_counter=False)
    callbacks = [best_ckpt, last_ckpt, _stop_on_signal_callback(guard)]
    if ts.patience is not None:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=ts.patience))
    trainer = L.Trainer(max_epochs=ts.max_epochs, max_steps=ts.max_steps, accelerator=ts.accelerator,
                        devices=list(ts.devices) if isinstance(ts.devices, tuple) else ts.devices,
                        strategy=_strategy(ts.strategy), precision=ts.precision,
                        gradient_clip_val=ts.gradient_clip_val, deterministic=ts.deterministic, callbacks=callbacks,
                        logger=_loggers(run_dir), default_root_dir=str(run_dir), log_every_n_steps=ts.log_every_n_steps,
                        enable_progress_bar=ts.progress_bar, enable_model_summary=ts.progress_bar,
                        use_distributed_sampler=False, max_time=ts.max_time)
    dm.setup("fit")
    val_eval = dict(batch_size=ts.batch_size, seed=ts.seed, n_samples=ts.val_n_samples or ts.n_samples)
    initial = evaluate(twin, dm.datasets["val"], **val_eval) if not resume else None
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            for quiet in ("overridden `transfer_batch_to_device`", "Checkpoint directory .* exists and is not empty"):
                warnings.filterwarnings("ignore", message=f".*{quiet}.*")
            with guard.deferred(force_second=True):  # SIGTERM stops fit at the end of the step
                trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    guard.check()  # a SIGTERM after the last step: stop before the final evaluation
    fit_seconds = time.perf_counter() - start
    twin = module.twin.cpu().eval()
    if trainer.is_global_zero:
        best_epoch = _best_weights(module, best_ckpt.best_model_path)
        final = evaluate(twin, dm.datasets["val"], **val_eval)
        last_epoch = {k: _number(v) for k, v in trainer.callback_metrics.items()}
        metrics = {"val_elbo_initial": initial["elbo"] if initial else None, "val_elbo": final["elbo"],
                   "val_loglik": final["loglik"], "val_kl": final["kl"], "val_failed": final["failed"],
                   "best_val_loss": _number(best_ckpt.best_model_score), "best_epoch": best_epoch,
                   "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                   "fit_seconds": fit_seconds, "resumed": resume, "last_epoch": last_epoch}
        with guard.deferred():  # never leave half-written weights or card
            save(twin, run_dir, metrics=metrics, data_summary={**dm.summary(), "source": cfg.to_dict()["data"]},
                 training=cfg.to_dict())
    guard.finished = True
    guard.check()
    return twin, run_dir


def train_saem(cfg: RunConfig, *, resume: bool = False):
    """The ``estimation.method: saem`` route of :func:`train`: SAEM on the training subjects, standard errors,
    degeneracy checks, an amortised encoder, then the validation ELBO (same fixed draws as the VI route) and a
    checkpoint; ``saem_history.csv`` / ``amortisation.csv`` go beside it. Returns ``(twin, run_dir)``."""
    if resume:
        raise ValueError("an SAEM run cannot be resumed (it has no epochs to continue); rerun it without --resume "
                         "or choose estimation.method: vi")
    with _guarded(cfg.run_dir, "saem") as guard:
        return _train_saem(cfg, guard)


def _train_saem(cfg: RunConfig, guard: _SignalGuard):
    from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate

    run_dir, ts, est = cfg.run_dir, cfg.trainer, cfg.estimation
    if (run_dir / CARD).exists():
        raise ValueError(f"{run_dir} already holds a run; choose another --out or name")
    torch.manual_seed(ts.seed)
    data = load_data(cfg.data, cfg.twin.model)
    dm = CohortDataModule(data, fractions=cfg.data.fractions, split_seed=cfg.data.split_seed,
                          batch_size=ts.batch_size, seed=ts.seed)
    twin = dm.make_twin(cfg.twin)
    saem = SAEMConfig(**{"seed": ts.seed, "progress": ts.progress_bar, **est.saem})
    amort = est.amortise if est.amortise is False else AmortiseConfig(
        **{"seed": ts.seed, "progress": ts.progress_bar, **est.amortise})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=UserWarning)
        fit = estimate(twin, dm.train_data, saem, amort)
    fit_seconds = time.perf_counter() - start
    twin = twin.cpu().eval()
    dm.setup("fit")
    final = evaluate(twin, dm.datasets["val"], batch_size=ts.batch_size, seed=ts.seed,
                     n_samples=ts.val_n_samples or ts.n_samples)
    with guard.deferred():  # the results are being written: a SIGTERM waits for them
        fit.history.to_csv(run_dir / "saem_history.csv", index=False)
        if fit.amortisation is not None:
            fit.amortisation.to_csv(run_dir / "amortisation.csv", index=False)
        last = fit.history.iloc[-1]
        metrics = {"method": "saem", "val_elbo": final["elbo"], "val_loglik": final["loglik"], "val_kl": final["kl"],
                   "val_failed": final["failed"], "complete_loglik": float(last["complete_loglik"]),
                   "saem_iterations": int(len(fit.history)), "fit_seconds": fit_seconds,
                   "failed_subjects": len(fit.failed),
                   "amortisation_val_nll": float(fit.amortisation["val_nll"].min())
                   if fit.amortisation is not None else None,
                   "degeneracy_findings": [d["message"] for d in fit.diagnostics]}
        save(twin, run_dir, metrics=metrics, data_summary={**dm.summary(), "source": cfg.to_dict()["data"]},
             training=cfg.to_dict())
    guard.finished = True
    guard.check()
    return twin, run_dir
