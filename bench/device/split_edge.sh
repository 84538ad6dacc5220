#!/bin/bash
# Fortieth session, after split_mid_m.sh: the i8w split-K tiles (VAR_GEN_W4A4_SPLIT_TMA=1, VAR_GEN_W4A4_SPLIT_MAX_M=2048)
# in issue 7's 1024² generation, resident W4A4 + INT8 KV under the 14 GiB cap, side by side with the default: default,
# split, default again. The split run takes the shipped tuning table without the i8 GEMM's workspace keys from 512 to
# 2048 rows (VAR_GEN_TUNED_PICKS=FILE), so that its tuner chooses among the new tiles there (its warm-up tunes them).
#   bash bench/device/split_edge.sh
source bench/device/autotune_carry.sh
build_extension
python3 - "$PWD/.split_picks.json" <<'PY'
import json, sys
t = json.load(open("kernels/tuned/nvidia_h100_80gb_hbm3.json"))
keep = [p for p in t["picks"]["_w4a4_i8_kernel"] if not (p["key"][0] in (512, 1024, 2048) and p["key"][3] is True)]
print("i8 picks kept", len(keep), "of", len(t["picks"]["_w4a4_i8_kernel"]))
t["picks"]["_w4a4_i8_kernel"] = keep
json.dump(t, open(sys.argv[1], "w"))
PY
run() {  # TAG LIMIT ENV...
  local tag=$1 limit=$2; shift 2
  env "$@" timeout -s ABRT -k 10 $limit python3 bench/edge_proof.py --resolutions 1024x1024 --cap-gib 14 \
    --modes w4a4_kv8 --cuda-graphs 1 --chunk-tokens 1024 --graph-max-tokens 4096 --text-encoder int4 \
    --json "$OUT/edge_$tag.json" > "$OUT/edge_$tag.txt" 2>&1
  echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
  grep -E "^w4a4|rror" "$OUT/edge_$tag.txt" | tail -4
}
run default_a 160 VAR_GEN_W4A4_SPLIT_TMA=0
run split 230 VAR_GEN_W4A4_SPLIT_TMA=1 VAR_GEN_W4A4_SPLIT_MAX_M=2048 VAR_GEN_TUNED_PICKS="$PWD/.split_picks.json"
run default_b 110 VAR_GEN_W4A4_SPLIT_TMA=0
autotune_picks_save
pack_out
true
