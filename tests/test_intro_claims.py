"""The introduction states measured results of the evidence chapters in prose; they must be the numbers the
recorded runs give (a re-recorded experiment that changes them makes this test fail until the prose follows)."""

from __future__ import annotations

from pathlib import Path

from tucker_attention.book import compression, experiments

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results"
INTRO = (ROOT / "book" / "intro.md").read_text()


def _tex_label(label: str) -> str:
    """``Tucker [4,32,16]/[4,24,16]`` as the intro writes it in math: ``Tucker $[4,32,16]/[4,24,16]$``."""
    name, ranks = label.split(" ", 1)
    return f"{name} ${ranks}$"


def test_intro_states_the_small_gpt_budget_bar():
    bar = experiments.budget_bar(experiments.load_sweep(RESULTS / "lm_book").rows)
    share = bar.best["attention_params"] / bar.mha["attention_params"]
    assert not bar.holds and "does **not** hold" in INTRO
    assert _tex_label(bar.best["label"]) in INTRO
    assert f"{share:.1%} of MHA" in INTRO
    assert f"{bar.gap:.1%} above MHA's validation loss" in INTRO


def test_intro_states_the_vit_transfer_protocol():
    protocol = compression.load_protocol(RESULTS / "compress_vit_lr" / "lr1e-3")
    bar = compression.transfer_bar(protocol.rows, metric="val_acc")
    assert not bar.holds
    share = bar.smallest_match["attention_params"] / bar.best["attention_params"]
    assert f"has {share:.0%} of its attention" in INTRO
