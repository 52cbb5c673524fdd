"""The credibility report of a trained twin on a data set: what a reviewer asks before trusting its predictions.

:func:`credibility_report` personalises every patient of the data on its own observations and writes
``report.md``, a self-contained ``report.html`` (figures embedded), the PNG figures and the tables behind them
(``predictions.csv``, ``vpc.csv``, ``calibration.csv``, ``subgroups.csv``, ``shrinkage.csv``,
``identifiability.csv``) with eight sections (:data:`SECTIONS`):

1. observed vs predicted (the individual prediction: median of the noise-free model over the posterior),
   censored rows drawn at their limit;
2. residuals (observed - predicted) of the quantified rows vs time and vs prediction;
3. a censoring-aware visual predictive check per cohort and observable: 5/50/95 % quantiles of the data in
   time bins (censored values at their limit) vs the same quantiles of replicates simulated from the twin's
   population model (the patients' covariates, cohorts, doses and sampling times; between-patient variability
   and measurement noise; a simulated value below the row's limit is censored at it), and the fraction below
   the limit per bin;
4. calibration: empirical coverage of the 50/80/90/95 % posterior-predictive intervals on quantified rows;
5. RMSE, bias and 90 % coverage by cohort, sex and age band (where those columns exist);
6. identifiability: correlated population estimates, eta-shrinkage of each patient parameter and the
   parameters the design does not inform (:func:`hybridtwin.estimation.identifiability`);
7. degeneracy checks (:func:`hybridtwin.estimation.degeneracy_checks`), plus those recorded at training;
8. the model card: context of use, training cohorts, data summary, assumptions, limitations and versions;
   what the checkpoint's card does not record is stated as "not recorded".

The predictions are in-sample (each patient's posterior is conditioned on the rows it is compared with), so
sections 1, 2, 4 and 5 describe fit, not forecasting; the VPC (3) uses the population model only.
"""

from __future__ import annotations

import base64
import html
import math
import platform
import re
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .plots import plt

SECTIONS = ("1. Observed vs predicted", "2. Residuals", "3. Visual predictive check",
            "4. Calibration of prediction intervals", "5. Subgroup performance", "6. Identifiability",
            "7. Degeneracy checks", "8. Model card")
QUANTILES = (0.05, 0.5, 0.95)
AGE_BANDS = (0.0, 18.0, 40.0, 65.0, math.inf)
NOT_RECORDED = "not recorded"


def _pct(level: float) -> str:
    return f"{100 * level:g}"


def _check(twin, data, method: str, levels, n_samples: int, n_replicates: int) -> tuple:
    from ..config import check_integer
    from ..data import CohortData
    from ..personalise import METHODS

    if not isinstance(data, CohortData):
        raise TypeError(f"data must be a CohortData (hybridtwin.data.validate), got {type(data).__name__}")
    if len(data.observations) == 0:
        raise ValueError("the data have no observations: nothing to report on")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    unknown = sorted(set(data.observables) - set(twin.config.observables))
    if unknown:
        raise ValueError(f"observable(s) {unknown} are not observables of this twin {list(twin.config.observables)}; "
                         "drop or map them (hybridtwin.data.map_observables) first")
    check_integer(n_samples, "n_samples", 2)
    check_integer(n_replicates, "n_replicates", 1)
    levels = tuple(sorted({float(x) for x in levels}))
    if not levels or not all(0 < x < 1 for x in levels):
        raise ValueError(f"levels must be interval levels in (0, 1), e.g. (0.5, 0.9), got {levels}")
    return levels


def _relabel_cohorts(twin, data, reference_cohort: bool):
    """Data without cohort labels (validate's default cohort) get the twin's cohort when it knows one, or its
    reference cohort on request; otherwise personalisation refuses them, naming the known cohorts."""
    from ..data.schema import DEFAULT_COHORT

    known = twin.cohort_names or [DEFAULT_COHORT]
    if data.cohorts == [DEFAULT_COHORT] and DEFAULT_COHORT not in known:
        if len(known) > 1 and not reference_cohort:
            raise ValueError(f"the data have no cohort labels and this twin knows the cohorts {known}: give the "
                             f"observations a 'cohort' column, or use the reference cohort {known[0]!r} on purpose "
                             "(reference_cohort=True, CLI --reference-cohort)")
        data = replace(data, observations=data.observations.assign(cohort=known[0]))
    return data


