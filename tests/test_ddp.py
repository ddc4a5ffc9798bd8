"""DistributedDataParallel through torchrun: two CPU processes on gloo.

The test launches this very file under ``python -m torch.distributed.run --nproc_per_node 2``; each process
runs :func:`_worker`, which checks that

1. DDP's averaged gradients over two half batches equal one process's gradients on the whole batch
   (float64, the same initial weights);
2. the real training loop (``train``) runs under torchrun: replicas stay identical, only rank 0 writes
   files, and the checkpoint holds both ranks' RNG and sampler states.

Rank 0 writes its findings to ``OUT/result.json``; the pytest side asserts on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tucker_attention.models import GPT, AttentionConfig, GPTConfig

ATTENTION = AttentionConfig(method="tucker", ranks=(2, 8, 8), rope=True)


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _worker(out_dir: str) -> None:
    from tucker_attention.train import TrainConfig, load_checkpoint, load_data, model_config_for, train
    from tucker_attention.train.distributed import gather_objects, init_distributed, wrap_ddp

    torch.set_num_threads(1)
    info = init_distributed()
    assert info.world_size == 2 and info.backend == "gloo", info
    result: dict = {"rank_backend": info.backend}

    # 1. gradients: DDP over halves == one process over the whole batch
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layer=2, d_model=16, n_heads=2, attention=ATTENTION)
    torch.manual_seed(0)
    model = GPT(config=cfg).double()
    g = torch.Generator().manual_seed(123)                        # the same global batch on both ranks
    x = torch.randint(0, 40, (4, 16), generator=g)
    y = torch.randint(0, 40, (4, 16), generator=g)
    half = slice(2 * info.rank, 2 * info.rank + 2)
    ddp = wrap_ddp(model, info, torch.device("cpu"))
    _, loss = ddp(x[half], y[half])
    loss.backward()
    grads = gather_objects(_flat_grads(model))
    torch.manual_seed(0)
    reference = GPT(config=cfg).double()
    _, full_loss = reference(x, y)
    full_loss.backward()
    ref = _flat_grads(reference)
    result["grad_max_err"] = max(float((gr - ref).abs().max()) for gr in grads)
    result["grad_scale"] = float(ref.abs().max())
    result["ranks_agree"] = bool(torch.equal(grads[0], grads[1]))

    # 2. the training loop under torchrun
    data = load_data("lm", "stdlib", max_bytes=100_000)
    mcfg = model_config_for("lm", data, block_size=16, n_layer=1, d_model=16, n_heads=2, attention=ATTENTION,
                            dropout=0.1)
    run = TrainConfig(task="lm", steps=3, batch_size=2, grad_accum=2, warmup_steps=1, eval_every=2,
                      eval_batches=2, log_every=1, out_dir=str(Path(out_dir) / "run"), progress=False,
                      device="cpu")
    trained = train(mcfg, run, data=data)
    params = gather_objects(torch.cat([p.detach().reshape(-1) for p in trained.model.parameters()]))
    result["params_agree"] = bool(torch.equal(params[0], params[1]))
    result["history"] = trained.history
    result["histories_agree"] = gather_objects(trained.history)[0] == gather_objects(trained.history)[1]
    if info.rank == 0:
        state = load_checkpoint(Path(out_dir) / "run" / "ckpt.pt")
        result["ckpt_world_size"] = state["world_size"]
        result["ckpt_ranks"] = len(state["rng"])
        result["data_states_differ"] = not torch.equal(state["data"][0]["generator"], state["data"][1]["generator"])
        (Path(out_dir) / "result.json").write_text(json.dumps(result))


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["grad_max_err"] <= 1e-12 * max(1.0, result["grad_scale"])
    assert result["ranks_agree"]                                  # DDP all-reduced the same gradients
    assert result["params_agree"] and result["histories_agree"]   # replicas stay identical
    assert result["ckpt_world_size"] == 2 and result["ckpt_ranks"] == 2 and result["data_states_differ"]
    assert all(isinstance(v, float) for v in result["history"]) and len(result["history"]) == 3
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["ckpt.pt", "config.json", "metrics.jsonl"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if "train_loss" in r]
    assert train_steps == [1, 2, 3]                               # one writer: no duplicated lines
    assert json.loads((run / "config.json").read_text())["world_size"] == 2


if __name__ == "__main__":
    _worker(sys.argv[1])
