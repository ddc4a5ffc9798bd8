"""Initializers from a trained layer (paper §7's transfer protocol): GQA and MLA by SVD, Tucker by HOSVD;
whole-model conversion. Checked in float64 against dense tensors built here by explicit per-head loops."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from reference import randomize, rel

from tucker_attention import GroupedQueryAttention, MultiHeadAttention, MultiHeadLatentAttention, TuckerAttention
from tucker_attention.convert import compress, compress_model, conversion_report, convert_layer, mha_to_gqa, mha_to_mla

TOL = 1e-10
D, H = 24, 4
DH = D // H


def _fused(layer):
    """Per head W_i = W^Q_i (W^K_i)ᵀ and W̃_i = W^V_i W^O_i of an MHA/GQA layer, by explicit loops (float64)."""
    Wq, Wk = layer.q_proj.weight.T.detach(), layer.k_proj.weight.T.detach()
    Wv, Wo = layer.v_proj.weight.T.detach(), layer.o_proj.weight.T.detach()
    n_kv = layer.n_kv_heads
    pre, post = [], []
    for i in range(layer.n_heads):
        g = i * n_kv // layer.n_heads
        h, gk = slice(i * DH, (i + 1) * DH), slice(g * DH, (g + 1) * DH)
        pre.append(Wq[:, h] @ Wk[:, gk].T)
        post.append(Wv[:, gk] @ Wo[h])
    return torch.stack(pre), torch.stack(post)                        # (H, d, d) each, post as W̃_i (value, out)


def _dense_of_mla(m):
    """W_i and W̃_i of an MLA layer (no RoPE) from its weights, by explicit loops."""
    Wdq, Wdkv = m.q_down.weight.T.detach(), m.kv_down.weight.T.detach()
    Wuq, Wuk, Wuv = m.q_up.weight.T.detach(), m.k_up.weight.T.detach(), m.v_up.weight.T.detach()
    Wo = m.o_proj.weight.T.detach()
    Wdv = m.v_down.weight.T.detach() if m.separate_kv else Wdkv
    pre, post = [], []
    for i in range(m.n_heads):
        h = slice(i * DH, (i + 1) * DH)
        pre.append(Wdq @ Wuq[:, h] @ Wuk[:, h].T @ Wdkv.T)
        post.append(Wdv @ Wuv[:, h] @ Wo[h])
    return torch.stack(pre), torch.stack(post)


def _tail(M, r):
    """Discarded energy Σ_{j>r} σ_j(M)²."""
    s = torch.linalg.svdvals(M)
    return float(s[r:].square().sum())


def _mha(bias=False, seed=0):
    return randomize(MultiHeadAttention(D, H, bias=bias), seed=seed)


# ------------------------------------------------------------------------------ exact at full rank
@pytest.mark.parametrize("bias", [False, True])
def test_full_rank_conversions_are_exact(bias):
    layer = _mha(bias)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    ref = layer(x)
    converted = [mha_to_gqa(layer, H), compress(layer, (H, D, D))]
    if not bias:
        converted += [mha_to_mla(layer, D, D), mha_to_mla(layer, D, D, separate_kv=True)]
    for new in converted:
        assert rel(new(x), ref) < TOL, type(new).__name__
        assert rel(new(x, causal=True), layer(x, causal=True)) < TOL
        r = conversion_report(layer, new)
        assert r["rel_error_W"] < TOL and r["rel_error_W_tilde"] < TOL
        assert next(new.parameters()).dtype == torch.float64 and not new.training


def test_gqa_to_coarser_gqa_is_exact_when_groups_already_share():
    """A GQA with 2 groups converted to 2 groups (and an MQA to 1) is exact: each group's stack has rank d_H."""
    x = torch.randn(1, 7, D, dtype=torch.float64)
    for n_kv in (2, 1):
        layer = randomize(GroupedQueryAttention(D, H, n_kv, bias=True))
        assert rel(mha_to_gqa(layer, n_kv)(x), layer(x)) < TOL


def test_mla_round_trip_is_exact():
    """An MLA converted to an MLA of the same latents reproduces it (its tensors have those multilinear ranks)."""
    layer = randomize(MultiHeadLatentAttention(D, H, 10, 8))
    x = torch.randn(1, 6, D, dtype=torch.float64)
    assert rel(mha_to_mla(layer, 10, 8)(x), layer(x)) < TOL