def _draws(twin, pbatch, b, slot, z: torch.Tensor, gen: torch.Generator, max_solves: int = 20_000):
    """Measurements ``y`` (noise included) and calibrated noise-free values ``mu`` at the rows ``(b, slot)`` of
    ``pbatch`` for patient parameters ``z`` (S, B, Pp): two (S, n) arrays, NaN where a solve failed."""
    S, B, P = z.shape
    per = max(1, max_solves // max(B, 1))
    ys, mus = [], []
    with torch.no_grad():
        for s0 in range(0, S, per):
            zk = z[s0:s0 + per]
            K = zk.shape[0]
            g, status = twin.observables_at(twin.theta(zk.reshape(K * B, P), pbatch.cohort.repeat(K)), pbatch, repeats=K)
            g = g.reshape(K, B, -1)
            k, c = pbatch.observable.expand(K, -1, -1), pbatch.cohort.expand(K, -1)
            bad = (status != 0).reshape(K, B, 1)
            nan = torch.tensor(float("nan"), dtype=g.dtype)
            # a twin with missed samples draws them as -inf: the VPC counts them below the limit, as the data's
            y = twin.observation.sample(g, k, c, generator=gen)
            ys.append(torch.where(bad, nan, y)[:, b, slot])
            mus.append(torch.where(bad, nan, twin.observation.calibrate(g, k, c))[:, b, slot])
    return torch.cat(ys).double().numpy(), torch.cat(mus).double().numpy()


def _nanquantile(x: np.ndarray, q, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (failed solves) stay NaN
        # missed samples are drawn as -inf ("not detected"): interpolating next to one gives NaN, so take the
        # nearest draw there
        return np.nanquantile(x, q, axis=axis, method="nearest" if np.isneginf(x).any() else "linear")


def _bins(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time bins at quantiles of the sampling times (about 8 rows per bin, 1-8 bins): edges and each row's bin;
    bin k holds ``edges[k] <= t < edges[k+1]`` (the last one includes its upper edge)."""
    n_bins = int(np.clip(len(t) // 8, 1, 8))
    edges = np.unique(np.quantile(t, np.linspace(0, 1, n_bins + 1)))
    if len(edges) == 1:
        edges = np.repeat(edges, 2)
    return edges, np.searchsorted(edges[1:-1], t, side="right")


def _vpc(rows: pd.DataFrame, sim: np.ndarray) -> pd.DataFrame:
    """Observed vs simulated quantiles per cohort, observable and time bin; ``sim`` (R, n) censored replicates
    (a value below the row's limit is set to it, as the data's censored values are), NaN where a solve failed."""
    lloq = rows["lloq"].to_numpy(float)
    below = np.where(np.isnan(sim), np.nan, (sim < lloq[None]).astype(float))
    sim = np.where(sim < lloq[None], lloq[None], sim)
    out = []
    for (cohort, obs), g in rows.groupby(["cohort", "observable"], sort=True):
        pos = g.index.to_numpy()
        edges, which = _bins(g["time"].to_numpy(float))
        for k in range(len(edges) - 1):
            sel = pos[which == k]
            if not len(sel):
                continue
            r = dict(cohort=cohort, observable=obs, bin=k, t_lo=edges[k], t_hi=edges[k + 1],
                     t_mid=float(rows["time"].to_numpy()[sel].mean()), n_obs=len(sel),
                     obs_blq=float(rows["censored"].to_numpy()[sel].mean()))
            sim_q = _nanquantile(sim[:, sel], QUANTILES, axis=1)  # (3, R)
            for q, v, s in zip(QUANTILES, np.quantile(rows["value"].to_numpy(float)[sel], QUANTILES), sim_q):
                lo, mid, hi = _nanquantile(s, QUANTILES, axis=0)
                r.update({f"obs_q{100 * q:02.0f}": v, f"sim_q{100 * q:02.0f}": mid,
                          f"sim_q{100 * q:02.0f}_lo": lo, f"sim_q{100 * q:02.0f}_hi": hi})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                share = np.nanmean(below[:, sel], axis=1)
            r.update(zip(("sim_blq_lo", "sim_blq", "sim_blq_hi"), _nanquantile(share, QUANTILES, axis=0)))
            out.append(r)
    return pd.DataFrame(out)


def _subgroups(pred: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
    """RMSE, bias and 90 % coverage of the quantified rows by cohort, sex and age band, where those exist."""
    q = pred[~pred["censored"]].copy()
    cols = {c.lower(): c for c in covariates.columns}
    groups = [("all", pd.Series("all", index=q.index)), ("cohort", q["cohort"].astype(str))]
    sex = cols.get("sex", cols.get("gender"))
    if sex is not None:
        groups.append(("sex", q["subject_id"].map(covariates.set_index("subject_id")[sex]).astype(object)
                       .where(lambda s: s.notna(), "missing").astype(str)))
    if "age" in cols:
        age = q["subject_id"].map(covariates.set_index("subject_id")[cols["age"]]).astype(float)
        labels = [f"{a:g}-{b:g}" if math.isfinite(b) else f">={a:g}" for a, b in zip(AGE_BANDS[:-1], AGE_BANDS[1:])]
        band = pd.cut(age, AGE_BANDS, right=False, labels=labels).astype(object)
        groups.append(("age", band.where(band.notna(), "missing").astype(str)))
    out = []
    for by, key in groups:
        for level, g in q.groupby(key, sort=True):
            err = g["value"] - g["prediction"]
            out.append(dict(subgroup=by, level=level, n_subjects=g["subject_id"].nunique(), n_rows=len(g),
                            rmse=float(np.sqrt(np.mean(err**2))), bias=float(err.mean()),
                            coverage90=float(g["inside_90"].mean())))
    return pd.DataFrame(out)


def _fit_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Per observable: rows, quantified rows, RMSE, bias and correlation of observed vs predicted."""
    out = []
    for name, g in pred.groupby("observable", sort=True):
        q = g[~g["censored"] & g["prediction"].notna()]
        out.append(dict(observable=name, rows=len(g), quantified=len(q), rmse=float(np.sqrt(np.mean(q["residual"] ** 2))),
                        bias=float(q["residual"].mean()),
                        correlation=float(np.corrcoef(q["value"], q["prediction"])[0, 1]) if len(q) > 1 else math.nan))
    return pd.DataFrame(out)


# -- figures ----------------------------------------------------------------------------------------------------------
def _panels(n: int, ncol: int, w: float = 4.2, h: float = 3.4):
    nrow = max(1, math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def _fig_observed(pred: pd.DataFrame, out: Path) -> str:
    names = list(pd.unique(pred["observable"]))
    fig, axes = _panels(len(names), min(3, len(names)), 4.2, 4.0)
    for ax, name in zip(axes, names):
        g = pred[pred["observable"] == name]
        q, c = g[~g["censored"]], g[g["censored"]]
        span = np.concatenate([q["prediction"].dropna(), q["value"], c["value"]])  # a censored row's model value
        lo, hi = float(span.min()), float(span.max())  # may be far below its limit (log10 of ~0): drawn clipped
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
        ax.scatter(q["prediction"], q["value"], s=12, alpha=0.6, label="quantified")
        ax.scatter(c["prediction"].clip(lo, hi), c["value"], s=22, marker="v", facecolors="none", edgecolors="tab:red",
                   label="censored (at its limit; x clipped to the axes)")
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
        ax.set(xlim=(lo, hi), ylim=(lo, hi))
        ax.set(xlabel="predicted (individual)", ylabel="observed", title=name)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, out, "observed_vs_predicted.png")


def _fig_residuals(pred: pd.DataFrame, out: Path) -> str:
    q = pred[~pred["censored"]]
    names = list(pd.unique(pred["observable"]))
    fig, axes = _panels(2 * len(names), 2)
    for i, name in enumerate(names):
        g = q[q["observable"] == name]
        for ax, x, label in ((axes[2 * i], "time", "time"), (axes[2 * i + 1], "prediction", "predicted")):
            ax.scatter(g[x], g["residual"], s=12, alpha=0.6)
            ax.axhline(0.0, color="k", lw=1)
            ax.set(xlabel=label, ylabel="observed - predicted", title=f"{name}: residuals vs {label}")
            ax.grid(alpha=0.3)
    return _save(fig, out, "residuals.png")


def _fig_vpc(vpc: pd.DataFrame, rows: pd.DataFrame, out: Path) -> str:
    keys = list(vpc.groupby(["cohort", "observable"], sort=True).groups)
    fig, axes = _panels(2 * len(keys), 2)
    for i, (cohort, obs) in enumerate(keys):
        v = vpc[(vpc["cohort"] == cohort) & (vpc["observable"] == obs)]
        d = rows[(rows["cohort"] == cohort) & (rows["observable"] == obs)]
        ax, axb = axes[2 * i], axes[2 * i + 1]
        ax.scatter(d["time"], d["value"], s=6, color="0.6", alpha=0.5, label="data")
        for q, color in zip(("05", "50", "95"), ("tab:blue", "tab:red", "tab:blue")):
            ax.fill_between(v["t_mid"], v[f"sim_q{q}_lo"], v[f"sim_q{q}_hi"], color=color, alpha=0.15, lw=0)
            ax.plot(v["t_mid"], v[f"sim_q{q}"], color=color, lw=1, ls="--")
            ax.plot(v["t_mid"], v[f"obs_q{q}"], color=color, lw=1.8, marker="o", ms=3)
        ax.set(xlabel="time", ylabel=obs, title=f"{cohort}: observed (solid) vs simulated (dashed, 90% band)")
        axb.fill_between(v["t_mid"], v["sim_blq_lo"], v["sim_blq_hi"], color="tab:purple", alpha=0.2, lw=0)
        axb.plot(v["t_mid"], v["sim_blq"], color="tab:purple", ls="--", label="simulated")
        axb.plot(v["t_mid"], v["obs_blq"], color="k", marker="o", ms=3, label="observed")
        axb.set(xlabel="time", ylabel="fraction below limit", ylim=(-0.02, 1.02), title=f"{cohort}: {obs} censored share")
        axb.legend(fontsize=7)
        for a in (ax, axb):
            a.title.set_fontsize(9)
            a.grid(alpha=0.3)
    return _save(fig, out, "vpc.png")


def _fig_calibration(cal: pd.DataFrame, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="nominal")
    ax.plot(cal["nominal"], cal["empirical"], "o-", label="empirical (quantified rows)")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, "calibration.png")


# -- markdown / HTML ------------------------------------------------------------------------------------------------
def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)


def _render(blocks: list, out: Path) -> tuple[str, str]:
    md, ht = [], []
    inline = lambda s: re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(s)))  # noqa: E731
    for kind, *a in blocks:
        if kind == "h":
            md.append(f"{'#' * a[0]} {a[1]}")
            ht.append(f"<h{a[0]}>{inline(a[1])}</h{a[0]}>")
        elif kind == "p":
            md.append(a[0])
            ht.append(f"<p>{inline(a[0])}</p>")
        elif kind == "ul":
            md.append("\n".join(f"- {x}" for x in a[0]))
            ht.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in a[0]) + "</ul>")
        elif kind == "table":
            df = a[0]
            cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
            md.append("\n".join(["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
                                + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]))
            ht.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in df.columns) + "</tr>"
                      + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells)
                      + "</table>")
        elif kind == "img":
            md.append(f"![{a[1]}]({a[0]})")
            data = base64.b64encode((out / a[0]).read_bytes()).decode()
            ht.append(f'<p><img alt="{html.escape(a[1])}" src="data:image/png;base64,{data}"></p>')
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Credibility report</title><style>{style}</style>"
            f"</head><body>\n" + "\n".join(ht) + "\n</body></html>\n")
    return "\n\n".join(md) + "\n", page


