"""Typed, frozen sections of a twin's configuration and the one family of validation helpers.

A :class:`~hybridtwin.twin.TwinConfig` is usually read from YAML or JSON, so its sections arrive as plain
mappings. Each section has a frozen, validated dataclass that reads such a mapping with ``from_dict`` and
writes it back with ``to_dict`` (plain lists and dicts, JSON/YAML-ready):

- :class:`ClosureConfig`: one :class:`~hybridtwin.neural.NeuralClosure` (an entry of ``closures``);
- :class:`BlackBoxConfig`: the :class:`~hybridtwin.neural.NeuralODEDynamics` options (``black_box``);
- :class:`EncoderConfig`: the :class:`~hybridtwin.neural.PatientEncoder` options (``encoder``);
- :class:`NoiseConfig`: the residual-error model of each observable (``noise``: ``{observable: kind}``);
- solver settings are :class:`~hybridtwin.solve.SolverConfig` itself, read and written by
  :func:`solver_from_dict` and :func:`solver_to_dict`.

A misspelt key or value raises ``ValueError`` when the configuration is read -- before any data are
generated or a network is built -- naming the section, the bad key, the allowed keys and the closest
allowed spelling.

The validation helpers (``check_*``) are shared by every configuration reader of the package (twin, run
configs, virtual cohorts, the command line): each takes the value and ``where`` (how the user names it, e.g.
``"trainer.lr"``) and returns the cleaned value or raises ``ValueError`` with one message style.

Example
-------
>>> from hybridtwin.config import ClosureConfig, EncoderConfig, NoiseConfig
>>> c = ClosureConfig.from_dict({"target": "S", "inputs": ["M", "Ag"], "constraint": "nonnegative"})
>>> c.inputs, c.scale
(('M', 'Ag'), 1.0)
>>> ClosureConfig.from_dict(c.to_dict()) == c
True
>>> EncoderConfig.from_dict({"hiden": 32}, where="encoder")
Traceback (most recent call last):
...
ValueError: unknown key(s) ['hiden'] in encoder (did you mean 'hidden'?); allowed: ['hidden', 'set_dim', 'use_cohort', 'use_doses', 'use_observations']
>>> NoiseConfig({"log10_Ab": "gaussian"})
Traceback (most recent call last):
...
ValueError: noise['log10_Ab'] = 'gaussian' is not a noise model (did you mean 'additive'?); choose one of ['additive', 'proportional', 'combined']
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Iterable

from .neural.closure import CONSTRAINTS, MODES
from .neural.mlp import ACTIVATIONS
from .observation import NOISE_MODELS
from .solve import SolverConfig

__all__ = [
    "ClosureConfig", "BlackBoxConfig", "EncoderConfig", "NoiseConfig", "solver_from_dict", "solver_to_dict",
    "check_keys", "check_mapping", "check_choice", "check_number", "check_positive", "check_probability",
    "check_integer", "check_bool", "check_names", "suggest",
]

#: how close (difflib ratio) a misspelling must be to an allowed name to be suggested
SUGGEST_CUTOFF = 0.7


# -- the validation helpers --------------------------------------------------------------------------------------

def suggest(name, choices: Iterable, hints: Mapping | None = None) -> str | None:
    """The allowed name closest to ``name`` (same name in other letter case, then ``hints[name]``, then the
    closest spelling by :func:`difflib.get_close_matches`), or None.

    >>> suggest("inputz", ["target", "inputs", "mode"]), suggest("xyz", ["target", "inputs"])
    ('inputs', None)
    """
    choices = [str(c) for c in choices]
    text = str(name)
    lower = {c.lower(): c for c in choices}
    if text.lower() in lower:
        return lower[text.lower()]
    if hints and text.lower() in hints and hints[text.lower()] in choices:
        return hints[text.lower()]
    close = difflib.get_close_matches(text, choices, n=1, cutoff=SUGGEST_CUTOFF)
    return close[0] if close else None


def _did_you_mean(names: list, choices: Iterable, hints: Mapping | None = None) -> str:
    choices = list(choices)
    found = [(n, suggest(n, choices, hints)) for n in names]
    found = [(n, s) for n, s in found if s is not None]
    if not found:
        return ""
    if len(names) == 1:
        return f" (did you mean {found[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{s!r} for {n!r}" for n, s in found) + "?)"


def _allowed_names(allowed) -> list[str]:
    if isinstance(allowed, type) and dataclasses.is_dataclass(allowed):
        return [f.name for f in dataclasses.fields(allowed)]
    return [str(a) for a in allowed]


def check_mapping(value, where: str) -> dict:
    """``value`` as a dict; ValueError unless it is a mapping.

    >>> check_mapping({"a": 1}, "x")
    {'a': 1}
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping {{name: value}}, got {value!r}")
    return dict(value)


