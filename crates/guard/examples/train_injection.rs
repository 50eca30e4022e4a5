//! Trains the prompt-injection model and chooses the per-channel thresholds,
//! using only the training files of `shared/data/guard/train/`.
//!
//! ```text
//! cargo run --release -p portcullis-guard --example train_injection -- \
//!     [/work/shared/data/guard/train] [crates/guard/data/injection_model.bin]
//! ```
//!
//! Training set (windows, as the detector scores them):
//! - input channel: deepset train (attacks and benign), NotInject one and two
//!   and WildGuard (benign);
//! - tool-output channel: every BIPIA train attack instruction inserted into
//!   [`PER_ATTACK`] BIPIA train contexts (emails and tables for text attacks,
//!   code answers for code attacks), at the start, middle or end; the windows
//!   that hold the attack are positives. Every window of every clean train
//!   context is a negative;
//! - description channel: the threshold only, from a fixed 70 % split of the
//!   MCP tool descriptions (the other 30 % is held out for `injection_eval`).
//!
//! The model is logistic regression trained with AdaGrad and L2, with class
//! and source weights so that each group counts as decided below. The
//! thresholds come from 5-fold cross-validation on the same data: BIPIA
//! folds are split by attack category, so a held-out fold's attacks are
//! unlike anything its model saw, as on the test set. The run is
//! deterministic: the same data gives the same file.
//!
//! The shipped model's run (about 2 minutes on one core of the development
//! VM): cross-validated input balanced accuracy 0.924 at threshold 0.620
//! (NotInject false positives ≤ 3 %), tool-output recall 0.825 at threshold
//! 0.815 (clean contexts' false positives ≤ 3 % on average over emails,
//! tables and code), description threshold 0.620 (balanced accuracy 0.636
//! on the 70 % MCP split, where most malicious tools look benign).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/guard_data.rs"]
mod guard_data;

use std::path::{Path, PathBuf};

use guard_data::{Rng, Sample};
use portcullis_guard::injection::model::{DIMS, Features, Model, Thresholds, sigmoid};
use portcullis_guard::injection::{Channel, Detector, ScoredWindow};
use portcullis_guard::poisoning::{self, ToolDefinition};

/// Contexts each BIPIA attack is inserted into. The hyperparameters below
/// were chosen by the cross-validated figures this command prints (train
/// data only): against 12 contexts and L2 1e-6, these raised the
/// tool-output recall at the chosen threshold from 0.75 to 0.83 with the
/// input channel's balanced accuracy unchanged (0.92).
const PER_ATTACK: usize = 24;
const FOLDS: usize = 5;
const EPOCHS: usize = 12;
const LEARNING_RATE: f32 = 0.4;
const L2: f32 = 1e-5;

/// A hyperparameter, overridable for cross-validation experiments
/// (`GUARD_TRAIN_EPOCHS=20 …`); the shipped model uses the defaults above.
fn param<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(format!("GUARD_TRAIN_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which threshold a document informs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Input,
    NotInject,
    Tool,
}

/// One training document: its windows, labels per window, and its fold.
struct Doc {
    windows: Vec<ScoredWindow>,
    /// Per window: Some(label) to train on it, None to skip it.
    labels: Vec<Option<u8>>,
    label: u8,
    weight: f32,
    fold: usize,
    group: Group,
    kind: &'static str,
}

fn fold_of(key: &str) -> usize {
    // FNV-1a of the key: a stable fold whatever the load order.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % FOLDS as u64) as usize
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .map_or("/work/shared/data/guard/train", String::as_str),
    );
    // Where the model goes: the second argument, else the shipped file.
    let out = PathBuf::from(args.get(2).map_or(
        concat!(env!("CARGO_MANIFEST_DIR"), "/data/injection_model.bin"),
        String::as_str,
    ));
    let blank = Model {
        weights: vec![0.0; DIMS],
        bias: 0.0,
        thresholds: Thresholds {
            input: 0.5,
            tool_output: 0.5,
            description: 0.5,
        },
    };
    let detector = Detector::with_model(blank).expect("detector builds");
    let docs = load(&dir, &detector);
    let count = |g: Group, l: u8| docs.iter().filter(|d| d.group == g && d.label == l).count();
    println!(
        "documents: input {} attack / {} benign, NotInject {}, tool output {} attack / {} clean",
        count(Group::Input, 1),
        count(Group::Input, 0),
        count(Group::NotInject, 0),
        count(Group::Tool, 1),
        count(Group::Tool, 0),
    );

    // Cross-validated document scores, for the thresholds.
    let mut oof = vec![0f32; docs.len()];
    for fold in 0..FOLDS {
        let m = train(&docs, |d| d.fold != fold);
        for (i, d) in docs.iter().enumerate() {
            if d.fold == fold {
                oof[i] = doc_score(&m, &d.windows);
            }
        }
        println!("fold {fold} trained");
    }
    let input_t = choose_input(&docs, &oof);
    let tool_t = choose_tool(&docs, &oof);

    let mut model = train(&docs, |_| true);
    model.thresholds = Thresholds {
        input: input_t,
        tool_output: tool_t,
        description: 0.5,
    };
    // The description threshold is chosen with the final model on the MCP
    // split that `injection_eval` does not report on.
    let det = Detector::with_model(model.clone()).expect("detector builds");
    model.thresholds.description = choose_description(&dir, &det);
    println!(
        "thresholds: input {:.3}, tool_output {:.3}, description {:.3}",
        model.thresholds.input, model.thresholds.tool_output, model.thresholds.description
    );
    std::fs::write(&out, model.to_bytes()).expect("write model");
    println!("wrote {}", out.display());
}

