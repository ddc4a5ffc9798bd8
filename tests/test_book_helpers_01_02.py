"""Tests of the book helpers added for chapters 01–02 (``tucker_attention.book.figure_widget``)."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest

from tucker_attention import book

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _controls():
    return {"a": widgets.IntSlider(value=2, min=1, max=5), "label": widgets.Dropdown(options=["x", "y"], value="x")}


def test_figure_widget_draws_default_state_as_png_and_redraws_on_change():
    calls = []

    def draw(a, label):
        calls.append((a, label))
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot(range(a + 1))
        ax.set_title(label)
        return fig

    open_before = set(plt.get_fignums())
    box = book.figure_widget(draw, _controls(), columns=2)
    assert isinstance(box, widgets.VBox) and box.children[1] is box.image
    assert calls == [(2, "x")]                                   # the default state is drawn once, at creation
    first = bytes(box.image.value)                               # the widget keeps a memoryview
    assert first.startswith(PNG_SIGNATURE) and box.image.format == "png"
    assert set(plt.get_fignums()) == open_before                 # the figure was closed, not left to show twice

    box.controls["a"].value = 4
    assert calls[-1] == (4, "x")
    assert bytes(box.image.value).startswith(PNG_SIGNATURE) and bytes(box.image.value) != first
    box.controls["label"].value = "y"
    assert calls[-1] == (4, "y")
    assert set(plt.get_fignums()) == open_before


def test_figure_widget_rejects_a_draw_that_returns_no_figure():
    with pytest.raises(TypeError, match="draw must return a matplotlib Figure.*NoneType"):
        book.figure_widget(lambda a, label: None, _controls())


@pytest.mark.parametrize("controls", [{}, [widgets.IntSlider()], {"a": widgets.Button(description="not a control")}])
def test_figure_widget_rejects_bad_controls(controls):
    with pytest.raises(TypeError, match="controls"):
        book.figure_widget(lambda **kw: plt.figure(), controls)
