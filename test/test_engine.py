"""The ROS-free engine: queue, worker, cancel mid-generation, failures that do not stop serving."""
import threading

import numpy as np
import pytest

from var_gen_ros.engine import CANCELLED, DONE, FAILED, REJECTED, RUNNING, Engine, Listener, Request, RequestRejected
from var_gen_ros.infinity import Generator


@pytest.fixture(scope="module")
def gen(tiny_bundle):
    return Generator.from_bundle(tiny_bundle)


def test_generate_and_results_match_generator(gen):
    eng = Engine(gen, queue_size=4)
    try:
        r = eng.submit(Request(prompt="a red circle", seed=3))
        assert r.done_event.wait(60) and r.state == DONE
        assert np.array_equal(r.result.image, gen.generate("a red circle", seed=3).image)
        assert eng.stats.completed == 1 and eng.stats.last_latency_s > 0
    finally:
        eng.close()


def test_cancel_mid_generation_is_deterministic(gen):
    """The listener holds the worker after scale 1 until the cancel is issued: the request stops at
    the next scale check, never producing later scales."""
    at_scale, release = threading.Event(), threading.Event()
    seen = []

    class Hold(Listener):
        def on_scale(self, req, ev):
            seen.append(ev.index)
            if ev.index == 0:
                at_scale.set()
                release.wait(10)

    eng = Engine(gen)
    try:
        r = eng.submit(Request(prompt="a red circle", seed=1, listener=Hold()))
        assert at_scale.wait(30)
        assert eng.cancel(r.request_id)
        release.set()
        assert r.done_event.wait(30)
        assert r.state == CANCELLED and seen == [0] and eng.stats.cancelled == 1
        # and it keeps serving
        r2 = eng.submit(Request(prompt="a red circle", seed=1))
        assert r2.done_event.wait(60) and r2.state == DONE
    finally:
        eng.close()


def test_rejections_and_queue_limits(gen):
    eng = Engine(gen, queue_size=1, max_prompt_chars=50)
    try:
        for bad, why in [(Request(prompt=""), "empty"), (Request(prompt="x" * 51), "too long"),
                         (Request(prompt="a", cfg=-1), "cfg"), (Request(prompt="a", width=64), "both"),
                         (Request(prompt="a", width=64, height=64), "32x32|16x16")]:
            with pytest.raises(RequestRejected, match=why):
                eng.submit(bad)
            assert bad.state == REJECTED and bad.done_event.is_set()
        assert eng.stats.rejected == 5
    finally:
        eng.close()


def test_failure_in_generation_fails_only_that_request(gen, monkeypatch):
    eng = Engine(gen)
    calls = {"n": 0}
    real = gen.generate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate", flaky)
    try:
        r1 = eng.submit(Request(prompt="a red circle"))
        r2 = eng.submit(Request(prompt="a red circle", seed=2))
        assert r1.done_event.wait(30) and r2.done_event.wait(60)
        assert r1.state == FAILED and "out of GPU memory" in r1.error
        assert r2.state == DONE and eng.stats.errors == 1
    finally:
        eng.close()


def test_stalled_for_counts_from_the_last_finished_scale(gen):
    """A generation held after its first scale (a listener that blocks, as a GPU that never finishes would) shows
    a growing `stalled_for`; once it completes, nothing runs and it is 0."""
    import time
    at_scale, release = threading.Event(), threading.Event()

    class Hold(Listener):
        def on_scale(self, req, ev):
            if ev.index == 0:
                at_scale.set()
                release.wait(10)

    eng = Engine(gen)
    try:
        assert eng.stalled_for() == 0.0
        r = eng.submit(Request(prompt="a red circle", seed=1, listener=Hold()))
        assert at_scale.wait(30)
        time.sleep(0.5)
        held = eng.stalled_for()
        assert 0.5 <= held < 10, held
        release.set()
        assert r.done_event.wait(60) and r.state == DONE
        end = time.monotonic() + 10      # the worker clears `current` just after it signals the request done
        while eng.current is not None and time.monotonic() < end:
            time.sleep(0.01)
        assert eng.current is None and eng.stalled_for() == 0.0
    finally:
        release.set()
        eng.close()


