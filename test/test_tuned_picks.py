"""The autotuning picks shipped per GPU model (kernels/tuned_picks.py): made from Triton's archived picks, checked
against the kernels' current candidates, seeded into the real autotuners, and carried by the installed package.
The seeded pick's launch without any trial is checked in Triton's interpreter (test_kernels_interpreter.py) and on
the GPU (test_kernels_gpu.py)."""
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

triton = pytest.importorskip("triton", reason="Triton not installed (tools/setup.sh installs it)")

from var_gen_ros.quant.dispatch import kernel_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tp():
    return kernel_module("tuned_picks")


@pytest.fixture()
def gemm():
    """The GEMM module, its tuners' caches emptied after each test (seeding writes into the real tuners)."""
    g = kernel_module("w4a4_gemm_triton")
    yield g
    for t in kernel_module("tuned_picks").autotuners(g).values():
        t.cache.clear()


def _record(kernel_cfgs_timings, key):
    """An *.autotune.json as Triton 3.6 writes it: the key and every candidate's config and timings."""
    return {"key": key, "configs_timings": [[{"kwargs": c.kwargs, "num_warps": c.num_warps, "num_ctas": 1,
                                              "num_stages": c.num_stages, "maxnreg": None, "pre_hook": None,
                                              "ir_override": None}, t] for c, t in kernel_cfgs_timings]}


def _tgz(path, records):
    """A .tgz of Triton cache entries <hash>/<kernel>.autotune.json, each with its mtime."""
    with tarfile.open(path, "w:gz") as tar:
        for i, (kernel, record, mtime) in enumerate(records):
            data = json.dumps(record).encode()
            info = tarfile.TarInfo(f"./HASH{i}/{kernel}.autotune.json")
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


I8_KEY_2048 = [2048, 3584, 3584, True, "torch.int8", "torch.float32", "torch.int8", "torch.bfloat16", "torch.float32",
               "torch.float32", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16", "torch.bfloat16"]


def test_shipped_tables_hold_only_current_candidates_and_seed_every_pick(tp, gemm):
    """Every shipped table's picks are among its kernels' candidates for their keys as the source stands now (a
    kernel's config list changed without the tables refreshed fails here), and seeding puts each into its tuner."""
    attn = kernel_module("int8_kv_attention_triton")
    tables = glob.glob(os.path.join(ROOT, "kernels", "tuned", "*.json"))
    assert tables, "no shipped table"
    for path in tables:
        table, where = tp.load_table("any", setting=path)
        assert os.path.basename(path) == tp.table_name(table["device"]), path
        tuners = {**tp.autotuners(gemm), **tp.autotuners(attn)}
        counts = tp.seed(tuners, table)
        total = sum(len(v) for v in table["picks"].values())
        assert {k: v for k, v in counts.items() if k != "keys"} == \
            {"seeded": total, "no_kernel": 0, "not_a_candidate": 0}, (path, counts)
        assert len(counts["keys"]) == total
        for kernel, entries in table["picks"].items():
            for e in entries:
                got = tuners[kernel].cache[tuple(e["key"])]
                assert got.kwargs == e["config"]["kwargs"] and got.num_warps == e["config"]["num_warps"]
        # what a 1024² generation with CFG meets: the i8 GEMM (both layouts), the qkv GEMM, the INT8-KV attention
        assert {"_w4a4_i8_kernel", "_w4a4_i8_qkv_kernel", "_attn_int8_kernel"} <= set(table["picks"]), path
        for t in tuners.values():
            t.cache.clear()


def test_table_from_archive_takes_the_least_time_and_the_latest_record(tp, gemm, tmp_path):
    big = [c for c in gemm.I8_LARGE_M_CONFIGS if c.kwargs.get("TMA") and c.kwargs.get("KSTEP") == 128]
    plain = [c for c in gemm.I8_LARGE_M_CONFIGS if not c.kwargs.get("TMA") and c.kwargs["SPLIT_K"] == 1]
    a, b, c = plain[0], big[0], plain[1]
    older = _record([(a, [0.10, 0.09, 0.11]), (b, [0.20, 0.19, 0.21])], I8_KEY_2048)     # a best, made first
    newer = _record([(a, [0.30, 0.29, 0.31]), (b, [0.12, 0.11, 0.13]), (c, [0.12, 0.10, 0.14])], I8_KEY_2048)
    small_key = [32] + I8_KEY_2048[1:3] + [False] + I8_KEY_2048[4:]
    # a TMA tile is no candidate without the workspace (W8 False): the table keeps it, seeding skips it
    stale = _record([(b, [0.05, 0.05, 0.05])], small_key)
    archive = tmp_path / "picks.tgz"
    _tgz(archive, [("_w4a4_i8_kernel", newer, 2000), ("_w4a4_i8_kernel", older, 1000),
                   ("_w4a4_i8_kernel", stale, 1500), ("_gone_kernel", older, 1000)])
    out = tmp_path / "t.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "kernels", "tuned_picks.py"), "--from", str(archive),
                    "--device", "Test GPU 1", "--capability", "9.0", "--out", str(out)], check=True,
                   capture_output=True, text=True)
    table = json.loads(out.read_text())
    assert table["device"] == "Test GPU 1" and table["capability"] == [9, 0]
    picks = {tuple(e["key"]): e for e in table["picks"]["_w4a4_i8_kernel"]}
    assert len(picks) == 2
    # the later record wins; within it the least time, ties broken on the next quantile as Triton compares lists
    assert picks[tuple(I8_KEY_2048)]["config"]["kwargs"] == c.kwargs and picks[tuple(I8_KEY_2048)]["ms"] == 0.12
    assert picks[tuple(small_key)]["config"]["kwargs"] == b.kwargs
    # the same from a Triton cache directory (what `var-gen warm-cache --export-picks` reads)
    cache = tmp_path / "triton_cache"
    with tarfile.open(archive) as tar:
        tar.extractall(cache)
    assert tp.table_from_archive(str(cache), "Test GPU 1", (9, 0)) == {**table, "note": ""}
    seeding = tp.seed_modules([gemm], "whatever", setting=str(out))
    status = seeding.describe()
    assert status.startswith("1 of 3 from t.json (tuned on Test GPU 1, not on this whatever)"), status
    assert status.endswith("1 no longer candidates, 1 of kernels not here), tuned on first use"), status
    tuner = tp.autotuners(gemm)["_w4a4_i8_kernel"]
    assert tuner.cache[tuple(I8_KEY_2048)] in gemm.I8_LARGE_M_CONFIGS
    assert tuner.cache[tuple(I8_KEY_2048)].kwargs == c.kwargs and tuple(small_key) not in tuner.cache
    # a key the tuner fills itself (here by hand, as its trials would) is counted as tuned in this process
    tuner.cache[tuple(small_key)] = plain[0]
    assert seeding.tuned_here() == 1 and seeding.describe() == status + "; 1 key tuned in this process"


