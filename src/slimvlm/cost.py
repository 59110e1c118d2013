"""Analytic cost model: FLOPs, memory and roofline time of a VLM prefill / decode under visual-token reduction.

Everything here is arithmetic on config numbers (no torch, no weights): the decoder LM of any Llama / Vicuna /
Qwen2 / Qwen2-VL-text-shaped config (GQA and ``head_dim`` handled), a CLIP / SigLIP ViT tower and a 2-layer MLP
projector, each reported separately. It is the LLM-Viewer model (Yuan et al. 2024, github.com/hahnyuan/LLM-Viewer)
that PruMerge and AIM used for their efficiency tables (docs/methods.md, "Efficiency numbers"), re-implemented so
that a token *schedule* (visual tokens kept before the LLM, and per-layer counts for in-LLM pruning such as AIM or
FastV) can be costed. Main entry point: :func:`estimate_cost`; schedules: :class:`TokenSchedule` (its per-layer
counts come from the same :mod:`slimvlm.inllm.schedules` the pruning engine runs, so a cost and a run mean the
same layers; :meth:`TokenSchedule.for_method` asks a method's declaration); hardware: :data:`HARDWARE` /
:class:`Hardware`.

Counting convention
-------------------
* One multiply-add = **2 FLOPs**. A linear layer ``in -> out`` on ``n`` tokens costs ``2·n·in·out``; biases are not
  counted (neither does LLM-Viewer nor ``torch.utils.flop_counter``, whose ``addmm`` rule counts only the ``mm``).
* Per decoder layer: q/k/v/o projections (k/v with ``num_key_value_heads·head_dim`` outputs, i.e. GQA), attention
  scores ``QKᵀ`` and the weighted sum ``AV`` (``2·H·n·m·head_dim`` each, ``H`` = query heads, ``m`` = keys), the
  SwiGLU MLP gate/up/down.
* Attention counts the **full n×n score matrix** by default (no causal halving), as both LLM-Viewer and
  ``FlopCounterMode`` (eager ``matmul`` and the SDPA rule) do; ``causal=True`` counts ``n(n+1)/2`` pairs instead.
* ``convention="llm_viewer"`` (default; reproduces the papers) adds LLM-Viewer's element-wise terms: softmax
  5 FLOPs per score, each of the two RMSNorms 7 per element, each of the two residual adds 1, and the MLP
  activation ``2·hidden`` per token (LLM-Viewer sizes the SwiGLU product by ``hidden_size``, not
  ``intermediate_size``; this quirk is kept so that its numbers, e.g. PruMerge's activation memory, come out).
  Together they are < 0.2 % of the total for 7B models. RoPE is **not** counted in this convention.
* ``convention="matmul"`` counts matmuls only, exactly what ``torch.utils.flop_counter.FlopCounterMode`` sees in a
  transformers-5 Llama/Qwen2 forward: the projections (``mm``/``addmm``), ``QKᵀ`` and ``AV`` (``bmm``), the LM
  head. Softmax, norms, RoPE, activations: 0. (The RoPE frequency table ``inv_freq @ position_ids`` has an inner
  dimension of 1; PyTorch runs it as a broadcast multiply, so the counter does not see it either.) Attention must
  run as matmuls for the counter to see it: ``attn_implementation="eager"``, or SDPA under
  ``sdpa_kernel(SDPBackend.MATH)``; the fused CPU SDPA kernel has no FLOP rule and counts 0.
* LM head (``2·hidden·vocab`` per token): ``lm_head="last"`` (default) counts it for the last prompt token only
  (what ``generate`` does, ``logits_to_keep=1``), ``"all"`` for every token left after the last layer (a plain
  ``model(input_ids)``), ``"none"`` omits it. The AIM fork of LLM-Viewer omits it; upstream counts one token.
  Both reproduce the paper numbers (one token = 0.001 % of AIM's 99.6 TFLOPs); ``"all"`` does not (+7 %).
  Decode steps always count one token (unless ``"none"``).
* Embedding lookup, final norm and sampling are not counted.
* Pruned tokens are assumed **physically removed** (the removal path): layer ``l`` runs ``n_text + visual_l``
  queries against as many keys, and keeps that many KV entries. AIM's released code only masks (no savings);
  its published FLOPs are computed with the removal assumption, as here.
* The vision tower counts its patch-embedding convolution, all its layers at ``n_patches (+1 CLS for CLIP)``
  tokens, non-causal attention, and a 2-matrix (fc1/fc2) MLP; the projector is a 2-layer MLP
  ``in -> hidden -> out`` (LLaVA ``mlp2x_gelu``). Neither is part of the "LLM FLOPs" the papers quote. SigLIP's
  attention-pooling head (unused by VLMs) is in the vision parameter count when the config enables it, not in
  the FLOPs. Qwen2-VL's own ViT (``embed_dim`` / ``depth`` config) is not modelled.

Memory and time
---------------
* ``weight_bytes`` = LM parameter count (embeddings, norms, biases, untied LM head) × bytes per weight
  (``fp32`` 4, ``fp16``/``bf16`` 2, ``fp8``/``int8`` 1, ``int4`` 0.5; quantisation scales are ignored).
* ``kv_cache_bytes`` = ``2 (K and V) × Σ_layers num_kv_heads × head_dim × tokens_l × kv bytes`` (× batch).
* ``activation_bytes`` is LLM-Viewer's "storing activation": bytes of every intermediate tensor written during
  prefill (projection outputs, score and probability matrices, norms, ...), summed over layers. It is the figure
  PruMerge reports; the live peak of a real implementation is much smaller.
* Per-operator memory traffic follows LLM-Viewer: weights read, input activations read, outputs written, KV read
  by ``QKᵀ`` / ``AV`` and written by ``k_proj`` / ``v_proj``.
* Roofline: for a phase, ``time = max(FLOPs / peak, bytes / bandwidth)`` over the phase totals
  (``roofline="phase"``, default). ``roofline="per_op"`` sums that max over every operator instead (LLM-Viewer's
  model; always ≥ the phase figure). The peak is the dense 16-bit tensor peak, or the INT8 peak when weights,
  activations and KV are all ≤ 8 bit (LLM-Viewer's rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

__all__ = [
    "DTYPE_BYTES",
    "HARDWARE",
    "LM_PRESETS",
    "Hardware",
    "LMShape",
    "VisionShape",
    "TokenSchedule",
    "CostReport",
    "estimate_cost",
    "lm_param_count",
    "kv_cache_bytes",
    "projector_flops",
    "roofline",
    "get_hardware",
]

#: Bytes per element for the supported weight / activation / KV dtypes.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "float32": 4.0,
    "fp16": 2.0,
    "float16": 2.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

Convention = Literal["llm_viewer", "matmul"]
LMHead = Literal["last", "all", "none"]


def _bytes(dtype: str | float) -> float:
    if isinstance(dtype, (int, float)):
        return float(dtype)
    try:
        return DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


# --------------------------------------------------------------------------------------------------------------
# Hardware
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """A roofline: dense 16-bit peak (FLOP/s), memory bandwidth (bytes/s), optional INT8 peak (OP/s)."""

    peak_flops: float
    bandwidth: float
    name: str = "custom"
    int8_ops: float | None = None

    def peak_for(self, low_bit: bool) -> float:
        if low_bit and self.int8_ops:
            return self.int8_ops
        return self.peak_flops

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) above which a kernel is compute-bound."""
        return self.peak_flops / self.bandwidth


