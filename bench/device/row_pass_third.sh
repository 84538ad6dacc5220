#!/bin/bash
# The forty-fifth session's one call for the CUDA row pass's third form (float4 split sum, B loads a group ahead):
# its GPU test and kernel 1's timings (quant_ab.sh with TEST_K=row_pass_in_cuda), then both row passes under Nsight
# Compute at 3584 -> 3584, 512 and 2048 rows (bench/row_pass_profile.py; $OUT/row_pass_ncu.txt), then the resident 1024² edge
# proof with and without it, only if it beat the Triton row pass at 2048 rows on at least three of the four shapes.
export t0=$(date +%s)
TEST_K=row_pass_in_cuda MS=${MS:-512,2048,4096} bash bench/device/quant_ab.sh
timeout 150 ncu --profile-from-start off --clock-control none --set full --import-source yes \
  -o "$OUT/row_pass" python3 bench/row_pass_profile.py --k 3584 --ms 512,2048 > "$OUT/row_pass_ncu_run.txt" 2>&1
echo "ncu rc $? s $(( $(date +%s) - t0 ))"; tail -3 "$OUT/row_pass_ncu_run.txt"
[ -f "$OUT/row_pass.ncu-rep" ] && ncu --import "$OUT/row_pass.ncu-rep" --page details > "$OUT/row_pass_ncu.txt" 2>&1
[ -f "$OUT/row_pass.ncu-rep" ] && ncu --import "$OUT/row_pass.ncu-rep" --page source --print-source cuda,sass \
  --kernel-name regex:row_pass_kernel > "$OUT/row_pass_ncu_source.txt" 2>&1; ls -la "$OUT"/row_pass_ncu*
python3 - "$OUT/quant_ab.json" <<'PY' && EDGE=1 TESTS=0 AB=0 EDGE_ENVS="- VAR_GEN_W4A4_ROW_PASS_CUDA=1" bash bench/device/quant_ab.sh
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["M"] == 2048]
wins = sum(r["ms"]["row_pass_cuda"]["kernel1"] < r["ms"]["row_pass"]["kernel1"] for r in rows)
print(f"row_pass_cuda faster at 2048 rows on {wins} of {len(rows)} shapes")
sys.exit(0 if wins >= 3 else 1)
PY
echo "done s $(( $(date +%s) - t0 ))"
