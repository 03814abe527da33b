"""`ncgeo.plotting.plot_gram_comparison`: values in the cells only when they fit, a colour bar, class ticks."""

from __future__ import annotations

import pytest

from ncgeo.geometry import etf_gram
from ncgeo.plotting import plot_gram_comparison


@pytest.mark.parametrize("k, written", [(4, True), (10, False)])
def test_cell_values_only_when_they_fit(k, written, tmp_path):
    figure = plot_gram_comparison(etf_gram(k), etf_gram(k), tmp_path / "g.png", title="t")
    heatmaps = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    assert len(heatmaps) == 2
    for axis in heatmaps:
        assert len(axis.texts) == (k * k if written else 0)
        assert list(axis.get_xticks()) == list(range(k)) and list(axis.get_yticks()) == list(range(k))
    colourbar = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(colourbar) == 1 and colourbar[0].get_ylabel() == "cosine"
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    if written:
        assert {text.get_text() for text in heatmaps[0].texts} == {"1.00", "-0.33"}
