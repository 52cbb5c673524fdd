"""Training of hybridtwin twins with PyTorch Lightning (the library itself never imports Lightning).

- :class:`~training.config.RunConfig` (``RunConfig.from_yaml("training/configs/vaccine_small.yaml")``): frozen,
  validated run settings; unknown keys raise.
- :class:`~training.datamodule.CohortDataModule`: subject-level, cohort-stratified splits; the twin is fitted
  on training subjects only.
- :class:`~training.module.TwinModule`: the LightningModule that receives a :class:`hybridtwin.twin.HybridTwin`.
- :func:`~training.train.train`: one run -> ``(twin, run_dir)`` with ``weights.pt`` + ``card.json`` for
  :func:`hybridtwin.load`. The same from the shell: ``hybridtwin train CONFIG.yaml``.
"""

from .config import DataSpec, RunConfig, TrainerSettings
from .datamodule import CohortDataModule
from .module import TwinModule
from .train import load_data, train

__all__ = ["RunConfig", "DataSpec", "TrainerSettings", "CohortDataModule", "TwinModule", "train", "load_data"]
