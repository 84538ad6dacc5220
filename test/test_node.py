"""gen_node with the real rclpy (Fast DDS): started as a separate process with standard --ros-args,
exactly as `ros2 launch` runs it, and driven by a second node in this process."""
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 rclpy wheels not installed")
try:
    from var_gen_ros import interfaces
    msg_pkg, action_pkg = interfaces.load()
except ImportError as e:   # pragma: no cover - only without tools/build_interfaces.sh
    pytest.skip(f"var_gen_ros_interfaces not built: {e}", allow_module_level=True)

from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from diagnostic_msgs.msg import DiagnosticArray

from var_gen_ros.ros_conversions import from_image_msg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


@pytest.fixture(scope="module")
def node_bundle(tmp_path_factory):
    """Wider than the tiny test model (6 scales, 32x32, ~0.3 s per image on a CPU) so that a cancel
    sent after the first feedback arrives while later scales are still running."""
    import dataclasses
    from var_gen_ros.infinity import tiny_config
    from var_gen_ros.infinity.tiny import make_random_bundle
    base = tiny_config()
    cfg = dataclasses.replace(base, name="tiny_node", depth=8, block_chunks=4, embed_dim=512, num_heads=8,
                              custom_scales=[(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)])
    return make_random_bundle(str(tmp_path_factory.mktemp("node_bundle")), cfg, seed=2)


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernel_cache"))


@pytest.fixture(scope="module")
def running_node(node_bundle, kernel_cache):
    ns = "/t" + uuid.uuid4().hex[:8]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "var_gen_ros.node", "--ros-args", "--params-file", os.path.join(ROOT, "config", "gen.yaml"),
         "-p", f"bundle_path:={node_bundle}", "-p", "device:=cpu", "-p", "seed:=1234", "-p", "cfg:=3.0",
         "-p", "frame_id:=gen_cam", "-p", "diagnostics_period:=0.2", "-p", f"kernel_cache_dir:={kernel_cache}",
         "-r", f"__ns:={ns}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("tester_" + uuid.uuid4().hex[:6])
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    yield ns, node, proc
    ex.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait(pred, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _parameter_client(node, ns):
    from rclpy.parameter_client import AsyncParameterClient
    client = AsyncParameterClient(node, f"{ns}/var_gen")
    assert client.wait_for_services(timeout_sec=30)
    return client


def _set_parameter(client, name, value):
    """The gen_node's SetParametersResult for one parameter."""
    from rclpy.parameter import Parameter
    fut = client.set_parameters([Parameter(name, value=value)])
    assert _wait(fut.done, 30)
    return fut.result().results[0]


def _listen(listener, ns):
    """/diagnostics, the node's ~/status and ~/image, collected by `listener`; and a publisher to its ~/prompt."""
    diags, statuses, images = [], [], []
    listener.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
    listener.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)
    listener.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
    return diags, statuses, images, listener.create_publisher(String, f"{ns}/var_gen/prompt", QOS)


def _last_diagnostics(diags, ns):
    """The node's latest generator status and its values as a dict ((None, {}) before the first)."""
    mine = [st for d in diags for st in d.status if st.name.startswith(f"{ns}/var_gen")]
    return (mine[-1], {v.key: v.value for v in mine[-1].values}) if mine else (None, {})


def _wait_for_subscribers(pub, timeout=60.0):
    assert _wait(lambda: pub.get_subscription_count() > 0, timeout), "gen_node did not come up"