#: Named specs, dense (no 2:4 sparsity) tensor-core numbers from the NVIDIA datasheets.
HARDWARE: dict[str, Hardware] = {
    # NVIDIA A100 Tensor Core GPU datasheet (2021): FP16/BF16 tensor 312 TFLOPS, INT8 624 TOPS (dense);
    # HBM2e 2,039 GB/s (80 GB SXM4), HBM2 1,555 GB/s (40 GB).
    "A100": Hardware(312e12, 2039e9, "A100-SXM4-80GB", int8_ops=624e12),
    "A100-40GB": Hardware(312e12, 1555e9, "A100-40GB", int8_ops=624e12),
    # NVIDIA H100 Tensor Core GPU datasheet: SXM5, FP16/BF16 tensor 1,979 TFLOPS *with sparsity* = 989.4 dense,
    # INT8 3,958 TOPS sparse = 1,979 dense; HBM3 3.35 TB/s.
    "H100": Hardware(989.4e12, 3.35e12, "H100-SXM5-80GB", int8_ops=1979e12),
    # NVIDIA V100 datasheet: SXM2 tensor 125 TFLOPS, PCIe 112 TFLOPS; HBM2 900 GB/s. No INT8 tensor cores:
    # DP4A INT8 = 4 × FP32 (15.7 / 14 TFLOPS) = 62.8 / 56 TOPS.
    "V100": Hardware(125e12, 900e9, "V100-SXM2", int8_ops=62.8e12),
    "V100-PCIe": Hardware(112e12, 900e9, "V100-PCIe", int8_ops=56e12),
    # LLM-Viewer's own "nvidia_V100" entry (hardwares/hardware_params.py): FP16 112e12, INT8 62e12, 900e9 B/s.
    # PruMerge's prefill times (88.6 / 15.3 ms, §5.1) are reproduced with it.
    "llm_viewer_V100": Hardware(112e12, 900e9, "LLM-Viewer nvidia_V100", int8_ops=62e12),
}


