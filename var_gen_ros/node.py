"""gen_node: the ROS 2 face of the engine. Thin: parameters, topics, the action, diagnostics.

Started by `ros2 launch var_gen_ros gen.launch.py`, or directly:
    gen_node --ros-args --params-file config/gen.yaml -p bundle_path:=<dir>

A managed (lifecycle) node. By default (`managed` false) it configures and activates itself at start-up, so it comes
up serving. With `managed:=true` it comes up unconfigured and a lifecycle manager (or `ros2 lifecycle set`) drives
it: configure loads the model (and starts the warm-up), activate serves, deactivate stops serving (the running
request is cancelled, the queue cleared) but keeps the model, cleanup unloads it and gives its memory back to the
GPU driver, which on a Jetson is the robot's shared DRAM. While unconfigured, the parameters that build the model
(bundle_path, quantization, ...) can be changed. Requests that arrive while the node is not active are rejected
with the reason.
"""
from __future__ import annotations

import sys
import threading
import uuid

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from . import interfaces
from .engine import (CANCELLED, DONE, FAILED, STATE_NAMES, Engine, Listener, Request, RequestRejected,
                     free_unused_memory)
from .memory import process_memory
from .ros_conversions import to_compressed_msg, to_image_msg

msg_pkg, action_pkg = interfaces.load()
GenerateCommand, GenerationStatus = msg_pkg.GenerateCommand, msg_pkg.GenerationStatus
Generate = action_pkg.Generate

# rviz2's Image display subscribes reliable + volatile; a small depth keeps late, large images from
# piling up in the middleware when a subscriber is slow (each 1024² frame is 3 MB).
IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# The results also keep the last image for subscribers that join later (a planner started after the image was made,
# an rviz opened late asking transient local), as map servers keep /map; volatile subscribers, rviz's default among
# them, match it as before and get only new images.
RESULT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
STATUS_QOS = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)

# what builds the model: settable only while the node is unconfigured (nothing loaded)
BUILD = {"bundle_path", "device", "dtype", "quantization", "kv_cache", "text_encoder", "offload_dir",
         "warmup_runs", "kernel_cache_dir"}
UNCONFIGURED_ONLY = " Settable only while the node is unconfigured (lifecycle cleanup first)."
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
CHOICES = {"dtype": ("fp32", "bf16", "fp16"), "quantization": ("bf16", "w4a4"), "kv_cache": ("bf16", "int8"),
           "text_encoder": ("bf16", "int8", "int4", "cpu"),
           "compressed_format": ("png", "jpeg"), "graph_pool": ("per_graph", "shared")}


def _desc(text, read_only=False, int_range=None, float_range=None):
    d = ParameterDescriptor(description=text, read_only=read_only)
    if int_range:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range:
        d.floating_point_range = [FloatingPointRange(from_value=float(float_range[0]), to_value=float(float_range[1]),
                                                     step=0.0)]
    return d