fn load(dir: &Path, det: &Detector) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut input = guard_data::jsonl(&dir.join("deepset_train.jsonl"), "deepset");
    input.extend(guard_data::prompts(
        &dir.join("wildguard.json"),
        "wildguard",
    ));
    let mut notinject = guard_data::prompts(&dir.join("NotInject_one.json"), "notinject");
    notinject.extend(guard_data::prompts(
        &dir.join("NotInject_two.json"),
        "notinject",
    ));
    let whole = |det: &Detector, s: &Sample, group: Group, weight: f32| {
        let (windows, _, _) = det.windows(&s.text, Channel::Input);
        let labels = vec![Some(s.label); windows.len()];
        Doc {
            windows,
            labels,
            label: s.label,
            weight,
            fold: fold_of(&s.text),
            group,
            kind: "input",
        }
    };
    for s in &input {
        docs.push(whole(det, s, Group::Input, 1.0));
    }
    for s in &notinject {
        // The over-defense set: trigger words in benign prompts. Weighted up
        // so that "ignore" alone does not make an attack.
        docs.push(whole(det, s, Group::NotInject, 3.0));
    }

    let b = dir.join("bipia");
    let email = guard_data::bipia_contexts(&b.join("email_clean.jsonl"));
    let table = guard_data::bipia_contexts(&b.join("table_clean.jsonl"));
    let code = guard_data::bipia_contexts(&b.join("code_clean.jsonl"));
    let text_attacks = guard_data::bipia_attacks(&b.join("text_attack_train.json"));
    let code_attacks = guard_data::bipia_attacks(&b.join("code_attack_train.json"));
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut text_ctx = email.clone();
    // Tables are 18× as many as emails; sample as many as emails so both
    // kinds of document carry attacks.
    text_ctx.extend(table.iter().take(email.len()).cloned());
    let mut positives = guard_data::bipia_positives(
        &text_ctx,
        &text_attacks,
        param("PER_ATTACK", PER_ATTACK),
        &mut rng,
    );
    positives.extend(guard_data::bipia_positives(
        &code,
        &code_attacks,
        param("PER_ATTACK", PER_ATTACK),
        &mut rng,
    ));
    // The bare instructions too: what the attack says, without a context.
    for (cat, a) in text_attacks.iter().chain(&code_attacks) {
        let (windows, _, _) = det.windows(a, Channel::ToolOutput);
        let labels = vec![Some(1); windows.len()];
        docs.push(Doc {
            windows,
            labels,
            label: 1,
            weight: 1.0,
            fold: fold_of(cat),
            group: Group::Tool,
            kind: "bare",
        });
    }
    for (doc, (a0, a1), cat) in &positives {
        let (windows, _, _) = det.windows(doc, Channel::ToolOutput);
        let labels = windows
            .iter()
            .map(|w| {
                let overlap = w.end.min(*a1).saturating_sub(w.start.max(*a0));
                let attack_len = a1 - a0;
                if overlap == 0 {
                    // Clean context windows come from the clean set already.
                    None
                } else if overlap * 10 >= attack_len * 6 || overlap * 10 >= (w.end - w.start) * 6 {
                    Some(1)
                } else {
                    None
                }
            })
            .collect();
        docs.push(Doc {
            windows,
            labels,
            label: 1,
            weight: 1.0,
            fold: fold_of(cat),
            group: Group::Tool,
            kind: "attack",
        });
    }
    for (kind, set) in [("email", &email), ("table", &table), ("code", &code)] {
        for c in set.iter() {
            let (windows, _, _) = det.windows(c, Channel::ToolOutput);
            let labels = vec![Some(0); windows.len()];
            docs.push(Doc {
                windows,
                labels,
                label: 0,
                weight: 1.0,
                fold: fold_of(c),
                group: Group::Tool,
                kind,
            });
        }
    }
    // Balance: attacks and benign windows weigh the same in total, and
    // within each side the input and tool-output channels weigh the same.
    let total = |docs: &[Doc], g: &dyn Fn(&Doc) -> bool| -> f32 {
        docs.iter()
            .filter(|d| g(d))
            .map(|d| d.weight * d.labels.iter().filter(|l| l.is_some()).count() as f32)
            .sum()
    };
    type Select<'a> = &'a dyn Fn(&Doc) -> bool;
    let groups: [(Select, f32); 6] = [
        (&|d: &Doc| d.label == 1 && d.group != Group::Tool, 1.0),
        (&|d: &Doc| d.label == 1 && d.group == Group::Tool, 3.0),
        (&|d: &Doc| d.label == 0 && d.group != Group::Tool, 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "email", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "table", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "code", 1.0),
    ];
    let scales: Vec<f32> = groups
        .iter()
        .map(|(g, share)| share * 1000.0 / total(&docs, g).max(1.0))
        .collect();
    for d in docs.iter_mut() {
        for (i, (g, _)) in groups.iter().enumerate() {
            if g(d) {
                d.weight *= scales[i];
            }
        }
    }
    docs
}

