#!/bin/bash
# Device run A: start the default-model training in the background (it outlives this command and is
# resumed/collected by collect_default.sh), and meanwhile measure the 8B diagnostics table.
export PYTHONUNBUFFERED=1
WORK=${WORK:-$HOME/var_gen_train}
mkdir -p ${WORK:-$HOME/var_gen_train}
nvidia-smi --query-gpu=name,memory.total --format=csv
setsid nohup python3 -m var_gen_ros.train_default --out ${WORK:-$HOME/var_gen_train}/bundle --workdir ${WORK:-$HOME/var_gen_train}/run \
    --minutes "${TRAIN_MINUTES:-18}" > ${WORK:-$HOME/var_gen_train}/train.out 2>&1 < /dev/null &
python3 bench/quant_report.py random-8b --json "$OUT/diag_8b.json" 2>&1 | grep -v Loading
while [ $SECONDS -lt "${HOLD_S:-540}" ]; do sleep 10; done
tail -40 ${WORK:-$HOME/var_gen_train}/train.out