# --------------------------------------------------------------- truncation: the discarded energy
def test_gqa_error_is_the_discarded_group_energy():
    layer = _mha()
    W, Wt = _fused(layer)
    for n_kv in (2, 1):
        new = mha_to_gqa(layer, n_kv)
        W1, Wt1 = _fused(new)
        m = H // n_kv
        tail_pre = sum(_tail(W[g * m:(g + 1) * m].reshape(m * D, D), DH) for g in range(n_kv))
        tail_post = sum(_tail(torch.cat(list(Wt[g * m:(g + 1) * m]), dim=1), DH) for g in range(n_kv))
        assert (W1 - W).square().sum().item() == pytest.approx(tail_pre, rel=1e-9)
        assert (Wt1 - Wt).square().sum().item() == pytest.approx(tail_post, rel=1e-9)
        assert tail_pre > 1e-3                                          # a real truncation
        r = conversion_report(layer, new)
        assert r["rel_error_W"] == pytest.approx((tail_pre / W.square().sum().item()) ** 0.5, rel=1e-9)


def test_gqa_beats_mean_pooling():
    """Eckart–Young: the SVD initializer's error is below GQA's mean-pooling of key/value heads (Ainslie et al.)."""
    layer = _mha(seed=3)
    W, _ = _fused(layer)
    svd = (_fused(mha_to_gqa(layer, 2))[0] - W).norm()
    pooled = randomize(GroupedQueryAttention(D, H, 2))
    with torch.no_grad():
        pooled.q_proj.weight.copy_(layer.q_proj.weight)
        k = layer.k_proj.weight.view(2, 2, DH, D).mean(1).reshape(2 * DH, D)
        pooled.k_proj.weight.copy_(k)
    assert svd < (_fused(pooled)[0] - W).norm()


def test_mla_kv_truncation_error_is_the_discarded_energy():
    """q_latent = d: the squared errors of 𝒲 and 𝒲̃ together are the tail of the stacked key/value unfolding."""
    layer = _mha(seed=1)
    W, Wt = _fused(layer)
    for kv in (12, 6):
        new = mha_to_mla(layer, D, kv)
        W1, Wt1 = _dense_of_mla(new)
        stacked = torch.cat([W[i].T for i in range(H)] + [Wt[i] for i in range(H)], dim=1)   # (d, 2 H d)
        err = (W1 - W).square().sum() + (Wt1 - Wt).square().sum()
        assert err.item() == pytest.approx(_tail(stacked, kv), rel=1e-9)


def test_mla_truncating_both_latents_is_within_the_hosvd_bound():
    layer = _mha(seed=2)
    W, Wt = _fused(layer)
    new = mha_to_mla(layer, 12, 12, separate_kv=True)
    W1, _ = _dense_of_mla(new)
    query = torch.cat(list(W), dim=1)                                 # (d, H d): query unfolding
    key = torch.cat([W[i].T for i in range(H)], dim=1)                # (d, H d): key unfolding
    err = (W1 - W).square().sum().item()
    assert max(_tail(query, 12), _tail(key, 12)) <= err <= _tail(query, 12) + _tail(key, 12) + 1e-12


def test_tucker_single_mode_truncation_is_the_discarded_energy():
    """HOSVD truncating only the key mode: the error of 𝒲 is the tail of its key unfolding."""
    layer = _mha(seed=4)
    W, _ = _fused(layer)
    new = compress(layer, (H, D, 10), (H, D, D))
    key = torch.cat([W[i].T for i in range(H)], dim=1)
    r = conversion_report(layer, new)
    assert r["rel_error_W"] ** 2 == pytest.approx(_tail(key, 10) / W.square().sum().item(), rel=1e-9)
    assert r["rel_error_W_tilde"] < TOL


def test_gqa_bias_is_projected_onto_the_group_key_space():
    layer = _mha(bias=True, seed=5)
    new = mha_to_gqa(layer, 2)
    beta = torch.stack([layer.q_proj.bias[i * DH:(i + 1) * DH] @ layer.k_proj.weight[i * DH:(i + 1) * DH]
                        for i in range(H)]).detach()                  # β_i = b^Q_i (W^K_i)ᵀ: (H, d)
    for i in range(H):
        g = i // 2
        K = new.k_proj.weight[g * DH:(g + 1) * DH].T.detach()          # (d, d_H)
        P = K @ torch.linalg.pinv(K)                                  # projection onto span(W^K_g)
        got = new.q_proj.bias[i * DH:(i + 1) * DH].detach() @ K.T
        assert rel(got, beta[i] @ P) < 1e-9
    assert rel(new.o_proj.bias, layer.v_proj.bias @ layer.o_proj.weight.T + layer.o_proj.bias) < TOL


