#!/bin/bash
# Device run B: wait for the background training of run A to stop, evaluate cfg/tau on held-out
# prompts, export the final bundle to $OUT.
export PYTHONUNBUFFERED=1
WORK=${WORK:-$HOME/var_gen_train}
while pgrep -f "var_gen_ros.train_default" > /dev/null; do sleep 5; done
tail -5 ${WORK:-$HOME/var_gen_train}/train.out
python3 -m var_gen_ros.train_default --out ${WORK:-$HOME/var_gen_train}/bundle --workdir ${WORK:-$HOME/var_gen_train}/run --finish \
    --eval-prompts "${EVAL_PROMPTS:-50}" 2>&1 | grep -v "Loading\|Writing"
mkdir -p "$OUT/bundle/text_encoder"
cp ${WORK:-$HOME/var_gen_train}/bundle/*.json ${WORK:-$HOME/var_gen_train}/bundle/*.safetensors "$OUT/bundle/"
cp ${WORK:-$HOME/var_gen_train}/run/train.log "$OUT/"
tar -C ${WORK:-$HOME/var_gen_train}/bundle -cf "$OUT/text_encoder.tar" text_encoder
ls -la "$OUT" "$OUT/bundle"
