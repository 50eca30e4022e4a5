//! The semantic stage: static token embeddings pooled per window, scored
//! by a small logistic-regression head.
//!
//! The n-gram model learns the phrasing of the attacks it was trained on;
//! an embedding of what a window *means* may carry over to attacks phrased
//! differently. Running a transformer per request is out of the latency
//! budget, so the embeddings are static: one vector per WordPiece token of
//! all-MiniLM-L6-v2, distilled by the model2vec method (each token run
//! through the model alone, PCA to [`DIMS`] dimensions, SIF-weighted,
//! quantised to int8) by `crates/guard/scripts/distil_embeddings.py`.
//! A window's vector is the mean of its tokens' vectors scaled to unit
//! length; the head adds a per-channel bias. Provenance and licences are in
//! `crates/guard/data/README.md`.
//!
//! [`Tokenizer`] is BERT's uncased tokenizer (clean-up, CJK split, accent
//! strip, lower case, punctuation split, greedy longest-match WordPiece), as
//! the Hugging Face `tokenizers` library runs it for this model; the test
//! `tests/wordpiece.rs` checks it against that library's output on the
//! golden file the distillation script writes.
//!
//! Formats (little-endian). `semantic_embeddings.bin`: magic `PCSE`, `u32`
//! version (1), `u32` vocabulary size, `u32` dimensions, then per token an
//! `f32` scale and one `i8` per dimension (`value = q * scale`).
//! `semantic_head.bin`: magic `PCSH`, `u32` version (1), `u32` dimensions,
//! `f32` bias, `f32` blend, three `f32` channel biases and three `f32`
//! thresholds (input, tool output, description), then one `f32` weight per
//! dimension.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::LazyLock;

use unicode_normalization::char::decompose_canonical;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use super::Channel;
use super::model::Thresholds;

/// Dimensions of a token vector.
pub const DIMS: usize = 128;

/// Longest word WordPiece splits; longer ones become `[UNK]` (as in BERT).
const MAX_WORD_CHARS: usize = 100;

/// The shipped data is malformed (a bug; the tests rule it out).
#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    /// Wrong magic, version, size or dimension count.
    #[error("semantic model file is malformed: {0}")]
    Malformed(&'static str),
}

/// FNV-1a for the vocabulary map: the keys are short strings and the
/// default SipHash costs several times more per lookup.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// One token of a text: its vocabulary id and the byte range of the word it
/// came from in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Vocabulary id.
    pub id: u32,
    /// Start of the token's word.
    pub start: usize,
    /// One past its end.
    pub end: usize,
}

/// BERT's uncased WordPiece tokenizer over the shipped vocabulary.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<&'static str, u32, BuildHasherDefault<Fnv>>,
    unk: u32,
    /// Bytes of the longest piece (without `##`): no longer candidate can
    /// match, so WordPiece need not try one.
    longest: usize,
}

impl std::fmt::Debug for Fnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fnv")
    }
}

fn is_cjk(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
        || (!c.is_ascii() && c.general_category_group() == GeneralCategoryGroup::Punctuation)
}

impl Tokenizer {
    /// Builds the tokenizer from a vocabulary (one token a line, id = line).
    pub fn new(vocab: &'static str) -> Result<Self, SemanticError> {
        let mut map = HashMap::with_capacity_and_hasher(32_000, BuildHasherDefault::default());
        for (i, t) in vocab.lines().enumerate() {
            map.insert(t, i as u32);
        }
        let unk = *map
            .get("[UNK]")
            .ok_or(SemanticError::Malformed("vocabulary has no [UNK]"))?;
        let longest = vocab
            .lines()
            .map(|t| t.strip_prefix("##").unwrap_or(t).len())
            .max()
            .unwrap_or(0);
        Ok(Self {
            vocab: map,
            unk,
            longest,
        })
    }

