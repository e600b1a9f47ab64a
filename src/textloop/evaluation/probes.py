"""Counterfactual bias probes: swap identity terms within a group and watch the prediction.

A probe file (YAML, see ``configs/probes/identity_en.yaml``) lists term *groups*. A group's
*variants* are interchangeable identities (``male``/``female``, ``John``/``Mary``/``Wei``);
each variant lists its *forms*, aligned by position across variants, so ``his`` (male form 2)
becomes ``her`` (female form 2). ``terms: [a, b, c]`` is short for one-form variants.

Texts come from the audited data file (real sentences: every text holding a group term is
rewritten into each other variant) and from the probe file's ``templates`` (``{group}`` takes a
variant's first form, ``{group:N}`` its form N; each template is filled once per variant).
Terms match case-insensitively on word boundaries (none for CJK characters, which have no
spaces), multi-word terms match across any whitespace, and the replacement takes the case of
the text it replaces (``He`` -> ``She``, ``HE`` -> ``SHE``).

Per group the audit reports the prediction flip rate over (original, counterfactual) pairs, the
mean and worst score gap (the largest change in any class probability), which examples flip,
and the label mix per variant. (Garg et al. 2019, "Counterfactual Fairness in Text
Classification through Robustness"; Dixon et al. 2018 for templates.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from textloop.config import read_yaml, validate_tree

_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\d+))?\}")
MAX_SHOWN_FLIPS = 20


class ProbeGroup(BaseModel):
    """One group of interchangeable identity terms."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(None, description="What the group probes.")
    terms: list[str] | None = Field(None, description="Single terms, each its own variant.")
    variants: dict[str, list[str]] | None = Field(
        None, description="Variant name -> forms, aligned by position across variants."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ProbeGroup:
        if (self.terms is None) == (self.variants is None):
            raise ValueError("give either 'terms' or 'variants'")
        forms = self.forms()
        if len(forms) < 2:
            raise ValueError("needs at least two variants to swap between")
        lengths = {len(f) for f in forms.values()}
        if len(lengths) > 1 or 0 in lengths:
            raise ValueError(
                "every variant needs the same number of forms (they are swapped by position); "
                + ", ".join(f"{k}: {len(v)}" for k, v in forms.items())
            )
        if any(not f.strip() for fs in forms.values() for f in fs):
            raise ValueError("empty term")
        return self

    def forms(self) -> dict[str, list[str]]:
        """Variant name -> its forms."""
        if self.variants is not None:
            return self.variants
        return {t: [t] for t in self.terms or []}


class ProbeFile(BaseModel):
    """A probe file: term groups, plus optional templates and sentences."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field("en", description="Language of the terms and templates.")
    description: str | None = Field(None, description="What the file probes.")
    groups: dict[str, ProbeGroup] = Field(description="Group name -> its terms.")
    templates: list[str] = Field(
        default_factory=list, description="Sentences with {group} or {group:N} placeholders."
    )
    sentences: list[str] = Field(
        default_factory=list, description="Extra real sentences holding group terms."
    )

    @model_validator(mode="after")
    def _placeholders_known(self) -> ProbeFile:
        if not self.groups:
            raise ValueError("no groups")
        for i, tpl in enumerate(self.templates):
            found = _PLACEHOLDER.findall(tpl)
            if not found:
                raise ValueError(f"templates.{i}: no {{group}} placeholder in {tpl!r}")
            for name, form in found:
                if name not in self.groups:
                    raise ValueError(
                        f"templates.{i}: unknown group {name!r}; groups are: "
                        + ", ".join(self.groups)
                    )
                n_forms = len(next(iter(self.groups[name].forms().values())))
                if form and int(form) >= n_forms:
                    raise ValueError(
                        f"templates.{i}: {{{name}:{form}}} but group {name!r} has {n_forms} forms"
                    )
        return self


def load_probes(path: str | Path) -> ProbeFile:
    """Read and validate a probe file, reporting every problem at once.

    Raises:
        ConfigError: missing file, bad YAML, or invalid groups/templates (with key paths).
    """
    return validate_tree(ProbeFile, read_yaml(path), str(path))


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\u3040" <= ch <= "\u30ff"


def _term_pattern(term: str) -> str:
    body = r"\s+".join(re.escape(w) for w in term.split())
    left = "" if _is_cjk(term[0]) else r"(?<!\w)"
    right = "" if _is_cjk(term[-1]) else r"(?!\w)"
    return left + body + right


def match_case(found: str, canonical: str, replacement: str) -> str:
    """Give ``replacement`` the case pattern of ``found`` (``canonical`` is the term as listed).

    Example:
        >>> match_case("He", "he", "she"), match_case("HIS", "his", "her"), match_case("john", "John", "Mary")
        ('She', 'HER', 'mary')
    """
    if found == canonical:
        return replacement
    if found.isupper() and len(found) > 1:
        return replacement.upper()
    if found.islower():
        return replacement.lower()
    if found[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


@dataclass
class GroupMatcher:
    """Finds a group's terms in text and rewrites them into another variant."""

    name: str
    forms: dict[str, list[str]]

    def __post_init__(self) -> None:
        self._lookup: dict[str, tuple[str, int]] = {}
        for variant, fs in self.forms.items():
            for i, f in enumerate(fs):
                self._lookup.setdefault(" ".join(f.lower().split()), (variant, i))
        terms = sorted({f for fs in self.forms.values() for f in fs}, key=len, reverse=True)
        self._regex = re.compile("|".join(_term_pattern(t) for t in terms), re.IGNORECASE)

    def find(self, text: str) -> list[tuple[int, int, str, int]]:
        """Matches as ``(start, end, variant, form index)``, left to right."""
        out = []
        for m in self._regex.finditer(text):
            variant, i = self._lookup[" ".join(m.group(0).lower().split())]
            out.append((m.start(), m.end(), variant, i))
        return out

    def rewrite(self, text: str, matches: Sequence[tuple[int, int, str, int]], into: str) -> str:
        """``text`` with every match replaced by the same form of variant ``into``."""
        parts, pos = [], 0
        for start, end, variant, i in matches:
            found = text[start:end]
            parts += [
                text[pos:start],
                match_case(found, self.forms[variant][i], self.forms[into][i]),
            ]
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def counterfactuals(self, text: str) -> list[tuple[str, list[tuple[str, str]]]]:
        """For each variant ``text`` mentions: ``(variant, [(other, rewritten text)])``.

        One variant is swapped at a time, into each variant the text does not already mention
        ("Mary met Wei" gives "John met Wei", not "John met John"), or, when it mentions them
        all, into each other one ("he ... his wife" gives "she ... her wife" and
        "he ... his husband").
        """
        matches = self.find(text)
        present = sorted({m[2] for m in matches})
        out = []
        for p in present:
            mine = [m for m in matches if m[2] == p]
            into = [v for v in self.forms if v not in present] or [v for v in self.forms if v != p]
            out.append((p, [(v, self.rewrite(text, mine, v)) for v in into]))
        return out


def fill_template(
    template: str, group: str, variant_forms: list[str], default_forms: dict[str, list[str]]
) -> str:
    """Fill ``{group}`` / ``{group:N}`` with ``variant_forms``; other groups take their first variant."""

    def sub(m: re.Match[str]) -> str:
        name, form = m.group(1), int(m.group(2) or 0)
        forms = variant_forms if name == group else default_forms[name]
        return forms[form]

    return _PLACEHOLDER.sub(sub, template)


def probe_cases(probes: ProbeFile, texts: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Group name -> cases; a case is ``{"source", "texts": [(variant, text, is_original)]}``."""
    first = {g: next(iter(grp.forms().values())) for g, grp in probes.groups.items()}
    cases: dict[str, list[dict[str, Any]]] = {}
    for name, group in probes.groups.items():
        forms = group.forms()
        matcher = GroupMatcher(name, forms)
        out = cases.setdefault(name, [])
        for src, items in (("data", texts), ("probe sentences", probes.sentences)):
            for text in items:
                for variant, cfs in matcher.counterfactuals(text):
                    texts_ = [(variant, text, True)] + [(v, t, False) for v, t in cfs]
                    out.append({"source": src, "texts": texts_})
        for tpl in probes.templates:
            if any(n == name for n, _ in _PLACEHOLDER.findall(tpl)):
                filled = [
                    (v, fill_template(tpl, name, fs, first), False) for v, fs in forms.items()
                ]
                out.append({"source": "template", "texts": filled})
    return cases


def _gap(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p - q).max())


def run_probes(
    probes: ProbeFile,
    texts: Sequence[str],
    predict_proba: Callable[[list[str]], np.ndarray],
    labels: Sequence[str],
    multi_label: bool = False,
) -> dict[str, Any]:
    """Flip rates and score gaps per group (see the module docstring).

    Args:
        probes: a validated probe file.
        texts: real sentences (the audited data); those holding no group term are ignored.
        predict_proba: texts -> (N, C) class probabilities.
        labels: class names in the model's order.
        multi_label: a prediction is the set of labels with probability >= 0.5.

    Returns:
        Group name -> ``n_cases``, ``n_pairs``, ``flip_rate``, ``mean_gap``, ``worst_gap``,
        ``worst`` (the pair with the largest gap), ``flipped`` (up to ``MAX_SHOWN_FLIPS``
        pairs), ``n_flipped``, ``by_variant`` (label shares), ``sources``.
    """
    cases = probe_cases(probes, texts)
    unique = sorted({t for cs in cases.values() for c in cs for _, t, _ in c["texts"]})
    probs = predict_proba(unique) if unique else np.zeros((0, len(labels)))
    row = {t: i for i, t in enumerate(unique)}

    def label_of(p: np.ndarray) -> str:
        if multi_label:
            return "|".join(lab for lab, x in zip(labels, p) if x >= 0.5) or "(none)"
        return labels[int(p.argmax())]

    report: dict[str, Any] = {}
    for name, cs in cases.items():
        gaps: list[float] = []
        flipped: list[dict[str, Any]] = []
        by_variant: dict[str, list[str]] = {}
        sources: dict[str, int] = {}
        worst: dict[str, Any] | None = None
        for case in cs:
            sources[case["source"]] = sources.get(case["source"], 0) + 1
            items = case["texts"]
            for v, t, _ in items:
                by_variant.setdefault(v, []).append(label_of(probs[row[t]]))
            if items[0][2]:
                pairs = [(items[0], b) for b in items[1:]]
            else:
                pairs = [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]
            for (va, ta, _), (vb, tb, _) in pairs:
                pa, pb = probs[row[ta]], probs[row[tb]]
                gap = _gap(pa, pb)
                gaps.append(gap)
                pair = {
                    "variant_a": va,
                    "text_a": ta,
                    "label_a": label_of(pa),
                    "variant_b": vb,
                    "text_b": tb,
                    "label_b": label_of(pb),
                    "gap": gap,
                    "source": case["source"],
                }
                if pair["label_a"] != pair["label_b"]:
                    flipped.append(pair)
                if worst is None or gap > worst["gap"]:
                    worst = pair
        report[name] = {
            "n_cases": len(cs),
            "n_pairs": len(gaps),
            "flip_rate": len(flipped) / len(gaps) if gaps else 0.0,
            "n_flipped": len(flipped),
            "mean_gap": float(np.mean(gaps)) if gaps else 0.0,
            "worst_gap": float(max(gaps)) if gaps else 0.0,
            "worst": worst,
            "flipped": sorted(flipped, key=lambda p: -p["gap"])[:MAX_SHOWN_FLIPS],
            "by_variant": {
                v: {
                    "n": len(ls),
                    "label_share": {lab: ls.count(lab) / len(ls) for lab in sorted(set(ls))},
                }
                for v, ls in by_variant.items()
            },
            "sources": sources,
        }
    return report
