"""The kernel cache directory: Triton and torch's extension builder take it, and its status counts what is there."""
import os

import pytest

from var_gen_ros.kernel_cache import describe, kernel_cache_status, triton_cache_dir, use_kernel_cache


def test_triton_and_torch_build_where_use_kernel_cache_points(tmp_path, monkeypatch):
    for var in ("TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "TRITON_HOME"):
        monkeypatch.setenv(var, "recorded")       # so that monkeypatch restores what was there, use_kernel_cache's too
        monkeypatch.delenv(var)
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
