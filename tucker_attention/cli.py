"""Command line: ``python -m tucker_attention {train,sweep,summarize,compress,sweep-compress} ...``
(also ``tucker-attention``).

    python -m tucker_attention train lm --attention tucker --ranks 2,16,16 --steps 300 --out runs/t
    python -m tucker_attention train vit --attention gqa --n-kv-heads 2 --steps 300
    python -m tucker_attention sweep lm --preset ci --out runs/sweep_lm
    python -m tucker_attention summarize runs/sweep_lm/records.jsonl
    python -m tucker_attention compress runs/t/ckpt.pt --attention tucker --ranks 2,16,8 --finetune-steps 100 \
        --out runs/t_tucker                                   # convert a trained model (SVD / HOSVD init)
    python -m tucker_attention sweep-compress vit --preset ci --out runs/compress_vit   # paper §7's protocol
    torchrun --nproc_per_node 8 -m tucker_attention train lm --preset gpu ...      # DDP

Every command runs offline by default (stdlib byte corpus, scikit-learn digits). Configuration errors
(bad flags, data that cannot load, a checkpoint that cannot resume) exit with status 2 and a one-line
message (set TUCKER_ATTENTION_DEBUG=1 for the traceback); a NaN/inf loss exits with status 1; Ctrl-C
checkpoints the run, prints the command that resumes it and exits with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from .attention import registry

__all__ = ["build_parser", "main"]



def _rope_words() -> list[str]:
    """Every ``--rope`` word some method accepts."""
    return list(dict.fromkeys(w for s in registry.METHODS.values() for w in s.rope))


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 8,64,64, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated ints (r1,r2,r3), got {text!r}")
    return values


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _rope_value(method: str, rope: str | None) -> bool | str | None:
    """Map ``--rope`` to the layer's ``rope`` value through the method's spec (head-dim RoPE for
    mha/gqa/mqa, latent RoPE for tucker and mla, DeepSeek-V2's decoupled RoPE for mla)."""
    spec = registry.spec(method)
    word = rope or "none"
    if word not in spec.rope:
        raise ValueError(f"--rope {word} is not available for --attention {method}: use one of "
                         f"{', '.join(spec.rope)} (paper §6 for latent RoPE)")
    return spec.rope[word]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _users(name: str) -> list[str]:
    """The methods that take size argument ``name``."""
    return [m for m, s in registry.METHODS.items() if name in s.sizes]


def _attention_config(args: argparse.Namespace):
    """The ``AttentionConfig`` of the flags; mistakes are reported in flags, not config fields."""
    from .models import AttentionConfig

    spec = registry.spec(args.attention)
    for name in registry.SIZE_FIELDS:
        if getattr(args, name) not in (None, False) and name not in spec.sizes:
            users = _users(name)
            raise ValueError(f"{_flag(name)} is for --attention {' or '.join(users)}, not --attention "
                             f"{args.attention}: add --attention {users[0]} (or drop {_flag(name)})")
    missing = [_flag(name) for name in spec.required if getattr(args, name) is None]
    if missing:
        raise ValueError(f"--attention {args.attention} needs {' and '.join(missing)}")
    if args.kernel != "sdpa" and args.attention != "tucker":
        raise ValueError(f"--kernel {args.kernel} is for --attention tucker, not --attention {args.attention}: "
                         "add --attention tucker (or drop --kernel)")
    sizes = {name: getattr(args, name) for name in registry.SIZE_FIELDS}
    return AttentionConfig(method=args.attention, rope=_rope_value(args.attention, args.rope),
                           backend=args.attn_backend, kernel=args.kernel, dropout=args.attn_dropout, **sizes)


# ---------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it says something (not None/False/[], not when the help names it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and sweep."""
    p.add_argument("--data", help="data set: lm: stdlib (offline) | tinyshakespeare | openwebtext; "
                   "vit: digits (offline) | cifar10 | image_folder (default: the preset's)")
    p.add_argument("--data-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="argument of the data loader, repeatable; VALUE is parsed as JSON if it can be "
                   "(e.g. --data-arg max_bytes=1000000 --data-arg data_dir=/data/imagenet)")
    p.add_argument("--steps", type=_positive_int, help="optimizer steps (default: the preset's)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the preset's; auto = cuda if available)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the preset's, else torch's)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


class _UsageError(Exception):
    """A configuration error: reported as one line with exit status 2."""


@contextlib.contextmanager
def _usage():
    """Turn the ``ValueError`` / ``TypeError`` of configuration and data loading into :class:`_UsageError`
    (errors raised later, inside training, keep their type and traceback)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise _UsageError(str(e)) from e


def build_parser(prog: str = "tucker-attention") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Tucker Attention: train GPT/ViT with any attention, run sweeps.",
        formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,sweep,summarize,compress,sweep-compress}")

    # ------------------------------------------------------------------------------------ train
    t = sub.add_parser("train", help="train one GPT (lm) or ViT (vit)",
                       description="Train one model. Sizes default to the --preset's base model "
                       "(ci: tiny, seconds to a minute on a CPU); every flag overrides it. Writes "
                       "OUT/metrics.jsonl, OUT/config.json and OUT/ckpt.pt.",
                       formatter_class=_Formatter)
    t.add_argument("task", choices=("lm", "vit"), help="lm: GPT next-token prediction; vit: ViT classification")
    t.add_argument("--preset", default="ci", choices=("ci", "book", "gpu", "paper"),
                   help="base model size and training recipe")
    _add_run_options(t)
    g = t.add_argument_group("attention")
    g.add_argument("--attention", default="mha", choices=registry.method_names(), help="attention method")
    for name, size in registry.SIZE_FIELDS.items():
        where = "/".join(registry.METHODS[m].title for m in _users(name))
        if size.kind == "bool":
            g.add_argument(_flag(name), action="store_true", help=f"{where}: {size.help}")
        else:
            g.add_argument(_flag(name), type=_positive_int if size.kind == "int" else _ints,
                           metavar=None if size.kind == "int" else "R1,R2,R3", help=f"{where}: {size.help}")
    g.add_argument("--rope", choices=_rope_words(), default="none",
                   help="RoPE: 'on' = head-dim RoPE (mha/gqa/mqa) or latent RoPE (tucker); mla: 'latent' | "
                   "'decoupled'")
    g.add_argument("--attn-backend", default="auto", choices=("auto", "flash", "sdpa", "math"),
                   help="attention kernel")
    g.add_argument("--kernel", default="sdpa", choices=("sdpa", "fused"),
                   help="Tucker: 'fused' runs the Triton kernel that forms the queries in-kernel (needs triton "
                   "and CUDA; pip install 'tucker-attention[kernels]')")
    g.add_argument("--attn-dropout", type=float, default=0.0, help="attention-probability dropout")
    m = t.add_argument_group("model (default: the preset's)")
    m.add_argument("--n-layer", type=_positive_int, help="transformer blocks")
    m.add_argument("--d-model", type=_positive_int, help="model width d")
    m.add_argument("--n-heads", type=_positive_int, help="attention heads n_H")
    m.add_argument("--mlp-ratio", type=float, help="MLP hidden width / d_model")
    m.add_argument("--dropout", type=float, help="embedding/residual/MLP dropout")
    m.add_argument("--no-bias", action="store_true", help="no biases in LayerNorms and MLPs")
    m.add_argument("--block-size", type=_positive_int, help="lm: context length")
    m.add_argument("--position", choices=("auto", "learned", "none"),
                   help="lm: position embedding (auto: learned unless RoPE)")
    m.add_argument("--image-size", type=_positive_int, help="vit: image size (passed to the data loader)")
    m.add_argument("--patch-size", type=_positive_int, help="vit: patch size")
    m.add_argument("--pool", choices=("cls", "mean"), help="vit: class token or mean pooling")
    o = t.add_argument_group("optimization (default: the preset's)")
    o.add_argument("--batch-size", type=_positive_int, help="sequences/images per process per micro-step")
    o.add_argument("--grad-accum", type=_positive_int, help="micro-steps per optimizer step")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--min-lr", type=float, help="final learning rate of the cosine decay (default lr/10)")
    o.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    o.add_argument("--schedule", choices=("cosine", "constant"), help="after warmup: cosine decay or constant")
    o.add_argument("--weight-decay", type=float, help="AdamW weight decay (2-D+ weights only)")
    o.add_argument("--grad-clip", type=float, help="max gradient norm (0 = off)")
    o.add_argument("--seed", type=int, default=0, help="seed of init, data order and dropout")
    o.add_argument("--compile", action="store_true", help="torch.compile the model")
    o.add_argument("--num-workers", type=int, help="vit: DataLoader workers")
    e = t.add_argument_group("evaluation, logging, checkpoints")
    e.add_argument("--eval-every", type=int, help="evaluate every k steps (0 = only at the end)")
    e.add_argument("--eval-batches", type=int, help="batches per evaluation (0 = the whole validation set)")
    e.add_argument("--log-every", type=_positive_int, help="write a metrics line every k steps")
    e.add_argument("--out", help="output folder (metrics.jsonl, config.json, ckpt.pt); none = write nothing")
    e.add_argument("--checkpoint-every", type=int, help="also checkpoint every k steps (0 = only at the end)")
    e.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt (bit-exact)")

    # ------------------------------------------------------------------------------------ sweep
    s = sub.add_parser("sweep", help="train every method/rank of a preset, one JSON record per run",
                       description="Train MHA, GQA, MQA, MLA and several Tucker ranks with the preset's "
                       "data/model/recipe for each seed; append one record per run to OUT/records.jsonl "
                       "(runs already recorded there are skipped unless --rerun) and print the table.",
                       formatter_class=_Formatter)
    s.add_argument("task", choices=("lm", "vit"), help="lm: GPT; vit: ViT")
    s.add_argument("--preset", required=True, choices=("ci", "book", "gpu", "paper"),
                   help="ci: 2 CPU cores, ~1 min/run; book (lm): the book's chapter 7, 2 CPU cores, ~1.5 min/run; "
                   "gpu: one GPU, minutes/run; paper: the paper's sizes")
    s.add_argument("--seeds", type=_positive_int, help="seeds per method (default: the preset's)")
    s.add_argument("--out", help="output folder (default runs/sweep_<task>_<preset>)")
    s.add_argument("--methods", help="comma-separated methods to keep, e.g. mha,tucker (default: all)")
    s.add_argument("--rerun", action="store_true", help="rerun runs already in OUT/records.jsonl")
    _add_run_options(s)

    # -------------------------------------------------------------------------------- summarize
    u = sub.add_parser("summarize", help="print the table of sweep records",
                       description="Print a Markdown table (mean ± std over seeds) of records.jsonl files.")
    u.add_argument("paths", nargs="+", help="records.jsonl files (JSON lines)")
    _add_compress_parsers(sub)
    return parser


# ---------------------------------------------------------------------------------------------- commands
def _pick(explicit: Any, default: Any) -> Any:
    return default if explicit is None else explicit


def _train_configs(args: argparse.Namespace):
    """(preset, model kwargs, AttentionConfig, TrainConfig kwargs, data name, data kwargs) from the flags."""
    from .train.sweep import get_preset

    preset = get_preset(args.task, args.preset)
    attention = _attention_config(args)
    model = dict(preset.model)
    names = ["n_layer", "d_model", "n_heads", "mlp_ratio", "dropout"]
    names += ["block_size", "position"] if args.task == "lm" else ["patch_size", "pool"]
    for name in names:
        model[name] = _pick(getattr(args, name), model.get(name))
    model = {k: v for k, v in model.items() if v is not None}
    if args.no_bias:
        model["bias"] = False
    if args.task == "lm" and (args.image_size or args.patch_size or args.pool):
        raise ValueError("--image-size, --patch-size and --pool are for vit")
    if args.task == "vit" and (args.block_size or args.position):
        raise ValueError("--block-size and --position are for lm")
    train = dict(preset.train)
    for name in ("steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule", "weight_decay",
                 "grad_clip", "eval_every", "eval_batches", "log_every", "checkpoint_every", "device", "dtype",
                 "num_workers"):
        train[name] = _pick(getattr(args, name), train.get(name))
    train = {k: v for k, v in train.items() if v is not None}
    if args.lr is not None and args.min_lr is None:
        train["min_lr"] = args.lr / 10
    data = args.data or preset.data
    data_kwargs = dict(preset.data_kwargs) if data == preset.data else {}
    if args.image_size:
        data_kwargs["image_size"] = args.image_size
    data_kwargs.update(dict(args.data_arg))
    return preset, model, attention, train, data, data_kwargs


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, load_data, model_config_for, train
    from .train.distributed import is_main
    from .train.sweep import runs_on_cpu

    with _usage():
        preset, model_kw, attention, train_kw, data_name, data_kwargs = _train_configs(args)
        tcfg = TrainConfig(task=args.task, data=data_name, data_kwargs=data_kwargs, seed=args.seed,
                           out_dir=args.out, resume=args.resume, compile=args.compile,
                           progress=not args.no_progress, **train_kw)
        _set_threads(args.threads if args.threads is not None else
                     (preset.threads if runs_on_cpu(tcfg.device) else None))
        data = load_data(args.task, data_name, **data_kwargs)
        mcfg = model_config_for(args.task, data, attention=attention, **model_kw)
    result = train(mcfg, tcfg, data=data)
    if is_main():
        summary = {"attention": attention.label(), "attention_params": result.model.attention_params(),
                   "total_params": result.model.num_params(), "kv_cache_per_token": result.model.kv_cache_per_token(),
                   **result.final, "out_dir": result.out_dir}
        print(json.dumps(summary))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .train.distributed import is_main
    from .train.sweep import format_records, get_preset, run_sweep

    with _usage():
        preset = get_preset(args.task, args.preset)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        unknown = sorted(set(methods or ()) - {v.method for v in preset.variants})
        if unknown:
            raise ValueError(f"--methods {','.join(unknown)}: not in --preset {args.preset} (it has "
                             f"{','.join(dict.fromkeys(v.method for v in preset.variants))})")
    if args.threads is not None:
        _set_threads(args.threads)
        preset = dataclasses.replace(preset, threads=args.threads)
    out = args.out or f"runs/sweep_{args.task}_{args.preset}"
    t0 = time.perf_counter()
    records = run_sweep(args.task, preset, out_dir=out, seeds=args.seeds, steps=args.steps, data=args.data,
                        data_kwargs=dict(args.data_arg), device=args.device, dtype=args.dtype, methods=methods,
                        rerun=args.rerun, progress=not args.no_progress, command=args.command_line)
    if is_main():
        print(format_records(records))
        print(f"\n{len(records)} runs, records in {out}/records.jsonl, sweep wall time "
              f"{time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_summarize(args: argparse.Namespace) -> int:
    from .train.sweep import format_records, load_records

    for path in args.paths:
        print(f"{path}:\n{format_records(load_records(path))}\n")
    return 0


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


# ------------------------------------------------------------------------- compress, sweep-compress
_COMPRESS_METHODS = ("mha", "gqa", "mqa", "mla", "tucker")


def _add_compress_parsers(sub) -> None:
    """``compress`` (one checkpoint) and ``sweep-compress`` (the transfer protocol of paper §7)."""
    c = sub.add_parser(
        "compress", help="convert a trained model's attention (SVD / HOSVD init), optionally fine-tune",
        description="Load a checkpoint written by train (GPT or ViT), replace every attention layer by GQA/MQA "
        "or MLA initialized by SVD of the trained weights, or by Tucker initialized by the HOSVD of the attention "
        "tensors; evaluate it right after conversion and after --finetune-steps of fine-tuning on the data the "
        "checkpoint was trained on; write OUT/ckpt.pt, OUT/record.json (with the source checkpoint's SHA-256 "
        "and the per-layer tensor errors) and append the record to OUT/records.jsonl.",
        formatter_class=_Formatter)
    c.add_argument("checkpoint", help="a ckpt.pt written by train")
    c.add_argument("--attention", required=True, choices=_COMPRESS_METHODS,
                   help="target method (mha: an unchanged copy, the baseline)")
    c.add_argument("--n-kv-heads", type=_positive_int, help="gqa: key/value heads")
    c.add_argument("--q-latent", type=_positive_int, help="mla: query latent d_c^Q")
    c.add_argument("--kv-latent", type=_positive_int, help="mla: key/value latent d_c^K")
    c.add_argument("--separate-kv", action="store_true", help="mla: separate key and value latents")
    c.add_argument("--ranks", type=_ints, metavar="R1,R2,R3", help="tucker: ranks (head, query, key)")
    c.add_argument("--post-ranks", type=_ints, metavar="R1,R2,R3",
                   help="tucker: post-softmax ranks (head, output, value); default = --ranks")
    c.add_argument("--shared-kv", action="store_true", help="tucker: keys and values share U3")
    c.add_argument("--decomposition", choices=("hosvd", "hooi"), default="hosvd",
                   help="tucker: truncated HOSVD (the paper's init) or HOOI started from it")
    c.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps (0: convert and evaluate)")
    c.add_argument("--lr", type=float, help="fine-tuning peak learning rate (default 1e-4; final lr/10)")
    c.add_argument("--batch-size", type=_positive_int, help="fine-tuning batch size (default 32)")
    c.add_argument("--warmup-steps", type=int, help="fine-tuning warmup steps (default 20)")
    c.add_argument("--weight-decay", type=float, help="fine-tuning AdamW weight decay (default 0)")
    c.add_argument("--seed", type=int, default=0, help="fine-tuning seed (data order, dropout)")
    c.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    c.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")

    s = sub.add_parser(
        "sweep-compress", help="the transfer protocol: pretrain MHA once, convert to every method, fine-tune x seeds",
        description="Pretrain the preset's MHA model once (or take --source), convert it to each method/rank of "
        "the preset, evaluate right after conversion, fine-tune with each seed; one record per run in "
        "OUT/records.jsonl (recorded runs are skipped unless --rerun); prints the table.",
        formatter_class=_Formatter)
    s.add_argument("task", choices=("lm", "vit"), help="lm: GPT; vit: ViT")
    s.add_argument("--preset", default="ci", choices=("ci", "ci16", "gpu"),
                   help="ci: 2 CPU cores, minutes; ci16 (vit): ci with 16 heads of size 4; gpu: one GPU "
                   "(vit: CIFAR-10)")
    s.add_argument("--source", help="start from this checkpoint instead of pretraining")
    s.add_argument("--seeds", type=_positive_int, help="fine-tuning seeds per method (default: the preset's)")
    s.add_argument("--steps", type=int, help="fine-tuning steps (default: the preset's; 0: converted only)")
    s.add_argument("--methods", help="comma-separated methods to keep, e.g. gqa,tucker (default: all)")
    s.add_argument("--decomposition", choices=("hosvd", "hooi"), default="hosvd", help="tucker initialization")
    s.add_argument("--lr", type=float, help="fine-tuning peak learning rate (default: the preset's; final lr/10)")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the preset's)")
    s.add_argument("--out", help="output folder (default runs/compress_<task>_<preset>)")
    s.add_argument("--rerun", action="store_true", help="rerun runs already in OUT/records.jsonl")
    s.add_argument("--keep-checkpoints", action="store_true", help="keep each fine-tuned ckpt.pt")
    s.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _cmd_compress(args: argparse.Namespace) -> int:
    from .train.compress import compress_and_finetune
    from .train.distributed import is_main

    sizes = {"gqa": {"n_kv_heads": args.n_kv_heads}, "mqa": {},
             "mla": {"q_latent": args.q_latent, "kv_latent": args.kv_latent,
                     "separate_kv": True if args.separate_kv else None},
             "tucker": {"ranks": args.ranks, "post_ranks": args.post_ranks,
                        "shared_kv": True if args.shared_kv else None}, "mha": {}}[args.attention]
    given = {"--n-kv-heads": args.n_kv_heads, "--q-latent": args.q_latent, "--kv-latent": args.kv_latent,
             "--separate-kv": args.separate_kv, "--ranks": args.ranks, "--post-ranks": args.post_ranks,
             "--shared-kv": args.shared_kv}
    used = {"gqa": {"--n-kv-heads"}, "mla": {"--q-latent", "--kv-latent", "--separate-kv"},
            "tucker": {"--ranks", "--post-ranks", "--shared-kv"}}.get(args.attention, set())
    stray = [flag for flag, value in given.items() if value not in (None, False) and flag not in used]
    if stray:
        raise ValueError(f"{', '.join(stray)} not used by --attention {args.attention} "
                         f"(it takes {', '.join(sorted(used)) or 'no sizes'})")
    if args.finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
    overrides = {k: getattr(args, k) for k in ("lr", "batch_size", "warmup_steps", "weight_decay", "device")
                 if getattr(args, k) is not None}
    if args.lr is not None:
        overrides["min_lr"] = args.lr / 10
    _set_threads(args.threads)
    record = compress_and_finetune(args.checkpoint, args.attention, out_dir=args.out,
                                   finetune_steps=args.finetune_steps, seed=args.seed,
                                   decomposition=args.decomposition, train_overrides=overrides,
                                   progress=not args.no_progress,
                                   command=getattr(args, "command_line", sys.argv),
                                   **{k: v for k, v in sizes.items() if v is not None})
    if is_main():
        keys = ("label", "attention_params", "kv_cache_per_token", "rel_error_W_mean", "rel_error_W_tilde_mean",
                "source_val_loss", "source_val_acc", "converted_val_loss", "converted_val_acc", "finetune_steps",
                "val_loss", "val_acc", "source_sha256")
        print(json.dumps({**{k: record.get(k) for k in keys}, "out_dir": args.out}))
    return 0


def _cmd_sweep_compress(args: argparse.Namespace) -> int:
    from .train.compress import protocol_table, run_compress_sweep
    from .train.distributed import is_main

    _set_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    out = args.out or f"runs/compress_{args.task}_{args.preset}"
    t0 = time.perf_counter()
    records = run_compress_sweep(args.task, args.preset, out_dir=out, source=args.source, seeds=args.seeds,
                                 steps=args.steps, device=args.device, methods=methods,
                                 decomposition=args.decomposition, rerun=args.rerun, progress=not args.no_progress,
                                 keep_checkpoints=args.keep_checkpoints,
                                 command=getattr(args, "command_line", sys.argv),
                                 overrides=None if args.lr is None else {"lr": args.lr, "min_lr": args.lr / 10})
    if is_main():
        print(protocol_table(records))
        print(f"\n{len(records)} runs, records in {out}/records.jsonl, wall time {time.perf_counter() - t0:.1f} s")
    return 0


def _resume_hint(args: argparse.Namespace, e) -> str:
    """What to run after Ctrl-C: the command as typed (with ``--resume`` for train)."""
    cmd = list(args.command_line)
    if args.command == "train":
        if e.checkpoint is None:
            return "nothing to resume (give --out DIR to checkpoint a run)"
        if "--resume" not in cmd:
            cmd.append("--resume")
        return f"resume with:\n  {shlex.join(cmd)}"
    return f"finished runs are recorded and skipped, the interrupted one continues from its checkpoint; " \
           f"resume with:\n  {shlex.join(cmd)}"


def main(argv: Sequence[str] | None = None, *, prog: str = "tucker-attention") -> int:
    """Entry point of the ``tucker-attention`` script (``prog``) and of ``python -m tucker_attention``."""
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = [*shlex.split(prog), *argv]                   # as typed, for records and hints
    commands = {"train": _cmd_train, "sweep": _cmd_sweep, "summarize": _cmd_summarize, "compress": _cmd_compress,
                "sweep-compress": _cmd_sweep_compress}
    from .train import CheckpointError, NonFiniteLossError, TrainingInterrupted

    try:
        return commands[args.command](args)
    except NonFiniteLossError as e:
        print(f"{prog}: training stopped: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"\n{prog}: {e}; {_resume_hint(args, e)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    except (_UsageError, CheckpointError, FileNotFoundError, ValueError) as e:
        if os.environ.get("TUCKER_ATTENTION_DEBUG"):
            raise
        parser.exit(2, f"{prog}: error: {e}\n")
    return 0
