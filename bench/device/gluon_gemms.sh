# The Gluon GEMMs (kernels/i8_mainloop_gluon.py; first run on an H100 in the fiftieth session, the default on sm_90
# since) on one GPU machine. PART, one or more of these in order:
#   tests  every Gluon GPU test but the warp-specialized one, in two families each under TESTS_S (360 s; the i8p
#          family's exact-sums test alone took ~170 s on an H100): the i8p GEMM's (exact sums and whole forward on every
#          8B shape, in `w4a4_linear` eagerly and in a CUDA graph, the fallback, the qkv form), then the i8w loop's and
#          GEMM's; a pass leaves .i8p_ok / .i8w_ok in $OUT; a failure is fixed before anything is timed (on an i8p
#          one, bench/i8p_debug.py saves small cases' inputs and outputs to $OUT, which bench/i8p_debug_analyze.py then
#          reads on the CPU machine, trying models of wrong kernels); TESTS_K narrows them (e.g. "i8p and not warp_specialized")
#   ws     the warp-specialized i8p's small cases, each in its own process (`bench/i8p_debug.py --ws`: which launches
#          hang, if any, and whether in the compile or the run), then its test apart, killed after WS_TESTS_S (a
#          hand-over that never comes would hang)
#   i8p    bench/i8p_gemm.py: whole layers with i8p against the product's Triton path and bf16 at 32-4096 rows, and the
#          i8p GEMM alone at every launch it may take (BENCH_MS), ~3-4 min. Three calls, each sent as soon as the one
#          before returns (the machine stays warm ~30 s): PART=tests, then PART="ws i8p" (the bench times the
#          warp-specialized launches if their test passed in the same call, or with WS=1), then PART=edge
#   i8w    bench/i8_mainloop.py: the Gluon i8w loop and GEMM (both tiles) against Triton's and cuBLAS(Lt) at I8W_MS rows
#          (800, 2048, 8192: where the 128 x 256 tile leaves SMs idle, and issue 5's table), ~3 min
#   fc2    bench/fc2_stats.py: the FFN with fc2's row pass in fc1's Gluon epilogue (FC2_STATS) against without, per
#          part (fc1's epilogue, fc2's kernel 1) at 288-8192 rows, ~1-2 min
#   edge   the resident 1024² edge proof, each EDGE_TAGS entry in its own process, in order (default "off i8p
#          gluon_i8w"; ~1 min each warm, the first on a fresh machine also compiles: EDGE_S each). Tags: off, the
#          Triton GEMMs alone; i8p, only i8p (VAR_GEN_W4A4_GLUON_I8P=1); gluon_i8w, only the Gluon i8w GEMM
#          (VAR_GEN_W4A4_GLUON=1); default or i8p_gluon_i8w, both (the product's defaults on sm_90 since the fiftieth
#          session: i8p to 288 rows, the Gluon i8w GEMM from 513, or as VAR_GEN_W4A4_I8P_MAX_M /
#          VAR_GEN_W4A4_GLUON_MIN_M ask); i8p_ws, i8p_qkv, i8p_qkvf, both plus i8p's warp-specialized kernel
#          (VAR_GEN_W4A4_I8P_WS=1), plus the qkv projection on i8p with its epilogue as the separate kernel
#          (VAR_GEN_W4A4_I8P_QKV=1) or in the i8p GEMM ("fused"); auto, after the tests part, whichever of the two
#          passed its tests; bf16, the bf16 pipeline (uncapped after its OOM under the cap), for the side-by-side ratio.
#          A suffix tells repeats apart (default_b, off_b: the same settings); one with "_cg" (default_cg, bf16_cg)
#          runs the condition as CUDA graphs (VAR_GEN_CONDITION_GRAPHS=1), one with "_i8p512" takes i8p up to 512 rows
#          (VAR_GEN_W4A4_I8P_MAX_M=512; scale 6, and not scale 11's 512-row slice, whose workspaces are kept), one
#          with "_fc2" makes fc2's row pass in fc1's GEMM epilogue (VAR_GEN_W4A4_FC2_STATS=1), one with "_ua" unpacks
#          the i8w layers' workspaces ahead on a side stream (VAR_GEN_W4A4_UNPACK_AHEAD=1), one with "_sw256" keeps
#          i8p's 129-512-row launches swapped with the x rows in tiles of 256 (VAR_GEN_W4A4_I8P_SWAP256_MAX_M=512; with
#          "_i8p512" scale 6 too); suffixes combine (default_i8p512_sw256)
# Files in $OUT, packed into out.tgz.
set -u
source bench/device/autotune_carry.sh
export PYTHONPATH=$PWD:$PWD/test
t0=$(date +%s)
build_extension
for part in ${PART:-tests}; do
case "$part" in
tests)
  # two families, each gating its own use below: the i8p GEMM's tests (.i8p_ok), the i8w loop's and GEMM's (.i8w_ok)
  for fam in i8p i8w; do
    case $fam in i8p) k="i8p and not warp_specialized";; i8w) k="gluon and not i8p";; esac
    timeout ${TESTS_S:-360} python3 -m pytest -q -x -p no:cacheprovider test/test_kernels_gpu.py -k "${TESTS_K:-$k}" \
      > "$OUT/gpu_tests_gluon_$fam.txt" 2>&1
    rc=$?; echo "$fam tests rc $rc s $(( $(date +%s) - t0 ))"
    grep -E "passed|failed|Error|assert" "$OUT/gpu_tests_gluon_$fam.txt" | tail -6 | cut -c1-600
    [ "$rc" = 0 ] && touch "$OUT/.${fam}_ok"
    # an i8p failure: small cases with their inputs and outputs saved (bench/i8p_debug.py), studied on the CPU machine
    [ "$rc" != 0 ] && [ $fam = i8p ] && timeout 120 python3 bench/i8p_debug.py --out "$OUT" 2>&1 | grep -v -i warn | cut -c1-400
    [ -n "${TESTS_K:-}" ] && break
  done
  ;;