def _card_section(twin, card: dict, data) -> list:
    """The model card: what the checkpoint records, 'not recorded' for the rest, and the data of this report."""
    from .. import __version__

    blocks = []
    training = card.get("training") or {}
    tdata = card.get("training_data") or {}

    def recorded(key):
        v = card.get(key, training.get(key))
        return v if v not in (None, "", [], {}) else None

    cfg = twin.config
    blocks += [("h", 3, "Context of use"), ("p", str(recorded("context_of_use") or NOT_RECORDED))]
    blocks += [("h", 3, "Model"), ("ul", [
        f"mechanistic model `{twin.model.name}` ({twin.model.time_unit}); observables {list(cfg.observables)}",
        f"patient parameters (between-patient variability): {twin.patient_names}",
        f"population parameters: {twin.population_names or 'none'}; fixed: "
        f"{[n for n, r in twin.roles.items() if r == 'fixed'] or 'none'}",
        f"closures: {len(cfg.closures)}; black box: {'yes' if cfg.black_box is not None else 'no'}; "
        f"covariates: {twin.covariate_names or 'none'}",
        f"noise model: {twin.observation.describe()}"])]
    cohorts = tdata.get("cohorts")
    parts = [f"{k}: {tdata[k]['n_subjects']} subjects" for k in ("train", "validation", "test")
             if isinstance(tdata.get(k), dict) and "n_subjects" in tdata[k]]
    blocks += [("h", 3, "Training cohorts"), ("ul", [
        f"cohorts recorded in the card's training data: {cohorts if cohorts else NOT_RECORDED}",
        f"cohorts the twin knows (calibrations, typical values): {twin.cohort_names or NOT_RECORDED}",
        f"training subjects: {', '.join(parts) if parts else NOT_RECORDED}",
        f"data source: {tdata.get('source', NOT_RECORDED)}"])]
    obs = data.observations
    summary = obs.groupby("cohort", sort=True).agg(patients=("subject_id", "nunique"), rows=("value", "size"),
                                                   censored_share=("censored", "mean"), time_min=("time", "min"),
                                                   time_max=("time", "max")).reset_index()
    blocks += [("h", 3, "Data of this report"), ("table", summary)]
    assumptions = recorded("assumptions")
    blocks += [("h", 3, "Assumptions"), ("p", "Recorded in the card: " + (str(assumptions) if assumptions else NOT_RECORDED)
                                         + ". Implied by the model class: patient parameters normal on their "
                                         "unconstrained (e.g. log) scale around covariate-dependent typical values; "
                                         "censored values below their limit (M3 likelihood); the noise model above.")]
    limitations = recorded("limitations")
    metrics = card.get("metrics") or {}
    blocks += [("h", 3, "Limitations"), ("p", "Recorded in the card: " + (str(limitations) if limitations else NOT_RECORDED)
                                          + ". Degeneracy findings at training and on these data: section 7.")]
    if metrics:
        blocks += [("h", 3, "Metrics recorded at training"),
                   ("table", pd.DataFrame({"metric": list(metrics), "value": [str(v)[:120] for v in metrics.values()]}))]
    versions = pd.DataFrame({"package": ["hybridtwin", "torch", "numpy", "python"],
                             "at training (card)": [card.get(k) or NOT_RECORDED for k in
                                                    ("library_version", "torch_version", "numpy_version", "python_version")],
                             "this report": [__version__, torch.__version__, np.__version__, platform.python_version()]})
    return blocks + [("h", 3, "Versions"), ("table", versions)]


