"""Compile every kernel variant the dispatch may build on another GPU architecture (default: the Jetson
Orin's sm_87) with Triton's own compiler and ptxas, on this machine (no GPU needed): does each compile,
does it fit the chip's shared memory, its registers and spills, which MMA instructions it uses.

    python3 bench/target_compile.py --arch 87 --json docs/results/target_compile_sm87.json

See kernels/targets.py for what is listed and why.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from var_gen_ros.quant.dispatch import kernel_module  # noqa: E402

targets = kernel_module("targets")


def _one(args):
    i, arch, overrides = args
    v = targets.variants(arch)[i]
    known = {p.name for p in v.kernel.params}
    v.constexprs.update({k: val for k, val in overrides.items() if k in known})
    t = time.perf_counter()
    r = targets.compile_variant(v, arch, ptxas_report=True)
    r["compile_s"] = round(time.perf_counter() - t, 2)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=targets.ORIN, help="compute capability as 87, 80, 90, ...")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="", help="kernel family names, comma separated (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="override a constexpr in every variant that has it (e.g. LR_BF16=0: the tf32x3 epilogue)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    overrides = {k: int(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    vs = targets.variants(a.arch)
    idx = [i for i, v in enumerate(vs) if not a.only or targets.kernel_family(v.name) in a.only.split(",")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(_one, [(i, a.arch, overrides) for i in idx]))
    wall = time.perf_counter() - t0
    limit = targets.SHARED_LIMIT.get(a.arch)
    print(f"sm_{a.arch}: {len(rows)} variants compiled in {wall:.0f} s; shared memory limit {limit} B per block"
          + (f"; constexprs set: {overrides}" if overrides else ""))
    print(f"{'variant':<78} {'ok':>3} {'shared':>7} {'fits':>4} {'regs':>4} {'spill':>5}  mma")
    for r in rows:
        if not r["ok"]:
            print(f"{r['name']:<78} {'NO':>3}  {r['error'][:200]}")
            continue
        mma = ",".join(m.replace("mma.sync.aligned.", "") for m in r["mma"])
        print(f"{r['name']:<78} {'ok':>3} {r['shared']:>7} {'yes' if r['fits'] else 'NO':>4} "
              f"{r.get('registers') or '':>4} {r.get('spill_bytes') if r.get('spill_bytes') is not None else '':>5}  {mma}")
    fam = collections.defaultdict(lambda: [0, 0, 0])
    for r in rows:
        f = fam[targets.kernel_family(r["name"])]
        f[0] += 1
        f[1] += bool(r["ok"])
        f[2] += bool(r["ok"] and r["fits"])
    print("\nper kernel: variants / compiled / fit in shared memory")
    for k, (n, ok, fit) in fam.items():
        print(f"  {k:<20} {n:>3} / {ok:>3} / {fit:>3}")
    failed = [r for r in rows if not r["ok"]]
    # a kernel with no config that compiles and fits cannot run at all; an untuned one must fit itself
    fatal = [k for k, (n, ok, fit) in fam.items() if fit == 0] + \
        [r["name"] for r in rows if r["ok"] and not r["fits"] and not r["tuned"]]
    print(f"\nfailed to compile: {len(failed)}; kernels that could not run: {fatal or 'none'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"arch": a.arch, "shared_limit": limit, "overrides": overrides, "wall_s": wall, "variants": rows,
                       "failed": [r["name"] for r in failed], "fatal": fatal}, f, indent=1)
    return 1 if failed or fatal else 0


if __name__ == "__main__":
    sys.exit(main())
