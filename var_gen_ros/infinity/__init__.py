"""Infinity bitwise visual autoregressive generator (clean-room PyTorch). ROS-free."""
from .config import (INFINITY_2B, INFINITY_8B, PRESETS, InfinityConfig, ScaleSchedule, VAEConfig, get_config,
                     official_schedule, schedule_for, tiny_config)
from .checkpoint import (CheckpointError, load_bundle, load_official_checkpoint, load_official_vae, save_bundle)
from .kv_cache import KVCache
from .model import Infinity
from .sampler import GenerationCancelled, GenerationResult, Generator, ScaleEvent
from .vae import BSQVAE

__all__ = [
    "INFINITY_2B", "INFINITY_8B", "PRESETS", "InfinityConfig", "ScaleSchedule", "VAEConfig", "get_config",
    "official_schedule", "schedule_for", "tiny_config", "CheckpointError", "load_bundle",
    "load_official_checkpoint", "load_official_vae", "save_bundle", "KVCache", "Infinity",
    "GenerationCancelled", "GenerationResult", "Generator", "ScaleEvent", "BSQVAE",
]
