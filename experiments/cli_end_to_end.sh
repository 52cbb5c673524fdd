#!/usr/bin/env bash
# The surrogate -> sweep -> sensitivity -> trial path from the command line, on the example configs, with the
# outputs kept in experiments/results/cli_end_to_end/ (about 10 min on 2 cores). The surrogate is the default
# (timed) architecture at the recipe of bench_surrogate_equal_data.py: 2,000 simulations, batch 16, 200 epochs.
# Run from the repository root: bash experiments/cli_end_to_end.sh
set -euo pipefail
HT=${HT:-$( [ -x .venv/bin/hybridtwin ] && echo .venv/bin/hybridtwin || echo hybridtwin )}
KEEP=experiments/results/cli_end_to_end
mkdir -p "$KEEP"
{
  time $HT surrogate fit --domain experiments/configs/surrogate_vaccine.yaml --out surrogates/vaccine \
      --n-train 2000 --epochs 200 --batch-size 16 --validate 0 --quiet
  $HT surrogate validate surrogates/vaccine --n 2000
  time $HT sweep experiments/configs/sweep_booster.yaml --quiet
  time $HT surrogate sensitivity surrogates/vaccine --output log10_Ab --time 365 --out sensitivity_output
  time $HT trial experiments/configs/trial_booster.yaml --quiet
} 2>&1 | tee "$KEEP/log.txt"
cp surrogates/vaccine/card.json "$KEEP/surrogate_card.json"
cp surrogates/vaccine/certificate.csv "$KEEP/surrogate_certificate.csv"
cp sweep_output/summary.md sweep_output/summary.csv sweep_output/heatmap.png sweep_output/distributions.png \
   sweep_output/verify.json "$KEEP/" 2>/dev/null || true
mkdir -p "$KEEP/sweep" "$KEEP/sensitivity" "$KEEP/trial"
mv "$KEEP"/summary.md "$KEEP"/summary.csv "$KEEP"/heatmap.png "$KEEP"/distributions.png "$KEEP"/verify.json "$KEEP/sweep/" 2>/dev/null || true
cp sensitivity_output/* "$KEEP/sensitivity/"
cp trial_output/report.md trial_output/report.html trial_output/*.png trial_output/summary.csv \
   trial_output/differences.csv trial_output/power.csv "$KEEP/trial/"
echo "kept in $KEEP"