def test_candidates_follow_the_architecture_of_the_table(tp, gemm):
    """TMA tiles are candidates on sm_90 with the workspace, not on the Orin's sm_87: an H100 table's TMA pick
    would not be seeded on an sm_87 table's terms."""
    tuner = tp.autotuners(gemm)["_w4a4_i8_kernel"]
    on_h100 = tp.candidates(tuner, I8_KEY_2048, (9, 0))
    on_orin = tp.candidates(tuner, I8_KEY_2048, (8, 7))
    assert any(c.kwargs.get("TMA") for c in on_h100) and not any(c.kwargs.get("TMA") for c in on_orin)
    assert set(map(id, on_orin)) < set(map(id, on_h100))
    # the shipped H100 table used on an sm_87 (VAR_GEN_TUNED_PICKS=FILE): its TMA picks are not seeded there
    table, _ = tp.load_table("NVIDIA H100 80GB HBM3", setting="auto")
    tma = sum(e["config"]["kwargs"].get("TMA", False) for v in table["picks"].values() for e in v)
    counts = tp.seed(tp.autotuners(gemm), {**table, "picks": {k: v for k, v in table["picks"].items()
                                                             if k.startswith("_w4a4")}}, capability=(8, 7))
    assert tma > 0 and counts["not_a_candidate"] == tma, (tma, counts)
    assert not any(c.kwargs.get("TMA") for c in tuner.cache.values())


