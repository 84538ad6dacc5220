import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    from var_gen_ros.infinity import tiny_config
    from var_gen_ros.infinity.tiny import make_random_bundle
    return make_random_bundle(str(tmp_path_factory.mktemp("tiny_bundle")), tiny_config(False), seed=0)


@pytest.fixture(scope="session")
def tiny_patchify_bundle(tmp_path_factory):
    from var_gen_ros.infinity import tiny_config
    from var_gen_ros.infinity.tiny import make_random_bundle
    return make_random_bundle(str(tmp_path_factory.mktemp("tiny_patchify_bundle")), tiny_config(True), seed=1)


def _needs_gpu(item):
    return any(str(m.kwargs.get("reason", "")).startswith("needs a CUDA GPU") for m in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    # VAR_GEN_GPU_TESTS_ONLY=1 (bench/device/gpu_tests_parts.sh with GPU_ONLY=1): only the tests that CI skips for
    # want of a GPU, from every file, so that a device call spends none of its time on the CPU suite
    if os.environ.get("VAR_GEN_GPU_TESTS_ONLY") != "1":
        return
    keep, drop = [], []
    for item in items:
        (keep if _needs_gpu(item) else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
