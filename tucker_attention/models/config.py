"""Configuration dataclasses of the models: which attention, and how big.

``AttentionConfig`` names one attention method (a key of :data:`tucker_attention.attention.METHODS`) and
its sizes; ``GPTConfig`` and ``ViTConfig`` hold a whole model. Every config is checked when it is made
(``__post_init__``), with messages that name the field, its value and the rule, so a bad command line
fails before any data is loaded.

The attention layer is built by :func:`tucker_attention.attention.build` from ``AttentionConfig.sizes()``
— the spec the Table-1 counting reads too — so a model's attention parameters are exactly
``counting.attention_params(method, d_model, n_heads, **sizes) * n_layer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from ..attention import BACKENDS, registry
from ..attention.tucker import KERNELS as TUCKER_KERNELS
from ..validation import as_int_tuple, check_bool, check_choice, check_float, check_int

__all__ = ["AttentionConfig", "GPTConfig", "ViTConfig", "build_attention"]

POSITIONS = ("auto", "learned", "none")
POOLS = ("cls", "mean")


@dataclass(kw_only=True)
class AttentionConfig:
    """One attention method of the paper and its sizes (paper §3–5).

    Attributes:
        method: a key of ``attention.METHODS``: "mha" | "gqa" | "mqa" | "mla" | "tucker".
        n_kv_heads: GQA's key/value heads (required for "gqa"; "mqa" is GQA with 1).
        q_latent, kv_latent: MLA's query latent d_c^Q and key/value latent d_c^K (required for "mla").
        separate_kv: MLA with separate key and value latents.
        rope_dim: MLA's decoupled RoPE size d_R (only with rope="decoupled"; default d_H / 2).
        ranks: Tucker's (r1, r2, r3) (required for "tucker"). post_ranks: (r̃1, r̃2, r̃3); None = ranks.
        shared_kv: Tucker keys and values share U3 (cache r3 per token).
        rope: RoPE. For mha/gqa/mqa (head-dim RoPE) and tucker (latent RoPE, paper §6): a bool.
            For mla: None | "latent" | "decoupled".
        backend: attention kernel, "auto" | "flash" | "sdpa" | "math".
        kernel: Tucker only: "sdpa" (queries formed, then ``backend``'s kernel) | "fused" (the Triton kernel
            that forms the queries in-kernel; needs triton and CUDA).
        dropout: attention-probability dropout during training.

    Size fields that the chosen method does not use must stay at their defaults (a typo'd command line
    fails loudly instead of training the wrong model). Dicts written with the old key ``kind`` load too.
    """

    method: str = "mha"
    n_kv_heads: int | None = None
    q_latent: int | None = None
    kv_latent: int | None = None
    separate_kv: bool = False
    rope_dim: int | None = None
    ranks: tuple[int, int, int] | None = None
    post_ranks: tuple[int, int, int] | None = None
    shared_kv: bool = False
    rope: bool | str | None = False
    backend: str = "auto"
    kernel: str = "sdpa"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_choice("attention.method", self.method, registry.method_names())
        spec = registry.spec(self.method)
        defaults = {f.name: f.default for f in fields(self)}
        for name, size in registry.SIZE_FIELDS.items():
            value = getattr(self, name)
            if size.kind == "bool":
                check_bool(f"attention.{name}", value)
            elif value is not None:
                value = (check_int(f"attention.{name}", value) if size.kind == "int"
                         else as_int_tuple(f"attention.{name}", value, 3, low=1))
                setattr(self, name, value)
        unused = [f"{name}={getattr(self, name)!r}" for name in registry.SIZE_FIELDS
                  if name not in spec.sizes and getattr(self, name) != defaults[name]]
        if unused:
            raise ValueError(f"attention.method={self.method!r} does not use {', '.join(unused)}; "
                             f"its size fields are {list(spec.sizes) or 'none'}")
        for name in spec.required:
            if getattr(self, name) is None:
                raise ValueError(f"attention.method={self.method!r} needs attention.{name}")
        if self.rope in (None, False):
            self.rope = spec.rope_off
        check_choice(f"attention.rope (for method={self.method!r})", self.rope, spec.rope_values)
        check_choice("attention.backend", self.backend, BACKENDS)
        check_choice("attention.kernel", self.kernel, TUCKER_KERNELS)
        if self.kernel != "sdpa" and self.method != "tucker":
            raise ValueError(f"attention.kernel={self.kernel!r} is Tucker attention's fused kernel; "
                             f"method={self.method!r} has only kernel='sdpa'")
        self.dropout = check_float("attention.dropout", self.dropout, low=0.0, high=1.0, high_open=True)

    @property
    def has_rope(self) -> bool:
        return self.rope != registry.spec(self.method).rope_off

    def sizes(self) -> dict[str, Any]:
        """The ``**sizes`` of ``attention.build`` / ``counting.attention_params``: the method's size fields
        that differ from their defaults, and ``rope`` when it has RoPE."""
        defaults = {f.name: f.default for f in fields(self)}
        out = {name: getattr(self, name) for name in registry.spec(self.method).sizes
               if getattr(self, name) != defaults[name]}
        if self.has_rope:
            out["rope"] = self.rope
        return out

    def label(self) -> str:
        """A short human name: ``MHA``, ``GQA n_kv=2``, ``MLA d_c=32``, ``Tucker [4,32,16]`` ..."""
        return registry.spec(self.method).label(self.sizes())

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), for JSON records and ``weights_only`` checkpoints."""
        d = asdict(self)
        for k in ("ranks", "post_ranks"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttentionConfig:
        """The inverse of ``to_dict``; also reads dicts that call the method ``kind`` (older records)."""
        d = dict(d)
        if "kind" in d and "method" not in d:
            d["method"] = d.pop("kind")
        return cls(**_known_fields(cls, d, "attention config"))


def _known_fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} field(s) {sorted(unknown)}; known: {sorted(known)}")
    return dict(d)


