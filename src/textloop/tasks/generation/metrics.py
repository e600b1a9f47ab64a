"""Generation metrics from the libraries the field trusts: sacrebleu (BLEU, chrF) and rouge-score.

- BLEU (Papineni et al. 2002): sacrebleu's corpus BLEU, 13a tokenization, 0-100.
- chrF (Popović 2015): sacrebleu's corpus chrF (character 6-grams, beta 2), 0-100.
- ROUGE-1/2/L (Lin 2004): rouge-score F-measure per example, averaged, 0-1, Porter stemming.
- perplexity: exp of the mean token negative log-likelihood, from the evaluation loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textloop.errors import ConfigError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``, capped so a diverged model reports a huge number instead of inf."""
    return math.exp(min(mean_nll, 50.0))


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU, chrF and ROUGE-1/2/L of predictions against one reference each.

    Raises:
        ConfigError: sacrebleu or rouge-score is not installed.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {}
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(
            "generation metrics need sacrebleu and rouge-score: "
            "pip install 'sacrebleu>=2.4' 'rouge-score>=0.1.2'"
        ) from None
    preds, refs = list(predictions), list(references)
    out = {
        "bleu": float(sacrebleu.corpus_bleu(preds, [refs]).score),
        "chrf": float(sacrebleu.corpus_chrf(preds, [refs]).score),
    }
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for p, r in zip(preds, refs):
        scores = scorer.score(r, p)  # (target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    out.update({k: v / len(preds) for k, v in sums.items()})
    return out
