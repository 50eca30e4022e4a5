//! Loaders for the guard data sets in `shared/data/guard/` and the BIPIA
//! insertion that builds indirect-injection positives, shared by the training
//! and evaluation examples so both build their sets the same way.
#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// One labelled text.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The text.
    pub text: String,
    /// 1 = attack, 0 = benign.
    pub label: u8,
    /// Where it comes from (data set, and for PINT rows the category).
    pub source: String,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A JSON-lines file with `text` and `label`.
pub fn jsonl(path: &Path, source: &str) -> Vec<Sample> {
    read(path)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            Sample {
                text: v["text"].as_str().unwrap_or_default().to_string(),
                label: v["label"].as_u64().unwrap_or(0) as u8,
                source: source.to_string(),
            }
        })
        .collect()
}

/// A JSON array of objects with `prompt` (and `label`, default 0; `source`
/// overrides `source` when present).
pub fn prompts(path: &Path, source: &str) -> Vec<Sample> {
    let v: Value = serde_json::from_str(&read(path)).expect("json array");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| Sample {
            text: r["prompt"].as_str().unwrap_or_default().to_string(),
            label: r["label"].as_u64().unwrap_or(0) as u8,
            source: r["source"].as_str().unwrap_or(source).to_string(),
        })
        .collect()
}

/// BIPIA clean contexts (`context` is a string, or a list of lines for code).
pub fn bipia_contexts(path: &Path) -> Vec<String> {
    read(path)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            match &v["context"] {
                Value::String(s) => s.clone(),
                Value::Array(lines) => lines
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            }
        })
        .filter(|c| !c.trim().is_empty())
        .collect()
}

