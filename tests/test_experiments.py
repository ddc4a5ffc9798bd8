"""The evidence chapters' helpers (tucker_attention.book.experiments): sweeps, Pareto fronts, bars, weights."""

from __future__ import annotations

import copy
import json
import math
import statistics

import matplotlib
import pytest
import torch

from tucker_attention import analysis, book, counting
from tucker_attention.models import GPTConfig
from tucker_attention.train import TrainConfig, load_data, train
from tucker_attention.train.checkpoint import export_attention_weights

matplotlib.use("Agg")   # tests draw off-screen
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def row(label, method, params, loss, std=0.01, n=3, kv=8):
    return {"label": label, "method": method, "attention_params": params, "kv_cache_per_token": kv,
            "val_loss": loss, "val_loss_std": std, "n": n}


# ---------------------------------------------------------------------------------------- the front
def test_pareto_front_keeps_exactly_the_undominated_rows():
    rows = [row("A", "mha", 100, 1.0), row("B", "gqa", 60, 1.1), row("C", "mla", 70, 1.2),   # C: B beats it
            row("D", "tucker", 20, 1.3), row("E", "tucker", 20, 1.4),                       # E: tie in x, worse
            row("F", "tucker", 10, 1.3)]                                                     # F beats D
    front = book.pareto_front(rows)
    assert [r["label"] for r in front] == ["F", "B", "A"]
    losses = [r["val_loss"] for r in front]
    assert all(a > b for a, b in zip(losses, losses[1:]))


def test_pareto_front_agrees_with_brute_force_on_random_points():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = 12
        xs = torch.randint(1, 8, (n,), generator=gen).tolist()           # ties are likely
        ys = torch.randint(1, 8, (n,), generator=gen).tolist()
        rows = [row(str(i), "tucker", x, float(y)) for i, (x, y) in enumerate(zip(xs, ys))]
        front = {r["label"] for r in book.pareto_front(rows)}
        for i in range(n):
            dominated = any(xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j], ys[j]) != (xs[i], ys[i])
                            for j in range(n))
            assert (str(i) in front) == (not dominated)


# ------------------------------------------------------------------------------------- the bars
def test_budget_bar_takes_the_best_tucker_within_the_budget():
    rows = [row("MHA", "mha", 1000, 2.00), row("T big", "tucker", 400, 1.99),   # over 25%: not a candidate
            row("T a", "tucker", 250, 2.05), row("T b", "tucker", 200, 2.03)]
    bar = book.budget_bar(rows)
    assert bar.best["label"] == "T b"
    assert bar.gap == pytest.approx(0.03 / 2.00, rel=1e-12)
    assert bar.holds and "MET." in bar.sentence() and "+1.50%" in bar.sentence()       # 1.5% <= 2%
    strict = book.budget_bar(rows, tolerance=0.014)
    assert not strict.holds and "NOT MET" in strict.sentence()


def test_budget_bar_reports_missing_candidates_and_too_few_seeds():
    rows = [row("MHA", "mha", 1000, 2.0), row("T", "tucker", 300, 1.9)]
    bar = book.budget_bar(rows)
    assert bar.best is None and not bar.holds and "no recorded Tucker" in bar.sentence()
    rows = [row("MHA", "mha", 1000, 2.0, n=1), row("T", "tucker", 200, 2.0)]
    bar = book.budget_bar(rows)
    assert bar.gap == 0.0 and not bar.holds and not bar.seeds_ok and "NOT DECIDED" in bar.sentence()
    with pytest.raises(ValueError, match="exactly one MHA"):
        book.budget_bar(rows[1:])