class GenNode(LifecycleNode):
    def __init__(self, **node_kwargs):
        """node_kwargs go to rclpy's Node (context, parameter_overrides: tests that run it in their process).
        Unless `managed`, configures and activates itself, raising RuntimeError if the model does not load."""
        super().__init__("var_gen", **node_kwargs)
        P = self.declare_parameter
        P("managed", False, _desc("false: configure and activate at start-up (serve at once); true: come up "
                                  "unconfigured and let a lifecycle manager (or ros2 lifecycle set) load the model "
                                  "(configure), serve (activate), pause (deactivate) and unload it (cleanup)", True))
        P("bundle_path", "", _desc("model bundle directory; empty = the embedded default model." + UNCONFIGURED_ONLY))
        P("device", "auto", _desc("auto | cpu | cuda | cuda:N." + UNCONFIGURED_ONLY))
        P("dtype", "fp32", _desc("weights/compute dtype: fp32 | bf16 | fp16." + UNCONFIGURED_ONLY))
        P("quantization", "bf16", _desc("bf16 (unquantized) | w4a4 (SVDQuant)." + UNCONFIGURED_ONLY))
        P("kv_cache", "bf16", _desc("KV cache precision: bf16 (the model dtype) | int8." + UNCONFIGURED_ONLY))
        P("text_encoder", "bf16", _desc("text encoder: bf16 (as loaded) | int8 (weight-only) | int4 (weight-only, 64-wide "
                                        "groups; INT8 token table; 8B W4A4+KV8 at 1024² on the H100: 0.60 GiB less reserved "
                                        "than int8, seventeenth session) | cpu." + UNCONFIGURED_ONLY))
        P("offload_dir", "", _desc("a directory on a disk (not a tmpfs): the weights that run once per prompt or "
                                   "generation wait in files there and are loaded when needed: the text encoder for "
                                   "a prompt the prompt cache misses, the transformer's layers that read only the "
                                   "text for a prompt other than the last one, the VAE for each decode (0.67, 0.66 "
                                   "and 0.15 GiB for 8B W4A4 with the INT4 encoder). The scales' peak then holds "
                                   "none of them (on a Jetson moving them to the CPU frees nothing); each load costs "
                                   "its read (docs/BENCHMARKS.md, thirtieth session). '' = resident."
                                   + UNCONFIGURED_ONLY))
        P("activation_chunk", 2048, _desc("scales with more token positions than this run their per-token layers in "
                                          "slices of this many (same numbers, less peak memory); 0 = whole scales. "
                                          "8B W4A4+KV8 at 1024² on the H100 with the other defaults, side by side "
                                          "(fortieth session): 2048 -> 0.968 s, 1024 -> 1.001 s, the same 9.15 GiB "
                                          "allocated at the peak, 10.17 against 10.03 reserved",
                                         int_range=(0, 1 << 20)))
        P("cuda_graphs", True, _desc("replay each scale of at most graph_max_tokens tokens as a CUDA graph (GPU): 8B "
                                     "W4A4+KV8 at 1024² on the H100 1.20 s instead of 2.52 s eager (fifteenth session); "
                                     "the KV caches stay allocated between requests (3.4 GiB there; the VAE "
                                     "decode borrows their memory); false frees both (docs/BENCHMARKS.md)"))
        P("graph_max_tokens", 4096, _desc("with cuda_graphs, the largest scale (in token positions) that is graph-replayed; "
                                          "larger ones run eagerly. 8B W4A4+KV8 at 1024² on the H100, shared pool: "
                                          "4096 (every scale; the last one's attention then takes cuDNN inside its "
                                          "graph) -> 1.075 s, 9.97 GiB reserved (twenty-sixth session); in the "
                                          "fifteenth 2304 took 1.17 s and 1024 1.34-1.62 s (eager 1600- and "
                                          "2304-token scales are bound by the host's launch speed)",
                                          int_range=(1, 1 << 20)))
        P("graph_pool", "shared", _desc("with cuda_graphs, the graphs' memory: shared (one pool for all: about the "
                                        "largest scale's working set) | per_graph (one pool each: the sum). 8B "
                                        "W4A4+KV8 at 1024² on the H100, graphs up to 2304 tokens: 10.74 vs 11.93 GiB "
                                        "reserved, as fast (docs/BENCHMARKS.md, fifteenth session). Changing it "
                                        "captures anew"))
        P("prompt_cache_size", 16, _desc("the text encoder's outputs kept for this many recent prompts (with their "
                                         "negative prompt and CFG): a prompt seen again skips the encoder, same image "
                                         "for the same seed; 0 = off. About 0.5 MB per 30-token prompt with CFG at Infinity's "
                                         "widths", int_range=(0, 4096)))
        P("warmup_runs", 0, _desc("throw-away generations run at start-up, in the background ahead of every request "
                                  "(requests queue behind them; /diagnostics says how far they are): the first "
                                  "autotunes the GPU kernels (minutes on a fresh machine), the second captures the CUDA "
                                  "graphs (with cuda_graphs)." + UNCONFIGURED_ONLY, int_range=(0, 10)))
        P("kernel_cache_dir", "", _desc("directory kept between starts for the GPU kernels compiled and autotuned at "
                                        "run time (Triton's cache, the CUDA extension's build); '' = "
                                        "TRITON_CACHE_DIR / TORCH_EXTENSIONS_DIR as set, else their defaults "
                                        "(~/.triton/cache). With nothing cached the first generation compiles and "
                                        "autotunes for minutes." + UNCONFIGURED_ONLY))
        P("width", 0, _desc("default width in pixels (0 = the model's default)", int_range=(0, 4096)))
        P("height", 0, _desc("default height in pixels (0 = the model's default)", int_range=(0, 4096)))
        P("cfg", 0.0, _desc("classifier-free guidance scale; 0 = the model's own default", float_range=(0.0, 30.0)))
        P("seed", -1, _desc("default seed; -1 = random per request", int_range=(-1, 2 ** 31 - 1)))
        P("queue_size", 4, _desc("requests waiting at most (the running one not counted)", int_range=(1, 64)))
        P("max_prompt_chars", 2000, _desc("longer prompts are rejected", int_range=(1, 100000)))
        P("frame_id", "var_gen", _desc("header.frame_id of published images"))
        P("publish_previews", True, _desc("publish ~/preview after every scale for every request"))
        P("compressed_format", "png", _desc("~/image/compressed encoding: png | jpeg"))
        P("idle_release_s", 0.0, _desc("seconds with nothing to run after which the CUDA graphs, their memory pool, "
                                       "the KV caches kept for them (3.4 GiB for 8B at 1024²) and the allocator's free "
                                       "memory go back to the system (on a Jetson, the robot's DRAM); the model stays, "
                                       "and the next request captures its graphs anew (about an eager generation's "
                                       "time; 8B at 1024² on the H100: 9.97 -> 5.70 GiB reserved, the next request "
                                       "4.2 s). 0 = never", float_range=(0.0, 86400.0)))
        P("diagnostics_period", 1.0, _desc("seconds between /diagnostics messages", float_range=(0.1, 60.0)))
        P("stall_timeout_s", 300.0, _desc("seconds a running generation may go without finishing a scale before "
                                          "/diagnostics reports ERROR (a GPU that never finishes a kernel raises "
                                          "nothing); 0 = never. A first generation that compiles the GPU kernels "
                                          "can take minutes on a Jetson", float_range=(0.0, 86400.0)))
        P("exit_on_gpu_fault", True, _desc("after a GPU fault (a sticky CUDA error: an illegal memory access, a "
                                           "trapped kernel; the process's CUDA context is lost) report it, then exit "
                                           "with status 3 so that the launch file's respawn restarts the node; false: "
                                           "stay up, report it and reject every request"))
        self._validate_all()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.engine = None            # made by configure, released by cleanup
        self._serving = False         # active
        self.configure_error = ""     # why the last configure failed ("" if it did not)
        self.release_note = ""        # what the last cleanup gave back
        self.refused = 0              # requests rejected because the node was not active
        cb = ReentrantCallbackGroup()
        self.pub_image = self.create_publisher(Image, "~/image", RESULT_QOS)
        self.pub_compressed = self.create_publisher(CompressedImage, "~/image/compressed", RESULT_QOS)
        self.pub_preview = self.create_publisher(Image, "~/preview", IMAGE_QOS)
        self.pub_status = self.create_publisher(GenerationStatus, "~/status", STATUS_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(String, "~/prompt", self._on_prompt, 10, callback_group=cb)
        self.create_subscription(GenerateCommand, "~/command", self._on_command, 10, callback_group=cb)
        self._action = ActionServer(self, Generate, "~/generate", execute_callback=self._execute,
                                    goal_callback=lambda g: GoalResponse.ACCEPT,
                                    cancel_callback=lambda h: CancelResponse.ACCEPT, callback_group=cb)
        self._stall_logged = ""
        self.exit_code = 0
        self._warmup_n, self._warm_scale = 0, ("", 0, 0)
        self._diag_timer = self.create_timer(self.p("diagnostics_period"), self._publish_diagnostics)
        if not self.p("managed"):
            if self.trigger_configure() != SUCCESS:
                raise RuntimeError(self.configure_error or "configure failed")
            self.trigger_activate()
        else:
            self.get_logger().info("up, unconfigured (managed): configure loads the model, activate serves")

    # ---------------------------------------------------------------- lifecycle
    def lifecycle_state(self) -> str:
        """unconfigured | inactive | active | finalized, or a transition's label while one runs."""
        return self._state_machine.current_state[1]

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            gen = self._load_generator()
        except Exception as e:       # a missing or corrupt bundle, out of memory, ...: say why, stay unconfigured
            self.configure_error = f"cannot load the model: {type(e).__name__}: {e}"[:2000]
            gen = None
        if gen is None:
            self.get_logger().error(self.configure_error)
            free_unused_memory()     # what a load that failed half-way had put on the GPU (its frames are gone now)
            return FAILURE
        self.configure_error = ""
        self.engine = Engine(gen, queue_size=self.p("queue_size"), max_prompt_chars=self.p("max_prompt_chars"),
                             listener=_NodeListener(self), idle_release_s=self.p("idle_release_s"))
        self._warmup_n, self._warm_scale = 0, ("", 0, 0)
        if self.p("warmup_runs"):
            self._start_warmup()
        self.get_logger().info(f"configured: model {gen.name} on {gen.device} ({gen.dtype}), "
                               f"{gen.cfg.num_params() / 1e6:.1f}M transformer parameters")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._serving = True
        warming = self.engine.warming_up
        self.get_logger().info(("active, warming up: serving once the warm-up ends" if warming else "active: serving"))
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stops serving and keeps the model: the running request stops at its next scale (CANCELLED), the queued
        ones are dropped (CANCELLED, "node deactivated"); a warm-up goes on."""
        self._serving = False
        running = self.engine.cancel("")
        dropped = self.engine.clear_queue(note="node deactivated")
        self.get_logger().info(f"inactive: {int(running)} running and {dropped} queued request(s) cancelled; "
                               "the model stays loaded")
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._release("cleanup")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._serving = False
        if self.engine is not None:
            self._release("shutdown")
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._serving = False
        if self.engine is not None:
            self._release("error")
        return SUCCESS

    def _release(self, why: str) -> TransitionCallbackReturn:
        """Unloads the model: the engine stops (the running request stops at its next scale, the queue and a
        warm-up are dropped) and lets go of the generator, and the freed GPU memory goes back to the driver."""
        self._serving = False
        try:
            mem = self.engine.release(timeout=max(10.0, min(self.p("stall_timeout_s") or 60.0, 120.0)))
        except RuntimeError as e:
            self.release_note = f"{why} failed: {e}"
            self.get_logger().error(self.release_note)
            return FAILURE
        self.engine = None
        self.release_note = _release_note(why, mem)
        self.get_logger().info(self.release_note)
        return SUCCESS

    def _not_serving(self) -> str:
        """Why a request cannot be served now ("" when active)."""
        if self._serving and self.engine is not None:
            return ""
        me = self.get_fully_qualified_name()
        if self.engine is None:
            why = f"; the last configure failed: {self.configure_error}" if self.configure_error else ""
            return (f"not serving: the node is {self.lifecycle_state()}, no model loaded{why} (ros2 lifecycle set "
                    f"{me} configure, then activate)")
        return f"not serving: the node is {self.lifecycle_state()} (ros2 lifecycle set {me} activate)"

    def _refuse(self, request_id: str, prompt: str) -> bool:
        """Rejects a request with the reason if the node is not active (REJECTED on ~/status); True if it did."""
        why = self._not_serving()
        if why:
            self.refused += 1
            self._publish_status_raw(request_id or uuid.uuid4().hex[:12], 5, why, prompt)
            self.get_logger().warning(f"request rejected: {why}")
        return bool(why)

    # ---------------------------------------------------------------- parameters
    def p(self, name):
        return self.get_parameter(name).value

    def _check(self, name, value) -> str:
        if name in CHOICES and value not in CHOICES[name]:
            return f"{name} must be one of {CHOICES[name]}, got {value!r}"
        if name == "device" and not (value in ("auto", "cpu") or str(value).startswith("cuda")):
            return f"device must be auto, cpu or cuda[:N], got {value!r}"
        return ""

    def _validate_all(self):
        for name in CHOICES.keys() | {"device"}:
            err = self._check(name, self.p(name))
            if err:
                raise ValueError(err)

    def _on_set_parameters(self, params):
        for prm in params:
            if prm.name == "managed":
                return SetParametersResult(successful=False, reason="managed is fixed at start-up")
            if prm.name in BUILD and self.engine is not None:
                return SetParametersResult(successful=False, reason=(
                    f"{prm.name} builds the model, which is loaded: set it while the node is unconfigured (ros2 "
                    f"lifecycle set {self.get_fully_qualified_name()} deactivate, then cleanup)"))
            err = self._check(prm.name, prm.value)
            if err:
                return SetParametersResult(successful=False, reason=err)
            if prm.name == "diagnostics_period":
                self._diag_timer.timer_period_ns = int(float(prm.value) * 1e9)
            if self.engine is None:          # read from the parameters at the next configure
                continue
            if prm.name == "queue_size":
                self.engine.queue_size = int(prm.value)
            if prm.name == "max_prompt_chars":
                self.engine.max_prompt_chars = int(prm.value)
            if prm.name == "idle_release_s":
                self.engine.set_idle_release(float(prm.value))
            if prm.name == "activation_chunk":     # read by the next generation
                self.engine.generator.chunk_tokens = int(prm.value)
            if prm.name == "graph_max_tokens":     # the next generation captures anew (the graphs' key changes)
                self.engine.generator.graph_max_tokens = int(prm.value)
            if prm.name == "graph_pool":           # the same
                self.engine.generator.graph_pool = prm.value
            if prm.name == "prompt_cache_size":    # smaller drops the least recently used prompts now
                self.engine.generator.prompt_cache.max_entries = int(prm.value)
            if prm.name == "cuda_graphs":          # read by the next generation; off frees the kept ones
                self.engine.generator.cuda_graphs = bool(prm.value)
                if not prm.value:
                    self.engine.generator.release_graphs()
        return SetParametersResult(successful=True)

    def _load_generator(self):
        from .kernel_cache import describe
        from .product import SETTINGS, build_generator
        built = build_generator({name: self.p(name) for name in SETTINGS},
                                log=self.get_logger().info, warn=self.get_logger().warning)
        self.kernel_cache_note, self.allocator_note = describe(built.kernel_cache), built.allocator_note
        self.precision = built.precision
        return built.generator

    def _start_warmup(self):
        """The warm-up generations, in the engine's worker ahead of every request: the node is already up
        (diagnostics, topics, action server) while the first one autotunes the GPU kernels, minutes on a fresh
        machine; requests queue behind them."""
        n = self._warmup_n = self.p("warmup_runs")
        w, h = self.p("width") or None, self.p("height") or None
        try:
            self.engine.warm_up(n, width=w, height=h, cfg=self.p("cfg") if self.p("cfg") > 0 else None)
        except RequestRejected as e:
            self.engine.warmup_error = f"not run: {e}"
            self.get_logger().error(f"warm-up not run, serving without it: {e}")
            return
        self.get_logger().info(f"warming up in the background: {n} generation(s) (the first autotunes and compiles "
                               "the GPU kernels, minutes on a fresh machine); requests queue until it ends")

    def on_warmup_state(self, req):
        if req.state == DONE:
            last = req.request_id == f"warmup-{self._warmup_n}"
            self.get_logger().info(f"{req.request_id} took {req.run_s:.2f} s" + ("; warm-up done, serving" if last else ""))
        elif req.state == FAILED:
            self.get_logger().error(f"warm-up failed, serving without it: {req.request_id}: {req.error}")

    def _warmup_state(self) -> str:
        """For diagnostics: what the warm-up is doing or did."""
        eng = self.engine
        if eng.warming_up:
            cur, (rid, i, total) = eng.current, self._warm_scale
            if cur is None or not cur.warmup:
                return f"queued ({self._warmup_n} generation(s))"
            at = f", scale {i}/{total} done" if rid == cur.request_id else ""
            return f"running: {cur.request_id} of {self._warmup_n}{at}"
        if eng.warmup_error:
            return f"failed, serving without it: {eng.warmup_error}"
        return "done" if eng.warmup_s else "off"

    # ---------------------------------------------------------------- inputs
    def _defaults(self, req: Request) -> Request:
        if req.seed is None and self.p("seed") >= 0:
            req.seed = self.p("seed")
        if req.cfg is None and self.p("cfg") > 0:
            req.cfg = self.p("cfg")
        if req.width is None and req.height is None and req.aspect_ratio is None and self.p("width") and self.p("height"):
            req.width, req.height = self.p("width"), self.p("height")
        req.preview = req.preview or self.p("publish_previews")
        return req

    def _on_prompt(self, msg: String):
        eng = self.engine            # (a cleanup in another thread may drop it: the engine then rejects)
        if self._refuse("", msg.data):
            return
        try:
            eng.submit(self._defaults(Request(prompt=msg.data)))
        except RequestRejected as e:
            self.get_logger().warning(f"prompt rejected: {e}")

    def _on_command(self, msg: GenerateCommand):
        verb = (msg.verb or "generate").strip().lower()
        eng = self.engine            # (a cleanup in another thread may drop it: the engine then rejects)
        if verb in ("cancel", "clear_queue") and eng is None:
            self.get_logger().info(f"{verb}: nothing to do, no model loaded")
            return
        if verb == "cancel":
            ok = eng.cancel(msg.request_id)
            self.get_logger().info(f"cancel {msg.request_id or '(running)'}: {'done' if ok else 'nothing to cancel'}")
            return
        if verb == "clear_queue":
            self.get_logger().info(f"cleared {eng.clear_queue()} queued request(s)")
            return
        if verb != "generate":
            self._publish_status_raw(msg.request_id, 5, f"unknown verb {msg.verb!r} (generate | cancel | clear_queue)",
                                     msg.prompt)
            return
        if self._refuse(msg.request_id, msg.prompt):
            return
        try:
            eng.submit(self._defaults(request_from_fields(msg)))
        except RequestRejected as e:
            self.get_logger().warning(f"command rejected: {e}")

    # ---------------------------------------------------------------- action
    def _execute(self, goal_handle):
        node = self

        class ActionListener(Listener):
            def on_scale(self, req, ev):
                fb = Generate.Feedback(scale_index=ev.index + 1, total_scales=ev.total, progress=float(ev.progress),
                                       elapsed_s=float(ev.elapsed_s), has_preview=ev.preview is not None)
                if ev.preview is not None:
                    fb.preview = to_image_msg(ev.preview, node._header())
                goal_handle.publish_feedback(fb)

        req = request_from_fields(goal_handle.request)
        result = Generate.Result(request_id=req.request_id)
        eng, why = self.engine, self._not_serving()
        if why:
            self.refused += 1
            result.success, result.error = False, why
            goal_handle.abort()
            return result
        req.listener = ActionListener()
        req = self._defaults(req)
        req.preview = bool(goal_handle.request.preview)
        try:
            eng.submit(req)
        except RequestRejected as e:
            result.success, result.error, result.request_id = False, str(e), req.request_id
            goal_handle.abort()
            return result
        result.request_id = req.request_id
        while not req.done_event.wait(0.05):
            if goal_handle.is_cancel_requested:
                eng.cancel(req.request_id)
        result.success = req.state == DONE
        result.error = req.error
        if req.state == DONE:
            r = req.result
            result.image = to_image_msg(r.image, self._header())
            result.seed = r.seed
            _fill_timings(result, r)
            goal_handle.succeed()
        elif req.state == CANCELLED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    # ---------------------------------------------------------------- outputs
    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.p("frame_id"))

    def publish_result(self, req: Request):
        hdr = self._header()
        self.pub_image.publish(to_image_msg(req.result.image, hdr))
        try:
            self.pub_compressed.publish(to_compressed_msg(req.result.image, hdr, self.p("compressed_format")))
        except Exception as e:
            self.get_logger().error(f"compressed image: {e}")

    def publish_status(self, req: Request, ev=None):
        st = GenerationStatus(header=self._header(), request_id=req.request_id, state=req.state,
                              state_name=STATE_NAMES[req.state], error=req.error, prompt=req.prompt[:500],
                              queue_depth=self.engine.queue_depth)
        if ev is not None:
            st.scale_index, st.total_scales = ev.index + 1, ev.total
            st.progress, st.elapsed_s = float(ev.progress), float(ev.elapsed_s)
        if req.result is not None:
            r = req.result
            st.seed = r.seed
            st.scale_index = st.total_scales = len(r.schedule.scales)
            st.progress = 1.0
            _fill_timings(st, r)
            st.kv_cache_bytes = int(r.memory.get("kv_cache_bytes", 0))
        self.pub_status.publish(st)

    def _publish_status_raw(self, request_id, state, error, prompt=""):
        self.pub_status.publish(GenerationStatus(header=self._header(), request_id=request_id, state=state,
                                                 state_name=STATE_NAMES[state], error=error, prompt=prompt[:500],
                                                 queue_depth=self.engine.queue_depth if self.engine else 0))

    def _publish_diagnostics(self):
        if self.engine is None:
            self._publish_unloaded_diagnostics()
            return
        import torch
        g, s = self.engine.generator, self.engine.stats
        level = DiagnosticStatus.OK if not s.errors else DiagnosticStatus.WARN
        message = "errors seen" if s.errors else "ok"
        cur, since = self.engine.current, self.engine.stalled_for()
        limit = self.p("stall_timeout_s")
        stalled = cur is not None and limit > 0 and since > limit
        warming, warm_state = self.engine.warming_up, self._warmup_state()
        if warming:
            message = ("warming up, " + warm_state + "; the first generation autotunes the GPU kernels (minutes on a "
                       "fresh machine), requests queue until it ends")
        elif self.engine.warmup_error:
            level, message = max(level, DiagnosticStatus.WARN), "warm-up " + warm_state
        if not self._serving:
            message = (f"{self.lifecycle_state()}: the model is loaded, requests are rejected until the node is "
                       "activated" + (f"; {message}" if message != "ok" else ""))
        if self.engine.gpu_fault:
            level, message = DiagnosticStatus.ERROR, self.engine.gpu_fault
        elif stalled and cur.warmup:
            # Triton's autotuner, trying every candidate of a kernel at a new shape, spent up to 91 s on one scale
            # of an H100's first generation: on a smaller GPU longer. So a warning, not the hung-GPU error.
            level = max(level, DiagnosticStatus.WARN)
            message = (f"warming up, {warm_state}: no scale finished for {since:.0f} s (stall_timeout_s {limit:g}); "
                       "autotuning the GPU kernels can take this long on a fresh machine; if it goes on, the GPU may "
                       "be hung")
            if self._stall_logged != cur.request_id:
                self._stall_logged = cur.request_id
                self.get_logger().warning(message)
        elif stalled:
            level = DiagnosticStatus.ERROR
            message = (f"generation stalled: request {cur.request_id} has finished no scale for {since:.0f} s "
                       f"(stall_timeout_s {limit:g}); the GPU may be hung. A cancel takes effect only between "
                       "scales; restarting the node frees the GPU")
            if self._stall_logged != cur.request_id:
                self._stall_logged = cur.request_id
                self.get_logger().error(message)
        values = {
            "model": g.name, "device": str(g.device), "dtype": str(g.dtype).replace("torch.", ""),
            "quantization": self.p("quantization"), "kv_cache": self.p("kv_cache"),
            "precision": getattr(self, "precision", ""), "kernels": _kernel_status(g),
            "allocator": getattr(self, "allocator_note", "") or "as configured",
            "kernel_cache": getattr(self, "kernel_cache_note", ""),
            "lifecycle_state": self.lifecycle_state(), "ready": self._serving and not warming, "warm_up": warm_state,
            "queue_depth": self.engine.queue_depth, "running": cur is not None,
            "seconds_since_progress": f"{since:.3f}",
            "completed": s.completed, "error_count": s.errors, "cancelled": s.cancelled, "rejected": s.rejected,
            "rejected_not_active": self.refused,
            "last_latency_s": f"{s.last_latency_s:.3f}", "last_error": s.last_error,
            "kv_cache_bytes": s.last_kv_cache_bytes, "peak_gpu_memory_bytes": s.last_peak_memory,
            "weights_bytes": sum(g.weight_bytes().values()),
            "cuda_graphs": g.graph_status(), "idle_release": self.engine.idle_release_status(),
            "prompt_cache": g.prompt_cache.status(),
            "offloaded_weights": g.offload_status(),
            **({"offload_preload": self.engine.preload} if self.engine.preload else {}),
            "warmup_s": ", ".join(f"{t:.2f}" for t in self.engine.warmup_s),
        }
        if g.device.type == "cuda" and not stalled and not self.engine.gpu_fault:
            # not while stalled: a worker waiting on the GPU inside the caching allocator holds the lock this takes
            values["current_gpu_memory_bytes"] = torch.cuda.memory_allocated(g.device)
        # the process's host memory: on a Jetson it comes out of the same DRAM as the GPU's
        values.update({f"host_{k}_bytes": v for k, v in process_memory().items()})
        st = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: generator",
                              message=message, hardware_id=str(g.device),
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=self._header(), status=[st]))

    def _publish_unloaded_diagnostics(self):
        """No model loaded (unconfigured, or a configure that failed: ERROR with its reason)."""
        level, message = DiagnosticStatus.OK, (f"{self.lifecycle_state()}: no model loaded; configure, then "
                                               "activate, to serve")
        if self.configure_error:
            level, message = DiagnosticStatus.ERROR, self.configure_error
        values = {"lifecycle_state": self.lifecycle_state(), "ready": False, "model": "(not loaded)",
                  "bundle_path": self.p("bundle_path") or "(embedded default)", "quantization": self.p("quantization"),
                  "kv_cache": self.p("kv_cache"), "last_release": self.release_note,
                  "rejected_not_active": self.refused}
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
            torch = sys.modules["torch"]
            values["current_gpu_memory_bytes"] = torch.cuda.memory_allocated()
            values["reserved_gpu_memory_bytes"] = torch.cuda.memory_reserved()
        values.update({f"host_{k}_bytes": v for k, v in process_memory().items()})
        st = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: generator", message=message,
                              hardware_id=self.p("device"),
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        self.pub_diag.publish(DiagnosticArray(header=self._header(), status=[st]))


    def on_gpu_fault(self, message: str) -> None:
        """From the engine's worker, once: the failed requests' statuses are out; say it on /diagnostics now, and
        with exit_on_gpu_fault stop the node (main returns 3, and a launch file with respawn restarts it)."""
        self.get_logger().fatal(message)
        self._publish_diagnostics()
        if self.p("exit_on_gpu_fault"):
            self.exit_code = 3
            self.get_logger().fatal("exiting in 1 s (exit_on_gpu_fault): the launch file's respawn restarts the node")
            # the second lets the failed requests' statuses and action results leave before the executor stops
            threading.Timer(1.0, rclpy.try_shutdown, kwargs={"context": self.context}).start()


class _NodeListener(Listener):
    def __init__(self, node: GenNode):
        self.node = node

    def on_state(self, req):
        if req.warmup:           # the node's own throw-away generations: logged and in diagnostics, not published
            self.node.on_warmup_state(req)
            return
        if req.state == DONE:
            self.node.publish_result(req)
        self.node.publish_status(req)

    def on_gpu_fault(self, message):
        self.node.on_gpu_fault(message)

    def on_scale(self, req, ev):
        if req.warmup:
            self.node._warm_scale = (req.request_id, ev.index + 1, ev.total)
            return
        if ev.preview is not None:
            self.node.pub_preview.publish(to_image_msg(ev.preview, self.node._header()))
        self.node.publish_status(req, ev)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _release_note(why: str, mem: dict) -> str:
    """What an unload gave back, for the log and /diagnostics."""
    parts = []
    for key, name in (("gpu_allocated", "GPU allocated"), ("gpu_reserved", "GPU reserved"),
                      ("host_rss_anon", "host anonymous")):
        if f"{key}_before" in mem:
            b, a = mem[f"{key}_before"], mem[f"{key}_after"]
            parts.append(f"{name} {_size(b)} -> {_size(a)}")
    return f"model unloaded ({why}): " + (", ".join(parts) or "memory not measured here")


def _kernel_status(g) -> str:
    if not getattr(g, "quant_manifest", None):
        return "none (unquantized)"
    from .quant.dispatch import kernel_status
    return kernel_status() if g.device.type == "cuda" else "pytorch reference (cpu)"


def request_from_fields(m) -> Request:
    """GenerateCommand or Generate.Goal -> Request (sentinels mean 'use the default')."""
    return Request(prompt=m.prompt, request_id=m.request_id, negative_prompt=m.negative_prompt or None,
                   seed=None if m.seed < 0 else int(m.seed), cfg=None if m.cfg <= 0 else float(m.cfg),
                   width=int(m.width) or None, height=int(m.height) or None,
                   aspect_ratio=float(m.aspect_ratio) if m.aspect_ratio > 0 else None,
                   top_k=None if m.top_k < 0 else int(m.top_k), top_p=None if m.top_p < 0 else float(m.top_p),
                   preview=bool(m.preview))


def _fill_timings(msg, r):
    msg.text_encoder_s = float(r.timings.get("text_encoder_s", 0.0))
    msg.text_cached = bool(r.text_cache_hit)
    msg.transformer_s = float(sum(r.timings.get("scales_s", [])))
    msg.vae_decode_s = float(r.timings.get("vae_decode_s", 0.0))
    msg.total_s = float(r.timings.get("total_s", 0.0))
    msg.peak_memory_bytes = int(r.memory.get("peak_allocated", 0))


def main(args=None):
    rclpy.init(args=args)
    try:
        node = GenNode()
    except Exception as e:
        print(f"gen_node: cannot start: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    ex = MultiThreadedExecutor(num_threads=4)
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.engine is not None:
            node.engine.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return node.exit_code


if __name__ == "__main__":
    sys.exit(main())