def test_prompt_topic_publishes_exact_image(running_node, node_bundle):
    ns, node, proc = running_node
    images, compressed, previews, statuses = [], [], [], []
    node.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
    node.create_subscription(CompressedImage, f"{ns}/var_gen/image/compressed", compressed.append, QOS)
    node.create_subscription(Image, f"{ns}/var_gen/preview", previews.append, QOS)
    node.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)
    pub = node.create_publisher(String, f"{ns}/var_gen/prompt", QOS)
    _wait_for_subscribers(pub)
    time.sleep(0.5)
    pub.publish(String(data="two small red circles on a blue background"))
    assert _wait(lambda: images and compressed), "no image received"
    img = images[0]
    assert (img.width, img.height, img.encoding, img.step) == (32, 32, "rgb8", 96)
    assert img.header.frame_id == "gen_cam"
    got = from_image_msg(img)
    from var_gen_ros.infinity import Generator
    ref = Generator.from_bundle(node_bundle).generate("two small red circles on a blue background", seed=1234, cfg=3.0)
    assert np.array_equal(got, ref.image)
    import cv2
    dec = cv2.imdecode(np.frombuffer(bytes(compressed[0].data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert compressed[0].format == "png" and np.array_equal(dec, ref.image)     # png is lossless
    assert len(previews) == 6 and np.array_equal(from_image_msg(previews[-1]), ref.image)
    assert _wait(lambda: any(s.state_name == "DONE" for s in statuses))
    done = [s for s in statuses if s.state_name == "DONE"][0]
    assert done.seed == 1234 and done.total_s > 0 and done.total_scales == 6
    assert [s.state_name for s in statuses][0] == "QUEUED"
    # a subscriber that joins now, asking for transient local durability, still gets the last image
    late = []
    kept = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(Image, f"{ns}/var_gen/image", late.append, kept)
    assert _wait(lambda: late, 30), "the last image was not kept for a late subscriber"
    assert np.array_equal(from_image_msg(late[0]), ref.image) and late[0].header.stamp == img.header.stamp


def test_bad_input_reported_and_node_keeps_serving(running_node):
    ns, node, proc = running_node
    statuses, images = [], []
    node.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)
    node.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
    pub = node.create_publisher(msg_pkg.GenerateCommand, f"{ns}/var_gen/command", QOS)
    _wait_for_subscribers(pub)
    time.sleep(0.5)
    pub.publish(msg_pkg.GenerateCommand(request_id="empty", prompt="   "))
    pub.publish(msg_pkg.GenerateCommand(request_id="huge", prompt="red " * 5000))
    pub.publish(msg_pkg.GenerateCommand(request_id="badsize", prompt="a red circle", width=64, height=64))
    pub.publish(msg_pkg.GenerateCommand(request_id="verb", verb="explode", prompt="x"))
    pub.publish(msg_pkg.GenerateCommand(request_id="good", prompt="a red circle", seed=5))
    assert _wait(lambda: any(s.request_id == "good" and s.state_name == "DONE" for s in statuses))
    by_id = {s.request_id: s for s in statuses if s.state_name in ("REJECTED", "DONE")}
    assert "empty prompt" in by_id["empty"].error
    assert "too long" in by_id["huge"].error
    assert "32x32" in by_id["badsize"].error
    assert "unknown verb" in by_id["verb"].error
    assert by_id["good"].seed == 5


def test_action_feedback_per_scale_and_result(running_node):
    ns, node, proc = running_node
    client = ActionClient(node, action_pkg.Generate, f"{ns}/var_gen/generate")
    assert client.wait_for_server(timeout_sec=60)
    feedback = []
    goal = action_pkg.Generate.Goal(prompt="a blue square", seed=9, preview=True)
    fut = client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback))
    assert _wait(fut.done)
    handle = fut.result()
    assert handle.accepted
    rf = handle.get_result_async()
    assert _wait(rf.done)
    res = rf.result().result
    assert res.success and res.seed == 9 and res.error == ""
    assert (res.image.width, res.image.height, res.image.step) == (32, 32, 96)
    assert [f.scale_index for f in feedback] == [1, 2, 3, 4, 5, 6]
    assert all(f.total_scales == 6 and f.has_preview for f in feedback)
    assert np.array_equal(from_image_msg(feedback[-1].preview), from_image_msg(res.image))


def test_action_cancel_mid_generation(running_node):
    """Cancelled after its first feedback: stops at the next scale, result CANCELED."""
    ns, node, proc = running_node
    client = ActionClient(node, action_pkg.Generate, f"{ns}/var_gen/generate")
    assert client.wait_for_server(timeout_sec=60)
    feedback = []
    # previews make every scale do a VAE decode too, so there is time to cancel between scales
    goal = action_pkg.Generate.Goal(prompt="a blue square " * 3, seed=1, preview=True)
    fut = client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback))
    assert _wait(fut.done)
    handle = fut.result()
    assert _wait(lambda: len(feedback) >= 1)
    handle.cancel_goal_async()
    rf = handle.get_result_async()
    assert _wait(rf.done)
    from action_msgs.msg import GoalStatus
    res = rf.result()
    if res.status == GoalStatus.STATUS_SUCCEEDED:
        pytest.fail("generation finished before the cancel arrived (feedback: %d)" % len(feedback))
    assert res.status == GoalStatus.STATUS_CANCELED
    assert not res.result.success and "cancel" in res.result.error
    assert len(feedback) < 6


