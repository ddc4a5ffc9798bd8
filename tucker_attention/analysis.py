"""Ranks and spectra of the attention tensors of whole models (paper §4, §7), and what a rank choice costs.

- ``named_attention_layers(model)``: every attention layer of our family inside ``model`` (and, by default, every
  peer's module that ``convert.from_peer`` understands — e.g. the ``GPT2Attention`` blocks of a 🤗 GPT-2).
- ``model_ranks(model)``: per layer, the numerical multilinear ranks of 𝒲 and 𝒲̃ next to the Tucker ranks of
  the layer's parameterization — "the actual ranks of MHA, GQA and MLA" (the theorem table of §4).
- ``model_spectra(model)``: per layer, the singular values of the three unfoldings of 𝒲 and 𝒲̃ (the spectral
  figure of §7: in trained models they decay in every mode, the head mode included).
- ``energy_ranks(spectra, energy)``: the smallest ranks keeping a fraction of the squared singular values.
- ``rank_budget(d_model, n_heads, ranks, ...)``: parameters and KV cache of a Tucker rank choice against MHA
  (``tucker_attention.counting``, paper §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import counting
from .attention import AttentionLayer
from .convert import from_peer, peer_kind
from .tensors import attention_tensors, multilinear_rank, unfolding_spectra
from .validation import check_float, check_int, check_ranks

__all__ = ["LayerRanks", "LayerSpectra", "RankBudget", "named_attention_layers", "model_ranks", "model_spectra",
           "energy_ranks", "rank_budget"]


@dataclass(frozen=True)
class LayerRanks:
    """Ranks of one layer: numerical multilinear ranks of its dense tensors and its parameterization's ranks."""

    name: str                               # the module's name in the model
    kind: str                               # class name of the (converted) layer
    ranks: tuple[int, int, int]             # multilinear rank of 𝒲 (head, query, key)
    post_ranks: tuple[int, int, int]        # multilinear rank of 𝒲̃ (head, output, value)
    tucker_ranks: tuple[int, int, int]      # core size of the layer's exact Tucker factors, pre-softmax
    tucker_post_ranks: tuple[int, int, int]  # and post-softmax (upper bounds of the two above)


@dataclass(frozen=True)
class LayerSpectra:
    """Singular values (descending, float64, CPU) of the mode-1, 2, 3 unfoldings of 𝒲 (``pre``) and 𝒲̃ (``post``)."""

    name: str
    kind: str
    pre: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    post: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RankBudget:
    """What a Tucker rank choice costs, whole model (``n_layers``), against MHA of the same width."""

    ranks: tuple[int, int, int]
    post_ranks: tuple[int, int, int]
    shared_kv: bool
    n_layers: int
    params: int                     # attention parameters, all layers
    kv_cache_per_token: int         # cached elements per token, all layers
    mha_params: int
    mha_kv_cache_per_token: int

    @property
    def param_fraction(self) -> float:
        """Tucker's attention parameters as a fraction of MHA's (e.g. ≈ 0.18 for GPT-2 small, [8,128,64])."""
        return self.params / self.mha_params

    @property
    def kv_fraction(self) -> float:
        """Tucker's KV cache as a fraction of MHA's."""
        return self.kv_cache_per_token / self.mha_kv_cache_per_token

    def attention_mb(self, bytes_per_param: int = 2) -> float:
        """Attention weights in MB (10⁶ bytes), bf16 by default."""
        return bytes_per_param * self.params / 1e6

    def kv_cache_mb(self, seq_len: int, *, batch_size: int = 1, bytes_per_elem: int = 2) -> float:
        """KV cache in MB for ``batch_size`` sequences of ``seq_len`` tokens, bf16 by default."""
        return bytes_per_elem * batch_size * seq_len * self.kv_cache_per_token / 1e6


