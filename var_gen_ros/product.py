"""The product's generator built from gen_node's settings, without ROS: the node builds it this way, and so does
`var-gen warm-cache`, which fills the kernel cache before a robot's first start with exactly what the node will
run (a fresh cache cost 310 s of the first 8B generation on an H100: docs/BENCHMARKS.md, twenty-third session).

Settings are the node's parameter names. `DEFAULTS` are its declared defaults (a test checks them against
node.py); `read_params_files` reads the node's YAML parameter files as `--params-file` does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List

# the settings that build the generator (the rest of DEFAULTS: what warm-cache's generations use)
SETTINGS = ("bundle_path", "device", "dtype", "quantization", "kv_cache", "text_encoder", "offload_dir",
            "activation_chunk", "cuda_graphs", "graph_max_tokens", "graph_pool", "prompt_cache_size", "kernel_cache_dir")
DEFAULTS = {"bundle_path": "", "device": "auto", "dtype": "fp32", "quantization": "bf16", "kv_cache": "bf16",
            "text_encoder": "bf16", "offload_dir": "", "activation_chunk": 2048, "cuda_graphs": True, "graph_max_tokens": 4096,
            "graph_pool": "shared", "prompt_cache_size": 16, "kernel_cache_dir": "", "warmup_runs": 0,
            "width": 0, "height": 0, "cfg": 0.0}


def read_params_files(paths: List[str], node_name: str = "var_gen") -> dict:
    """The parameters these ROS 2 parameter files give gen_node, later files over earlier ones (the `/**` section,
    then the node's own name, as `--params-file` applies them)."""
    import yaml
    out: dict = {}
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        for key in ("/**", node_name, "/" + node_name):
            out.update((doc.get(key) or {}).get("ros__parameters") or {})
    return out


def parse_overrides(items: List[str]) -> dict:
    """`name:=value` pairs (the `-p` of --ros-args), values read as YAML (true, 4096, 3.0, "")."""
    import yaml
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"expected name:=value, got {item!r}")
        out[name] = yaml.safe_load(value) if value else ""
    return out


@dataclass
class BuiltGenerator:
    generator: object
    device: str
    precision: str          # what apply_precision / apply_text_encoder did
    kernel_cache: dict      # kernel_cache_status() at start
    allocator_note: str     # the Tegra allocator guard's note ("" if nothing to do)


def shipped_picks(device: str) -> str:
    """The table of autotuning picks shipped for this GPU model, or for another of its architecture
    (kernels/tuned_picks.py), or "" if none is."""
    try:
        import torch
        from .quant.dispatch import kernel_module
        dev = torch.device(device)
        table, where = kernel_module("tuned_picks").load_table(torch.cuda.get_device_name(dev),
                                                               capability=torch.cuda.get_device_capability(dev))
    except Exception:      # no Triton, a bad VAR_GEN_TUNED_PICKS: the dispatcher reports it when it loads
        return ""
    return os.path.basename(where) if table is not None else ""


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# an offload's files: "<what>_<pid>_<generator id>.safetensors" (what: Generator.offload_to_disk's names), each held
# (flock) by its process while it runs (parking.write_held); nothing else in the directory is touched
_OFFLOADED = re.compile(r"^(?:text_encoder|condition|vae)_[0-9]+_[0-9a-f]+\.safetensors$")


def remove_stale_offloads(directory: str) -> List[str]:
    """Removes the files of offloads whose process has ended without removing them (killed, crashed: a respawned
    node would otherwise leave ~1.5 GiB at 8B for each death): those no process holds. The kernel drops a dead
    process's locks however it died, and a live one's, in any PID namespace sharing the directory, stay held.
    Returns the removed paths."""
    from .infinity.parking import remove_unheld
    return remove_unheld(directory, _OFFLOADED)


def offload_to_disk(gen, directory: str, warn: Callable[[str], None] = print) -> str:
    """The weights that run once per prompt or generation "run, then freed" (Generator.offload_to_disk), in files of
    `directory` (made if missing) named after the process and the generator, removed when the process ends. Files
    that processes which ended without removing theirs left there are removed first (remove_stale_offloads)."""
    import atexit
    directory = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(directory, exist_ok=True)
        stale = remove_stale_offloads(directory)
        note = gen.offload_to_disk(directory, tag=f"_{os.getpid()}_{id(gen):x}")
    except OSError as e:       # say which setting: the error alone names a path the user may not connect to it
        raise OSError(f"offload_dir {directory}: the weights cannot be offloaded there: {e}") from e
    for p in gen.parked_weights().values():
        atexit.register(_remove_quietly, p.path)  # (the path only: the generator can go before the process)
    if stale:
        note += f"; removed {len(stale)} files of offloads whose processes had ended without removing them"
    if "WARNING" in note:
        warn(note)
    return note


def build_generator(settings: Dict, log: Callable[[str], None] = print,
                    warn: Callable[[str], None] = print) -> BuiltGenerator:
    """The generator gen_node serves, from its settings (DEFAULTS for those not given)."""
    from .cli import DTYPES, default_bundle_path, resolve_device
    from .infinity import Generator
    from .kernel_cache import kernel_cache_status, use_kernel_cache
    from .memory import guard_tegra_allocator
    from .quant.runtime import apply_precision, apply_text_encoder
    s = {**DEFAULTS, **settings}
    path = s["bundle_path"] or default_bundle_path()
    device = resolve_device(s["device"])
    if s["kernel_cache_dir"]:    # before anything compiles: Triton and torch read these when they do
        use_kernel_cache(s["kernel_cache_dir"])
    cache = kernel_cache_status()
    shipped = shipped_picks(device) if device.startswith("cuda") else ""
    # with a shipped table the seeded keys are never tuned, so their picks never reach the cache: there, only
    # missing compiled kernels cost the first generation time
    if device.startswith("cuda") and not cache["compiled_kernels" if shipped else "autotune_picks"]:
        warn(f"no {'compiled kernels' if shipped else 'autotuning picks'} in {cache['triton_cache']}: the first "
             "generation compiles "
             + (f"the GPU kernels (their launch configurations ship with the package: {shipped}); "
                if shipped else "and autotunes the GPU kernels (minutes); ")
             + "keep that directory between starts (parameter kernel_cache_dir), or fill it first with var-gen "
             "warm-cache")
    # before the first CUDA allocation: a Jetson cannot map expandable segments
    allocator_note = guard_tegra_allocator() if device.startswith("cuda") else ""
    if allocator_note:
        warn(allocator_note)
    gen = Generator.from_bundle(path, device=device, dtype=DTYPES[s["dtype"]])
    precision = apply_precision(gen, s["quantization"], s["kv_cache"], path, log=log)
    precision += ", " + apply_text_encoder(gen, s["text_encoder"])
    if s["offload_dir"]:     # after the precision: the files hold the weights as they will run
        precision += ", " + offload_to_disk(gen, s["offload_dir"], warn)
    gen.chunk_tokens = s["activation_chunk"]
    gen.cuda_graphs = s["cuda_graphs"]
    gen.graph_max_tokens = s["graph_max_tokens"]
    gen.graph_pool = s["graph_pool"]
    gen.prompt_cache.max_entries = s["prompt_cache_size"]
    return BuiltGenerator(gen, device, precision, cache, allocator_note)
