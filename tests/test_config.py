"""Typed twin-config sections (hybridtwin.config): typos raise when a config is read, with the closest
spelling; dicts and typed objects build the same config; to_dict/from_dict round-trip; old cards still load."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

import hybridtwin as ht
from hybridtwin.cli import main
from hybridtwin.config import (BlackBoxConfig, ClosureConfig, EncoderConfig, NoiseConfig, check_choice, check_integer,
                               check_keys, check_number, check_probability, solver_from_dict, solver_to_dict)
from hybridtwin.neural import NeuralClosure, NeuralODEDynamics, PatientEncoder
from hybridtwin.solve import SolverConfig
from hybridtwin.twin import HybridTwin, TwinConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "training" / "configs" / "vaccine_small.yaml"
SAVED = sorted((ROOT / "experiments" / "results" / "estimation").glob("*_twin"))

CLOSURE = dict(target="S", inputs=["M", "Ag"], constraint="nonnegative", scale=2e4)

# (twin section, bad value, the misspelt key or value, the suggestion the message must make)
TYPOS = [
    ("closures", [{"target": "S", "inputz": ["M"]}], "inputz", "inputs"),
    ("closures", [{**CLOSURE, "constraint": "nonnegativ"}], "nonnegativ", "nonnegative"),
    ("encoder", {"hiden": 32}, "hiden", "hidden"),
    ("encoder", {"set_dimm": 8}, "set_dimm", "set_dim"),
    ("black_box", {"latnt_dim": 3}, "latnt_dim", "latent_dim"),
    ("noise", {"log10_Ab": "gaussian"}, "gaussian", "additive"),
    ("noise", {"log10_Ab": "proportionnal"}, "proportionnal", "proportional"),
    ("noise", {"log10_AB": "additive"}, "log10_AB", "log10_Ab"),
    ("solver", {"max_stepz": 2000}, "max_stepz", "max_steps"),
    ("solver", {"rtoll": 1e-4}, "rtoll", "rtol"),
]


def _message(bad: str, good: str) -> str:
    return rf"'{re.escape(bad)}'.*did you mean '{re.escape(good)}'\?"


@pytest.mark.parametrize("section, value, bad, good", TYPOS)
def test_a_typo_raises_naming_the_key_and_the_right_one(section, value, bad, good):
    with pytest.raises(ValueError, match=_message(bad, good)):
        TwinConfig(model="vaccine_asc", **{section: value})
    with pytest.raises(ValueError, match=_message(bad, good)):  # the JSON/YAML route
        TwinConfig.from_dict({"model": "vaccine_asc", section: value})


def test_an_unknown_key_lists_the_allowed_keys_and_suggests_nothing_far_off():
    with pytest.raises(ValueError) as err:
        TwinConfig(model="vaccine_asc", encoder={"latnt_dim": 3})  # a black_box option, not an encoder one
    text = str(err.value)
    assert "['latnt_dim'] in encoder" in text and "did you mean" not in text
    assert "allowed: ['hidden', 'set_dim', 'use_cohort', 'use_doses', 'use_observations']" in text
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\] in the twin config \(did you mean 'model'\?\)"):
        TwinConfig.from_dict({"model": "vaccine_asc", "modle": "x"})


def _bad_run_config(tmp_path: Path, section: str, value) -> Path:
    d = yaml.safe_load(SMALL.read_text())
    d["twin"][section] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


class DataReached(Exception):
    pass


@pytest.mark.parametrize("section, value, bad, good", TYPOS)
def test_a_yaml_typo_raises_when_the_run_config_is_read_before_any_data(tmp_path, monkeypatch, capsys, section, value,
                                                                       bad, good):
    from training.config import RunConfig

    train_module = importlib.import_module("training.train")  # the module (the package exports a function train)

    calls = []

    def no_data(*args, **kwargs):
        calls.append(args)
        raise DataReached

    monkeypatch.setattr(train_module, "load_data", no_data)
    path = _bad_run_config(tmp_path, section, value)
    with pytest.raises(ValueError, match="^twin: .*" + _message(bad, good)):
        RunConfig.from_yaml(path)
    out = tmp_path / "runs"
    assert main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(_message(bad, good), err) and len(err.strip().splitlines()) == 1, err
    assert calls == [] and not out.exists(), "the run started (data, run folder) before the typo was reported"


def test_a_correct_yaml_does_reach_data_generation(tmp_path, monkeypatch):
    """The control of the test above: without the typo, the same command reaches load_data."""
    train_module = importlib.import_module("training.train")
    monkeypatch.setattr(train_module, "load_data", lambda *a, **k: (_ for _ in ()).throw(DataReached()))
    path = _bad_run_config(tmp_path, "encoder", {"hidden": 8})
    with pytest.raises(DataReached):
        main(["train", str(path), "--out", str(tmp_path / "runs")])


def test_typed_objects_and_dicts_build_the_same_config():
    typed = TwinConfig(model="vaccine_asc", closures=[ClosureConfig(**CLOSURE)], encoder=EncoderConfig(hidden=16),
                       noise=NoiseConfig({"log10_Ab": "combined"}), solver=SolverConfig(rtol=1e-4, max_steps=2000))
    plain = TwinConfig(model="vaccine_asc", closures=[CLOSURE], encoder={"hidden": 16},
                       noise={"log10_Ab": "combined"}, solver={"rtol": 1e-4, "max_steps": 2000})
    assert typed == plain
    assert isinstance(plain.closures[0], ClosureConfig) and plain.closures[0].inputs == ("M", "Ag")
    assert isinstance(plain.encoder, EncoderConfig) and plain.encoder.hidden == 16
    assert isinstance(plain.noise, NoiseConfig) and plain.noise == {"log10_Ab": "combined"}
    assert isinstance(plain.solver, SolverConfig) and plain.solver.max_steps == 2000 and plain.solver.atol == 1e-9
    assert TwinConfig(model="vaccine_asc").solver == SolverConfig(rtol=1e-5, atol=1e-6)  # the twin's default
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.encoder.hidden = 3
    mixed = dataclasses.replace(plain, closures=[plain.closures[0], {"target": "M", "inputs": ["t"]}])
    assert [c.target for c in mixed.closures] == ["S", "M"]
    # the twin is built from the typed sections
    data = ht.virtual.make_virtual_cohort("vaccine_asc", n_subjects=4, n_cohorts=2, seed=0)
    twin = HybridTwin.from_data(typed, data)
    assert twin.dynamics.closures[0].scale == 2e4 and twin.dynamics.closures[0].constraint == "nonnegative"
    assert twin.solver_config == typed.solver and twin.observation.noise == ["combined"]
    assert twin.encoder.obs_net.net[0].out_features == 16
    bb = TwinConfig(model="vaccine_asc", black_box=BlackBoxConfig(latent_dim=2, hidden=[8]))
    assert bb == TwinConfig(model="vaccine_asc", black_box={"latent_dim": 2, "hidden": [8]})
    assert HybridTwin.from_data(bb, data).dynamics.latent_dim == 2


def test_to_dict_is_plain_json_and_yaml_and_round_trips():
    cfg = TwinConfig(model="vaccine_asc", closures=[CLOSURE, {"target": "beta_S", "inputs": ["t"], "mode": "replace",
                                                              "input_scale": {"t": 100}}],
                     encoder={"hidden": 16, "use_doses": False}, noise={"log10_Ab": "proportional"},
                     solver={"rtol": 1e-4, "atol": [1e-6] * 5, "max_steps": 2000}, fixed=["delta_Ag"],
                     cohort_calibration=["log10_Ab"], fixed_values={"K_Ag": 1.0}, time_scale=100)
    d = cfg.to_dict()
    assert [f.name for f in dataclasses.fields(TwinConfig)] == list(d)
    assert isinstance(d["closures"], list) and isinstance(d["closures"][0], dict)
    assert d["closures"][0]["inputs"] == ["M", "Ag"] and d["noise"] == {"log10_Ab": "proportional"}
    assert d["encoder"]["hidden"] == 16 and d["solver"]["max_steps"] == 2000 and d["solver"]["atol"] == [1e-6] * 5
    assert TwinConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert TwinConfig.from_dict(yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(d))))) == cfg
    assert TwinConfig.from_dict(d) == cfg and TwinConfig.from_dict(cfg.to_dict()).to_dict() == d
    bb = TwinConfig(model="baccam2006", black_box={"state_scale": {"V": 1e4}})
    assert TwinConfig.from_dict(json.loads(json.dumps(bb.to_dict()))) == bb


def test_a_card_written_before_the_sections_were_typed_still_builds_the_same_twin():
    """Old cards hold only the keys the user gave (``encoder: {}``, a partial solver dict); unset keys take
    the defaults they had then (the encoder's, SolverConfig's)."""
    old = {"model": "vaccine_asc", "closures": [{"target": "S", "inputs": ["M"]}], "black_box": None,
           "observables": ["log10_Ab"], "noise": {}, "encoder": {}, "solver": {"max_steps": 4000}}
    cfg = TwinConfig.from_dict(old)
    assert cfg.encoder == EncoderConfig() and cfg.solver == SolverConfig(max_steps=4000)
    assert cfg.closures[0] == ClosureConfig(target="S", inputs=("M",))
    assert TwinConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.skipif(not SAVED, reason="no saved twins under experiments/results/estimation")
def test_saved_twins_still_load():
    from hybridtwin.checkpoint import load

    path = SAVED[0]
    with pytest.warns(UserWarning, match="predates card protection"):
        twin = load(path)
    stored = json.loads((path / "card.json").read_text())["twin"]["config"]
    assert isinstance(twin.config.encoder, EncoderConfig) and isinstance(twin.config.solver, SolverConfig)
    assert twin.config.solver == solver_from_dict(stored["solver"])
    assert TwinConfig.from_dict(json.loads(json.dumps(twin.config.to_dict()))) == twin.config
    for key, value in stored.items():  # every setting the card gave is kept
        if key not in ("closures", "black_box", "encoder", "noise", "solver"):
            assert json.loads(json.dumps(twin.config.to_dict()[key])) == value, key


def test_sections_mirror_the_constructors_they_configure():
    """A new option of NeuralClosure, NeuralODEDynamics or PatientEncoder must be added to its section (and the
    defaults must agree), or a config could not set it / an old card would build a different network."""
    def options(fn, skip=()):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if n != "self" and n not in skip}

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    for section, fn, skip in ((ClosureConfig, NeuralClosure, ()), (BlackBoxConfig, NeuralODEDynamics, ("model",)),
                              (EncoderConfig, PatientEncoder, ("n_covariates", "n_params", "n_observables",
                                                               "n_cohorts", "n_targets"))):
        opts = options(fn, skip)
        assert list(opts) == list(defaults(section)), section.__name__
        for name, value in opts.items():
            if value is not inspect.Parameter.empty:
                assert value == defaults(section)[name], (section.__name__, name)
    assert set(solver_to_dict(SolverConfig())) == {f.name for f in dataclasses.fields(SolverConfig)}


@pytest.mark.parametrize("section, value, message", [
    ("closures", {"target": "S", "inputs": ["M"]}, "closures must be a list"),
    ("closures", [{"target": "S", "inputs": []}], r"closures\[0\].inputs must be a non-empty list"),
    ("closures", [{**CLOSURE, "scale": -1}], r"closures\[0\].scale must be a positive number"),
    ("closures", [{**CLOSURE, "log_inputs": ["V"]}], r"closures\[0\].log_inputs names unknown input\(s\) \['V'\]"),
    ("closures", [{"target": "M", "inputs": ["S"], "mode": "replace"}], r"closures\[0\].target names unknown param"),
    ("encoder", {"use_doses": "yes"}, "encoder.use_doses must be true or false"),
    ("encoder", {"hidden": 0}, r"encoder.hidden must be an integer >= 1"),
    ("encoder", [64], "encoder must be a mapping"),
    ("noise", ["additive"], "noise must be a mapping"),
    ("black_box", {"activation": "Tanh"}, "did you mean 'tanh'"),
    ("black_box", {"state_scale": {"X": 1.0}}, r"black_box.state_scale names unknown state\(s\) \['X'\]"),
    ("solver", {"method": "rk4"}, "solver.fixed-step method 'rk4' needs a positive dt"),
    ("solver", {"rtol": "tight"}, "solver.rtol must be a finite number"),
    ("n_samples", 0, "n_samples must be an integer >= 1"),
    ("full_context", 2.0, "full_context must be a probability"),
    ("calibration", "offsett", "did you mean 'offset'"),
    ("fixed", ["delta_ag"], r"fixed names unknown parameter\(s\) \['delta_ag'\].*did you mean 'delta_Ag'"),
])
def test_bad_values_raise_when_the_config_is_read(section, value, message):
    with pytest.raises(ValueError, match=message):
        TwinConfig(model="vaccine_asc", **{section: value})


def test_yaml_numbers_read_as_strings_are_numbers():
    """PyYAML reads 1e-4 (no dot) as a string; the solver section accepts it like the trainer's lr."""
    d = yaml.safe_load("model: vaccine_asc\nsolver: {rtol: 1e-4, atol: 1e-6}\n")
    assert isinstance(d["solver"]["rtol"], str)
    assert TwinConfig.from_dict(d).solver == SolverConfig(rtol=1e-4, atol=1e-6)


def test_the_helpers():
    assert check_keys(None, ["a"], "x") == {} and check_keys({"a": 1}, ["a"], "x") == {"a": 1}
    with pytest.raises(ValueError, match=r"x needs key\(s\) \['a'\]"):
        check_keys({}, ["a"], "x", required=["a"])
    assert check_number("1e-3", "lr", 0.0, strict=True) == 1e-3
    for bad in (True, "nan", float("inf"), None, [1.0]):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            check_number(bad, "lr")
    import numpy as np

    assert check_integer(np.int64(3), "n", 1) == 3 and type(check_integer(np.int64(3), "n", 1)) is int
    with pytest.raises(ValueError, match="n must be an integer >= 1, got True"):
        check_integer(True, "n", 1)
    assert check_probability(1, "p") == 1.0
    assert check_choice("add", ("add", "replace"), "mode") == "add"
    with pytest.raises(ValueError, match=r"mode = 'ADD' is not .*did you mean 'add'"):
        check_choice("ADD", ("add", "replace"), "mode")
