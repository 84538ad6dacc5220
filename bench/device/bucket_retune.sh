#!/bin/bash
# Whether the 2048-row bucket's pick, made at 1152 rows, is the best at 2048 (bench/bucket_retune.py), with the
# committed or carried autotuning picks, as a generation on a machine with them would run.
source bench/device/autotune_carry.sh
timeout ${TIMEOUT:-400} python3 bench/bucket_retune.py --first ${FIRST:-1152} --target ${TARGET:-2048} \
  --json "$OUT/bucket_retune.json" 2>&1 | grep -v -i warn | tail -12
true
