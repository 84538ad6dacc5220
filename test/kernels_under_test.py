"""The kernel modules as the dispatcher loads them (tests and benchmarks call them directly)."""
from var_gen_ros.quant.dispatch import kernel_module


def gemm_module():
    return kernel_module("w4a4_gemm_triton")


def attention_module():
    return kernel_module("int8_kv_attention_triton")


def qkv_rope_module():
    return kernel_module("qkv_rope_triton")


def qkv_epilogue_float64(qkv, sa, rope):
    """SelfAttention.qkv's epilogue (bias, normalize, scale, RoPE) in float64 on a projection output
    qkv (B, n, 3C): the reference the fused kernel is checked against."""
    import torch.nn.functional as F
    from var_gen_ros.infinity.model import apply_rope
    B, n, _ = qkv.shape
    H, c = sa.num_heads, sa.head_dim
    bias, scale_mul = (t.double() for t in sa.qkv_constants())
    q, k, v = (qkv.double() + bias).view(B, n, 3, H, c).permute(2, 0, 3, 1, 4).unbind(0)
    q = F.normalize(q, dim=-1, eps=1e-12) * scale_mul
    k = F.normalize(k, dim=-1, eps=1e-12)
    return apply_rope(q, rope.double()), apply_rope(k, rope.double()), v


def assert_qkv_written(outs, refs, start, n, tol):
    """q, k, v (B, H, L, c) buffers against float64 references of their tokens [start, start + n): the
    largest error relative to the reference's largest value within tol(name, dtype), and the tokens
    outside the slice still NaN (the buffers were poisoned)."""
    for name, out, ref in zip("qkv", outs, refs):
        got = out[:, :, start:start + n].double()
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err <= tol(name, out.dtype), (name, err)
        assert out[:, :, :start].isnan().all() and out[:, :, start + n:].isnan().all(), name


def adaln_module():
    return kernel_module("adaln_triton")