def check_keys(d, allowed, where: str, required: Iterable[str] = ()) -> dict:
    """A copy of the mapping ``d`` (``None``: empty, as YAML reads an empty section) whose keys must be among
    ``allowed`` (names, or a dataclass whose fields are the names); ``required`` keys must be present.
    ValueError naming the unknown keys, the closest allowed spelling of each and the allowed keys.

    >>> check_keys({"max_epoch": 3}, ["max_epochs", "lr"], "trainer")
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['max_epoch'] in trainer (did you mean 'max_epochs'?); allowed: ['lr', 'max_epochs']
    """
    d = {} if d is None else check_mapping(d, where)
    names = _allowed_names(allowed)
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}{_did_you_mean(unknown, names)}; "
                         f"allowed: {sorted(names)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where} needs key(s) {missing}")
    return d


def check_choice(value, choices: Iterable, where: str, noun: str = "an allowed value",
                 hints: Mapping | None = None):
    """``value`` if it is one of ``choices`` (strings); otherwise ValueError naming it, the closest choice (or
    ``hints[value]``: a synonym's meaning) and the choices.

    >>> check_choice("proportionnal", ("additive", "proportional"), "noise['y']", "a noise model")
    Traceback (most recent call last):
    ...
    ValueError: noise['y'] = 'proportionnal' is not a noise model (did you mean 'proportional'?); choose one of ['additive', 'proportional']
    """
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    hint = _did_you_mean([value], choices, hints) if isinstance(value, str) else ""
    raise ValueError(f"{where} = {value!r} is not {noun}{hint}; choose one of {choices}")


def check_names(names, known: Iterable[str], where: str, what: str = "name(s)", of: str = "", note: str = "") -> tuple:
    """``names`` (one name or a sequence) as a tuple of strings, each among ``known``; ValueError naming the
    unknown ones (``what``: how to call them, ``of``: whose they are) with the closest known spelling, then
    ``note``.

    >>> check_names(["beta_S", "delta_ab"], ["beta_S", "delta_Ab"], "fixed", "parameter(s)", of="'vaccine_asc'")
    Traceback (most recent call last):
    ...
    ValueError: fixed names unknown parameter(s) ['delta_ab'] of 'vaccine_asc' (did you mean 'delta_Ab'?)
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    known = list(known)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{where} names unknown {what} {bad}{' of ' + of if of else ''}{_did_you_mean(bad, known)}"
                         f"{'; ' + note if note else ''}")
    return tuple(str(n) for n in names)


def check_number(x, where: str, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None) -> float:
    """``x`` as a finite float (a numeric string, as PyYAML reads ``1e-3``, is accepted), at least
    ``minimum`` (above it with ``strict``) and at most ``maximum``.

    >>> check_number("1e-3", "trainer.lr", 0.0, strict=True)
    0.001
    >>> check_number(-1, "omega['beta_S']", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: omega['beta_S'] must be a finite number >= 0, got -1
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        v = math.nan
    ok = (not isinstance(x, bool) and math.isfinite(v)
          and (minimum is None or (v > minimum if strict else v >= minimum))
          and (maximum is None or v <= maximum))
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if strict else '>='} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        raise ValueError(f"{where} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, "
                         f"got {x!r}")
    return v


def check_positive(x, where: str) -> float:
    """``x`` as a positive finite float.

    >>> check_positive(0, "--rtol")
    Traceback (most recent call last):
    ...
    ValueError: --rtol must be a positive number, got 0
    """
    try:
        return check_number(x, where, 0.0, strict=True)
    except ValueError:
        raise ValueError(f"{where} must be a positive number, got {x!r}") from None


