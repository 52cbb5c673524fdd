"""``TwinModule``: the Lightning training system around a :class:`hybridtwin.twin.HybridTwin` it *receives*.

The twin stays a plain ``nn.Module`` (usable and savable without Lightning); this class only adds the
loop: one :meth:`TwinModule._shared_step` for training and validation, logging, the optimizer and the
device transfer of :class:`hybridtwin.data.Batch`.

Randomness is explicit: every step draws its context mask and reparameterisation noise from a
``torch.Generator`` seeded from ``(seed, stage, epoch, batch_idx, rank)``, so nothing depends on a global
RNG state that a resumed run would not restore. Training shows each subject a random early prefix of its
observations (:func:`hybridtwin.data.random_prefix_mask`); validation shows everything, with the same noise every
epoch (comparable losses for early stopping).

Example
-------
>>> import lightning as L
>>> from hybridtwin.virtual.cohort import make_virtual_cohort
>>> from hybridtwin.twin import TwinConfig
>>> from training.datamodule import CohortDataModule
>>> dm = CohortDataModule(make_virtual_cohort("vaccine_asc", n_subjects=12, n_cohorts=2), fractions=(0.5, 0.5),
...                       batch_size=6)
>>> module = TwinModule(dm.make_twin(TwinConfig(model="vaccine_asc", n_samples=1)), lr=1e-2)
>>> trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
...                     enable_model_summary=False, use_distributed_sampler=False)
>>> trainer.fit(module, datamodule=dm)
>>> sorted(k for k in trainer.callback_metrics if k.startswith("val/"))[:3]
['val/elbo', 'val/failed', 'val/kl']
"""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import torch

from hybridtwin.data import Batch, random_prefix_mask
from hybridtwin.twin import HybridTwin

STAGES = {"train": 0, "val": 1, "test": 2}
ARCH_KEY = "hybridtwin_architecture"


def architecture(twin: HybridTwin) -> str:
    """The twin's card without learned values, as canonical JSON (to check a resumed checkpoint fits)."""
    from hybridtwin.checkpoint import _plain

    with torch.no_grad():
        card = {k: v for k, v in twin.card().items() if k != "observation_model"}
    return json.dumps(_plain(card), sort_keys=True)


