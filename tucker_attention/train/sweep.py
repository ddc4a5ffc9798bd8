"""Sweeps: train several attention methods and ranks, one JSON record per run, and tabulate them.

The paper's experiments (paper §7) plot a validation metric against attention parameters, one point per
method and rank. A *preset* fixes the data, model and training; a sweep runs every attention variant of
the preset for each seed and appends one record per run to ``<out>/records.jsonl``:

    {"task", "preset", "method", "label", "sizes", "seed", "attention_params", "total_params",
     "kv_cache_per_token", "val_loss", "val_acc" (vit), "train_loss", "throughput", "unit", "wall_time_s",
     "steps", "device", "device_name", "world_size", "torch_version", "python_version", "git_commit",
     "git_dirty", "command", "model_config", "train_config", "run_dir", "time"}

Presets:
- ``ci``: 2 CPU cores, under a minute per run: a 2-layer, d=64 model on the stdlib byte corpus / an
  8×8 digits ViT.
- ``book`` (lm): the book's chapter 7 on 2 CPU cores: a 4-layer, d=128, 8-head GPT on the stdlib byte corpus,
  MHA, GQA (4, 2), MQA, MLA (32, 16) and four Tucker ranks, 3 seeds.
- ``gpu``: one GPU, minutes per run: a 6-layer, d=384 model on TinyShakespeare (or ``--data stdlib``
  offline) / a 6-layer ViT on CIFAR-10 (or ``--data digits``).
- ``paper``: the paper's sizes: GPT-2 small (12 layers, d=768, 12 heads, context 1024) on OpenWebText with
  GPT-2 BPE, and ViT-B/16 on an ImageNet folder (``--data-arg data_dir=...``) — trained from scratch here
  (the paper fine-tunes pretrained ViTs); days of GPU time, launch under torchrun.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.images import IMAGE_LOADERS
from ..data.text import TEXT_LOADERS
from ..models import AttentionConfig
from ..provenance import git_commit, provenance
from ..validation import check_int
from .config import TrainConfig
from .distributed import is_main
from .loop import train
from .tasks import load_data, model_config_for

__all__ = ["PRESETS", "RECORDS_NAME", "Preset", "format_records", "get_preset", "git_commit", "load_records",
           "make_record", "replay", "run_sweep", "runs_on_cpu", "select_variants", "summarize"]

RECORDS_NAME = "records.jsonl"


@dataclass(frozen=True)
class Preset:
    """A sweep: data, model and training shared by all runs, and the attention variants to compare.

    ``model`` holds model-config fields except the data-given ones (vocab_size; image_size, channels,
    num_classes) and ``attention``; ``train`` holds TrainConfig fields except task/seed/out_dir.
    ``threads``: torch CPU threads (None = leave PyTorch's default).
    """

    name: str
    task: str
    description: str
    data: str
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    variants: tuple[AttentionConfig, ...] = ()
    seeds: int = 1
    threads: int | None = None


def _variants(d_model: int, n_kv: int, mla_latent: int, tucker: Sequence[tuple[int, int, int]],
              gqa: Sequence[int] = ()) -> tuple[AttentionConfig, ...]:
    out = [AttentionConfig(method="mha")]
    out += [AttentionConfig(method="gqa", n_kv_heads=g) for g in (gqa or (n_kv,))]
    out += [AttentionConfig(method="mqa"), AttentionConfig(method="mla", q_latent=mla_latent, kv_latent=mla_latent)]
    out += [AttentionConfig(method="tucker", ranks=r) for r in tucker]
    return tuple(out)


_CI_MODEL = {"n_layer": 2, "d_model": 64, "n_heads": 4, "dropout": 0.0}
_CI_TRAIN = {"batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 30, "weight_decay": 0.1,
             "grad_clip": 1.0, "eval_every": 100, "log_every": 25}
_GPU_MODEL = {"n_layer": 6, "d_model": 384, "n_heads": 6, "dropout": 0.1}
_GPU_TRAIN = {"batch_size": 64, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "weight_decay": 0.1,
              "grad_clip": 1.0, "eval_every": 250, "eval_batches": 20, "log_every": 50}

# The book's chapter 7: the smallest GPT whose methods separate clearly on 2 CPU cores (~1-1.5 min a run on one
# thread). 8 heads so that the head rank can be compressed (r1 = 4 of 8) and GQA has two group counts; Tucker ranks
# span 16-50% of MHA's attention parameters, one with post ranks != pre ranks. One recipe for every method (the
# learning rate chosen by the study recorded in book/results/lm_book/lr_study.json).
_BOOK_LM_MODEL = {"n_layer": 4, "d_model": 128, "n_heads": 8, "block_size": 128, "dropout": 0.0}
_BOOK_LM_TRAIN = {"steps": 400, "batch_size": 16, "lr": 4e-3, "min_lr": 4e-4, "warmup_steps": 50,
                  "weight_decay": 0.1, "grad_clip": 1.0, "eval_every": 100, "eval_batches": 32, "log_every": 10}
_BOOK_LM_VARIANTS = (
    AttentionConfig(method="mha"),
    AttentionConfig(method="gqa", n_kv_heads=4),
    AttentionConfig(method="gqa", n_kv_heads=2),
    AttentionConfig(method="mqa"),
    AttentionConfig(method="mla", q_latent=32, kv_latent=32),
    AttentionConfig(method="mla", q_latent=16, kv_latent=16),
    AttentionConfig(method="tucker", ranks=(8, 32, 32)),
    AttentionConfig(method="tucker", ranks=(4, 32, 32)),
    AttentionConfig(method="tucker", ranks=(4, 32, 16), post_ranks=(4, 24, 16)),
    AttentionConfig(method="tucker", ranks=(4, 16, 16)),
)

PRESETS: dict[tuple[str, str], Preset] = {
    ("lm", "ci"): Preset(
        name="ci", task="lm", description="2 CPU cores, ~1 min per run: 2 layers, d=64, 4 heads, context 64, "
        "stdlib byte corpus", data="stdlib", data_kwargs={"max_bytes": 2_000_000},
        model={**_CI_MODEL, "block_size": 64},
        train={**_CI_TRAIN, "steps": 600, "eval_batches": 16},
        variants=_variants(64, 2, 16, [(2, 32, 16), (2, 16, 16), (2, 16, 8)]), threads=1),
    ("vit", "ci"): Preset(
        name="ci", task="vit", description="2 CPU cores, ~1 min per run: 2 layers, d=64, 4 heads, 8x8 digits, "
        "2x2 patches", data="digits", data_kwargs={"image_size": 8},
        model={**_CI_MODEL, "patch_size": 2, "pool": "mean"},
        train={**_CI_TRAIN, "steps": 1000, "eval_batches": 0, "warmup_steps": 50},
        variants=_variants(64, 2, 16, [(2, 32, 16), (2, 16, 16), (2, 16, 8)]), threads=1),
    ("lm", "book"): Preset(
        name="book", task="lm", description="the book's chapter 7 on 2 CPU cores, ~1-1.5 min per run: 4 layers, "
        "d=128, 8 heads, context 128, stdlib byte corpus", data="stdlib",
        model=_BOOK_LM_MODEL, train=_BOOK_LM_TRAIN, variants=_BOOK_LM_VARIANTS, seeds=3, threads=1),
    ("lm", "gpu"): Preset(
        name="gpu", task="lm", description="one GPU, minutes per run: 6 layers, d=384, 6 heads, context 256, "
        "TinyShakespeare (use --data stdlib offline)", data="tinyshakespeare",
        model={**_GPU_MODEL, "block_size": 256},
        train={**_GPU_TRAIN, "steps": 3000},
        variants=_variants(384, 2, 64, [(4, 64, 64), (4, 64, 32), (4, 32, 32)])),
    ("vit", "gpu"): Preset(
        name="gpu", task="vit", description="one GPU, minutes per run: 6 layers, d=384, 6 heads, 32x32 "
        "CIFAR-10, 4x4 patches (use --data digits offline)", data="cifar10", data_kwargs={"image_size": 32},
        model={**_GPU_MODEL, "patch_size": 4, "pool": "cls"},
        train={**_GPU_TRAIN, "batch_size": 256, "steps": 3000, "lr": 1e-3, "weight_decay": 0.05,
               "eval_batches": 0, "num_workers": 4},
        variants=_variants(384, 2, 64, [(4, 64, 64), (4, 64, 32), (4, 32, 32)])),
    ("lm", "paper"): Preset(
        name="paper", task="lm", description="the paper's GPT-2 small (12 layers, d=768, 12 heads, context "
        "1024) on OpenWebText with GPT-2 BPE, nanoGPT's recipe; days of GPU time (use torchrun)",
        data="openwebtext", data_kwargs={"max_tokens": None},  # the whole stream: add --data-arg cache_dir=DIR
        model={"n_layer": 12, "d_model": 768, "n_heads": 12, "block_size": 1024, "dropout": 0.0},
        train={"steps": 600_000, "batch_size": 12, "grad_accum": 40, "lr": 6e-4, "min_lr": 6e-5,
               "warmup_steps": 2000, "weight_decay": 0.1, "betas": (0.9, 0.95), "grad_clip": 1.0,
               "eval_every": 2000, "eval_batches": 200, "log_every": 10, "checkpoint_every": 2000},
        variants=_variants(768, 4, 128, [(8, 128, 128), (8, 128, 64), (8, 64, 64)], gqa=(4, 2))),
    ("vit", "paper"): Preset(
        name="paper", task="vit", description="ViT-B/16 sizes (12 layers, d=768, 12 heads, 224x224, 16x16 "
        "patches) on an ImageNet folder (--data-arg data_dir=PATH), from scratch", data="image_folder",
        data_kwargs={"image_size": 224, "augment": True},
        model={"n_layer": 12, "d_model": 768, "n_heads": 12, "patch_size": 16, "pool": "cls", "dropout": 0.0},
        train={"steps": 100_000, "batch_size": 128, "grad_accum": 4, "lr": 1e-3, "min_lr": 1e-5,
               "warmup_steps": 5000, "weight_decay": 0.05, "grad_clip": 1.0, "eval_every": 5000,
               "eval_batches": 0, "log_every": 50, "checkpoint_every": 5000, "num_workers": 8},
        variants=_variants(768, 4, 128, [(8, 128, 128), (8, 128, 64), (8, 64, 64)], gqa=(4,)),
        seeds=1),
}


def runs_on_cpu(device: str) -> bool:
    """Whether a TrainConfig ``device`` resolves to the CPU here."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def get_preset(task: str, name: str) -> Preset:
    """The preset ``name`` ("ci" | "gpu" | "paper") of ``task`` ("lm" | "vit")."""
    if (task, name) not in PRESETS:
        names = sorted({n for _, n in PRESETS})
        raise ValueError(f"no preset {name!r} for task {task!r}; presets: {names}, tasks: ['lm', 'vit']")
    return PRESETS[(task, name)]


# ----------------------------------------------------------------------------------------- provenance
def make_record(*, preset: str, attention: AttentionConfig, seed: int, result: Any, model: Any,
                train_config: TrainConfig, model_config: Any, command: Sequence[str] | None = None,
                run_dir: str | None = None) -> dict[str, Any]:
    """One sweep record (see the module docstring) for a finished ``train`` call."""
    prov = provenance(device=next(model.parameters()).device, seed=seed, command=command)
    world = torch.distributed.get_world_size() if (torch.distributed.is_available()
                                                   and torch.distributed.is_initialized()) else 1
    return {
        "task": train_config.task, "preset": preset, "method": attention.method, "label": attention.label(),
        "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in attention.sizes().items()},
        "seed": seed, "attention_params": model.attention_params(), "total_params": model.num_params(),
        "kv_cache_per_token": model.kv_cache_per_token(),
        "val_loss": result.final.get("val_loss"), "val_acc": result.final.get("val_acc"),
        "train_loss": result.final.get("train_loss"), "throughput": result.final.get("throughput"),
        "unit": result.final.get("unit"), "wall_time_s": result.final.get("wall_time_s"),
        "steps": train_config.steps, "data": train_config.data, "world_size": world, **prov,
        "model_config": model_config.to_dict(), "train_config": train_config.to_dict(), "run_dir": run_dir,
    }


# ---------------------------------------------------------------------------------------------- sweep
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _accepted(task: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The preset's data arguments that another loader also takes (e.g. ``image_size`` for digits)."""
    loaders = TEXT_LOADERS if task == "lm" else IMAGE_LOADERS
    if name not in loaders:
        return {}
    params = inspect.signature(loaders[name]).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def select_variants(variants: Sequence[Any], methods: Iterable[str] | None, *, where: str) -> list[Any]:
    """The ``variants`` (anything with a ``.method``) whose method is in ``methods`` (all if None); a method
    that no variant has is an error naming ``where`` they were looked for."""
    variants = list(variants)
    if methods is None:
        return variants
    wanted, have = set(methods), {v.method for v in variants}
    if wanted - have:
        raise ValueError(f"methods {sorted(wanted - have)} are not in {where} (it has {sorted(have)})")
    return [v for v in variants if v.method in wanted]


def run_sweep(task: str, preset: str | Preset, *, out_dir: str | os.PathLike[str], seeds: int | None = None,
              steps: int | None = None, data: str | None = None, data_kwargs: dict[str, Any] | None = None,
              device: str | None = None, dtype: str | None = None, methods: Iterable[str] | None = None,
              rerun: bool = False, progress: bool = True, command: Sequence[str] | None = None,
              overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train every attention variant of a preset for ``seeds`` seeds; append a record per run.

    Args:
        task: "lm" | "vit". preset: a preset name or a :class:`Preset`.
        out_dir: runs go to ``out_dir/<run>/`` (metrics.jsonl, ckpt.pt), records to ``out_dir/records.jsonl``.
        seeds: seeds 0 .. seeds-1 (default: the preset's). steps, data, data_kwargs, device, dtype: override
            the preset's. overrides: further TrainConfig fields.
        methods: keep only these methods (e.g. ``["mha", "tucker"]``).
        rerun: run again even if ``records.jsonl`` already holds a record of the same run, from scratch
            (default: skip recorded runs and resume a run's own checkpoint, so an interrupted sweep
            continues where it stopped).

    On the CPU, a preset with ``threads`` sets ``torch.set_num_threads`` (process-wide): tiny models run
    fastest on one thread, and two threads on two busy cores can be many times slower.

    Returns:
        the records of this sweep (skipped runs' existing records included), in run order.
    """
    p = preset if isinstance(preset, Preset) else get_preset(task, preset)
    if p.task != task:
        raise ValueError(f"preset {p.name!r} is for task {p.task!r}, not {task!r}")
    seeds = p.seeds if seeds is None else seeds
    seeds = check_int("seeds", seeds)
    variants = select_variants(p.variants, methods, where=f"preset {p.name!r}")
    if p.threads is not None and runs_on_cpu(device or p.train.get("device", "auto")):
        torch.set_num_threads(p.threads)                     # process-wide, like torch.set_num_threads
    out = Path(out_dir)
    records_path = out / RECORDS_NAME
    data_name = data or p.data
    dkw = dict(p.data_kwargs) if data_name == p.data else _accepted(task, data_name, p.data_kwargs)
    dkw.update(data_kwargs or {})
    dataset = load_data(task, data_name, **dkw)

    done = {}
    if records_path.is_file() and not rerun:
        done = {r.get("run"): r for r in load_records(records_path)}
    records = []
    for seed in range(seeds):
        for attention in variants:
            run = f"{task}-{p.name}-{_slug(attention.label())}-s{seed}"
            if run in done:
                records.append(done[run])
                continue
            tkw = {**p.train, **(overrides or {})}
            if steps is not None:
                tkw["steps"] = steps
            if device is not None:
                tkw["device"] = device
            if dtype is not None:
                tkw["dtype"] = dtype
            run_dir = out / run
            tcfg = TrainConfig(task=task, data=data_name, data_kwargs=dkw, seed=seed, out_dir=str(run_dir),
                               progress=progress, resume=not rerun, **tkw)   # an interrupted run continues
            mcfg = model_config_for(task, dataset, attention=attention, **p.model)
            result = train(mcfg, tcfg, data=dataset)
            record = make_record(preset=p.name, attention=attention, seed=seed, result=result, model=result.model,
                                 train_config=tcfg, model_config=mcfg, command=command, run_dir=str(run_dir))
            record["run"] = run
            if is_main():
                out.mkdir(parents=True, exist_ok=True)
                with records_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            records.append(record)
    return records


def replay(record: dict[str, Any], *, steps: int, out_dir: str | os.PathLike[str],
           data: Any = None) -> list[dict[str, Any]]:
    """Re-run the first ``steps`` optimizer steps of a recorded run and return its metrics lines.

    The run is rebuilt from the record alone (model config, train config, seed, data and its arguments, CPU
    threads), so comparing the returned lines with the recorded ``metrics.jsonl`` shows whether the record still
    matches the code. ``steps`` must not exceed the recorded warmup: the schedule up to there does not depend on
    the total number of steps (``lr_at``), so a shortened run sees exactly the recorded learning rates.
    """
    from ..models import GPTConfig, ViTConfig
    from .loop import METRICS_NAME

    tkw = dict(record["train_config"])
    # the recorded schedule is independent of the step count only during warmup (lr_at)
    check_int("steps", steps, high=max(1, tkw["warmup_steps"]), high_name="the recorded warmup_steps")
    tkw.update(steps=steps, out_dir=str(out_dir), progress=False, checkpoint_every=0)
    tcfg = TrainConfig.from_dict(tkw)
    model_cls = GPTConfig if tcfg.task == "lm" else ViTConfig
    mcfg = model_cls.from_dict(record["model_config"])
    threads = torch.get_num_threads()
    if record.get("threads"):
        torch.set_num_threads(int(record["threads"]))
    try:
        train(mcfg, tcfg, data=data)
    finally:
        torch.set_num_threads(threads)
    return load_records(Path(out_dir) / METRICS_NAME)


# --------------------------------------------------------------------------------------------- tables
def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines skipped)."""
    path = Path(path)
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} line {i} is not JSON: {e}") from e
    return records


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, label) in first-seen order: attention/total params, KV cache per token, and the
    mean and sample std over seeds of val_loss, val_acc, throughput and wall time."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("task", ""), r["label"]), []).append(r)
    rows = []
    for (task, label), rs in groups.items():
        row = {"task": task, "label": label, "method": rs[0]["method"], "sizes": rs[0].get("sizes", {}),
               "n": len(rs), "attention_params": rs[0]["attention_params"],
               "total_params": rs[0].get("total_params"), "kv_cache_per_token": rs[0].get("kv_cache_per_token"),
               "unit": rs[0].get("unit")}
        for key in ("val_loss", "val_acc", "throughput", "wall_time_s"):
            row[key], row[key + "_std"] = _mean_std([r.get(key) for r in rs])
        rows.append(row)
    return rows


def format_records(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows: method, attention params (and % of MHA), KV cache per
    token, validation loss (and accuracy for ViT) as mean ± std over seeds, throughput, wall time."""
    rows = summarize(records)
    if not rows:
        return "(no records)"
    mha = {r["task"]: r["attention_params"] for r in rows if r["method"] == "mha"}
    has_acc = any(r["val_acc"] is not None for r in rows)

    def pm(m: float | None, s: float | None, n: int, fmt: str) -> str:
        if m is None:
            return "-"
        return f"{m:{fmt}}" + (f" ± {s:{fmt}}" if n > 1 else "")

    header = ["method", "attention params", "% of MHA", "KV cache / token", "val loss"]
    header += ["val acc"] if has_acc else []
    header += ["seeds", "throughput", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        ref = mha.get(r["task"])
        cells = [r["label"], f"{r['attention_params']:,}",
                 f"{100 * r['attention_params'] / ref:.1f}%" if ref else "-",
                 f"{r['kv_cache_per_token']:,}" if r["kv_cache_per_token"] is not None else "-",
                 pm(r["val_loss"], r["val_loss_std"], r["n"], ".4f")]
        if has_acc:
            cells.append(pm(r["val_acc"], r["val_acc_std"], r["n"], ".4f"))
        tp = r["throughput"]
        cells += [str(r["n"]), f"{tp:,.0f} {r['unit'] or ''}".strip() if tp is not None else "-",
                  f"{r['wall_time_s']:.1f}" if r["wall_time_s"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