def test_diagnostics(running_node, kernel_cache):
    ns, node, proc = running_node
    diags = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
    def ours():
        return [{v.key: v.value for v in st.values} for d in diags for st in d.status if st.name.startswith(f"{ns}/var_gen")]

    assert _wait(lambda: ours() and ours()[-1]["ready"] == "True")     # after the two background warm-ups
    kv = ours()[-1]
    for key in ("model", "quantization", "device", "last_latency_s", "peak_gpu_memory_bytes", "kv_cache_bytes",
                "queue_depth", "error_count"):
        assert key in kv
    assert kv["device"] == "cpu" and kv["idle_release"] == "off"
    # kernel_cache_dir: Triton's cache and the extension builds go there (made at start), and it says what it found
    assert kv["kernel_cache"].startswith(os.path.join(kernel_cache, "triton") + ": "), kv["kernel_cache"]
    assert os.path.isdir(os.path.join(kernel_cache, "triton")) and os.path.isdir(os.path.join(kernel_cache, "torch_extensions"))
    assert kv["warm_up"] == "done" and len(kv["warmup_s"].split(", ")) == 2, kv
    # the node process's host memory (a Jetson's GPU shares that DRAM): at least the interpreter + torch + model
    assert 50 << 20 < int(kv["host_rss_bytes"]) <= int(kv["host_peak_rss_bytes"]) + (16 << 20), kv


