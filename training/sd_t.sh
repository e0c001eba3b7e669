#!/usr/bin/env bash
# SD-T: build the dataset from a teacher trace store, then distill.
#   training/sd_t.sh traces.jsonl [--max-steps 100 ...]
set -euo pipefail
store=${1:?usage: training/sd_t.sh TRACES.jsonl [distill flags...]}
shift
cd "$(dirname "$0")/.."
python -m langchain_divconq.cli dataset --store "$store" --variant SD-T --out runs/data/sd-t
python -m langchain_divconq.cli distill --config training/sd_t.yaml "$@"
