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