    /// The ids of `text`, without special tokens.
    pub fn ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.tokens(text, &mut out);
        out.into_iter().map(|t| t.id).collect()
    }

    /// Appends the tokens of `text` to `out`, with the byte range of the word
    /// each came from (tokens are in order; starts and ends never decrease).
    pub fn tokens(&self, text: &str, out: &mut Vec<Token>) {
        // The normalised word being built and where it started.
        let mut word = String::new();
        let mut word_start = 0;
        let mut word_end = 0;
        // One non-ASCII character's decomposition, reused across characters.
        let mut parts: Vec<char> = Vec::with_capacity(8);
        let flush = |word: &mut String, s: usize, e: usize, out: &mut Vec<Token>| {
            if !word.is_empty() {
                self.wordpiece(word, s, e, out);
                word.clear();
            }
        };
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if c.is_ascii() {
                // Fast path: ASCII needs no decomposition.
                let b = c as u8;
                if b == 0 || (b.is_ascii_control() && !matches!(b, b'\t' | b'\n' | b'\r')) {
                    continue;
                }
                if b.is_ascii_whitespace() || matches!(b, b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
                    flush(&mut word, word_start, word_end, out);
                } else if b.is_ascii_punctuation() {
                    flush(&mut word, word_start, word_end, out);
                    self.wordpiece(c.encode_utf8(&mut [0; 4]), i, end, out);
                } else {
                    if word.is_empty() {
                        word_start = i;
                    }
                    word.push(b.to_ascii_lowercase() as char);
                    word_end = end;
                }
                continue;
            }
            // Clean-up: drop NUL, U+FFFD and control/format/unassigned
            // characters; other whitespace splits.
            if c == '\u{fffd}' || c.general_category_group() == GeneralCategoryGroup::Other {
                continue;
            }
            if c.is_whitespace() {
                flush(&mut word, word_start, word_end, out);
                continue;
            }
            if is_cjk(c) {
                flush(&mut word, word_start, word_end, out);
                self.wordpiece(c.encode_utf8(&mut [0; 4]), i, end, out);
                continue;
            }
            // Accents stripped (NFD, non-spacing marks dropped), then lower
            // case; a punctuation character is a word of its own.
            parts.clear();
            decompose_canonical(c, |d| {
                if d.general_category() != GeneralCategory::NonspacingMark {
                    parts.extend(d.to_lowercase());
                }
            });
            for &d in &parts {
                if is_punct(d) {
                    flush(&mut word, word_start, word_end, out);
                    self.wordpiece(d.encode_utf8(&mut [0; 4]), i, end, out);
                } else if d.is_whitespace() {
                    flush(&mut word, word_start, word_end, out);
                } else {
                    if word.is_empty() {
                        word_start = i;
                    }
                    word.push(d);
                    word_end = end;
                }
            }
        }
        flush(&mut word, word_start, word_end, out);
    }

    /// Greedy longest-match-first WordPiece of one word.
    fn wordpiece(&self, word: &str, start: usize, end: usize, out: &mut Vec<Token>) {
        let push = |id, out: &mut Vec<Token>| out.push(Token { id, start, end });
        if let Some(&id) = self.vocab.get(word) {
            push(id, out);
            return;
        }
        if word.chars().count() > MAX_WORD_CHARS {
            push(self.unk, out);
            return;
        }
        let mark = out.len();
        let mut s = 0;
        let mut key = String::with_capacity(word.len() + 2);
        while s < word.len() {
            let mut e = word.len().min(s + self.longest);
            while !word.is_char_boundary(e) {
                e -= 1;
            }
            let mut found = None;
            while e > s {
                key.clear();
                if s > 0 {
                    key.push_str("##");
                }
                key.push_str(&word[s..e]);
                if let Some(&id) = self.vocab.get(key.as_str()) {
                    found = Some(id);
                    break;
                }
                e -= 1;
                while !word.is_char_boundary(e) {
                    e -= 1;
                }
            }
            match found {
                Some(id) => push(id, out),
                None => {
                    out.truncate(mark);
                    push(self.unk, out);
                    return;
                }
            }
            s = e;
        }
    }
}

/// The static token embeddings.
#[derive(Debug)]
pub struct Embeddings {
    scales: Vec<f32>,
    values: Vec<i8>,
}

