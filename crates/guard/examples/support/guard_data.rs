//! Loaders for the guard data sets in `shared/data/guard/`, shared by the
//! training and evaluation examples: file reading around the readers and the
//! BIPIA insertion of `portcullis_guard::eval`, which the scorecard uses too,
//! so every one builds its sets the same way.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use serde_json::Value;

pub use portcullis_guard::eval::{Rng, Sample, bipia_positives};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn parsed<T>(path: &Path, r: Result<T, portcullis_guard::eval::DataError>) -> T {
    r.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON-lines file with `text` and `label`.
pub fn jsonl(path: &Path, source: &str) -> Vec<Sample> {
    parsed(path, portcullis_guard::eval::jsonl(&read(path), source))
}

/// A JSON array of objects with `prompt` (and `label`, default 0; `source`
/// overrides `source` when present).
pub fn prompts(path: &Path, source: &str) -> Vec<Sample> {
    parsed(path, portcullis_guard::eval::prompts(&read(path), source))
}

/// BIPIA clean contexts (`context` is a string, or a list of lines for code).
pub fn bipia_contexts(path: &Path) -> Vec<String> {
    parsed(path, portcullis_guard::eval::bipia_contexts(&read(path)))
}

/// BIPIA attack instructions: (category, instruction).
pub fn bipia_attacks(path: &Path) -> Vec<(String, String)> {
    parsed(path, portcullis_guard::eval::bipia_attacks(&read(path)))
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