/// Logistic regression with AdaGrad over the labelled windows of the
/// documents `keep` selects.
fn train(docs: &[Doc], keep: impl Fn(&Doc) -> bool) -> Model {
    let samples: Vec<(&Features, f32, f32)> = docs
        .iter()
        .filter(|d| keep(d))
        .flat_map(|d| {
            d.windows
                .iter()
                .zip(&d.labels)
                .filter_map(move |(w, l)| l.map(|l| (&w.features, f32::from(l), d.weight)))
        })
        .collect();
    let mut w = vec![0f32; DIMS];
    let mut g2 = vec![1e-6f32; DIMS];
    let (mut bias, mut b2) = (0f32, 1e-6f32);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = Rng(0x00c0_ffee_d00d_f00d);
    let (epochs, lr, l2) = (
        param("EPOCHS", EPOCHS),
        param("LR", LEARNING_RATE),
        param("L2", L2),
    );
    for _ in 0..epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &i in &order {
            let (x, y, weight) = samples[i];
            let z = bias + x.iter().map(|&(j, v)| w[j as usize] * v).sum::<f32>();
            let err = (sigmoid(z) - y) * weight;
            for &(j, v) in x.iter() {
                let j = j as usize;
                let g = err * v + l2 * w[j];
                g2[j] += g * g;
                w[j] -= lr * g / g2[j].sqrt();
            }
            b2 += err * err;
            bias -= lr * err / b2.sqrt();
        }
    }
    Model {
        weights: w,
        bias,
        thresholds: Thresholds {
            input: 0.5,
            tool_output: 0.5,
            description: 0.5,
        },
    }
}

/// A document's score: its highest window, as `Detector::assess` computes it.
fn doc_score(m: &Model, windows: &[ScoredWindow]) -> f32 {
    windows
        .iter()
        .map(|w| m.probability(&w.features).max(w.floor))
        .fold(0.0, f32::max)
}

fn candidates() -> impl Iterator<Item = f32> {
    (1..200).map(|i| i as f32 / 200.0)
}

