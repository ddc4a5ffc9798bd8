"""The book's shared helpers (package tucker_attention.book): device, result files, tables, figures, widgets."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

import tucker_attention as ta
from tucker_attention import book, counting

matplotlib.use("Agg")   # tests draw off-screen; the notebooks keep matplotlib's own (inline) backend
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")  # plt.show() under Agg


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------ device
@pytest.mark.parametrize("cuda", [False, True])
def test_pick_device_and_scaling_follow_cuda(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert book.on_gpu() is cuda
    assert book.pick_device() == ("cuda" if cuda else "cpu")
    assert book.scale_for_device(cpu=(1, 128), gpu=(8, 4096)) == ((8, 4096) if cuda else (1, 128))


def test_scale_for_device_explicit_device_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert book.scale_for_device(cpu="small", gpu="big", device="cpu") == "small"
    assert book.scale_for_device(cpu="small", gpu="big", device=torch.device("cuda", 0)) == "big"


def test_environment_names_versions_and_backends():
    env = book.environment()
    assert torch.__version__ in env and ta.__version__ in env
    for name in ta.attention.available_backends():
        assert name in env
    assert ("cuda" if torch.cuda.is_available() else "cpu") in env


# --------------------------------------------------------------------------------- recorded results
def test_results_dir_found_from_repo_root_and_from_book(tmp_path):
    (tmp_path / "book" / "results").mkdir(parents=True)
    (tmp_path / "book" / "sub").mkdir()
    expected = (tmp_path / "book" / "results").resolve()
    assert book.results_dir(tmp_path) == expected                 # a script at the repository root
    assert book.results_dir(tmp_path / "book") == expected        # a chapter (cwd = book/)
    assert book.results_dir(tmp_path / "book" / "sub") == expected


def test_results_dir_falls_back_to_the_repository(tmp_path):
    got = book.results_dir(tmp_path)
    assert got.parts[-2:] == ("book", "results")
    assert (got.parent.parent / "tucker_attention" / "book" / "__init__.py").is_file()


def test_load_results_reads_json_lists_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"method": "mha", "ms": 1.0}))
    (tmp_path / "b.json").write_text(json.dumps([{"method": "gqa"}, {"method": "mqa"}]))
    (tmp_path / "c.jsonl").write_text('{"method": "mla"}\n\n{"method": "tucker"}\n')
    (tmp_path / "notes.txt").write_text("not a result")
    recs = book.load_results(directory=tmp_path)
    assert [r["method"] for r in recs] == ["mha", "gqa", "mqa", "mla", "tucker"]
    assert [r["_source"] for r in recs] == ["a.json", "b.json", "b.json", "c.jsonl", "c.jsonl"]
    assert book.load_results(directory=tmp_path / "missing") == []


def test_load_results_rejects_non_object_records(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"method": "mha"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 2"):
        book.load_results(directory=tmp_path)


# -------------------------------------------------------------------------------------------- tables
def test_format_table_formats_and_aligns():
    text = book.format_table([("MHA", 2359296, 0.5, None), ("Tucker", 426176, 0.18061, 3.0)],
                             ["method", "params", "share", "x"], floatfmt=".2f")
    lines = text.splitlines()
    assert lines[0].split() == ["method", "params", "share", "x"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert "2,359,296" in lines[2] and "—" in lines[2] and "0.18" in lines[3]
    # numbers are right-aligned: the shorter count ends where the longer one ends
    assert lines[2].index("2,359,296") + len("2,359,296") == lines[3].index("426,176") + len("426,176")
    assert lines[3].startswith("Tucker")


def test_format_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="row 1 has 1 cells but there are 2 headers"):
        book.format_table([(1, 2), (3,)], ["a", "b"])


# ------------------------------------------------------------------------------- capture_attention
def test_capture_attention_sees_latent_mqa():
    layer = ta.TuckerAttention(32, 4, ranks=(2, 12, 6), post_ranks=(3, 10, 8)).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    call = book.capture_attention(layer, x, causal=True)
    assert call.q.shape == (2, 4, 7, 6) and call.k.shape == (2, 1, 7, 6) and call.v.shape == (2, 1, 7, 8)
    assert call.o.shape == (2, 4, 7, 8) and call.causal is True and call.scale == layer.scale
    assert call.backend in ("flash", "sdpa", "math")
    torch.testing.assert_close(call.y, layer(x, causal=True), rtol=0, atol=0)
    torch.testing.assert_close(call.k[:, 0], x @ layer.U3, rtol=0, atol=1e-12)


def test_capture_attention_with_a_cache_is_one_decoding_step():
    layer = ta.MultiHeadLatentAttention(16, 2, 8, 6, rope="latent").double()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    cache = layer.make_cache(1, 5)
    layer(x[:, :4], causal=True, cache=cache)
    call = book.capture_attention(layer, x[:, 4:], causal=True, cache=cache)
    assert call.k.shape == (1, 1, 5, 6) and cache.length == 5                 # appended once
    torch.testing.assert_close(call.y, layer(x, causal=True)[:, 4:], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="x must have shape"):
        book.capture_attention(layer, torch.randn(1, 3, 8, dtype=torch.float64))


# ---------------------------------------------------------------------------------------- figures
def test_budget_rows_match_counting():
    configs = book.family_configs(n_kv_heads=4, kv_latent=128, ranks=(8, 128, 64))
    rows = book.budget_rows(configs, 768, 12)
    assert [r.method for r in rows] == ["mha", "gqa", "mqa", "mla", "tucker"]
    for r in rows:
        assert r.params == counting.attention_params(r.method, 768, 12, **r.sizes)
        assert r.kv_per_token == counting.kv_cache_per_token(r.method, 768, 12, **r.sizes)
    with pytest.raises(ValueError, match="ranks"):
        book.budget_rows(book.family_configs(n_kv_heads=4, kv_latent=128, ranks=(20, 128, 64)), 768, 12)


def test_bar_budget_draws_one_bar_per_value_with_shares():
    fig, ax = plt.subplots()
    values = [400.0, 100.0, 50.0]
    bars = book.bar_budget(ax, ["a", "b", "c"], values, methods=["mha", "gqa", "tucker"], log=True)
    assert len(bars.patches) == 3
    assert [p.get_height() for p in bars.patches] == values
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "400" and texts[1].endswith("25%") and texts[2].endswith("12%")
    assert ax.get_yscale() == "log"
    assert bars.patches[0].get_facecolor() != bars.patches[2].get_facecolor()   # method colours
    with pytest.raises(ValueError, match="same length"):
        book.bar_budget(ax, ["a"], [1.0, 2.0])


def test_budget_figure_has_parameter_and_cache_panels():
    rows = book.budget_rows(book.family_configs(n_kv_heads=2, kv_latent=64, ranks=(4, 64, 32)), 512, 8)
    fig = book.budget_figure(rows, log=False)
    ax1, ax2 = fig.axes
    assert [p.get_height() for p in ax1.patches] == [r.params for r in rows]
    assert [p.get_height() for p in ax2.patches] == [r.kv_per_token for r in rows]


def test_plot_cache_vs_length_one_line_per_config_with_formula_values():
    configs = book.gpt2_small_configs()
    fig, ax = plt.subplots()
    lines = book.plot_cache_vs_length(ax, configs, [256, 1024], d_model=768, n_heads=12, n_layers=12,
                                      batch_size=3)
    assert len(lines) == len(ax.get_lines()) == len(configs)
    for line, (_, method, sizes) in zip(lines, configs):
        per_tok = counting.kv_cache_per_token(method, 768, 12, **sizes)
        assert line.get_ydata()[-1] == pytest.approx(2 * 12 * 3 * 1024 * per_tok / 1e6)
    # at batch 1 and N=1024 the lines end at the paper's Table 2 KV-cache column
    fig, ax = plt.subplots()
    lines = book.plot_cache_vs_length(ax, configs, [1024], d_model=768, n_heads=12, n_layers=12)
    assert lines[0].get_ydata()[-1] == pytest.approx(counting.gpt2_small_table()[0].kv_cache_mb)


def test_cache_figure_lines_and_bars():
    configs = book.gpt2_small_configs()
    fig = book.cache_figure(configs, seq_len=2048, batch_size=4, d_model=768, n_heads=12, n_layers=12)
    left, right = fig.axes
    assert len(left.get_lines()) == len(configs) and max(left.get_lines()[0].get_xdata()) == 2048
    assert len(right.patches) == len(configs)
    assert right.patches[0].get_height() == pytest.approx(2 * 12 * 4 * 2048 * 2 * 768 / 1e6)


def test_plot_mask_labels_absolute_query_positions():
    fig, ax = plt.subplots()
    mask = ta.attention.backends.causal_mask(2, 5, torch.device("cpu"))
    im = book.plot_mask(ax, mask, query_offset=3)
    assert im.get_array().shape == (2, 5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3", "4"]


def test_plot_recorded_timings_uses_only_complete_records():
    records = [{"method": "mha", "seq_len": 512, "ms": 2.0, "device": "H100"},
               {"method": "mha", "seq_len": 1024, "ms": 5.0, "device": "H100"},
               {"method": "tucker", "label": "Tucker [8,128,64]", "seq_len": 1024, "ms": 1.0},
               {"method": "gqa", "seq_len": 1024},                                  # no time: ignored
               {"val_loss": 3.2}]                                                   # a training record
    fig, ax = plt.subplots()
    assert book.plot_recorded_timings(ax, records) == 2
    assert [line.get_label() for line in ax.get_lines()] == ["mha", "Tucker [8,128,64]"]
    assert list(ax.get_lines()[0].get_ydata()) == [2.0, 5.0]
    assert "H100" in ax.get_title()
    fig, ax = plt.subplots()
    assert book.plot_recorded_timings(ax, records[3:]) == 0


# ---------------------------------------------------------------------------------------- widgets
def test_budget_widget_defaults_and_redraw_on_change():
    box = book.budget_widget(d_model=512, n_heads=8, ranks=(4, 64, 32), n_kv_heads=2, kv_latent=64)
    c = box.controls
    assert (c["d_model"].value, c["n_heads"].value, c["r1"].value, c["r2"].value, c["r3"].value) == (512, 8, 4, 64, 32)
    plt.close("all")
    c["r2"].value = 128                                       # a valid change: a two-panel budget figure
    ax1, ax2 = plt.gcf().axes
    assert [p.get_height() for p in ax1.patches][-1] == counting.attention_params("tucker", 512, 8, ranks=(4, 128, 32))
    plt.close("all")
    c["r1"].value = 9                                         # r1 > n_heads: the package's message, no exception
    text = " ".join(t.get_text() for ax in plt.gcf().axes for t in ax.texts)
    assert "ranks[0]=9" in text


def test_cache_widget_defaults_and_validation():
    box = book.cache_widget(batch_size=2, seq_len=2048)
    assert box.controls["batch_size"].value == 2 and box.controls["seq_len"].value == 2048
    plt.close("all")
    box.controls["seq_len"].value = 4096
    right = plt.gcf().axes[1]
    assert right.patches[0].get_height() == pytest.approx(2 * 12 * 2 * 4096 * 2 * 768 / 1e6)
    with pytest.raises(ValueError, match="seq_len must be a power of two"):
        book.cache_widget(seq_len=1000)
