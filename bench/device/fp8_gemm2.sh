#!/bin/bash
# Quantizer launch variants (bf16x2 low-rank dot), the FP8 paths (packed and unpacked weights) vs INT8
# vs bf16, and a per-tile error check of the FP8 kernel at 3584->14336.
export PYTHONUNBUFFERED=1
OUT=${OUT:-.}
timeout 200 python3 bench/gemm_variants.py --quantize-only --shapes 3584x10752,14336x3584 --ms 512,2048,8192 \
  --json "$OUT/quantize_variants_h100.json" 2>&1 | grep -v Warning | python3 -c "
import sys, json
for l in sys.stdin:
    if not l.startswith('{'): print(l.rstrip()); continue
    r = json.loads(l); print(r['K'], r['M'], 'best', r['best'], {k: (round(v['ms'], 4), v['codes_equal'], '%.1e' % v['lr_err']) for k, v in r.items() if isinstance(v, dict)})
"
python3 - <<'PY'
import sys, torch
sys.path.insert(0, "."); sys.path.insert(0, "test")
from test_kernels_gpu import _layer
from kernels_under_test import gemm_module
g = gemm_module()
layer = _layer(3584, 14336, True, 0)
for M in (512, 2048):
    x = (torch.randn(M, 3584, device="cuda") * 2).bfloat16()
    ref = layer.reference_forward(x).float()
    errs = {}
    for p in ("int8", "fp8"):
        for c in (g.FP8_SMALL_M_CONFIGS + g.FP8_LARGE_M_CONFIGS if p == "fp8" else g.LARGE_M_CONFIGS):
            cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            y = torch.full((M, 14336), float("nan"), device="cuda", dtype=torch.bfloat16)
            try:
                g.w4a4_linear(x, layer, out=y, path=p, config=cfg)
                errs[p + str(tuple(cfg.values()))] = round(((y.float() - ref).norm() / ref.norm()).item(), 5)
            except Exception as e:
                errs[p + str(tuple(cfg.values()))] = str(e)[:60]
    print("3584->14336 M", M, errs, flush=True)
PY
timeout 300 python3 bench/gemm_variants.py --variants "" --shapes 3584x10752,14336x3584,3584x14336 \
  --ms 32,512,2048,8192 --json "$OUT/fp8_paths_h100.json" 2>&1 | grep -v Warning | python3 -c "
import sys, json
for l in sys.stdin:
    if not l.startswith('{'): print(l.rstrip()); continue
    r = json.loads(l); print({k: v for k, v in r.items() if not k.endswith('_tile')})
"
