"""``train(config) -> (twin, run_dir)``: one run from a :class:`~training.config.RunConfig` (or its YAML file).

With ``estimation.method: saem`` (the default) the population model is estimated by SAEM on the training
subjects, with standard errors and degeneracy checks, and the encoder is amortised on simulations from the
fitted model (:func:`train_saem`; the run folder gets ``weights.pt``, ``card.json``, ``saem_history.csv`` and
``amortisation.csv``). With ``estimation.method: vi`` the ELBO is trained by Lightning, as follows.

The run folder ``<out>/<name>/`` receives ``last.ckpt`` (Lightning, to resume), ``best.ckpt``, ``weights.pt`` +
``card.json`` (the best-validation twin, loadable with :func:`hybridtwin.load`), and ``logs/`` (CSV always,
TensorBoard when it is installed). With ``deterministic`` (the default) two CPU runs with the same seed give
identical weights, and an interrupted run resumed with ``resume=True`` ends where an uninterrupted one does.

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

import importlib.util
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
    """The cohort a :class:`DataSpec` describes (a simulated virtual cohort, or validated CSV tables)."""
    if spec.source == "virtual":
        from hybridtwin.datasets.virtual import make_virtual_cohort

        return make_virtual_cohort(spec.model or twin_model, n_subjects=spec.n_subjects, n_cohorts=spec.n_cohorts,
                                   seed=spec.seed, **spec.options)
    folder = Path(spec.path)
    if not (folder / "observations.csv").is_file():
        raise ValueError(f"data.path {folder} has no observations.csv (expected observations.csv and optionally "
                         "doses.csv, covariates.csv, as written by `hybridtwin cohort`)")
    tables = {n: pd.read_csv(folder / f"{n}.csv") if (folder / f"{n}.csv").is_file() else None
              for n in ("observations", "doses", "covariates")}
    return validate(tables["observations"], tables["doses"], tables["covariates"], model=twin_model)


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


def train(config: RunConfig | str | Path, *, resume: bool = False):
    """Train the twin a run config describes; returns ``(twin, run_dir)`` (on the main process the twin
    holds the best-validation weights, which are also the ones saved).

    resume: continue from ``<run_dir>/last.ckpt`` (e.g. with a larger ``max_epochs``); without it, a run
    folder that already holds a finished or interrupted run is refused rather than overwritten.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    cfg = config if isinstance(config, RunConfig) else RunConfig.from_yaml(config)
    if cfg.estimation.method == "saem":
        return train_saem(cfg, resume=resume)
    run_dir, ts = cfg.run_dir, cfg.trainer
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ValueError(f"cannot resume: {last} does not exist (train without --resume first)")
    if not resume and (last.exists() or (run_dir / CARD).exists()):
        raise ValueError(f"{run_dir} already holds a run; resume it (--resume) or choose another --out or name")
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
    callbacks = [best_ckpt, last_ckpt]
    if ts.patience is not None:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=ts.patience))
    trainer = L.Trainer(max_epochs=ts.max_epochs, max_steps=ts.max_steps, accelerator=ts.accelerator,
                        devices=list(ts.devices) if isinstance(ts.devices, tuple) else ts.devices,
                        strategy=_strategy(ts.strategy), precision=ts.precision,
                        gradient_clip_val=ts.gradient_clip_val, deterministic=ts.deterministic, callbacks=callbacks,
                        logger=_loggers(run_dir), default_root_dir=str(run_dir), log_every_n_steps=ts.log_every_n_steps,
                        enable_progress_bar=ts.progress_bar, enable_model_summary=ts.progress_bar,
                        use_distributed_sampler=False)
    dm.setup("fit")
    val_eval = dict(batch_size=ts.batch_size, seed=ts.seed, n_samples=ts.val_n_samples or ts.n_samples)
    initial = evaluate(twin, dm.datasets["val"], **val_eval) if not resume else None
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            for quiet in ("overridden `transfer_batch_to_device`", "Checkpoint directory .* exists and is not empty"):
                warnings.filterwarnings("ignore", message=f".*{quiet}.*")
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
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
        save(twin, run_dir, metrics=metrics, data_summary={**dm.summary(), "source": cfg.to_dict()["data"]},
             training=cfg.to_dict())
    return twin, run_dir


def train_saem(cfg: RunConfig, *, resume: bool = False):
    """The ``estimation.method: saem`` route of :func:`train`: SAEM on the training subjects, standard errors,
    degeneracy checks, an amortised encoder, then the validation ELBO (same fixed draws as the VI route) and a
    checkpoint; ``saem_history.csv`` / ``amortisation.csv`` go beside it. Returns ``(twin, run_dir)``."""
    from hybridtwin.estimation import AmortiseConfig, SAEMConfig, estimate

    run_dir, ts, est = cfg.run_dir, cfg.trainer, cfg.estimation
    if resume:
        raise ValueError("an SAEM run cannot be resumed (it has no epochs to continue); rerun it without --resume "
                         "or choose estimation.method: vi")
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
    run_dir.mkdir(parents=True, exist_ok=True)
    fit.history.to_csv(run_dir / "saem_history.csv", index=False)
    if fit.amortisation is not None:
        fit.amortisation.to_csv(run_dir / "amortisation.csv", index=False)
    last = fit.history.iloc[-1]
    metrics = {"method": "saem", "val_elbo": final["elbo"], "val_loglik": final["loglik"], "val_kl": final["kl"],
               "val_failed": final["failed"], "complete_loglik": float(last["complete_loglik"]),
               "saem_iterations": int(len(fit.history)), "fit_seconds": fit_seconds, "failed_subjects": len(fit.failed),
               "amortisation_val_nll": float(fit.amortisation["val_nll"].min()) if fit.amortisation is not None else None,
               "degeneracy_findings": [d["message"] for d in fit.diagnostics]}
    save(twin, run_dir, metrics=metrics, data_summary={**dm.summary(), "source": cfg.to_dict()["data"]},
         training=cfg.to_dict())
    return twin, run_dir
