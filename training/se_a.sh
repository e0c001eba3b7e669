#!/usr/bin/env bash
# SE-A: build the dataset from a teacher trace store, then distill.
#   training/se_a.sh traces.jsonl [--max-steps 100 ...]
set -euo pipefail
store=${1:?usage: training/se_a.sh TRACES.jsonl [distill flags...]}
shift
cd "$(dirname "$0")/.."
python -m langchain_divconq.cli dataset --store "$store" --variant SE-A --out runs/data/se-a
python -m langchain_divconq.cli distill --config training/se_a.yaml "$@"
