"""The instruction mix of a Triton kernel's main loop, compiled here for a GPU architecture (no GPU needed).

Why: the device budget is short, and whether a change to a kernel's source adds shared-memory traffic or ALU work
in its K loop can be read from the PTX before any timing. This compiles the kernel variants that
`kernels/targets.py` lists for the dispatch (the Infinity-8B shapes, every tuned candidate) whose name contains
`--match`, finds the largest loop (a backward branch to a label), and counts its instructions by opcode.

    python bench/ptx_loop.py --arch 90 --match "w4a4_i8[BLOCK_M=128,BLOCK_N=128,SPLIT_K=4,SWAP=True,w8,s3]"
    python bench/ptx_loop.py --arch 87 --match w4a4_i8[ --set PREFETCH_SCALES=1 --show 40

`--set NAME=VALUE` overrides a constexpr (integers; 0/1 for flags); `--show N` prints the loop's first N lines.
The counts are per loop iteration and per thread, static: no trip counts, latencies or stalls.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# opcodes kept with their state space or kind, the rest by their first word
_QUALIFIED = ("ld.shared", "st.shared", "ld.global", "st.global", "cp.async", "wgmma", "mma", "ldmatrix", "cvt")


def largest_loop(ptx: str) -> list:
    """The lines of the largest loop body: from a label to the last branch back to it."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              for m in [re.match(r"^(\$L__BB\d+_\d+):", line.strip())] if m}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((i - labels[m.group(1)], labels[m.group(1)], i + 1))
    if not loops:
        return []
    _, start, end = max(loops)
    return [line.strip() for line in lines[start:end]]


def opcode_counts(body: list) -> collections.Counter:
    counts = collections.Counter()
    for line in body:
        if not line or line.startswith(("//", "$", "{", "}", ".")):
            continue
        op = line.split()[0]
        if op.startswith("@"):                       # a predicated instruction: the opcode follows the guard
            parts = line.split()
            op = parts[1] if len(parts) > 1 else op
        words = op.rstrip(";").split(".")
        kind = ".".join(words[:2])
        counts[kind if kind.startswith(_QUALIFIED) or words[0] in ("cvt",) else words[0]] += 1
    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an integer (87: Orin, 90: H100)")
    ap.add_argument("--match", default="w4a4_i8[", help="substring of the variant names to compile")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="constexpr override")
    ap.add_argument("--show", type=int, default=0, help="print the first N lines of each loop")
    ap.add_argument("--limit", type=int, default=8, help="compile at most this many variants")
    a = ap.parse_args(argv)
    from var_gen_ros.quant.dispatch import kernel_module
    targets = kernel_module("targets")
    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in a.set)}
    chosen = [v for v in targets.variants(a.arch) if a.match in v.name][:a.limit]
    if not chosen:
        raise SystemExit(f"no variant of sm_{a.arch} matches {a.match!r}")
    for v in chosen:
        v = replace(v, constexprs={**v.constexprs, **overrides})
        src = targets.ASTSource(fn=v.kernel, signature=v.signature(), constexprs=v.constexprs, attrs=v.attrs())
        k = targets.triton.compile(src, target=targets.GPUTarget("cuda", a.arch, 32),
                                   options={"num_warps": v.num_warps, "num_stages": v.num_stages})
        body = largest_loop(k.asm["ptx"])
        usage = targets._ptxas_usage(k.asm["ptx"], a.arch)
        counts = opcode_counts(body)
        print(f"{v.name}{' ' + str(overrides) if overrides else ''}: sm_{a.arch}, shared {k.metadata.shared} B, "
              f"{usage['registers']} registers, {usage['spill_bytes']} B spilled; loop {len(body)} lines, "
              f"{sum(counts.values())} instructions")
        print("   " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
        for line in body[:a.show]:
            print("     " + line)


if __name__ == "__main__":
    main()
