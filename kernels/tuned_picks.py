"""Autotuning picks shipped with the package, per GPU model, so that a fresh install does not autotune.

Why: Triton's autotuner tries every candidate launch configuration of a kernel at the first call of each tuning key
(row bucket, N, K, ...), and a fresh machine's first 8B generation spent 217-310 s doing so on the H100
(docs/BENCHMARKS.md, twenty-third and twenty-fourth sessions); on a Jetson's 16 SMs it is longer still. Triton keeps
its picks on disk (`cache_results`), but under a hash of the Triton version, the compiler backend, the kernel's
source and the candidate list: a Triton upgrade, a kernel edit or another machine's cache misses them all, which is
how the committed Triton-cache picks missed 17 tunings in the twenty-fourth session.

What: `kernels/tuned/<gpu>.json` holds, per autotuned kernel (by its function name), the tuning keys a generation
meets and the configuration the tuner picked for each on that GPU model. `seed_modules` puts them into the kernels'
`Autotuner.cache` (the tuner's in-memory table, consulted before its disk cache and before any trial), each after
checking that the pick is one the kernel's current candidate list, pruned for that key and the running GPU's
architecture, still holds; a pick that is
not is skipped and the tuner tunes that key as before. The picks choose between launch configurations that all
compute the same result (every candidate is checked against the reference on the GPU), so a stale table can cost
speed, never correctness. Refresh a table from a run's Triton cache with

    python3 kernels/tuned_picks.py --from autotune.tgz --device "NVIDIA H100 80GB HBM3" --capability 9.0 \
        --out kernels/tuned/nvidia_h100_80gb_hbm3.json

VAR_GEN_TUNED_PICKS: "auto" (default: the table named after this GPU if shipped, else one made on another GPU model of
the same compute capability, e.g. the H100's on an H200), "0" (none: autotune), or the path of a table to use whatever
the GPU.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import tarfile

TUNED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")
FORMAT = 1


def table_name(device_name: str) -> str:
    """The file a GPU model's table is kept in: 'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3.json'."""
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_") + ".json"