def test_edge_preset_node_on_the_default_model(running_node, tmp_path):
    """gen_node with the edge preset (config/edge_8b.yaml over gen.yaml: W4A4, INT8 KV, INT4 text encoder) on
    the embedded default model (its shipped w4a4/ is loaded, no calibration), on the CPU in float32, with the weights
    that run once per prompt or image offloaded to disk (offload_dir): the published image equals the Generator's
    with the same precision and resident weights, diagnostics say what ran, and the files go with the node."""
    _, node, _ = running_node
    ns = "/q" + uuid.uuid4().hex[:8]
    park = tmp_path / "parked"
    proc = subprocess.Popen(
        [sys.executable, "-m", "var_gen_ros.node", "--ros-args", "--params-file", os.path.join(ROOT, "config", "gen.yaml"),
         "--params-file", os.path.join(ROOT, "config", "edge_8b.yaml"), "-p", f"offload_dir:={park}",
         "-p", "device:=cpu", "-p", "dtype:=fp32", "-p", "seed:=5", "-p", "diagnostics_period:=0.2", "-r", f"__ns:={ns}"],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        images, diags = [], []
        node.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
        pub = node.create_publisher(String, f"{ns}/var_gen/prompt", QOS)
        _wait_for_subscribers(pub)
        time.sleep(0.5)
        prompt = "a red circle on a white background"
        pub.publish(String(data=prompt))
        assert _wait(lambda: images), "no image from the W4A4 node"
        got = from_image_msg(images[0])
        from var_gen_ros.cli import default_bundle_path
        from var_gen_ros.infinity import Generator
        from var_gen_ros.quant.runtime import apply_precision, apply_text_encoder
        g = Generator.from_bundle(default_bundle_path())
        apply_precision(g, "w4a4", "int8", default_bundle_path())
        apply_text_encoder(g, "int4")
        assert np.array_equal(got, g.generate(prompt, seed=5).image)
        assert got.shape == (128, 128, 3)
        mine = lambda: [st for d in diags for st in d.status if st.name.startswith(f"{ns}/var_gen")]
        assert _wait(lambda: mine())
        latest = lambda: {v.key: v.value for v in mine()[-1].values}
        kv = latest()
        assert kv["quantization"] == "w4a4" and "W4A4 loaded" in kv["precision"] and "INT8 KV" in kv["precision"]
        assert "text encoder INT4" in kv["precision"], kv["precision"]
        assert "offloaded to " + str(park) in kv["precision"], kv["precision"]
        # the text weights loaded for the warm-up's prompt (gen.yaml: two warm-up runs, one prompt) and for this one,
        # the VAE once for each of the three images (this one's previews decoded with it)
        import re
        loads = lambda: dict(re.findall(r"(text encoder|condition layers|VAE) parked in .*? loaded (\d+) times",
                                        latest()["offloaded_weights"]))
        assert _wait(lambda: loads().get("text encoder") == "2" and loads().get("condition layers") == "2"
                     and loads().get("VAE") == "3"), loads()
        # the preload of the offloaded text weights (on by default since the thirty-seventh session) tries after each
        # request with nothing queued; the CPU has no kept KV caches' block to load them into, so it loaded nothing
        # (the counts above) and the diagnostics say why
        preload = lambda: latest().get("offload_preload", "")
        assert _wait(preload), kv
        assert preload().startswith("not done: the kept KV caches' block cannot hold them here"), preload()
        files = os.listdir(park)
        assert len(files) == 3 and all(os.path.getsize(park / f) > 0 for f in files)
        assert kv["kernels"].startswith("pytorch reference")
        assert kv["allocator"] == "as configured"        # the Tegra guard: nothing to do on a CPU
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode is not None and os.listdir(park) == [], os.listdir(park)


def test_activation_chunk_parameter_set_at_run_time(running_node):
    """activation_chunk is a run-time parameter with a range: a valid value is taken, a negative one is
    refused by its descriptor, and the node keeps serving afterwards."""
    from rclpy.parameter import Parameter
    ns, node, _ = running_node
    client = _parameter_client(node, ns)

    def set_(value):
        return _set_parameter(client, "activation_chunk", value)

    assert set_(16).successful
    bad = set_(-5)
    assert not bad.successful
    fut = client.get_parameters(["activation_chunk"])
    assert _wait(fut.done, 30)
    assert fut.result().values[0].integer_value == 16
    images = []
    node.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
    pub = node.create_publisher(String, f"{ns}/var_gen/prompt", QOS)
    _wait_for_subscribers(pub)
    time.sleep(0.5)
    pub.publish(String(data="two blue squares"))
    assert _wait(lambda: images), "no image after changing activation_chunk"
    assert set_(512).successful
    # graph_max_tokens likewise (read by the next generation; 0 is out of its range)
    for value, ok in ((4096, True), (0, False)):
        fut = client.set_parameters([Parameter("graph_max_tokens", value=value)])
        assert _wait(fut.done, 30)
        assert fut.result().results[0].successful == ok, value
    fut = client.get_parameters(["graph_max_tokens"])
    assert _wait(fut.done, 30)
    assert fut.result().values[0].integer_value == 4096
    # graph_pool: one of its choices, else refused with the reason
    for value, ok in (("shared", True), ("one_big", False), ("per_graph", True)):
        fut = client.set_parameters([Parameter("graph_pool", value=value)])
        assert _wait(fut.done, 30)
        r = fut.result().results[0]
        assert r.successful == ok and (ok or "graph_pool must be one of" in r.reason), (value, r.reason)


def test_repeated_prompt_hits_the_prompt_cache_and_gives_the_same_image(running_node):
    """A prompt seen again takes its text features from the generator's prompt cache: the diagnostics
    count the hit, and the image is the same bytes as the first one for the same seed. prompt_cache_size
    is a run-time parameter: 0 turns the cache off (reported), a negative size is refused."""
    import re
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    ns, node, _ = running_node
    diags, images, statuses = [], [], []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
    node.create_subscription(Image, f"{ns}/var_gen/image", images.append, QOS)
    node.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)

    def cache_status():
        sts = [st for d in diags for st in d.status if st.name.startswith(f"{ns}/var_gen")]
        return {v.key: v.value for v in sts[-1].values}["prompt_cache"] if sts else None

    assert _wait(lambda: cache_status() is not None)
    hits0 = int(re.search(r"(\d+) hits", cache_status()).group(1))
    pub = node.create_publisher(msg_pkg.GenerateCommand, f"{ns}/var_gen/command", QOS)
    _wait_for_subscribers(pub)
    time.sleep(0.5)
    prompt = f"three large green triangles {uuid.uuid4().hex[:6]}"
    for rid in ("cache-1", "cache-2"):
        pub.publish(msg_pkg.GenerateCommand(request_id=rid, prompt=prompt, seed=7))
        assert _wait(lambda: any(s.request_id == rid and s.state_name == "DONE" for s in statuses)), rid
    assert _wait(lambda: len(images) >= 2)
    assert np.array_equal(from_image_msg(images[-2]), from_image_msg(images[-1]))
    done = {s.request_id: s for s in statuses if s.state_name == "DONE"}
    assert not done["cache-1"].text_cached and done["cache-2"].text_cached
    assert _wait(lambda: int(re.search(r"(\d+) hits", cache_status()).group(1)) >= hits0 + 1), cache_status()

    client = AsyncParameterClient(node, f"{ns}/var_gen")
    assert client.wait_for_services(timeout_sec=30)
    for value, ok in ((0, True), (-1, False)):
        fut = client.set_parameters([Parameter("prompt_cache_size", value=value)])
        assert _wait(fut.done, 30)
        assert fut.result().results[0].successful == ok, value
    n = len(diags)
    assert _wait(lambda: len(diags) > n + 1 and cache_status() == "off"), cache_status()
    fut = client.set_parameters([Parameter("prompt_cache_size", value=16)])
    assert _wait(fut.done, 30) and fut.result().results[0].successful