def check_probability(x, where: str) -> float:
    """``x`` as a float in [0, 1].

    >>> check_probability(1.5, "full_context")
    Traceback (most recent call last):
    ...
    ValueError: full_context must be a probability (a number in [0, 1]), got 1.5
    """
    try:
        return check_number(x, where, 0.0, maximum=1.0)
    except ValueError:
        raise ValueError(f"{where} must be a probability (a number in [0, 1]), got {x!r}") from None


def check_integer(x, where: str, minimum: int | None = None) -> int:
    """``x`` as an int (bool refused; numpy integers accepted), at least ``minimum``.

    >>> check_integer(0, "--samples", 1)
    Traceback (most recent call last):
    ...
    ValueError: --samples must be an integer >= 1, got 0
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or (minimum is not None and x < minimum):
        raise ValueError(f"{where} must be an integer{'' if minimum is None else f' >= {minimum}'}, got {x!r}")
    return int(x)


def check_bool(x, where: str) -> bool:
    """``x`` if it is True or False (YAML ``true``/``false``).

    >>> check_bool("yes", "use_doses")
    Traceback (most recent call last):
    ...
    ValueError: use_doses must be true or false, got 'yes'
    """
    if not isinstance(x, bool):
        raise ValueError(f"{where} must be true or false, got {x!r}")
    return x


def _sizes(x, where: str) -> tuple:
    """Hidden layer sizes: a positive integer or a sequence of them, as a tuple."""
    seq = (x,) if isinstance(x, numbers.Integral) and not isinstance(x, bool) else x
    if isinstance(seq, (str, Mapping)) or not isinstance(seq, Iterable):
        raise ValueError(f"{where} must be a list of layer sizes (positive integers), got {x!r}")
    return tuple(check_integer(h, f"{where} entries", 1) for h in seq)


def _scales(x, where: str) -> dict | None:
    """None or ``{name: positive number}``."""
    if x is None:
        return None
    return {str(k): check_positive(v, f"{where}[{k!r}]") for k, v in check_mapping(x, where).items()}


# -- sections ------------------------------------------------------------------------------------------------

def _plain(x):
    """Tuples -> lists, recursively (what JSON and YAML give back)."""
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class _Section:
    """``from_dict`` (key check, then construction) and ``to_dict`` shared by the dataclass sections."""

    WHERE = "section"
    REQUIRED: tuple = ()

    @classmethod
    def from_dict(cls, d, where: str | None = None):
        """Read a mapping (as YAML/JSON give it); an instance is returned as it is."""
        if isinstance(d, cls):
            return d
        where = where or cls.WHERE
        d = check_keys(d, cls, where, required=cls.REQUIRED)
        try:
            return cls(**d)
        except ValueError as exc:  # field messages start with the field name: prefix the section
            raise ValueError(f"{where}.{exc}") from None

    def to_dict(self) -> dict:
        """Every setting as plain lists and dicts (JSON/YAML-ready); ``from_dict`` reads it back."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ClosureConfig(_Section):
    """One neural closure: the keyword arguments of :class:`hybridtwin.neural.NeuralClosure`.

    target: the state a term is added to (``mode="add"``) or the parameter it replaces (``mode="replace"``);
    inputs: names of states, parameters or ``"t"`` fed to the network; constraint: ``"nonnegative"``,
    ``"bounded"`` (within ``bounds``) or ``"signed"`` (for a replacing closure ``"bounded"`` confines the log of
    its multiplier to ``bounds``, which must contain 0; ``"signed"`` lets it reach e^+-20); scale: output scale
    of an added term; hidden: layer
    sizes; log_inputs: inputs fed as ``log10(x + 1)``; input_scale: ``{input: divisor}`` for the others;
    activation: one of :data:`hybridtwin.neural.mlp.ACTIVATIONS`; name: default ``"<mode>_<target>"``.
    Whether the names exist in the model is checked by the :class:`~hybridtwin.twin.TwinConfig` that holds it.

    >>> ClosureConfig.from_dict({"target": "S", "inputz": ["M"]}, where="closures[0]")
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['inputz'] in closures[0] (did you mean 'inputs'?); allowed: ['activation', 'bounds', 'constraint', 'hidden', 'input_scale', 'inputs', 'log_inputs', 'mode', 'name', 'scale', 'target']
    >>> ClosureConfig.from_dict({"target": "S", "inputs": ["M"], "mode": "ad"}, where="closures[0]")
    Traceback (most recent call last):
    ...
    ValueError: closures[0].mode = 'ad' is not a closure mode (did you mean 'add'?); choose one of ['add', 'replace']
    """

    WHERE = "closure"
    REQUIRED = ("target", "inputs")

    target: str
    inputs: tuple
    mode: str = "add"
    constraint: str = "signed"
    scale: float = 1.0
    bounds: tuple = (-1.0, 1.0)
    hidden: tuple = (32, 32)
    log_inputs: tuple = ()
    input_scale: dict | None = None
    activation: str = "tanh"
    name: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if not isinstance(self.target, str) or not self.target:
            raise ValueError(f"target must be a state or parameter name, got {self.target!r}")
        inputs = (self.inputs,) if isinstance(self.inputs, str) else self.inputs
        if isinstance(inputs, Mapping) or not isinstance(inputs, Iterable) or not list(inputs) or \
                not all(isinstance(i, str) for i in inputs):
            raise ValueError(f"inputs must be a non-empty list of state/parameter names or 't', got {self.inputs!r}")
        set_("inputs", tuple(inputs))
        check_choice(self.mode, MODES, "mode", "a closure mode")
        check_choice(self.constraint, CONSTRAINTS, "constraint", "a closure constraint")
        set_("scale", check_positive(self.scale, "scale"))
        b = self.bounds
        if isinstance(b, (str, Mapping)) or not isinstance(b, Iterable) or len(tuple(b)) != 2:
            raise ValueError(f"bounds must be (low, high), got {b!r}")
        b = tuple(check_number(v, "bounds entries") for v in b)
        if self.constraint == "bounded" and not b[0] < b[1]:
            raise ValueError(f"bounds must have low < high for a bounded closure, got {b}")
        if self.mode == "replace" and self.constraint == "nonnegative":
            raise ValueError("constraint 'nonnegative' does not apply to a replacing closure (its multiplier exp(net) "
                             "is positive already): use 'signed' or 'bounded' (the log-multiplier within bounds)")
        if self.mode == "replace" and self.constraint == "bounded" and not b[0] < 0.0 < b[1]:
            raise ValueError(f"a bounded replacing closure bounds the log of its multiplier, which starts at 0: "
                             f"bounds must contain 0 strictly inside, got {b}")
        set_("bounds", b)
        set_("hidden", _sizes(self.hidden, "hidden"))
        set_("log_inputs", check_names(self.log_inputs, self.inputs, "log_inputs", "input(s)", of="the closure"))
        set_("input_scale", _scales(self.input_scale, "input_scale"))
        if self.input_scale:
            check_names(list(self.input_scale), self.inputs, "input_scale", "input(s)", of="the closure")
        check_choice(self.activation, sorted(ACTIVATIONS), "activation", "an activation")
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string or null, got {self.name!r}")