def test_dominance_bar_needs_one_tucker_below_every_gqa_and_mla_in_both():
    rows = [row("MHA", "mha", 1000, 2.00), row("GQA 4", "gqa", 750, 2.01), row("GQA 2", "gqa", 600, 2.03),
            row("MLA 32", "mla", 550, 2.04), row("MLA 16", "mla", 400, 2.10),
            row("T1", "tucker", 500, 2.02),     # beats GQA 2 and MLA 32, but not the cheaper MLA 16
            row("T2", "tucker", 390, 2.00)]     # beats all four
    bar = book.dominance_bar(rows)
    assert bar.holds and [w["label"] for w in bar.winners] == ["T2"]
    assert bar.beats["T1"] == ["GQA 2", "MLA 32"]
    assert "MET." in bar.sentence() and "T2" in bar.sentence()
    rows[-1] = row("T2", "tucker", 390, 2.015)                     # now worse than GQA 4
    bar = book.dominance_bar(rows)
    assert not bar.holds and bar.winners == [] and "NOT MET" in bar.sentence()
    assert "T1 beats GQA 2, MLA 32" in bar.sentence()


# ------------------------------------------------------------------------------------ recorded sweeps
def write_sweep(folder, losses: dict[str, list[float]], *, params=None, layout="runs"):
    """records.jsonl + one metrics.jsonl per run; the last seed of each label is also recorded twice (a
    rerun: the later record must win)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = params or {}
    lines = []
    for label, values in losses.items():
        method = label.split()[0].lower()
        for seed, loss in enumerate(values):
            run = f"lm-book-{label.lower().replace(' ', '-')}-s{seed}"
            rec = {"task": "lm", "label": label, "method": method, "seed": seed, "run": run,
                   "attention_params": params.get(label, 100), "total_params": 1000, "kv_cache_per_token": 16,
                   "val_loss": loss, "throughput": 1000.0 + seed, "unit": "tokens/s", "wall_time_s": 1.0,
                   "model_config": {"n_layer": 2, "d_model": 32, "n_heads": 4, "block_size": 16,
                                    "attention": {"method": method}}}
            if seed == len(values) - 1:
                lines.append(json.dumps({**rec, "val_loss": 99.0}))           # superseded by the rerun
            lines.append(json.dumps(rec))
            run_dir = folder / ("runs" if layout == "runs" else "") / run
            run_dir.mkdir(parents=True, exist_ok=True)
            curve = [{"step": 0, "val_loss": 5.0 + seed}, {"step": 5, "train_loss": 3.0},
                     {"step": 10, "val_loss": loss}]
            run_dir.joinpath("metrics.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve))
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("layout", ["runs", "flat"])
def test_load_sweep_means_stds_and_curves(tmp_path, layout):
    losses = {"MHA": [2.0, 2.1, 2.3], "Tucker [2,8,8]": [2.2, 2.25, 2.15]}
    write_sweep(tmp_path, losses, params={"MHA": 400, "Tucker [2,8,8]": 90}, layout=layout)
    sweep = book.load_sweep(tmp_path)
    assert len(sweep.records) == 6                                     # the superseded records are gone
    for label, values in losses.items():
        r = sweep.row(label)
        assert r["n"] == 3
        assert r["val_loss"] == pytest.approx(statistics.fmean(values), rel=1e-14)
        assert r["val_loss_std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        steps, mean, std = book.mean_curve(sweep, label)
        assert steps == [0, 10]
        assert mean == pytest.approx([6.0, statistics.fmean(values)], rel=1e-14)
        assert std == pytest.approx([1.0, statistics.stdev(values)], rel=1e-12)
    fig = book.curve_figure(sweep, list(losses))
    drawn = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert drawn["MHA"] == pytest.approx([6.0, statistics.fmean(losses["MHA"])], rel=1e-14)
    fig = book.curve_figure(sweep, ["MHA"], from_step=1)
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [10]
    assert sweep.model_config == {"n_layer": 2, "d_model": 32, "n_heads": 4, "block_size": 16}
    with pytest.raises(KeyError, match="no configuration labelled 'GQA'"):
        sweep.row("GQA")
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        book.load_sweep(tmp_path / "nothing")


def test_compare_sweeps_pairs_configurations_by_label(tmp_path):
    write_sweep(tmp_path / "before", {"MHA": [2.0, 2.2], "Tucker [2,8,8]": [2.6, 2.8]})
    write_sweep(tmp_path / "after", {"MHA": [2.1, 2.1], "Tucker [2,8,8]": [2.2, 2.4], "GQA 2": [2.0]})
    rows = book.compare_sweeps(book.load_sweep(tmp_path / "before"), book.load_sweep(tmp_path / "after"))
    assert [r["label"] for r in rows] == ["MHA", "Tucker [2,8,8]"]
    assert rows[1]["before"] == pytest.approx(2.7) and rows[1]["after"] == pytest.approx(2.3)
    assert rows[1]["change"] == pytest.approx(-0.4)


def test_figures_draw_the_rows_and_the_front(tmp_path):
    rows = [row("MHA", "mha", 1000, 2.0, kv=64), row("GQA 2", "gqa", 600, 2.03, kv=16),
            row("T", "tucker", 200, 2.02, kv=16)]
    fig, ax = plt.subplots()
    front = book.plot_sweep(ax, rows)
    assert [r["label"] for r in front] == ["T", "MHA"]
    assert ax.get_xscale() == "log"
    points = {tuple(c.get_children()[0].get_xydata()[0]) for c in ax.containers}   # errorbar data lines
    assert points == {(1000.0, 2.0), (600.0, 2.03), (200.0, 2.02)}
    fig = book.sweep_figure(rows, bytes_per_elem=2)
    kv_points = {tuple(c.get_children()[0].get_xydata()[0]) for c in fig.axes[1].containers}
    assert kv_points == {(128.0, 2.0), (32.0, 2.03), (32.0, 2.02)}
    fig, ax = plt.subplots()
    means = book.plot_lr_study(ax, [{"label": "MHA", "method": "mha", "lr": 1e-3, "val_loss": 2.0},
                                    {"label": "MHA", "method": "mha", "lr": 1e-3, "val_loss": 2.2},
                                    {"label": "MHA", "method": "mha", "lr": 3e-3, "val_loss": 1.9}])
    assert means == {"MHA": {1e-3: pytest.approx(2.1), 3e-3: 1.9}}
    recorded = {"note": "n", "entries": [{"label": "T", "method": "tucker", "lr": 1e-3, "val_loss": 2.5}]}
    assert book.plot_lr_study(ax, recorded) == {"T": {1e-3: 2.5}}
    with pytest.raises(ValueError, match="'entries'"):
        book.plot_lr_study(ax, {"note": "n"})


# ------------------------------------------------------------------------------ where ranks would sit
def test_rank_position_counts_the_real_modules_and_finds_the_nearest_runs(tmp_path):
    cfg = {"n_layer": 4, "d_model": 128, "n_heads": 8}
    b = book.rank_position((4, 32, 16), (4, 24, 16), model_config=cfg)
    layer = counting.build_layer("tucker", 128, 8, ranks=(4, 32, 16), post_ranks=(4, 24, 16))
    assert b.params == 4 * sum(p.numel() for p in layer.parameters())
    assert b.kv_cache_per_token == 4 * (16 + 16)
    assert b.mha_params == 4 * 4 * 128 * 128
    rows = [row("a", "mha", 1000, 2.0), row("b", "gqa", 400, 2.0), row("c", "tucker", 90, 2.0)]
    assert [r["label"] for r in book.nearest_rows(rows, 200, k=2)] == ["b", "c"]   # on a log scale 400 is nearer
    with pytest.raises(ValueError, match="model_config must give 'n_layer'"):
        book.rank_position((4, 32, 16), model_config={"d_model": 128, "n_heads": 8})


def test_rank_position_widget_default_and_update(tmp_path):
    write_sweep(tmp_path, {"MHA": [2.0, 2.1], "Tucker [2,8,8]": [2.2, 2.3]},
                params={"MHA": 8192, "Tucker [2,8,8]": 1000})
    sweep = book.load_sweep(tmp_path)
    box = book.rank_position_widget(sweep, ranks=(2, 8, 8), k=1)
    expected = book.rank_position((2, 8, 8), model_config=sweep.model_config)
    assert box.last["budget"] == expected
    assert [r["label"] for r in box.last["nearest"]] == ["Tucker [2,8,8]"]
    box.controls["r2"].value = 32
    assert box.last["budget"].params == book.rank_position((2, 32, 8), model_config=sweep.model_config).params
    box.controls["r3"].value = 32
    box.controls["r1"].value = 4
    assert box.last["budget"].ranks == (4, 32, 32)


# ------------------------------------------------------------------------- weights and their spectra
def tiny_config(attention: dict) -> GPTConfig:
    return GPTConfig.from_dict({"n_layer": 2, "d_model": 32, "n_heads": 4, "block_size": 16,
                                "vocab_size": 256, "attention": attention})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two steps of a tiny Tucker GPT with a tiny learning rate, its checkpoint and its exported weights."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("lm", "stdlib", max_bytes=50_000)
    cfg = tiny_config({"method": "tucker", "ranks": [2, 16, 8], "post_ranks": [2, 8, 8]})
    tcfg = TrainConfig(task="lm", steps=2, batch_size=2, lr=1e-9, warmup_steps=0, weight_decay=0.0,
                       eval_every=0, eval_batches=1, seed=3, out_dir=str(out), progress=False, device="cpu")
    result = train(cfg, tcfg, data=data)
    path = export_attention_weights(out / "ckpt.pt", out / "weights.pt")
    return cfg, result, path


def test_load_attention_weights_round_trip(trained_run):
    cfg, result, path = trained_run
    config, layers = book.load_attention_weights(path)
    assert config.to_dict() == cfg.to_dict()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    for block, layer in zip(result.model.blocks, layers):
        trained = {k: v.detach().double() for k, v in block.attn.state_dict().items()}
        for k, v in layer.state_dict().items():
            assert v.dtype == torch.float64 and torch.equal(v, trained[k])
        ref = copy.deepcopy(block.attn).double()(x, causal=True)
        assert torch.allclose(layer(x, causal=True), ref, atol=1e-14, rtol=0)


def test_load_attention_weights_rejects_other_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an attention-weights file"):
        book.load_attention_weights(tmp_path / "x.pt")
    cfg = tiny_config({"method": "mha"})
    torch.save({"model_config": cfg.to_dict(), "layers": [{}]}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="holds 1 layers but its config has n_layer=2"):
        book.load_attention_weights(tmp_path / "y.pt")


def test_initial_layers_are_the_runs_starting_point(trained_run):
    """With lr = 1e-9 two AdamW steps move each weight by at most ~2e-9: the trained layers are the run's
    initial layers up to that, and initial_attention_layers rebuilds them from the seed alone."""
    cfg, result, _ = trained_run
    state = torch.get_rng_state()
    init = book.initial_attention_layers(cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), state)               # the caller's random state is untouched
    for block, layer in zip(result.model.blocks, init):
        for k, v in layer.state_dict().items():
            assert torch.allclose(v, block.attn.state_dict()[k].double(), atol=1e-8, rtol=0), k
    other = book.initial_attention_layers(cfg, seed=4)
    assert not torch.allclose(other[0].U2, init[0].U2)


def test_spectra_energy_suggestion_and_head_energy():
    layers = book.initial_attention_layers(tiny_config({"method": "mha"}), seed=0)
    spectra = book.layer_spectra(layers)
    ref = analysis.model_spectra(layers[1])[0]
    assert all(torch.equal(a, b) for a, b in zip(spectra[1].pre + spectra[1].post, ref.pre + ref.post))
    for s in spectra:                                                    # MHA: head mode full (4 of 4)
        assert analysis.energy_ranks(s.pre[0], 0.999) == 4
    energy = book.head_mode_energy(spectra, 2)
    e = spectra[0].pre[0].pow(2)
    assert energy[0] == pytest.approx(float(e[:2].sum() / e.sum()), rel=1e-14)
    assert book.head_mode_energy(spectra, 4) == pytest.approx([1.0, 1.0], rel=1e-14)
    pre, post = book.energy_suggestion(spectra, 0.9)
    per_layer = [analysis.energy_ranks(s.pre, 0.9) for s in spectra]
    assert pre == tuple(max(r[m] for r in per_layer) for m in range(3))
    assert len(post) == 3 and all(1 <= r for r in post)
    fig = book.spectra_figure(spectra, spectra, ranks=pre, title="t", label="random")
    assert len(fig.axes) == 6 and all(ax.get_yscale() == "log" for ax in fig.axes)
    assert "layer 1 random" in [line.get_label() for line in fig.axes[0].get_lines()]


# -------------------------------------------------------------------------- the GPT-2 path (offline)
def test_gpt2_random_model_spectra_match_an_independent_computation():
    """The code path chapter 8 runs on pretrained GPT-2, on a randomly initialized tiny GPT2Config: the
    spectra of the converted layers equal singular values computed directly from HF's fused weights."""
    pytest.importorskip("transformers")
    d, h = 32, 4
    model = book.gpt2_model(n_layer=2, n_embd=d, n_head=h, n_positions=16, vocab_size=64, bos_token_id=0,
                           eos_token_id=0, seed=1)
    spectra = analysis.model_spectra(model)
    assert len(spectra) == 2
    dh = d // h
    for s, block in zip(spectra, model.transformer.h):
        w = block.attn.c_attn.weight.detach().double()            # Conv1D: x @ w, (d, 3d) = [W^Q | W^K | W^V]
        wo = block.attn.c_proj.weight.detach().double()           # (d, d) = W^O
        wq, wk, wv = w[:, :d], w[:, d:2 * d], w[:, 2 * d:]
        W = torch.stack([wq[:, i * dh:(i + 1) * dh] @ wk[:, i * dh:(i + 1) * dh].T for i in range(h)])
        Wt = torch.stack([(wv[:, i * dh:(i + 1) * dh] @ wo[i * dh:(i + 1) * dh]).T for i in range(h)])
        for got, T in ((s.pre, W), (s.post, Wt)):
            for mode, unfold in enumerate((T.reshape(h, -1), T.permute(1, 0, 2).reshape(d, -1),
                                           T.permute(2, 0, 1).reshape(d, -1))):
                want = torch.linalg.svdvals(unfold)
                assert torch.allclose(got[mode], want, rtol=1e-5, atol=1e-6 * float(want[0]))  # fp32 weights
    with pytest.raises(ValueError, match="only with pretrained=False"):
        book.gpt2_model(pretrained=True, n_layer=2)


