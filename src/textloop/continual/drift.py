"""Drift tests between a reference window and a recent window of texts.

Three two-sample tests, each with a p-value and an effect size:

- **input drift**: maximum mean discrepancy (MMD, Gretton et al. 2012, JMLR 13) between the
  model's sentence embeddings of the two windows, Gaussian kernel with the median-distance
  bandwidth, p-value from a permutation test;
- **prediction drift**: chi-square test of the predicted-label counts (effect: Cramér's V);
- **confidence drift**: two-sample Kolmogorov-Smirnov test of the top-class confidence
  (effect: the KS statistic D).

The verdict fires when any test's p-value is below ``alpha / k`` (Bonferroni over the ``k``
tests that ran), so the whole verdict keeps its false-alarm rate at or below ``alpha``.
Out-of-vocabulary and unseen-label rates are reported beside it, not tested.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Window:
    """One window of traffic as the drift tests see it.

    Attributes:
        predicted: the predicted label of each text.
        confidence: the top-class probability of each text.
        embeddings: (N, H) sentence embeddings from the model, or None (input test skipped).
        texts: the texts (for the out-of-vocabulary rate), or None.
        unk_rate: share of the model's tokens that are its unknown token, or None.
        feedback_labels: labels users sent as feedback in this window (for the unseen rate).
        description: where the window comes from.
    """

    predicted: list[str]
    confidence: np.ndarray
    embeddings: np.ndarray | None = None
    texts: list[str] | None = None
    unk_rate: float | None = None
    feedback_labels: list[str] = field(default_factory=list)
    description: str = ""

    def __len__(self) -> int:
        return len(self.predicted)


# ---- tests ---------------------------------------------------------------------------------
def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = (z * z).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, n_permutations: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Unbiased MMD² between samples ``x`` (N, H) and ``y`` (M, H) with a permutation p-value.

    The kernel matrix of the pooled sample is computed once; each permutation re-labels rows,
    so the cost is one (N+M)² matrix plus ``n_permutations`` matrix-vector products.

    Returns:
        ``{"statistic": MMD², "p_value", "bandwidth", "null": [MMD² under permutations]}``.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(z)
    d2 = _sq_distances(z)
    upper = d2[np.triu_indices(total, 1)]
    bandwidth2 = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    k = np.exp(-d2 / bandwidth2)
    np.fill_diagonal(k, 0.0)  # the unbiased estimate leaves out i == j

    def mmd2(assign: np.ndarray) -> np.ndarray:
        # assign: (P, total) with 1.0 for rows in the first sample
        a, b = assign, 1.0 - assign
        ka = a @ k  # (P, total)
        kb = b @ k
        s_xx = (ka * a).sum(1)
        s_yy = (kb * b).sum(1)
        s_xy = (ka * b).sum(1)
        m = total - n
        return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)

    observed = float(mmd2(np.concatenate([np.ones(n), np.zeros(total - n)])[None, :])[0])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, n_permutations, 100):
        size = min(100, n_permutations - start)
        assign = np.zeros((size, total))
        for row in assign:
            row[rng.permutation(total)[:n]] = 1.0
        null.append(mmd2(assign))
    null_arr = np.concatenate(null) if null else np.zeros(0)
    p = (1 + int((null_arr >= observed).sum())) / (1 + len(null_arr))
    return {
        "statistic": observed,
        "p_value": p,
        "bandwidth": float(np.sqrt(bandwidth2)),
        "null": null_arr.tolist(),
    }


def label_shift_test(reference: Sequence[str], current: Sequence[str]) -> dict[str, Any]:
    """Chi-square test of two label samples' counts; effect size Cramér's V."""
    from scipy.stats import chi2_contingency

    ref, cur = Counter(reference), Counter(current)
    labels = sorted(set(ref) | set(cur))
    dist = {
        "labels": labels,
        "reference": [ref[lab] / max(1, len(reference)) for lab in labels],
        "current": [cur[lab] / max(1, len(current)) for lab in labels],
    }
    if len(labels) < 2:
        return {"statistic": 0.0, "p_value": 1.0, "cramers_v": 0.0, "distribution": dist}
    table = np.array([[ref[lab] for lab in labels], [cur[lab] for lab in labels]])
    chi2, p, dof, _ = chi2_contingency(table, correction=False)
    v = float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
    return {
        "statistic": float(chi2),
        "p_value": float(p),
        "dof": int(dof),
        "cramers_v": v,
        "distribution": dist,
    }


def confidence_shift_test(reference: np.ndarray, current: np.ndarray) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of the confidences; effect size D."""
    from scipy.stats import ks_2samp

    res = ks_2samp(reference, current)
    return {
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "mean_reference": float(np.mean(reference)),
        "mean_current": float(np.mean(current)),
    }


def oov_rate(reference_texts: Sequence[str], texts: Sequence[str]) -> float:
    """Share of word tokens in ``texts`` never seen in ``reference_texts`` (lower-cased)."""
    vocab = {w for t in reference_texts for w in _WORD.findall(t.lower())}
    words = [w for t in texts for w in _WORD.findall(t.lower())]
    return sum(w not in vocab for w in words) / max(1, len(words))


