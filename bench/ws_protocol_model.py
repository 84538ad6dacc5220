"""A model of `_i8p_ws_kernel`'s hand-overs (kernels/i8_mainloop_gluon.py), run over random interleavings on the CPU.

The kernel's three partitions exchange shared-memory tiles through mbarriers: the TMA warp fills a ring of STAGES
x-and-packed stages (`ready`, count 1 with the copies' bytes; `empty`, count 2: the wgmma's and the unpack's
releases), the unpack warps fill a ring of WB code tiles (`w_ready` / `w_empty`, count 1), and the wgmma warps read
both with one wgmma group left in flight, releasing step i - 1's stage and code tile once step i's wgmma is issued
and i - 1's has completed. The model follows each partition's waits and arrives as the kernel's source has them, with
mbarrier semantics (a phase completes when its arrivals and bytes are in; `wait(parity)` passes once the phase of
that parity has completed; a fresh barrier's "previous" phase counts as complete), TMA copies landing in any order
and wgmmas completing in order, and checks at random interleavings that every partition ends (no deadlock) and that no
tile is overwritten while a wgmma may still read it, nor read before it is written.

    python3 bench/ws_protocol_model.py       # deadlock-free and race-free from WB = 2; WB = 1 deadlocks

Fifty-second session (no GPU lent): the warp-specialized kernel's GPU test had been killed at 150 s with no output;
this model says the protocol itself is sound from WB = 2 (the kernel's default), so a hang points below it.
"""
import random
import sys


class Barrier:
    def __init__(self, count: int):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _complete_if_due(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def arrive(self):
        assert self.pending >= 1, "an arrive beyond the barrier's count"
        self.pending -= 1
        self._complete_if_due()

    def expect(self, nbytes: int):       # arrive.expect_tx
        self.tx += nbytes
        self.arrive()

    def complete_tx(self, nbytes: int):
        self.tx -= nbytes
        self._complete_if_due()

    def passed(self, parity: int) -> bool:
        return (self.phase & 1) != parity


def run(stages: int, wb: int, steps: int, seed: int):
    """One random interleaving: True, or what went wrong."""
    rng = random.Random(seed)
    ready, empty = [Barrier(1) for _ in range(stages)], [Barrier(2) for _ in range(stages)]
    w_ready, w_empty = [Barrier(1) for _ in range(wb)], [Barrier(1) for _ in range(wb)]
    copies, wgmmas = [], []                    # in flight: (step, stage, "x" | "packed"); (step, stage, code tile)
    x_tile, packed_tile, code_tile = [None] * stages, [None] * stages, [None] * wb

    def mma():
        for i in range(steps):
            s, b = i % stages, i % wb
            yield lambda: ready[s].passed((i // stages) & 1)
            yield lambda: w_ready[b].passed((i // wb) & 1)
            assert x_tile[s] == i and code_tile[b] == i, ("a wgmma reads a stale tile", i, x_tile[s], code_tile[b])
            wgmmas.append((i, s, b))
            yield lambda: all(j >= i for j, _, _ in wgmmas)        # warpgroup_mma_wait(num_outstanding=1)
            if i > 0:
                empty[(i - 1) % stages].arrive()
                w_empty[(i - 1) % wb].arrive()
        yield lambda: not wgmmas

    def load():
        for i in range(steps):
            s = i % stages
            yield lambda: empty[s].passed(((i // stages) & 1) ^ 1)
            ready[s].expect(2)
            copies.extend([(i, s, "x"), (i, s, "packed")])

    def unpack():
        for i in range(steps):
            s, b = i % stages, i % wb
            yield lambda: ready[s].passed((i // stages) & 1)
            assert packed_tile[s] == i, ("the unpack reads a stale packed tile", i, packed_tile[s])
            empty[s].arrive()
            yield lambda: w_empty[b].passed(((i // wb) & 1) ^ 1)
            assert all(bb != b for _, _, bb in wgmmas), ("codes stored under a wgmma reading them", i)
            code_tile[b] = i
            w_ready[b].arrive()

    parts = {"mma": mma(), "load": load(), "unpack": unpack()}
    blocked_on = dict.fromkeys(parts)
    done = set()
    while True:
        moves = [("part", k) for k in parts if k not in done and (blocked_on[k] is None or blocked_on[k]())]
        moves += [("copy", None)] * bool(copies) + [("wgmma", None)] * bool(wgmmas)
        if not moves:
            return True if len(done) == 3 else f"deadlock: {sorted(done)} ended"
        kind, k = rng.choice(moves)
        if kind == "part":
            try:
                blocked_on[k] = next(parts[k])
            except StopIteration:
                done.add(k)
        elif kind == "copy":
            i, s, what = copies.pop(rng.randrange(len(copies)))
            assert what != "x" or all(ss != s for _, ss, _ in wgmmas), ("a copy lands under a wgmma", i)
            (x_tile if what == "x" else packed_tile)[s] = i
            ready[s].complete_tx(1)
        else:
            wgmmas.pop(0)


def check(stages_list=(2, 3, 4), wb_list=(1, 2, 3), steps_list=(1, 2, 3, 5, 8, 28), seeds: int = 200) -> dict:
    """{(stages, wb): first failure or None}."""
    out = {}
    for stages in stages_list:
        for wb in wb_list:
            out[(stages, wb)] = None
            for steps in steps_list:
                for seed in range(seeds):
                    try:
                        r = run(stages, wb, steps, seed)
                    except AssertionError as e:
                        r = f"race: {e}"
                    if r is not True:
                        out[(stages, wb)] = f"{steps} steps, seed {seed}: {r}"
                        break
                if out[(stages, wb)]:
                    break
    return out


if __name__ == "__main__":
    bad = 0
    for (stages, wb), failure in check().items():
        print(f"STAGES {stages} WB {wb}: {failure or 'no deadlock, no race'}")
        bad += failure is not None and wb >= 2
    sys.exit(1 if bad else 0)
