"""The kernel modules as the dispatcher loads them (tests and benchmarks call them directly)."""
from var_gen_ros.quant.dispatch import _load_module


def gemm_module():
    return _load_module("w4a4_gemm_triton", "w4a4_gemm_triton.py")


def attention_module():
    return _load_module("int8_kv_attention_triton", "int8_kv_attention_triton.py")