def test_load_table_says_clearly_what_it_uses(tp, tmp_path):
    assert tp.load_table("NVIDIA H100 80GB HBM3", setting="0") == (None, "off (VAR_GEN_TUNED_PICKS=0)")
    table, why = tp.load_table("Orin (nvgpu)", setting="auto")
    assert table is None and why == "none shipped for Orin (nvgpu): the first calls autotune"
    table, where = tp.load_table("NVIDIA H100 80GB HBM3", setting="auto")
    assert os.path.basename(where) == "nvidia_h100_80gb_hbm3.json" and table["picks"]
    with pytest.raises(FileNotFoundError, match="VAR_GEN_TUNED_PICKS names .*missing.json"):
        tp.load_table("x", setting=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 99, "picks": {}}))
    with pytest.raises(ValueError, match="not a tuned-picks table of format 1"):
        tp.load_table("x", setting=str(bad))
    bad.write_text('{"format": 1, "picks": {')                 # cut short
    with pytest.raises(ValueError):                            # json's decode error is a ValueError
        tp.load_table("x", setting=str(bad))
    assert tp.table_name("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3.json"


def test_another_model_of_the_architecture_takes_its_table(tp, tmp_path, monkeypatch):
    """An H200 (sm_90, no table of its own) gets the H100's table, and says so; an sm_87 or an unknown capability
    gets none; a table named after the GPU wins over one of its architecture."""
    table, where = tp.load_table("NVIDIA H200", setting="auto", capability=(9, 0))
    assert os.path.basename(where) == "nvidia_h100_80gb_hbm3.json" and table["device"] == "NVIDIA H100 80GB HBM3"
    assert tp.load_table("NVIDIA H200", setting="auto")[0] is None          # the capability not given
    assert tp.load_table("Orin (nvgpu)", setting="auto", capability=(8, 7))[0] is None
    from var_gen_ros.quant.dispatch import kernel_module
    gemm = kernel_module("w4a4_gemm_triton")
    seeding = tp.seed_modules([gemm], "NVIDIA H200", setting="auto", capability=(9, 0))
    n = sum(len(v) for k, v in table["picks"].items() if k.startswith("_w4a4"))
    assert seeding.describe().startswith(f"{n} of {sum(len(v) for v in table['picks'].values())} from "
                                         "nvidia_h100_80gb_hbm3.json (tuned on NVIDIA H100 80GB HBM3, not on this "
                                         "NVIDIA H200)"), seeding.describe()
    # a table of the GPU's own name first (a directory holding both)
    own = {**table, "device": "NVIDIA H200", "picks": {}}
    (tmp_path / "nvidia_h200.json").write_text(json.dumps(own))
    (tmp_path / "nvidia_h100_80gb_hbm3.json").write_text(json.dumps(table))
    monkeypatch.setattr(tp, "TUNED_DIR", str(tmp_path))
    assert tp.load_table("NVIDIA H200", setting="auto", capability=(9, 0))[0]["device"] == "NVIDIA H200"
    (tmp_path / "nvidia_h200.json").unlink()
    (tmp_path / "a_broken.json").write_text("{")         # skipped while looking for one of the architecture
    assert tp.load_table("NVIDIA H200", setting="auto", capability=(9, 0))[0]["device"] == "NVIDIA H100 80GB HBM3"


def test_the_installed_package_carries_the_tables_and_every_kernel_source(tmp_path):
    """A wheel of the package holds the shipped tables and every file the CUDA sources include (an installed
    robot builds the small-M extension from them)."""
    # built from a copy: setuptools writes build/ and *.egg-info beside setup.py, and reuses a build/ it finds
    src = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.safetensors")
    src.mkdir()
    for name in ("setup.py", "package.xml"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for name in ("resource", "launch", "config", "var_gen_ros", "kernels"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=junk)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = os.path.join(ROOT, "kernels")
    need = {f"var_gen_ros_kernels/tuned/{os.path.basename(p)}" for p in glob.glob(os.path.join(kernels, "tuned", "*.json"))}
    for src in glob.glob(os.path.join(kernels, "*.cu")) + glob.glob(os.path.join(kernels, "*.cpp")):
        need.add(f"var_gen_ros_kernels/{os.path.basename(src)}")
        for line in open(src):
            if line.startswith('#include "'):
                need.add(f"var_gen_ros_kernels/{line.split(chr(34))[1]}")
    assert "var_gen_ros_kernels/tuned_picks.py" in names
    assert need <= names, sorted(need - names)


def test_autotune_first_leaves_each_tuner_one_candidate(tp, gemm, monkeypatch):
    """kernels/tuning.py: with VAR_GEN_AUTOTUNE_FIRST each autotuned kernel's pruning leaves only the first candidate
    of those it leaves without it (so the tuner runs no trial), for the GEMMs and the INT8-KV attention alike."""
    tuning = kernel_module("tuning")
    attn = kernel_module("int8_kv_attention_triton")
    tuners = {**tp.autotuners(gemm), **tp.autotuners(attn)}
    keys = {"_w4a4_i8_kernel": I8_KEY_2048, "_w4a4_i8_kernel@2": [16] + I8_KEY_2048[1:3] + [False] + I8_KEY_2048[4:],
            "_attn_int8_kernel": [1024, 4096, True, 128]}
    for first_only in (False, True):
        monkeypatch.setattr(tuning, "FIRST_ONLY", first_only)
        for name, key in keys.items():
            tuner = tuners[name.split("@")[0]]
            monkeypatch.setattr(tuning, "FIRST_ONLY", False)
            every = tp.candidates(tuner, key, (9, 0))
            monkeypatch.setattr(tuning, "FIRST_ONLY", first_only)
            got = tp.candidates(tuner, key, (9, 0))
            assert len(every) > 1, name
            assert got == (every[:1] if first_only else every), name
