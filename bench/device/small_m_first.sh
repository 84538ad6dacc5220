#!/bin/bash
# The CUDA C++ small-M W4A4 GEMM (kernels/w4a4_small_m.cu, path "i8s"), first run (nineteenth session): its build
# by torch.utils.cpp_extension (timed; the build directory comes back in $OUT/torch_ext to be carried as
# .tcache/torch_ext), an integer check of the kernel alone against the exact product it computes (which output
# elements are wrong, if any), its GPU tests, then bench/small_m_sweep.py at the generation's rows up to 32.
source bench/device/autotune_carry.sh
export TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
mkdir -p "$TORCH_EXTENSIONS_DIR"
nvcc --version | tail -1
t0=$(date +%s)
python3 - <<'PY' 2>&1 | grep -v -i warn | tail -12
import sys, torch
sys.path.insert(0, "test")
from kernels_under_test import gemm_module
from test_kernels_gpu import _layer
from var_gen_ros.quant.int4 import unpack_int4
mod = gemm_module(); sm = mod.small_m
print("built:", sm.extension() is not None, sm.build_status())
for K, N, M, mt, s in [(256, 64, 8, 2, 1), (3584, 3584, 2, 2, 1), (3584, 3584, 32, 4, 3), (14336, 3584, 17, 2, 8)]:
    layer = _layer(K, N, False, seed=1)
    x = (torch.randn(M, K, device="cuda") * 2).bfloat16()
    q, ux, lr = mod.quantize_activations(x, layer, i8=True)
    wu = layer.weight_units()
    m = torch.round(layer.wscales.float() / wu[:, None])
    qw = unpack_int4(layer.qweight).double() * m.double().repeat_interleave(64, 1)
    exact = (q.double() @ qw.t()) * ux.double()[:, None] * wu.double()[None, :] + lr.sum(0).double() @ layer.lora_up.double().t()
    y = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
    sm.w4a4_small_m(q, ux, layer, wu, lr, y, mt=mt, splits=s)
    err = (y.double() - exact).abs() / exact.abs().max()
    bad = (err > 1e-2).nonzero()
    print(K, N, M, mt, s, "max err", f"{err.max().item():.2e}", "bad", bad.shape[0], "first", bad[:6].tolist(),
          "bad rows mod 16", sorted(set((bad[:, 1] % 16).tolist()))[:16], "bad tokens", sorted(set(bad[:, 0].tolist()))[:16])
PY
echo "build + check s $(( $(date +%s) - t0 ))"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q test/test_kernels_gpu.py -k "small_m or default_path_is_i8" \
  > "$OUT/test_small_m.txt" 2>&1
echo "tests rc $?"; grep -E "passed|failed|Error|assert" "$OUT/test_small_m.txt" | head -12
timeout ${SWEEP_TIMEOUT:-240} python3 bench/small_m_sweep.py --ms ${MS:-2,8,32} --json "$OUT/small_m_sweep.json" \
  > "$OUT/small_m_sweep.txt" 2>&1
echo "sweep rc $?"; grep -v -i warn "$OUT/small_m_sweep.txt" | cut -c1-240
mkdir -p "$OUT/torch_ext" && cp -r "$TORCH_EXTENSIONS_DIR"/. "$OUT/torch_ext/" && find "$OUT/torch_ext" -name "*.o" -delete
du -sh "$OUT/torch_ext"
autotune_save
