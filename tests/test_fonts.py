"""Plots of labels in scripts the default font lacks (Chinese categories): no empty boxes."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from textloop.evaluation import fonts
from textloop.evaluation.report import write_report

LABELS = ["书籍", "平板", "手机"]
METRICS = {
    "test": {
        "n": 6,
        "accuracy": 0.5,
        "macro_f1": 0.5,
        "per_class": {
            lab: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for lab in LABELS
        },
        "confusion_matrix": [[1, 1, 0], [0, 1, 1], [1, 0, 1]],
    }
}


def _glyph_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "missing from font" in str(w.message)]


def test_latin_labels_keep_the_default_font() -> None:
    ticks, font, key = fonts.label_ticks(["pos", "neg"])
    assert ticks == ["pos", "neg"] and key is None and font is not None


def test_without_a_cjk_font_the_ticks_are_numbered_and_the_report_has_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fonts, "covering_font", lambda labels: None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        write_report(tmp_path, METRICS, LABELS)
    assert _glyph_warnings(record) == []  # nothing drawn as empty boxes
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "#0 = 书籍, #1 = 平板, #2 = 手机" in report
    assert (tmp_path / "plots" / "confusion_test.png").is_file()


def test_an_installed_cjk_font_draws_the_labels(tmp_path: Path) -> None:
    path = fonts.covering_font(LABELS)
    if path is None:
        pytest.skip("no installed font has CJK characters (Debian: fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        write_report(tmp_path, METRICS, LABELS)
    assert _glyph_warnings(record) == []
    assert "Labels by number" not in (tmp_path / "report.md").read_text(encoding="utf-8")
