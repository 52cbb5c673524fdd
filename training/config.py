"""A training run as frozen, validated dataclasses, loaded from YAML (an unknown key raises ``ValueError``).

Every key is checked when the file is read, through :mod:`hybridtwin.config` (its ``check_*`` helpers, and
the typed twin sections ``closures``, ``black_box``, ``encoder``, ``noise`` and ``solver``): a misspelt key
or value raises ``ValueError`` naming it and the closest allowed spelling, before any data are generated.

A run file has five sections (and an optional ``model_module``); every key is optional except ``name``, ``data`` and ``twin.model``::

    name: vaccine_small              # the run folder is <out>/<name>/
    out: checkpoints                 # parent folder of runs (relative to the working directory)
    data:                            # a virtual cohort ...
      source: virtual
      model: vaccine_asc
      n_subjects: 48
      n_cohorts: 3
      seed: 0
      fractions: [0.75, 0.25]        # train/validation(/test) subjects, stratified by cohort
      split_seed: 0
    # data: {source: csv, path: my_tables}   # ... or a folder with observations.csv [doses.csv covariates.csv],
    #                                        # relative to the YAML file, or a public data set by name:
    # data: {source: challenger2022, path: ../shared/data/challenger2022_covid_vl_combined,
    #        observables: {log10_vl: log10_V}}  # data observable -> model observable (both log10 copies/ml)
    # model_module: my_models.py             # registers custom models (a .py file or mypkg.models)
    twin: {model: vaccine_asc, n_samples: 2} # any TwinConfig field
    trainer: {max_epochs: 20, batch_size: 16, lr: 0.01, patience: 5, seed: 0}   # max_time: "00:02:00:00"
    estimation: {method: saem, saem: {n_explore: 150, n_smooth: 100}, amortise: {epochs: 30}}
                                     # or {method: vi}: the ELBO trained by Lightning with the trainer settings

Example
-------
>>> cfg = RunConfig.from_dict({"name": "demo", "data": {"model": "vaccine_asc", "n_subjects": 20},
...                            "twin": {"model": "vaccine_asc"}, "trainer": {"max_epochs": 2}})
>>> cfg.trainer.max_epochs, cfg.trainer.precision, cfg.data.fractions
(2, '64-true', (0.8, 0.1, 0.1))
>>> RunConfig.from_dict({"name": "demo", "data": {}, "twin": {"model": "vaccine_asc"}, "trainr": {}})
Traceback (most recent call last):
...
ValueError: unknown key(s) ['trainr'] in the run config (did you mean 'trainer'?); allowed: ['data', 'estimation', 'model_module', 'name', 'out', 'trainer', 'twin']
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from hybridtwin.config import (check_bool, check_choice, check_integer, check_keys, check_mapping, check_number,
                               check_probability)
from hybridtwin.twin import TwinConfig

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = {"float64": ("64-true", "64"), "float32": ("32-true", "32", "16-mixed", "bf16-mixed")}


@dataclass(frozen=True)
class DataSpec:
    """Where the subjects come from and how they are split.

    source: "virtual" (``make_virtual_cohort(model, n_subjects, n_cohorts, seed, **options)``; ``model``
    defaults to the twin's), "csv" (``path``: a folder with observations.csv and optionally doses.csv,
    covariates.csv) or the name of a public data set (``challenger2022``, ``kissler2021``, ``tsang2016``,
    ``baccam2006`` or any loader added by :func:`hybridtwin.datasets.register_loader`; ``path``: its folder).
    observables: ``{data observable: model observable}`` or ``{data observable: {name, scale, offset, unit}}``
    -- rename the data's observables to the model's with the unit conversion stated
    (:func:`hybridtwin.data.map_observables`), e.g. ``{log10_vl: log10_V}``. fractions: train/validation[/test]
    shares (validation must be > 0), stratified by cohort with ``split_seed``.
    """

    source: str = "virtual"
    model: str | None = None
    n_subjects: int = 100
    n_cohorts: int = 3
    seed: int = 0
    options: dict = field(default_factory=dict)
    path: str | None = None
    fractions: tuple = (0.8, 0.1, 0.1)
    split_seed: int = 0
    observables: dict = field(default_factory=dict)

    def __post_init__(self):
        from hybridtwin.data.observables import _rule
        from hybridtwin.datasets import LOADERS

        check_choice(self.source, ("virtual", "csv", *sorted(LOADERS)), "data.source", "a data source")
        if self.source == "csv" and not self.path:
            raise ValueError("data.source 'csv' needs data.path: a folder with observations.csv")
        if self.source in LOADERS and not self.path:
            raise ValueError(f"data.source {self.source!r} needs data.path: the folder of that data set "
                             f"(e.g. ../shared/data/...; see the loader's docstring)")
        if self.source == "virtual" and self.path:
            raise ValueError("data.path is only for source 'csv' or a named data set; remove it or set the source")
        check_mapping(self.observables, "data.observables")
        for name, rule in self.observables.items():
            _rule(str(name), rule)  # validates every entry when the config is read
        check_integer(self.n_subjects, "data.n_subjects", 2)
        check_integer(self.n_cohorts, "data.n_cohorts", 1)
        check_integer(self.seed, "data.seed", 0)
        check_integer(self.split_seed, "data.split_seed", 0)
        check_mapping(self.options, "data.options")
        fr = tuple(check_number(f, "data.fractions entries", 0.0) for f in self.fractions)
        if len(fr) not in (2, 3) or abs(sum(fr) - 1.0) > 1e-9 or fr[0] <= 0 or fr[1] <= 0:
            raise ValueError(f"data.fractions must be (train, validation[, test]) summing to 1 with train and "
                             f"validation > 0, got {tuple(self.fractions)}")
        object.__setattr__(self, "fractions", fr)


@dataclass(frozen=True)
class TrainerSettings:
    """Optimisation and Lightning settings. ``patience`` epochs without a better validation loss stop the
    run (None: never). ``precision`` None follows the twin's dtype ("64-true" for float64). ``max_steps``
    -1 means no step limit. ``deterministic`` makes CPU runs bit-reproducible for a given seed.
    ``max_failed_share``: a validation epoch in which a larger share of subjects fails to solve stops the run
    with an error naming them (the model or solver settings are broken; a loss over the rest would mislead).
    ``max_time``: wall-clock limit of a Lightning (``estimation.method: vi``) run, ``"DD:HH:MM:SS"``; when it is
    reached training stops and the best checkpoint so far is kept."""

    max_epochs: int = 50
    max_steps: int = -1
    batch_size: int = 64
    lr: float = 1e-2
    gradient_clip_val: float | None = 10.0
    patience: int | None = 10
    seed: int = 0
    accelerator: str = "auto"
    devices: object = "auto"
    strategy: str = "auto"
    precision: str | None = None
    deterministic: bool = True
    n_samples: int | None = None
    val_n_samples: int | None = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    max_failed_share: float = 0.2
    max_time: str | None = None

    def __post_init__(self):
        check_integer(self.max_epochs, "trainer.max_epochs", 1)
        if self.max_time is not None and not (isinstance(self.max_time, str)
                                              and re.fullmatch(r"\d{2}:\d{2}:\d{2}:\d{2}", self.max_time)):
            raise ValueError(f"trainer.max_time must be a wall-clock limit 'DD:HH:MM:SS' (e.g. '00:02:00:00' for two "
                             f"hours; Lightning's format), got {self.max_time!r}")
        if self.max_steps != -1:
            check_integer(self.max_steps, "trainer.max_steps", 1)
        check_integer(self.batch_size, "trainer.batch_size", 1)
        object.__setattr__(self, "lr", check_number(self.lr, "trainer.lr", 0.0, strict=True))
        if self.gradient_clip_val is not None:
            object.__setattr__(self, "gradient_clip_val",
                               check_number(self.gradient_clip_val, "trainer.gradient_clip_val", 0.0, strict=True))
        if self.patience is not None:
            check_integer(self.patience, "trainer.patience", 1)
        check_integer(self.seed, "trainer.seed", 0)
        check_integer(self.log_every_n_steps, "trainer.log_every_n_steps", 1)
        object.__setattr__(self, "max_failed_share",
                           check_probability(self.max_failed_share, "trainer.max_failed_share"))
        for name in ("n_samples", "val_n_samples"):
            if getattr(self, name) is not None:
                check_integer(getattr(self, name), f"trainer.{name}", 1)
        check_choice(self.accelerator, ACCELERATORS, "trainer.accelerator", "an accelerator")
        d = self.devices
        ok = d == "auto" or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or (
            isinstance(d, (list, tuple)) and d and all(isinstance(i, int) and i >= 0 for i in d))
        if not ok:
            raise ValueError(f"trainer.devices must be 'auto', a positive integer or a list of device indices, "
                             f"got {d!r}")
        if isinstance(d, list):
            object.__setattr__(self, "devices", tuple(d))
        if not isinstance(self.strategy, str) or not re.fullmatch(r"[a-z_]+", self.strategy):
            raise ValueError(f"trainer.strategy must be a Lightning strategy name such as 'auto' or 'ddp', "
                             f"got {self.strategy!r}")
        for name in ("deterministic", "progress_bar"):
            check_bool(getattr(self, name), f"trainer.{name}")


METHODS = ("saem", "vi")


@dataclass(frozen=True)
class EstimationSettings:
    """How the population model is estimated.

    method: ``"saem"`` (default: stochastic approximation EM for the marginal likelihood, then the encoder is
    amortised on simulations from the fitted model; :mod:`hybridtwin.estimation`) or ``"vi"`` (amortised
    variational inference, the ELBO trained by Lightning with the ``trainer`` settings). saem: keyword
    settings of :class:`hybridtwin.estimation.SAEMConfig`; amortise: of
    :class:`hybridtwin.estimation.AmortiseConfig` (``false`` leaves the encoder untrained).
    """

    method: str = "saem"
    saem: dict = field(default_factory=dict)
    amortise: object = field(default_factory=dict)

    def __post_init__(self):
        from hybridtwin.estimation import AmortiseConfig, SAEMConfig

        check_choice(self.method, METHODS, "estimation.method", "an estimation method")
        if not isinstance(self.saem, dict):
            raise ValueError(f"estimation.saem must be a mapping of SAEMConfig settings, got {self.saem!r}")
        if self.amortise is not False and not isinstance(self.amortise, dict):
            raise ValueError(f"estimation.amortise must be a mapping of AmortiseConfig settings or false, "
                             f"got {self.amortise!r}")
        for name, cls, opts in (("saem", SAEMConfig, self.saem),
                                ("amortise", AmortiseConfig, self.amortise if isinstance(self.amortise, dict) else {})):
            check_keys(opts, cls, f"estimation.{name}")
            if "saem" == name and "kernels" in opts:
                opts = {**opts, "kernels": tuple(opts["kernels"])}
            cls(**opts)  # validates the values


@dataclass(frozen=True)
class RunConfig:
    """One training run: ``name``, ``data`` (:class:`DataSpec`), ``twin`` (a TwinConfig), ``trainer``
    (:class:`TrainerSettings`), ``estimation`` (:class:`EstimationSettings`), ``out`` (the parent folder
    of run folders) and ``model_module``: an importable Python module (``mypkg.models``, or a ``.py`` file path
    relative to the config) that registers the user's models with :func:`hybridtwin.models.register`; it is
    imported before the twin is built, so ``twin.model`` may name a model it defines."""

    name: str
    data: DataSpec
    twin: TwinConfig
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    out: str = "checkpoints"
    estimation: EstimationSettings = field(default_factory=EstimationSettings)
    model_module: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name must be a folder-safe run name (letters, digits, _ . -), got {self.name!r}")
        for attr, cls in (("data", DataSpec), ("twin", TwinConfig), ("trainer", TrainerSettings),
                          ("estimation", EstimationSettings)):
            if not isinstance(getattr(self, attr), cls):
                raise ValueError(f"{attr} must be a {cls.__name__}, got {type(getattr(self, attr)).__name__}")
        allowed = PRECISIONS[self.twin.dtype]
        if self.trainer.precision is None:
            object.__setattr__(self, "trainer", dataclasses.replace(self.trainer, precision=allowed[0]))
        elif str(self.trainer.precision) not in allowed:
            raise ValueError(f"trainer.precision {self.trainer.precision!r} contradicts twin.dtype "
                             f"{self.twin.dtype!r}; use one of {list(allowed)} or leave it unset")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @classmethod
    def from_dict(cls, d: dict, base_dir=None) -> "RunConfig":
        """Build from plain types; ``base_dir`` resolves a relative ``data.path`` (the YAML file's folder)."""
        d = check_keys(d, cls, "the run config")
        for key in ("name", "data", "twin"):
            if key not in d:
                raise ValueError(f"the run config needs a {key!r} entry")
        data = check_keys(d["data"], DataSpec, "data")
        if data.get("path") and base_dir is not None and not Path(data["path"]).is_absolute():
            data["path"] = str(Path(base_dir) / data["path"])
        if "fractions" in data:
            data["fractions"] = tuple(data["fractions"])
        if d.get("model_module") is not None:
            import_model_module(d["model_module"], base_dir)
        twin = check_keys(d["twin"], TwinConfig, "twin")
        if "model" not in twin:
            raise ValueError("twin needs a 'model' entry (a built-in model name, e.g. vaccine_asc)")
        try:  # the twin's sections (closures, encoder, noise, solver, ...) are checked here, before any data
            twin = TwinConfig.from_dict(twin)
        except ValueError as exc:
            raise ValueError(f"twin: {exc}") from None
        trainer = check_keys(d.get("trainer"), TrainerSettings, "trainer")
        estimation = check_keys(d.get("estimation"), EstimationSettings, "estimation")
        return cls(name=d["name"], data=DataSpec(**data), twin=twin,
                   trainer=TrainerSettings(**trainer), out=str(d.get("out", "checkpoints")),
                   estimation=EstimationSettings(**estimation), model_module=d.get("model_module"))

    @classmethod
    def from_yaml(cls, path) -> "RunConfig":
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {p} does not exist")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML: {exc}") from None
        return cls.from_dict(d, base_dir=p.resolve().parent)

    def to_dict(self) -> dict:
        return {"name": self.name, "out": self.out, "model_module": self.model_module, "data": dataclasses.asdict(self.data),
                "twin": self.twin.to_dict(), "trainer": dataclasses.asdict(self.trainer),
                "estimation": dataclasses.asdict(self.estimation)}

    def with_trainer(self, **changes) -> "RunConfig":
        """A copy with some trainer settings changed (``None`` values are ignored), e.g. from the CLI."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, trainer=dataclasses.replace(self.trainer, **changes))


def import_model_module(name: str, base_dir=None) -> None:
    """Import the module that registers a run's custom models: a dotted module name (``mypkg.models``) or the path
    of a ``.py`` file (relative paths from ``base_dir``, the config's folder). ValueError if it cannot be imported."""
    import importlib
    import importlib.util
    import sys

    if not isinstance(name, str) or not name:
        raise ValueError(f"model_module must be a module name (mypkg.models) or a .py file, got {name!r}")
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ValueError(f"model_module: no such file {path}")
        key = f"hybridtwin_user_models_{abs(hash(str(path.resolve())))}"
        if key in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[key]
            raise ValueError(f"model_module {path} failed to import: {type(exc).__name__}: {exc}") from None
        return
    try:
        importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"model_module {name!r} cannot be imported ({exc}); is its package installed or on "
                         f"PYTHONPATH?") from None