def test_budget_sentences_are_computed_from_the_rows():
    rows = [row("MHA", "mha", 1000, 2.0, std=0.01), row("T", "tucker", 240, 2.02, std=0.005)]
    text = book.budget_bar(rows).sentence()
    assert "24.0% of MHA" in text and "2.0200 ± 0.0050" in text and "+1.00%" in text
    assert math.isclose(book.budget_bar(rows).gap, 0.01, rel_tol=1e-12)


def test_head_mode_figure_clips_round_off_at_the_floor():
    tucker = tiny_config({"method": "tucker", "ranks": [2, 16, 8]})
    mha = tiny_config({"method": "mha"})
    spectra = {name: (book.layer_spectra(book.initial_attention_layers(c, seed=0)),) * 2
               for name, c in (("MHA", mha), ("Tucker", tucker))}
    assert min(float(s.pre[0][-1] / s.pre[0][0]) for s in spectra["Tucker"][0]) < 1e-12   # r1 = 2 of 4
    fig = book.head_mode_figure(spectra, floor=1e-3)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert ax.get_ylim()[0] == pytest.approx(5e-4)
        assert all(min(line.get_ydata()) >= 1e-3 for line in ax.get_lines())
    tucker_texts = [t.get_text() for t in fig.axes[1].texts]
    assert tucker_texts == ["▼ below 0.001"] and not fig.axes[0].texts