#: Language-model shapes of common VLM backbones (from their public config.json), for the CLI and quick checks.
LM_PRESETS: dict[str, dict[str, int]] = {
    "vicuna-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),  # LLaVA-1.5-7B
    "vicuna-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000),  # LLaVA-1.5-13B
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936),  # LLaVA-OneVision-0.5B
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064),  # LLaVA-OneVision-7B, Qwen2-VL-7B
}


def get_hardware(hardware: str | Hardware) -> Hardware:
    if isinstance(hardware, Hardware):
        return hardware
    for key, hw in HARDWARE.items():
        if key.lower() == str(hardware).lower():
            return hw
    raise ValueError(f"unknown hardware {hardware!r}; known: {sorted(HARDWARE)} or pass Hardware(...)")


def roofline(flops: float, nbytes: float, hardware: str | Hardware, *, low_bit: bool = False) -> tuple[float, str]:
    """``(seconds, "compute" | "memory")`` = ``max(flops / peak, bytes / bandwidth)`` and which term wins."""
    hw = get_hardware(hardware)
    t_c = flops / hw.peak_for(low_bit)
    t_m = nbytes / hw.bandwidth
    return (t_c, "compute") if t_c >= t_m else (t_m, "memory")


# --------------------------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------------------------


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = cfg.get(n) if isinstance(cfg, Mapping) else getattr(cfg, n, None)
        if v is not None:
            return v
    return default


_QKV_BIAS_TYPES = ("qwen2", "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text")


