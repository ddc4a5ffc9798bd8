"""The interface every attention layer shares, and the forward template they all run.

A layer turns ``x`` (B, N, d) into

1. queries ``q`` (B, H_q, N, D) and the per-token entries it caches (``_project``);
2. keys ``k`` (B, H_kv, S, D) and values ``v`` (B, H_kv, S, D_v) from all cached entries (``_keys_values``);
3. ``o = attend(q, k, v)`` with one of the kernels of ``backends.py``;
4. the output (B, N, d) (``output``).

Subclasses implement those four steps, ``cache_spec`` and ``tucker_factors``; this class validates the
call, resolves positions, and runs the cache. The steps are public: ``layer.qkv(x, cache=, positions=)``
(what the kernel receives, steps 1–2), ``layer.attention(q, k, v, causal=, cache=)`` (step 3, with this
layer's scale, mask, dropout and backend) and ``layer.output(o)`` (step 4); ``fold_queries``,
``latent_rope`` and ``rotate`` expose the query folding of paper §6, ``initialize`` the one initialization
rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_float, check_input, check_int, check_positions
from .backends import BACKENDS, attend
from .cache import KVCache
from .factors import TuckerFactors
from .rope import ROPE_STYLES, apply_rope, rope_table

DEFAULT_MAX_SEQ_LEN = 4096


class AttentionLayer(nn.Module):
    """Base class: shared validation, positions, RoPE helper, cache handling and kernel dispatch.

    Keyword args (all layers): ``max_seq_len`` (positions must be below it), ``dropout`` (attention-
    probability dropout in training), ``backend`` ("auto" | "flash" | "sdpa" | "math"), ``rope_base``,
    ``rope_style`` ("interleaved" | "half").
    """

    def __init__(self, d_model: int, n_heads: int, *, max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                 dropout: float = 0.0, backend: str = "auto", rope_base: float = 10000.0,
                 rope_style: str = "interleaved") -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model)
        self.n_heads = check_int("n_heads", n_heads)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads} "
                             "(the head size d_H = d_model / n_heads sets the score scale)")
        self.head_dim = d_model // n_heads
        self.max_seq_len = check_int("max_seq_len", max_seq_len)
        self.dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got backend={backend!r}")
        self.backend = backend
        self.rope_base = check_float("rope_base", rope_base, low=1.0)
        if rope_style not in ROPE_STYLES:
            raise ValueError(f"rope_style must be one of {ROPE_STYLES}, got rope_style={rope_style!r}")
        self.rope_style = rope_style

    # ----------------------------------------------------------------------------------- the contract
    @property
    def scale(self) -> float:
        """The softmax score scale ``s`` (1/sqrt(d_H) unless a subclass says otherwise)."""
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def has_rope(self) -> bool:
        raise NotImplementedError

    def cache_spec(self) -> dict[str, tuple[int, int]]:
        """What one token stores in the cache: ``{name: (heads, width)}``."""
        raise NotImplementedError

    def tucker_factors(self) -> tuple[TuckerFactors, TuckerFactors]:
        """Exact Tucker factors (pre-softmax 𝒲, post-softmax 𝒲̃) of this layer (paper §4)."""
        raise NotImplementedError

    def tucker_biases(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Biases in the Tucker view: ``(q_bias (n_H, r3), out_bias (d,))``, with ``q_bias`` a per-head query
        offset in the key space of ``tucker_factors()``'s U3 (see ``factors.fold_biases``); None without biases."""
        return None

    @torch.no_grad()
    def initialize(self, *, std: float, out_std: float | None = None) -> None:
        """Initialize every weight under one rule, whatever the factorization.

        For an input ``x`` of unit variance, every query, key and value entry starts with standard deviation
        ``std·√d`` and the output with that of one ``N(0, out_std²)`` projection from ``d`` inputs applied to
        the attention output — exactly what nanoGPT's ``N(0, std²)`` linear maps give MHA (``W^Q, W^K, W^V``
        at ``std``, ``W^O`` at ``out_std``, e.g. ``std / √(2 n_layer)`` for a residual branch). A factor
        that maps ``x`` (fan-in ``d``) gets ``N(0, std²)``; every factor after it is variance-preserving
        (``1/√fan-in``), and the last output factor carries ``out_std`` rescaled to its own fan-in. Each
        layer applies the rule to its own weights (``_initialize``); biases start at zero.

        Args:
            std: standard deviation of the input-side factors (> 0).
            out_std: that of the output projection as MHA's ``W^O`` would have it (> 0); default ``std``.
        """
        std = check_float("std", std, low=0.0, low_open=True)
        out_std = std if out_std is None else check_float("out_std", out_std, low=0.0, low_open=True)
        self._initialize(std, out_std)

    def _initialize(self, std: float, out_std: float) -> None:
        raise NotImplementedError

    def make_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype | None = None,
                   static: bool = False) -> KVCache:
        """A preallocated cache for ``batch_size`` sequences of up to ``max_len`` tokens.

        ``dtype`` defaults to the weights' dtype (pass e.g. ``torch.bfloat16`` when decoding under autocast).
        ``static=True``: the static-shape layout (device-side fill length, masked attention over ``max_len``
        slots), so that a decoding step compiles once (see ``cache.py``).
        """
        check_int("batch_size", batch_size)
        check_int("max_len", max_len)
        p = next(self.parameters())
        return KVCache(self.cache_spec(), batch_size=batch_size, max_len=max_len, dtype=dtype or p.dtype,
                       device=p.device, static=static)

    def kv_cache_per_token(self) -> int:
        """Elements cached per token (paper §5)."""
        return sum(h * w for h, w in self.cache_spec().values())

    # ------------------------------------------------------------------------------- public steps
    @property
    def latent_rope(self) -> bool:
        """Whether RoPE rotates the shared latent keys (paper §6: Tucker ``rope=True``, MLA ``rope="latent"``),
        so that folded queries ``x F_i`` are rotated the same way (``fold_queries``)."""
        return False

    def fold_queries(self) -> torch.Tensor:
        """The folded query matrices ``F`` (n_H, d, r3): head i's query in the key latent is ``x F_i`` and its
        keys are ``x U3`` (paper §6). This default, ``F_i = U2 G_i`` from ``tucker_factors()``, serves every
        RoPE-free layer; MLA and Tucker fold their own weights (also with latent RoPE)."""
        pre, _ = self.tucker_factors()
        return pre.U2 @ pre.head_cores()                                # (H, d, r3)

    def rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """This layer's RoPE (its ``rope_base`` and ``rope_style``) on the last dim of ``t`` (..., N, D) at
        ``positions`` (N,)."""
        return self._rope(t, positions)

    # ------------------------------------------------------------------------------------ subclasses
    def _project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _keys_values(self, entries: dict[str, torch.Tensor], positions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """The layer's output (B, N, d_model) from the kernel's output ``o`` (B, H_q, N, D_v)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- helpers
    def _rope(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate the last dim of ``t`` (..., N, D) by RoPE at ``positions`` (N,).

        The angles come from a table of all positions below ``max_seq_len`` (``rope_table``), built on first
        use for each width, device and dtype and kept with the layer (dropped by ``.to()``/``.double()``);
        a call gathers its rows, which equal ``rope_angles(positions)`` exactly.
        """
        key = ("rope", t.shape[-1], t.device, t.dtype, self.rope_base, self.max_seq_len)
        table = self._derived.get(key)
        if table is None:
            table = rope_table(self.max_seq_len, t.shape[-1], base=self.rope_base, device=t.device, dtype=t.dtype)
            self._derived[key] = table
        cos, sin = table
        return apply_rope(t, cos[positions], sin[positions], style=self.rope_style)

    @property
    def _derived(self) -> dict:
        """Tensors derived from the layer's weights or settings and kept between calls (RoPE tables; Tucker's
        head cores in inference). Cleared whenever the module's tensors are converted or moved (``_apply``)."""
        store = self.__dict__.get("_derived_store")
        if store is None:
            store = self.__dict__["_derived_store"] = {}
        return store

    def _apply(self, *args, **kwargs):
        self.__dict__.pop("_derived_store", None)                        # .to(), .double(), .cuda(), ...
        return super()._apply(*args, **kwargs)

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *, causal: bool = False, cache: KVCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over ``x`` (B, N, d_model) -> (B, N, d_model): ``qkv``, the kernel, the output projection.

        Args:
            causal: mask future tokens (bottom-right aligned when a cache holds earlier tokens).
            cache: a ``KVCache`` from ``make_cache``; the new tokens are appended and attend to all held.
            positions: (N,) absolute positions for RoPE; default ``start .. start+N-1`` where ``start`` is
                one past the cache's last position (0 without a cache).
        """
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        q, k, v = self.qkv(x, cache=cache, positions=positions)
        return self.output(self.attention(q, k, v, causal=causal, cache=cache))   # (B, N, d_model)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  cache: KVCache | None = None) -> torch.Tensor:
        """The kernel on ``qkv``'s output: ``softmax(s q kᵀ + mask) v`` (B, H_q, N, D_v) with this layer's score
        scale, dropout (in training) and backend; ``cache``: the one ``qkv`` appended to (its mask)."""
        mask = None if cache is None else cache.attention_mask(q.shape[2], causal)   # static layout: (N, max_len)
        return attend(q, k, v, scale=self.scale, causal=causal and mask is None,
                      dropout_p=self.dropout if self.training else 0.0, backend=self.backend, mask=mask)

    def qkv(self, x: torch.Tensor, *, cache: KVCache | None = None, positions: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values this layer gives the attention kernel for ``x`` (B, N, d_model).

        Returns ``q`` (B, H_q, N, D), ``k`` (B, H_kv, S, D), ``v`` (B, H_kv, S, D_v), in ``q``'s dtype, with
        ``S = N`` without a cache and all held tokens with one (the new ones are appended, as in ``forward``).
        MHA: H_kv = H_q, D = D_v = d_H; GQA: H_kv = n_kv; MLA and Tucker: one shared latent key/value head
        (latent MQA, paper §3), D = r3 (MLA: d_c^K, + d_R with decoupled RoPE). ``cache`` and ``positions`` as
        in ``forward``.
        """
        p = next(self.parameters())
        check_input(x, self.d_model, param=p)
        B, N, _ = x.shape
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache from layer.make_cache(), got {type(cache).__name__}")
            if cache.spec != self.cache_spec():
                raise ValueError(f"cache layout {cache.spec} does not match this layer's {self.cache_spec()}; "
                                 "make it with this layer's make_cache()")
            # under autocast the cache keeps its own dtype (entries are cast on append); otherwise it must match x
            autocast = torch.is_autocast_enabled(x.device.type)
            cache.check_append(B, N, cache.dtype if autocast else x.dtype, x.device)
        default_positions = positions is None
        if default_positions:
            # the start is known on the host without a cache, or from a dynamic cache that holds the default
            # positions 0, 1, 2, ...; otherwise it stays on the device (read back only in eager mode, to check)
            start = 0 if cache is None else cache.known_next_position()
            if start is None and not cache.static and not torch.compiler.is_compiling():
                start = int(cache.next_position())
            if start is not None and start + N > self.max_seq_len:
                raise ValueError(f"positions {start}..{start + N - 1} exceed max_seq_len={self.max_seq_len}; "
                                 "build the layer with a larger max_seq_len")
            if start is not None:
                positions = torch.arange(start, start + N, device=x.device)
            else:
                positions = cache.next_position() + torch.arange(N, device=x.device)
        else:
            # the value range check reads the tensor; torch.compile would break the graph there
            check_positions(positions, N, self.max_seq_len, values=not torch.compiler.is_compiling())
            positions = positions.to(x.device)

        q, entries = self._project(x, positions)                       # q: (B, Hq, N, D)
        if cache is not None:
            entries = cache.write(positions, {k: v.to(cache.dtype) for k, v in entries.items()},
                                  default_positions=default_positions)
            key_positions = cache.held_positions()
        else:
            key_positions = positions
        k, v = self._keys_values(entries, key_positions)               # (B, Hkv, S, D), (B, Hkv, S, Dv)
        return q, k.to(q.dtype), v.to(q.dtype)