def test_gpu_fault_fails_the_queue_rejects_new_requests_and_tells_the_listener(gen, monkeypatch):
    """A sticky CUDA error (here CUDA's own wording of an illegal memory access, raised by the generator) loses the
    process's CUDA context: the request fails with the reason, the queued one is not run, new requests are refused,
    and the listener hears it once. An out-of-memory is not such a fault."""
    from var_gen_ros.engine import is_gpu_fault
    assert is_gpu_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_gpu_fault(RuntimeError("launch failed: unspecified launch failure"))
    assert not is_gpu_fault(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_gpu_fault(ValueError("model tiny generates 16x16 only"))
    started, release = threading.Event(), threading.Event()
    faults = []

    class Hear(Listener):
        def on_gpu_fault(self, message):
            faults.append(message)

    def faulty(*a, **k):
        started.set()
        release.wait(10)                # the second request is queued meanwhile
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gen, "generate", faulty)
    eng = Engine(gen, listener=Hear())
    try:
        r1 = eng.submit(Request(prompt="a red circle"))
        assert started.wait(30)
        r2 = eng.submit(Request(prompt="a red circle", seed=2))
        release.set()
        assert r1.done_event.wait(30) and r2.done_event.wait(30)
        assert r1.state == FAILED and r1.error.startswith("GPU fault") and "illegal memory access" in r1.error
        assert r2.state == FAILED and r2.error.startswith("not run: GPU fault")
        assert len(faults) == 1 and faults[0] == eng.gpu_fault == r1.error
        with pytest.raises(RequestRejected, match="not served: GPU fault"):
            eng.submit(Request(prompt="a red circle"))
    finally:
        release.set()
        eng.close()


def test_warm_up_runs_ahead_of_requests_and_is_not_counted(gen):
    """Warm-up generations run in the worker ahead of a request submitted while the first one runs; they take no
    queue slot, are not cancelled by a cancel of "the running request", are not in the stats, and their wall
    seconds are kept; clearing the queue drops the user's requests only. The request's image is the Generator's
    own."""
    at_scale, release = threading.Event(), threading.Event()
    order = []

    class Watch(Listener):
        def on_state(self, req):
            if req.state == RUNNING:
                order.append(req.request_id)

        def on_scale(self, req, ev):
            if req.request_id == "warmup-1" and ev.index == 0:
                at_scale.set()
                release.wait(10)

    eng = Engine(gen, queue_size=1, listener=Watch())
    try:
        with pytest.raises(RequestRejected, match="32x32|16x16"):
            eng.warm_up(1, width=64, height=64)          # a size the model cannot make: nothing queued
        ws = eng.warm_up(2)
        assert at_scale.wait(30)
        assert eng.warming_up and eng.queue_depth == 0
        assert not eng.cancel("")
        dropped = eng.submit(Request(prompt="a green square"))
        assert eng.clear_queue() == 1 and dropped.state == CANCELLED     # the user's request, not warmup-2
        assert eng.warming_up and eng.queue_depth == 0
        r = eng.submit(Request(prompt="a red circle", seed=3))
        assert eng.queue_depth == 1                      # warmup-2 is queued too, but takes no slot
        with pytest.raises(RequestRejected, match="queue full"):
            eng.submit(Request(prompt="a blue square"))
        release.set()
        assert r.done_event.wait(60) and r.state == DONE
        assert order == ["warmup-1", "warmup-2", r.request_id]
        assert [w.state for w in ws] == [DONE, DONE] and len(eng.warmup_s) == 2 and min(eng.warmup_s) > 0
        assert ws[0].run_s == eng.warmup_s[0] and ws[0].run_s >= ws[0].result.timings["total_s"]
        assert (eng.stats.completed, eng.stats.rejected, eng.stats.cancelled) == (1, 1, 1) and eng.warmup_error == ""
        assert not eng.warming_up
        assert np.array_equal(r.result.image, gen.generate("a red circle", seed=3).image)
    finally:
        release.set()
        eng.close()


