"""Every kernel variant a GPU of another architecture would build, compiled here ahead of time.

Why: the product's target is a Jetson Orin (sm_87), and no Orin is reachable from where this code is
made (CI has no GPU at all; the lent GPU is an H100, sm_90). On its first start the Orin compiles each
kernel, and its autotuner each candidate config, for sm_87. A variant that Triton or ptxas rejects there
(a Hopper-only feature, a layout the older tensor cores lack) would stop the node at its first image; one
that needs more shared memory than the chip has is skipped by the autotuner, but must not be all a
kernel has. Triton compiles for a named target with no GPU or driver present (its own LLVM and the
ptxas in its wheel), so these checks run on any machine.

`variants(arch)` lists what the dispatch can launch on that architecture: the W4A4 paths `path_for`
picks there (i8 / i8w for two-level scales, INT8 MMA with a per-group rescale for free scales below
sm_89), every autotuner candidate its pruning keeps, the INT8-KV attention with its store and
dequantization, and the fused elementwise kernels, with their launch constexprs at the Infinity-8B
shapes. `compile_variant` builds one and reports its shared memory (and, with `ptxas_report`, its
registers and spills). `bench/target_compile.py` prints the table; `test/test_kernels_targets.py` runs it
in CI.
"""
from __future__ import annotations

import inspect
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import adaln_triton, group_norm_triton, int4_dequant_triton, int8_kv_attention_triton as attn, qkv_rope_triton, w4a4_gemm_triton as gemm

# Shared memory a block may have, in bytes, per compute capability (CUDA C++ Programming Guide, "Technical
# Specifications per Compute Capability": 8.0 and 8.7 163 KB, 8.6 and 8.9 99 KB, 9.0 227 KB, 7.5 64 KB)
SHARED_LIMIT = {75: 64 << 10, 80: 163 << 10, 86: 99 << 10, 87: 163 << 10, 89: 99 << 10, 90: 227 << 10}
ORIN = 87
_C, _H, _D, _R = 3584, 28, 128, 32          # Infinity-8B width, heads, head dim; the low-rank branch's rank


@dataclass
class Variant:
    """One compile: `kernel` (a @triton.jit function) with these constexprs and launch options. Arguments
    not named in `ptrs` (pointer element types, Triton's names) or `floats` are 32-bit ints; `div16` names
    the ints that are multiples of 16 at the 8B shapes (widths, strides). Pointers are 16-byte aligned, as
    torch's allocations are. Triton's launcher specializes on both; without them no load is vectorized,
    and with no 16-byte copies the sm_80 pipeliner (cp.async) stays off, which would misstate the shared
    memory and registers of every GEMM."""
    name: str
    kernel: object
    ptrs: Dict[str, str]
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    floats: tuple = ()
    div16: tuple = ()
    tuned: bool = False          # an autotuner candidate: a config the chip has no room for is skipped, not fatal
    notes: List[str] = field(default_factory=list)

    def signature(self) -> dict:
        sig, consts = {}, dict(self.constexprs)
        for p in self.kernel.params:
            n = p.name
            if p.is_constexpr or n in consts:
                if n not in consts:
                    if p.default is inspect.Parameter.empty:
                        raise ValueError(f"{self.name}: constexpr {n} has no value")
                    consts[n] = p.default
                sig[n] = "constexpr"
            elif n in self.ptrs:
                sig[n] = "*" + self.ptrs[n]
            elif n in self.floats:
                sig[n] = "fp32"
            else:
                sig[n] = "i32"
        unknown = set(self.ptrs) - set(sig)
        if unknown:
            raise ValueError(f"{self.name}: {sorted(unknown)} are not parameters of {self.kernel.__name__}")
        self.constexprs = consts
        return sig

    def attrs(self) -> dict:
        names = [p.name for p in self.kernel.params]
        unknown = set(self.div16) - set(names)
        if unknown:
            raise ValueError(f"{self.name}: {sorted(unknown)} are not parameters of {self.kernel.__name__}")
        return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                if (n in self.ptrs or n in self.div16) and n not in self.constexprs}


def compile_variant(v: Variant, arch: int, ptxas_report: bool = False) -> dict:
    """Compile `v` for sm_`arch`: {name, ok, shared, fits, error} (+ registers, spill bytes with ptxas_report)."""
    out = {"name": v.name, "arch": arch, "tuned": v.tuned, "num_warps": v.num_warps, "num_stages": v.num_stages}
    try:
        src = ASTSource(fn=v.kernel, signature=v.signature(), constexprs=v.constexprs, attrs=v.attrs())
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": v.num_warps, "num_stages": v.num_stages})
    except Exception as e:       # what the chip's first start would raise
        out.update(ok=False, error=f"{type(e).__name__}: {e}"[:800])
        return out
    shared = int(k.metadata.shared)
    out.update(ok=True, shared=shared, fits=shared <= SHARED_LIMIT.get(arch, 48 << 10),
               mma=sorted(set(re.findall(r"\b(mma\.sync\.aligned\.[\w.]+|wgmma\.mma_async[\w.]*)", k.asm["ptx"]))))
    if ptxas_report:
        out.update(_ptxas_usage(k.asm["ptx"], arch))
    return out