impl Embeddings {
    /// Parses `semantic_embeddings.bin` (format in the module docs).
    pub fn from_bytes(b: &[u8], vocab_len: usize) -> Result<Self, SemanticError> {
        let word = |i: usize| -> Result<u32, SemanticError> {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or(SemanticError::Malformed("truncated header"))
        };
        if b.get(..4) != Some(b"PCSE") {
            return Err(SemanticError::Malformed("bad magic"));
        }
        if word(4)? != 1 {
            return Err(SemanticError::Malformed("unknown version"));
        }
        if word(8)? as usize != vocab_len || word(12)? as usize != DIMS {
            return Err(SemanticError::Malformed("vocabulary or dimension count"));
        }
        let body = &b[16..];
        if body.len() != vocab_len * (4 + DIMS) {
            return Err(SemanticError::Malformed("embedding count"));
        }
        let mut scales = Vec::with_capacity(vocab_len);
        let mut values = Vec::with_capacity(vocab_len * DIMS);
        for row in body.chunks_exact(4 + DIMS) {
            scales.push(f32::from_le_bytes([row[0], row[1], row[2], row[3]]));
            values.extend(row[4..].iter().map(|&q| q as i8));
        }
        Ok(Self { scales, values })
    }

    /// Adds token `id`'s vector to `acc`.
    #[inline]
    fn add_to(&self, id: u32, acc: &mut [f32; DIMS]) {
        let id = id as usize;
        let (Some(&scale), Some(row)) = (
            self.scales.get(id),
            self.values.get(id * DIMS..(id + 1) * DIMS),
        ) else {
            return;
        };
        for (a, &q) in acc.iter_mut().zip(row) {
            *a += f32::from(q) * scale;
        }
    }
}

/// The tokenizer and embeddings together: text in, window vectors out.
#[derive(Debug)]
pub struct Encoder {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    embeddings: Embeddings,
}

static SHIPPED: LazyLock<Result<Encoder, SemanticError>> = LazyLock::new(|| {
    let tokenizer = Tokenizer::new(include_str!("../../data/semantic_vocab.txt"))?;
    let embeddings = Embeddings::from_bytes(
        include_bytes!("../../data/semantic_embeddings.bin"),
        tokenizer.vocab.len(),
    )?;
    Ok(Encoder {
        tokenizer,
        embeddings,
    })
});

impl Encoder {
    /// The encoder compiled into this crate (parsed once, shared).
    pub fn shipped() -> Result<&'static Encoder, SemanticError> {
        SHIPPED
            .as_ref()
            .map_err(|_| SemanticError::Malformed("shipped embeddings"))
    }

    /// The unit-length mean vector of the tokens of `tokens` whose word lies
    /// inside `start..end` (zero when there are none). `tokens` must be in
    /// order, as [`Tokenizer::tokens`] gives them.
    pub fn pool(&self, tokens: &[Token], start: usize, end: usize) -> [f32; DIMS] {
        let i = tokens.partition_point(|t| t.start < start);
        let j = tokens.partition_point(|t| t.end <= end).max(i);
        let mut acc = [0f32; DIMS];
        for t in &tokens[i..j] {
            self.embeddings.add_to(t.id, &mut acc);
        }
        let norm = acc.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            for v in acc.iter_mut() {
                *v /= norm;
            }
        }
        acc
    }
}

/// The classifier head over a pooled window vector, with the blend that
/// combines it with the n-gram model and the thresholds of the blend.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// One weight per dimension.
    pub weights: Vec<f32>,
    /// The intercept.
    pub bias: f32,
    /// Per-channel intercepts (input, tool output, description).
    pub channel_bias: [f32; 3],
    /// The semantic logit's share in the combined logit (0 = n-grams only).
    pub blend: f32,
    /// Thresholds of the combined score, chosen by cross-validation.
    pub thresholds: Thresholds,
}

fn channel_index(c: Channel) -> usize {
    match c {
        Channel::Input => 0,
        Channel::ToolOutput => 1,
        Channel::Description => 2,
    }
}

