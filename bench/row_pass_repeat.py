"""The default row pass's low-rank input over many calls in one process: every call against float64, and the
split-reduction counters all re-armed after it (a counter left armed would make the next call sum its K splits' partials
before they are written). The forty-third session ran it after a removed kernel's first call of a process gave NaN
after calls of that kernel (docs/BENCHMARKS.md, "Forty-third session").

    PYTHONPATH=.:test python3 bench/row_pass_repeat.py
"""
import torch

from kernels_under_test import gemm_module
from test_kernels_gpu import _layer

mod = gemm_module()
bad = n = 0
worst = 0.0
for K in (3584, 14336):
    layer = _layer(K, 3584, True, seed=K + 1)
    for rep in range(6):
        for M in (77, 512, 800, 1152, 2048, 4096, 2048, 800):
            x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
            ref = (x.double() / layer.smooth.double()) @ layer.lora_down.double()
            for kw in (dict(i8=True), dict(i8=True, reduce_lr=False), dict(f16=True)):
                lr = mod.quantize_activations(x, layer, **kw)[2].sum(0).double()
                e = ((lr - ref).norm() / ref.norm()).item()
                n += 1
                worst = max(worst, e) if e == e else float("inf")
                cnt = [b.count_nonzero().item() for k, v in mod._COUNTERS.items() for b in v[-1:]]
                if not e <= 2e-5 or any(cnt):
                    bad += 1
                    print("BAD", K, M, kw, e, cnt, flush=True)
print(f"default row pass: {n} calls (K 3584 and 14336, 77-4096 rows, fresh x each), {bad} outside 2e-5 of float64 or "
      f"with counters left armed, worst {worst:.2e}")
