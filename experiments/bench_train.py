"""Benchmark: training throughput of the vaccine_asc twin with the unfused and the fused solver step.

The run of ``training/configs/vaccine_asc.yaml`` (the personalisation twin: per-cohort assay calibration,
covariate effects, an additive noise model, encoder 64/32, 2 samples per subject, rtol 1e-4, batch 64, Adam
lr 0.01, gradient clipping 10), on ``--subjects`` virtual subjects (70 % train, 10 % validation), trained for
``--epochs`` epochs twice in this one process from the same initial weights and seed:

- ``unfused``: the native solver, ``SolverConfig(fused=False)``, the library's default;
- ``fused``: ``SolverConfig(fused=True)``: each dopri5 step (forward and backward) is one ``torch.compile``-d graph;
- ``torchdiffeq``: ``backend="torchdiffeq"`` (its dopri5; one shared step across the batch), gradients through
  the steps;
- ``torchdiffeq adjoint``: the same with ``adjoint=True`` (gradients by solving the adjoint ODE backwards);
- ``fused float32``: the fused step with the whole twin in single precision (what mixed precision would buy,
  and its cost in ELBO);
- ``fused ddp2`` (not in the default list): the fused step in two data-parallel processes of one thread each
  (Lightning's ``ddp_fork``, gloo), each with half the batch, so the global batch and the number of optimiser
  steps stay those of the others: one thread is faster for the fused step than two (per-call overhead, not
  arithmetic, bounds it), so the second core serves a second process instead;
- ``fused block1``, ``fused block4`` (not in the default list): the fused step with 1 or 4 steps per compiled call
  of the differentiated solve instead of the default ``SolverConfig.fused_block`` (2): the same steps,
  fewer calls;
- ``unfused seed1``: the unfused run with another seed (initial weights, shuffling, draws), the yardstick for
  ELBO differences that come from a different random path rather than from the solver.

Each variant trains in its own fresh process (spawned one after the other, so that its peak resident memory can
be read; the first includes Python, torch and Lightning, about 0.5-0.7 GB). Reported per variant: seconds per
epoch (median over epochs 2.., so that the first epoch's compilation is reported apart), throughput (training
subjects x epochs per second), the first epoch's seconds (compilation included), peak resident memory, and the
validation ELBO after the last epoch (``training.module.evaluate``, the same fixed draws for all).
Target (issue 12): throughput >= 3x the unfused one at an equal final validation ELBO (+-1 %).

Run: ``python experiments/bench_train.py`` (about 10 min on 2 cores; ``--small`` for a smoke run); writes
``experiments/results/bench_train.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from _common import RESULTS, ROOT


#: solver settings per variant; "twin" entries change the twin's own config (float32: the whole twin in single
#: precision, the accuracy question of mixed precision measured by the ELBO difference)
VARIANTS = {"unfused": {}, "fused": {"fused": True}, "torchdiffeq": {"backend": "torchdiffeq"},
            "torchdiffeq adjoint": {"backend": "torchdiffeq", "adjoint": True},
            "fused float32": {"fused": True, "twin": {"dtype": "float32"}}}
#: further variants, run when named (``--variants``)
EXTRA = {"fused ddp2": {"fused": True, "ddp": 2}, "unfused seed1": {"seed": 1},
         "fused block1": {"fused": True, "fused_block": 1}, "fused block4": {"fused": True, "fused_block": 4}}


def run_variant(fused: bool | str, subjects: int, epochs: int, threads: int | None, batch_size: int = 64,
                accelerator: str = "cpu", limit_batches: int | None = None, evaluate_after: bool = True,
                profile_to: Path | None = None) -> dict:
    """Train one variant; returns its timings and final validation ELBO.

    ``profile_to``: a text file that receives ``torch.profiler`` tables (by self CPU time and, on a GPU, by GPU
    time) of the last epoch's training steps (the first epochs warm up and compile).

    ``limit_batches`` caps the training steps per epoch (``s_per_epoch`` is then scaled up to a whole epoch);
    ``accelerator`` is Lightning's (``"cpu"``, ``"gpu"``). ``fused`` is a bool (unfused / fused) or a name
    in ``VARIANTS``."""
    import resource
    import shutil
    import tempfile

    import lightning as L

    from training.config import RunConfig
    from training.datamodule import CohortDataModule
    from training.module import TwinModule, evaluate
    from training.train import load_data

    cfg = RunConfig.from_yaml(ROOT / "training" / "configs" / "vaccine_asc.yaml")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_subjects=subjects))
    variant = fused if isinstance(fused, str) else ("fused" if fused else "unfused")
    settings = dict({**VARIANTS, **EXTRA}[variant])
    twin_changes = settings.pop("twin", {})
    ddp, seed = settings.pop("ddp", 0), settings.pop("seed", None)
    if ddp:
        threads = 1  # one thread per process (set before the fork: the workers inherit it)
    if threads:
        torch.set_num_threads(threads)
    solver = dataclasses.replace(cfg.twin.solver, **settings)
    twin_cfg = dataclasses.replace(cfg.twin, solver=solver, **twin_changes)
    ts = cfg.trainer if seed is None else dataclasses.replace(cfg.trainer, seed=seed)
    L.seed_everything(ts.seed, workers=False, verbose=False)
    data = load_data(cfg.data, twin_cfg.model)
    # data parallel: each process takes an equal share of the global batch (the datamodule's sampler splits the
    # training subjects between the processes)
    dm = CohortDataModule(data, fractions=cfg.data.fractions, split_seed=cfg.data.split_seed,
                          batch_size=batch_size // max(1, ddp), seed=ts.seed)
    torch.manual_seed(ts.seed)
    twin = dm.make_twin(twin_cfg)
    module = TwinModule(twin, lr=ts.lr, seed=ts.seed, n_samples=ts.n_samples, val_n_samples=ts.val_n_samples,
                        max_failed_share=ts.max_failed_share)
    # epoch times go through a file: data-parallel workers are forked processes
    log = Path(tempfile.mkdtemp()) / "epochs.txt"

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.prof = None
            if profile_to is not None and trainer.current_epoch == epochs - 1:
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=acts)
                self.prof.__enter__()
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            seconds = time.perf_counter() - self.t0
            if self.prof is not None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                ka = self.prof.key_averages()
                tables = [f"last epoch: {seconds:.3f} s (under the profiler)",
                          ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)]
                if torch.cuda.is_available():
                    tables.append(ka.table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
                Path(profile_to).write_text("\n\n".join(tables))
            if trainer.global_rank == 0:
                with open(log, "a") as f:
                    f.write(f"{seconds}\n")

    precision = {"float64": "64-true", "float32": "32-true"}[twin_cfg.dtype]
    parallel = dict(devices=ddp, strategy="ddp_fork_find_unused_parameters_true") if ddp else dict(devices=1)
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, gradient_clip_val=ts.gradient_clip_val,
                        precision=precision, use_distributed_sampler=False, **parallel,
                        callbacks=[EpochTimer()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, limit_train_batches=limit_batches)
    dm.setup("fit")
    before = [q.detach().clone() for q in module.parameters()]
    trainer.fit(module, datamodule=dm)
    # data parallel: rank 0's weights come back to this process when the workers end
    moved = sum(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))
    times = [float(v) for v in log.read_text().split()]
    shutil.rmtree(log.parent)
    n_train = len(dm.datasets["train"])
    steps = -(-n_train // batch_size)
    scale = steps / min(steps, limit_batches) if limit_batches else 1.0
    times = [t * scale for t in times]
    per_epoch = statistics.median(times[1:]) if len(times) > 1 else times[0]
    row = {"variant": variant, "train_subjects": n_train, "epochs": len(times), "processes": max(1, ddp),
           "threads_per_process": torch.get_num_threads(), "parameter_tensors_trained": moved,
           "batch_size": batch_size, "first_epoch_s": times[0], "s_per_epoch": per_epoch,
           "subject_epochs_per_s": n_train / per_epoch, "epoch_seconds": times,
           # per process (a data-parallel worker's own peak when larger than this process's)
           "peak_rss_mb": max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                                            resource.RUSAGE_CHILDREN)) / 1024}
    if evaluate_after:
        final = evaluate(module.twin.cpu().eval(), dm.datasets["val"], batch_size=batch_size, seed=ts.seed,
                         n_samples=ts.val_n_samples or ts.n_samples)
        row.update(val_elbo=float(final["elbo"]), val_failed=final["failed"])
    return row


def main(subjects: int = 2800, epochs: int = 6, threads: int | None = None, out: Path = RESULTS,
         variants=tuple(VARIANTS), stem: str = "bench_train") -> list[dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    rows = []
    for variant in variants:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:  # a fresh process per variant
            rows.append(pool.submit(run_variant, variant, subjects, epochs, threads).result())
        r = rows[-1]
        print(f"{r['variant']:>20}: {r['s_per_epoch']:.2f} s/epoch ({r['subject_epochs_per_s']:.0f} subject-epochs/s), "
              f"first epoch {r['first_epoch_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB, val ELBO {r['val_elbo']:.3f}",
              flush=True)
    return report(rows, subjects, epochs, out, stem)


def report(rows: list[dict], subjects: int, epochs: int, out: Path = RESULTS, stem: str = "bench_train") -> list[dict]:
    """Ratios against the first row, ``STEM.md`` and ``STEM.json`` (also to redo a report from a saved JSON's
    rows: ``report(json.load(f)["rows"], ...)``)."""
    base = rows[0]
    for r in rows:
        r["throughput_ratio"] = r["subject_epochs_per_s"] / base["subject_epochs_per_s"]
        r["val_elbo_rel_diff"] = abs(r["val_elbo"] - base["val_elbo"]) / abs(base["val_elbo"])
        r["val_elbo_abs_diff"] = abs(r["val_elbo"] - base["val_elbo"])
    fast = next((r for r in rows if r["variant"] == "fused"), rows[-1])
    summary = {"throughput_ratio": fast["throughput_ratio"], "val_elbo_rel_diff": fast["val_elbo_rel_diff"]}
    env = (f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; vaccine_asc twin, "
           f"{subjects} virtual subjects ({base['train_subjects']} train), batch 64, {epochs} epochs")
    lines = ["# bench_train", "", env, "",
             "| variant | processes x threads | s/epoch | subject-epochs/s | x unfused | first epoch (s) | "
             "peak RSS per process (MB) | val ELBO | ELBO diff | relative |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r.get('processes', 1)} x {r.get('threads_per_process', '-')} | "
                     f"{r['s_per_epoch']:.2f} | {r['subject_epochs_per_s']:.0f} | "
                     f"{r['throughput_ratio']:.2f} | {r['first_epoch_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['val_elbo']:.3f} | {r['val_elbo_abs_diff']:.3f} | {r['val_elbo_rel_diff']:.2%} |")
    lines += [""] + [f"Throughput ratio {r['variant']} / {base['variant']}: **{r['throughput_ratio']:.2f}x**; final "
                     f"validation ELBO difference {r['val_elbo_abs_diff']:.3f} ({r['val_elbo_rel_diff']:.2%})."
                     for r in rows[1:] if "seed" not in r["variant"]]
    seeded = [r for r in rows if "seed" in r["variant"]]
    if seeded:
        s = seeded[0]
        lines.append(f"Yardsticks from another seed of the {base['variant']} run: its final validation ELBO differs by "
                     f"{s['val_elbo_abs_diff']:.3f} ({s['val_elbo_rel_diff']:.2%}: an ELBO near 0 makes relative "
                     f"differences large), and its time per epoch by {abs(1 - s['throughput_ratio']):.0%} (the "
                     "shared machine's load changes between variants).")
    lines.append("")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text("\n".join(lines))
    (out / f"{stem}.json").write_text(json.dumps({"env": env, "rows": rows, **summary}, indent=1))
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2800)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="smoke run: 200 subjects, 2 epochs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS) + list(EXTRA))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--stem", default="bench_train", help="result file names (STEM.md, STEM.json)")
    a = ap.parse_args()
    if a.small:
        a.subjects, a.epochs = 200, 2
    main(a.subjects, a.epochs, a.threads, Path(a.out), tuple(a.variants), a.stem)
