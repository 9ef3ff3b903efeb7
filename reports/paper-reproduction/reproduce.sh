#!/bin/bash
# The QLLM paper's Table 1, Figure 7 (the number of candidates K) and section 5.3.2 (the evaluator) at
# the budget of one working session on a 2-core CPU machine: 40k steps and 3 seeds per run, against the
# paper's 2M steps and 5 seeds. Every sweep resumes where it stopped; rerun the script after a kill.
#   bash reports/paper-reproduction/reproduce.sh [SWEEPS_DIR] [REPORT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
QLLM=.venv/bin/qllm
SWEEPS=${1:-runs/paper}
REPORT=${2:-reports/paper-reproduction}
COMMON=(--seeds 3 --steps 40000 --set epsilon_anneal_steps=20000
        --coder local --evaluator local --mode auto --rounds 3)
ABLATION_TASKS=lbf-2s-10x10-3p-3f,mpe-tag

# Table 1: RIIT against RIIT with a credit function, on the paper's three MPE tasks.
$QLLM sweep "$SWEEPS/table1" --tasks mpe-spread-6,mpe-adversary-pretrained,mpe-tag-pretrained \
    --mixers riit,riit-qllm "${COMMON[@]}" --selection auto --candidates 3
# Figure 7: K = 1, 3, 5 candidates per round (the local evaluator's default choice: consensus).
for k in 1 3 5; do
    $QLLM sweep "$SWEEPS/fig7-k$k" --tasks $ABLATION_TASKS --mixers qllm "${COMMON[@]}" \
        --selection auto --candidates $k
done
# Section 5.3.2: the evaluator LLM choosing and giving tips, against K=3 without it (consensus).
$QLLM sweep "$SWEEPS/evaluator" --tasks $ABLATION_TASKS --mixers qllm "${COMMON[@]}" \
    --selection evaluator --candidates 3

$QLLM report "$SWEEPS/table1" --out "$REPORT/table1"
$QLLM compare "$SWEEPS/fig7-k1" "$SWEEPS/fig7-k3" "$SWEEPS/fig7-k5" --out "$REPORT/figure7"
$QLLM compare "$SWEEPS/fig7-k3" "$SWEEPS/evaluator" --out "$REPORT/evaluator"