# ---- report --------------------------------------------------------------------------------
def drift_report(
    reference: Window,
    current: Window,
    known_labels: Sequence[str],
    alpha: float = 0.05,
    n_permutations: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Run every drift test that the two windows allow and decide.

    Args:
        reference: the window traffic is compared against (training-like data).
        current: the recent window.
        known_labels: the model's label set (feedback labels outside it are 'unseen').
        alpha: false-alarm rate of the whole verdict.
        n_permutations: permutations of the MMD test (p-values are no finer than 1/(P+1)).
        seed: seed of the permutations.

    Returns:
        A JSON-able report: ``tests`` (each with p-value and effect size), ``rates``, and
        ``verdict`` = ``{"drift": bool, "fired": [...], "alpha", "alpha_per_test"}``.
    """
    tests: dict[str, Any] = {}
    if reference.embeddings is not None and current.embeddings is not None:
        res = mmd_permutation_test(reference.embeddings, current.embeddings, n_permutations, seed)
        tests["input"] = {"test": "mmd_permutation", "effect_size": res["statistic"], **res}
    else:
        tests["input"] = {"skipped": "no texts in one window (log texts with --log-text)"}
    lab = label_shift_test(reference.predicted, current.predicted)
    tests["prediction"] = {"test": "chi_square", "effect_size": lab["cramers_v"], **lab}
    conf = confidence_shift_test(reference.confidence, current.confidence)
    tests["confidence"] = {"test": "kolmogorov_smirnov", "effect_size": conf["statistic"], **conf}

    ran = [name for name, t in tests.items() if "p_value" in t]
    per_test = alpha / max(1, len(ran))
    fired = [name for name in ran if tests[name]["p_value"] < per_test]
    rates: dict[str, Any] = {}
    if reference.texts is not None and current.texts is not None:
        # both against the same half of the reference, so the vocabularies are the same size;
        # the other half's rate is what 'no shift' looks like
        half = len(reference.texts) // 2
        rates["oov_rate"] = oov_rate(reference.texts[:half], current.texts)
        rates["oov_rate_baseline"] = oov_rate(reference.texts[:half], reference.texts[half:])
    if current.unk_rate is not None:
        rates["unk_token_rate"] = current.unk_rate
        rates["unk_token_rate_reference"] = reference.unk_rate
    known = set(known_labels)
    unseen = [x for x in current.feedback_labels if x not in known]
    rates["feedback"] = len(current.feedback_labels)
    rates["unseen_label_rate"] = len(unseen) / max(1, len(current.feedback_labels))
    rates["unseen_labels"] = sorted(set(unseen))
    return {
        "reference": {"n": len(reference), "source": reference.description},
        "current": {"n": len(current), "source": current.description},
        "tests": tests,
        "rates": rates,
        "verdict": {
            "drift": bool(fired),
            "fired": fired,
            "alpha": alpha,
            "alpha_per_test": per_test,
            "new_labels": rates["unseen_labels"],
        },
    }


def plot_report(report: dict[str, Any], path: Any) -> None:
    """Three panels: the MMD null distribution, predicted-label shares, confidence histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textloop.evaluation.fonts import label_ticks

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    t = report["tests"]
    ax = axes[0]
    if "null" in t["input"]:
        ax.hist(t["input"]["null"], bins=40, color="#999999", label="permutation null")
        ax.axvline(t["input"]["statistic"], color="#d62728", label="observed")
        ax.set_title(f"input drift: MMD² (p={t['input']['p_value']:.3g})")
        ax.legend()
    else:
        ax.set_title("input drift: skipped (no texts)")
    ax = axes[1]
    dist = t["prediction"]["distribution"]
    x = np.arange(len(dist["labels"]))
    ax.bar(x - 0.2, dist["reference"], 0.4, label="reference")
    ax.bar(x + 0.2, dist["current"], 0.4, label="current")
    ticks, font, key = label_ticks(dist["labels"])
    ax.set_xticks(x, ticks, rotation=45, ha="right", fontproperties=font)
    if key is not None:  # the key's characters cannot be drawn either: the report lists them
        ax.set_xlabel("#i = the i-th label of tests.prediction.distribution.labels", fontsize=7)
    ax.set_title(f"predicted labels (p={t['prediction']['p_value']:.3g})")
    ax.legend()
    ax = axes[2]
    conf = report.get("_confidences", {})
    if conf:
        both = np.concatenate([conf["reference"], conf["current"]])
        bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 30)
        ax.hist(conf["reference"], bins=bins, alpha=0.6, density=True, label="reference")
        ax.hist(conf["current"], bins=bins, alpha=0.6, density=True, label="current")
        ax.legend()
    ax.set_title(f"confidence (KS p={t['confidence']['p_value']:.3g})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_markdown(report: dict[str, Any]) -> str:
    """A short human summary of a drift report."""
    v = report["verdict"]
    lines = [
        f"# Drift report: {'DRIFT' if v['drift'] else 'no drift'}",
        "",
        f"- reference: {report['reference']['source']} (n={report['reference']['n']})",
        f"- current: {report['current']['source']} (n={report['current']['n']})",
        f"- alpha {v['alpha']} (Bonferroni: {v['alpha_per_test']:.4g} per test); fired: "
        + (", ".join(v["fired"]) or "none"),
        "",
        "| test | method | statistic | effect size | p-value |",
        "|---|---|---|---|---|",
    ]
    for name, t in report["tests"].items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} | | | |")
            continue
        lines.append(
            f"| {name} | {t['test']} | {t['statistic']:.4g} | {t['effect_size']:.4g} | "
            f"{t['p_value']:.4g} |"
        )
    lines += ["", "| rate | value |", "|---|---|"]
    for key, value in report["rates"].items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    lines += ["", "![drift](drift.png)", ""]
    return "\n".join(lines)
