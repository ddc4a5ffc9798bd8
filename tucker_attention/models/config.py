"""Configuration dataclasses of the models: which attention, and how big.

``AttentionConfig`` names one attention method of the paper and its sizes; ``GPTConfig`` and ``ViTConfig``
hold a whole model. Every config is checked when it is made (``__post_init__``), with messages that name
the field, its value and the rule, so a bad command line fails before any data is loaded.

The attention layer itself is built by :func:`tucker_attention.counting.build_layer` from
``AttentionConfig.sizes()`` — the same call the Table-1 counting uses — so a model's attention parameters
are exactly ``counting.attention_params(kind, d_model, n_heads, **sizes) * n_layer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from .. import counting
from ..attention import BACKENDS

__all__ = ["ATTENTION_KINDS", "AttentionConfig", "GPTConfig", "ViTConfig", "build_attention"]

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla", "tucker")
MLA_ROPE = (None, "latent", "decoupled")
POSITIONS = ("auto", "learned", "none")
POOLS = ("cls", "mean")

# Fields of AttentionConfig that each kind may set (besides kind, rope, backend, dropout).
_KIND_FIELDS = {
    "mha": set(),
    "gqa": {"n_kv_heads"},
    "mqa": set(),
    "mla": {"q_latent", "kv_latent", "separate_kv", "rope_dim"},
    "tucker": {"ranks", "post_ranks", "shared_kv"},
}
_SIZE_DEFAULTS = {"n_kv_heads": None, "q_latent": None, "kv_latent": None, "separate_kv": False,
                  "rope_dim": None, "ranks": None, "post_ranks": None, "shared_kv": False}


def _check_int(name: str, value: Any, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {name}={value!r} of type {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value}")
    return value


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {name}={value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {name}={value}")
    return float(value)


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {name}={value!r}")
    return value


def _as_ranks(name: str, value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{name} must be a sequence of 3 ints like (8, 64, 64), got {name}={value!r} "
                        "(the command line takes '8,64,64')")
    if not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must have 3 entries (r1, r2, r3), got {name}={value!r}")
    for k, r in enumerate(value):
        _check_int(f"{name}[{k}]", r)
    return tuple(int(r) for r in value)


@dataclass(kw_only=True)
class AttentionConfig:
    """One attention method of the paper and its sizes (PAPER.md §3–5).

    Attributes:
        kind: "mha" | "gqa" | "mqa" | "mla" | "tucker".
        n_kv_heads: GQA's key/value heads (required for "gqa"; "mqa" is GQA with 1).
        q_latent, kv_latent: MLA's query latent d_c^Q and key/value latent d_c^K (required for "mla").
        separate_kv: MLA with separate key and value latents.
        rope_dim: MLA's decoupled RoPE size d_R (only with rope="decoupled"; default d_H / 2).
        ranks: Tucker's (r1, r2, r3) (required for "tucker"). post_ranks: (r̃1, r̃2, r̃3); None = ranks.
        shared_kv: Tucker keys and values share U3 (cache r3 per token).
        rope: RoPE. For mha/gqa/mqa (head-dim RoPE) and tucker (latent RoPE, PAPER.md §6): a bool.
            For mla: None | "latent" | "decoupled".
        backend: attention kernel, "auto" | "flash" | "sdpa" | "math".
        dropout: attention-probability dropout during training.

    Fields that the chosen kind does not use must stay at their defaults (a typo'd command line fails
    loudly instead of training the wrong model).
    """

    kind: str = "mha"
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
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("attention.kind", self.kind, ATTENTION_KINDS)
        self.ranks = _as_ranks("attention.ranks", self.ranks)
        self.post_ranks = _as_ranks("attention.post_ranks", self.post_ranks)
        for name in ("n_kv_heads", "q_latent", "kv_latent", "rope_dim"):
            if getattr(self, name) is not None:
                _check_int(f"attention.{name}", getattr(self, name))
        for name in ("separate_kv", "shared_kv"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"attention.{name} must be a bool, got {getattr(self, name)!r}")
        unused = [f"{name}={getattr(self, name)!r}" for name, default in _SIZE_DEFAULTS.items()
                  if name not in _KIND_FIELDS[self.kind] and getattr(self, name) != default]
        if unused:
            raise ValueError(f"attention.kind={self.kind!r} does not use {', '.join(unused)}; "
                             f"its size fields are {sorted(_KIND_FIELDS[self.kind]) or 'none'}")
        required = {"gqa": ("n_kv_heads",), "mla": ("q_latent", "kv_latent"), "tucker": ("ranks",)}
        for name in required.get(self.kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"attention.kind={self.kind!r} needs attention.{name}")
        if self.kind == "mla":
            if self.rope is False:
                self.rope = None
            _check_choice("attention.rope (for kind='mla')", self.rope, MLA_ROPE)
            if self.rope_dim is not None and self.rope != "decoupled":
                raise ValueError(f"attention.rope_dim={self.rope_dim} needs attention.rope='decoupled', "
                                 f"got rope={self.rope!r}")
        else:
            if self.rope is None:
                self.rope = False
            if not isinstance(self.rope, bool):
                raise TypeError(f"attention.rope must be a bool for kind={self.kind!r} (None|'latent'|"
                                f"'decoupled' is for 'mla'), got rope={self.rope!r}")
        _check_choice("attention.backend", self.backend, BACKENDS)
        self.dropout = _check_prob("attention.dropout", self.dropout)

    @property
    def has_rope(self) -> bool:
        return bool(self.rope)

    def sizes(self) -> dict[str, Any]:
        """The ``**sizes`` of ``counting.build_layer`` / ``attention_params`` for this method."""
        out: dict[str, Any] = {}
        if self.kind == "gqa":
            out["n_kv_heads"] = self.n_kv_heads
        elif self.kind == "mla":
            out.update(q_latent=self.q_latent, kv_latent=self.kv_latent)
            if self.separate_kv:
                out["separate_kv"] = True
            if self.rope_dim is not None:
                out["rope_dim"] = self.rope_dim
        elif self.kind == "tucker":
            out["ranks"] = self.ranks
            if self.post_ranks is not None:
                out["post_ranks"] = self.post_ranks
            if self.shared_kv:
                out["shared_kv"] = True
        if self.has_rope:
            out["rope"] = self.rope
        return out

    def label(self) -> str:
        """A short human name: ``MHA``, ``GQA n_kv=2``, ``MLA d_c=32``, ``Tucker [4,32,16]`` ..."""
        if self.kind == "gqa":
            text = f"GQA n_kv={self.n_kv_heads}"
        elif self.kind == "mla":
            dc = (f"d_c={self.kv_latent}" if self.q_latent == self.kv_latent
                  else f"d_cQ={self.q_latent},d_cK={self.kv_latent}")
            text = f"MLA {dc}" + (" sep" if self.separate_kv else "")
        elif self.kind == "tucker":
            text = "Tucker [" + ",".join(map(str, self.ranks)) + "]"
            if self.post_ranks is not None and self.post_ranks != self.ranks:
                text += "/[" + ",".join(map(str, self.post_ranks)) + "]"
            if self.shared_kv:
                text += " shared"
        else:
            text = self.kind.upper()
        if self.has_rope:
            text += " +RoPE" if self.rope is True else f" +RoPE({self.rope})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), for JSON records and ``weights_only`` checkpoints."""
        d = asdict(self)
        for k in ("ranks", "post_ranks"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttentionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown attention config field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


def build_attention(cfg: AttentionConfig, d_model: int, n_heads: int, *, max_seq_len: int,
                    device: Any = None) -> nn.Module:
    """The attention layer of ``cfg``, built by ``counting.build_layer`` (so counting and model agree).

    ``backend``, ``dropout`` and ``max_seq_len`` are options of the layer that do not change the counts;
    ``build_layer`` passes them to the constructor, which validates them.
    """
    return counting.build_layer(cfg.kind, d_model, n_heads, device=device, backend=cfg.backend,
                                dropout=cfg.dropout, max_seq_len=_check_int("max_seq_len", max_seq_len),
                                **cfg.sizes())


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
            _check_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got mlp_ratio={self.mlp_ratio!r}")
        self.dropout = _check_prob("dropout", self.dropout)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be a bool, got bias={self.bias!r}")
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
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


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
        _check_int("vocab_size", self.vocab_size)
        _check_int("block_size", self.block_size)
        _check_choice("position", self.position, POSITIONS)
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
            _check_int(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        _check_choice("pool", self.pool, POOLS)
        self._check_common()

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        """Tokens the encoder sees: the patches, plus the class token with pool='cls'."""
        return self.n_patches + (1 if self.pool == "cls" else 0)