ws)
  # first its small cases, each in its own process killed after WS_CASE_S (25 s): compiled, then run (a hang told from
  # a slow compile and from wrong bits, and which launches hang); then its test
  python3 bench/i8p_debug.py --ws --case-timeout ${WS_CASE_S:-25} --out "$OUT" 2>&1 | grep "^ws case" | cut -c1-400
  # the warp-specialized i8p apart, under its own limit (a hand-over that never comes hangs instead of failing)
  timeout -s KILL ${WS_TESTS_S:-180} python3 -m pytest -q -x -p no:cacheprovider test/test_kernels_gpu.py \
    -k warp_specialized > "$OUT/gpu_tests_i8p_ws.txt" 2>&1
  echo "ws tests rc $? s $(( $(date +%s) - t0 ))"; grep -E "passed|failed|Error|assert" "$OUT/gpu_tests_i8p_ws.txt" | tail -4 | cut -c1-600
  grep -q " passed" "$OUT/gpu_tests_i8p_ws.txt" && ! grep -q "failed" "$OUT/gpu_tests_i8p_ws.txt" && touch "$OUT/.ws_ok"
  ;;
i8p)
  case " ${PART:-tests} " in *" tests "*) [ -f "$OUT/.i8p_ok" ] || { echo "i8p bench skipped: its tests failed"; continue; };; esac
  # the warp-specialized launches once their test passed (in this call, or WS=1 after an earlier call's pass)
  ws=""; { [ -f "$OUT/.ws_ok" ] || [ "${WS:-0}" = 1 ]; } && ws="--ws"
  timeout ${BENCH_S:-240} python3 bench/i8p_gemm.py --ms ${BENCH_MS:-32,72,128,288,512,1152,2048,4096} $ws \
    --json "$OUT/i8p_gemm.json" > "$OUT/i8p_gemm.txt" 2>&1
  echo "i8p bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/i8p_gemm.txt" | cut -c1-300 | tail -30
  ;;
