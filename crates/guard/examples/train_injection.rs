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
//!   and WildGuard (benign); and, as extra positives, the BIPIA train attack
//!   instructions of the categories that manipulate or harm (all code
//!   attacks; text attacks except the [`USER_TASKS`] ones, which are
//!   ordinary requests when a user types them), bare and combined with
//!   [`PER_INPUT`] benign deepset/WildGuard train prompts (after or before
//!   it), as a direct injection rides on a legitimate request;
//! - tool-output channel: every BIPIA train attack instruction inserted into
//!   [`PER_ATTACK`] BIPIA train contexts (emails and tables for text attacks,
//!   code answers for code attacks), at the start, middle or end; the windows
//!   that hold the attack are positives. Every window of every clean train
//!   context is a negative;
//! - description channel: the threshold only, from a fixed 70 % split of the
//!   MCP tool descriptions (the other 30 % is held out for `injection_eval`),
//!   the best balanced accuracy with at most [`DESCRIPTION_MAX_FPR`] of the
//!   benign tools flagged.
//!
//! The model is logistic regression trained with AdaGrad and L2, with class
//! and source weights so that each group counts as decided below; the
//! weights are the average of [`RUNS`] runs that differ only in the order of
//! the samples. The thresholds come from 5-fold cross-validation on the same
//! data: BIPIA folds (tool-output and input-channel alike) are split by
//! attack category, so a held-out fold's attacks are unlike anything its
//! model saw, as on the test set. The run is deterministic: the same data
//! gives the same file (checked: two runs, identical bytes).
//!
//! Tool-output data also holds every BIPIA train attack inside JSON and
//! YAML lists of records built from the train contexts (6 per attack), and
//! 150 clean record lists per kind of context; clean record lists are a
//! threshold kind of their own.
//!
//! The shipped model's run (about 12 minutes on the 2-core development VM
//! under a load average near 19): cross-validated input balanced accuracy
//! 0.918 at threshold 0.630 (deepset recall 0.901, benign false positives
//! 0.066, NotInject 0.018), tool-output recall 0.806 at threshold 0.625,
//! description threshold 0.580.
//!
//! Leave-one-source-out (`-- --loso`, with `GUARD_TRAIN_RUNS=1` for time;
//! about 25 minutes under that load): five sources (deepset, NotInject,
//! WildGuard, BIPIA text attacks with email and table contexts, BIPIA code
//! attacks with code contexts); each is scored by a model trained on the
//! other four with thresholds chosen by cross-validation on them:
//!
//! | held-out source | att | ben | recall | FPR | BA (before) | BA (now) |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | deepset | 203 | 343 | 8.4 % | 0.9 % | 54.2 % | 53.7 % |
//! | NotInject (FPR) | 0 | 226 | – | 4.0 % | 5.3 % | 4.0 % |
//! | WildGuard (FPR) | 0 | 971 | – | 17.9 % | 36.0 % | 17.9 % |
//! | BIPIA text | 2325 | 1250 | 6.7 % | 6.6 % | 52.0 % | 50.0 % |
//! | BIPIA code | 1550 | 200 | 96.0 % | 74.0 % | 52.4 % | 61.0 % |
//! | pooled: input channel | 203 | 1540 | 8.4 % | 12.1 % | 42.8 % | 48.1 % |
//! | pooled: tool output | 3875 | 1450 | 42.4 % | 15.9 % | 64.2 % | 63.2 % |
//! | pooled: structured records | 750 | 450 | 46.5 % | 36.2 % | 54.4 % | 55.2 % |
//! | pooled: all | 4078 | 2990 | 40.7 % | 13.9 % | 61.3 % | 63.4 % |
//!
//! "Before" is the previous detector (no structure units, no
//! addressed-to-the-model shapes) through the same command, except that
//! its clean record lists counted with their context kind for the
//! tool-output threshold. Every source is close to chance when held out:
//! the model learns each set's phrasing, not the intent (deepset attacks
//! are missed when only BIPIA attacks were seen; clean code is flagged when
//! no code was seen). The new features and units do not change that; the
//! pooled gain (+2 points) is within what threshold choice moves. An
//! intermediate run of this change (HTML units on any `<`, record lists
//! counted with their kind) gave 65.5 % pooled.
//!
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
/// Training runs averaged (see [`train`]).
const RUNS: usize = 3;
/// Highest false-positive rate on benign training tools the description
/// threshold may have.
const DESCRIPTION_MAX_FPR: f32 = 0.05;
/// Benign train prompts each input-channel BIPIA attack is combined with,
/// and the weight of those positives against deepset's attacks (1.0).
const PER_INPUT: usize = 6;
const AUG_SHARE: f32 = 1.0;
/// BIPIA text-attack categories that are ordinary user requests when typed
/// by the user: not used as input-channel positives.
const USER_TASKS: &[&str] = &[
    "Information Retrieval",
    "Content Creation",
    "Learning and Tutoring",
    "Language Translation",
    "Programming Help",
];

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
    /// BIPIA train attacks on the input channel: bare, and appended to or
    /// put before a benign train prompt.
    InputAug,
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
    /// The data set it comes from (see [`SOURCES`]), and the one its host
    /// prompt comes from when it was combined with one: a
    /// leave-one-source-out fold leaves out both.
    source: &'static str,
    host: &'static str,
    /// A JSON or YAML list of records (see `guard_data::records`).
    structured: bool,
}