# ------------------------------------------------------------------------------ errors
def test_initializer_errors():
    layer = _mha()
    with pytest.raises(ValueError, match="n_kv_heads"):
        mha_to_gqa(layer, 3)
    with pytest.raises(ValueError, match="q_latent"):
        mha_to_mla(layer, D + 1, 4)
    with pytest.raises(ValueError, match="biases"):
        mha_to_mla(_mha(bias=True), 8, 8)
    with pytest.raises(ValueError, match="RoPE"):
        mha_to_gqa(MultiHeadAttention(D, H, rope=True), 2)
    with pytest.raises(ValueError, match="method must be one of"):
        convert_layer(layer, "mha")
    with pytest.raises(ValueError, match="needs ranks"):
        convert_layer(layer, "tucker")
    with pytest.raises(ValueError, match="takes sizes"):
        convert_layer(layer, "gqa", n_kv_heads=2, ranks=(1, 2, 3))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        compress_model("model", "mqa")
    with pytest.raises(ValueError, match="no tucker_attention layers"):
        compress_model(torch.nn.Linear(3, 3), "mqa")


# ------------------------------------------------------------------------------ whole models
def _vit():
    from tucker_attention.models import ViT, ViTConfig

    torch.manual_seed(0)
    return ViT(config=ViTConfig(image_size=8, patch_size=2, n_layer=2, d_model=D, n_heads=H)).double().eval()


@pytest.mark.parametrize(("method", "sizes"), [("gqa", {"n_kv_heads": 2}), ("mqa", {}),
                                               ("mla", {"q_latent": 12, "kv_latent": 8}),
                                               ("tucker", {"ranks": (2, 12, 8)}),
                                               ("tucker", {"ranks": (H, D, D), "shared_kv": False})])
def test_compress_model_replaces_every_layer_and_updates_the_config(method, sizes):
    from tucker_attention.models import ViT, attention_layers

    model = _vit()
    new, report = compress_model(model, method, **sizes)
    assert [r["layer"] for r in report] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(isinstance(m, MultiHeadAttention) for m in attention_layers(model))   # original untouched
    assert new.attention_params() == sum(r["params_after"] for r in report)
    assert model.attention_params() == sum(r["params_before"] for r in report)
    rebuilt = ViT(config=new.config).double()                          # the config describes the new layers
    rebuilt.load_state_dict(new.state_dict())
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert rel(rebuilt.eval()(x)[0], new(x)[0]) < TOL
    layer_type = {"gqa": GroupedQueryAttention, "mqa": GroupedQueryAttention, "mla": MultiHeadLatentAttention,
                  "tucker": TuckerAttention}[method]
    assert all(type(m) is layer_type for m in attention_layers(new))
    if sizes.get("ranks") == (H, D, D):
        assert rel(new(x)[0], model(x)[0]) < TOL
        assert max(r["rel_error_W"] for r in report) < TOL


def test_compress_model_hooi_is_no_worse_than_hosvd():
    model = _vit()
    _, hosvd = compress_model(model, "tucker", ranks=(2, 8, 8))
    _, hooi = compress_model(model, "tucker", ranks=(2, 8, 8), decomposition="hooi")
    for a, b in zip(hosvd, hooi):
        assert b["rel_error_W"] <= a["rel_error_W"] + 1e-12


# ------------------------------------------------------------------------------ the protocol runner
def _tiny_preset(**changes):
    from tucker_attention.train.compress import CompressPreset, Variant

    p = CompressPreset(
        name="tiny", task="vit", description="test", data="digits", data_kwargs={"image_size": 8},
        model={"n_layer": 1, "d_model": 16, "n_heads": 4, "patch_size": 4, "pool": "mean"},
        pretrain={"steps": 12, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0, "log_every": 4},
        finetune={"steps": 6, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "eval_every": 0, "log_every": 2},
        variants=(Variant("mha"), Variant("mqa"), Variant("tucker", {"ranks": (2, 8, 4)})), seeds=2, threads=1)
    return dataclasses.replace(p, **changes)


