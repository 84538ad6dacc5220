#!/bin/bash
# For the session after the sixteenth (which had no device time). PART=1: the weight-scale prefetch A/B of the
# i8 GEMM (prefetch_scales.sh). PART=2: the edge proof, W4A4 + INT8 KV at 1024² with the product defaults, the
# text encoder in INT4 then INT8, on one machine (the first run compiles; the int8 run is the comparison, the
# INT4 encoder's bytes are the only difference), with PREFETCH=1 to run both with the prefetch on. A machine
# with no Triton cache spends ~6 min on the first edge run, so there run TES=int4 and then TES=int8 in two
# calls (within the machine's 30 s idle window, so that the second finds the first's cache). PART=3: the
# fifteenth session's GPU tests (verify_fifteenth.sh). PART=4: where the small scales' time goes (scales 0-8 of
# 1024² are W4A4 221 ms against bf16's 148, the largest loss. At scales 0-2 (M = 2-32) the excess, ~3.3 ms per
# scale, is what the W4A4 Linears' stage table predicts (~80 us per block); from scale 3 (M = 72) it doubles and
# reaches 11-15 ms at scales 5-8, unexplained): each block Linear's stages at those scales' rows, then kernel
# time by family, bf16 vs W4A4 + INT8 KV, at 512² (the same first nine scales, then 32²), 4 blocks. Carry
# .tcache when there is one. PART=5: the small-M tiles among the tuner's candidates up to 256 rows, A/B
# (small_tiles.sh; SMALL=1 adds an edge run with them). PART=6: kernel 1 without divisions, its GPU test and
# A/B (kernel1_nodiv.sh).
source bench/device/autotune_carry.sh
case "${PART:-2}" in
1) bash bench/device/prefetch_scales.sh ;;
2) for te in ${TES:-int4 int8}; do
     VAR_GEN_W4A4_PREFETCH_SCALES=${PREFETCH:-0} TE=$te GRAPH_MAX=4096 edge_round te_$te 1024 w4a4_kv8 ${EDGE_TIMEOUT:-420}
     python3 - "$OUT/edge_te_${te}_c1024.json" <<'PY'
import json, sys
for mode, x in json.load(open(sys.argv[1])).items():
    for r in x.get("runs", []):
        m = r["memory_bytes"]
        print(mode, x.get("text_encoder_mode"), "total", round(r["latency_s"]["total"], 4), "text", round(r["latency_s"]["text_encoder"], 4),
              "te bytes", m["weights"].get("text_encoder"), "peak", round(m["peak_allocated"] / 2**30, 3),
              "reserved", round(m["peak_reserved"] / 2**30, 3))
PY
   done
   autotune_save ;;
3) bash bench/device/verify_fifteenth.sh ;;
5) bash bench/device/small_tiles.sh ;;
6) bash bench/device/kernel1_nodiv.sh ;;
4) timeout ${STAGES_TIMEOUT:-240} python3 bench/w4a4_stages.py --ms 72,128,288,512,800,1152 \
     --json "$OUT/w4a4_stages_small_scales.json" > "$OUT/w4a4_stages_small_scales.txt" 2>&1
   echo "stages rc $?"; grep -v -i warn "$OUT/w4a4_stages_small_scales.txt" | tail -30 | cut -c1-200
   timeout ${PROFILE_TIMEOUT:-330} python3 bench/gpu_time_profile.py --depth 4 --size 512 --settings 1024:4096 \
     --profile-chunks 1024 --json "$OUT/gpu_time_profile_small_scales.json" > "$OUT/gpu_time_profile_small_scales.txt" 2>&1
   echo "profile rc $?"; grep -v -i warn "$OUT/gpu_time_profile_small_scales.txt" | tail -40 | cut -c1-200
   autotune_save ;;
esac
