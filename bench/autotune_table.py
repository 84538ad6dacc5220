"""The W4A4 i8 GEMM's own times, as Triton's autotuner measured them (CUDA-graph replay, median of its `rep`),
read from an archive of its picks (`bench/device/autotune_h100.tgz`, or a device run's `$OUT/autotune.tgz`):
for each row bucket and layer shape, the winning config, its time, the runner-up's, and the rate at which it reads
its weight operand. The tuner tunes a bucket at the first row count that meets it (a 1024² generation meets the
2048-row bucket at 1152 rows, its ninth scale), which the archive does not record, so no FLOP rate is given.
The tuner times the kernel by itself with its operands warm in the L2, so these are the GEMM's best case; kernel 1
(the activations' quantizer) and the int8 workspace's unpack are not in them.

    python3 bench/autotune_table.py [--archive bench/device/autotune_h100.tgz] [--kernel _w4a4_i8_kernel] [--tile 256x64]

--tile BLOCK_MxBLOCK_N adds a column: that tile's fastest trial (any K split) and its time over the best's, how a
tuner candidate that never wins is judged from a run's archive.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from var_gen_ros.quant.dispatch import kernel_module  # noqa: E402

archived_picks = kernel_module("tuned_picks").archived_picks


def read_tunings(archive: str, kernel: str) -> list:
    """[(key, [(config dict, median ms), ...] sorted fastest first)] of one kernel's tunings."""
    out = []
    for _, name, d in archived_picks(archive):      # the archive's records, as kernels/tuned_picks.py reads them
        if name == kernel:
            timed = sorted(((c, t[0] if isinstance(t, list) else t) for c, t in d["configs_timings"]),
                           key=lambda ct: ct[1])
            out.append((d["key"], timed))
    return sorted(out, key=lambda kt: (kt[0][0], kt[0][1], kt[0][2], str(kt[0][3:])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", default=os.path.join(HERE, "device", "autotune_h100.tgz"))
    p.add_argument("--kernel", default="_w4a4_i8_kernel")
    p.add_argument("--tile", default=None, help="BLOCK_MxBLOCK_N: that tile's fastest trial against the best")
    a = p.parse_args(argv)
    print("rows bucket | N | K | int8 workspace | candidates | best µs | runner-up µs | best config | "
          "weights TB/s" + (f" | {a.tile} µs (x best)" if a.tile else ""))
    for key, timed in read_tunings(a.archive, a.kernel):
        bucket, n, k, w8 = key[:4]
        (cfg, best), second = timed[0], (timed[1][1] if len(timed) > 1 else float("nan"))
        kw = cfg["kwargs"]
        tile = f"{kw.get('BLOCK_M')}x{kw.get('BLOCK_N')} swap={kw.get('SWAP')} split={kw.get('SPLIT_K')} " \
               f"w={cfg['num_warps']} s={cfg['num_stages']}"
        weight_bytes = n * k * (1 if w8 else 0.5)               # the int8 workspace, or the packed INT4 codes
        print(f"{bucket:5d} | {n:5d} | {k:5d} | {str(w8):5s} | {len(timed):2d} | {best * 1e3:7.1f} | "
              f"{second * 1e3:7.1f} | {tile} | {weight_bytes / (best * 1e-3) / 1e12:5.2f}" + _tile_column(a.tile, timed, best))


def _tile_column(tile, timed, best) -> str:
    if not tile:
        return ""
    t = [ms for c, ms in timed if f"{c['kwargs'].get('BLOCK_M')}x{c['kwargs'].get('BLOCK_N')}" == tile]
    return f" | {min(t) * 1e3:7.1f} ({min(t) / best:.2f})" if t else " | not a candidate"


if __name__ == "__main__":
    main()