def test_stall_timeout_turns_diagnostics_to_error_while_a_generation_makes_no_progress(running_node):
    """stall_timeout_s is a run-time parameter: set below the time a scale takes, every /diagnostics message sent
    while a generation runs reports ERROR ("generation stalled", the request's id, seconds_since_progress past the
    limit); set back, the node reports no ERROR once idle and keeps serving. A negative value is refused."""
    from diagnostic_msgs.msg import DiagnosticStatus
    ns, node, _ = running_node
    client = _parameter_client(node, ns)

    def set_(value):
        return _set_parameter(client, "stall_timeout_s", value)

    assert not set_(-1.0).successful
    diags, statuses = [], []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
    node.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)
    pub = node.create_publisher(msg_pkg.GenerateCommand, f"{ns}/var_gen/command", QOS)
    _wait_for_subscribers(pub)
    time.sleep(0.5)
    assert set_(0.001).successful
    ids = [f"stall{i}" for i in range(4)]
    for rid in ids:
        pub.publish(msg_pkg.GenerateCommand(request_id=rid, prompt="a red circle", seed=7))

    def ours():
        return [st for d in diags for st in d.status if st.name.startswith(f"{ns}/var_gen")]

    def stalled():
        return [st for st in ours() if st.level == DiagnosticStatus.ERROR]

    assert _wait(lambda: stalled(), 60), "no ERROR while generations ran under a 1 ms stall timeout"
    st = stalled()[0]
    kv = {v.key: v.value for v in st.values}
    assert "generation stalled" in st.message and any(rid in st.message for rid in ids), st.message
    # (past the 1 ms limit, printed to 3 decimals: 0.0012 s reads "0.001")
    assert kv["running"] == "True" and float(kv["seconds_since_progress"]) >= 0.001, kv
    assert _wait(lambda: {s.request_id for s in statuses if s.state_name == "DONE"} >= set(ids), 120)
    assert set_(300.0).successful
    time.sleep(0.5)                    # a message computed before the parameter changed may still arrive
    n = len(ours())
    assert _wait(lambda: len(ours()) >= n + 3, 30)
    assert all(st.level != DiagnosticStatus.ERROR for st in ours()[n:])


