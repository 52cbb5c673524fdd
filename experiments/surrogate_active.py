"""Active learning for the surrogate: does adding simulations where the ensemble disagrees buy more accuracy
per simulation than adding them at random?

Domain: the surrogate benchmark's (``bench_surrogate.py``: vaccine_asc, seven patient parameters within a factor
2 of their defaults, booster day 14-365 x dose 0.25-4, log10 antibody at 20 times over a year). Start: the same
``--start`` Sobol pairs for both arms; then ``--rounds`` rounds of ``--add`` pairs each, chosen among 20,000
random candidates by the largest ensemble SD (``disagreement``) or at random (``random``, the control); the
surrogate is retrained from scratch after each round and certified on the same 2,000 held-out random pairs.

Run ``python experiments/surrogate_active.py`` (about 15 min on 2 cores); results:
``experiments/results/surrogate_active.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS
from bench_surrogate import DOMAIN
from hybridtwin.surrogate import Domain, refine, simulate_domain


def main(start: int = 1000, add: int = 1000, rounds: int = 4, epochs: int = 300, hidden=(128, 128, 128), members: int = 5,
         n_held: int = 2000, out=RESULTS, stem: str = "surrogate_active") -> dict:
    dom = Domain.from_dict(DOMAIN)
    data = simulate_domain(dom, start, seed=0)
    held = simulate_domain(dom, n_held, seed=99, method="random")
    res = {}
    for strategy in ("disagreement", "random"):
        _, hist = refine(dom, data, held, rounds=rounds, n_add=add, strategy=strategy, seed=1, epochs=epochs,
                         hidden=hidden, members=members, progress=True)
        res[strategy] = hist
        for h in hist:
            print(f"{strategy}: {h['n_simulations']} simulations: median {h['median']:.4f} p95 {h['p95']:.4f} "
                  f"max {h['max']:.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    lines = ["# Active learning vs random additions (surrogate of vaccine_asc, benchmark domain)", "",
             f"Start {start} Sobol pairs; {rounds} rounds of {add}; retrained from scratch each round; certified on "
             f"{n_held} held-out random pairs (absolute error of log10 antibody).", "",
             "| simulations | disagreement: median | p95 | worst | random: median | p95 | worst |", "|---|---|---|---|---|---|---|"]
    for a, b in zip(res["disagreement"], res["random"]):
        lines.append(f"| {a['n_simulations']} | {a['median']:.4f} | {a['p95']:.4f} | {a['max']:.3f} | {b['median']:.4f} | "
                     f"{b['p95']:.4f} | {b['max']:.3f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    _figure(res, out / f"{stem}.png")
    print("\n".join(lines))
    return res


def _figure(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in zip(("p95", "max"), axes):
        for strategy, hist in res.items():
            ax.plot([h["n_simulations"] for h in hist], [h[key] for h in hist], "o-", label=strategy)
        ax.set_xlabel("exact simulations spent")
        ax.set_ylabel(f"{'95th percentile' if key == 'p95' else 'worst'} abs. error (log10)")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle("surrogate certificate per simulation spent")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    main(start=a.start, add=a.add, rounds=a.rounds)