i8w)
  timeout ${BENCH_S:-200} python3 bench/i8_mainloop.py --ms ${I8W_MS:-800,2048,8192} --json "$OUT/i8_mainloop.json" \
    > "$OUT/i8_mainloop.txt" 2>&1
  echo "i8w bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/i8_mainloop.txt" | cut -c1-400 | tail -10
  ;;
fc2)
  timeout ${BENCH_S:-200} python3 bench/fc2_stats.py --json "$OUT/fc2_stats.json" > "$OUT/fc2_stats.txt" 2>&1
  echo "fc2 bench rc $? s $(( $(date +%s) - t0 ))"; grep -v -i warn "$OUT/fc2_stats.txt" | cut -c1-400 | tail -8
  ;;
edge)
  for tag in ${EDGE_TAGS:-off i8p gluon_i8w}; do
    if [ "$tag" = auto ]; then     # every Gluon GEMM whose tests passed in this call's tests part
      tag=""; [ -f "$OUT/.i8p_ok" ] && tag=i8p; [ -f "$OUT/.i8w_ok" ] && tag="${tag:+${tag}_}gluon_i8w"
      [ -z "$tag" ] && { echo "edge auto skipped: no Gluon GEMM passed its tests"; continue; }
    fi
    p=0; w=0; s=0; v=0; case "$tag" in default*|i8p_gluon_i8w) p=1; w=1;; i8p_ws*) p=1; w=1; s=1;;
      i8p_qkvf*) p=1; w=1; v=fused;; i8p_qkv*) p=1; w=1; v=1;; i8p*) p=1;; gluon*) w=1;; esac
    mode=w4a4_kv8; case "$tag" in bf16*) mode=bf16;; esac
    cg=0; case "$tag" in *_cg*) cg=1;; esac       # "_cg": the condition as CUDA graphs (sampler.CONDITION_GRAPHS)
    pm=288; case "$tag" in *_i8p512*) pm=512;; esac   # "_i8p512": i8p up to 512 rows (VAR_GEN_W4A4_I8P_MAX_M)
    fs=0; case "$tag" in *_fc2*) fs=1;; esac          # "_fc2": fc2's row pass from fc1's epilogue (FC2_STATS)
    ua=0; case "$tag" in *_ua*) ua=1;; esac           # "_ua": the i8w workspaces unpacked ahead on a side stream
    sw=0; case "$tag" in *_sw256*) sw=512;; esac      # "_sw256": i8p swapped in x tiles of 256 from 129 rows
    VAR_GEN_W4A4_I8P_SWAP256_MAX_M=$sw VAR_GEN_W4A4_UNPACK_AHEAD=$ua VAR_GEN_W4A4_FC2_STATS=$fs VAR_GEN_W4A4_I8P_MAX_M=$pm VAR_GEN_CONDITION_GRAPHS=$cg VAR_GEN_W4A4_GLUON_I8P=$p VAR_GEN_W4A4_I8P_WS=$s VAR_GEN_W4A4_I8P_QKV=$v VAR_GEN_W4A4_GLUON=$w \
      timeout -s ABRT -k 10 ${EDGE_S:-170} python3 bench/edge_proof.py \
      --resolutions 1024x1024 --cap-gib 14 --cuda-graphs 1 --chunk-tokens 2048 --graph-max-tokens 4096 \
      --text-encoder int4 --modes $mode --json "$OUT/edge_$tag.json" > "$OUT/edge_$tag.txt" 2>&1
    echo "edge $tag rc $? s $(( $(date +%s) - t0 ))"; pkill -9 -f "[e]dge_proof.py --child"
    grep -E "^w4a4|^bf16|rror|new prompt through" "$OUT/edge_$tag.txt" | tail -3
  done
  ;;
esac
done
pack_out
