"""Trial figures and a report in Markdown and HTML (one list of blocks, two renderings).

- :func:`plot_endpoints`: per endpoint, the arms side by side -- rates with the spread of the replicate trials
  (0/1 endpoints) or the per-patient distributions (box plots);
- :func:`plot_power`: power vs patients per arm, simulated and analytic;
- :func:`plot_landscape`: the optimisation landscape (every evaluated candidate; the re-run top candidates
  with their exact objective);
- :class:`Report`: headings, paragraphs, tables and figures written as ``report.md`` and ``report.html``.

>>> import pandas as pd, tempfile, pathlib
>>> r = Report("Demo")
>>> r.text("One table:").table(pd.DataFrame({"arm": ["a", "b"], "rate": [0.5, 0.75]}))
Report('Demo', 2 blocks)
>>> out = r.write(tempfile.mkdtemp())
>>> sorted(p.name for p in out)
['report.html', 'report.md']
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.{digits}g}"
    return str(v)


class Report:
    """An ordered list of blocks rendered as Markdown and as a self-contained HTML page (figures linked
    by relative path, so the folder can be moved as a whole)."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, object]] = []

    def __repr__(self) -> str:
        return f"Report({self.title!r}, {len(self.blocks)} blocks)"

    def heading(self, text: str) -> "Report":
        self.blocks.append(("h2", text))
        return self

    def text(self, text: str) -> "Report":
        self.blocks.append(("p", text))
        return self

    def table(self, df: pd.DataFrame, digits: int = 3) -> "Report":
        self.blocks.append(("table", (df, digits)))
        return self

    def figure(self, path, caption: str = "") -> "Report":
        self.blocks.append(("img", (Path(path), caption)))
        return self

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, v in self.blocks:
            if kind == "h2":
                lines += [f"## {v}", ""]
            elif kind == "p":
                lines += [v, ""]
            elif kind == "table":
                df, digits = v
                lines.append("| " + " | ".join(map(str, df.columns)) + " |")
                lines.append("|" + "---|" * len(df.columns))
                lines += ["| " + " | ".join(_fmt(x, digits) for x in row) + " |" for row in df.itertuples(index=False)]
                lines.append("")
            else:
                path, caption = v
                lines += [f"![{caption or path.stem}]({path.name})", ""] + ([f"*{caption}*", ""] if caption else [])
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:right}th{background:#f2f2f2}img{max-width:100%}figcaption{color:#555}</style>",
                 "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for kind, v in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{e(v)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{e(v)}</p>")
            elif kind == "table":
                df, digits = v
                head = "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
                rows = "".join("<tr>" + "".join(f"<td>{e(_fmt(x, digits))}</td>" for x in row) + "</tr>"
                               for row in df.itertuples(index=False))
                parts.append(f"<table><tr>{head}</tr>{rows}</table>")
            else:
                path, caption = v
                parts.append(f"<figure><img src='{e(path.name)}' alt='{e(caption or path.stem)}'>"
                             + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out) -> list[Path]:
        """Write ``report.md`` and ``report.html`` into the folder ``out`` (created); figures must already be
        in it. Returns the two paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md, page = out / "report.md", out / "report.html"
        md.write_text(self.markdown() + "\n")
        page.write_text(self.html() + "\n")
        return [md, page]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_endpoints(result, path) -> Path:
    """Per endpoint one panel: rates per arm (bar: mean over replicates; black bar: 2.5-97.5 % of the
    replicate trials) for a 0/1 endpoint, else box plots of the per-patient values per arm."""
    plt = _plt()
    labels = result.labels
    arms = result.design.arm_names
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels) + 0.6, 3.8), squeeze=False)
    summary = result.summary().set_index(["endpoint", "arm"])
    for ax, label in zip(axes[0], labels):
        if result.binary[label]:
            est = [summary.loc[(label, a), "estimate"] for a in arms]
            lo = [summary.loc[(label, a), "spread_low"] for a in arms]
            hi = [summary.loc[(label, a), "spread_high"] for a in arms]
            x = np.arange(len(arms))
            ax.bar(x, est, color="#7fa7d9")
            ax.errorbar(x, est, yerr=[np.subtract(est, lo), np.subtract(hi, est)], fmt="none", ecolor="k", capsize=4)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("rate (bar: replicate trials 2.5-97.5 %)")
            ax.set_xticks(x, arms, rotation=20, ha="right")
        else:
            data = [result.patients.loc[result.patients["arm"] == a, label].dropna().to_numpy() for a in arms]
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(np.arange(1, len(arms) + 1), arms, rotation=20, ha="right")
            ax.set_ylabel("per-patient value")
        ax.set_title(label, fontsize=10)
    return _save(fig, path)


def plot_power(curve: pd.DataFrame, path, title: str = "") -> Path:
    """Power vs patients per arm: simulated (solid, the model's effect) and analytic (dashed, the stated
    effect) per arm."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for k, (arm, c) in enumerate(curve.groupby("arm", sort=False)):
        color = f"C{k}"
        ax.plot(c["n_per_arm"], c["simulated"], "o-", color=color, label=f"{arm} (simulated)")
        if c["analytic"].notna().any():
            ax.plot(c["n_per_arm"], c["analytic"], "--", color=color, label=f"{arm} (stated effect)")
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("patients per arm")
    ax.set_ylabel("power")
    ax.set_title(title or "power vs sample size", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_landscape(opt, path) -> Path:
    """The optimisation landscape: for one factor the objective of every candidate against it; for two or
    more, the first two factors coloured by the objective. The top candidates are ringed, with their exact
    objective (one factor) when re-run."""
    plt = _plt()
    cand, top, f = opt.candidates, opt.top, opt.space.factors
    fig, ax = plt.subplots(figsize=(5.8, 4.0))
    feas = cand[cand["feasible"]]
    label = getattr(opt.endpoint, "label", "objective")
    if len(f) == 1:
        c = feas.sort_values(f[0])
        ax.plot(c[f[0]], c["objective"], ".", color="C0", label=f"engine ({opt.method})")
        if "exact" in top.columns:
            ax.plot(top[f[0]], top["exact"], "o", mfc="none", color="C3", ms=9, label="exact re-run")
        ax.axvline(opt.best[f[0]], color="C3", lw=0.8, ls="--")
        ax.set_xlabel(f[0])
        ax.set_ylabel(label)
    else:
        sc = ax.scatter(feas[f[0]], feas[f[1]], c=feas["objective"], cmap="viridis", s=18)
        fig.colorbar(sc, ax=ax, label=label)
        ax.plot(top[f[0]], top[f[1]], "o", mfc="none", color="C3", ms=10, label="top candidates")
        ax.plot([opt.best[f[0]]], [opt.best[f[1]]], "*", color="C3", ms=14, label="best")
        ax.set_xlabel(f[0])
        ax.set_ylabel(f[1])
    ax.set_title(f"{opt.direction} {label}", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def add_trial_sections(report: Report, out, result, curve: pd.DataFrame | None = None, opt=None,
                       power_endpoint: str | None = None) -> Report:
    """Append a trial's sections to ``report`` (figures written into ``out``): design, per-arm summary,
    differences vs the reference, subgroups, power curve, optimisation with its exact confirmation."""
    out = Path(out)
    d = result.design
    report.heading("Trial design")
    report.text(f"{len(d.arms)} arms x {d.n_per_arm} patients ({'the same patients in every arm' if d.paired else 'different patients per arm'}), "
                f"{d.replicates} replicate trials, seed {d.seed}, engine `{result.engine}`; "
                f"{result.n_failed} simulation(s) failed or fell outside the validated domain (left out). "
                f"Reference arm: {d.reference}; intervals at {1 - d.alpha:.0%}.")
    report.table(pd.DataFrame({"arm": [a.name for a in d.arms],
                               "doses (time: amount -> target)": ["; ".join(f"{x.time:g}: {x.amount:g} -> {x.target}"
                                                                            for x in a.scenario.doses) or "-" for a in d.arms],
                               "overrides": [", ".join(f"{k}={v:g}" for k, v in a.scenario.overrides) or "-"
                                             for a in d.arms]}))
    report.heading("Endpoints per arm")
    report.text("estimate: rate or mean, averaged over the replicate trials; ci: the mean of the replicates' intervals "
                "(what one trial reports); spread: 2.5-97.5 % of the replicate estimates (how much trials vary).")
    report.table(result.summary())
    report.figure(plot_endpoints(result, out / "endpoints.png"), "Endpoints per arm")
    diff = result.differences()
    if not diff.empty:
        report.heading(f"Differences vs {d.reference}")
        report.text("power: the share of replicate trials whose interval of the difference excludes 0.")
        report.table(diff)
    sub = result.subgroups()
    if not sub.empty:
        report.heading("Subgroups")
        report.table(sub[[c for c in ("subgroup", "endpoint", "arm", "n", "estimate", "ci_low", "ci_high", "difference",
                                      "power") if c in sub.columns]])
    if curve is not None and not curve.empty:
        report.heading("Power vs sample size")
        report.text(f"Endpoint {power_endpoint or result.labels[0]}: simulated power resamples the simulated patients "
                    "(the model's effect); analytic power is statsmodels' two-sample z-test for the stated effect.")
        report.table(curve)
        report.figure(plot_power(curve, out / "power.png", title=power_endpoint or result.labels[0]), "Power curve")
    if opt is not None:
        report.heading("Schedule optimisation")
        report.text(f"{opt.method} search over {', '.join(opt.space.factors)} ({len(opt.candidates)} candidates) to "
                    f"{opt.direction} the population mean of {getattr(opt.endpoint, 'label', 'the endpoint')}. Top "
                    "candidates re-run with the exact engine on the same patients"
                    + ("" if opt.confirmed is None else f": the best candidate is {'confirmed' if opt.confirmed else 'NOT confirmed'} "
                       "as the exact engine's best among them."))
        report.table(opt.top)
        report.figure(plot_landscape(opt, out / "landscape.png"), "Optimisation landscape")
    return report
