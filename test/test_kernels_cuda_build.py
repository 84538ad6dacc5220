"""The CUDA C++ kernels (kernels/w4a4_small_m.cu, kernels/w4a4_tiled.cu) compiled on this machine with nvcc and
ptxas (no GPU) for the Jetson Orin (sm_87), Ampere (sm_80) and Hopper (sm_90): every instantiation assembles
within the register file, and without spills on the Orin and Hopper (on sm_80 ptxas spills 16 bytes in one of
the small-M kernel's twelve); the tiled kernel's six fit 128 registers (two 8-warp or four 4-warp blocks per
SM), without spills on the Orin and Ampere and with at most 16 bytes on Hopper. tools/setup.sh installs CUDA's compiler from PyPI (nvidia-cuda-nvcc); its numerical
checks are in test_kernels_gpu.py (GPU only)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "kernels", "w4a4_small_m.cu")
TILED = os.path.join(ROOT, "kernels", "w4a4_tiled.cu")


def _nvcc():
    """nvcc from the PyPI wheel in this environment (site-packages/nvidia/cu*/bin), else from PATH."""
    for site in sys.path:
        found = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "bin", "nvcc")))
        if found:
            return found[-1]
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="no nvcc (tools/setup.sh installs nvidia-cuda-nvcc from PyPI)")


def _ptxas_log(source, arch, tmp_path) -> str:
    out = subprocess.run([NVCC, "-O3", "-c", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
                          source, "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


@pytest.mark.parametrize("arch", ["87", "80", "90"])
def test_small_m_kernel_compiles_without_spills(arch, tmp_path):
    log = _ptxas_log(SOURCE, arch, tmp_path)
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    assert len(entries) == 12 and {a for _, a in entries} == {arch}, entries    # 4 or 8 warps x 3 token tiles x 2 dtypes
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    assert len(spills) == 12 and (arch == "80" or not any(spills)), log[-2000:]
    assert len(regs) == 12 and max(regs) <= 255, regs


@pytest.mark.parametrize("arch", ["87", "80", "90"])
def test_tiled_kernel_compiles_without_spills(arch, tmp_path):
    log = _ptxas_log(TILED, arch, tmp_path)
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    assert len(entries) == 6 and {a for _, a in entries} == {arch}, entries    # 3 tiles x 2 dtypes
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    # sm_90: ptxas keeps up to 16 bytes of the epilogue's addresses in local memory under the 128-register cap
    assert len(spills) == 6 and (max(spills) <= 16 if arch == "90" else not any(spills)), log[-2000:]
    assert len(regs) == 6 and max(regs) <= 128, regs     # __launch_bounds__: 512 threads an SM
