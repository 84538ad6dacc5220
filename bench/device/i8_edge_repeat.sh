#!/bin/bash
# Eighth session, repeat (picks carried in .tcache/): the final kernels' 1024² edge proof again, W4A4 +
# INT8 KV alone, to tell which of the two earlier runs (2.170 s / 2.558 s) is typical.
source bench/device/autotune_carry.sh
timeout 300 python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 --modes w4a4_kv8 --cuda-graphs 1 \
  --json "$OUT/edge_i8_repeat.json" > "$OUT/edge_i8_repeat.txt" 2>&1
pkill -9 -f "[e]dge_proof.py --child"
grep -E "^(w4a4|bf16)|Error|rror:" "$OUT/edge_i8_repeat.txt" | head -5
python3 -c "
import json; r=json.load(open('$OUT/edge_i8_repeat.json'))['w4a4_kv8']['runs'][0]['latency_s']
print([round(x, 3) for x in r['per_scale']])"