def step_generator(seed: int, stage: str, epoch: int, batch_idx: int, rank: int = 0) -> torch.Generator:
    """A CPU generator determined by its arguments (reproducible, independent of any global RNG)."""
    state = np.random.SeedSequence([seed, STAGES[stage], epoch, batch_idx, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class SolveFailureError(RuntimeError):
    """Too many subjects failed to solve in a validation epoch (see ``TrainerSettings.max_failed_share``)."""


@torch.no_grad()
def evaluate(twin: HybridTwin, dataset, batch_size: int = 64, seed: int = 0, n_samples: int | None = None) -> dict:
    """Subject-weighted mean ELBO terms over ``dataset`` with full context, using the validation noise
    (so it equals the logged ``val/*`` values of a single-process run)."""
    totals: dict = {}
    n_total = 0
    for i, start in enumerate(range(0, len(dataset), batch_size)):
        batch = dataset.batch(list(range(start, min(start + batch_size, len(dataset)))))
        out = twin.elbo(batch, None, n_samples=n_samples, generator=step_generator(seed, "val", 0, i))
        n = int(out["n_subjects"])
        for key in ("elbo", "loglik", "kl"):
            totals[key] = totals.get(key, 0.0) + float(out[key]) * n
        totals["failed"] = totals.get("failed", 0) + int(out["failed"])
        n_total += n
    return {k: (v if k == "failed" else v / max(n_total, 1)) for k, v in totals.items()}


class TwinModule(L.LightningModule):
    """Train ``twin`` by maximising its ELBO with Adam.

    lr: learning rate; seed: seeds every step's generator; n_samples / val_n_samples: reparameterised
    samples per subject in training / validation (default: the twin's ``n_samples``). max_failed_share: a
    validation epoch in which more than this share of subjects fails to solve raises
    :class:`SolveFailureError` naming them.
    """

    def __init__(self, twin: HybridTwin, lr: float = 1e-2, seed: int = 0, n_samples: int | None = None,
                 val_n_samples: int | None = None, max_failed_share: float = 0.2):
        super().__init__()
        if not isinstance(twin, HybridTwin):
            raise TypeError(f"TwinModule receives a HybridTwin, got {type(twin).__name__}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.twin = twin
        self.save_hyperparameters(ignore=["twin"])
        self._val_failed: list = []
        self._val_seen = 0

    # -- randomness ------------------------------------------------------------------------------------------------
    def step_generator(self, stage: str, batch_idx: int) -> torch.Generator:
        """The generator of one step: (seed, stage, epoch, batch index, rank); validation ignores the epoch."""
        epoch = self.current_epoch if stage == "train" else 0
        rank = self.global_rank if self._trainer is not None else 0
        return step_generator(self.hparams.seed, stage, epoch, batch_idx, rank)

    # -- steps -----------------------------------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _shared_step(self, batch: Batch, stage: str, batch_idx: int = 0) -> torch.Tensor:
        generator = self.step_generator(stage, batch_idx)
        if stage == "train":
            context = random_prefix_mask(batch, generator, self.twin.config.full_context)
            n_samples = self.hparams.n_samples
        else:
            context, n_samples = None, self.hparams.val_n_samples or self.hparams.n_samples
        out = self.twin.elbo(batch, context, n_samples=n_samples, generator=generator)
        n = int(out["n_subjects"])
        on_step = stage == "train"
        for key in ("loss", "elbo", "loglik", "kl", "loglik_per_obs"):
            if key in out:
                value = out[key].detach() if isinstance(out[key], torch.Tensor) else float(out[key])
                self.log(f"{stage}/{key}", value, on_step=on_step and key == "loss", on_epoch=True, batch_size=n,
                         prog_bar=key in ("loss", "elbo"), sync_dist=True)
        if stage == "val":
            self._val_failed.extend(out["failed_ids"])
            self._val_seen += n
        failed = torch.tensor(float(out["failed"]), dtype=torch.float64, device=out["loss"].device)
        self.log(f"{stage}/failed", failed, on_step=False, on_epoch=True, reduce_fx="sum", batch_size=n,
                 sync_dist=True)
        return out["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val", batch_idx)

    def on_validation_epoch_start(self) -> None:
        self._val_failed, self._val_seen = [], 0

    def on_validation_epoch_end(self) -> None:
        share = len(self._val_failed) / max(self._val_seen, 1)
        if self._val_failed and share > self.hparams.max_failed_share:
            ids = self._val_failed
            raise SolveFailureError(
                f"{len(ids)} of {self._val_seen} validation subjects ({share:.0%}) failed to solve, more than "
                f"trainer.max_failed_share = {self.hparams.max_failed_share:g}: {ids[:20]}"
                f"{' ...' if len(ids) > 20 else ''}; the model or solver settings are broken for them (e.g. "
                "twin.solver.max_steps too small, tolerances too tight, parameters far outside their range); "
                "the run stops rather than optimise a loss over the remaining subjects")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test", batch_idx)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip a step whose gradient is not finite. A subject whose solve fails with non-finite states is masked
        out of the loss, but its NaN derivatives inside the solver still reach every parameter (0 * NaN is NaN);
        one such Adam step would make every weight NaN and every later solve fail. The parameters' gradients are
        dropped (Adam then leaves them and their moments as they are) and ``train/skipped_steps`` counts it."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if not finite:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        self.log("train/skipped_steps", torch.tensor(0.0 if finite else 1.0, dtype=torch.float64), on_step=False,
                 on_epoch=True, reduce_fx="sum", sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.twin.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[ARCH_KEY] = architecture(self.twin)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(ARCH_KEY)
        if saved is not None and saved != architecture(self.twin):
            raise ValueError("the checkpoint was trained with a different twin (config, data encoding or training "
                             "subjects); resume with the run's original config, or start a new run")
