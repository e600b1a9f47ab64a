"""Generation data: conversations read from pairs, chat files or chatterbot-corpus, rendered with
the tokenizer's chat template and tokenized with labels on the assistant tokens only.

Every example becomes a conversation, a list of ``{"role", "content"}`` messages:

- prompt/target pairs (csv, tsv, jsonl, parquet...): ``[system?, user: prompt, assistant: target]``;
- chat files (jsonl): a ``messages`` list per row, roles ``system`` / ``user`` / ``assistant``;
- ``builtin:chatterbot[:LANGUAGE[:CATEGORY,...]]``: chatterbot-corpus YAML (English by default),
  each conversation's utterances alternating user / assistant.

The conversation is rendered with the tokenizer's chat template (``DEFAULT_CHAT_TEMPLATE`` when it
has none) and each assistant turn's characters are found by rendering the conversation up to
that turn: tokens that start inside an assistant turn are targets; every other token (system,
user, role headers, padding) gets the label ``IGNORE`` (-100).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textloop.data.examples import select_columns
from textloop.data.readers import read_table
from textloop.errors import DataError, ModelError
from textloop.tasks.base import Encoded

IGNORE = -100  # label of tokens that carry no loss (prompt, padding): torch's ignore_index
ROLES = ("system", "user", "assistant")

# Used when a tokenizer has no chat template of its own (documented in docs/generation.md):
#   <|system|>\n{system}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n{answer}</s>\n
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

Message = dict[str, str]


@dataclass
class Conversations:
    """Conversations read from one source, each with its location for error messages."""

    source: str
    items: list[list[Message]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the default chat template if it has none. Returns True if it had one.

    Raises:
        ModelError: the tokenizer has neither a chat template nor an EOS token to end turns with.
    """
    if getattr(tokenizer, "chat_template", None):
        return True
    if tokenizer.eos_token is None:
        raise ModelError(
            "the tokenizer has no chat template and no eos_token to end turns with; "
            "save a tokenizer with a chat_template (or an eos_token) next to the model"
        )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return False


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The chat template applied to ``messages``, as text."""
    return str(
        tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    )


def pair_conversation(prompt: str, target: str | None, system: str | None) -> list[Message]:
    """``[system?, user: prompt, assistant: target?]``."""
    out: list[Message] = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": prompt})
    if target is not None:
        out.append({"role": "assistant", "content": target})
    return out


# ---- reading ------------------------------------------------------------------------------------
def _chatterbot_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "builtin:chatterbot needs the PyPI package chatterbot-corpus; install it with "
            "`pip install --no-deps chatterbot-corpus`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_chatterbot(source: str) -> Conversations:
    """Read ``builtin:chatterbot[:LANGUAGE[:CATEGORY,...]]`` (categories are YAML file stems).

    Raises:
        DataError: package missing, unknown language or category (the known ones are listed).
    """
    import yaml

    parts = source.split(":")
    language = parts[2] if len(parts) > 2 and parts[2] else "english"
    root = _chatterbot_dir()
    lang_dir = root / language
    if not lang_dir.is_dir():
        known = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir()))
        raise DataError(f"{source}: no chatterbot language {language!r}; languages: {known}")
    files = sorted(lang_dir.glob("*.yml"))
    if len(parts) > 3 and parts[3]:
        wanted = [c.strip() for c in parts[3].split(",") if c.strip()]
        stems = {f.stem: f for f in files}
        unknown = [c for c in wanted if c not in stems]
        if unknown:
            raise DataError(
                f"{source}: unknown chatterbot categories {', '.join(unknown)}; "
                f"{language} has: {', '.join(sorted(stems))}"
            )
        files = [stems[c] for c in wanted]
    out = Conversations(source=source)
    for path in files:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for n, conv in enumerate(tree.get("conversations") or []):
            turns = [str(t).strip() for t in (conv if isinstance(conv, list) else [conv])]
            turns = turns[: len(turns) // 2 * 2]  # a last question without an answer is dropped
            if not turns or not all(turns):
                out.dropped.setdefault("no answer", []).append(f"{path}:conversation {n}")
                continue
            roles = ["user", "assistant"] * (len(turns) // 2)
            out.items.append([{"role": r, "content": t} for r, t in zip(roles, turns)])
            out.locations.append(f"{path}:conversation {n}")
    if not out.items:
        raise DataError(f"{source}: no conversations found")
    return out


def _check_messages(cell: Any, column: str) -> list[Message] | str:
    """The messages of one cell, or a problem description."""
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError:
            return f"{column!r} is not a JSON list"
    if not isinstance(cell, list) or not cell:
        return f"{column!r} is not a non-empty list of messages"
    out: list[Message] = []
    for m in cell:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"a message without a role in {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return "a message with empty content"
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        return "no assistant message"
    return out


def read_conversations(
    source: str,
    columns: dict[str, Any],
    drop_invalid: bool,
    system: str | None = None,
    prompt_template: str = "{prompt}",
) -> Conversations:
    """Read any generation source into conversations.

    Args:
        source: file, directory, glob, or ``builtin:chatterbot...``.
        columns: ``prompt_column``, ``target_column``, ``messages_column`` (data config keys).
        drop_invalid: drop bad rows (recorded) instead of failing.
        system: system message prepended to pair conversations.
        prompt_template: how a pair's prompt is phrased, ``{prompt}`` standing for the cell.

    Raises:
        DataError: unreadable source, missing columns, invalid rows (named by file:line).
    """
    if source.startswith("builtin:chatterbot"):
        return read_chatterbot(source)
    table = read_table(source)
    out = Conversations(source=table.source)
    msg_col = columns.get("messages_column") or "messages"
    if any(msg_col in row for row in table.rows[:1000]):
        for row, loc in zip(table.rows, table.locations):
            got = _check_messages(row.get(msg_col), msg_col)
            if isinstance(got, str):
                out.dropped.setdefault(got, []).append(loc)
                continue
            out.items.append(got)
            out.locations.append(loc)
        if out.dropped and not drop_invalid:
            worst = max(out.dropped, key=lambda k: len(out.dropped[k]))
            rows = out.dropped[worst]
            raise DataError(
                f"{table.source}: {sum(map(len, out.dropped.values()))} row(s) with {worst}: "
                f"{', '.join(rows[:5])}{' ...' if len(rows) > 5 else ''}; messages are "
                f'[{{"role": "user", "content": "..."}}, {{"role": "assistant", ...}}]; fix them '
                "or pass --drop-invalid-rows"
            )
        if not out.items:
            raise DataError(f"{table.source}: no usable conversations in column {msg_col!r}")
        return out
    sel = select_columns(
        table,
        {
            "prompt": (columns["prompt_column"], "--prompt-column / data.prompt_column"),
            "target": (columns["target_column"], "--target-column / data.target_column"),
        },
        {},
        drop_invalid,
    )
    for prompt, target in zip(sel.values["prompt"], sel.values["target"]):
        text = prompt_template.replace("{prompt}", str(prompt))
        out.items.append(pair_conversation(text, str(target), system))
    out.locations, out.dropped = sel.locations, sel.dropped
    return out


# ---- tokenizing with masked labels ----------------------------------------------------------------
def _render_head(tokenizer: Any, messages: list[Message]) -> str:
    """Everything before an assistant turn: the conversation so far plus the assistant header."""
    try:
        return render(tokenizer, messages, add_generation_prompt=True)
    except Exception:  # some templates refuse an empty conversation (jinja raise_exception)
        if messages:
            raise
        return ""


def _assistant_spans(tokenizer: Any, messages: list[Message], where: str) -> tuple[str, list]:
    """The rendered text and the (start, end) characters of every assistant turn in it."""
    text = render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = _render_head(tokenizer, messages[:k])
        upto = render(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not (text.startswith(upto) and upto.startswith(head)):
            raise ModelError(
                f"{where}: the chat template does not render a conversation as a prefix of its "
                "continuation, so assistant turns cannot be located; use a template without "
                "turn-dependent text (or the default: set tokenizer.chat_template to None)"
            )
        spans.append((len(head), len(upto)))
    return text, spans


def encode_conversations(tokenizer: Any, convs: Conversations, max_seq_len: int) -> Encoded:
    """Tokenize conversations; labels are the token ids on assistant turns and ``IGNORE`` elsewhere.

    A conversation longer than ``max_seq_len`` tokens loses its oldest tokens (the start of the
    context); if no context would remain, its end is cut instead. ``extra`` holds, per example,
    the prompt for generating its last answer (``prompt_ids``: everything before that answer plus
    the assistant header, left-cut to ``max_seq_len``), the ``reference`` answer
    and the last user message (``prompt_text``).
    """
    texts, spans, prompts = [], [], []
    for conv, loc in zip(convs.items, convs.locations):
        text, sp = _assistant_spans(tokenizer, conv, loc)
        texts.append(text)
        spans.append(sp)
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompts.append(render(tokenizer, conv[:last], add_generation_prompt=True))
    enc = tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
    )
    prompt_enc = tokenizer(prompts, add_special_tokens=False, return_attention_mask=False)
    room = max_seq_len  # like training examples, prompts keep their last tokens
    out = Encoded(input_ids=[], targets=[], locations=list(convs.locations))
    out.extra = {"prompt_ids": [], "reference": [], "prompt_text": []}
    for ids, offsets, sp, p_ids, conv in zip(
        enc["input_ids"], enc["offset_mapping"], spans, prompt_enc["input_ids"], convs.items
    ):
        labels = [IGNORE] * len(ids)
        for i, (start, _end) in enumerate(offsets):
            if any(a <= start < b for a, b in sp):
                labels[i] = ids[i]
        if len(ids) > max_seq_len:
            out.n_truncated += 1
            cut = len(ids) - max_seq_len
            first_target = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(ids))
            if first_target - cut >= 1:  # some context is left before the first answer token
                ids, labels = ids[cut:], labels[cut:]
            else:
                ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        labels[0] = IGNORE  # nothing predicts the first token
        out.input_ids.append(list(ids))
        out.targets.append(labels)
        out.extra["prompt_ids"].append(list(p_ids[-room:]))
        last_answer = [m for m in conv if m["role"] == "assistant"][-1]["content"]
        out.extra["reference"].append(last_answer)
        last_user = [m for m in conv if m["role"] == "user"]
        out.extra["prompt_text"].append(last_user[-1]["content"] if last_user else "")
    return out