def test_finetune_from_the_initial_model_equals_training(tmp_path):
    """finetune() writes the model as a run's step-0 checkpoint and resumes: started from the weights a fresh run
    would initialize, it reproduces that run's losses exactly."""
    from tucker_attention.models import build_model
    from tucker_attention.train import TrainConfig, load_data, model_config_for, train
    from tucker_attention.train.compress import finetune

    data = load_data("vit", "digits")
    mcfg = model_config_for("vit", data, n_layer=1, d_model=16, n_heads=4, patch_size=4)
    cfg = TrainConfig(task="vit", steps=8, batch_size=16, warmup_steps=2, eval_every=0, log_every=2, seed=3,
                      progress=False, out_dir=str(tmp_path / "a"))
    ref = train(mcfg, cfg, data=data)
    torch.manual_seed(cfg.seed)
    start = build_model(mcfg)
    got = finetune(start, mcfg, dataclasses.replace(cfg, out_dir=str(tmp_path / "b")), data=data)
    assert got.history == ref.history
    assert got.final["val_acc"] == ref.final["val_acc"]

    def curve(run):
        lines = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert "git_commit" in lines[0] and lines[0]["seed"] == cfg.seed      # the provenance header
        return [(x["step"], x.get("train_loss"), x.get("val_loss")) for x in lines[1:]]

    assert curve("b") == curve("a") and len(curve("a")) == 5


def test_compress_sweep_records_and_skips(tmp_path):
    from tucker_attention.train.compress import file_sha256, protocol_rows, protocol_table, run_compress_sweep

    preset = _tiny_preset()
    records = run_compress_sweep("vit", preset, out_dir=tmp_path, progress=False)
    assert [r["run"] for r in records] == [f"vit-tiny-{v}-s{s}" for v in ("mha", "mqa", "tucker-2-8-4")
                                           for s in (0, 1)]
    sha = file_sha256(tmp_path / "source.pt")
    for r in records:
        assert r["source_sha256"] == sha and r["finetune_steps"] == 6 and r["protocol"] == "compress"
        assert (tmp_path / "runs" / r["run"] / "metrics.jsonl").is_file()
        assert not (tmp_path / "runs" / r["run"] / "ckpt.pt").exists()
    mha = [r for r in records if r["method"] == "mha"]
    assert mha[0]["converted_val_acc"] == mha[0]["source_val_acc"]  # the unconverted copy evaluates the same
    assert mha[0]["rel_error_W_mean"] == 0.0
    tucker = records[-1]
    assert tucker["attention_params"] == 2 * (2 * 8 * 4 + 4 * 2 + 16 * 8 + 16 * 4)
    assert len(tucker["conversion"]) == 1 and 0 < tucker["rel_error_W_mean"] < 1
    rows = protocol_rows(records)
    assert [r["n"] for r in rows] == [2, 2, 2] and "Tucker [2,8,4]" in protocol_table(records)
    again = run_compress_sweep("vit", preset, out_dir=tmp_path, progress=False)   # all recorded: skipped
    assert again == records
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 6


def test_compress_and_finetune_writes_a_loadable_checkpoint(tmp_path):
    from tucker_attention.models import attention_layers
    from tucker_attention.train import load_data, load_model
    from tucker_attention.train.compress import compress_and_finetune, pretrain_source

    source = pretrain_source(_tiny_preset(), tmp_path, data=load_data("vit", "digits"), progress=False)
    r0 = compress_and_finetune(source, "tucker", ranks=(2, 8, 4), out_dir=tmp_path / "c0", progress=False)
    assert r0["finetune_steps"] == 0 and r0["val_acc"] == r0["converted_val_acc"]
    m0 = load_model(tmp_path / "c0" / "ckpt.pt")
    assert all(isinstance(m, TuckerAttention) and m.ranks == (2, 8, 4) for m in attention_layers(m0))
    r1 = compress_and_finetune(source, "gqa", n_kv_heads=2, out_dir=tmp_path / "c1", finetune_steps=4,
                               train_overrides={"log_every": 1}, progress=False)
    assert r1["finetune_steps"] == 4 and r1["converted_val_acc"] is not None
    m1 = load_model(tmp_path / "c1" / "ckpt.pt")
    assert all(isinstance(m, GroupedQueryAttention) and m.n_kv_heads == 2 for m in attention_layers(m1))
    assert len((tmp_path / "c1" / "metrics.jsonl").read_text().splitlines()) >= 4
    with pytest.raises(ValueError, match="takes no sizes"):
        compress_and_finetune(source, "mha", ranks=(1, 2, 3), out_dir=tmp_path / "bad")


