"""The CUDA C++ kernels (kernels/w4a4_small_m.cu, kernels/w4a4_quantize_small_m.cu) compiled on this machine with nvcc and
ptxas (no GPU) for the Jetson Orin (sm_87), Ampere (sm_80) and Hopper (sm_90): every instantiation assembles
within the register file, and without spills on the Orin and Hopper (sm_80 is allowed a few: an earlier ptxas
spilled 16 bytes in one of the small-M kernel's instantiations; nvcc 13.0 spills none). tools/setup.sh installs CUDA's compiler from PyPI (nvidia-cuda-nvcc); its numerical
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
QUANTIZER = os.path.join(ROOT, "kernels", "w4a4_quantize_small_m.cu")


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
    # 4 or 8 warps x 3 token tiles x 2 dtypes x (plain or programmatic dependent launch)
    assert len(entries) == 24 and {a for _, a in entries} == {arch}, entries
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
    regs = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    assert len(spills) == 24 and (arch == "80" or not any(spills)), log[-2000:]
    assert len(regs) == 24 and max(regs) <= 255, regs


@pytest.mark.parametrize("arch", ["87", "80", "90"])
def test_small_m_quantizer_compiles_without_spills(arch, tmp_path):
    """kernels/w4a4_quantize_small_m.cu (kernel 1 for M <= 32): both dtypes, no spills, no stack."""
    log = _ptxas_log(QUANTIZER, arch, tmp_path)
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    assert len(entries) == 2 and {a for _, a in entries} == {arch}, entries    # bf16 and fp16
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill stores", log)]
    stack = [int(v) for v in re.findall(r"(\d+) bytes stack frame", log)]
    assert len(spills) == 2 and not any(spills) and not any(stack), log[-2000:]


@pytest.mark.parametrize("arch", ["87", "90"])
def test_programmatic_dependent_launch_is_compiled_for_hopper_only(arch, tmp_path):
    """The GEMM's L2 prefetch and grid-dependency wait (VAR_GEN_W4A4_PDL, kernels/w4a4_small_m.cu) are in the sm_90
    code of each of its dependent-launch instantiations and of no other (the default launch's code stays as
    measured), kernel 1 signals its dependents there, and the Orin's sm_87 code has neither instruction."""
    def ptx(source):
        out = subprocess.run([NVCC, "-O3", "-ptx", f"-arch=sm_{arch}", source, "-o", str(tmp_path / "k.ptx")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return (tmp_path / "k.ptx").read_text()
    gemm, quantizer = ptx(SOURCE), ptx(QUANTIZER)
    entries = len(re.findall(r"\.entry ", gemm))
    waits, prefetches = gemm.count("griddepcontrol.wait"), gemm.count("cp.async.bulk.prefetch.L2")
    signals = quantizer.count("griddepcontrol.launch_dependents")
    assert entries == 24, entries
    if arch == "90":
        assert waits == 12 and prefetches >= 12, (waits, prefetches)
        assert signals == 2, signals          # bf16 and fp16
    else:
        assert waits == prefetches == signals == 0, (waits, prefetches, signals)