def _config_dict(cfg: dict) -> dict:
    """The fields of a triton.Config that choose a launch (Triton's archive also holds hooks and overrides)."""
    return {"kwargs": dict(cfg["kwargs"]), "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "num_ctas": cfg.get("num_ctas", 1), "maxnreg": cfg.get("maxnreg")}


def archived_picks(source: str):
    """(mtime, kernel name, Triton's record) of every *.autotune.json in a Triton cache directory or a .tgz of one."""
    if os.path.isdir(source):
        for path in glob.glob(os.path.join(source, "**", "*.autotune.json"), recursive=True):
            with open(path) as f:
                yield os.path.getmtime(path), os.path.basename(path)[:-len(".autotune.json")], json.load(f)
        return
    with tarfile.open(source) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith(".autotune.json"):
                record = json.load(io.TextIOWrapper(tar.extractfile(m), encoding="utf-8"))
                yield m.mtime, os.path.basename(m.name)[:-len(".autotune.json")], record


def table_from_archive(source: str, device: str, capability, note: str = "") -> dict:
    """A table from the picks Triton archived in `source`: for each (kernel, key), the candidate with the least time
    (Triton's own rule: the smallest timing list), the most recent record winning where a key was tuned more than
    once (an older one was made for an earlier kernel source)."""
    best = {}
    for mtime, kernel, record in sorted(archived_picks(source), key=lambda r: r[0]):
        timings = record["configs_timings"]
        cfg, t = min(timings, key=lambda ct: ct[1])
        best[(kernel, json.dumps(record["key"]))] = {"key": record["key"], "config": _config_dict(cfg),
                                                     "ms": t[0] if isinstance(t, list) else t}
    picks = {}
    for (kernel, _), entry in sorted(best.items(), key=lambda kv: (kv[0][0], str(kv[1]["key"]))):
        picks.setdefault(kernel, []).append(entry)
    return {"format": FORMAT, "device": device, "capability": list(capability), "note": note, "picks": picks}


def _read_table(path: str) -> dict:
    with open(path) as f:
        table = json.load(f)
    if table.get("format") != FORMAT or not isinstance(table.get("picks"), dict):
        raise ValueError(f"{path}: not a tuned-picks table of format {FORMAT}")
    return table


def same_architecture_table(capability):
    """The path of a shipped table made on another GPU model of this compute capability, or None (the first by file
    name where several are).

    Why: an H200, an H100 PCIe or a GH200 (all sm_90) has no table of its own until someone exports one, and without
    one its first generation spends minutes in the tuner's trials. The H100's picks are valid there (the same
    candidates, every one checked against the reference), if not necessarily the fastest on that model."""
    want = [int(v) for v in capability]
    for path in sorted(glob.glob(os.path.join(TUNED_DIR, "*.json"))):
        try:
            if [int(v) for v in _read_table(path).get("capability", [])] == want:
                return path
        except (OSError, ValueError, TypeError):    # a broken table is reported when it is the one named
            continue
    return None


def load_table(device_name: str, setting: str = None, capability=None):
    """(table, path) for this GPU under VAR_GEN_TUNED_PICKS (or `setting`), or (None, why not). With "auto", the
    table named after this GPU model, else (given the GPU's `capability`) one made on another model of the same
    architecture (`same_architecture_table`; the table's "device" says which)."""
    setting = os.environ.get("VAR_GEN_TUNED_PICKS", "auto") if setting is None else setting
    if setting == "0":
        return None, "off (VAR_GEN_TUNED_PICKS=0)"
    path = os.path.join(TUNED_DIR, table_name(device_name)) if setting == "auto" else setting
    if not os.path.isfile(path):
        if setting != "auto":
            raise FileNotFoundError(f"VAR_GEN_TUNED_PICKS names {path!r}, which does not exist")
        path = same_architecture_table(capability) if capability is not None else None
        if path is None:
            return None, f"none shipped for {device_name}: the first calls autotune"
    return _read_table(path), path


def _same_launch(cfg, entry: dict) -> bool:
    return (cfg.kwargs == entry["kwargs"] and cfg.num_warps == entry["num_warps"]
            and cfg.num_stages == entry["num_stages"] and getattr(cfg, "num_ctas", 1) == entry.get("num_ctas", 1)
            and getattr(cfg, "maxnreg", None) == entry.get("maxnreg"))


def autotuners(module) -> dict:
    """The module's autotuned kernels by function name (the name Triton files their picks under)."""
    from triton.runtime.autotuner import Autotuner
    return {v.base_fn.__name__: v for v in vars(module).values() if isinstance(v, Autotuner)}


def candidates(tuner, key: list, capability) -> list:
    """The configs the tuner would try at `key`: its list, pruned as for a call with the key's values on a GPU
    of `capability` (the prune functions read the architecture from `_ARCH` where no tensor is given)."""
    if tuner.early_config_prune is None:
        return list(tuner.configs)
    named = dict(zip(tuner.keys, key))
    named["_ARCH"] = 10 * capability[0] + capability[1]
    return tuner.early_config_prune(tuner.configs, named)


def seed(tuners: dict, table: dict, capability=None) -> dict:
    """Puts the table's picks into the tuners' in-memory caches. Returns counts: seeded (and their (kernel, key)s in
    "keys"), and skipped because the kernel is not here or the pick is not among its current candidates for that key on a GPU of `capability`
    (default the table's; a table used on another architecture, e.g. an H100's TMA tiles on an sm_87, keeps only
    what the tuner could pick there)."""
    counts = {"seeded": 0, "no_kernel": 0, "not_a_candidate": 0, "keys": set()}
    cap = table["capability"] if capability is None else capability
    for kernel, entries in table["picks"].items():
        tuner = tuners.get(kernel)
        if tuner is None:
            counts["no_kernel"] += len(entries)
            continue
        for e in entries:
            match = [c for c in candidates(tuner, e["key"], cap) if _same_launch(c, e["config"])]
            if not match:
                counts["not_a_candidate"] += 1
                continue
            tuner.cache[tuple(e["key"])] = match[0]
            counts["seeded"] += 1
            counts["keys"].add((kernel, tuple(e["key"])))
    return counts


class Seeding:
    """What `seed_modules` did, and since then how many keys the tuners have tuned (or read from Triton's disk
    cache) beyond the table: a resolution or GPU the table does not cover, or keys the table no longer matches."""

    def __init__(self, tuners: dict, status: str, seeded: set):
        self.tuners, self.status, self.seeded = tuners, status, seeded

    def tuned_here(self) -> int:
        return sum(1 for name, t in self.tuners.items() for k in list(t.cache) if (name, k) not in self.seeded)

    def describe(self) -> str:
        n = self.tuned_here()
        return self.status + (f"; {n} key{'s' if n != 1 else ''} tuned in this process" if n else "")


def seed_modules(modules, device_name: str, setting: str = None, capability=None) -> Seeding:
    """Seeds every autotuned kernel of `modules` from this GPU's table (checked for `capability`, the running GPU's;
    default the table's); returns what happened, for diagnostics."""
    tuners = {}
    for m in modules:
        tuners.update(autotuners(m))
    table, where = load_table(device_name, setting, capability)
    if table is None:
        return Seeding(tuners, where, set())
    c = seed(tuners, table, capability)
    total = sum(len(v) for v in table["picks"].values())
    skipped = total - c["seeded"]
    other = "" if table["device"] == device_name else f", not on this {device_name}"
    return Seeding(tuners, f"{c['seeded']} of {total} from {os.path.basename(where)} (tuned on {table['device']}{other})"
                   + (f"; {skipped} skipped ({c['not_a_candidate']} no longer candidates, {c['no_kernel']} of kernels "
                      "not here), tuned on first use" if skipped else ""), c["keys"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", required=True, help="a Triton cache directory or a .tgz of its picks")
    ap.add_argument("--device", required=True, help="torch.cuda.get_device_name() of the GPU they were tuned on")
    ap.add_argument("--capability", required=True, help="its compute capability, e.g. 9.0")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=None, help="default: kernels/tuned/<device>.json")
    a = ap.parse_args(argv)
    major, minor = (int(v) for v in a.capability.split("."))
    table = table_from_archive(a.source, a.device, (major, minor), a.note)
    out = a.out or os.path.join(TUNED_DIR, table_name(a.device))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{out}: " + ", ".join(f"{k} {len(v)}" for k, v in table["picks"].items()))


if __name__ == "__main__":
    main()