def _ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and whether wgmmas were serialized, from ptxas -v (the ptxas in Triton's wheel)."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)       # sm_90a for Hopper
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={target}", f.name, "-o", "/dev/null"],
                           capture_output=True, text=True)
    log = r.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    # C7515: ptxas made every wgmma of the kernel wait for the one before (seen with a shared-memory store in a loop that
    # leaves a wgmma group in flight across iterations; also named for non-wgmma writes to an accumulator), which undoes
    # an asynchronous K loop
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else None,
            "wgmma_serialized": "C7515" in log}


def _config_variant(name, kernel, ptrs, base: dict, cfg, div16=()) -> Variant:
    kw = dict(cfg.kwargs)
    label = ",".join(f"{k}={kw[k]}" for k in sorted(kw))
    return Variant(f"{name}[{label},w{cfg.num_warps},s{cfg.num_stages}]", kernel, ptrs, {**base, **kw},
                   cfg.num_warps, cfg.num_stages, div16=div16, tuned=True)


_GEMM_PTRS = dict(ux_ptr="fp32", sw_ptr="bf16", wu_ptr="fp32", lr_ptr="fp32", up_ptr="bf16", b_ptr="bf16",
                  y_ptr="bf16", ws_ptr="fp32", cnt_ptr="i32")


def _gemm_variants(arch: int, K: int = _C) -> List[Variant]:
    """The W4A4 GEMMs `path_for` takes on sm_`arch` (two-level scales: i8 below I8W_MIN_M rows, i8w from
    it; free scales below sm_89: INT8 MMA with a per-group rescale), every candidate the pruning keeps."""
    out = []
    base = dict(HAS_BIAS=True, HAS_LR=True, R=_R, GROUP=gemm.GROUP, ACT=0, LR_BF16=gemm.lr_bf16(arch))
    for w8 in (False, True):
        ptrs = dict(_GEMM_PTRS, a_ptr="i8", w_ptr="i8" if w8 else "u8")
        # i8 (in-register weights) below I8W_MIN_M rows: both buckets; i8w from it: the large ones only
        for bucket in ((64, 256) if not w8 else (512,)):
            cands = gemm.tile_candidates(gemm.I8_SMALL_M_CONFIGS, gemm.I8_LARGE_M_CONFIGS, bucket)
            for c in gemm.i8_candidates(cands, w8, K, arch):
                out.append(_config_variant(f"w4a4_i8{'w' if w8 else ''}", gemm._w4a4_i8_kernel, ptrs,
                                           dict(base, W8=w8, SWAR=gemm.SWAR and not w8), c, ("N", "K", "M_BUCKET")))
    if arch < 89:      # free-scale checkpoints (default_path "int8")
        ptrs = dict(_GEMM_PTRS, q_ptr="i8", sx_ptr="fp32", w_ptr="u8")
        ptrs.pop("ux_ptr"), ptrs.pop("wu_ptr")
        for c in gemm.SMALL_M_CONFIGS + gemm.LARGE_M_CONFIGS:
            out.append(_config_variant("w4a4_int8", gemm._w4a4_gemm_kernel, ptrs, base, c, ("N", "K", "M_BUCKET")))
    # the qkv projection with the attention's input epilogue, on the i8w path
    qkv_ptrs = dict(a_ptr="i8", ux_ptr="fp32", w_ptr="i8", sw_ptr="bf16", wu_ptr="fp32", lr_ptr="fp32",
                    up_ptr="bf16", b_ptr="bf16", QB="fp32", SM="fp32", COS="fp32", SIN="fp32", QO="bf16",
                    KO="fp32", VO="fp32")
    for c in gemm.qkv_candidates(gemm.QKV_CONFIGS, True, K, arch):
        out.append(_config_variant("w4a4_i8_qkv", gemm._w4a4_i8_qkv_kernel, qkv_ptrs,
                                   dict(HEAD=_D, HAS_BIAS=True, HAS_LR=True, R=_R, GROUP=gemm.GROUP, W8=True,
                                        LR_BF16=gemm.lr_bf16(arch)), c,
                                   ("N", "K", "M_BUCKET", "C", "sr_l", "sq_b", "sq_h", "sq_l", "sk_b", "sk_h", "sk_l")))
    return out