@dataclass(frozen=True)
class BlackBoxConfig(_Section):
    """The black-box neural ODE: the options of :class:`hybridtwin.neural.NeuralODEDynamics` (its model
    comes from the twin). latent_dim: per-patient latent inputs; hidden: layer sizes; state_scale:
    ``{state: typical magnitude}``; activation: one of :data:`hybridtwin.neural.mlp.ACTIVATIONS`.

    >>> BlackBoxConfig.from_dict({"latnt_dim": 3}, where="black_box")
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['latnt_dim'] in black_box (did you mean 'latent_dim'?); allowed: ['activation', 'hidden', 'latent_dim', 'state_scale']
    """

    WHERE = "black_box"

    latent_dim: int = 4
    hidden: tuple = (64, 64)
    state_scale: dict | None = None
    activation: str = "tanh"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("latent_dim", check_integer(self.latent_dim, "latent_dim", 1))
        set_("hidden", _sizes(self.hidden, "hidden"))
        set_("state_scale", _scales(self.state_scale, "state_scale"))
        check_choice(self.activation, sorted(ACTIVATIONS), "activation", "an activation")


@dataclass(frozen=True)
class EncoderConfig(_Section):
    """The patient encoder: the options of :class:`hybridtwin.neural.PatientEncoder`. hidden: width of its
    layers; set_dim: size of the pooled observation and dose summaries; use_observations, use_doses,
    use_cohort: which inputs it reads (covariates always).

    >>> EncoderConfig.from_dict({"hidden": 32}).to_dict()
    {'hidden': 32, 'set_dim': 32, 'use_observations': True, 'use_doses': True, 'use_cohort': True}
    """

    WHERE = "encoder"

    hidden: int = 64
    set_dim: int = 32
    use_observations: bool = True
    use_doses: bool = True
    use_cohort: bool = True

    def __post_init__(self):
        object.__setattr__(self, "hidden", check_integer(self.hidden, "hidden", 1))
        object.__setattr__(self, "set_dim", check_integer(self.set_dim, "set_dim", 1))
        for name in ("use_observations", "use_doses", "use_cohort"):
            check_bool(getattr(self, name), name)


