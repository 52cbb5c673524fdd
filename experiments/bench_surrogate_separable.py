"""Accuracy of the separable surrogate on the benchmark domain (see bench_surrogate.py): 20,000 Sobol training
simulations, 150 epochs, certified on 2,000 fresh random pairs; writes experiments/results/bench_surrogate_separable.json
(about 6 min on 2 quiet cores)."""
import json, time, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import torch
from bench_surrogate import DOMAIN
from _common import RESULTS
from hybridtwin.surrogate import Domain, certify, fit_surrogate, simulate_domain
dom = Domain.from_dict(DOMAIN)
train = simulate_domain(dom, 20000, seed=0)
held = simulate_domain(dom, 2000, seed=99, method="random")
t = time.perf_counter()
s = fit_surrogate(dom, data=train, arch="separable", epochs=150, progress=False, seed=0)
c = certify(s, data=held)
out = {"arch": "separable", "n_train": 20000, "epochs": 150, "hidden": [256, 256, 256], "members": 5, "rank": 32,
       "threads": torch.get_num_threads(), "train_seconds": time.perf_counter() - t, "sd_scale": s.sd_scale,
       "overall": c["overall"], "calibration": c["calibration"], "per_output_time": c["per_output_time"]}
(RESULTS / "bench_surrogate_separable.json").write_text(json.dumps(out, indent=1))
print(out["overall"], out["calibration"], out["train_seconds"])
