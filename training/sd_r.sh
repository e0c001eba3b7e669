#!/usr/bin/env bash
# SD-R: build the dataset from a teacher trace store, then distill.
#   training/sd_r.sh traces.jsonl [--max-steps 100 ...]
set -euo pipefail
store=${1:?usage: training/sd_r.sh TRACES.jsonl [distill flags...]}
shift
cd "$(dirname "$0")/.."
python -m langchain_divconq.cli dataset --store "$store" --variant SD-R --out runs/data/sd-r
python -m langchain_divconq.cli distill --config training/sd_r.yaml "$@"