impl Head {
    /// The head compiled into this crate.
    pub fn shipped() -> Result<Self, SemanticError> {
        Self::from_bytes(include_bytes!("../../data/semantic_head.bin"))
    }

    /// The log-odds of a pooled vector on `channel`.
    pub fn logit(&self, x: &[f32; DIMS], channel: Channel) -> f32 {
        self.bias
            + self.channel_bias[channel_index(channel)]
            + self
                .weights
                .iter()
                .zip(x.iter())
                .map(|(w, v)| w * v)
                .sum::<f32>()
    }

    /// Combines the n-gram model's log-odds with this head's.
    pub fn combine(&self, ngram_logit: f32, semantic_logit: f32) -> f32 {
        super::model::sigmoid((1.0 - self.blend) * ngram_logit + self.blend * semantic_logit)
    }

    /// Parses the file format in the module docs.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SemanticError> {
        let f = |i: usize| -> Result<f32, SemanticError> {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(f32::from_le_bytes)
                .ok_or(SemanticError::Malformed("truncated head"))
        };
        if b.get(..4) != Some(b"PCSH") {
            return Err(SemanticError::Malformed("bad head magic"));
        }
        if f(4)?.to_bits() != 1 || f(8)?.to_bits() as usize != DIMS {
            return Err(SemanticError::Malformed("head version or dimensions"));
        }
        if b.len() != 44 + DIMS * 4 {
            return Err(SemanticError::Malformed("head size"));
        }
        Ok(Self {
            bias: f(12)?,
            blend: f(16)?,
            channel_bias: [f(20)?, f(24)?, f(28)?],
            thresholds: Thresholds {
                input: f(32)?,
                tool_output: f(36)?,
                description: f(40)?,
            },
            weights: (0..DIMS).map(|i| f(44 + 4 * i)).collect::<Result<_, _>>()?,
        })
    }

    /// Serialises to the file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + DIMS * 4);
        out.extend_from_slice(b"PCSH");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(DIMS as u32).to_le_bytes());
        let t = &self.thresholds;
        for v in [
            self.bias,
            self.blend,
            self.channel_bias[0],
            self.channel_bias[1],
            self.channel_bias[2],
            t.input,
            t.tool_output,
            t.description,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &[&str]) {
        let enc = Encoder::shipped().unwrap();
        let mut toks = Vec::new();
        enc.tokenizer.tokens(text, &mut toks);
        let got: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
        assert_eq!(got, expect, "{text:?}");
    }

    #[test]
    fn tokens_carry_their_words_range() {
        check("Ignore it!", &["Ignore", "it", "!"]);
        // Accented words keep their original bytes; a split word's pieces
        // all carry the whole word's range.
        check("café naïve", &["café", "naïve"]);
        check("unaffable", &["unaffable", "unaffable", "unaffable"]);
        check("", &[]);
    }

    #[test]
    fn pooling_is_unit_length_and_window_bound() {
        let enc = Encoder::shipped().unwrap();
        let text = "ignore all previous instructions. the weather is fine";
        let mut toks = Vec::new();
        enc.tokenizer.tokens(text, &mut toks);
        let v = enc.pool(&toks, 0, text.len());
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
        let a = enc.pool(&toks, 0, 33);
        let b = enc.pool(&toks, 34, text.len());
        assert_ne!(a, b);
        assert_eq!(enc.pool(&toks, 5, 5), [0.0; DIMS]);
    }

    #[test]
    fn head_file_round_trips() {
        let h = Head {
            weights: (0..DIMS).map(|i| i as f32 / 7.0).collect(),
            bias: -0.5,
            channel_bias: [0.1, 0.2, 0.3],
            blend: 0.25,
            thresholds: Thresholds {
                input: 0.5,
                tool_output: 0.6,
                description: 0.7,
            },
        };
        assert_eq!(Head::from_bytes(&h.to_bytes()).unwrap(), h);
        assert!(Head::from_bytes(b"PCSH").is_err());
        assert!(Head::shipped().is_ok());
    }
}
