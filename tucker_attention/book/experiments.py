"""The book's evidence chapters: recorded sweeps, their Pareto fronts and bars, and trained attention weights.

Chapter 7 ("Fewer parameters, same loss") and chapter 8 ("The ranks that training finds") read what a sweep
(``python -m tucker_attention sweep lm --preset book``) recorded under ``book/results/<sweep>/``:

- ``records.jsonl``: one record per run (``train.sweep`` documents the fields); ``load_sweep`` groups them by
  configuration with ``train.sweep.summarize`` (mean and sample standard deviation over seeds);
- ``runs/<run>/metrics.jsonl``: each run's curve (``load_curve``, ``mean_curve``);
- ``weights/<run>.pt``: a run's final attention layers (``train.checkpoint.export_attention_weights``;
  ``load_attention_weights`` rebuilds them, ``initial_attention_layers`` rebuilds the same run's layers at
  initialization from its seed).

The numbers the chapters state come from functions here that return them together with a bool
(``budget_bar``, ``dominance_bar``); their ``sentence()`` is what a chapter prints. Drawing functions take a
matplotlib ``Axes`` or return a ``Figure`` and never call ``plt.show()``; matplotlib, ipywidgets and
transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import analysis
from .figures import METHOD_COLORS

__all__ = [
    "BudgetBar", "DominanceBar", "Sweep", "budget_bar", "compare_sweeps", "curve_figure", "dominance_bar",
    "energy_suggestion", "gpt2_model", "head_mode_energy", "head_mode_figure", "initial_attention_layers",
    "layer_spectra",
    "load_attention_weights", "load_curve", "load_sweep", "mean_curve", "nearest_rows", "pareto_front",
    "plot_lr_study", "plot_sweep", "rank_position", "rank_position_widget", "spectra_figure",
    "sweep_figure",
]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_FAMILY_ORDER = ("mha", "gqa", "mqa", "mla", "tucker")


# ------------------------------------------------------------------------------------------ a sweep
@dataclass(frozen=True)
class Sweep:
    """A recorded sweep: its records, one summary row per configuration, and where its curves live.

    ``rows`` are ``train.sweep.summarize(records)`` (keys ``label, method, sizes, n, attention_params,
    total_params, kv_cache_per_token, val_loss, val_loss_std, throughput, throughput_std, unit, ...``).
    """

    directory: Path
    records: list[dict]
    rows: list[dict]

    def row(self, label: str) -> dict:
        """The summary row of configuration ``label`` (e.g. ``"MHA"``, ``"Tucker [4,32,32]"``)."""
        for r in self.rows:
            if r["label"] == label:
                return r
        raise KeyError(f"no configuration labelled {label!r} in {self.directory}; labels: "
                       f"{[r['label'] for r in self.rows]}")

    def runs(self, label: str) -> list[dict]:
        """The records of configuration ``label``, by seed."""
        return sorted((r for r in self.records if r["label"] == label), key=lambda r: r.get("seed", 0))

    @property
    def model_config(self) -> dict:
        """The model configuration shared by the runs (of the first record), without the attention."""
        cfg = dict(self.records[0].get("model_config") or {})
        cfg.pop("attention", None)
        return cfg


def load_sweep(directory: str | os.PathLike) -> Sweep:
    """Read ``directory/records.jsonl`` into a :class:`Sweep`.

    A run recorded twice (a rerun) counts once, with its last record. Raises ``FileNotFoundError`` naming
    the file if it does not exist and ``ValueError`` if it holds no records.
    """
    from ..train.sweep import RECORDS_NAME, load_records, summarize

    directory = Path(directory)
    path = directory / RECORDS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no sweep records at {path} (run `python -m tucker_attention sweep ...` "
                                f"with --out {directory})")
    by_run: dict[Any, dict] = {}
    for i, r in enumerate(load_records(path)):
        by_run[r.get("run", i)] = r
    records = list(by_run.values())
    if not records:
        raise ValueError(f"{path} holds no records")
    return Sweep(directory=directory, records=records, rows=summarize(records))


def _run_dir(directory: Path, record: Mapping) -> Path:
    run = str(record.get("run", ""))
    candidates = [directory / "runs" / run, directory / run] if run else []
    if record.get("run_dir"):
        candidates.append(Path(record["run_dir"]))
    for c in candidates:
        if (c / "metrics.jsonl").is_file():
            return c
    raise FileNotFoundError(f"no metrics.jsonl for run {run!r}: looked in {[str(c) for c in candidates]}")


def load_curve(sweep: Sweep, record: Mapping) -> list[dict]:
    """The metrics lines (``{"step", "train_loss" | "val_loss", ...}``) of one run of ``sweep``.

    Looked for in ``<sweep>/runs/<run>/``, then ``<sweep>/<run>/``, then the record's ``run_dir``.
    """
    from ..train.sweep import load_records

    return load_records(_run_dir(sweep.directory, record) / "metrics.jsonl")


def mean_curve(sweep: Sweep, label: str, key: str = "val_loss") -> tuple[list[int], list[float], list[float]]:
    """``(steps, mean, std)`` of ``key`` over the seeds of configuration ``label``, at the steps that every
    seed logged (sample std; 0 for one seed). Raises ``ValueError`` if no step is shared."""
    per_seed = []
    for r in sweep.runs(label):
        per_seed.append({int(m["step"]): float(m[key]) for m in load_curve(sweep, r) if m.get(key) is not None})
    if not per_seed:
        raise ValueError(f"no runs labelled {label!r}")
    steps = sorted(set.intersection(*(set(s) for s in per_seed)))
    if not steps:
        raise ValueError(f"the runs of {label!r} share no step with a {key!r} value")
    means, stds = [], []
    for s in steps:
        vals = [c[s] for c in per_seed]
        m = sum(vals) / len(vals)
        means.append(m)
        stds.append(math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)
    return steps, means, stds


# ------------------------------------------------------------------------------ front and the bars
def pareto_front(rows: Sequence[Mapping], x: str = "attention_params", y: str = "val_loss") -> list[Mapping]:
    """The rows no other row beats: none has ``x <=`` and ``y <=`` with one of them strictly smaller.

    Sorted by ``x`` (then ``y``); along the front ``y`` strictly decreases as ``x`` grows. Rows whose ``x``
    or ``y`` is None are ignored.
    """
    pts = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    front = [r for r in pts
             if not any(o[x] <= r[x] and o[y] <= r[y] and (o[x] < r[x] or o[y] < r[y]) for o in pts)]
    return sorted(front, key=lambda r: (r[x], r[y]))


def _seeds_note(rows: Sequence[Mapping], min_seeds: int) -> tuple[bool, str]:
    few = [f"{r['label']} ({r['n']})" for r in rows if r["n"] < min_seeds]
    if few:
        return False, f"fewer than {min_seeds} seeds for " + ", ".join(few)
    return True, ""


@dataclass(frozen=True)
class BudgetBar:
    """Bar 1: the best Tucker within ``fraction`` of MHA's attention parameters reaches MHA's mean validation
    loss within ``tolerance`` (relative): ``(loss_T − loss_MHA) / loss_MHA <= tolerance``."""

    holds: bool
    fraction: float
    tolerance: float
    min_seeds: int
    mha: Mapping
    best: Mapping | None          # the lowest-loss Tucker row with params <= fraction · MHA's (None: none)
    gap: float | None             # its relative loss gap to MHA
    seeds_ok: bool
    note: str

    def sentence(self) -> str:
        """The bar and whether it holds, in one paragraph, from the numbers above."""
        m = self.mha
        head = (f"Bar 1 (the best Tucker with at most {self.fraction:.0%} of MHA's attention parameters "
                f"is within {self.tolerance:.0%} of MHA's validation loss): ")
        if self.best is None:
            return head + (f"NOT MET: no recorded Tucker has at most {self.fraction:.0%} of MHA's "
                           f"{m['attention_params']:,} attention parameters.")
        b = self.best
        numbers = (f"{b['label']} has {b['attention_params']:,} parameters "
                   f"({b['attention_params'] / m['attention_params']:.1%} of MHA) and validation loss "
                   f"{b['val_loss']:.4f} ± {b['val_loss_std']:.4f} against MHA's {m['val_loss']:.4f} ± "
                   f"{m['val_loss_std']:.4f} (means ± std over {b['n']} and {m['n']} seeds): "
                   f"{self.gap:+.2%}.")
        verdict = "MET. " if self.holds else "NOT MET. "
        if not self.seeds_ok:
            verdict = f"NOT DECIDED ({self.note}). "
        return head + verdict + numbers


def budget_bar(rows: Sequence[Mapping], *, fraction: float = 0.25, tolerance: float = 0.02,
               min_seeds: int = 3) -> BudgetBar:
    """Evaluate bar 1 on summary rows (``Sweep.rows``). Raises ``ValueError`` without an MHA row."""
    mha = [r for r in rows if r["method"] == "mha"]
    if len(mha) != 1:
        raise ValueError(f"the rows must hold exactly one MHA configuration, got {len(mha)}")
    mha = mha[0]
    within = [r for r in rows if r["method"] == "tucker" and r["val_loss"] is not None
              and r["attention_params"] <= fraction * mha["attention_params"]]
    if not within:
        return BudgetBar(False, fraction, tolerance, min_seeds, mha, None, None, True, "")
    best = min(within, key=lambda r: r["val_loss"])
    gap = (best["val_loss"] - mha["val_loss"]) / mha["val_loss"]
    seeds_ok, note = _seeds_note([mha, best], min_seeds)
    return BudgetBar(seeds_ok and gap <= tolerance, fraction, tolerance, min_seeds, mha, best, gap, seeds_ok,
                     note)


@dataclass(frozen=True)
class DominanceBar:
    """Bar 2: a Tucker configuration with fewer attention parameters than every GQA and every MLA configuration
    of the sweep and a lower mean validation loss than all of them (``winners``).

    ``beats[label]``: the GQA/MLA labels that Tucker ``label`` beats in both (fewer parameters, lower loss) —
    the weaker, pairwise reading of the bar.
    """

    holds: bool
    opponents: list[Mapping]
    tuckers: list[Mapping]
    winners: list[Mapping]
    beats: dict[str, list[str]]
    min_seeds: int
    seeds_ok: bool
    note: str

    def sentence(self) -> str:
        head = ("Bar 2 (a Tucker with fewer attention parameters than GQA and MLA and a lower validation loss "
                "than both): ")
        if not self.opponents or not self.tuckers:
            return head + "NOT DECIDED: the sweep needs GQA, MLA and Tucker configurations."
        opp = ", ".join(f"{o['label']} ({o['attention_params']:,}, {o['val_loss']:.4f})" for o in self.opponents)
        if self.winners:
            w = min(self.winners, key=lambda r: r["val_loss"])
            text = (f"{len(self.winners)} Tucker configuration(s) beat every GQA and MLA configuration "
                    f"[{opp}] in both; e.g. {w['label']} with {w['attention_params']:,} parameters and "
                    f"loss {w['val_loss']:.4f} ± {w['val_loss_std']:.4f}.")
        else:
            pairs = "; ".join(f"{t} beats {', '.join(v)}" for t, v in self.beats.items() if v) or "none"
            text = (f"no Tucker beats every GQA and MLA configuration [{opp}] in both parameters and loss; "
                    f"pairwise: {pairs}.")
        verdict = "MET. " if self.holds else "NOT MET. "
        if not self.seeds_ok:
            verdict = f"NOT DECIDED ({self.note}). "
        return head + verdict + text


def dominance_bar(rows: Sequence[Mapping], *, min_seeds: int = 3) -> DominanceBar:
    """Evaluate bar 2 on summary rows: opponents are every GQA and MLA row (MQA is GQA with one group)."""
    opponents = [r for r in rows if r["method"] in ("gqa", "mla") and r["val_loss"] is not None]
    tuckers = [r for r in rows if r["method"] == "tucker" and r["val_loss"] is not None]
    beats = {t["label"]: [o["label"] for o in opponents if t["attention_params"] < o["attention_params"]
                          and t["val_loss"] < o["val_loss"]] for t in tuckers}
    has_both = {"gqa", "mla"} <= {o["method"] for o in opponents}
    winners = [t for t in tuckers if has_both and len(beats[t["label"]]) == len(opponents)]
    seeds_ok, note = _seeds_note([*opponents, *winners] if winners else [*opponents, *tuckers], min_seeds)
    return DominanceBar(bool(winners) and seeds_ok, opponents, tuckers, winners, beats, min_seeds, seeds_ok, note)


def compare_sweeps(before: Sweep, after: Sweep) -> list[dict]:
    """Configurations in both sweeps: ``{"label", "method", "attention_params", "before", "before_std",
    "after", "after_std", "change"}`` (mean validation losses; change = after − before), in ``after``'s order."""
    old = {r["label"]: r for r in before.rows}
    out = []
    for r in after.rows:
        if r["label"] in old and r["val_loss"] is not None and old[r["label"]]["val_loss"] is not None:
            b = old[r["label"]]
            out.append({"label": r["label"], "method": r["method"], "attention_params": r["attention_params"],
                        "before": b["val_loss"], "before_std": b["val_loss_std"], "after": r["val_loss"],
                        "after_std": r["val_loss_std"], "change": r["val_loss"] - b["val_loss"]})
    return out


