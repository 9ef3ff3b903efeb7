#!/bin/bash
# The QLLM paper's Table 1, Figure 7 (the number of candidates K) and section 5.3.2 (the evaluator) at
# the budget of one working session on a 2-core CPU machine: 40k steps per run, 5 seeds for Table 1 and
# 3 for the ablations, against the paper's 2M steps and 5 seeds. About 2.5 hours. Every sweep resumes
# where it stopped: rerun the script after a kill.
#   bash reports/paper-reproduction/reproduce.sh [SWEEPS_DIR] [REPORT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
QLLM=.venv/bin/qllm
SWEEPS=${1:-runs/paper}
REPORT=${2:-reports/paper-reproduction}
COMMON=(--steps 40000 --set epsilon_anneal_steps=20000
        --coder local --evaluator local --mode auto --rounds 3)
ABLATION_TASKS=lbf-2s-10x10-3p-3f,mpe-tag

sweep() {  # a new sweep with these options, or the existing one resumed as planned
    local dir=$1
    shift
    if [[ -f $dir/sweep.json ]]; then $QLLM sweep "$dir"; else $QLLM sweep "$dir" "$@"; fi
}

# Table 1: RIIT against RIIT with a credit function, on the paper's three MPE tasks.
sweep "$SWEEPS/table1" --tasks mpe-spread-6,mpe-adversary-pretrained,mpe-tag-pretrained \
    --mixers riit,riit-qllm --seeds 5 "${COMMON[@]}" --selection auto --candidates 3
# Figure 7: K = 1, 3, 5 candidates per round (the local evaluator's default choice: consensus).
for k in 1 3 5; do
    sweep "$SWEEPS/fig7-k$k" --tasks $ABLATION_TASKS --mixers qllm --seeds 3 "${COMMON[@]}" \
        --selection auto --candidates $k
done
# Section 5.3.2, and Figure 7 again with the paper's selection: the evaluator LLM choosing and giving
# tips, at K = 3 ("evaluator") and K = 1, against the same K without it (consensus, above). K = 5 with
# the evaluator (about 30 minutes of generation on 2 cores) did not fit the session: add it here.
sweep "$SWEEPS/evaluator" --tasks $ABLATION_TASKS --mixers qllm --seeds 3 "${COMMON[@]}" \
    --selection evaluator --candidates 3
sweep "$SWEEPS/evaluator-k1" --tasks $ABLATION_TASKS --mixers qllm --seeds 3 "${COMMON[@]}" \
    --selection evaluator --candidates 1

$QLLM report "$SWEEPS/table1" --out "$REPORT/table1"
$QLLM compare "$SWEEPS/fig7-k1" "$SWEEPS/fig7-k3" "$SWEEPS/fig7-k5" --out "$REPORT/figure7-consensus"
$QLLM compare "$SWEEPS/evaluator-k1" "$SWEEPS/evaluator" --out "$REPORT/figure7-evaluator"
$QLLM compare "$SWEEPS/fig7-k3" "$SWEEPS/evaluator" --out "$REPORT/evaluator-k3"
$QLLM compare "$SWEEPS/fig7-k1" "$SWEEPS/evaluator-k1" --out "$REPORT/evaluator-k1"
