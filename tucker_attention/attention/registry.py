"""The attention methods of the paper, one spec each: class, size arguments, label, Table-1 formulas.

Everything that lists methods reads this table: ``counting`` (parameters and KV cache), the models'
``AttentionConfig``, the command line's ``--attention`` choices and size flags, the sweeps and the book.
Adding a method is one :class:`MethodSpec` in ``METHODS`` (plus its tests): its class builds the layer,
its formulas count it (the tests check formula == module ``numel`` for every spec), and configs, the
command line and the book's method lists pick it up.

    layer = attention.build("tucker", 768, 12, ranks=(8, 128, 64))
    attention.spec("tucker").params(768, 12, {"ranks": (8, 128, 64)})      # == numel of layer

``**sizes`` use the constructors' own argument names. Formulas (per layer, no biases; paper §5, Table 1):

    mha     4 d²                                   cache 2 d
    gqa     2 d² + 2 n_kv d_H d                    cache 2 n_kv d_H       (mqa: n_kv = 1)
    mla     d² + 2 d d_c^Q + 3 d d_c^K             cache d_c^K
            (separate_kv: + d d_c^K, cache + d_c^K; decoupled RoPE: + n_H d_R d_c^Q + d d_R, cache + d_R)
    tucker  r1 r2 r3 + n_H r1 + d r2 + d r3  + (same with tildes)  (- d r3 if shared_kv)
                                                   cache r3 + r̃3          (r3 if shared_kv)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..validation import check_int, check_ranks
from .base import AttentionLayer
from .gqa import GroupedQueryAttention
from .mha import MultiHeadAttention
from .mla import MultiHeadLatentAttention
from .tucker import TuckerAttention

__all__ = ["LAYER_OPTIONS", "METHODS", "SIZE_FIELDS", "MethodSpec", "SizeField", "build", "check_sizes",
           "method_names", "spec"]

#: Layer options every constructor takes that do not change the counts.
LAYER_OPTIONS = ("backend", "dropout", "max_seq_len", "rope_base", "rope_style")
#: Layer options only some constructors take, passed through when given (Tucker's ``kernel``).
METHOD_OPTIONS = ("kernel",)


@dataclass(frozen=True)
class SizeField:
    """One size argument: ``kind`` "int" | "ranks" (three ints) | "bool", a one-line help (the CLI's) and,
    for an int, what bounds it from above (``limit``: "n_heads" | "d_model" | None)."""

    kind: str
    help: str
    limit: str | None = None


#: Every size argument of every method (``rope`` is separate: its values differ per method).
SIZE_FIELDS: dict[str, SizeField] = {
    "n_kv_heads": SizeField("int", "key/value heads n_KV (divides n_heads)", limit="n_heads"),
    "q_latent": SizeField("int", "query latent d_c^Q (<= d_model)", limit="d_model"),
    "kv_latent": SizeField("int", "key/value latent d_c^K (<= d_model)", limit="d_model"),
    "separate_kv": SizeField("bool", "separate key and value latents"),
    "rope_dim": SizeField("int", "decoupled RoPE size d_R (with --rope decoupled)"),
    "ranks": SizeField("ranks", "ranks (head, query, key) r1,r2,r3"),
    "post_ranks": SizeField("ranks", "post-softmax ranks (head, output, value); default = ranks"),
    "shared_kv": SizeField("bool", "keys and values share one factor U3"),
}

_BOOL_ROPE = {"none": False, "on": True}


@dataclass(frozen=True)
class MethodSpec:
    """One attention method.

    Attributes:
        name: the method's key ("mha", ...). title: its short name in tables ("MHA").
        cls: the layer class; ``fixed``: constructor arguments the method pins (MQA: ``n_kv_heads=1``).
        sizes: the size arguments it takes (names of ``SIZE_FIELDS``); ``required``: those without default.
        rope: ``--rope`` word -> the constructor's ``rope`` value ("none" must be present).
        params, kv_cache: ``f(d_model, n_heads, sizes) -> int`` — the Table-1 formulas, with ``sizes``
            already checked by :func:`check_sizes` (so Tucker's ``ranks`` are tuples).
        describe: ``f(sizes) -> str``, the part of the label after the title ("n_kv=2"), "" for none.
    """

    name: str
    title: str
    cls: type[AttentionLayer]
    params: Callable[[int, int, dict[str, Any]], int]
    kv_cache: Callable[[int, int, dict[str, Any]], int]
    sizes: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    rope: Mapping[str, Any] = field(default_factory=lambda: dict(_BOOL_ROPE))
    describe: Callable[[dict[str, Any]], str] = lambda sizes: ""

    @property
    def rope_values(self) -> tuple[Any, ...]:
        """The constructor's accepted ``rope`` values, "off" first."""
        return tuple(dict.fromkeys(self.rope.values()))

    @property
    def rope_off(self) -> Any:
        return self.rope["none"]

    def label(self, sizes: Mapping[str, Any]) -> str:
        """``MHA``, ``GQA n_kv=2``, ``MLA d_c=32``, ``Tucker [4,32,16]``, with `` +RoPE`` when it has one."""
        text = " ".join(t for t in (self.title, self.describe(dict(sizes))) if t)
        rope = sizes.get("rope", self.rope_off)
        if rope not in (None, False):
            text += " +RoPE" if rope is True else f" +RoPE({rope})"
        return text


# --------------------------------------------------------------------------------------- formulas
def _gqa_params(d: int, h: int, s: dict) -> int:
    return 2 * d * d + 2 * s["n_kv_heads"] * (d // h) * d


def _gqa_cache(d: int, h: int, s: dict) -> int:
    return 2 * s["n_kv_heads"] * (d // h)


def _mla_rope_dim(d: int, h: int, s: dict) -> int:
    if s.get("rope") != "decoupled":
        return 0
    return (d // h) // 2 if s.get("rope_dim") is None else s["rope_dim"]


def _mla_params(d: int, h: int, s: dict) -> int:
    cq, ck, dr = s["q_latent"], s["kv_latent"], _mla_rope_dim(d, h, s)
    return d * d + 2 * d * cq + 3 * d * ck + (d * ck if s.get("separate_kv") else 0) + h * dr * cq + d * dr


def _mla_cache(d: int, h: int, s: dict) -> int:
    return s["kv_latent"] * (2 if s.get("separate_kv") else 1) + _mla_rope_dim(d, h, s)


def _tucker_params(d: int, h: int, s: dict) -> int:
    def one(r1: int, r2: int, r3: int) -> int:
        return r1 * r2 * r3 + h * r1 + d * r2 + d * r3

    post = s.get("post_ranks") or s["ranks"]
    return one(*s["ranks"]) + one(*post) - (d * s["ranks"][2] if s.get("shared_kv") else 0)


def _tucker_cache(d: int, h: int, s: dict) -> int:
    post = s.get("post_ranks") or s["ranks"]
    return s["ranks"][2] if s.get("shared_kv") else s["ranks"][2] + post[2]


def _mla_describe(s: dict) -> str:
    cq, ck = s["q_latent"], s["kv_latent"]
    return (f"d_c={ck}" if cq == ck else f"d_cQ={cq},d_cK={ck}") + (" sep" if s.get("separate_kv") else "")


def _tucker_describe(s: dict) -> str:
    def join(r):
        return "[" + ",".join(map(str, r)) + "]"

    text = join(s["ranks"])
    if s.get("post_ranks") is not None and tuple(s["post_ranks"]) != tuple(s["ranks"]):
        text += "/" + join(s["post_ranks"])
    return text + (" shared" if s.get("shared_kv") else "")


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("mha", "MHA", MultiHeadAttention, params=lambda d, h, s: 4 * d * d, kv_cache=lambda d, h, s: 2 * d),
    MethodSpec("gqa", "GQA", GroupedQueryAttention, params=_gqa_params, kv_cache=_gqa_cache,
               sizes=("n_kv_heads",), required=("n_kv_heads",), describe=lambda s: f"n_kv={s['n_kv_heads']}"),
    MethodSpec("mqa", "MQA", GroupedQueryAttention, fixed={"n_kv_heads": 1},
               params=lambda d, h, s: _gqa_params(d, h, {"n_kv_heads": 1}),
               kv_cache=lambda d, h, s: _gqa_cache(d, h, {"n_kv_heads": 1})),
    MethodSpec("mla", "MLA", MultiHeadLatentAttention, params=_mla_params, kv_cache=_mla_cache,
               sizes=("q_latent", "kv_latent", "separate_kv", "rope_dim"), required=("q_latent", "kv_latent"),
               rope={"none": None, "latent": "latent", "decoupled": "decoupled"}, describe=_mla_describe),
    MethodSpec("tucker", "Tucker", TuckerAttention, params=_tucker_params, kv_cache=_tucker_cache,
               sizes=("ranks", "post_ranks", "shared_kv"), required=("ranks",),
               rope={"none": False, "on": True, "latent": True}, describe=_tucker_describe),
)}


# ------------------------------------------------------------------------------------------ access
def method_names() -> tuple[str, ...]:
    """The registered methods, in table order."""
    return tuple(METHODS)


def spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; ``ValueError`` naming the choices otherwise."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got method={method!r}")
    return METHODS[method]


def check_sizes(method: str, d_model: int, n_heads: int, sizes: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``sizes`` for ``method`` and return them normalized (ints, rank tuples, bools).

    Raises ``TypeError`` for unknown or missing size arguments and the constructors' errors for bad values
    (ranks above ``(n_heads, d_model, d_model)``, MLA latents above ``d_model``, ...).
    """
    s = spec(method)
    check_int("d_model", d_model)
    check_int("n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    allowed = set(s.sizes) | {"rope"}
    unknown = set(sizes) - allowed
    if unknown:
        raise TypeError(f"unknown size argument(s) {sorted(unknown)} for method={method!r}; allowed: {sorted(allowed)}")
    missing = [name for name in s.required if sizes.get(name) is None]
    if missing:
        raise TypeError(f"method={method!r} needs size argument(s) {missing}")
    out = dict(sizes)
    for name, value in sizes.items():
        kind = SIZE_FIELDS[name].kind if name in SIZE_FIELDS else "rope"
        if value is None or kind in ("bool", "rope"):
            continue
        if kind == "int":
            limit = SIZE_FIELDS[name].limit
            out[name] = check_int(name, value, high={"n_heads": n_heads, "d_model": d_model}.get(limit),
                                  high_name=limit)
        else:
            out[name] = check_ranks(name, value, (n_heads, d_model, d_model), ("n_heads", "d_model", "d_model"))
    return out


def build(method: str, d_model: int, n_heads: int, *, device: torch.device | str | None = None,
          **sizes: Any) -> AttentionLayer:
    """The layer of ``method`` with ``sizes`` — exactly what ``counting.attention_params`` counts.

    ``sizes`` may also carry the layer options that do not change the counts (``LAYER_OPTIONS``: backend,
    dropout, max_seq_len, rope_base, rope_style) and, for the methods that take them, ``METHOD_OPTIONS``
    (Tucker's ``kernel``). ``device="meta"`` builds it without memory.
    """
    options = {k: sizes.pop(k) for k in LAYER_OPTIONS + METHOD_OPTIONS if k in sizes}
    s = spec(method)
    checked = check_sizes(method, d_model, n_heads, sizes)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return s.cls(d_model, n_heads, **s.fixed, **checked, **options)
