"""The kernel cache directory: Triton and torch's extension builder take it, and its status counts what is there."""
import os

import pytest

from var_gen_ros.kernel_cache import describe, kernel_cache_status, triton_cache_dir, use_kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _restore_env_after(monkeypatch, unset=False):
    """monkeypatch records the cache variables (use_kernel_cache sets them in os.environ), so they are restored
    after the test; with unset, they are also removed for it."""
    for var in ("TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "TRITON_HOME"):
        old = os.environ.get(var)
        monkeypatch.setenv(var, "recorded")
        if old is None or unset:
            monkeypatch.delenv(var)
        else:
            monkeypatch.setenv(var, old)


def test_triton_and_torch_build_where_use_kernel_cache_points(tmp_path, monkeypatch):
    _restore_env_after(monkeypatch, unset=True)
    triton = pytest.importorskip("triton")
    assert triton_cache_dir() == triton.knobs.cache.dir          # the same rule as Triton's, unset
    dirs = use_kernel_cache(str(tmp_path / "kc"))
    assert dirs == {"TRITON_CACHE_DIR": str(tmp_path / "kc" / "triton"),
                    "TORCH_EXTENSIONS_DIR": str(tmp_path / "kc" / "torch_extensions")}
    assert all(os.path.isdir(d) for d in dirs.values())
    assert triton.knobs.cache.dir == triton_cache_dir() == dirs["TRITON_CACHE_DIR"]
    from torch.utils import cpp_extension
    build = cpp_extension._get_build_directory("var_gen_probe", verbose=False)
    assert build == os.path.join(dirs["TORCH_EXTENSIONS_DIR"], "var_gen_probe")


def test_status_counts_compiled_kernels_and_autotuning_picks(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")
    assert kernel_cache_status()["autotune_picks"] == 0
    for h, names in {"A1": ["_w4a4_i8_kernel.cubin", "_w4a4_i8_kernel.json"],
                     "B2": ["_w4a4_i8_kernel.autotune.json"], "C3": ["_attn_int8_kernel.cubin", "x.ptx"]}.items():
        (tmp_path / h).mkdir()
        for n in names:
            (tmp_path / h / n).write_text("{}")
    st = kernel_cache_status()
    assert (st["compiled_kernels"], st["autotune_picks"], st["torch_extensions"]) == (2, 1, "torch's default")
    assert describe(st).startswith(f"{tmp_path}: 2 compiled kernels, 1 autotuning picks at start")


def test_an_unusable_cache_directory_is_named_in_the_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="file"):
        use_kernel_cache(str(blocker))






def test_the_shared_defaults_are_the_nodes_declared_ones():
    """var-gen warm-cache builds with product.DEFAULTS where no file says otherwise: they must be gen_node's."""
    import ast
    import re
    from var_gen_ros.product import DEFAULTS, SETTINGS
    src = open(os.path.join(ROOT, "var_gen_ros", "node.py")).read()
    declared = {m.group(1): ast.literal_eval(m.group(2)) for m in re.finditer(r'P\("([a-z_]+)", ([^,]+),', src)}
    assert set(SETTINGS) <= set(DEFAULTS)
    assert {k: declared[k] for k in DEFAULTS} == DEFAULTS


def test_warm_cache_runs_the_edge_preset_as_the_node_builds_it(tmp_path, monkeypatch, capsys):
    """`var-gen warm-cache` with the node's parameter files (gen.yaml, then the edge preset) on the embedded model:
    the same precision as the edge-preset node reports (W4A4 loaded, INT8 KV, INT4 text encoder), one timed run,
    and the kernel cache directory made and reported. On the CPU nothing compiles, so it stays empty."""
    import json
    from var_gen_ros.cli import main
    _restore_env_after(monkeypatch)
    cache = tmp_path / "kc"
    rc = main(["warm-cache", "--params-file", os.path.join(ROOT, "config", "gen.yaml"),
               "--params-file", os.path.join(ROOT, "config", "edge_8b.yaml"),
               "-p", "device:=cpu", "-p", "dtype:=fp32", "-p", f"kernel_cache_dir:={cache}",
               "-p", f"offload_dir:={tmp_path / 'offload'}", "--runs", "1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert "W4A4 loaded" in out["precision"] and "INT8 KV" in out["precision"], out["precision"]
    assert "text encoder INT4" in out["precision"]
    assert f"offloaded to {tmp_path / 'offload'}" in out["precision"], out["precision"]     # the preset's offload
    assert len(out["runs"]) == 1 and len(out["runs"][0]["seconds"]) == 1 and out["runs"][0]["seconds"][0] > 0
    for key in ("kernel_cache_before", "kernel_cache_after"):
        assert out[key]["triton_cache"] == str(cache / "triton") and out[key]["autotune_picks"] == 0
    assert os.path.isdir(cache / "torch_extensions")
    assert out["kernels"].startswith("pytorch reference (no CUDA device)"), out["kernels"]


def test_warm_cache_refuses_bad_input_before_running(tmp_path, monkeypatch, capsys):
    from var_gen_ros.cli import main
    _restore_env_after(monkeypatch)
    assert main(["warm-cache", "-p", "device:=cpu", "--sizes", "64x64", "--runs", "1"]) == 2
    assert "generates 128x128 only, asked 64x64" in capsys.readouterr().err
    assert main(["warm-cache", "-p", "device=cpu"]) == 2
    assert "expected name:=value" in capsys.readouterr().err
    assert main(["warm-cache", "--params-file", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    out = tmp_path / "picks.json"
    assert main(["warm-cache", "-p", "device:=cpu", "--export-picks", str(out)]) == 2
    assert "--export-picks writes the picks Triton made on a GPU; this run has none (device 'cpu')" in \
        capsys.readouterr().err and not out.exists()