#: common names of the noise models, for the suggestion in the error message
NOISE_SYNONYMS = {"gaussian": "additive", "normal": "additive", "constant": "additive", "homoscedastic": "additive",
                  "relative": "proportional", "multiplicative": "proportional", "exponential": "proportional",
                  "lognormal": "proportional", "mixed": "combined", "additive_proportional": "combined"}


@dataclass(frozen=True, eq=False)
class NoiseConfig(Mapping):
    """The residual-error model of each observable, ``{observable: kind}`` with kind ``"additive"``,
    ``"proportional"`` or ``"combined"`` (:class:`hybridtwin.observation.ObservationModel`); an observable
    not listed is additive. A read-only mapping (equal to a dict with the same items).

    >>> noise = NoiseConfig({"log10_Ab": "combined"})
    >>> noise["log10_Ab"], noise.get("other", "additive"), noise == {"log10_Ab": "combined"}
    ('combined', 'additive', True)
    """

    kinds: Mapping = field(default_factory=dict)

    def __post_init__(self):
        kinds = check_mapping(self.kinds, "noise")
        for name, kind in kinds.items():
            if not isinstance(name, str):
                raise ValueError(f"noise must map observable names to kinds, got the key {name!r}")
            check_choice(kind, NOISE_MODELS, f"noise[{name!r}]", "a noise model", NOISE_SYNONYMS)
        object.__setattr__(self, "kinds", kinds)

    def __getitem__(self, key):
        return self.kinds[key]

    def __iter__(self):
        return iter(self.kinds)

    def __len__(self):
        return len(self.kinds)

    def __repr__(self):
        return f"NoiseConfig({self.kinds!r})"

    @classmethod
    def from_dict(cls, d, where: str = "noise") -> "NoiseConfig":
        """Read ``{observable: kind}`` (``None``: empty); an instance is returned as it is."""
        if isinstance(d, cls):
            return d
        if d is not None and not isinstance(d, Mapping):
            raise ValueError(f"{where} must be a mapping {{observable: kind}}, got {d!r}")
        return cls(dict(d or {}))

    def to_dict(self) -> dict:
        return dict(self.kinds)


# -- solver settings: SolverConfig itself ------------------------------------------------------------------

def solver_from_dict(d, where: str = "solver") -> SolverConfig:
    """A :class:`~hybridtwin.solve.SolverConfig` from a mapping of its fields (unset ones keep
    SolverConfig's defaults; numeric strings, as PyYAML reads ``1e-5``, become numbers); an instance is
    returned as it is.

    >>> solver_from_dict({"rtol": "1e-5", "max_steps": 2000}).rtol
    1e-05
    >>> solver_from_dict({"max_stepz": 3})
    Traceback (most recent call last):
    ...
    ValueError: unknown key(s) ['max_stepz'] in solver (did you mean 'max_steps'?); allowed: ['adjoint', 'atol', 'backend', 'dt', 'fused', 'fused_block', 'max_seconds', 'max_steps', 'method', 'rtol']
    """
    if isinstance(d, SolverConfig):
        return d
    d = check_keys(d, SolverConfig, where)
    for key in ("rtol", "dt", "max_seconds"):
        if isinstance(d.get(key), str):
            d[key] = check_number(d[key], f"{where}.{key}")
    if isinstance(d.get("atol"), str):
        d["atol"] = check_number(d["atol"], f"{where}.atol")
    elif isinstance(d.get("atol"), (list, tuple)):
        d["atol"] = tuple(check_number(a, f"{where}.atol entries") if isinstance(a, str) else a for a in d["atol"])
    try:
        return SolverConfig(**d)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None


def solver_to_dict(config: SolverConfig) -> dict:
    """Every field of a SolverConfig as plain types; :func:`solver_from_dict` reads it back."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