def build_attention(cfg: AttentionConfig, d_model: int, n_heads: int, *, max_seq_len: int,
                    device: Any = None) -> nn.Module:
    """The attention layer of ``cfg``, built by ``attention.build`` (so counting and model agree).

    ``backend``, ``dropout`` and ``max_seq_len`` are options of the layer that do not change the counts;
    the constructor validates them.
    """
    kernel = {"kernel": cfg.kernel} if cfg.kernel != "sdpa" else {}
    return registry.build(cfg.method, d_model, n_heads, device=device, backend=cfg.backend, dropout=cfg.dropout,
                          max_seq_len=check_int("max_seq_len", max_seq_len), **kernel, **cfg.sizes())


def _check_attention_fits(attention: AttentionConfig, d_model: int, n_heads: int) -> None:
    """Build the layer on the meta device: every constructor check runs, no memory is used."""
    try:
        build_attention(attention, d_model, n_heads, max_seq_len=1, device="meta")
    except (TypeError, ValueError) as e:
        raise type(e)(f"attention {attention.label()} does not fit d_model={d_model}, n_heads={n_heads}: {e}") from e


def _coerce_attention(value: Any) -> AttentionConfig:
    if isinstance(value, AttentionConfig):
        return value
    if isinstance(value, Mapping):
        return AttentionConfig.from_dict(value)
    raise TypeError(f"attention must be an AttentionConfig or a dict, got {type(value).__name__}")


@dataclass(kw_only=True)
class _ModelConfig:
    """Fields shared by GPT and ViT."""

    n_layer: int = 2
    d_model: int = 64
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def _check_common(self) -> None:
        for name in ("n_layer", "d_model", "n_heads"):
            setattr(self, name, check_int(name, getattr(self, name)))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        self.mlp_ratio = check_float("mlp_ratio", self.mlp_ratio, low=0.0, low_open=True)
        self.dropout = check_float("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        check_bool("bias", self.bias)
        self.attention = _coerce_attention(self.attention)
        _check_attention_fits(self.attention, self.d_model, self.n_heads)

    @property
    def mlp_hidden(self) -> int:
        """Width of the MLP's hidden layer: ``round(mlp_ratio * d_model)``."""
        return max(1, int(round(self.mlp_ratio * self.d_model)))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["attention"] = self.attention.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        return cls(**_known_fields(cls, d, cls.__name__))


@dataclass(kw_only=True)
class GPTConfig(_ModelConfig):
    """A decoder-only transformer (nanoGPT / GPT-2 layout).

    Attributes:
        vocab_size: tokens (256 for the byte-level corpora, 50257 for GPT-2 BPE).
        block_size: the context length N (learned position embeddings and the attention's max_seq_len).
        n_layer, d_model, n_heads: depth, width d and heads n_H.
        mlp_ratio: MLP hidden width / d_model. dropout: embedding, residual and MLP dropout.
        bias: biases in LayerNorms and MLP linears (attention projections never have biases).
        position: "auto" (learned absolute embeddings unless the attention has RoPE), "learned" or "none".
        attention: the attention method.
    """

    vocab_size: int = 256
    block_size: int = 64
    position: str = "auto"

    def __post_init__(self) -> None:
        self.vocab_size = check_int("vocab_size", self.vocab_size)
        self.block_size = check_int("block_size", self.block_size)
        check_choice("position", self.position, POSITIONS)
        self._check_common()

    @property
    def learned_positions(self) -> bool:
        """Whether the model adds a learned position embedding (auto: only without RoPE)."""
        if self.position == "auto":
            return not self.attention.has_rope
        return self.position == "learned"


@dataclass(kw_only=True)
class ViTConfig(_ModelConfig):
    """A Vision Transformer classifier (Dosovitskiy et al.): patches → pre-norm encoder → head.

    Attributes:
        image_size, patch_size: square images of ``image_size`` pixels cut into ``patch_size`` patches
            (``image_size % patch_size == 0``); ``(image_size / patch_size)²`` tokens.
        channels: input channels. num_classes: classifier outputs.
        pool: "cls" (a learned class token's output) or "mean" (mean of the patch tokens).
        (the rest as in :class:`GPTConfig`; position embeddings are always learned.)
    """

    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    num_classes: int = 10
    pool: str = "cls"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "num_classes"):
            setattr(self, name, check_int(name, getattr(self, name)))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        check_choice("pool", self.pool, POOLS)
        self._check_common()

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        """Tokens the encoder sees: the patches, plus the class token with pool='cls'."""
        return self.n_patches + (1 if self.pool == "cls" else 0)

