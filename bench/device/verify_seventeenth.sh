#!/bin/bash
# For the session after the seventeenth, which measured the INT4 text encoder's edge run on an H200 (reserved
# 10.00 GiB, 1.089 s) and then got no second machine. Each PART fits one device call (600 s); run them in this
# order, carrying .tcache from the previous call (same machine: within its 30 s idle window).
# PART=A: the kernel tests of this session (the INT4 dequantization, kernel 1 without divisions), the text
#   encoder's encode time per mode side by side (bf16, INT8, INT4 with the dequantization kernel, INT4 through
#   PyTorch's ops), then the edge proof, W4A4 + INT8 KV with the INT4 encoder (the first edge run on a bare
#   machine compiles: ~6 min without picks; bench/device/autotune_h200.tgz, since replaced by autotune_h100.tgz, carried the last H200 picks in).
# PART=B: bf16 at 1024² on the same machine (its real peak uncapped, the latency ratio against A's run on this
#   GPU: every earlier ratio is the H100's), then kernel 1 without divisions, A/B (kernel1_nodiv.sh) at the small
#   rows, with kernel 1's K splits swept up to one group per program (w4a4_stages.py --splits).
# PART=C: the small-M tiles above 64 rows (small_tiles.sh) and the weight-scale prefetch (prefetch_scales.sh).
# PART=D: where the small scales' time goes (PART=4 of verify_sixteenth.sh).
# PART=E: the edge run with the allocator's expandable segments (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True),
#   against A's: reserved 10.00 GiB against 9.12 allocated, and A's run says how much of the gap is the graphs'
#   pool (replay temporaries) and how much the default pool's cache and fragmentation, which this may shrink.
source bench/device/autotune_carry.sh
case "${PART:-A}" in
A) timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q test/test_kernels_gpu.py test/test_edge_memory.py \
     -k "int4_text_encoder or quantizer_launches_agree or reserved_by_pool or device_rates" \
     > "$OUT/test_gpu_seventeenth.txt" 2>&1
   echo "tests rc $?"; tail -3 "$OUT/test_gpu_seventeenth.txt" | cut -c1-300
   timeout ${TE_TIMEOUT:-150} python3 bench/text_encoder_quant.py --device cuda --repeats 20 \
     --json "$OUT/text_encoder_quant_h200.json" > "$OUT/text_encoder_quant_h200.txt" 2>&1
   echo "text encoder rc $?"; grep -E "^(int|the|encode)" "$OUT/text_encoder_quant_h200.txt" | cut -c1-250
   TE=int4 GRAPH_MAX=4096 edge_round te_int4 1024 w4a4_kv8 ${EDGE_TIMEOUT:-400}
   grep -A1 "shared-memory" "$OUT/edge_te_int4_c1024.txt" | tail -2; grep -E "by pool|floors at" "$OUT/edge_te_int4_c1024.txt"
   autotune_save ;;
B) TE=int4 GRAPH_MAX=4096 edge_round te_int4_bf16 1024 bf16 ${EDGE_TIMEOUT:-200}
   MS=2,32,128,512 TEST_TIMEOUT=100 STAGES_TIMEOUT=140 bash bench/device/kernel1_nodiv.sh ;;
C) GEMM_TIMEOUT=150 bash bench/device/small_tiles.sh
   GEMM_TIMEOUT=120 bash bench/device/prefetch_scales.sh ;;
D) PART=4 bash bench/device/verify_sixteenth.sh ;;
E) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TE=int4 GRAPH_MAX=4096 edge_round te_int4_expandable 1024 w4a4_kv8 ${EDGE_TIMEOUT:-300} ;;
esac
# at most 8 files come back from a call: this PART's results in one archive, beside the caches
(cd "$OUT" && res=$(ls | grep -v -e '^triton_cache' -e '^autotune' -e '^results_') && [ -n "$res" ] \
  && tar czf "results_${PART:-A}.tgz" $res && rm -f $res && ls "$OUT")