def test_gpu_fault_is_reported_then_the_node_exits_for_respawn(node_bundle, monkeypatch):
    """gen_node in this process, on its own rclpy context: its generator raises CUDA's wording of an illegal memory
    access (a sticky error: the CUDA context is lost). The request's status is FAILED with the reason,
    /diagnostics says GPU fault at ERROR, and with exit_on_gpu_fault (the default) the node stops its context a
    second later with exit code 3, which the launch file's respawn turns into a restart."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from var_gen_ros.engine import FAILED, Request
    from var_gen_ros.node import GenNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ns = "/f" + uuid.uuid4().hex[:8]
    gen_node = GenNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("bundle_path", value=node_bundle), Parameter("device", value="cpu"),
        Parameter("diagnostics_period", value=5.0)])
    listener = rclpy.create_node("fault_listener", context=ctx)
    diags, statuses = [], []
    listener.create_subscription(DiagnosticArray, "/diagnostics", diags.append, QOS)
    listener.create_subscription(msg_pkg.GenerationStatus, f"{ns}/var_gen/status", statuses.append, QOS)
    ex = MultiThreadedExecutor(context=ctx)
    ex.add_node(gen_node)
    ex.add_node(listener)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        def faulty(*a, **k):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        monkeypatch.setattr(gen_node.engine.generator, "generate", faulty)
        assert _wait(lambda: listener.count_publishers(f"{ns}/var_gen/status") > 0, 30)
        time.sleep(0.5)
        r = gen_node.engine.submit(Request(prompt="a red circle", request_id="doomed"))
        assert r.done_event.wait(30) and r.state == FAILED and r.error.startswith("GPU fault")
        assert _wait(lambda: not ctx.ok(), 30), "the node did not stop after the GPU fault"
        spin.join(10)
        assert gen_node.exit_code == 3
        failed = [s for s in statuses if s.request_id == "doomed" and s.state_name == "FAILED"]
        assert failed and "illegal memory access" in failed[-1].error
        errors = [st for d in diags for st in d.status
                  if st.name.startswith(f"{ns}/var_gen") and st.level == DiagnosticStatus.ERROR]
        assert errors and errors[0].message.startswith("GPU fault"), [st.message for d in diags for st in d.status]
    finally:
        ex.shutdown()
        gen_node.engine.close()
        rclpy.try_shutdown(context=ctx)


def test_warm_up_runs_in_the_background_while_the_node_is_up(node_bundle, monkeypatch):
    """gen_node in this process with warmup_runs 2, its warm-up generations held (Generator.generate waits while
    the prompt is the warm-up's, as a first generation autotuning the GPU kernels for minutes would): the node is
    up meanwhile, /diagnostics says not ready and how far the warm-up is, and a prompt sent then is QUEUED.
    A warm-up past stall_timeout_s is a WARN (autotuning), never the hung-GPU ERROR. Released, the warm-up ends,
    diagnostics say ready with both warm-up times, and the prompt's image is published and equals the Generator's;
    the warm-ups publish no image and no status."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from var_gen_ros.infinity import Generator
    from var_gen_ros.node import GenNode
    release, real = threading.Event(), Generator.generate

    def held(self, prompt, *a, **k):
        if prompt == "warm-up":
            release.wait(60)
        return real(self, prompt, *a, **k)

    monkeypatch.setattr(Generator, "generate", held)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ns = "/w" + uuid.uuid4().hex[:8]
    gen_node = GenNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("bundle_path", value=node_bundle), Parameter("device", value="cpu"), Parameter("seed", value=11),
        Parameter("warmup_runs", value=2), Parameter("diagnostics_period", value=0.1),
        Parameter("stall_timeout_s", value=0.5)])
    listener = rclpy.create_node("warm_listener", context=ctx)
    diags, statuses, images, pub = _listen(listener, ns)
    ex = MultiThreadedExecutor(context=ctx)
    ex.add_node(gen_node)
    ex.add_node(listener)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def last():
        return _last_diagnostics(diags, ns)

    try:
        assert _wait(lambda: last()[1].get("warm_up", "").startswith("running: warmup-1 of 2"), 30), last()
        st, kv = last()
        assert kv["ready"] == "False" and st.message.startswith("warming up, running: warmup-1 of 2"), st.message
        _wait_for_subscribers(pub)
        time.sleep(0.3)
        prompt = "a green triangle"
        pub.publish(String(data=prompt))
        assert _wait(lambda: any(s.state_name == "QUEUED" for s in statuses), 30)
        time.sleep(0.3)
        assert not images and gen_node.engine.queue_depth == 1 and gen_node.engine.warming_up
        assert _wait(lambda: "no scale finished" in (last()[0].message if last()[0] else ""), 30)
        st, kv = last()
        assert st.level == DiagnosticStatus.WARN and st.message.startswith("warming up, running: warmup-1"), st.message
        assert float(kv["seconds_since_progress"]) > 0.5
        assert all(s.level != DiagnosticStatus.ERROR for d in diags for s in d.status if s.name.startswith(ns))
        assert gen_node.set_parameters([Parameter("stall_timeout_s", value=300.0)])[0].successful
        release.set()
        assert _wait(lambda: images, 60), "no image after the warm-up"
        assert _wait(lambda: last()[1].get("ready") == "True", 30)
        st, kv = last()
        assert kv["warm_up"] == "done" and len(kv["warmup_s"].split(", ")) == 2, kv
        assert all(float(t) > 0 for t in kv["warmup_s"].split(", "))
        assert len(images) == 1 and {s.request_id for s in statuses} == {statuses[0].request_id}
        assert not statuses[0].request_id.startswith("warmup")
        ref = Generator.from_bundle(node_bundle).generate(prompt, seed=11)
        assert np.array_equal(from_image_msg(images[0]), ref.image)
    finally:
        release.set()
        ex.shutdown()
        gen_node.engine.close()
        rclpy.try_shutdown(context=ctx)


