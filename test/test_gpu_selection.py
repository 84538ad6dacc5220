"""VAR_GEN_GPU_TESTS_ONLY=1 (test/conftest.py) keeps the tests CI skips for want of a GPU and no other: a device call
(bench/device/gpu_tests_parts.sh, GPU_ONLY=1) runs them from every file and no CPU test."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collected(env_value, *paths):
    env = dict(os.environ, VAR_GEN_GPU_TESTS_ONLY=env_value)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", *paths],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def test_gpu_only_collects_the_gpu_tests_of_every_file_and_no_cpu_test():
    files = ["test/test_parking.py", "test/test_staged_read.py", "test/test_schedules.py"]
    every, gpu = _collected("0", *files), _collected("1", *files)
    assert gpu < every
    # the parametrized case whose only GPU part is its "cuda" parameter, and a whole GPU test
    assert "test/test_parking.py::test_a_prefetched_load_gives_the_parked_bits_while_other_work_runs[cuda]" in gpu
    assert "test/test_parking.py::test_a_prefetched_load_gives_the_parked_bits_while_other_work_runs[cpu]" not in gpu
    assert any(t.startswith("test/test_staged_read.py::") for t in gpu)
    assert not any(t.startswith("test/test_schedules.py::") for t in gpu)
    # at least one test per GPU skip reason written in these files (a parametrized GPU test gives one per case)
    sources = "".join(open(os.path.join(ROOT, f)).read() for f in files)
    assert len(gpu) >= sources.count('reason="needs a CUDA GPU')
