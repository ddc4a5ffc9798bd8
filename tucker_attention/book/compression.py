"""Chapters 9 and 10 ("Compressing a trained ViT", "Compressing a language model"): the transfer protocol's
records, its bar, and its figures.

The numbers come from ``train.compress`` (records of ``python -m tucker_attention sweep-compress``, or rows of
``scan_conversions`` computed in the chapter); this module only groups, compares and draws them. Drawing
functions return a ``Figure`` and never call ``plt.show()``; matplotlib is imported inside them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..train.compress import protocol_rows
from ..train.sweep import load_records
from .experiments import _MARKERS, Sweep, _ordered, pareto_front
from .experiments import _styles as _family_styles
from .figures import METHOD_COLORS

__all__ = ["Protocol", "TransferBar", "agreement", "head_rank_figure", "hf_images", "hf_vit", "initial_layers",
           "hf_lm_loss", "load_protocol", "lr_figure", "lr_study", "protocol_figure", "scan_figure", "small_llama",
           "train_hf_lm", "transfer_bar"]



@dataclass(frozen=True)
class Protocol(Sweep):
    """A recorded protocol: its records and one row per configuration (``train.compress.protocol_rows``:
    fine-tuned means ± sample std over seeds, metrics right after conversion, conversion errors); ``row(label)``
    and ``runs(label)`` as for a :class:`~tucker_attention.book.experiments.Sweep`."""


def load_protocol(directory: str | os.PathLike) -> Protocol:
    """The records of ``directory/records.jsonl`` grouped by configuration."""
    directory = Path(directory)
    path = directory / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no protocol records at {str(path)!r}; run python -m tucker_attention "
                                "sweep-compress ... --out " + str(directory))
    records = load_records(path)
    return Protocol(directory, records, protocol_rows(records))


def _styles(rows: Sequence[Mapping]) -> dict[str, tuple[str, str]]:
    """label -> (family colour, marker), markers assigned in family order, larger configurations first."""
    return _family_styles(_ordered(rows))


def _better(metric: str) -> int:
    """+1 if larger is better (accuracy), -1 if smaller is (loss)."""
    return 1 if "acc" in metric else -1


def _front(rows: Sequence[Mapping], x: str, y: str) -> list[Mapping]:
    """Pareto front (fewer ``x``, better ``y``)."""
    sign = _better(y)
    flipped = [{**r, "_y": -sign * r[y]} for r in rows if r.get(y) is not None]
    return pareto_front(flipped, x=x, y="_y")


def _axis(ax, rows: Sequence[Mapping], *, y: str, std: str | None, x: str, title: str, ylabel: str,
          styles: Mapping[str, tuple[str, str]]) -> None:
    for r in rows:
        if r.get(y) is None:
            continue
        color, marker = styles[r["label"]]
        err = (r.get(std) or 0.0) if std else 0.0
        n = f" (n={r['n']})" if "n" in r and std else ""
        ax.errorbar(r[x], r[y], yerr=err, fmt=marker, color=color, ms=7, capsize=3, lw=1.2,
                    label=f"{r['label']}{n}")
    pf = _front(rows, x, y)
    if len(pf) > 1:
        ax.step([r[x] for r in pf], [r[y] for r in pf], where="post", color="0.35", ls="--", lw=1.2, zorder=0,
                label="Pareto front")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    values = [r[y] for r in rows if r.get(y) is not None]
    if "loss" in y and values and min(values) > 0 and max(values) / min(values) > 4:
        ax.set_yscale("log")                                             # losses spanning decades
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("attention parameters (all layers)" if x == "attention_params"
                  else "KV cache per token, all layers (elements)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)


def protocol_figure(rows: Sequence[Mapping], *, metric: str = "val_acc", x: str = "attention_params",
                    title: str = "", ylim: tuple[float, float] | None = None):
    """Two panels sharing the metric axis: right after conversion (left) and after fine-tuning, mean ± std over
    seeds (right), against ``x``; Pareto fronts dashed; one legend below. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    styles = _styles(rows)
    name = "validation accuracy" if "acc" in metric else "validation loss"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4.8), sharey=True, layout="constrained")
    steps = max((r.get("finetune_steps") or 0) for r in rows)
    _axis(a1, rows, y=f"converted_{metric}", std=None, x=x, title="right after conversion", ylabel=name,
          styles=styles)
    _axis(a2, rows, y=metric, std=f"{metric}_std", x=x, title=f"after {steps} fine-tuning steps (mean ± std)",
          ylabel="", styles=styles)
    if ylim is not None:
        a1.set_ylim(*ylim)
    handles, labels = a2.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def scan_figure(rows: Sequence[Mapping], *, metric: str = "val_acc", x: str = "attention_params",
                reference: float | None = None, title: str = "", ylim: tuple[float, float] | None = None):
    """One panel: ``metric`` of models converted in the chapter (``scan_conversions`` rows) against ``x``, with
    the Pareto front and, if given, the source model's value as a horizontal line. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    _axis(ax, rows, y=metric, std=None, x=x, title=title, styles=_styles(rows),
          ylabel="validation accuracy" if "acc" in metric else "validation loss")
    if reference is not None:
        ax.axhline(reference, color=METHOD_COLORS["mha"], lw=1, ls=":", label="source MHA")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8.5, loc="best", ncol=2)
    return fig


@dataclass(frozen=True)
class TransferBar:
    """The chapter's bar: some Tucker configuration with at most ``fraction`` of the attention parameters of the
    best GQA/MLA configuration (by mean ``metric`` after fine-tuning; of equal means, the one with fewer
    parameters) reaches that configuration's mean within its error bar (one sample standard deviation over
    seeds)."""

    holds: bool
    metric: str
    fraction: float
    best: Mapping                    # the best GQA/MQA/MLA row
    candidates: list[Mapping]        # Tucker rows with params <= fraction * best's
    winners: list[Mapping]           # candidates within the best's error bar
    min_seeds: int
    seeds_ok: bool
    smallest_match: Mapping | None = None   # the Tucker with fewest parameters within the error bar, any size

    def sentence(self) -> str:
        b, m = self.best, self.metric
        head = (f"Bar (a Tucker with at most {self.fraction:.0%} of the attention parameters of the best GQA/MLA "
                f"reaches its {m} within one standard deviation): ")
        best = (f"the best GQA/MLA is {b['label']} with {b['attention_params']:,} parameters and {m} "
                f"{b[m]:.4f} ± {b[m + '_std']:.4f} (n={b['n']})")
        if self.candidates:
            top = max(self.winners or self.candidates, key=lambda r: _better(m) * r[m])
            text = (f"{best}; {top['label']} has {top['attention_params']:,} "
                    f"({top['attention_params'] / b['attention_params']:.0%}) and {top[m]:.4f} ± "
                    f"{top[m + '_std']:.4f} (n={top['n']}).")
        else:
            text = f"no recorded Tucker has at most {self.fraction:.0%} of them; {best}."
        s = self.smallest_match
        if s is not None:
            text += (f" The smallest Tucker within the error bar is {s['label']} with {s['attention_params']:,} "
                     f"parameters ({s['attention_params'] / b['attention_params']:.0%}), {m} {s[m]:.4f} ± "
                     f"{s[m + '_std']:.4f}.")
        else:
            text += " No recorded Tucker reaches it within the error bar."
        if not self.seeds_ok:
            return head + f"NOT DECIDED (fewer than {self.min_seeds} seeds). " + text
        return head + ("MET: " if self.holds else "NOT MET: ") + text


def transfer_bar(rows: Sequence[Mapping], *, metric: str = "val_acc", fraction: float = 0.25,
                 min_seeds: int = 5) -> TransferBar:
    """Evaluate the bar on ``protocol_rows``. Raises ``ValueError`` without GQA/MQA/MLA rows."""
    sign = _better(metric)
    opponents = [r for r in rows if r["method"] in ("gqa", "mqa", "mla") and r.get(metric) is not None]
    if not opponents:
        raise ValueError("the rows hold no GQA, MQA or MLA configuration")
    best = max(opponents, key=lambda r: (sign * r[metric], -r["attention_params"]))   # ties: the smaller one
    candidates = [r for r in rows if r["method"] == "tucker" and r.get(metric) is not None
                  and r["attention_params"] <= fraction * best["attention_params"]]
    bound = best[metric] - sign * (best.get(metric + "_std") or 0.0)
    winners = [r for r in candidates if sign * (r[metric] - bound) >= 0]
    seeds_ok = all(r["n"] >= min_seeds for r in [best, *candidates])
    matches = [r for r in rows if r["method"] == "tucker" and r.get(metric) is not None
               and sign * (r[metric] - bound) >= 0]
    smallest = min(matches, key=lambda r: r["attention_params"]) if matches else None
    return TransferBar(bool(winners) and seeds_ok, metric, fraction, best, candidates, winners, min_seeds, seeds_ok,
                       smallest)


def lr_study(protocols: Mapping[float, Protocol], *, metric: str = "val_acc") -> dict[str, dict[float, float]]:
    """``label -> {lr: metric}`` of the seed-0 run of each configuration, one protocol per learning rate."""
    out: dict[str, dict[float, float]] = {}
    for lr, p in sorted(protocols.items()):
        for r in p.records:
            if r["seed"] == 0 and r.get(metric) is not None:
                out.setdefault(r["label"], {})[lr] = r[metric]
    return out


def initial_layers(model_config, seed: int, *, dtype=None) -> list:
    """The attention layers a ``train`` run with ``seed`` started from (``torch.manual_seed(seed)`` then
    ``build_model``), for a GPT or ViT config; the caller's random state is left as it was."""
    import torch

    from ..models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config)
    layers = [block.attn.eval() for block in model.blocks]
    return [layer.to(dtype) for layer in layers] if dtype is not None else layers


