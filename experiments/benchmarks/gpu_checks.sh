#!/usr/bin/env bash
# The GPU checks of the performance issue, as one short script for a lent GPU machine (device tool):
#   1. the batched supernet equals the reference forward on CUDA (tests/test_supernet_equivalence.py);
#   2. the paper's search step (L=12, B=5, F=8, crop 321, batch 2, 19 classes, paper ops): fp32, fp32 with the
#      separable units stored, bf16 autocast (which stores them), bf16 + channels-last, and bf16 with the fine
#      levels checkpointed; target <= 0.25 s and < 16 GB. The steps are the search loop's own (orchestrator/train/steps.py:
#      the arch step computes alpha/beta gradients only); search_step_s is weight + arch;
#   3. torch.compile of the supernet in fp32 and bf16 (compile time is in the warm-up steps, not the timed ones);
#   4. the data pipeline of cityscapes.yaml per loader worker (experiments/benchmarks/bench_data.py).
# Writes everything under ${OUT:-gpu-checks}/. Needs a venv with a CUDA torch build: run from the repo root as
#   PY=.venv/bin/python experiments/benchmarks/gpu_checks.sh
set -uo pipefail
PY=${PY:-python}
OUT=${OUT:-gpu-checks}
mkdir -p "$OUT"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
"$PY" -m pytest -q tests/test_supernet_equivalence.py -k cuda -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/equivalence.txt"
"$PY" experiments/benchmarks/bench_supernet.py --device cuda --crop 321 --batch 2 --ops paper --warmup 3 --steps 10 --json \
    --vs="--store-units" --vs="--amp bf16" --vs="--amp bf16 --channels-last" --vs="--amp bf16 --checkpoint-levels 0,1" \
    > "$OUT/bench_paper_321.json" 2> "$OUT/bench_paper_321.err"
echo "bench exit $?"; cat "$OUT/bench_paper_321.json"
"$PY" experiments/benchmarks/bench_supernet.py --device cuda --crop 321 --batch 2 --ops paper --warmup 3 --steps 10 --json \
    --no-flops --compile --vs="--amp bf16" > "$OUT/bench_compile_321.json" 2> "$OUT/bench_compile_321.err"
echo "compile bench exit $?"; cat "$OUT/bench_compile_321.json"
"$PY" experiments/benchmarks/bench_data.py --json > "$OUT/bench_data.json" 2> "$OUT/bench_data.err"
echo "data bench exit $?"; cat "$OUT/bench_data.json"