/// Input threshold: the best balanced accuracy on the input documents whose
/// NotInject false-positive rate stays at or below 3 %.
fn choose_input(docs: &[Doc], oof: &[f32]) -> f32 {
    let mut best = (f32::MIN, 0.5);
    for t in candidates() {
        let rate = |f: &dyn Fn(&Doc) -> bool| {
            let sel: Vec<f32> = docs
                .iter()
                .zip(oof)
                .filter(|(d, _)| f(d))
                .map(|(_, &s)| s)
                .collect();
            sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
        };
        let recall = rate(&|d| d.group == Group::Input && d.label == 1);
        let fpr = rate(&|d| d.group != Group::Tool && d.label == 0);
        let notinject = rate(&|d| d.group == Group::NotInject);
        let ba = (recall + 1.0 - fpr) / 2.0;
        if notinject <= 0.03 && ba > best.0 {
            best = (ba, t);
        }
    }
    println!(
        "input threshold {:.3}: cross-validated balanced accuracy {:.3}",
        best.1, best.0
    );
    best.1
}

/// Tool-output threshold: the lowest at which the kinds of clean context
/// (email, table, code) average at most 3 % false positives.
fn choose_tool(docs: &[Doc], oof: &[f32]) -> f32 {
    if std::env::var_os("GUARD_TRAIN_VERBOSE").is_some() {
        for t in [0.5f32, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995] {
            let rate = |f: &dyn Fn(&Doc) -> bool| {
                let sel: Vec<f32> = docs
                    .iter()
                    .zip(oof)
                    .filter(|(d, _)| f(d))
                    .map(|(_, &s)| s)
                    .collect();
                sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
            };
            println!(
                "  t={t:.3} recall {:.3} fpr email {:.3} table {:.3} code {:.3} | input recall {:.3} fpr {:.3} notinject {:.3}",
                rate(&|d| d.group == Group::Tool && d.label == 1),
                rate(&|d| d.kind == "email"),
                rate(&|d| d.kind == "table"),
                rate(&|d| d.kind == "code"),
                rate(&|d| d.group == Group::Input && d.label == 1),
                rate(&|d| d.group != Group::Tool && d.label == 0),
                rate(&|d| d.group == Group::NotInject),
            );
        }
    }
    for t in candidates() {
        let fpr = |kind: &str| {
            let sel: Vec<f32> = docs
                .iter()
                .zip(oof)
                .filter(|(d, _)| d.group == Group::Tool && d.kind == kind)
                .map(|(_, &s)| s)
                .collect();
            sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
        };
        if ["email", "table", "code"]
            .iter()
            .map(|k| fpr(k))
            .sum::<f32>()
            / 3.0
            <= 0.03
        {
            let pos: Vec<f32> = docs
                .iter()
                .zip(oof)
                .filter(|(d, _)| d.group == Group::Tool && d.label == 1)
                .map(|(_, &s)| s)
                .collect();
            let recall = pos.iter().filter(|&&s| s >= t).count() as f32 / pos.len() as f32;
            println!("tool_output threshold {t:.3}: cross-validated recall {recall:.3}");
            return t;
        }
    }
    1.0
}

/// Description threshold: the best balanced accuracy, on the training split
/// of the MCP tool descriptions, between benign tools and tools whose
/// description carries injected instructions.
fn choose_description(dir: &Path, det: &Detector) -> f32 {
    let tools = guard_data::mcp_tools(&dir.join("mcp_tool_descriptions.jsonl"));
    let scored: Vec<(f32, u8)> = tools
        .iter()
        .filter(|t| !t.held_out && t.description_borne())
        .map(|t| {
            let params: Vec<&str> = t.params.iter().map(String::as_str).collect();
            let tool = ToolDefinition {
                name: &t.name,
                description: &t.description,
                params: &params,
            };
            (poisoning::scan_tool(det, &tool).score, t.label)
        })
        .collect();
    let mut best = (f32::MIN, 0.5);
    for t in candidates() {
        let rate = |l: u8| {
            let sel: Vec<f32> = scored.iter().filter(|x| x.1 == l).map(|x| x.0).collect();
            sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
        };
        let ba = (rate(1) + 1.0 - rate(0)) / 2.0;
        if ba > best.0 {
            best = (ba, t);
        }
    }
    println!(
        "description threshold {:.3}: balanced accuracy {:.3} on the training split",
        best.1, best.0
    );
    best.1
}