def head_rank_figure(rows: Sequence[Mapping], energies: Sequence[Sequence[float]], *, metric: str = "val_acc",
                     reference: float | None = None, title: str = ""):
    """Left: ``metric`` of models converted with head rank r1 (rows in order of ``r1`` = ``sizes["ranks"][0]``),
    with the source's value dotted. Right: per layer, the share of the head-mode energy of 𝒲 that the first r1
    singular values hold (``energies[layer][k]`` for r1 = k + 1). Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
    r1 = [r["sizes"]["ranks"][0] for r in rows]
    a1.plot(r1, [r[metric] for r in rows], "o-", color=METHOD_COLORS["tucker"], label="converted")
    if reference is not None:
        a1.axhline(reference, color=METHOD_COLORS["mha"], ls=":", label="source MHA")
    a1.set_xlabel("head rank $r_1 = \\tilde r_1$")
    a1.set_ylabel("validation accuracy" if "acc" in metric else "validation loss")
    a1.legend(fontsize=9)
    for i, e in enumerate(energies):
        a2.plot(range(1, len(e) + 1), e, "o-", ms=4, color=f"C{i}", label=f"layer {i}")
    a2.set_xlabel("head rank $r_1$")
    a2.set_ylabel("share of head-mode energy kept")
    a2.legend(fontsize=9, ncol=2)
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def lr_figure(study: Mapping[str, Mapping[float, float]], methods: Mapping[str, str], *,
              metric: str = "val_acc", title: str = ""):
    """``metric`` after fine-tuning against the peak learning rate (log x), one line per configuration
    (``lr_study``), coloured by method family. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    styles: dict[str, int] = {}
    for label, points in study.items():
        k = styles.setdefault(methods[label], 0)
        styles[methods[label]] = k + 1
        ax.plot(list(points), list(points.values()), marker=_MARKERS[k % len(_MARKERS)], ls="-",
                color=METHOD_COLORS.get(methods[label], "C7"), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate of fine-tuning")
    ax.set_ylabel("validation accuracy" if "acc" in metric else "validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8.5, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def hf_vit(*, pretrained: bool = False, seed: int = 0):
    """A 🤗 ``ViTForImageClassification`` in eval mode: ``google/vit-base-patch16-224`` (ImageNet-1k, downloads
    ~350 MB) if ``pretrained``, else a randomly initialized small one (2 layers, d = 64, 4 heads, 32×32 images,
    8×8 patches) — the offline stand-in that runs the same code path."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    if pretrained:
        return ViTForImageClassification.from_pretrained("google/vit-base-patch16-224").eval()
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=10)
    return ViTForImageClassification(config).eval()


def hf_images(model, *, pretrained: bool = False, n: int = 64, seed: int = 0):
    """``n`` images (n, 3, S, S) for ``model``: CIFAR-10 test images through 🤗 ``datasets``, resized to the
    model's size and normalized as it expects (mean = std = 0.5), if ``pretrained``; else Gaussian noise."""
    import torch

    size = model.config.image_size
    if not pretrained:
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    import numpy as np
    import torch.nn.functional as F
    from datasets import load_dataset

    rows = load_dataset("uoft-cs/cifar10", split=f"test[:{n}]")
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)) for im in rows["img"]])
    x = x.permute(0, 3, 1, 2) / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def agreement(reference, model, images, *, batch_size: int = 16) -> dict[str, float]:
    """How closely ``model`` follows ``reference`` (two 🤗 image classifiers) on ``images``: the share of images
    with the same top-1 class and the relative error of the logits."""
    import torch

    same, diff, norm = 0, 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            a, b = reference(pixel_values=x).logits, model(pixel_values=x).logits
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            diff += float((a - b).square().sum())
            norm += float(a.square().sum())
    return {"top1_agreement": same / len(images), "logit_rel_error": (diff / norm) ** 0.5}


