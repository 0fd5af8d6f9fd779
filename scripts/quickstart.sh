#!/usr/bin/env bash
# The main job, from a fresh clone: environment + install, the Shakespeare corpus (char level), a
# masked-diffusion DDiT trained on the CPU for a few minutes (live progress bar), its validation
# bound, and samples — the first one shown crystallising step by step.
#   MINUTES=4 bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-4}
bash scripts/setup_env.sh
TDLM=.venv/bin/thunderdlm
[ -f data/shakespeare_char/meta.json ] || $TDLM data prepare shakespeare --tokenizer char --out data/shakespeare_char
RUN=runs/quickstart-$(date +%Y%m%d-%H%M%S)
$TDLM train quickstart train.max_minutes="$MINUTES" out_dir="$RUN"
$TDLM eval "$RUN"
echo; echo "== a sample crystallising (64 steps, 256 characters) =="
$TDLM sample "$RUN" --steps 64 --length 256 --live --seed 0
echo; echo "== two more samples (MDLM ancestral steps) =="
$TDLM sample "$RUN" --steps 64 --length 256 --n 2 --seed 1
echo; echo "== LLaDA low-confidence remasking: surest positions first (more real words, more repetition) =="
$TDLM sample "$RUN" --steps 64 --length 256 --seed 1 --remasking low_confidence
echo; echo "== infilling =="
$TDLM sample "$RUN" --steps 32 --infill "HAMLET:
To be, or [MASK:20] the question:
[MASK:60]" --seed 2
echo; echo "run folder: $RUN   (continue training: .venv/bin/thunderdlm train --resume $RUN train.max_minutes=10)"