# ------------------------------------------------------------------------------ command line
def test_cli_compress_and_sweep_compress(tmp_path, capsys):
    from tucker_attention.cli import main
    from tucker_attention.train import load_data, load_model
    from tucker_attention.train.compress import file_sha256, pretrain_source

    source = pretrain_source(_tiny_preset(), tmp_path, data=load_data("vit", "digits"), progress=False)
    out = tmp_path / "cmp"
    assert main(["compress", str(source), "--attention", "tucker", "--ranks", "2,8,4", "--finetune-steps", "3",
                 "--lr", "5e-4", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["label"] == "Tucker [2,8,4]" and summary["finetune_steps"] == 3
    assert summary["source_sha256"] == file_sha256(source)
    record = json.loads((out / "record.json").read_text())
    assert record["train_config"]["lr"] == 5e-4 and record["train_config"]["min_lr"] == 5e-5
    assert record["command"][-3:] == ["--out", str(out), "--no-progress"]      # as typed
    assert isinstance(load_model(out / "ckpt.pt").blocks[0].attn, TuckerAttention)
    with pytest.raises(SystemExit) as e:
        main(["compress", str(source), "--attention", "gqa", "--ranks", "2,8,4", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--ranks not used by --attention gqa" in capsys.readouterr().err
    # the protocol from a given source, converted only (0 steps): one record per method
    assert main(["sweep-compress", "vit", "--source", str(source), "--steps", "0", "--methods", "mqa,gqa",
                 "--out", str(tmp_path / "sw"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| MQA |" in printed and "| GQA n_kv=2 |" in printed and "2 runs" in printed


# ------------------------------------------------------------------------------ 🤗 models
def _llama():
    pytest.importorskip("transformers")                            # the optional hf extra
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0)
    return LlamaForCausalLM(cfg).double().eval()


def test_from_peer_llama_attention_is_exact():
    """🤗 LlamaAttention → GroupedQueryAttention(rope=True, rope_style="half", rope_base=rope_theta). 🤗 computes its
    RoPE angles in float32, hence the 1e-6 tolerance (the projections are float64)."""
    from tucker_attention.convert import from_peer

    model = _llama()
    attn = model.model.layers[0].self_attn
    layer = from_peer(attn)
    assert isinstance(layer, GroupedQueryAttention) and layer.n_kv_heads == 2 and layer.rope
    assert layer.rope_style == "half" and layer.rope_base == 500.0
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    pos = torch.arange(3, 13).expand(2, -1)
    cos_sin = model.model.rotary_emb(x, pos)
    mask = torch.full((10, 10), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    ref, _ = attn(x, position_embeddings=cos_sin, attention_mask=mask)
    assert rel(layer(x, causal=True, positions=pos[0]), ref) < 1e-6


def test_compress_peer_model_gpt2_vit_llama():
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification

    from tucker_attention.convert import PeerAttention, compress_peer_model

    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 12))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)).double().eval()
    ref = gpt2(ids, use_cache=False).logits
    for method, sizes in (("mha", {}), ("tucker", {"ranks": (4, 32, 32)})):
        new, report = compress_peer_model(gpt2, method, **sizes)
        assert len(report) == 2 and all(isinstance(b.attn, PeerAttention) for b in new.transformer.h)
        assert rel(new(ids, use_cache=False).logits, ref) < TOL
    small, report = compress_peer_model(gpt2, "tucker", ranks=(2, 16, 8))
    assert 0 < report[0]["rel_error_W"] < 1 and rel(small(ids, use_cache=False).logits, ref) > 1e-3
    with pytest.raises(ValueError, match="use_cache=False"):
        small(ids, use_cache=True)
    vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, image_size=16, patch_size=4,
                                              num_labels=5)).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    new, _ = compress_peer_model(vit, "tucker", ranks=(4, 32, 32))
    assert rel(new(pixel_values=x).logits, vit(pixel_values=x).logits) < TOL
    llama = _llama()
    ref = llama(ids, use_cache=False).logits
    exact, _ = compress_peer_model(llama, "mha")
    assert rel(exact(ids, use_cache=False).logits, ref) < 1e-6
    with pytest.raises(ValueError, match="latent_rope=True"):
        compress_peer_model(llama, "tucker", ranks=(4, 32, 16))
    latent, report = compress_peer_model(llama, "tucker", ranks=(4, 32, 32), latent_rope=True)
    assert report[0]["rel_error_W"] < TOL                              # the RoPE-free tensors are kept exactly,
    assert rel(latent(ids, use_cache=False).logits, ref) > 1e-4        # but the rotation moved: not the same model
    assert all(b.self_attn.layer.rope for b in latent.model.layers)


# ------------------------------------------------------------------------------ the recorded protocol
RECORDED = Path(__file__).resolve().parents[1] / "book" / "results" / "compress_vit"


class _Stop(Exception):
    pass


def test_a_recorded_finetuning_run_reproduces(tmp_path):
    """Re-run the first 30 steps of one recorded fine-tuning run (book/results/compress_vit) from the committed
    source checkpoint, with the recorded thread count: the conversion errors and the loss curve match."""
    from tucker_attention.train import TrainConfig, load_data
    from tucker_attention.train.compress import compress_checkpoint, file_sha256, finetune
    from tucker_attention.train.sweep import load_records

    records = {r["run"]: r for r in load_records(RECORDED / "records.jsonl")}
    r = records["vit-ci-tucker-8-16-8-s1"]
    assert file_sha256(RECORDED / "source.pt") == r["source_sha256"]
    model, mcfg, report, _ = compress_checkpoint(RECORDED / "source.pt", r["method"],
                                                 decomposition=r["decomposition"],
                                                 **{k: tuple(v) for k, v in r["sizes"].items()})
    assert [x["rel_error_W"] for x in report] == pytest.approx([x["rel_error_W"] for x in r["conversion"]],
                                                               rel=1e-5)
    assert model.attention_params() == r["attention_params"]
    cfg = TrainConfig.from_dict({**r["train_config"], "out_dir": str(tmp_path), "progress": False,
                                 "resume": False})
    data = load_data("vit", cfg.data, **cfg.data_kwargs)
    steps = 30

    def stop(step, record, model):
        if step == steps:
            raise _Stop

    torch.set_num_threads(r["threads"])
    with pytest.raises(_Stop):
        finetune(model, mcfg, cfg, data=data, on_step=stop)
    got = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (RECORDED / "runs" / r["run"] / "metrics.jsonl").read_text().splitlines()]
    got = [(x["step"], x["train_loss"]) for x in got if "train_loss" in x]
    want = [(x["step"], x["train_loss"]) for x in want if "train_loss" in x and x["step"] <= steps]
    assert [s for s, _ in got] == [s for s, _ in want] and len(got) == steps // r["train_config"]["log_every"]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5)