def named_attention_layers(model: nn.Module, *, peers: bool = True) -> list[tuple[str, AttentionLayer]]:
    """``(name, layer)`` for every attention layer in ``model`` (``model`` itself included), in module order.

    With ``peers=True`` a peer's module (``convert.peer_kind``) is converted with ``convert.from_peer`` and
    its submodules are not searched further. Raises ``ValueError`` if there is none.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: list[tuple[str, AttentionLayer]] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue
        if isinstance(module, AttentionLayer):
            found.append((name, module))
            taken.append(name)
        elif peers and peer_kind(module) is not None:
            found.append((name, from_peer(module)))
            taken.append(name)
    if not found:
        raise ValueError(f"model ({type(model).__name__}) contains no attention layer of tucker_attention"
                         + (" and no peer module that convert.from_peer understands" if peers else ""))
    return found


def _tensors(name: str, layer: AttentionLayer) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        W, Wt, _ = attention_tensors(layer)
    except ValueError as err:
        raise ValueError(f"layer {name!r} ({type(layer).__name__}): {err}") from err
    return W.detach(), Wt.detach()


@torch.no_grad()
def model_ranks(model: nn.Module, rtol: float = 1e-10, *, peers: bool = True) -> list[LayerRanks]:
    """Per layer: the numerical multilinear ranks of 𝒲 and 𝒲̃ (``tensors.multilinear_rank`` with ``rtol``)
    and the Tucker ranks of its exact factors. Use ``rtol`` ≈ 1e-5 for float32 weights."""
    out = []
    for name, layer in named_attention_layers(model, peers=peers):
        W, Wt = _tensors(name, layer)
        pre, post = layer.tucker_factors()
        out.append(LayerRanks(name, type(layer).__name__, multilinear_rank(W, rtol), multilinear_rank(Wt, rtol),
                              pre.ranks, post.ranks))
    return out


@torch.no_grad()
def model_spectra(model: nn.Module, *, peers: bool = True) -> list[LayerSpectra]:
    """Per layer: singular values of all three unfoldings of 𝒲 and 𝒲̃ (float64, on the CPU)."""
    out = []
    for name, layer in named_attention_layers(model, peers=peers):
        W, Wt = _tensors(name, layer)
        pre = tuple(s.cpu() for s in unfolding_spectra(W))
        post = tuple(s.cpu() for s in unfolding_spectra(Wt))
        out.append(LayerSpectra(name, type(layer).__name__, pre, post))
    return out


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"each spectrum must be a non-empty 1-D tensor of singular values, got "
                         f"{tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__}")
    if bool((s < 0).any()):
        raise ValueError("singular values must be >= 0")
    e = torch.sort(s.detach().to(torch.float64), descending=True).values.pow(2)
    total = e.sum()
    if total == 0:
        return 0
    cum = e.cumsum(0)
    return min(int((cum < energy * total * (1 - 1e-12)).sum()) + 1, s.numel())


def energy_ranks(spectra: torch.Tensor | Sequence[torch.Tensor], energy: float = 0.99) -> int | tuple[int, ...]:
    """Smallest rank(s) ``r`` with ``Σ_{k<r} σ_k² >= energy · Σ_k σ_k²``.

    ``spectra``: one 1-D tensor of singular values (→ an int) or a sequence of them, e.g. the three of
    ``tensors.unfolding_spectra`` or ``LayerSpectra.pre`` (→ a tuple, one rank per mode). Truncating a
    Tucker tensor to these ranks leaves a relative error of at most ``sqrt(Σ_modes (1 - kept energy))``
    (the HOSVD bound).
    """
    energy = check_float("energy", energy, low=0.0, high=1.0, low_open=True)
    if isinstance(spectra, torch.Tensor):
        return _energy_rank(spectra, float(energy))
    if isinstance(spectra, (str, bytes)) or not isinstance(spectra, Sequence):
        raise TypeError(f"spectra must be a 1-D tensor or a sequence of them, got {type(spectra).__name__}")
    return tuple(_energy_rank(s, float(energy)) for s in spectra)


def rank_budget(d_model: int, n_heads: int, ranks: Sequence[int], post_ranks: Sequence[int] | None = None, *,
                n_layers: int = 1, shared_kv: bool = False) -> RankBudget:
    """Attention parameters and KV cache per token of Tucker ``ranks`` / ``post_ranks`` over ``n_layers``
    layers, next to MHA's (paper §5; counts are those of the real modules, ``counting.attention_params``).

    Example: ``rank_budget(768, 12, (8, 128, 64), n_layers=12).param_fraction`` ≈ 0.18 (GPT-2 small).
    """
    check_int("d_model", d_model)
    check_int("n_heads", n_heads)
    check_int("n_layers", n_layers)
    limits, names = (n_heads, d_model, d_model), ("n_heads", "d_model", "d_model")
    ranks = check_ranks("ranks", ranks, limits, names)
    post_ranks = ranks if post_ranks is None else check_ranks("post_ranks", post_ranks, limits, names)
    if not isinstance(shared_kv, bool):
        raise TypeError(f"shared_kv must be a bool, got shared_kv={shared_kv!r}")
    if shared_kv and ranks[2] != post_ranks[2]:
        raise ValueError(f"shared_kv=True needs equal key and value ranks, got ranks[2]={ranks[2]} and "
                         f"post_ranks[2]={post_ranks[2]}")
    sizes = dict(ranks=ranks, post_ranks=post_ranks, shared_kv=shared_kv)
    return RankBudget(
        ranks=ranks, post_ranks=post_ranks, shared_kv=shared_kv, n_layers=n_layers,
        params=n_layers * counting.attention_params("tucker", d_model, n_heads, **sizes),
        kv_cache_per_token=n_layers * counting.kv_cache_per_token("tucker", d_model, n_heads, **sizes),
        mha_params=n_layers * counting.attention_params("mha", d_model, n_heads),
        mha_kv_cache_per_token=n_layers * counting.kv_cache_per_token("mha", d_model, n_heads),
    )