/// BIPIA attack instructions: (category, instruction).
pub fn bipia_attacks(path: &Path) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&read(path)).expect("json object");
    let mut out = Vec::new();
    for (cat, list) in v.as_object().expect("object") {
        for a in list.as_array().expect("array") {
            out.push((cat.clone(), a.as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// Where an attack goes in a context, as in BIPIA: start, middle, end.
#[derive(Debug, Clone, Copy)]
pub enum Position {
    /// Before the context.
    Start,
    /// At the line or sentence boundary nearest the middle.
    Middle,
    /// After the context.
    End,
}

/// Inserts `attack` into `context`; returns the text and the attack's byte range.
pub fn insert(context: &str, attack: &str, at: Position) -> (String, (usize, usize)) {
    match at {
        Position::Start => (format!("{attack}\n{context}"), (0, attack.len())),
        Position::End => {
            let s = context.len() + 1;
            (format!("{context}\n{attack}"), (s, s + attack.len()))
        }
        Position::Middle => {
            let mid = context.len() / 2;
            // The boundary (newline or ". ") nearest the middle.
            let cut = context
                .match_indices(['\n', '.'])
                .map(|(i, _)| i + 1)
                .min_by_key(|&i| i.abs_diff(mid))
                .unwrap_or(mid);
            let mut cut = cut.min(context.len());
            while !context.is_char_boundary(cut) {
                cut -= 1;
            }
            let s = cut + 1;
            (
                format!("{}\n{attack}\n{}", &context[..cut], &context[cut..]),
                (s, s + attack.len()),
            )
        }
    }
}

/// A small deterministic generator (xorshift64*), so runs are reproducible.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The indirect-injection documents of one BIPIA split: every attack
/// inserted into `per_attack` contexts chosen by `rng`, cycling through the
/// three positions. Returns (document, attack range, attack category).
pub fn bipia_positives(
    contexts: &[String],
    attacks: &[(String, String)],
    per_attack: usize,
    rng: &mut Rng,
) -> Vec<(String, (usize, usize), String)> {
    let mut out = Vec::new();
    for (n, (cat, attack)) in attacks.iter().enumerate() {
        for k in 0..per_attack {
            let ctx = &contexts[rng.below(contexts.len())];
            let at = [Position::Start, Position::Middle, Position::End][(n + k) % 3];
            let (doc, range) = insert(ctx, attack, at);
            out.push((doc, range, cat.clone()));
        }
    }
    out
}

/// One MCP tool from `mcp_tool_descriptions.jsonl`.
#[derive(Debug, Clone)]
pub struct McpTool {
    /// The tool name.
    pub name: String,
    /// Parameter names.
    pub params: Vec<String>,
    /// The description (docstring).
    pub description: String,
    /// 1 malicious, 0 benign.
    pub label: u8,
    /// The eval category.
    pub category: String,
    /// In the fixed 30 % held out from threshold choice.
    pub held_out: bool,
}

impl McpTool {
    /// Whether the tool's description itself is meant to carry the attack
    /// (benign tools, and the categories with injected instructions).
    pub fn description_borne(&self) -> bool {
        self.label == 0
            || matches!(
                self.category.as_str(),
                "prompt-injection" | "goal-manipulation"
            )
    }
}

/// Loads the MCP tool descriptions with their fixed split (by a hash of the
/// source file and tool name, so the split does not depend on file order).
pub fn mcp_tools(path: &Path) -> Vec<McpTool> {
    read(path)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let key = format!("{}#{}", s("source_file"), s("tool_name"));
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in key.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            McpTool {
                name: s("tool_name"),
                params: v["params"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                description: s("description"),
                label: v["label"].as_u64().unwrap_or(0) as u8,
                category: s("category"),
                held_out: h % 10 < 3,
            }
        })
        .collect()
}

/// Longest context kept in one record of [`records`].
const RECORD_CONTEXT: usize = 400;

/// `s` cut to at most `max` bytes, on a char boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A structured tool output as agents receive them: `contexts` rendered as a
/// JSON array (`json`) or a YAML list of records (`id`, `title`, `text`),
/// each context cut to 400 bytes. With `attack`, the attack is appended to
/// the text of record `at` after a space: it shares its field with benign
/// text and has no line of its own, unlike [`insert`]. Returns the document
/// and the attack's byte range (as written: escaped in JSON).
pub fn records(
    contexts: &[&str],
    attack: Option<&str>,
    at: usize,
    json: bool,
) -> (String, (usize, usize)) {
    let mut out = String::new();
    let mut range = (0, 0);
    out.push_str(if json { "[" } else { "" });
    for (i, ctx) in contexts.iter().enumerate() {
        let mut text = clip(ctx, RECORD_CONTEXT).to_string();
        if !json {
            // One YAML line per field.
            text = text.replace(['\n', '\r'], " ");
        }
        let attack_here = attack.filter(|_| i == at);
        let escape = |s: &str| {
            let q = serde_json::to_string(s).expect("string serialises");
            q[1..q.len() - 1].to_string()
        };
        let attack_text = attack_here.map(|a| {
            if json {
                escape(a)
            } else {
                a.replace(['\n', '\r'], " ")
            }
        });
        let body = if json { escape(&text) } else { text };
        if json {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!(
                "{{\"id\": {}, \"title\": \"Record {}\", \"text\": \"{body}",
                i + 1,
                i + 1
            ));
        } else {
            out.push_str(&format!(
                "- id: {}\n  title: Record {}\n  text: {body}",
                i + 1,
                i + 1
            ));
        }
        if let Some(a) = attack_text {
            out.push(' ');
            range = (out.len(), out.len() + a.len());
            out.push_str(&a);
        }
        out.push_str(if json { "\"}" } else { "\n" });
    }
    out.push_str(if json { "]" } else { "" });
    (out, range)
}

/// Indirect-injection documents in structured records: every attack into
/// `per_attack` documents of 3 to 7 records drawn from `contexts`, JSON
/// and YAML in turn, in a record chosen by `rng`. Returns (document,
/// attack range, attack category).
pub fn record_positives(
    contexts: &[String],
    attacks: &[(String, String)],
    per_attack: usize,
    rng: &mut Rng,
) -> Vec<(String, (usize, usize), String)> {
    let mut out = Vec::new();
    for (n, (cat, attack)) in attacks.iter().enumerate() {
        for k in 0..per_attack {
            let count = 3 + rng.below(5);
            let ctx: Vec<&str> = (0..count)
                .map(|_| contexts[rng.below(contexts.len())].as_str())
                .collect();
            let at = rng.below(count);
            let (doc, range) = records(&ctx, Some(attack), at, (n + k) % 2 == 0);
            out.push((doc, range, cat.clone()));
        }
    }
    out
}

/// Clean structured documents: `count` documents of 3 to 7 records drawn
/// from `contexts`, JSON and YAML in turn.
pub fn record_negatives(contexts: &[String], count: usize, rng: &mut Rng) -> Vec<String> {
    (0..count)
        .map(|k| {
            let n = 3 + rng.below(5);
            let ctx: Vec<&str> = (0..n)
                .map(|_| contexts[rng.below(contexts.len())].as_str())
                .collect();
            records(&ctx, None, 0, k % 2 == 0).0
        })
        .collect()
}