def test_transfer_bar_reads_the_rows():
    from tucker_attention.book.compression import transfer_bar

    def row(label, method, params, acc, std, n=5):
        return {"label": label, "method": method, "attention_params": params, "val_acc": acc, "val_acc_std": std,
                "val_loss": 1 - acc, "val_loss_std": std, "n": n}

    rows = [row("MHA", "mha", 1000, 0.99, 0.01), row("GQA", "gqa", 600, 0.95, 0.02), row("MLA", "mla", 500, 0.97, 0.01),
            row("T big", "tucker", 200, 0.99, 0.01), row("T small", "tucker", 100, 0.955, 0.01)]
    bar = transfer_bar(rows)                                           # best opponent: MLA 0.97 ± 0.01, 500 params
    assert bar.best["label"] == "MLA" and [r["label"] for r in bar.candidates] == ["T small"]
    assert not bar.holds and "NOT MET" in bar.sentence()               # 0.955 < 0.97 - 0.01
    assert bar.smallest_match["label"] == "T big" and "T big with 200 parameters (40%)" in bar.sentence()
    rows[-1] = row("T small", "tucker", 100, 0.961, 0.01)
    assert transfer_bar(rows).holds and "MET" in transfer_bar(rows).sentence()
    assert transfer_bar(rows, metric="val_loss").best["label"] == "MLA"   # lower loss is better
    rows[-1] = row("T small", "tucker", 100, 0.99, 0.01, n=2)
    assert not transfer_bar(rows).holds and "NOT DECIDED" in transfer_bar(rows).sentence()
    rows.append(row("MQA", "mqa", 300, 0.97, 0.01))                    # a tie: the smaller one is the best
    assert transfer_bar(rows).best["label"] == "MQA"
    with pytest.raises(ValueError, match="no GQA"):
        transfer_bar([r for r in rows if r["method"] not in ("gqa", "mqa", "mla")])