# ------------------------------------------------------------------------- 🤗 language models (chapter 10)
def small_llama(*, vocab_size: int = 256, seed: int = 0, **config):
    """A randomly initialized small 🤗 ``LlamaForCausalLM`` (default: 2 layers, d = 64, 4 query heads sharing
    2 key/value heads, RoPE base 10000, context 128) — Llama's GQA with head-dim RoPE at laptop size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sizes = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 128, "rope_theta": 10000.0,
             "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": True, **config}
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **sizes)).eval()


def hf_lm_loss(model, tokens, *, block_size: int, batch_size: int = 16, batches: int = 16, seed: int = 0) -> float:
    """Mean next-token cross-entropy (nats/token) of a 🤗 causal LM on ``batches`` fixed random windows of
    ``tokens`` (1-D token ids); ``exp`` of it is the perplexity."""
    import torch

    from ..data import get_batch

    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(batches):
            x, y = get_batch(tokens, batch_size=batch_size, block_size=block_size, generator=g, device=device)
            logits = model(input_ids=x, use_cache=False).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))
    model.train(was_training)
    return total / batches


def train_hf_lm(model, tokens, *, steps: int, lr: float, block_size: int, batch_size: int = 16, seed: int = 0,
                warmup_steps: int = 20) -> list[float]:
    """Train a 🤗 causal LM in place on random windows of ``tokens``: AdamW (weight decay 0.1 on 2-D weights),
    linear warmup then cosine to lr/10 (``train.lr_at``), gradient clipping at 1. Returns the train losses."""
    import torch

    from ..data import get_batch
    from ..train import TrainConfig, lr_at

    schedule = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    losses = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, schedule)
        x, y = get_batch(tokens, batch_size=batch_size, block_size=block_size, generator=g, device=device)
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
