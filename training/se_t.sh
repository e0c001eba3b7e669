#!/usr/bin/env bash
# SE-T: build the dataset from a teacher trace store, then distill.
#   training/se_t.sh traces.jsonl [--max-steps 100 ...]
set -euo pipefail
store=${1:?usage: training/se_t.sh TRACES.jsonl [distill flags...]}
shift
cd "$(dirname "$0")/.."
python -m langchain_divconq.cli dataset --store "$store" --variant SE-T --out runs/data/se-t
python -m langchain_divconq.cli distill --config training/se_t.yaml "$@"
