"""Quantization of the Infinity generator: SVDQuant W4A4 linears and an INT8 asymmetric per-channel
KV cache (PyTorch references; the compiled kernels reproduce them). ROS-free."""
from .api import (DEFAULT_CALIB_PROMPTS, DEFAULT_POLICY, QuantConfig, QuantizationError, QuantReport,
                  load_quantized, quantize_, read_manifest, save_quantized)
from .int4 import (act_scales, dequantize_groups, group_scales, pack_int4, quantize_groups, two_level_scales, unpack_int4,
                   weight_scales, weight_units)
from .kv_int8 import Int8KVCache
from .w4a4 import W4A4Linear, sqnr_db

__all__ = ["DEFAULT_CALIB_PROMPTS", "DEFAULT_POLICY", "QuantConfig", "QuantizationError", "QuantReport",
           "load_quantized", "quantize_", "read_manifest", "save_quantized", "dequantize_groups", "act_scales", "group_scales",
           "two_level_scales", "weight_scales", "weight_units",
           "pack_int4", "quantize_groups", "unpack_int4", "Int8KVCache", "W4A4Linear", "sqnr_db"]