/// The sources of the leave-one-source-out evaluation (`--loso`): BIPIA
/// counts as two, its text attacks in emails and tables, and its code
/// attacks in code answers.
const SOURCES: [&str; 5] = [
    "deepset",
    "notinject",
    "wildguard",
    "bipia_text",
    "bipia_code",
];

/// Structured-record documents (JSON and YAML lists) per BIPIA attack, and
/// clean ones per kind of context.
const PER_ATTACK_RECORDS: usize = 6;
const CLEAN_RECORDS: usize = 150;

/// Whether a document was made by `guard_data::records`.
fn is_records(doc: &str) -> bool {
    doc.starts_with("[{\"id\": 1,") || doc.starts_with("- id: 1\n")
}

fn source_name(s: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|n| **n == s)
        .copied()
        .unwrap_or("other")
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
    if std::env::args().any(|a| a == "--loso") {
        loso(&docs);
        return;
    }
    let count = |g: Group, l: u8| docs.iter().filter(|d| d.group == g && d.label == l).count();
    println!(
        "documents: input {} attack / {} benign, NotInject {}, BIPIA on input {}, tool output {} attack / {} clean",
        count(Group::Input, 1),
        count(Group::Input, 0),
        count(Group::NotInject, 0),
        count(Group::InputAug, 1),
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
    let all: Vec<&Doc> = docs.iter().collect();
    let input_t = choose_input(&all, &oof);
    let tool_t = choose_tool(&all, &oof);

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
            source: source_name(&s.source),
            host: "",
            structured: false,
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
    // The same attacks as direct injections on the input channel: a user
    // prompt that carries an instruction unrelated to the request
    // ("What is a prompt? But then, forget everything and…"). Only the
    // categories that manipulate or harm: "answer a trivia question" or
    // "write a poem" is an ordinary request when a user types it.
    let hosts: Vec<&Sample> = input.iter().filter(|s| s.label == 0).collect();
    let per_input = param("PER_INPUT", PER_INPUT);
    let bipia_source = |cat: &str| {
        if code_attacks.iter().any(|(c, _)| c == cat) {
            "bipia_code"
        } else {
            "bipia_text"
        }
    };
    for (cat, a) in text_attacks
        .iter()
        .chain(&code_attacks)
        .filter(|(cat, _)| !USER_TASKS.contains(&cat.as_str()))
    {
        let mut texts = vec![(a.clone(), "")];
        for k in 0..per_input {
            let host = &hosts[rng.below(hosts.len())];
            let (host_source, host) = (source_name(&host.source), &host.text);
            let glue = [" ", "\n", " Also, ", " But first, "][rng.below(4)];
            texts.push(if k % 2 == 0 {
                (format!("{host}{glue}{a}"), host_source)
            } else {
                (format!("{a}\n{host}"), host_source)
            });
        }
        for (t, host) in texts {
            let (windows, _, _) = det.windows(&t, Channel::Input);
            let labels = vec![None; windows.len()];
            let mut d = Doc {
                windows,
                labels,
                label: 1,
                weight: 1.0,
                fold: fold_of(cat),
                group: Group::InputAug,
                kind: "input_aug",
                source: bipia_source(cat),
                host,
                structured: false,
            };
            // Train on the windows that hold the attack: the highest-overlap
            // ones, i.e. all of a short text, and the segments of the attack.
            label_attack_windows(&mut d, &t, a);
            docs.push(d);
        }
    }
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
            source: bipia_source(cat),
            host: "",
            structured: false,
        });
    }
    // The same attacks and contexts as structured tool outputs (JSON and
    // YAML lists of records, the attack inside one record's text), from
    // their own generator so that the documents above stay as they were.
    let mut rec_rng = Rng(0x7ec0_7d5e_ed00_0001);
    positives.extend(guard_data::record_positives(
        &text_ctx,
        &text_attacks,
        PER_ATTACK_RECORDS,
        &mut rec_rng,
    ));
    positives.extend(guard_data::record_positives(
        &code,
        &code_attacks,
        PER_ATTACK_RECORDS,
        &mut rec_rng,
    ));
    let mut clean_records: Vec<(&'static str, String)> = Vec::new();
    for (kind, set) in [("email", &email), ("table", &table), ("code", &code)] {
        for d in guard_data::record_negatives(set, CLEAN_RECORDS, &mut rec_rng) {
            clean_records.push((kind, d));
        }
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
            source: bipia_source(cat),
            host: "",
            structured: is_records(doc),
        });
    }
    let plain = [("email", &email), ("table", &table), ("code", &code)]
        .into_iter()
        .flat_map(|(kind, set)| set.iter().map(move |c| (kind, c)));
    for (kind, c) in plain.chain(clean_records.iter().map(|(k, d)| (*k, d))) {
        {
            // Clean records are a kind of their own for the threshold (a
            // kind's false positives may not hide behind another's).
            let source = if kind == "code" {
                "bipia_code"
            } else {
                "bipia_text"
            };
            let kind = if is_records(c) { "records" } else { kind };
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
                source,
                host: "",
                structured: is_records(c),
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
    let aug_share = param("AUG_SHARE", AUG_SHARE);
    let groups: [(Select, f32); 8] = [
        (&|d: &Doc| d.label == 1 && d.group == Group::Input, 1.0),
        (
            &|d: &Doc| d.label == 1 && d.group == Group::InputAug,
            aug_share,
        ),
        (&|d: &Doc| d.label == 1 && d.group == Group::Tool, 3.0),
        (&|d: &Doc| d.label == 0 && d.group != Group::Tool, 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "email", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "table", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "code", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "records", 1.0),
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

/// Marks as positives the windows of `d` (built from `text`) that hold
/// most of `attack` or are mostly made of it; the rest are not trained on.
fn label_attack_windows(d: &mut Doc, text: &str, attack: &str) {
    let Some(a0) = text.find(attack) else {
        d.labels = vec![Some(1); d.windows.len()];
        return;
    };
    let a1 = a0 + attack.len();
    d.labels = d
        .windows
        .iter()
        .map(|w| {
            let overlap = w.end.min(a1).saturating_sub(w.start.max(a0));
            (overlap > 0
                && (overlap * 10 >= (a1 - a0) * 6 || overlap * 10 >= (w.end - w.start) * 6))
                .then_some(1)
        })
        .collect();
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
                .filter(|s| s.2 > 0.0)
        })
        .collect();
    let (epochs, lr, l2) = (
        param("EPOCHS", EPOCHS),
        param("LR", LEARNING_RATE),
        param("L2", L2),
    );
    // Several runs that differ only in the order of the samples, averaged:
    // one run's weights depend on its order enough to move the threshold
    // of the small clean-email set by several points.
    let runs = param("RUNS", RUNS).max(1);
    let mut w = vec![0f32; DIMS];
    let mut bias = 0f32;
    for run in 0..runs {
        let (rw, rb) = sgd(&samples, epochs, lr, l2, 0x00c0_ffee_d00d_f00d ^ run as u64);
        for (a, b) in w.iter_mut().zip(rw) {
            *a += b / runs as f32;
        }
        bias += rb / runs as f32;
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

/// One AdaGrad run over `samples` (features, label, weight), shuffled by
/// `seed`: the weights and the bias.
fn sgd(
    samples: &[(&Features, f32, f32)],
    epochs: usize,
    lr: f32,
    l2: f32,
    seed: u64,
) -> (Vec<f32>, f32) {
    let mut w = vec![0f32; DIMS];
    let mut g2 = vec![1e-6f32; DIMS];
    let (mut bias, mut b2) = (0f32, 1e-6f32);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = Rng(seed);
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
    (w, bias)
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
fn choose_input(docs: &[&Doc], oof: &[f32]) -> f32 {
    let direct = docs.iter().any(|d| d.group == Group::Input && d.label == 1);
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
        // Without deepset (a leave-one-source-out fold), the BIPIA attacks
        // on the input channel are the only input attacks to recall.
        let recall = if direct {
            rate(&|d| d.group == Group::Input && d.label == 1)
        } else {
            rate(&|d| d.group == Group::InputAug)
        };
        let fpr = rate(&|d| d.group != Group::Tool && d.label == 0);
        let notinject = rate(&|d| d.group == Group::NotInject);
        let ba = (recall + 1.0 - fpr) / 2.0;
        if notinject <= 0.03 && ba > best.0 {
            best = (ba, t);
        }
    }
    let t = best.1;
    let at = |f: &dyn Fn(&Doc) -> bool| {
        let sel: Vec<f32> = docs
            .iter()
            .zip(oof)
            .filter(|(d, _)| f(d))
            .map(|(_, &s)| s)
            .collect();
        sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
    };
    println!(
        "input threshold {t:.3}: cross-validated balanced accuracy {:.3} (deepset recall {:.3}, benign FPR {:.3}, NotInject FPR {:.3}, BIPIA-on-input recall {:.3})",
        best.0,
        at(&|d| d.group == Group::Input && d.label == 1),
        at(&|d| d.group != Group::Tool && d.label == 0),
        at(&|d| d.group == Group::NotInject),
        at(&|d| d.group == Group::InputAug),
    );
    best.1
}

/// Tool-output threshold: the lowest at which the kinds of clean context
/// (email, table, code) average at most 3 % false positives.
fn choose_tool(docs: &[&Doc], oof: &[f32]) -> f32 {
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
        // The kinds present (a leave-one-source-out fold may lack some).
        let kinds: Vec<&str> = ["email", "table", "code", "records"]
            .into_iter()
            .filter(|k| docs.iter().any(|d| d.group == Group::Tool && d.kind == *k))
            .collect();
        if kinds.iter().map(|k| fpr(k)).sum::<f32>() / kinds.len().max(1) as f32 <= 0.03 {
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
        // With a handful of injected descriptions, the best balanced
        // accuracy alone can sit at a threshold that refuses a third of the
        // benign tools; a gateway that blocks tool listings cannot ship that.
        if rate(0) <= DESCRIPTION_MAX_FPR && ba > best.0 {
            best = (ba, t);
        }
    }
    let t = best.1;
    let rate = |l: u8| {
        let sel: Vec<f32> = scored.iter().filter(|x| x.1 == l).map(|x| x.0).collect();
        sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
    };
    println!(
        "description threshold {t:.3}: balanced accuracy {:.3} on the training split (recall {:.3}, benign FPR {:.3}, {} tools)",
        best.0,
        rate(1),
        rate(0),
        scored.len()
    );
    best.1
}

/// Leave-one-source-out evaluation (`--loso`): for each of the five
/// [`SOURCES`], the model is trained on the other four (documents built
/// with a host prompt from the held-out source are left out too), its
/// thresholds chosen by the same 5-fold cross-validation on those four,
/// and the held-out source's documents are scored on their own channel.
/// Nothing of a source informs its own scores: the figures predict data of
/// a kind the model never saw. The BIPIA prompts combined with benign
/// prompts (input-channel augmentation) are trained on but not scored.
fn loso(docs: &[Doc]) {
    #[derive(Default, Clone, Copy)]
    struct Rates {
        tp: usize,
        pos: usize,
        fp: usize,
        neg: usize,
    }
    impl Rates {
        fn add(&mut self, label: u8, flagged: bool) {
            if label == 1 {
                self.pos += 1;
                self.tp += usize::from(flagged);
            } else {
                self.neg += 1;
                self.fp += usize::from(flagged);
            }
        }
        fn merge(&mut self, o: Rates) {
            self.tp += o.tp;
            self.pos += o.pos;
            self.fp += o.fp;
            self.neg += o.neg;
        }
        fn line(&self, name: &str) -> String {
            let r = |a: usize, n: usize| {
                if n == 0 {
                    "     -".to_string()
                } else {
                    format!("{:5.1}%", a as f64 * 100.0 / n as f64)
                }
            };
            let ba = if self.pos > 0 && self.neg > 0 {
                format!(
                    "{:5.1}%",
                    (self.tp as f64 / self.pos as f64 + 1.0 - self.fp as f64 / self.neg as f64)
                        * 50.0
                )
            } else {
                "     -".to_string()
            };
            format!(
                "{name:<34} {:>5} {:>5}  {}  {}  {ba}",
                self.pos,
                self.neg,
                r(self.tp, self.pos),
                r(self.fp, self.neg)
            )
        }
    }
    let mut lines = Vec::new();
    let (mut input, mut tool, mut records) = (Rates::default(), Rates::default(), Rates::default());
    for held in SOURCES {
        let keep = |d: &Doc| d.source != held && d.host != held;
        let train_docs: Vec<&Doc> = docs.iter().filter(|d| keep(d)).collect();
        let mut oof = vec![0f32; train_docs.len()];
        for fold in 0..FOLDS {
            let m = train(docs, |d| keep(d) && d.fold != fold);
            for (i, d) in train_docs.iter().enumerate() {
                if d.fold == fold {
                    oof[i] = doc_score(&m, &d.windows);
                }
            }
        }
        let (ti, tt) = (
            choose_input(&train_docs, &oof),
            choose_tool(&train_docs, &oof),
        );
        let m = train(docs, keep);
        let mut r = Rates::default();
        let mut rec = Rates::default();
        for d in docs
            .iter()
            .filter(|d| d.source == held && d.group != Group::InputAug)
        {
            let t = if d.group == Group::Tool { tt } else { ti };
            let flagged = doc_score(&m, &d.windows) >= t;
            r.add(d.label, flagged);
            if d.structured {
                rec.add(d.label, flagged);
            }
            if d.group == Group::Tool {
                tool.add(d.label, flagged);
            } else {
                input.add(d.label, flagged);
            }
        }
        records.merge(rec);
        lines.push(r.line(&format!("{held} (thresholds {ti:.3} / {tt:.3})")));
        if rec.pos + rec.neg > 0 {
            lines.push(rec.line("  of which structured records"));
        }
        println!("held out {held}");
    }
    let mut all = input;
    all.merge(tool);
    println!(
        "\nleave-one-source-out ({} sources)\n{:<34} {:>5} {:>5}  {:>6}  {:>6}  {:>6}",
        SOURCES.len(),
        "held-out source",
        "att",
        "ben",
        "recall",
        "FPR",
        "BA"
    );
    for l in lines {
        println!("{l}");
    }
    println!("{}", input.line("pooled: input channel"));
    println!("{}", tool.line("pooled: tool_output channel"));
    println!("{}", records.line("pooled: structured records"));
    println!("{}", all.line("pooled: all"));
}