def test_managed_node_loads_serves_pauses_and_unloads_its_model(node_bundle, tmp_path, monkeypatch):
    """gen_node with managed:=true in this process, driven through its lifecycle services (lifecycle_msgs
    ChangeState / GetState, as `ros2 lifecycle set` and nav2's lifecycle manager call them). Unconfigured it has no
    model: a prompt is REJECTED on ~/status and an action goal aborted, each with the reason; /diagnostics says so.
    A configure with a missing bundle fails, says why at ERROR, and leaves the node unconfigured and answering;
    bundle_path can then be changed (only while unconfigured), and configure loads the model. Inactive, requests
    are still rejected; active, the prompt's image equals the Generator's. Deactivate cancels the running request
    and the queued one (CANCELLED, the queued one "node deactivated") and rejects again; cleanup lets go of the
    generator (collected), and configure + activate give the same image for the same seed."""
    import gc
    import weakref
    from diagnostic_msgs.msg import DiagnosticStatus
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from var_gen_ros.infinity import Generator
    from var_gen_ros.node import GenNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ns = "/m" + uuid.uuid4().hex[:8]
    missing = str(tmp_path / "no_such_bundle")
    gen_node = GenNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("managed", value=True), Parameter("bundle_path", value=missing), Parameter("device", value="cpu"),
        Parameter("seed", value=21), Parameter("diagnostics_period", value=0.1)])
    assert gen_node.engine is None
    tester = rclpy.create_node("lifecycle_tester", context=ctx)
    diags, statuses, images, pub = _listen(tester, ns)
    change = tester.create_client(ChangeState, f"{ns}/var_gen/change_state")
    get = tester.create_client(GetState, f"{ns}/var_gen/get_state")
    goals = ActionClient(tester, action_pkg.Generate, f"{ns}/var_gen/generate")
    ex = MultiThreadedExecutor(context=ctx)
    ex.add_node(gen_node)
    ex.add_node(tester)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def call(client, req):
        assert client.wait_for_service(timeout_sec=30)
        fut = client.call_async(req)
        assert _wait(fut.done, 120)
        return fut.result()

    def transition(tid):
        return call(change, ChangeState.Request(transition=Transition(id=tid))).success

    def state():
        return call(get, GetState.Request()).current_state.label

    def last():
        return _last_diagnostics(diags, ns)

    def rejected_prompt(text):
        n = len(statuses)
        pub.publish(String(data=text))
        assert _wait(lambda: len(statuses) > n, 30)
        return statuses[n]

    def aborted_goal():
        assert goals.wait_for_server(timeout_sec=30)
        fut = goals.send_goal_async(action_pkg.Generate.Goal(prompt="a blue square", seed=-1, cfg=-1.0, top_k=-1,
                                                             top_p=-1.0))
        assert _wait(fut.done, 30) and fut.result().accepted
        res = fut.result().get_result_async()
        assert _wait(res.done, 30)
        return res.result().result

    try:
        assert state() == "unconfigured"
        assert _wait(lambda: last()[1].get("lifecycle_state") == "unconfigured", 30)
        st, kv = last()
        assert st.level == DiagnosticStatus.OK and kv["model"] == "(not loaded)" and kv["ready"] == "False"
        _wait_for_subscribers(pub)
        time.sleep(0.3)
        s = rejected_prompt("a red circle")
        assert s.state_name == "REJECTED" and "unconfigured" in s.error and "configure" in s.error, s.error
        r = aborted_goal()
        assert not r.success and "unconfigured" in r.error

        assert not transition(Transition.TRANSITION_CONFIGURE)          # the bundle is missing
        assert state() == "unconfigured" and gen_node.engine is None
        assert _wait(lambda: last()[0] is not None and last()[0].level == DiagnosticStatus.ERROR, 30)
        assert "no_such_bundle" in last()[0].message, last()[0].message
        assert gen_node.set_parameters([Parameter("bundle_path", value=node_bundle)])[0].successful
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
        refused = gen_node.set_parameters([Parameter("bundle_path", value=missing)])[0]
        assert not refused.successful and "unconfigured" in refused.reason
        assert not gen_node.set_parameters([Parameter("managed", value=False)])[0].successful
        assert gen_node.set_parameters([Parameter("diagnostics_period", value=0.25)])[0].successful
        assert gen_node._diag_timer.timer_period_ns == 250_000_000          # the timer follows, not just the value
        assert gen_node.set_parameters([Parameter("diagnostics_period", value=0.1)])[0].successful
        assert _wait(lambda: last()[1].get("lifecycle_state") == "inactive", 30)
        assert last()[0].level == DiagnosticStatus.OK and last()[1]["model"] != "(not loaded)"
        s = rejected_prompt("a red circle")
        assert s.state_name == "REJECTED" and "inactive" in s.error and "activate" in s.error

        assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
        prompt = "three large green squares on a white background"
        pub.publish(String(data=prompt))
        assert _wait(lambda: images, 60), "no image while active"
        ref = Generator.from_bundle(node_bundle).generate(prompt, seed=21)
        assert np.array_equal(from_image_msg(images[0]), ref.image)
        assert _wait(lambda: last()[1].get("ready") == "True", 30)

        # two more prompts, the first held inside its generation (as a long one would be): deactivating cancels both
        running, release, real = threading.Event(), threading.Event(), Generator.generate

        def held(self, text, *a, **k):
            running.set()
            release.wait(30)
            return real(self, text, *a, **k)

        monkeypatch.setattr(Generator, "generate", held)
        n = len(statuses)
        pub.publish(String(data="a red circle"))
        assert running.wait(30)
        pub.publish(String(data="a blue square"))
        assert _wait(lambda: [s.state_name for s in statuses[n:]].count("QUEUED") == 2, 30)
        ids = list(dict.fromkeys(s.request_id for s in statuses[n:]))
        threading.Timer(0.5, release.set).start()     # the cancel takes effect at the held one's next scale
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
        assert _wait(lambda: sum(s.state_name == "CANCELLED" for s in statuses[n:]) == 2, 30)
        ends = {s.request_id: s for s in statuses[n:] if s.state_name == "CANCELLED"}
        assert ends[ids[1]].error == "node deactivated" and set(ends) == set(ids)
        monkeypatch.setattr(Generator, "generate", real)
        assert len(images) == 1
        assert "inactive" in aborted_goal().error
        held = weakref.ref(gen_node.engine.generator)
        assert transition(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
        assert gen_node.engine is None
        gc.collect()
        assert held() is None, "the generator is still referenced after cleanup"
        assert _wait(lambda: last()[1].get("model") == "(not loaded)", 30)
        assert last()[1]["last_release"].startswith("model unloaded (cleanup)")
        assert int(last()[1]["rejected_not_active"]) == 4

        assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
        pub.publish(String(data=prompt))
        assert _wait(lambda: len(images) == 2, 60), "no image after the model was loaded again"
        assert np.array_equal(from_image_msg(images[1]), ref.image)
        assert _wait(lambda: sum(s.state_name == "DONE" for s in statuses) == 2, 30)
    finally:
        ex.shutdown()
        if gen_node.engine is not None:
            gen_node.engine.close()
        rclpy.try_shutdown(context=ctx)