def _quantizer_variants() -> List[Variant]:
    out = []
    for M in (2, 256, 2048, 8192):
        # i8 (q·m, the product's; the low-rank partials summed by the kernel or not), and the int8 path's codes;
        # the row pass shares kernel 1's launch
        for mq, reduces in ((True, (True, False)), (False, (False,))):
            bm, warps = gemm._quantize_launch(M, "mq" if mq else "int8")
            inv = gemm.reads_inv_smooth(gemm.lr_prec_bf16(bm), bm)   # the kernels read 1/λ (float32)
            smooth = "fp32" if inv else "bf16"
            out.append(Variant(f"row_amax[BLOCK_M={bm},w{warps}]", gemm._row_amax,
                               dict(x_ptr="bf16", smooth_ptr=smooth, part_ptr="fp32"),
                               dict(BLOCK_M=bm, GROUP=gemm.GROUP, INV_SMOOTH=inv), warps, div16=("K",)))
            q_ptrs = dict(x_ptr="bf16", smooth_ptr=smooth, down_ptr="bf16", q_ptr="i8", s_ptr="fp32", lr_ptr="fp32",
                          part_ptr="fp32", lrsum_ptr="fp32", cnt_ptr="i32")
            for reduce in reduces:
                out.append(Variant(f"quantize_act[MQ={mq},REDUCE={reduce},BLOCK_M={bm},w{warps}]", gemm._quantize_act,
                                   q_ptrs, dict(R=_R, HAS_LR=True, MQ=mq, BLOCK_M=bm, GROUP=gemm.GROUP,
                                                LR_PREC=gemm.lr_prec_bf16(bm), FP8=False, REDUCE=reduce,
                                                INV_SMOOTH=inv), warps, floats=("INV7",), div16=("K", "LDQ")))
    # VAR_GEN_W4A4_LR_ROW_PASS (the default since the thirty-fourth session): the row pass with the low-rank dot and
    # kernel 1 without it, in the 128-row launch
    lr_ptrs = dict(x_ptr="bf16", smooth_ptr="fp32", part_ptr="fp32", down_ptr="bf16", lr_ptr="fp32", lrsum_ptr="fp32",
                   cnt_ptr="i32")
    out.append(Variant("row_amax[BLOCK_M=128,w8,HAS_LR=True]", gemm._row_amax, lr_ptrs,
                       dict(BLOCK_M=128, GROUP=gemm.GROUP, INV_SMOOTH=True, R=_R, HAS_LR=True,
                            LR_PREC=gemm.lr_prec_bf16(128), REDUCE=True), 8, div16=("K",)))
    out.append(Variant("quantize_act[MQ=True,BLOCK_M=128,w8,HAS_LR=False]", gemm._quantize_act,
                       dict(lr_ptrs, q_ptr="i8", s_ptr="fp32"),
                       dict(R=_R, HAS_LR=False, MQ=True, BLOCK_M=128, GROUP=gemm.GROUP,
                            LR_PREC=gemm.lr_prec_bf16(128), FP8=False, REDUCE=False, INV_SMOOTH=True), 8,
                       floats=("INV7",), div16=("K", "LDQ")))
    out.append(Variant("unpack_weight_i8", gemm._unpack_weight_i8,
                       dict(w_ptr="u8", sw_ptr="bf16", wu_ptr="fp32", out_ptr="i8"),
                       dict(BLOCK_N=64, GROUP=gemm.GROUP), div16=("N", "K")))
    return _unique(out)


