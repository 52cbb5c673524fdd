"""Why the fine-tuned twin of ``kissler_forecast.py`` is degenerate on kissler2021 (noise SD 1.4-1.7 log10, the
data's own SD): the typical person's curve of each fold's fine-tuned ``sarscov2_cd8`` twin next to the shapes
these people's data show.

For each fold the fine-tuned twin (cached by ``kissler_forecast.py``; refitted if the cache is absent) gives its
typical parameters (mu, no random effects), and the typical curve is integrated here **independently of the
library's solver** (scipy LSODA on log V and T, rtol 1e-8) over the model clock (days since infection). From it:
the day V first reaches the detection limit, the peak day and log10 value, the mean rise rate from the limit to
the peak and the mean decline rate from the peak back to the limit (log10/day), the CD8+ expansion at the peak
(T/T0), and where the data's day 0 (the first positive test) falls: the typical time offset.

The data side (all 68 people, each on their own axis from the first positive test, all their quantified values:
single negatives interleave with positives near the limit): the day of the person's highest value, that value, their
last positive day, and the mean decline from the highest value to the limit by that day (log10/day).

Run ``python experiments/kissler_diagnosis.py`` (seconds with the fold twins cached);
results ``experiments/results/kissler_diagnosis.{md,json}``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.integrate import solve_ivp

from _common import RESULTS
from kissler_forecast import DATA, FINE_TUNE_SAEM, folds, fine_tuned, kissler_data



def typical_parameters(twin) -> dict:
    """The twin's typical parameter values on the natural scale (population means, no random effects, no
    covariate effects: age is missing for every kissler person, so the covariate term is zero)."""
    with torch.no_grad():
        theta = twin.theta(twin.mu[None])[0]
    return dict(zip(twin.model.parameter_space.names, theta.tolist()))


def cd8_curve(p: dict, t_end: float = 60.0, step: float = 0.05) -> pd.DataFrame:
    """``sarscov2_cd8`` (Hernandez-Vargas & Velasco-Hernandez 2020) for parameters ``p``, integrated by scipy on
    (log V, T) from V(0) = V0, T(0) = T0: days, log10 V, T/T0."""
    def rhs(t, y):
        v, tc = np.exp(y[0]), y[1]
        vm = v ** p["m"]
        return [p["p"] * (1.0 - v / p["K_V"]) - p["c_T"] * tc - p["c"],
                p["delta_T"] * p["T0"] + p["r"] * tc * vm / (vm + p["k_T"] ** p["m"]) - p["delta_T"] * tc]

    t = np.arange(0.0, t_end + step / 2, step)
    sol = solve_ivp(rhs, (0.0, t_end), [np.log(p["V0"]), p["T0"]], method="LSODA", t_eval=t, rtol=1e-8, atol=1e-6)
    if not sol.success:
        raise RuntimeError(f"scipy could not integrate the typical curve: {sol.message}")
    return pd.DataFrame({"day": sol.t, "log10_V": sol.y[0] / np.log(10.0), "T_over_T0": sol.y[1] / p["T0"]})


def curve_shape(curve: pd.DataFrame, lod: float) -> dict:
    """First day at the limit, peak (day, value), mean rise limit->peak and decline peak->limit (log10/day; nan
    where the curve never returns below the limit), T/T0 at the peak."""
    y, d = curve["log10_V"].to_numpy(), curve["day"].to_numpy()
    i_peak = int(np.argmax(y))
    above = np.nonzero(y[: i_peak + 1] >= lod)[0]
    up = d[above[0]] if len(above) else np.nan
    after = np.nonzero(y[i_peak:] < lod)[0]
    down = d[i_peak + after[0]] if len(after) else np.nan
    peak = float(y[i_peak])
    return {"day_at_limit": float(up), "peak_day": float(d[i_peak]), "peak_log10": peak,
            "rise_per_day": (peak - lod) / (d[i_peak] - up) if d[i_peak] > up else np.nan,
            "decline_per_day": (peak - lod) / (down - d[i_peak]) if np.isfinite(down) else np.nan,
            "day_below_limit": float(down), "T_over_T0_at_peak": float(curve["T_over_T0"].iloc[i_peak])}


def data_shapes(obs: pd.DataFrame, lod: float) -> pd.DataFrame:
    """Per person (axis from the first positive; all their quantified values, since single negatives interleave
    with positives near the limit): the day of their highest value, that value, their last positive day, and the
    mean decline from the highest value to the limit by that day (nan if the highest value is the last)."""
    rows = []
    for sid, g in obs[~obs["censored"]].sort_values(["subject_id", "time"]).groupby("subject_id"):
        top = int(np.argmax(g["value"].to_numpy()))
        t_top, v_top = float(g["time"].iloc[top]), float(g["value"].iloc[top])
        t_last = float(g["time"].iloc[-1])
        rows.append({"subject_id": sid, "days_to_max": t_top, "max_log10": v_top, "last_positive_day": t_last,
                     "decline_per_day": (v_top - lod) / (t_last - t_top) if t_last > t_top else np.nan})
    return pd.DataFrame(rows)


def main(path=DATA, out: Path | str = RESULTS, n_folds: int = 5, seed: int = 0, saem: dict | None = None,
         cache: Path | None = None) -> dict:
    torch.set_num_threads(1)
    out = Path(out)
    cache = Path(cache) if cache is not None else out / "kissler_forecast"
    cache.mkdir(parents=True, exist_ok=True)
    data = kissler_data(path)
    obs = data.observations
    lod = float(obs.loc[obs["censored"], "lloq"].median())
    fold_rows = []
    for f, held in enumerate(folds(list(data.subject_ids), n_folds, seed)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin, info = fine_tuned(data, held, f, seed, {**FINE_TUNE_SAEM, **(saem or {})}, cache)
        p = typical_parameters(twin)
        shape = curve_shape(cd8_curve(p), lod)
        omega = dict(zip(twin.patient_names, twin.log_omega.detach().exp().tolist()))
        fold_rows.append({"fold": f, "noise_sd": info["noise_sd"], **shape, "t_offset": p["t_offset"],
                          "p": p["p"], "c_T": p["c_T"], "c": p["c"], "K_V": p["K_V"],
                          **{f"omega_{k}": v for k, v in omega.items()}})
    people = data_shapes(obs, lod)
    summary = {"lod": lod, "folds": fold_rows,
               "data": {"people": len(people),
                        "days_to_max_median": float(people["days_to_max"].median()),
                        "max_log10_median": float(people["max_log10"].median()),
                        "max_log10_quartiles": [float(people["max_log10"].quantile(q)) for q in (0.25, 0.75)],
                        "max_log10_sd": float(people["max_log10"].std()),
                        "last_positive_median": float(people["last_positive_day"].median()),
                        "decline_per_day_median": float(people["decline_per_day"].median()),
                        "decline_people": int(people["decline_per_day"].notna().sum())}}
    (out / "kissler_diagnosis.json").write_text(json.dumps(summary, indent=1))
    report = summarise(summary)
    (out / "kissler_diagnosis.md").write_text(report)
    print(report)
    return summary


def summarise(s: dict) -> str:
    d = s["data"]
    lines = ["# kissler2021: the fine-tuned twin's typical curve against the data's shapes", "",
             f"Detection limit {s['lod']:.2f} log10 GE/ml. Typical curves integrated by scipy (LSODA) from each fold's "
             "fine-tuned typical parameters; model clock = days since infection. See the script's docstring.", "",
             "| fold | noise SD | first at limit (day) | peak day | peak log10 | rise log10/day | decline log10/day |"
             " back below limit (day) | T/T0 at peak | typical offset (day) | omega p | omega c_T |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["folds"]:
        lines.append(f"| {r['fold']} | {r['noise_sd']:.2f} | {r['day_at_limit']:.1f} | {r['peak_day']:.1f} | "
                     f"{r['peak_log10']:.2f} | {r['rise_per_day']:.2f} | {r['decline_per_day']:.2f} | "
                     f"{r['day_below_limit']:.1f} | {r['T_over_T0_at_peak']:.2f} | {r['t_offset']:.1f} | "
                     f"{r.get('omega_p', float('nan')):.3f} | {r.get('omega_c_T', float('nan')):.3f} |")
    lines += ["", f"Data ({d['people']} people, each from their first positive test): median {d['days_to_max_median']:.0f} "
              f"days to their highest value (median {d['max_log10_median']:.2f} log10, quartiles "
              f"{d['max_log10_quartiles'][0]:.2f}-{d['max_log10_quartiles'][1]:.2f}, SD {d['max_log10_sd']:.2f} between people); "
              "median last positive on day "
              f"{d['last_positive_median']:.0f}; median decline from the highest value to the limit by the last "
              f"positive {d['decline_per_day_median']:.2f} log10/day ({d['decline_people']} people whose highest "
              "value is not their last).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
