#!/usr/bin/env bash
# Run from inside a venv that holds advkit installed from its wheel (make wheel-check): the installed
# package, not the checkout, must import, list every plugin, train and evaluate.
set -euo pipefail
export OMP_NUM_THREADS=1
venv=$(readlink -f "${1:?usage: wheel-smoke.sh VENV}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
location=$("$venv/bin/python" -c "import advkit, pathlib; print(pathlib.Path(advkit.__file__).parent)")
case "$location" in
  "$venv"/*) ;;
  *) echo "advkit imported from $location, not from the wheel in $venv" >&2; exit 1 ;;
esac
"$venv/bin/advkit" --version
"$venv/bin/advkit" plugins --check
"$venv/bin/advkit" train --dataset digits --model small-cnn --rectifier adr --eps 0.1 --epochs 1 \
    --batch-size 64 --train-size 256 --val-size 64 --val-steps 2 --threads 1 --out run --quiet
"$venv/bin/advkit" eval run --attack clean --attack fgsm --n-examples 64 --json run/eval.json
"$venv/bin/python" -c "from advkit.compat import import_robustbench, timm_hub_problem; import_robustbench(); \
assert timm_hub_problem() is None, timm_hub_problem()"
echo "wheel smoke: ok"