def _attention_variants() -> List[Variant]:
    ptrs = dict(Q="bf16", KQ="i8", VQ="i8", KT="bf16", VT="bf16", KS="fp32", KZ="fp32", VS="fp32", VZ="fp32",
                O="bf16")
    strides = ("sq_b", "sq_h", "sq_m", "sk_b", "sk_h", "sk_n", "st_b", "st_h", "st_n", "so_b", "so_h", "so_m")
    out = [_config_variant(f"attn_int8[HAS_TAIL={t}]", attn._attn_int8_kernel, ptrs,
                           dict(D=_D, HAS_TAIL=t, MMA=attn.MMA_DTYPE), c, strides + ("LQ_BUCKET", "N_BUCKET"))
           for t in (False, True) for c in attn.CONFIGS]
    kv = dict(KQ="i8", VQ="i8", KS="fp32", KZ="fp32", VS="fp32", VZ="fp32")
    out.append(Variant("kv_store", attn._kv_store_kernel, dict(kv, K="fp32", V="fp32"), dict(D=_D, BLOCK_L=64),
                       div16=("sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "sq_b", "sq_h", "sq_n")))
    out.append(Variant("kv_dequant", attn._kv_dequant_kernel, dict(kv, KT="bf16", VT="bf16", KO="bf16", VO="bf16"),
                       dict(D=_D, BLOCK_L=64), div16=("sq_b", "sq_h", "sq_n", "st_b", "st_h", "st_n", "so_b", "so_h", "so_n")))
    return out


def _elementwise_variants() -> List[Variant]:
    qkv = Variant("qkv_rope", qkv_rope_triton._qkv_rope_kernel,
                  dict(X="bf16", BIAS="fp32", SM="fp32", COS="fp32", SIN="fp32", Q="bf16", K="fp32", V="fp32"),
                  dict(HEAD=_D, BLOCK_L=32),
                  div16=("C", "sx_b", "sx_l", "sr_l", "sq_b", "sq_h", "sq_l", "sk_b", "sk_h", "sk_l"))
    ln = [Variant(f"adaln[HAS_AFFINE={a}]", adaln_triton._adaln_kernel,
                  dict(X="fp32", W="fp32", Bi="fp32", S="fp32", SH="fp32", Y="bf16"),
                  dict(HAS_AFFINE=a, HAS_MOD=True, BLOCK_C=triton.next_power_of_2(_C)), 8, floats=("eps",),
                  div16=("C", "sx_b", "sx_l", "ss_b", "sy_b", "sy_l"))
          for a in (False, True)]
    # the INT4 text encoder's weights (Flan-T5-XL: every width a multiple of 64, so N, K and K/64 of 16)
    deq = Variant("int4_dequant", int4_dequant_triton._int4_dequant_kernel, dict(P="u8", S="fp16", O="fp16", Y="bf16"),
                  dict(BLOCK_N=int4_dequant_triton.BLOCK_N, BLOCK_K=int4_dequant_triton.BLOCK_K, GROUP=64),
                  div16=("N", "K", "G"))
    # the VAE decoder's GroupNorm (+ SiLU): its rows' partial statistics, then the normalization (bf16 activations)
    gn = [Variant("gn_partial", group_norm_triton._gn_partial_kernel,
                  dict(X="bf16", PN="fp32", PM="fp32", PQ="fp32"),
                  dict(CHUNK=group_norm_triton.CHUNK, BLOCK=group_norm_triton.BLOCK), 8, div16=("S",))]
    gn += [Variant(f"gn_apply[SILU={silu}]", group_norm_triton._gn_apply_kernel,
                   dict(X="bf16", Y="bf16", W="fp32", B="fp32", PN="fp32", PM="fp32", PQ="fp32"),
                   dict(SILU=silu, CHUNK=group_norm_triton.CHUNK, BLOCK=group_norm_triton.BLOCK, BLOCK_P=128), 8,
                   floats=("eps",), div16=("S", "HW")) for silu in (False, True)]
    # and its channels-last form (VAR_GEN_VAE_CHANNELS_LAST), at the 8B decoder's widths: 128, 256, 512 channels
    g = group_norm_triton
    for c in (128, 512):
        cg = c // 32
        nhwc = dict(PIX_CHUNK=g.NHWC_TILE // c * g.NHWC_TILES, BLOCK_PIX=g.NHWC_TILE // c, G_PAD=32, CG_PAD=cg)
        gn.append(Variant(f"gn_nhwc_partial[C={c}]", g._gn_nhwc_partial_kernel,
                          dict(X="bf16", PN="fp32", PM="fp32", PQ="fp32"), nhwc, 8, div16=("HW", "C")))
        gn.append(Variant(f"gn_nhwc_apply[C={c},SILU=True]", g._gn_nhwc_apply_kernel,
                          dict(X="bf16", Y="bf16", W="fp32", B="fp32", MEAN="fp32", RSTD="fp32"),
                          dict(nhwc, SILU=True), 8, div16=("HW", "C")))
    gn.append(Variant("gn_nhwc_finish", g._gn_nhwc_finish_kernel,
                      dict(PN="fp32", PM="fp32", PQ="fp32", MEAN="fp32", RSTD="fp32"),
                      dict(BLOCK_P=g.NHWC_FINISH_BLOCK), 4, floats=("eps",)))
    return [qkv] + ln + [deq] + gn


def _unique(vs: List[Variant]) -> List[Variant]:
    seen, out = set(), []
    for v in vs:
        if v.name not in seen:
            seen.add(v.name)
            out.append(v)
    return out


def variants(arch: int = ORIN) -> List[Variant]:
    """Every kernel variant the dispatch may build on sm_`arch`, at the Infinity-8B shapes."""
    return _unique(_quantizer_variants() + _gemm_variants(arch) + _attention_variants() + _elementwise_variants())


def kernel_family(name: str) -> str:
    return name.split("[")[0]