def credibility_report(twin, data, out, method: str = "map", seed: int = 0, levels=(0.5, 0.8, 0.9, 0.95),
                       card: dict | None = None, n_samples: int = 200, n_replicates: int = 100,
                       reference_cohort: bool = False) -> Path:
    """Write the credibility report of ``twin`` on ``data`` into the folder ``out``; returns ``out/report.md``.

    data: a :class:`~hybridtwin.data.CohortData` in the canonical schema (observations with censoring,
    covariates, doses). method: how each patient is personalised on its own data (``"map"``, ``"encoder"``,
    ``"encoder_is"``, ``"map_is"``, ``"library"``). levels: prediction-interval levels to calibrate. card: the checkpoint's
    card (:func:`hybridtwin.checkpoint.read_card`) for the model card section; None: the twin's own
    description only, the rest "not recorded". n_samples: posterior draws per patient for the intervals;
    n_replicates: simulated replicates of the data for the VPC. reference_cohort: data without cohort labels
    use the twin's reference cohort. See the module docstring for the contents.

    >>> import tempfile, warnings
    >>> from hybridtwin.virtual import make_virtual_cohort
    >>> from hybridtwin.twin import HybridTwin, TwinConfig
    >>> data = make_virtual_cohort("vaccine_asc", n_subjects=8, n_cohorts=2, seed=0)
    >>> twin = HybridTwin.from_data(TwinConfig(model="vaccine_asc", solver={"rtol": 1e-4, "atol": 1e-4}), data)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     path = credibility_report(twin, data, tempfile.mkdtemp(), method="encoder", n_samples=50, n_replicates=20)
    >>> text = path.read_text()
    >>> all(f"## {s}" in text for s in SECTIONS), (path.parent / "report.html").is_file()
    (True, True)
    """
    from ..estimation import conditional_summary, correlation_table, degeneracy_checks, identifiability
    from ..personalise import _grid_batch, _tables, posterior

    levels = _check(twin, data, method, levels, n_samples, n_replicates)
    data = _relabel_cohorts(twin, data, reference_cohort)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    obs = data.observations.reset_index(drop=True)
    ds, ids = _tables(twin, data.covariates, obs, data.doses)
    batch = ds.batch()
    options = {"seed": seed} if method in ("encoder_is", "map_is", "library") else {}
    post = posterior(twin, batch, method, **options)
    pbatch, rows = _grid_batch(batch, obs, ids, list(twin.config.observables))
    counts = np.bincount(rows["_b"].to_numpy(int), minlength=len(ids))
    b = torch.tensor(rows["_b"].to_numpy(int))
    slot = torch.tensor(np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts))
    rows = rows.drop(columns=["_b", "_k"]).reset_index(drop=True)
    gen = torch.Generator().manual_seed(seed)

    # 1, 2, 4: posterior predictive at every observed row
    y, mu = _draws(twin, pbatch, b, slot, post.sample(n_samples, gen), gen)
    pred = rows[["subject_id", "cohort", "time", "observable", "value", "censored", "lloq"]].copy()
    pred["prediction"] = _nanquantile(mu, 0.5, axis=0)
    pred["residual"] = np.where(pred["censored"], np.nan, pred["value"] - pred["prediction"])
    quantified = ~pred["censored"].to_numpy() & np.isfinite(pred["prediction"].to_numpy())  # failed solves left out
    cal = []
    for level in sorted({*levels, 0.9}):
        lo, hi = _nanquantile(y, [(1 - level) / 2, (1 + level) / 2], axis=0)
        p = _pct(level)
        inside = (pred["value"].to_numpy() >= lo) & (pred["value"].to_numpy() <= hi)
        pred[f"lower_{p}"], pred[f"upper_{p}"] = lo, hi
        pred[f"inside_{p}"] = np.where(quantified, inside, np.nan)
        if level in levels:
            cal.append(dict(level=p + " %", nominal=level, empirical=float(inside[quantified].mean())
                            if quantified.any() else math.nan, n_rows=int(quantified.sum())))
    cal = pd.DataFrame(cal)
    failed = int(np.isnan(pred["prediction"]).sum())

    # 3: VPC from the population model (covariates, cohorts, doses and sampling times of the data's patients)
    with torch.no_grad():
        pm, ps = twin.prior(pbatch.covariates)
        z = pm[None] + ps[None] * torch.randn((n_replicates, *pm.shape), generator=gen, dtype=pm.dtype)
    vpc = _vpc(rows, _draws(twin, pbatch, b, slot, z, gen)[0])

    # 5, 6, 7
    groups = _subgroups(pred, data.covariates)
    shrink = conditional_summary(twin, SimpleNamespace(posterior_mean=post.mean, posterior_sd=post.sd), batch)
    with torch.no_grad():
        ident = identifiability(twin, batch)
        findings = [f["message"] for f in degeneracy_checks(twin, batch, emit=False)]
    recorded = [str(d.get("message", d)) for d in (((card or {}).get("twin") or {}).get("diagnostics")
                                                   or twin.diagnostics or [])]
    for name, table in (("predictions", pred), ("vpc", vpc), ("calibration", cal), ("subgroups", groups),
                        ("shrinkage", shrink), ("identifiability", ident)):
        table.to_csv(out / f"{name}.csv", index=False)

    q = pred[quantified]
    n_pat, n_cens = obs["subject_id"].nunique(), int(obs["censored"].sum())
    blocks = [("h", 1, f"Credibility report: {twin.model.name} twin"),
              ("p", f"{n_pat} patients, {len(obs)} rows ({n_cens} censored, {n_cens / len(obs):.0%}), cohorts "
                    f"{data.cohorts}; each patient personalised on its own data by `{method}` ({n_samples} posterior "
                    f"draws, seed {seed}). In-sample: the intervals are conditioned on the rows they are compared "
                    f"with, so sections 1, 2, 4 and 5 measure fit, not forecasting."
                    + (f" {failed} rows could not be predicted (failed solves)." if failed else ""))]
    blocks += [("h", 2, SECTIONS[0]), ("p", "Prediction: median over the posterior of the noise-free model (after "
                                            "assay calibration). Censored rows are open triangles at their limit."),
               ("img", _fig_observed(pred, out), "observed vs predicted"),
               ("table", _fit_table(pred))]
    blocks += [("h", 2, SECTIONS[1]), ("p", f"Observed - predicted on the {len(q)} quantified rows."),
               ("img", _fig_residuals(pred, out), "residuals")]
    blocks += [("h", 2, SECTIONS[2]),
               ("p", f"Observed 5/50/95 % quantiles per time bin (censored values at their limit) vs the median and "
                     f"90 % band of the same quantiles over {n_replicates} replicates simulated from the population "
                     "model (the patients' covariates, cohorts, doses and times; between-patient variability and "
                     "noise; simulated values below a row's limit censored at it); right: fraction below the limit."),
               ("img", _fig_vpc(vpc, rows, out), "visual predictive check"),
               ("table", vpc[["cohort", "observable", "t_lo", "t_hi", "n_obs", "obs_q05", "sim_q05", "obs_q50",
                              "sim_q50", "obs_q95", "sim_q95", "obs_blq", "sim_blq"]])]
    blocks += [("h", 2, SECTIONS[3]), ("p", "Share of quantified rows inside the central posterior-predictive "
                                            "interval (noise included) vs its nominal level."),
               ("table", cal), ("img", _fig_calibration(cal, out), "calibration")]
    have = sorted(set(groups["subgroup"]) - {"all"})
    blocks += [("h", 2, SECTIONS[4]), ("p", f"Quantified rows, by {', '.join(have)} (sex and age only where the "
                                            "covariates have those columns; age bands [a, b) in their unit)."),
               ("table", groups)]
    blocks += [("h", 2, SECTIONS[5]), ("h", 3, "Correlated population estimates (|r| > 0.8)")]
    if twin.uncertainty:
        corr = correlation_table(twin, threshold=0.8)
        blocks += [("p", "Each pair with the combination the data inform best (a + w b, smallest SE) and its 90 % "
                         "interval: read the combination, or fix one of the pair, rather than the split."),
                   ("table", corr[["first", "second", "correlation", "combination", "estimate", "se", "lower",
                                   "upper"]]) if len(corr) else ("p", "No pair of estimates correlates beyond 0.8.")]
    else:
        blocks += [("p", "Not available: the twin records no uncertainty of its population estimates (estimate it "
                         "by SAEM with n_fisher > 0).")]
    label = "conditional modes (MAP)" if method == "map" else "posterior means"
    blocks += [("h", 3, "Eta-shrinkage"),
               ("p", f"1 - SD of the patients' {label} (eta) / omega; above 0.5 the data say little about a "
                     "patient's own value."),
               ("table", shrink[["parameter", "omega", "sd_conditional_mean", "shrinkage"]]),
               ("h", 3, "What the design informs"),
               ("p", "Standard error of each typical value on its unconstrained scale from the sensitivities of every "
                     "quantified row (fixed parameters as if estimated too); not informed: SE > 0.5. Not informed: "
                     + (", ".join(ident.loc[~ident["informed"], "parameter"]) or "none") + "."),
               ("table", ident)]
    blocks += [("h", 2, SECTIONS[6]), ("h", 3, "On these data (population model at its typical values)"),
               ("ul", findings) if findings else ("p", "No finding."), ("h", 3, "Recorded at training (card)"),
               ("ul", recorded) if recorded else ("p", NOT_RECORDED if card is None else "No finding recorded.")]
    blocks += [("h", 2, SECTIONS[7])] + _card_section(twin, card or {}, data)
    md, page = _render(blocks, out)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(page)
    return out / "report.md"