# ------------------------------------------------------------------------------------------ figures
def _styles(rows: Sequence[Mapping]) -> dict[str, tuple[str, str]]:
    """label -> (colour of its family, marker unique within the family)."""
    seen: dict[str, int] = {}
    out = {}
    for r in rows:
        k = seen.get(r["method"], 0)
        seen[r["method"]] = k + 1
        out[r["label"]] = (METHOD_COLORS.get(r["method"], "C7"), _MARKERS[k % len(_MARKERS)])
    return out


def _ordered(rows: Sequence[Mapping]) -> list[Mapping]:
    rank = {m: i for i, m in enumerate(_FAMILY_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r["method"], 99), -r["attention_params"]))


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 3, 5 × 10^k written as plain numbers (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_sweep(ax, rows: Sequence[Mapping], *, x: str = "attention_params", bytes_per_elem: int | None = None,
               front: bool = True, label_points: bool = False) -> list[Mapping]:
    """Mean validation loss ± std over seeds against ``x`` (log axis), one marker per configuration.

    ``x``: ``"attention_params"`` or ``"kv_cache_per_token"`` (times ``bytes_per_elem`` if given: bytes per
    token, all layers). Colours are the method families' (``METHOD_COLORS``). ``front``: draw the Pareto
    front (``pareto_front``) as a dashed step line. Returns the front's rows.
    """
    rows = [r for r in _ordered(rows) if r.get("val_loss") is not None]
    scale = bytes_per_elem or 1
    styles = _styles(rows)
    for r in rows:
        color, marker = styles[r["label"]]
        ax.errorbar(r[x] * scale, r["val_loss"], yerr=r["val_loss_std"] or 0.0, fmt=marker, color=color,
                    ms=7 if marker != "*" else 10, capsize=3, lw=1.2, label=f"{r['label']} (n={r['n']})")
        if label_points:
            ax.annotate(r["label"], (r[x] * scale, r["val_loss"]), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, color=color)
    pf = pareto_front(rows, x=x) if front else []
    if len(pf) > 1:
        xs = [r[x] * scale for r in pf]
        ax.step(xs, [r["val_loss"] for r in pf], where="post", color="0.35", ls="--", lw=1.2, zorder=0,
                label="Pareto front")
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    if x == "attention_params":
        ax.set_xlabel("attention parameters (all layers)")
    else:
        unit = f"bytes, {8 * bytes_per_elem}-bit" if bytes_per_elem else "elements"
        ax.set_xlabel(f"KV cache per token, all layers ({unit})")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.grid(True, which="both", alpha=0.25)
    return pf


def sweep_figure(rows: Sequence[Mapping], *, title: str = "", bytes_per_elem: int = 2):
    """Two panels sharing the loss axis: loss against attention parameters and against KV-cache bytes per
    token; one legend below. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4.6), sharey=True, layout="constrained")
    plot_sweep(ax1, rows)
    plot_sweep(ax2, rows, x="kv_cache_per_token", bytes_per_elem=bytes_per_elem)
    ax2.set_ylabel("")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def curve_figure(sweep: Sweep, labels: Sequence[str], *, key: str = "val_loss", title: str = "",
                 from_step: int = 0):
    """Mean ``key`` curves ± std (shaded) over seeds for configurations ``labels``, from step ``from_step`` on
    (e.g. 1: without the initial evaluation, whose loss would squash the rest). Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    styles = _styles(sweep.rows)
    for label in labels:
        steps, mean, std = mean_curve(sweep, label, key)
        kept = [i for i, s in enumerate(steps) if s >= from_step]
        steps, mean, std = ([seq[i] for i in kept] for seq in (steps, mean, std))
        color, marker = styles[label]
        ax.plot(steps, mean, marker=marker, ms=5, color=color, lw=1.5, label=label)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key.replace("_", " ") + " (nats/byte)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_lr_study(ax, entries: Sequence[Mapping] | Mapping) -> dict[str, dict[float, float]]:
    """Mean validation loss against learning rate (log x), one line per label, from entries
    ``{"label", "method", "lr", "val_loss"[, "seed"]}`` (a list, or a recorded study ``{"entries": [...]}``).
    Returns ``{label: {lr: mean loss}}``."""
    if isinstance(entries, Mapping):
        if "entries" not in entries:
            raise ValueError(f"a learning-rate study must be a list of entries or a dict with 'entries', got keys "
                             f"{sorted(entries)}")
        entries = entries["entries"]
    groups: dict[str, dict[float, list[float]]] = {}
    method: dict[str, str] = {}
    for e in entries:
        if e.get("val_loss") is None:
            continue
        groups.setdefault(e["label"], {}).setdefault(float(e["lr"]), []).append(float(e["val_loss"]))
        method[e["label"]] = e.get("method", "")
    means = {lab: {lr: sum(v) / len(v) for lr, v in sorted(d.items())} for lab, d in groups.items()}
    for lab, d in means.items():
        ax.plot(list(d), list(d.values()), "o-", color=METHOD_COLORS.get(method[lab], "C7"), label=lab)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.grid(True, which="both", alpha=0.3)
    return means


# ------------------------------------------------------------------------ where would a rank choice sit
def rank_position(ranks: Sequence[int], post_ranks: Sequence[int] | None = None, *, model_config: Mapping,
                  ) -> analysis.RankBudget:
    """Attention parameters and KV cache of Tucker ``ranks`` in the sweep's model (``analysis.rank_budget``
    with the model's ``d_model``, ``n_heads`` and ``n_layer``)."""
    for k in ("d_model", "n_heads", "n_layer"):
        if k not in model_config:
            raise ValueError(f"model_config must give {k!r}, got keys {sorted(model_config)}")
    return analysis.rank_budget(int(model_config["d_model"]), int(model_config["n_heads"]), ranks, post_ranks,
                                n_layers=int(model_config["n_layer"]))


def nearest_rows(rows: Sequence[Mapping], params: int, k: int = 3) -> list[Mapping]:
    """The ``k`` rows whose attention parameters are nearest to ``params`` on a log scale."""
    if params <= 0:
        raise ValueError(f"params must be > 0, got params={params}")
    return sorted(rows, key=lambda r: abs(math.log(r["attention_params"] / params)))[:k]


def rank_position_widget(sweep: Sweep, *, ranks: Sequence[int] = (4, 32, 32), k: int = 3):
    """Sliders for Tucker ranks (r1, r2, r3; post ranks equal) → the sweep's loss-vs-parameters panel with a
    vertical line where that Tucker would sit, and a table of the ``k`` nearest recorded configurations.

    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to sliders, ``box.last`` holds the last
    ``{"budget": analysis.RankBudget, "nearest": [rows]}`` (``budget`` None after invalid ranks).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .records import print_table
    from .widgets import _widget_box

    cfg = sweep.model_config
    d, h = int(cfg["d_model"]), int(cfg["n_heads"])
    style = {"description_width": "80px"}
    controls = {
        "r1": widgets.IntSlider(value=ranks[0], min=1, max=h, description="r1 (head)", style=style),
        "r2": widgets.IntSlider(value=ranks[1], min=1, max=d, description="r2 (query)", style=style),
        "r3": widgets.IntSlider(value=ranks[2], min=1, max=d, description="r3 (key)", style=style),
    }
    last: dict = {}

    def draw(r1, r2, r3):
        last.clear()
        try:
            budget = rank_position((r1, r2, r3), model_config=cfg)
        except (ValueError, TypeError) as err:
            last.update(budget=None, nearest=[])
            print(f"these ranks define no Tucker layer: {err}")
            return
        near = nearest_rows(sweep.rows, budget.params, k)
        last.update(budget=budget, nearest=near)
        fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
        plot_sweep(ax, sweep.rows)
        ax.axvline(budget.params, color=METHOD_COLORS["tucker"], lw=2, alpha=0.6)
        ax.set_title(f"Tucker [{r1},{r2},{r3}]: {budget.params:,} attention parameters "
                     f"({budget.param_fraction:.1%} of MHA), {budget.kv_cache_per_token} cached / token",
                     fontsize=10)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        plt.show()
        print_table([[r["label"], r["attention_params"], r["attention_params"] / budget.params, r["val_loss"],
                      r["val_loss_std"], r["n"]] for r in near],
                    ["nearest recorded", "params", "params / this", "val loss", "std", "seeds"], floatfmt=".3f")

    box = _widget_box(controls, draw, columns=3)
    box.last = last
    return box


# --------------------------------------------------------------------------- trained attention weights
def _gpt_config(model_config: Mapping):
    from ..models import GPTConfig

    return GPTConfig.from_dict(dict(model_config))


def load_attention_weights(path: str | os.PathLike, *, dtype: torch.dtype = torch.float64) -> tuple[Any, list]:
    """``(GPTConfig, [attention layer of block 0, 1, ...])`` from a file of
    ``train.checkpoint.export_attention_weights`` (``{"model_config": dict, "layers": [state_dict, ...]}``).

    The layers are those of ``models.build_model(config)`` (so any method the config names), with the saved
    weights loaded strictly, in ``dtype`` (float64 by default: spectra without float32 round-off).
    Raises ``ValueError`` if the number of saved layers differs from the config's ``n_layer``.
    """
    from ..models import build_model

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model_config" not in state or "layers" not in state:
        raise ValueError(f"{path} is not an attention-weights file: expected a dict with 'model_config' and "
                         f"'layers', got {type(state).__name__}"
                         + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
    config = _gpt_config(state["model_config"])
    if len(state["layers"]) != config.n_layer:
        raise ValueError(f"{path} holds {len(state['layers'])} layers but its config has n_layer={config.n_layer}")
    with torch.random.fork_rng(devices=[]):                  # building initializes: leave the caller's RNG alone
        model = build_model(config)
    layers = []
    for block, sd in zip(model.blocks, state["layers"]):
        block.attn.load_state_dict(sd, strict=True)
        layers.append(block.attn.to(dtype).eval())
    return config, layers


def initial_attention_layers(model_config: Mapping | Any, seed: int, *,
                             dtype: torch.dtype = torch.float64) -> list:
    """The attention layers a run with ``seed`` started from: ``torch.manual_seed(seed)`` then
    ``models.build_model(config)`` — what ``train`` does before its first step — in ``dtype`` (the caller's
    random state is left as it was)."""
    from ..models import GPTConfig, build_model

    config = model_config if isinstance(model_config, GPTConfig) else _gpt_config(model_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    return [block.attn.to(dtype).eval() for block in model.blocks]


def layer_spectra(layers: Sequence[torch.nn.Module]) -> list[analysis.LayerSpectra]:
    """``analysis.model_spectra`` of each layer: singular values of the three unfoldings of 𝒲 and 𝒲̃."""
    return [analysis.model_spectra(layer)[0] for layer in layers]


def head_mode_energy(spectra: Sequence[analysis.LayerSpectra], rank: int, *, post: bool = False) -> list[float]:
    """Per layer: the share ``Σ_{k<rank} σ_k² / Σ_k σ_k²`` of the head-mode (mode-1) unfolding's energy that
    its first ``rank`` singular values hold — the relative error² of the best head rank ``rank`` is 1 minus it."""
    out = []
    for s in spectra:
        e = (s.post if post else s.pre)[0].pow(2)
        out.append(float(e[:rank].sum() / e.sum()) if float(e.sum()) > 0 else 1.0)
    return out


def energy_suggestion(spectra: Sequence[analysis.LayerSpectra], energy: float = 0.9,
                      ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Tucker ranks that keep ``energy`` of every unfolding's squared singular values in every layer:
    per mode the largest ``analysis.energy_ranks`` over layers, for 𝒲 (ranks) and 𝒲̃ (post ranks)."""
    pre = [analysis.energy_ranks(s.pre, energy) for s in spectra]
    post = [analysis.energy_ranks(s.post, energy) for s in spectra]
    return tuple(max(r[m] for r in pre) for m in range(3)), tuple(max(r[m] for r in post) for m in range(3))


def spectra_figure(trained: Sequence[analysis.LayerSpectra], init: Sequence[analysis.LayerSpectra] | None = None,
                   *, title: str = "", ranks: Sequence[int] | None = None, label: str = "trained"):
    """A 2 × 3 grid: rows 𝒲 and 𝒲̃, columns the head, query/output and key/value modes. Each panel shows
    ``σ_k / σ_1`` per layer (one colour each, solid: trained) and, if given, at initialization (thin grey).
    ``ranks``: Tucker ranks (r1, r2, r3) drawn as vertical lines. ``label``: what the solid lines are
    ("layer i trained"). Returns the ``Figure``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from .figures import MODE_NAMES

    fig, axes = plt.subplots(2, 3, figsize=(9, 5.6), layout="constrained", sharey="row")
    n = len(trained)
    colors = [f"C{i}" for i in range(n)] if n <= 10 else [plt.cm.viridis(i / (n - 1)) for i in range(n)]
    for row, (attr, tensor) in enumerate((("pre", r"$\mathcal{W}$"), ("post", r"$\tilde{\mathcal{W}}$"))):
        names = MODE_NAMES["W" if attr == "pre" else "W_tilde"]
        for mode in range(3):
            ax = axes[row, mode]
            for i, s in enumerate(init or []):
                v = getattr(s, attr)[mode]
                ax.plot(range(1, len(v) + 1), (v / v[0]).numpy(), color="0.6", lw=0.9,
                        label="initialization" if i == 0 else None)
            for i, s in enumerate(trained):
                v = getattr(s, attr)[mode]
                ax.plot(range(1, len(v) + 1), (v / v[0]).numpy(), color=colors[i], lw=1.6,
                        label=f"layer {i} {label}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ranks is not None:
                ax.axvline(ranks[mode], color=METHOD_COLORS["tucker"], ls=":", lw=1.4)
            ax.set_yscale("log")
            ax.set_title(f"{tensor} mode {mode + 1} ({names[mode]})", fontsize=10)
            ax.grid(True, alpha=0.3)
            if row == 1:
                ax.set_xlabel("index k")
        axes[row, 0].set_ylabel(r"$\sigma_k / \sigma_1$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def head_mode_figure(models: Mapping[str, tuple[Sequence[analysis.LayerSpectra],
                                                 Sequence[analysis.LayerSpectra]]], *, floor: float = 1e-3):
    """Head-mode (mode-1) spectra ``σ_k / σ_1`` of 𝒲 (top row) and 𝒲̃ (bottom row), one column per model:
    ``models[label] = (trained spectra, spectra at initialization)``, one line per layer (trained: colour,
    initialization: thin grey). Values below ``floor`` (e.g. the round-off beyond a Tucker layer's r1) are
    drawn at ``floor`` with a downward triangle, so that one cliff does not squash the other panels.
    Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    def clipped(v):
        y = (v / v[0]).numpy()
        return y.clip(min=floor), y < floor

    fig, axes = plt.subplots(2, len(models), figsize=(9, 4.8), layout="constrained", sharey=True,
                             squeeze=False)
    for col, (label, (trained, init)) in enumerate(models.items()):
        for row, attr in enumerate(("pre", "post")):
            ax = axes[row, col]
            for i, s in enumerate(init):
                y, _ = clipped(getattr(s, attr)[0])
                ax.plot(range(1, len(y) + 1), y, color="0.6", lw=0.9, label="initialization" if i == 0 else None)
            below_any = False
            for i, s in enumerate(trained):
                y, below = clipped(getattr(s, attr)[0])
                k = list(range(1, len(y) + 1))
                ax.plot(k, y, "o-", ms=3, color=f"C{i % 10}", lw=1.4, label=f"layer {i} trained")
                if below.any():
                    below_any = True
                    ax.plot([k[j] for j in range(len(k)) if below[j]], y[below], "v", ms=7, color=f"C{i % 10}")
            if below_any:
                ax.text(0.97, 0.95, f"▼ below {floor:g}", transform=ax.transAxes, ha="right", va="top", fontsize=9)
            ax.set_yscale("log")
            ax.set_ylim(floor / 2, 1.5)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(label, fontsize=10)
            else:
                ax.set_xlabel("head index k")
        axes[0, 0].set_ylabel(r"$\mathcal{W}$: $\sigma_k / \sigma_1$")
        axes[1, 0].set_ylabel(r"$\tilde{\mathcal{W}}$: $\sigma_k / \sigma_1$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------ GPT-2 (HF)
def gpt2_model(*, pretrained: bool = False, seed: int = 0, **config: Any):
    """A 🤗 ``GPT2LMHeadModel``: the pretrained ``"gpt2"`` weights (downloads ~0.5 GB) if ``pretrained``,
    else a randomly initialized one (seed ``seed``) from ``GPT2Config(**config)`` — the offline stand-in
    that runs the same code path. ``analysis.model_spectra(model)`` converts its attention blocks with
    ``convert.from_peer``. Needs ``transformers`` (the ``hf`` extra)."""
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is installed where the tests run
        raise ImportError("gpt2_model needs transformers: pip install 'tucker-attention[hf]'") from err
    if pretrained:
        if config:
            raise ValueError(f"config arguments {sorted(config)} apply only with pretrained=False")
        return transformers.GPT2LMHeadModel.from_pretrained("gpt2").eval()
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
