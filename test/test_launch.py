"""The launch file: statically (names it uses exist), and through launch_ros where it is installed."""
import ast
import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch", "gen.launch.py")


def test_launch_file_names_existing_things():
    src = open(LAUNCH).read()
    ast.parse(src)
    setup = open(os.path.join(ROOT, "setup.py")).read()
    for exe in re.findall(r'executable="([^"]+)"', src):
        if exe == "rviz2":
            continue
        assert re.search(rf'"{exe} = var_gen_ros\.node:main"', setup), f"console script {exe} missing"
    for rel in re.findall(r'"config", "([^"]+)"', src):
        assert os.path.isfile(os.path.join(ROOT, "config", rel)), rel
    # setup.py installs launch/ and config/ into share/var_gen_ros
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup


def test_param_file_declares_only_known_parameters():
    params = yaml.safe_load(open(os.path.join(ROOT, "config", "gen.yaml")))["/**"]["ros__parameters"]
    node_src = open(os.path.join(ROOT, "var_gen_ros", "node.py")).read()
    declared = set(re.findall(r'P\("([a-z_]+)"', node_src))
    assert set(params) == declared


def test_launch_description_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; runs on a ROS 2 install")
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert len(ld.entities) >= 6


def test_the_benchmark_the_generator_and_the_node_share_the_graph_defaults():
    """graph_max_tokens and graph_pool: the node's declared defaults, config/gen.yaml, the Generator's defaults and
    bench/edge_proof.py's agree, so the edge proof measures what the product runs."""
    import inspect
    from var_gen_ros.infinity import graphs
    from var_gen_ros.infinity.sampler import Generator
    params = yaml.safe_load(open(os.path.join(ROOT, "config", "gen.yaml")))["/**"]["ros__parameters"]
    node_src = open(os.path.join(ROOT, "var_gen_ros", "node.py")).read()
    bench_src = open(os.path.join(ROOT, "bench", "edge_proof.py")).read()
    node_max = int(re.search(r'P\("graph_max_tokens", (\d+)', node_src).group(1))
    node_pool = re.search(r'P\("graph_pool", "([a-z_]+)"', node_src).group(1)
    bench_max = int(re.search(r'"--graph-max-tokens", type=int, default=(\d+)', bench_src).group(1))
    gen_max = inspect.signature(Generator.__init__).parameters["graph_max_tokens"].default
    assert node_max == params["graph_max_tokens"] == gen_max == bench_max, (node_max, params["graph_max_tokens"], gen_max, bench_max)
    pool_default = graphs.GRAPH_POOL if "VAR_GEN_GRAPH_POOL" not in os.environ else node_pool
    assert node_pool == params["graph_pool"] == pool_default, (node_pool, params["graph_pool"], pool_default)


def test_edge_preset_is_what_the_edge_proof_measured():
    """config/edge_8b.yaml names only declared parameters, each a value the node accepts, and is the setting of
    the committed edge-proof measurements it cites (mode, text encoder, slices, graphs, offloaded weights)."""
    import json
    params = yaml.safe_load(open(os.path.join(ROOT, "config", "edge_8b.yaml")))["/**"]["ros__parameters"]
    node_src = open(os.path.join(ROOT, "var_gen_ros", "node.py")).read()
    declared = set(re.findall(r'P\("([a-z_]+)"', node_src))
    assert set(params) <= declared, set(params) - declared
    choices = ast.literal_eval(re.search(r"^CHOICES = (\{.*?\})$", node_src, re.S | re.M).group(1))
    for name, allowed in choices.items():
        if name in params:
            assert params[name] in allowed, (name, params[name])
    # the runs it cites: 2048-token slices, resident, side by side with 1024 (fortieth session)
    run = json.load(open(os.path.join(ROOT, "docs", "results", "edge_chunk_w4a4_kv8_2048_fortieth_h100.json")))["w4a4_kv8"]
    assert (params["quantization"], params["kv_cache"]) == ("w4a4", "int8")
    assert params["text_encoder"] == run["text_encoder"] == "int4"
    bench_src = open(os.path.join(ROOT, "bench", "edge_proof.py")).read()      # and what it measures by default
    assert re.search(r'"--text-encoder", default="([a-z0-9]+)"', bench_src).group(1) == params["text_encoder"]
    assert params["activation_chunk"] == run["chunk_tokens"]
    assert params["cuda_graphs"] and "4096 tokens" in run["runs"][0]["cuda_graphs"] and params["graph_max_tokens"] == 4096
    assert "shared memory pool" in run["runs"][0]["cuda_graphs"] and params["graph_pool"] == "shared"
    # the weights that run once offloaded (thirty-first session; the run cited, fortieth), to a per-user directory (no
    # machine's path), and the run it cites: offloaded, every setting above the same, a third of bf16's peak or less
    results = os.path.join(ROOT, "docs", "results")
    off = json.load(open(os.path.join(results, "edge_chunk_offloaded_2048_fortieth_h100.json")))["w4a4_kv8"]
    bf16 = json.load(open(os.path.join(results, "edge_chunk_bf16_1024_fortieth_h100.json")))["bf16"]
    assert params["offload_dir"].startswith("~/") and "offloaded to" in off["text_encoder_mode"]
    assert (off["text_encoder"], off["chunk_tokens"]) == (params["text_encoder"], params["activation_chunk"])
    assert "4096 tokens" in off["runs"][0]["cuda_graphs"] and "shared memory pool" in off["runs"][0]["cuda_graphs"]
    peak, bf16_peak = off["runs"][0]["memory_bytes"]["peak_allocated"], bf16["uncapped"]["memory_bytes"]["peak_allocated"]
    assert peak <= bf16_peak / 3, (peak, bf16_peak)


def test_readme_documents_every_parameter_of_the_node():
    """The README's parameter table (rows: names | gen.yaml value | when settable | what) names every parameter
    node.py declares, and only those, each with when the node lets it be set: never (`managed`), while unconfigured
    (what builds the model, node.BUILD) or at run time."""
    node_src = open(os.path.join(ROOT, "var_gen_ros", "node.py")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    declared = set(re.findall(r'P\("([a-z_]+)"', node_src))
    build = set(re.findall(r'"([a-z_]+)"', re.search(r"^BUILD = \{(.*?)\}", node_src, re.S | re.M).group(1)))
    rows = re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \| [^|]* \| (no|yes|unconfigured) \|", readme, re.M)
    table = {name: when for names, when in rows for name in re.findall(r"`([a-z_]+)`", names)}
    assert set(table) == declared, (sorted(declared - set(table)), sorted(set(table) - declared))
    for name, when in table.items():
        assert when == ("no" if name == "managed" else "unconfigured" if name in build else "yes"), (name, when)
