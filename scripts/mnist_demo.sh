#!/usr/bin/env bash
# CoOp, VPT and UPT prompts trained few-shot on real MNIST digits, compared
# with zero-shot CLIP on the same 2,000 held-out test images.
#
# Environment overrides: PYTHON, OUT (run folder; one per model by default),
# SHOTS, SEED, EPOCHS, MODEL, PRETRAINED.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SHOTS="${SHOTS:-5}"
SEED="${SEED:-1}"
EPOCHS="${EPOCHS:-30}"
MODEL="${MODEL:-mvlpt:mini-vit-32}"
PRETRAINED="${PRETRAINED:-offline}"
OUT="${OUT:-runs/mnist-demo/$(echo "$MODEL-$PRETRAINED" | tr -c 'A-Za-z0-9._-' '_')}"
mvlpt() { "$PYTHON" -m mvlpt "$@"; }

common=(--task mnist --model "$MODEL" --pretrained "$PRETRAINED")

echo "== zero-shot CLIP"
if [ ! -f "$OUT/zero-shot/results.json" ]; then
    mvlpt zero-shot "${common[@]}" --output-dir "$OUT/zero-shot"
fi

for method in coop vpt upt; do
    echo "== $method, $SHOTS shots, seed $SEED, $EPOCHS epochs"
    mvlpt train --config "configs/$method.yaml" "${common[@]}" \
        --shots "$SHOTS" --seed "$SEED" --epochs "$EPOCHS" --output-dir "$OUT/$method-${SHOTS}shot-seed$SEED"
done

echo "== test results (task metric, percent)"
mvlpt summarize "$OUT" | tee "$OUT/results.md"