def test_a_failed_warm_up_is_reported_and_the_engine_serves_without_the_rest(gen, monkeypatch):
    """The first of three warm-ups runs out of memory: the other two are dropped, `warmup_error` says why, the
    request stats stay clean and the request queued behind them is served."""
    real, prompts = gen.generate, []

    def flaky(prompt, **k):
        prompts.append(prompt)
        if len(prompts) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(prompt, **k)

    monkeypatch.setattr(gen, "generate", flaky)
    eng = Engine(gen)
    try:
        ws = eng.warm_up(3)
        r = eng.submit(Request(prompt="a red circle"))
        assert r.done_event.wait(60) and r.state == DONE
        assert all(w.done_event.is_set() for w in ws)
        assert [w.state for w in ws] == [FAILED, CANCELLED, CANCELLED]
        assert eng.warmup_error.startswith("warmup-1: out of GPU memory"), eng.warmup_error
        assert ws[1].error == "not run: warmup-1 failed"
        assert (eng.stats.errors, eng.stats.cancelled, eng.stats.completed) == (0, 0, 1)
        assert prompts == ["warm-up", "a red circle"] and eng.warmup_s == [] and not eng.warming_up
    finally:
        eng.close()


def test_release_lets_go_of_the_generator_or_says_why_it_cannot(tiny_bundle, monkeypatch):
    """`Engine.release` (a node's lifecycle cleanup): while a generation that never reaches its next scale holds the
    worker (a hung GPU kernel, here a held call), it raises after its timeout, naming why, and releases nothing: the
    generator is still there. Once the worker is free it lets go of the generator (collected), reports the memory
    before and after, and the closed engine rejects new requests with the reason."""
    import gc
    import weakref
    held, running, real = threading.Event(), threading.Event(), Generator.generate

    def stuck(self, prompt, *a, **k):
        running.set()
        held.wait(60)                      # ignores the cancel, as a kernel that never returns would
        return real(self, prompt, *a, **k)

    monkeypatch.setattr(Generator, "generate", stuck)
    g = Generator.from_bundle(tiny_bundle)
    alive = weakref.ref(g)
    eng = Engine(g)
    del g
    r = eng.submit(Request(prompt="a red circle", seed=1))
    assert running.wait(30)
    with pytest.raises(RuntimeError, match="did not stop within 0.3 s"):
        eng.release(timeout=0.3)
    assert eng.generator is not None and alive() is not None
    held.set()
    assert r.done_event.wait(60) and r.state == CANCELLED       # the cancel took effect at its next scale
    mem = eng.release(timeout=10)
    assert eng.generator is None
    gc.collect()
    assert alive() is None, "the generator is still referenced after release"
    assert "host_rss_anon_before" in mem and "host_rss_anon_after" in mem
    with pytest.raises(RequestRejected, match="unloaded"):
        eng.submit(Request(prompt="a red circle"))


def test_release_gives_the_weights_host_memory_back_on_the_cpu(tmp_path):
    """On the CPU (and on a Jetson, whose GPU shares the host's DRAM) the weights are host memory: after
    `Engine.release` the process's anonymous resident memory, as /proc counts it, drops by at least half the model's
    bytes. Without giving the C heap's free pages back (malloc_trim) it did not drop: this test failed, and a script
    loading the same 556 MB model measured 821 -> 821 MB, against 821 -> 259 MB with it (the heap keeps freed
    tensors of this size once glibc has raised its mmap threshold)."""
    import dataclasses
    from var_gen_ros.infinity import tiny_config
    from var_gen_ros.infinity.tiny import make_random_bundle
    from var_gen_ros.memory import process_memory
    if "rss_anon" not in process_memory():
        pytest.skip("no /proc/self/status here")
    cfg = dataclasses.replace(tiny_config(False), name="release_cpu", depth=8, block_chunks=4, embed_dim=1024,
                              num_heads=8)
    bundle = make_random_bundle(str(tmp_path), cfg, seed=3)
    g = Generator.from_bundle(bundle)
    weights = sum(g.weight_bytes().values())
    eng = Engine(g)
    del g
    r = eng.submit(Request(prompt="a red circle", seed=1))
    assert r.done_event.wait(120) and r.state == DONE
    mem = eng.release()
    assert weights > 200 * 2 ** 20
    assert mem["host_rss_anon_before"] - mem["host_rss_anon_after"] > 0.5 * weights, (mem, weights)


