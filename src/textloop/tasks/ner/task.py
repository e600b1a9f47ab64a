"""Named-entity recognition (token classification) with exact word-piece alignment.

Each sentence is tokenized once into word pieces (the fast tokenizer's ``word_ids()``). A word's
label sits on its first piece; the other pieces are ignored by the loss (-100). A sentence longer
than the window (``train.max_seq_len`` minus special tokens) is cut into windows of whole words
that overlap by ``ner.window_overlap`` tokens, and every word is *owned* by exactly one window,
the one where it is most central: only there is it trained on and predicted, so no word is
dropped or counted twice. Word scores are decoded under IOB2 constraints (Viterbi), mapped back to
words and to character offsets, and scored with seqeval in strict IOB2 mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from textloop.errors import DataError
from textloop.tasks.base import Encoded, Task, eval_batches, pad_inputs
from textloop.tasks.ner.data import Sentence, read_ner, split_words
from textloop.tasks.ner.metrics import NEG, entity_metrics, error_kinds, iob2_constraints, viterbi
from textloop.tasks.ner.schemes import split_tag, tags_to_spans, to_iob2
from textloop.tasks.windows import SpecialTemplate, special_template, window_owners, word_windows

METRIC_NAMES = ("f1", "precision", "recall", "macro_f1", "token_accuracy")  # first = default
LOWER_IS_BETTER: tuple[str, ...] = ()
LORA_DEFAULT = False  # encoders train in full unless lora.enabled is true


@dataclass
class NerTask(Task):
    """Token classification over IOB2 tags with a linear head on every token."""

    token_weighted: ClassVar[bool] = True
    tokenizer: Any
    labels: list[str]  # "O", then B-/I- for each entity type
    max_seq_len: int
    window_overlap: int = 32
    name: str = "ner"
    metric_names: tuple[str, ...] = METRIC_NAMES
    head_prefixes: tuple[str, ...] = ("classifier",)
    template: SpecialTemplate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.template = special_template(self.tokenizer, pair=False)
        self._index = {tag: i for i, tag in enumerate(self.labels)}
        self._start, self._trans = iob2_constraints(self.labels)
        self._markers: dict[int, bool] = {}

    @property
    def capacity(self) -> int:
        """Word pieces one window holds."""
        return self.max_seq_len - self.template.n_special

    # ---- preprocessing -------------------------------------------------------------------
    def _is_marker(self, piece: int) -> bool:
        """A piece that is only a word-boundary marker (SentencePiece's bare ``▁``)."""
        if piece not in self._markers:
            self._markers[piece] = self.tokenizer.decode([piece]).strip() == ""
        return self._markers[piece]

    def word_pieces(self, sentences: Sequence[Sentence]) -> list[list[list[int]]]:
        """For each sentence, the piece ids of each word (empty for a word the tokenizer drops).

        A metaspace tokenizer (XLM-R, e5) starts every word with ``▁``, often as a bare piece
        before the word's characters. A word written against the previous one in the text (the
        characters of Chinese character-level NER) loses that bare piece: it stood for a space
        the text does not have, and the word's label belongs on its first real piece."""
        if not sentences:
            return []
        enc = self.tokenizer(
            [s.words for s in sentences],
            is_split_into_words=True,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long inputs are windowed here, not truncated
        )
        out = []
        for i, s in enumerate(sentences):
            pieces: list[list[int]] = [[] for _ in s.words]
            for tok, w in zip(enc["input_ids"][i], enc.word_ids(i)):
                if w is not None:
                    pieces[w].append(tok)
            assert s.offsets is not None  # set by Sentence itself
            for w, p in enumerate(pieces):
                start = s.offsets[w][0]
                attached = w > 0 and start > 0 and not s.text[start - 1].isspace()
                if attached and len(p) > 1 and self._is_marker(p[0]):
                    del p[0]
            out.append(pieces)
        return out

    def encode(
        self, sentences: Sequence[Sentence], labelled: bool = True
    ) -> tuple[Encoded, dict[str, Any]]:
        """Windows of word pieces with targets on owned first pieces; and encoding statistics."""
        cap, unk = self.capacity, self.tokenizer.unk_token_id
        data = Encoded(input_ids=[], targets=[], extra={"owned": [], "window_sentence": []})
        data.extra["sentences"] = list(sentences)
        stats: Counter[str] = Counter()
        for si, (s, pieces) in enumerate(zip(sentences, self.word_pieces(sentences))):
            lengths = [min(len(p), cap) for p in pieces]
            stats["words"] += len(s.words)
            stats["unknown_words"] += sum(1 for p in pieces if unk in p)
            stats["words_without_pieces"] += sum(1 for n in lengths if n == 0)
            stats["words_cut"] += sum(1 for p in pieces if len(p) > cap)
            windows = word_windows(lengths, cap, self.window_overlap)
            owners = window_owners(lengths, windows)
            stats["split_sentences"] += len(windows) > 1
            for wi, (a, b) in enumerate(windows):
                body: list[int] = []
                owned: list[tuple[int, int]] = []
                for w in range(a, b):
                    if owners[w] == wi and lengths[w]:
                        owned.append((len(body), w))
                    body.extend(pieces[w][:cap])
                ids, _, offset, _ = self.template.build(body)
                owned = [(offset + pos, w) for pos, w in owned]
                targets = [-100] * len(ids)
                if labelled:
                    for pos, w in owned:
                        # a type the training data never had cannot be learned: left out of the
                        # loss, still scored (as missed) by the entity metrics
                        targets[pos] = self._index.get(s.tags[w], -100)
                data.input_ids.append(ids)
                data.targets.append(targets)
                data.extra["owned"].append(owned)
                data.extra["window_sentence"].append(si)
        data.n_truncated = stats["words_cut"]
        data.locations = [s.location for s in sentences]
        stats["windows"] = len(data)
        stats["unknown_rate"] = stats["unknown_words"] / max(1, stats["words"])  # type: ignore[assignment]
        return data, dict(stats)

    # ---- model ---------------------------------------------------------------------------
    def build_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            model_dir,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id=dict(self._index),
        )

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(model_dir)

    def collate(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = pad_inputs(data, indices, self.tokenizer.pad_token_id or 0)
        if data.targets:
            targets = torch.full_like(batch["input_ids"], -100)
            for row, i in enumerate(indices):
                targets[row, : len(data.targets[i])] = torch.as_tensor(data.targets[i])
            batch["targets"] = targets
        return batch

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The labelled tokens ``training_loss`` averages over (the driver weights by them)."""
        return (batch["targets"] != -100).sum()

    def training_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = batch.pop("targets")
        logits = model(**batch).logits.float()  # (B, T, C)
        if not bool((targets != -100).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    # ---- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def word_log_probs(
        self, model: torch.nn.Module, data: Encoded, batch_size: int
    ) -> tuple[list[np.ndarray], float]:
        """Per sentence, (n_words, n_labels) log-probabilities from each word's owning window;
        and the mean loss over labelled words."""
        sentences: list[Sentence] = data.extra["sentences"]
        no_pieces = np.full(len(self.labels), NEG)
        no_pieces[self._index["O"]] = 0.0  # a word the tokenizer drops is predicted O
        scores = [np.tile(no_pieces, (len(s.words), 1)) for s in sentences]
        loss_sum, n_loss = 0.0, 0
        for idx, inputs, targets in eval_batches(self, model, data, batch_size):
            logp = torch.log_softmax(model(**inputs).logits.float(), -1)  # (B, T, C)
            if targets is not None:
                mask = targets != -100
                nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                loss_sum += float(nll[mask].sum())
                n_loss += int(mask.sum())
            arr = logp.cpu().numpy()
            for row, i in enumerate(idx):
                sent = scores[data.extra["window_sentence"][i]]
                for pos, w in data.extra["owned"][i]:
                    sent[w] = arr[row, pos]
        return scores, loss_sum / max(1, n_loss)

    def decode(self, log_probs: np.ndarray) -> tuple[list[str], list[float]]:
        """Valid IOB2 tags of one sentence (constrained Viterbi) and each chosen tag's probability."""
        path = viterbi(log_probs, self._start, self._trans)
        probs = [float(np.exp(log_probs[i, j])) for i, j in enumerate(path)]
        return [self.labels[j] for j in path], probs

    def evaluate(
        self,
        model: torch.nn.Module,
        data: Encoded,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        sentences: list[Sentence] = data.extra["sentences"]
        scores, loss = self.word_log_probs(model, data, batch_size)
        pred = [self.decode(sc)[0] for sc in scores]
        gold = [s.tags for s in sentences]
        metrics = entity_metrics(gold, pred)
        metrics["errors"] = error_kinds(sentences, gold, pred)
        known = {t for t in (split_tag(x)[1] for x in self.labels) if t}
        unseen = sorted({t for g in gold for x in g if (t := split_tag(x)[1]) and t not in known})
        if unseen:
            metrics["types_not_in_training"] = unseen
        metrics["loss"] = loss
        return metrics

    def predict(
        self,
        model: torch.nn.Module,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        top_k: int = 1,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """Entities in raw texts: type, text, character offsets ``[start, end)`` and a score.

        The score is the mean probability of the entity's word tags. ``top_k`` is ignored.

        Example:
            >>> run.predict(["Angela Merkel visited Paris."])
            [{'entities': [{'type': 'PER', 'text': 'Angela Merkel', 'start': 0, 'end': 13,
               'score': 0.98}, {'type': 'LOC', 'text': 'Paris', 'start': 22, 'end': 27, ...}]}]
        """
        if pairs is not None:
            raise DataError("a NER model reads single texts; second texts are not supported")
        sentences = []
        for i, text in enumerate(texts):
            words, offsets = split_words(text)
            sentences.append(Sentence(words, [], f"input {i + 1}", text, offsets))
        data, _ = self.encode([s for s in sentences if s.words], labelled=False)
        data.targets = []
        scores = iter(self.word_log_probs(model, data, batch_size)[0])
        results = []
        for s in sentences:
            entities = []
            if s.words:
                tags, probs = self.decode(next(scores))
                assert s.offsets is not None
                for a, b, etype in tags_to_spans(tags, "IOB2"):
                    start, end = s.offsets[a][0], s.offsets[b - 1][1]
                    entities.append(
                        {
                            "type": etype,
                            "text": s.text[start:end],
                            "start": start,
                            "end": end,
                            "score": round(sum(probs[a:b]) / (b - a), 6),
                        }
                    )
            results.append({"entities": entities})
        return results

    def encode_source(self, source: str, columns: dict[str, Any], drop_invalid: bool) -> Encoded:
        sentences = read_ner(source, columns)
        to_iob2(sentences, columns.get("tag_scheme") or "auto", source)
        return self.encode(sentences)[0]

    def state(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "labels": self.labels,
            "max_seq_len": self.max_seq_len,
            "window_overlap": self.window_overlap,
        }


def task_from_state(state: dict[str, Any], tokenizer: Any) -> NerTask:
    """Rebuild the task a finished run used from its ``labels.json``."""
    return NerTask(
        tokenizer=tokenizer,
        labels=state["labels"],
        max_seq_len=state["max_seq_len"],
        window_overlap=state.get("window_overlap", 32),
    )