@dataclass(frozen=True)
class LMShape:
    """The numbers of a Llama-style decoder (RMSNorm, RoPE, SwiGLU MLP, optional GQA)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    name: str = field(default="", compare=False)

    @classmethod
    def from_config(cls, config: Any) -> "LMShape":
        """From a ``PretrainedConfig`` (a VLM config's ``text_config`` is used), its text config, a dict, or
        an :class:`LMShape`. Qwen2-family configs get q/k/v biases (hard-coded in their modeling code);
        Llama's ``attention_bias`` / ``mlp_bias`` are honoured."""
        if isinstance(config, LMShape):
            return config
        if not isinstance(config, Mapping):
            if hasattr(config, "get_text_config"):
                config = config.get_text_config()
            elif getattr(config, "text_config", None) is not None:
                config = config.text_config
        elif "text_config" in config and "hidden_size" not in config:
            config = config["text_config"]
        hidden = int(_get(config, "hidden_size"))
        heads = int(_get(config, "num_attention_heads"))
        kv = int(_get(config, "num_key_value_heads", default=heads))
        head_dim = int(_get(config, "head_dim", default=hidden // heads))
        model_type = str(_get(config, "model_type", default=""))
        attn_bias = bool(_get(config, "attention_bias", default=False))
        qkv_bias = model_type in _QKV_BIAS_TYPES or attn_bias
        return cls(
            hidden_size=hidden,
            intermediate_size=int(_get(config, "intermediate_size")),
            num_layers=int(_get(config, "num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            vocab_size=int(_get(config, "vocab_size")),
            qkv_bias=qkv_bias,
            o_bias=attn_bias and model_type not in _QKV_BIAS_TYPES,
            mlp_bias=bool(_get(config, "mlp_bias", default=False)),
            tie_word_embeddings=bool(_get(config, "tie_word_embeddings", default=False)),
            name=str(_get(config, "name_or_path", "_name_or_path", default="") or model_type),
        )

    @property
    def layer_params(self) -> int:
        h, d, H, kv, inter = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.intermediate_size
        attn = h * H * d + 2 * h * kv * d + H * d * h
        if self.qkv_bias:
            attn += H * d + 2 * kv * d
        if self.o_bias:
            attn += h
        mlp = 3 * h * inter + ((2 * inter + h) if self.mlp_bias else 0)
        return attn + mlp + 2 * h  # two RMSNorm weights

    @property
    def num_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return emb + self.num_layers * self.layer_params + self.hidden_size + (0 if self.tie_word_embeddings else emb)


def lm_param_count(config: Any) -> int:
    """Parameters of the decoder LM (embeddings, layers, final norm, untied LM head)."""
    return LMShape.from_config(config).num_params


@dataclass(frozen=True)
class VisionShape:
    """A CLIP / SigLIP ViT tower (pre-LN, MHA, fc1/fc2 MLP)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    class_token: bool = False
    use_head: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "VisionShape":
        if isinstance(config, VisionShape):
            return config
        if not isinstance(config, Mapping) and getattr(config, "vision_config", None) is not None:
            config = config.vision_config
        model_type = str(_get(config, "model_type", default=""))
        return cls(
            hidden_size=int(_get(config, "hidden_size")),
            intermediate_size=int(_get(config, "intermediate_size")),
            num_layers=int(_get(config, "num_hidden_layers")),
            num_heads=int(_get(config, "num_attention_heads")),
            image_size=int(_get(config, "image_size")),
            patch_size=int(_get(config, "patch_size")),
            num_channels=int(_get(config, "num_channels", default=3)),
            class_token=bool(_get(config, "class_token", default=model_type.startswith("clip"))),
            use_head=model_type.startswith("siglip") and bool(_get(config, "vision_use_head", default=True)),
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.class_token)

    @property
    def num_params(self) -> int:
        h, inter, c, p = self.hidden_size, self.intermediate_size, self.num_channels, self.patch_size
        layer = 4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h
        mlp = 2 * h * inter + inter + h
        n = c * p * p * h + self.num_tokens * h + self.num_layers * layer + 2 * h  # conv, positions, layers, post-LN
        if self.class_token:  # CLIP: class embedding + pre-LayerNorm, conv without bias
            n += h + 2 * h
        else:  # SigLIP: conv bias
            n += h
        if self.use_head:  # SigLIP attention-pooling head: probe, MHA (in/out proj), LayerNorm, MLP
            n += h + 4 * h * h + 4 * h + 2 * h + mlp
        return n


# --------------------------------------------------------------------------------------------------------------
# Token schedules
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSchedule:
    """Text tokens, visual tokens entering the LLM, and optionally the visual tokens kept at each layer."""

    n_text: int
    n_visual: int = 0
    per_layer_visual: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.per_layer_visual is not None:
            object.__setattr__(self, "per_layer_visual", tuple(int(v) for v in self.per_layer_visual))
            if any(v < 0 or v > self.n_visual for v in self.per_layer_visual):
                raise ValueError("per-layer visual counts must lie in [0, n_visual]")
        if self.n_text < 0 or self.n_visual < 0 or self.n_text + self.n_visual <= 0:
            raise ValueError("need n_text, n_visual >= 0 and at least one token")

    @classmethod
    def pruned(cls, n_text: int, n_visual: int, schedule: Any) -> "TokenSchedule":
        """``n_visual`` tokens entering the LLM, then pruned per layer by ``schedule`` (a
        :class:`slimvlm.inllm.schedules.Schedule`, the engine's own)."""
        return cls(n_text, n_visual, tuple(schedule.counts(n_visual)))

    @classmethod
    def aim(cls, n_text: int, n_visual: int, num_layers: int, l1: int | None = None, l2: int | None = None) -> "TokenSchedule":
        """AIM's in-LLM pruning of ``n_visual`` tokens: :func:`slimvlm.inllm.aim_schedule` (the layers
        ``slimvlm.apply(model, "aim", l1=..., l2=...)`` prunes)."""
        from .inllm.schedules import aim_schedule

        return cls.pruned(n_text, n_visual, aim_schedule(num_layers, l1, l2))

    @classmethod
    def fastv(cls, n_text: int, n_visual: int, num_layers: int, k: int, r: float) -> "TokenSchedule":
        """FastV ``(K, R)`` on ``n_visual`` tokens: :func:`slimvlm.inllm.fastv_schedule`."""
        from .inllm.schedules import fastv_schedule

        return cls.pruned(n_text, n_visual, fastv_schedule(num_layers, k, r))

    @classmethod
    def for_method(cls, n_text: int, n_visual: int, num_layers: int, method: str, **options: Any) -> "TokenSchedule":
        """What ``method`` with ``options`` brings to a ``num_layers``-deep LLM from ``n_visual`` visual tokens per
        image, as its declaration says (budget before the LLM, then its in-LLM schedule). A ValueError for an
        adaptive method without a ``keep`` / ``ratio`` budget (its count depends on the image)."""
        from .methods import get

        info = get(method)
        config = info.make_config(**options)
        entering = info.count(config, n_visual)
        if entering is None:
            raise ValueError(f"{method} decides its token count per image; give a keep= or ratio= budget to cost it")
        if not info.prunes_in_llm:
            return cls(n_text, entering)
        return cls(n_text, entering, tuple(info.layer_counts(config, entering, num_layers)))

    def tokens_per_layer(self, num_layers: int) -> list[int]:
        """Total tokens (text + visual) processed by each layer."""
        if self.per_layer_visual is None:
            return [self.n_text + self.n_visual] * num_layers
        if len(self.per_layer_visual) != num_layers:
            raise ValueError(
                f"per_layer_visual has {len(self.per_layer_visual)} entries, model has {num_layers} layers"
            )
        return [self.n_text + v for v in self.per_layer_visual]


# --------------------------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Op:
    name: str
    flops: float
    load_weight: float = 0.0
    load_act: float = 0.0
    store_act: float = 0.0
    load_kv: float = 0.0
    store_kv: float = 0.0

    @property
    def bytes(self) -> float:
        return self.load_weight + self.load_act + self.store_act + self.load_kv + self.store_kv


@dataclass(frozen=True)
class _Bytes:
    w: float
    a: float
    kv: float


def _block_ops(
    n: int,
    m: float,
    *,
    hidden: int,
    inter: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    gated: bool,
    by: _Bytes,
    convention: Convention,
    causal: bool,
    batch: int,
) -> list[_Op]:
    """One transformer block with ``n`` queries against ``m`` keys (``m == n`` in prefill)."""
    b, h, H, kvh, d = batch, hidden, heads, kv_heads, head_dim
    linears: list[tuple[str, int, int, bool]] = [
        ("q_proj", h, H * d, False),
        ("k_proj", h, kvh * d, True),
        ("v_proj", h, kvh * d, True),
        ("o_proj", H * d, h, False),
    ]
    if gated:
        linears += [("gate_proj", h, inter, False), ("up_proj", h, inter, False), ("down_proj", inter, h, False)]
    else:
        linears += [("fc1", h, inter, False), ("fc2", inter, h, False)]
    ops = [
        _Op(
            name,
            2.0 * b * n * ic * oc,
            load_weight=ic * oc * by.w,
            load_act=b * n * ic * by.a,
            store_act=0.0 if is_kv else b * n * oc * by.a,
            store_kv=b * n * oc * by.kv if is_kv else 0.0,
        )
        for name, ic, oc, is_kv in linears
    ]
    pairs = n * (n + 1) / 2 if (causal and n == m) else n * m
    ew = convention == "llm_viewer"
    ops.append(
        _Op("qk_matmul", 2.0 * b * H * pairs * d, load_act=b * n * H * d * by.a,
            load_kv=b * m * kvh * d * by.kv, store_act=b * H * pairs * by.a)
    )
    ops.append(
        _Op("sv_matmul", 2.0 * b * H * pairs * d, load_act=b * H * pairs * by.a,
            load_kv=b * m * kvh * d * by.kv, store_act=b * n * H * d * by.a)
    )
    ops.append(_Op("softmax", 5.0 * b * H * pairs if ew else 0.0, load_act=b * H * pairs * by.a,
                   store_act=b * H * pairs * by.a))
    for name in ("attn_norm", "mlp_norm"):
        ops.append(_Op(name, 7.0 * b * h * n if ew else 0.0, load_act=b * h * n * by.a, store_act=b * h * n * by.a))
    for name in ("attn_add", "mlp_add"):
        ops.append(_Op(name, 1.0 * b * h * n if ew else 0.0, load_act=b * h * n * by.a, store_act=b * h * n * by.a))
    # LLM-Viewer sizes the activation by hidden_size (see module docstring).
    ops.append(_Op("mlp_act", 2.0 * b * h * n if ew else 0.0, load_act=2 * b * h * n * by.a,
                   store_act=b * h * n * by.a))
    return ops


def _lm_block(shape: LMShape, n: int, m: float, **kw: Any) -> list[_Op]:
    return _block_ops(n, m, hidden=shape.hidden_size, inter=shape.intermediate_size, heads=shape.num_heads,
                      kv_heads=shape.num_kv_heads, head_dim=shape.head_dim, gated=True, **kw)


def _lm_head_op(shape: LMShape, n: int, by: _Bytes, batch: int) -> _Op:
    h, v = shape.hidden_size, shape.vocab_size
    return _Op("lm_head", 2.0 * batch * n * h * v, load_weight=h * v * by.w, load_act=batch * n * h * by.a,
               store_act=batch * n * v * by.a)


def _merge(into: dict[str, float], ops: Iterable[_Op]) -> None:
    for op in ops:
        into[op.name] = into.get(op.name, 0.0) + op.flops


def _totals(ops: Sequence[_Op], hw: Hardware, low_bit: bool) -> tuple[float, float, float]:
    """(FLOPs, bytes, per-op roofline seconds)."""
    peak = hw.peak_for(low_bit)
    flops = sum(o.flops for o in ops)
    nbytes = sum(o.bytes for o in ops)
    t = sum(max(o.flops / peak, o.bytes / hw.bandwidth) for o in ops)
    return flops, nbytes, t


def projector_flops(n_tokens: int, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> float:
    """2-layer MLP projector ``in -> hidden -> out`` (LLaVA ``mlp2x_gelu``; hidden defaults to ``out``)."""
    hid = out_dim if hidden_dim is None else hidden_dim
    return 2.0 * n_tokens * (in_dim * hid + hid * out_dim)


def kv_cache_bytes(config: Any, tokens_per_layer: Sequence[int] | int, kv_dtype: str | float = "fp16",
                   batch_size: int = 1) -> float:
    """``2 × Σ_l num_kv_heads × head_dim × tokens_l × bytes`` (× batch); an int means the same at every layer."""
    s = LMShape.from_config(config)
    if isinstance(tokens_per_layer, int):
        tokens_per_layer = [tokens_per_layer] * s.num_layers
    if len(tokens_per_layer) != s.num_layers:
        raise ValueError("one token count per layer expected")
    return 2.0 * batch_size * s.num_kv_heads * s.head_dim * sum(tokens_per_layer) * _bytes(kv_dtype)


# --------------------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CostReport:
    """Everything :func:`estimate_cost` computes. FLOPs in FLOPs, memory in bytes, times in seconds."""

    model: str
    hardware: str
    weight_dtype: str
    act_dtype: str
    kv_dtype: str
    convention: str
    lm_head: str
    batch_size: int
    tokens_per_layer: tuple[int, ...]
    n_generate: int
    lm_prefill_flops: float
    lm_decode_flops: float  # summed over n_generate steps
    decode_flops_per_token: float  # first decode step
    vision_flops: float
    projector_flops: float
    weight_bytes: float
    vision_weight_bytes: float
    kv_cache_bytes: float  # after prefill
    kv_cache_bytes_final: float  # after n_generate steps
    activation_bytes: float
    prefill_bytes: float  # memory traffic of the LM prefill
    prefill_time_s: float
    prefill_bound: str
    decode_time_s: float  # summed over n_generate steps
    decode_time_per_token_s: float  # first decode step
    decode_bound: str
    vision_time_s: float
    flops_breakdown: dict[str, float] = field(default_factory=dict)  # LM prefill FLOPs per operator kind

    @property
    def total_flops(self) -> float:
        return self.vision_flops + self.projector_flops + self.lm_prefill_flops + self.lm_decode_flops

    @property
    def ttft_s(self) -> float:
        """Roofline time to first token: vision tower + projector + LM prefill."""
        return self.vision_time_s + self.prefill_time_s

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_layer"] = list(self.tokens_per_layer)
        d["total_flops"] = self.total_flops
        d["ttft_s"] = self.ttft_s
        return d

    def summary(self) -> str:
        t = self.tokens_per_layer
        toks = f"{t[0]}" if len(set(t)) == 1 else f"{t[0]}→{t[-1]} (mean {sum(t) / len(t):.1f})"
        lines = [
            f"{self.model or 'LM'} on {self.hardware}  [w {self.weight_dtype}, a {self.act_dtype}, "
            f"kv {self.kv_dtype}; {self.convention}, lm_head={self.lm_head}, batch {self.batch_size}]",
            f"  tokens/layer      {toks}",
            f"  LM prefill        {self.lm_prefill_flops / 1e12:10.4f} TFLOPs  {self.prefill_time_s * 1e3:9.3f} ms "
            f"({self.prefill_bound}-bound)",
            f"  LM decode         {self.decode_flops_per_token / 1e9:10.4f} GFLOPs/token "
            f"{self.decode_time_per_token_s * 1e3:9.3f} ms/token ({self.decode_bound}-bound), "
            f"{self.n_generate} steps: {self.decode_time_s * 1e3:.3f} ms",
            f"  vision + proj     {(self.vision_flops + self.projector_flops) / 1e12:10.4f} TFLOPs  "
            f"{self.vision_time_s * 1e3:9.3f} ms",
            f"  weights           {self.weight_bytes / 1e9:10.4f} GB (LM) + "
            f"{self.vision_weight_bytes / 1e9:.4f} GB (vision + projector)",
            f"  KV cache          {self.kv_cache_bytes / 1e9:10.4f} GB after prefill, "
            f"{self.kv_cache_bytes_final / 1e9:.4f} GB after decode",
            f"  activations       {self.activation_bytes / 1e9:10.4f} GB (stored during prefill)",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------------------------------


def estimate_cost(
    config: Any,
    schedule: TokenSchedule | int,
    *,
    n_generate: int = 0,
    hardware: str | Hardware = "A100",
    weight_dtype: str = "fp16",
    act_dtype: str = "fp16",
    kv_dtype: str | None = None,
    lm_head: LMHead = "last",
    convention: Convention = "llm_viewer",
    causal: bool = False,
    roofline_mode: Literal["phase", "per_op"] = "phase",
    batch_size: int = 1,
    vision_config: Any = None,
    n_images: int = 1,
    projector_tokens: int | None = None,
    projector_hidden: int | None = None,
) -> CostReport:
    """Analytic cost of one request (see the module docstring for what is counted).

    ``config``: LM config, VLM config (its text config is used), dict or :class:`LMShape`.
    ``schedule``: a :class:`TokenSchedule`, or an int = that many text-only tokens.
    ``n_generate``: decode steps after the prefill; step ``j`` attends to ``tokens_l + j + 1`` keys at layer ``l``.
    ``vision_config``: CLIP/SigLIP vision config (or a VLM config holding one) to add the tower for ``n_images``
    images/frames and the projector on ``projector_tokens`` tokens (default: all patches of all images, i.e. a
    reduction after the projector; pass the reduced count when reducing before it, as PruMerge does).
    """
    shape = LMShape.from_config(config)
    if isinstance(schedule, int):
        schedule = TokenSchedule(n_text=schedule)
    if convention not in ("llm_viewer", "matmul"):
        raise ValueError(f"convention must be 'llm_viewer' or 'matmul', got {convention!r}")
    if lm_head not in ("last", "all", "none"):
        raise ValueError(f"lm_head must be 'last', 'all' or 'none', got {lm_head!r}")
    if roofline_mode not in ("phase", "per_op"):
        raise ValueError(f"roofline_mode must be 'phase' or 'per_op', got {roofline_mode!r}")
    if n_generate < 0 or batch_size < 1:
        raise ValueError("n_generate >= 0 and batch_size >= 1 required")
    hw = get_hardware(hardware)
    kv_dtype = kv_dtype or act_dtype
    by = _Bytes(_bytes(weight_dtype), _bytes(act_dtype), _bytes(kv_dtype))
    low_bit = max(by.w, by.a, by.kv) <= 1.0
    kw = dict(by=by, convention=convention, causal=causal, batch=batch_size)

    tokens = schedule.tokens_per_layer(shape.num_layers)
    if min(tokens) <= 0:
        raise ValueError("every layer needs at least one token")

    # ---- prefill
    prefill_ops: list[_Op] = []
    for n in tokens:
        prefill_ops += _lm_block(shape, n, n, **kw)
    if lm_head != "none":
        prefill_ops.append(_lm_head_op(shape, 1 if lm_head == "last" else tokens[-1], by, batch_size))
    pf_flops, pf_bytes, pf_t_op = _totals(prefill_ops, hw, low_bit)
    pf_t, pf_bound = roofline(pf_flops, pf_bytes, hw, low_bit=low_bit)
    if roofline_mode == "per_op":
        pf_t = pf_t_op
    breakdown: dict[str, float] = {}
    _merge(breakdown, prefill_ops)
    activation = sum(o.store_act for o in prefill_ops if o.name != "lm_head")

    # ---- decode: every op is affine in the step index j, so evaluate steps 0 and 1 and extrapolate.
    def step_ops(j: int) -> list[_Op]:
        ops: list[_Op] = []
        for n in tokens:
            ops += _lm_block(shape, 1, n + j + 1, **kw)
        if lm_head != "none":
            ops.append(_lm_head_op(shape, 1, by, batch_size))
        return ops

    s0, s1 = step_ops(0), step_ops(1)
    dec_flops = dec_t = 0.0
    dec_flops0, dec_bytes0, _ = _totals(s0, hw, low_bit)
    dec_t0, dec_bound = roofline(dec_flops0, dec_bytes0, hw, low_bit=low_bit)
    if roofline_mode == "per_op":
        dec_t0 = _totals(s0, hw, low_bit)[2]
    if n_generate:
        peak = hw.peak_for(low_bit)
        f0, f1 = dec_flops0, _totals(s1, hw, low_bit)[0]
        b0, b1 = dec_bytes0, _totals(s1, hw, low_bit)[1]
        js = range(n_generate)
        dec_flops = sum(f0 + (f1 - f0) * j for j in js)
        if roofline_mode == "phase":
            dec_t = sum(max((f0 + (f1 - f0) * j) / peak, (b0 + (b1 - b0) * j) / hw.bandwidth) for j in js)
        else:
            for o0, o1 in zip(s0, s1):
                df, db = o1.flops - o0.flops, o1.bytes - o0.bytes
                dec_t += sum(max((o0.flops + df * j) / peak, (o0.bytes + db * j) / hw.bandwidth) for j in js)

    # ---- vision tower + projector
    vision_flops = proj_flops = vision_t = vision_w = 0.0
    if vision_config is not None:
        vs = VisionShape.from_config(vision_config)
        t = vs.num_tokens
        vb = _Bytes(by.w, by.a, by.a)
        vkw = dict(by=vb, convention=convention, causal=False, batch=batch_size * n_images)
        v_ops = [
            _Op("patch_embed", 2.0 * batch_size * n_images * vs.num_patches * vs.num_channels * vs.patch_size**2
                * vs.hidden_size, load_weight=vs.num_channels * vs.patch_size**2 * vs.hidden_size * vb.w)
        ]
        for _ in range(vs.num_layers):
            v_ops += _block_ops(t, t, hidden=vs.hidden_size, inter=vs.intermediate_size, heads=vs.num_heads,
                                kv_heads=vs.num_heads, head_dim=vs.hidden_size // vs.num_heads, gated=False, **vkw)
        n_proj = vs.num_patches * n_images if projector_tokens is None else projector_tokens
        hid = shape.hidden_size if projector_hidden is None else projector_hidden
        p_flops = batch_size * projector_flops(n_proj, vs.hidden_size, shape.hidden_size, hid)
        p_op = _Op("projector", p_flops,
                   load_weight=(vs.hidden_size * hid + hid * shape.hidden_size) * vb.w,
                   load_act=batch_size * n_proj * (vs.hidden_size + hid) * vb.a,
                   store_act=batch_size * n_proj * (hid + shape.hidden_size) * vb.a)
        vision_flops = sum(o.flops for o in v_ops)
        proj_flops = p_op.flops
        vf, vbytes, vt_op = _totals(v_ops + [p_op], hw, low_bit)
        vision_t = vt_op if roofline_mode == "per_op" else roofline(vf, vbytes, hw, low_bit=low_bit)[0]
        proj_params = vs.hidden_size * hid + hid + hid * shape.hidden_size + shape.hidden_size
        vision_w = (vs.num_params + proj_params) * by.w

    return CostReport(
        model=shape.name,
        hardware=hw.name,
        weight_dtype=weight_dtype,
        act_dtype=act_dtype,
        kv_dtype=kv_dtype,
        convention=convention,
        lm_head=lm_head,
        batch_size=batch_size,
        tokens_per_layer=tuple(tokens),
        n_generate=n_generate,
        lm_prefill_flops=pf_flops,
        lm_decode_flops=dec_flops,
        decode_flops_per_token=dec_flops0,
        vision_flops=vision_flops,
        projector_flops=proj_flops,
        weight_bytes=shape.num_params * by.w,
        vision_weight_bytes=vision_w,
        kv_cache_bytes=kv_cache_bytes(shape, tokens, by.kv, batch_size),
        kv_cache_bytes_final=kv_cache_bytes(shape, [n + n_generate for n in tokens], by.kv, batch_size),
        activation_bytes=activation,
        prefill_bytes=pf_bytes,
        prefill_time_s=pf_t,
        prefill_bound=pf_bound,
        decode_time_s=dec_t,
        decode_time_per_token_s=dec_t0,
        decode_bound=dec_bound,
        vision_time_s=vision_t,
        flops_breakdown=breakdown,
    )