def _until(cond, timeout=10.0):
    import time
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return cond()


def test_idle_release_gives_back_the_kept_caches_once_per_idle_period_and_the_next_image_is_the_same(tiny_bundle):
    """With CUDA graphs the generator keeps its KV caches (on a GPU also the graphs and their memory pool) between
    requests. `idle_release_s` after the last request the worker drops them and returns the free memory, once per
    idle period (0: never), keeping the model and which scales have run, so that on a GPU the next generation of the
    same schedule captures at once: at its first scale every scale already counts as run. The next request makes the
    caches again and gives the same image."""
    import time

    class FirstScale(Listener):
        warm = None

        def on_scale(self, req, ev):
            if ev.index == 0:
                FirstScale.warm = set(g._graphs.warm)
    g = Generator.from_bundle(tiny_bundle)
    g.cuda_graphs = True
    eng = Engine(g)                                     # idle_release_s 0: never
    try:
        first = eng.submit(Request(prompt="a red circle", seed=3, listener=FirstScale()))
        assert first.done_event.wait(60) and first.state == DONE, first.error
        scales = set(range(len(first.result.bits)))
        assert FirstScale.warm == {0}                   # a new schedule: each scale runs eagerly first
        kept = g.kept_kv_bytes()
        assert kept > 0
        time.sleep(0.4)
        assert eng.idle_releases == 0 and g.kept_kv_bytes() == kept
        eng.set_idle_release(0.3)                       # the waiting worker follows the new value
        assert _until(lambda: eng.idle_releases == 1)
        assert g._graphs is None and g.kept_kv_bytes() == 0
        assert "error" not in eng.last_idle_release and "host_rss_anon_after" in eng.last_idle_release, \
            eng.last_idle_release
        time.sleep(0.6)
        assert eng.idle_releases == 1                   # once per idle period
        second = eng.submit(Request(prompt="a red circle", seed=3, listener=FirstScale()))
        assert second.done_event.wait(60) and second.state == DONE, second.error
        assert FirstScale.warm == scales                # the scales that had run were kept
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first.result.bits, second.result.bits))
        assert np.array_equal(first.result.image, second.result.image)
        assert g.kept_kv_bytes() == kept
        assert _until(lambda: eng.idle_releases == 2)
    finally:
        eng.close()


def test_the_warm_ups_text_length_serves_the_commands_that_follow(tiny_bundle):
    """The engine's warm-up prompt and users' commands of other token counts share one text length (the text padded to
    text.TOKEN_MULTIPLE tokens), so on a GPU the graphs the warm-up captured are the ones the commands replay."""
    g = Generator.from_bundle(tiny_bundle)
    g.cuda_graphs = True
    eng = Engine(g)
    try:
        ws = eng.warm_up(2)
        assert all(w.done_event.wait(120) and w.state == DONE for w in ws)
        lengths = list(g._graphs.condition)
        prompts = ["square", "three small green triangles on a white background"]
        counts = {g.text_encoder.token_count(p) for p in prompts + ["warm-up"]}
        assert len(counts) == 3, counts
        for p in prompts:
            r = eng.submit(Request(prompt=p, seed=1))
            assert r.done_event.wait(120) and r.state == DONE, r.error
        assert len(lengths) == 1 and list(g._graphs.condition) == lengths
    finally:
        eng.close()
