"""The validation curves figure: the method phase in its own panel with a y range from its values,
the scratch runs' whole schedule beside it, the subject black, thick and first in the legend."""

from __future__ import annotations

from pipeline.evaluation.plots import pyplot
from pipeline.report.figures import _curves
from pipeline.report.summary import summarise
from tests.reference.test_reference_report import labels_of, record


def with_curve(r: dict, epochs: list[int], values: list[float]) -> dict:
    return {**r, "curve": {"epoch": epochs, "val_acc": values, "epoch_seconds": [1.0] * len(epochs)}}


def curves_figure(scratch: bool):
    recs = []
    for s in range(2):
        recs += [with_curve(record("ce", s, 0.5, 0.5), [10, 11], [0.60, 0.62]),
                 with_curve(record("meta_iada", s, 0.6, 0.6), [10, 11], [0.64, 0.66]),
                 with_curve(record("la", s, 0.55, 0.55), [10, 11], [0.61, 0.65])]
        if scratch:  # from 0.20 at epoch 0: on one axis it squeezed the method phase into a few pixels
            recs.append(with_curve(record("la-scratch", s, 0.55, 0.55, method="la", protocol="scratch"),
                                   list(range(12)), [0.20 + 0.04 * e for e in range(12)]))
    labels = labels_of(*recs)
    return _curves(pyplot(), "exp", labels, summarise(labels, "meta_iada"))


def test_the_method_phase_has_its_own_y_range_and_the_scratch_schedule_its_own_panel():
    fig = curves_figure(scratch=True)
    main, whole = fig.axes
    low, high = main.get_ylim()
    assert 55 < low < 60 and 66 < high < 70  # from the method phase's values (60-66 %), not the scratch run's 20 %
    assert main.get_xlim()[0] >= 9.5  # epochs 10-11 only
    assert "axis from" in main.get_ylabel() and f"{low:.1f}" in main.get_ylabel()
    scratch, start = whole.get_lines()  # la-scratch over its whole schedule, and where the method phase starts
    assert list(scratch.get_xdata()) == list(range(12)) and list(start.get_xdata()) == [10, 10]


def test_the_subject_is_black_thick_on_top_and_first_in_the_legend():
    fig = curves_figure(scratch=False)
    [main] = fig.axes
    lines = {line.get_label().split()[0]: line for line in main.get_lines()}
    subject = lines["meta_iada"]
    assert subject.get_color() == "black" and subject.get_zorder() > max(
        line.get_zorder() for name, line in lines.items() if name != "meta_iada")
    assert subject.get_linewidth() > max(line.get_linewidth() for name, line in lines.items() if name != "meta_iada")
    texts = fig.legends[0].get_texts()
    assert texts[0].get_text() == "meta_iada  66.0" and texts[0].get_fontweight() == "bold"
    assert [t.get_text().split()[0] for t in texts] == ["meta_iada", "la", "ce"]  # then the ranking
