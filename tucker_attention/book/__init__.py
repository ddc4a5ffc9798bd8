"""Helpers the book's chapters share: ``from tucker_attention import book`` (or ``ta.book``) gives them all.

Only presentation lives here. Every number a helper draws comes from the package proper
(``tucker_attention.counting`` for parameters and KV caches, the layers themselves for tensors), so a
chapter that uses a helper still computes what it shows. The helpers live in four modules, by what they
hold, and are all re-exported here:

- ``book.records``: device and problem sizes (``pick_device``, ``scale_for_device``, ``environment``),
  recorded runs (``results_dir``, ``load_results``), text tables, ``capture_attention``, and the
  configurations the chapters compare. A *configuration* is ``(label, method, sizes)``, where ``method``
  and ``sizes`` are exactly the arguments of ``counting.attention_params``
  (e.g. ``("Tucker [8,128,64]", "tucker", {"ranks": (8, 128, 64)})``).
- ``book.figures``: drawing functions that take a matplotlib ``Axes`` or return a ``Figure`` and never
  call ``plt.show()``; methods keep one colour across the book (``METHOD_COLORS``).
- ``book.widgets``: ipywidgets whose default state is already a complete figure (the static site shows
  that saved state).
- ``book.experiments``: the evidence chapters' recorded sweeps (``load_sweep``, curves, ``pareto_front``,
  the bars ``budget_bar`` / ``dominance_bar``), their figures and rank widget, and trained attention
  weights with their unfolding spectra at initialization and after training.

The RoPE curve the chapter on latent RoPE plots is package maths: ``attention.rope.rope_relative_scores``
(re-exported here). Nothing in the package imports this subpackage; it imports matplotlib and ipywidgets
(the ``book`` extra) lazily, inside the functions that draw, so ``import tucker_attention`` needs neither.
"""

from __future__ import annotations

from ..attention.rope import rope_relative_scores
from . import experiments, figures, records, widgets
from .experiments import *  # noqa: F403
from .figures import *  # noqa: F403
from .records import *  # noqa: F403
from .widgets import *  # noqa: F403

__all__ = [*records.__all__, *figures.__all__, *widgets.__all__, *experiments.__all__, "rope_relative_scores"]
