//! Trains the prompt-injection model and chooses its thresholds,
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
//!   context is a negative. With `GUARD_TRAIN_CROSS=N` (default
//!   [`CROSS`], none), also deepset's train attacks inserted into N BIPIA
//!   train contexts each (alternately emails or tables and code): indirect
//!   injections phrased unlike BIPIA's. At 6 they raised leave-one-source-out
//!   balanced accuracy a little but cost NotInject and BIPIA figures on the
//!   test split, so the shipped model has none (docs/guard.md, "Generalising
//!   across sources"). With `GUARD_TRAIN_USER_TASKS_BENIGN=1`, BIPIA's
//!   user-task instructions are also benign input prompts (off: see
//!   docs/guard.md, "Features that carry across sources");
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
//! One threshold shared by both channels ([`choose_shared`]) carried over
//! to left-out sources better than one per channel, but on all of train/
//! it flags 28 % of the clean code (cross-validated), so the shipped
//! thresholds stay per channel; the shared one is printed for the record.
//! The paragraphs below describe the run before issue 19's "Generalising
//! across sources"; the current run's figures are in docs/guard.md.
//!
//! The shipped model's run (about 35 seconds on the 2-core development VM,
//! 0.9 GB of memory): cross-validated input balanced accuracy 0.923 at
//! threshold 0.735 (deepset recall 0.901, benign false positives 0.056,
//! NotInject false positives 0.009 — the threshold may not pass 3 % — and
//! recall 0.956 on the input-channel BIPIA positives), tool-output recall
//! 0.809 at threshold 0.840 (clean contexts' false positives ≤ 3 % on
//! average over emails, tables and code), description threshold 0.710
//! (balanced accuracy 0.636 on the 70 % MCP split, no benign tool flagged;
//! most malicious tools there look benign).
//!
//! What changed the cross-validated figures against the previous model
//! (input balanced accuracy 0.924, tool-output recall 0.825 from a single
//! run; 0.928 and 0.801 when that model is also averaged over three runs):
//! the input-channel BIPIA positives raised their recall from 0.58 to 0.96
//! at a cost of about 0.006 in input balanced accuracy; the word weight
//! raised tool-output recall from 0.793 to 0.809 and halved the
//! cross-validated false positives on clean code at 0.7; the multilingual
//! sentence shapes left both figures within 0.002.
//!
//! The same run trains the semantic stage's head (logistic regression over
//! each window's pooled token embedding plus a channel bias, the same
//! windows, labels and weights; see `injection::semantic`) in every fold,
//! tries the blends of its log-odds with the n-gram model's listed in
//! `blend_candidates`, and writes `semantic_head.bin` beside the model with
//! the blend of the best cross-validated input balanced accuracy plus
//! tool-output recall, and that blend's thresholds. On the shipped data
//! that is 0.20 (input balanced accuracy 0.923, tool-output recall 0.809,
//! the same as the n-grams alone); the n-gram model file
//! is unchanged byte for byte.
//!
//! `--loso` (after the two paths) runs leave-one-source-out instead of
//! writing anything: for each of deepset, NotInject, WildGuard, BIPIA text
//! and BIPIA code, both stages are trained on the other four, thresholds
//! chosen by 5-fold cross-validation on them, and the left-out source
//! scored; it prints per source and channel and pooled, for every blend
//! (19 minutes on the loaded VM; figures in docs/guard.md; with
//! `GUARD_TRAIN_BLENDS=0` the semantic head is not trained, which halves
//! that). It also scores,
//! for the left-out BIPIA source, structured tool outputs built from its
//! train contexts and attacks (`eval::records`: lists of 4–7 records in
//! JSON, indented JSON, NDJSON, YAML, CSV, mail, HTML, iCalendar), read as
//! the detector reads them (`records`) and whole (`records_whole`); never
//! trained on nor used for a threshold, they are reported apart from the
//! pooled figures.
//!
//! `--record-offset` (after the two paths) chooses
//! `injection::RECORD_OFFSET` by 5-fold cross-validation instead of
//! writing anything (see `record_offset`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/guard_data.rs"]
mod guard_data;

use std::path::{Path, PathBuf};

use guard_data::{Rng, Sample};
use portcullis_guard::eval::{Position, RecordFormat, Tally, insert, records};
use portcullis_guard::injection::model::{DIMS, Features, Model, Thresholds, sigmoid};
use portcullis_guard::injection::semantic::{self, Head};
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
/// BIPIA contexts each deepset attack is inserted into as a tool output
/// (0: none, the shipped model), and the weight of those positives against
/// BIPIA's (3.0).
const CROSS: usize = 0;
const CROSS_SHARE: f32 = 1.0;
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
    /// The data set it comes from, for leave-one-source-out: `deepset`,
    /// `notinject`, `wildguard`, `bipia_text` or `bipia_code`.
    source: &'static str,
    /// For an attack put into a benign prompt, the prompt's data set.
    host: Option<&'static str>,
    /// Scored by `--loso` only: never trained on nor used for a threshold
    /// (the structured tool outputs, kinds `records` and `records_whole`).
    eval_only: bool,
    /// Trained on (and used for thresholds) but not scored by `--loso`:
    /// the cross-source documents (an input set's attack inside a BIPIA
    /// context), so the left-out sets are the same with or without them.
    train_only: bool,
}

impl Doc {
    fn channel(&self) -> Channel {
        if self.group == Group::Tool {
            Channel::ToolOutput
        } else {
            Channel::Input
        }
    }
}

/// The sources of the leave-one-source-out experiment.
const SOURCES: [&str; 5] = [
    "deepset",
    "notinject",
    "wildguard",
    "bipia_text",
    "bipia_code",
];

fn source_name(s: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|n| **n == s)
        .copied()
        .unwrap_or_else(|| panic!("unknown source {s}"))
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
    // The training texts are read whole, JSON too, as the shipped model
    // was trained (`injection::structure` is a way of reading tool
    // outputs at scan time, not training data): the same data gives the
    // same model file byte for byte, and leave-one-source-out scores the
    // same documents as before structure-aware scanning.
    let detector = Detector::with_model(blank)
        .expect("detector builds")
        .without_structure();
    let docs = load(&dir, &detector);
    let count = |g: Group, l: u8| {
        docs.iter()
            .filter(|d| !d.eval_only && d.group == g && d.label == l)
            .count()
    };
    println!(
        "documents: input {} attack / {} benign, NotInject {}, BIPIA on input {}, tool output {} attack / {} clean",
        count(Group::Input, 1),
        count(Group::Input, 0),
        count(Group::NotInject, 0),
        count(Group::InputAug, 1),
        count(Group::Tool, 1),
        count(Group::Tool, 0),
    );

    if std::env::args().any(|a| a == "--loso") {
        loso(&docs);
        return;
    }
    if std::env::args().any(|a| a == "--record-offset") {
        record_offset(&dir, &docs);
        return;
    }

    // Cross-validated window log-odds of both stages, for the thresholds
    // and the blend.
    let all = |d: &Doc| !d.eval_only;
    let oof = cross_validate(&docs, &all);
    let blends = blend_candidates();
    let mut best: Option<(f32, f32, f32, f32)> = None; // objective, blend, input, tool
    let mut ngram = (0.5, 0.5);
    for &b in &blends {
        let scores: Vec<f32> = oof.iter().map(|l| blended(l, b)).collect();
        println!("-- blend {b:.2} (semantic share of the log-odds)");
        let (input_t, input_ba) = choose_input(&docs, &scores, &all, true);
        let (tool_t, tool_recall) = choose_tool(&docs, &scores, &all, true);
        // The shared threshold raised leave-one-source-out balanced
        // accuracy, but on all of train/ it sits where 28 % of the clean
        // code is flagged (cross-validated): not shipped, printed for the
        // record (docs/guard.md, "Generalising across sources").
        report_at(&docs, &scores, &all, choose_shared(&docs, &scores, &all));
        if b == 0.0 {
            ngram = (input_t, tool_t);
        } else if best.is_none_or(|x| input_ba + tool_recall > x.0) {
            best = Some((input_ba + tool_recall, b, input_t, tool_t));
        }
    }

    let mut model = train(&docs, all);
    model.thresholds = Thresholds {
        input: ngram.0,
        tool_output: ngram.1,
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
    let mut head = train_head(&docs, all);
    let (_, blend, input_t, tool_t) = best.unwrap_or((0.0, 0.0, ngram.0, ngram.1));
    head.blend = blend;
    head.thresholds = Thresholds {
        input: input_t,
        tool_output: tool_t,
        description: 0.5,
    };
    let det = Detector::with_semantic(model.clone(), Some(head.clone())).expect("detector builds");
    head.thresholds.description = choose_description(&dir, &det);
    println!(
        "semantic blend {blend:.2}: thresholds input {:.3}, tool_output {:.3}, description {:.3}",
        head.thresholds.input, head.thresholds.tool_output, head.thresholds.description
    );
    let head_out = out.with_file_name("semantic_head.bin");
    std::fs::write(&head_out, head.to_bytes()).expect("write head");
    println!("wrote {}", head_out.display());
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
            host: None,
            eval_only: false,
            train_only: false,
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
    let tag = |v: Vec<(String, (usize, usize), String)>, source: &'static str| {
        v.into_iter()
            .map(move |(d, r, c)| (d, r, c, source))
            .collect::<Vec<_>>()
    };
    let mut positives = tag(
        guard_data::bipia_positives(
            &text_ctx,
            &text_attacks,
            param("PER_ATTACK", PER_ATTACK),
            &mut rng,
        ),
        "bipia_text",
    );
    positives.extend(tag(
        guard_data::bipia_positives(
            &code,
            &code_attacks,
            param("PER_ATTACK", PER_ATTACK),
            &mut rng,
        ),
        "bipia_code",
    ));
    // The same attacks as direct injections on the input channel: a user
    // prompt that carries an instruction unrelated to the request
    // ("What is a prompt? But then, forget everything and…"). Only the
    // categories that manipulate or harm: "answer a trivia question" or
    // "write a poem" is an ordinary request when a user types it.
    let hosts: Vec<&Sample> = input.iter().filter(|s| s.label == 0).collect();
    let code_set: std::collections::HashSet<&str> =
        code_attacks.iter().map(|(_, a)| a.as_str()).collect();
    let attack_source = |a: &str| {
        if code_set.contains(a) {
            "bipia_code"
        } else {
            "bipia_text"
        }
    };
    let per_input = param("PER_INPUT", PER_INPUT);
    for (cat, a) in text_attacks
        .iter()
        .chain(&code_attacks)
        .filter(|(cat, _)| !USER_TASKS.contains(&cat.as_str()))
    {
        let mut texts = vec![(a.clone(), None)];
        for k in 0..per_input {
            let host = hosts[rng.below(hosts.len())];
            let glue = [" ", "\n", " Also, ", " But first, "][rng.below(4)];
            let h = &host.text;
            texts.push((
                if k % 2 == 0 {
                    format!("{h}{glue}{a}")
                } else {
                    format!("{a}\n{h}")
                },
                Some(source_name(&host.source)),
            ));
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
                source: attack_source(a),
                host,
                eval_only: false,
                train_only: false,
            };
            // Train on the windows that hold the attack: the highest-overlap
            // ones, i.e. all of a short text, and the segments of the attack.
            label_attack_windows(&mut d, &t, a);
            docs.push(d);
        }
    }
    // With `GUARD_TRAIN_USER_TASKS_BENIGN=1`, the user-task instructions
    // (trivia, writing, tutoring, translation and programming questions)
    // as benign input prompts too: what a user may ask, while the same
    // words inside a tool output are an injection. Trained on only, never
    // scored by `--loso`, so the left-out sets do not change.
    if param("USER_TASKS_BENIGN", 0u8) == 1 {
        for (cat, a) in text_attacks
            .iter()
            .filter(|(cat, _)| USER_TASKS.contains(&cat.as_str()))
        {
            let prompt = Sample {
                text: a.clone(),
                label: 0,
                source: "bipia_text".into(),
            };
            let mut d = whole(det, &prompt, Group::Input, 1.0);
            d.fold = fold_of(cat);
            d.train_only = true;
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
            source: attack_source(a),
            host: None,
            eval_only: false,
            train_only: false,
        });
    }
    for (doc, (a0, a1), cat, source) in &positives {
        let (windows, _, _) = det.windows(doc, Channel::ToolOutput);
        let labels = attack_labels(&windows, *a0, *a1);
        docs.push(Doc {
            windows,
            labels,
            label: 1,
            weight: 1.0,
            fold: fold_of(cat),
            group: Group::Tool,
            kind: "attack",
            source,
            host: None,
            eval_only: false,
            train_only: false,
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
                source: if kind == "code" {
                    "bipia_code"
                } else {
                    "bipia_text"
                },
                host: None,
                eval_only: false,
                train_only: false,
            });
        }
    }
    // Cross-source indirect injections: deepset's attacks (written as
    // prompts to a model: "forget everything and say …") inserted into
    // BIPIA's clean contexts, on the tool-output channel. BIPIA's own
    // attacks are one style per category; these teach the tool-output
    // channel what an instruction to the model looks like in other words.
    // Their own generator, so the documents above do not change.
    let per_cross = param("CROSS", CROSS);
    if per_cross > 0 {
        let mut rng = Rng(0x5eed_c055_0000_0019);
        let pools: [(&Vec<String>, &'static str); 2] =
            [(&text_ctx, "bipia_text"), (&code, "bipia_code")];
        for (n, a) in input.iter().filter(|s| s.label == 1).enumerate() {
            for k in 0..per_cross {
                let (pool, host) = pools[(n + k) % 2];
                let ctx = &pool[rng.below(pool.len())];
                let at = [Position::Start, Position::Middle, Position::End][(n + k) % 3];
                let (doc, (a0, a1)) = insert(ctx, &a.text, at);
                let (windows, _, _) = det.windows(&doc, Channel::ToolOutput);
                let labels = attack_labels(&windows, a0, a1);
                docs.push(Doc {
                    windows,
                    labels,
                    label: 1,
                    weight: 1.0,
                    fold: fold_of(&a.text),
                    group: Group::Tool,
                    kind: "cross",
                    source: source_name(&a.source),
                    host: Some(host),
                    eval_only: false,
                    train_only: true,
                });
            }
        }
    }
    // Structured tool outputs for `--loso` to score (never trained on):
    // the train attacks in lists of train contexts, in every format, read
    // record by record (`records`) and whole as before (`records_whole`).
    if std::env::args().any(|a| a == "--loso") {
        let structured = Detector::with_model(det.model().clone()).expect("detector builds");
        let mut rng = Rng(0x5eed_5eed_0000_0019);
        for (ctx, attacks, source) in [
            (&text_ctx, &text_attacks, "bipia_text"),
            (&code, &code_attacks, "bipia_code"),
        ] {
            for format in RecordFormat::ALL {
                for (text, label) in records(ctx, attacks, 1, &mut rng, format) {
                    for (kind, d) in [("records", &structured), ("records_whole", det)] {
                        let (windows, _, _) = d.windows(&text, Channel::ToolOutput);
                        let labels = vec![None; windows.len()];
                        docs.push(Doc {
                            windows,
                            labels,
                            label,
                            weight: 1.0,
                            fold: fold_of(&text),
                            group: Group::Tool,
                            kind,
                            source,
                            host: None,
                            eval_only: true,
                            train_only: false,
                        });
                    }
                }
            }
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
    let cross_share = param("CROSS_SHARE", CROSS_SHARE);
    let groups: [(Select, f32); 8] = [
        (&|d: &Doc| d.label == 1 && d.group == Group::Input, 1.0),
        (
            &|d: &Doc| d.label == 1 && d.group == Group::InputAug,
            aug_share,
        ),
        (
            &|d: &Doc| d.label == 1 && d.group == Group::Tool && d.kind != "cross",
            3.0,
        ),
        (&|d: &Doc| d.kind == "cross", cross_share),
        (&|d: &Doc| d.label == 0 && d.group != Group::Tool, 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "email", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "table", 1.0),
        (&|d: &Doc| d.label == 0 && d.kind == "code", 1.0),
    ];
    // With `GUARD_TRAIN_BALANCE=1`, each group's share is split evenly
    // between the sources in it (WildGuard, deepset and NotInject among the
    // benign prompts; BIPIA text and code among the attacks), so that no
    // one source's style stands for the whole group.
    let balance = param("BALANCE", 0u8) == 1;
    for (g, share) in &groups {
        let mut sources: Vec<&'static str> =
            docs.iter().filter(|d| g(d)).map(|d| d.source).collect();
        sources.sort_unstable();
        sources.dedup();
        let parts: Vec<(Option<&str>, f32)> = if balance {
            sources
                .iter()
                .map(|s| (Some(*s), share / sources.len() as f32))
                .collect()
        } else {
            vec![(None, *share)]
        };
        for (src, part) in parts {
            let sel = |d: &Doc| g(d) && src.is_none_or(|s| d.source == s);
            let scale = part * 1000.0 / total(&docs, &sel).max(1.0);
            for d in docs.iter_mut() {
                if sel(d) {
                    d.weight *= scale;
                }
            }
        }
    }
    docs
}

/// The labels of a document's windows when the attack spans `a0..a1`: a
/// positive for the windows that hold most of it or are mostly made of it,
/// none for the others (clean context windows come from the clean set).
fn attack_labels(windows: &[ScoredWindow], a0: usize, a1: usize) -> Vec<Option<u8>> {
    windows
        .iter()
        .map(|w| {
            let overlap = w.end.min(a1).saturating_sub(w.start.max(a0));
            (overlap > 0
                && (overlap * 10 >= (a1 - a0) * 6 || overlap * 10 >= (w.end - w.start) * 6))
                .then_some(1)
        })
        .collect()
}

/// Marks as positives the windows of `d` (built from `text`) that hold
/// most of `attack` or are mostly made of it; the rest are not trained on.
fn label_attack_windows(d: &mut Doc, text: &str, attack: &str) {
    let Some(a0) = text.find(attack) else {
        d.labels = vec![Some(1); d.windows.len()];
        return;
    };
    d.labels = attack_labels(&d.windows, a0, a0 + attack.len());
}

/// Logistic regression with AdaGrad over the labelled windows of the
/// documents `keep` selects.
/// `--record-offset`: chooses `injection::RECORD_OFFSET` by 5-fold
/// cross-validation on train/ only (writes nothing). The shipped model has
/// seen every train context, so it cannot score lists of them honestly:
/// for each fold, the model trained on the other four scores structured
/// lists (`eval::records`, all eight formats) built from the fold's own
/// BIPIA contexts and attack categories, read record by record with each
/// offset of a grid, at the shipped tool-output threshold (itself chosen
/// on such out-of-fold scores). The offset of the highest pooled balanced
/// accuracy is chosen, the smallest on a tie; the lists read whole are
/// printed beside it.
fn record_offset(dir: &Path, docs: &[Doc]) {
    let b = dir.join("bipia");
    let mut text_ctx = guard_data::bipia_contexts(&b.join("email_clean.jsonl"));
    text_ctx.extend(guard_data::bipia_contexts(&b.join("table_clean.jsonl")));
    let code = guard_data::bipia_contexts(&b.join("code_clean.jsonl"));
    let text_attacks = guard_data::bipia_attacks(&b.join("text_attack_train.json"));
    let code_attacks = guard_data::bipia_attacks(&b.join("code_attack_train.json"));
    let thresholds = Model::shipped().expect("shipped model").thresholds;
    let grid: Vec<f32> = (0..=12).map(|s| s as f32 * 0.25).collect();
    let mut by_offset = vec![Tally::default(); grid.len()];
    let mut whole = Tally::default();
    let mut rng = Rng(0x5eed_5eed_0000_0019);
    for k in 0..FOLDS {
        let mut model = train(docs, |d| !d.eval_only && d.fold != k);
        model.thresholds = thresholds;
        let build = || Detector::with_model(model.clone()).expect("detector builds");
        let flat = build().without_structure();
        let dets: Vec<Detector> = grid
            .iter()
            .map(|&o| build().with_record_offset(o))
            .collect();
        let contexts = |v: &[String]| -> Vec<String> {
            v.iter().filter(|c| fold_of(c) == k).cloned().collect()
        };
        let attacks = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter().filter(|(c, _)| fold_of(c) == k).cloned().collect()
        };
        let (tc, cc) = (contexts(&text_ctx), contexts(&code));
        let (ta, ca) = (attacks(&text_attacks), attacks(&code_attacks));
        let mut lists = Vec::new();
        for format in RecordFormat::ALL {
            for (ctx, att) in [(&tc, &ta), (&cc, &ca)] {
                lists.extend(records(ctx, att, 1, &mut rng, format));
            }
        }
        for (text, label) in &lists {
            whole.add(*label, flat.assess(text, Channel::ToolOutput).flagged);
            for (t, d) in by_offset.iter_mut().zip(&dets) {
                t.add(*label, d.assess(text, Channel::ToolOutput).flagged);
            }
        }
        println!("fold {k}: {} structured lists", lists.len());
    }
    let show = |name: &str, t: &Tally| {
        let (r, f) = (t.recall().unwrap_or(0.0), t.fpr().unwrap_or(0.0));
        let ba = (r + 1.0 - f) / 2.0;
        println!(
            "{name:<22} recall {:5.1} %  FPR {:5.1} %  BA {:5.1} %",
            r * 100.0,
            f * 100.0,
            ba * 100.0
        );
        ba
    };
    show("read whole", &whole);
    let mut best = (f64::MIN, 0f32);
    for (&o, t) in grid.iter().zip(&by_offset) {
        let ba = show(&format!("records, offset {o:.2}"), t);
        if ba > best.0 + 1e-9 {
            best = (ba, o);
        }
    }
    println!(
        "chosen RECORD_OFFSET {:.2} (cross-validated BA {:.1} %)",
        best.1,
        best.0 * 100.0
    );
}

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

/// Per window of a document: the n-gram log-odds, the semantic head's
/// log-odds and the signature floor.
type WindowLogits = Vec<(f32, f32, f32)>;

fn logits(m: &Model, h: &Head, d: &Doc) -> WindowLogits {
    let c = d.channel();
    d.windows
        .iter()
        .map(|w| (m.logit(&w.features), h.logit(&w.semantic, c), w.floor))
        .collect()
}

/// A document's score: its highest window, as `Detector::assess` computes
/// it with the semantic share `blend` (0: the n-gram model alone).
fn blended(l: &WindowLogits, blend: f32) -> f32 {
    l.iter()
        .map(|&(z, s, floor)| sigmoid((1.0 - blend) * z + blend * s).max(floor))
        .fold(0.0, f32::max)
}

/// The semantic shares tried (`GUARD_TRAIN_BLENDS=0,0.3` overrides).
fn blend_candidates() -> Vec<f32> {
    std::env::var("GUARD_TRAIN_BLENDS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![0.0, 0.2, 0.35, 0.5, 0.65, 0.8])
}

/// 5-fold cross-validated window log-odds of the documents `keep` selects
/// (empty for the others): both stages trained on the other folds.
fn cross_validate(docs: &[Doc], keep: &dyn Fn(&Doc) -> bool) -> Vec<WindowLogits> {
    let mut oof = vec![Vec::new(); docs.len()];
    for fold in 0..FOLDS {
        let sel = |d: &Doc| keep(d) && d.fold != fold;
        let m = train(docs, sel);
        let h = head_if_blended(docs, sel);
        for (i, d) in docs.iter().enumerate() {
            if keep(d) && d.fold == fold {
                oof[i] = logits(&m, &h, d);
            }
        }
        eprintln!("fold {fold} trained");
    }
    oof
}

/// The semantic head when some blend tried gives it a share, else an
/// untrained one (its log-odds are multiplied by 0): training it is half
/// the cost of a run of `--loso` with `GUARD_TRAIN_BLENDS=0`.
fn head_if_blended(docs: &[Doc], keep: impl Fn(&Doc) -> bool) -> Head {
    if blend_candidates().iter().any(|&b| b != 0.0) {
        return train_head(docs, keep);
    }
    let mut h = train_head(docs, |_| false);
    h.weights.iter_mut().for_each(|w| *w = 0.0);
    h
}

/// The semantic head: logistic regression with AdaGrad and L2 over the
/// pooled window vectors and a one-hot channel, on the same labelled windows
/// and weights as the n-gram model; deterministic (fixed shuffle seed).
fn train_head(docs: &[Doc], keep: impl Fn(&Doc) -> bool) -> Head {
    const D: usize = semantic::DIMS;
    let samples: Vec<(&[f32; D], usize, f32, f32)> = docs
        .iter()
        .filter(|d| keep(d))
        .flat_map(|d| {
            let c = usize::from(d.group == Group::Tool);
            d.windows
                .iter()
                .zip(&d.labels)
                .filter_map(move |(w, l)| l.map(|l| (&w.semantic, c, f32::from(l), d.weight)))
                .filter(|s| s.3 > 0.0)
        })
        .collect();
    let (epochs, lr, l2) = (
        param("HEAD_EPOCHS", 10usize),
        param("HEAD_LR", 0.5f32),
        param("HEAD_L2", 1e-4f32),
    );
    let mut w = [0f32; D];
    let mut g2 = [1e-6f32; D];
    let mut cb = [0f32; 3];
    let mut c2 = [1e-6f32; 3];
    let (mut bias, mut b2) = (0f32, 1e-6f32);
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = Rng(0x5e3a_7100_0000_0001);
    for _ in 0..epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &i in &order {
            let (x, c, y, weight) = samples[i];
            let z = bias + cb[c] + w.iter().zip(x.iter()).map(|(a, b)| a * b).sum::<f32>();
            let err = (sigmoid(z) - y) * weight;
            for j in 0..D {
                let g = err * x[j] + l2 * w[j];
                g2[j] += g * g;
                w[j] -= lr * g / g2[j].sqrt();
            }
            c2[c] += err * err;
            cb[c] -= lr * err / c2[c].sqrt();
            b2 += err * err;
            bias -= lr * err / b2.sqrt();
        }
    }
    Head {
        weights: w.to_vec(),
        bias,
        channel_bias: cb,
        blend: 0.0,
        thresholds: Thresholds {
            input: 0.5,
            tool_output: 0.5,
            description: 0.5,
        },
    }
}

/// The threshold rules `--loso` compares: the shipped one (input: best
/// balanced accuracy with NotInject ≤ 3 %; tool output: lowest threshold
/// with the clean kinds at ≤ 3 % false positives) and one threshold shared
/// by both channels, the best mean of their balanced accuracies
/// ([`choose_shared`]).
const RULES: [&str; 2] = ["per_channel", "shared"];

/// Leave one source out: for each of [`SOURCES`], both stages are trained
/// on the other four (and the thresholds chosen by 5-fold cross-validation
/// on them), then score the left-out source's documents, each on its
/// channel. Printed per source and channel, and pooled, for every blend and
/// threshold rule, with each left-out set's ranking quality (AUC, the best
/// balanced accuracy any threshold would give) to tell a ranking failure
/// from a threshold that sits wrong.
fn loso(docs: &[Doc]) {
    let blends = blend_candidates();
    // Per (blend, rule), per (source, channel): the tally.
    type Tallies<'a> = std::collections::BTreeMap<(&'a str, &'a str), [usize; 4]>;
    let mut tallies: Vec<Tallies> = vec![Default::default(); blends.len() * RULES.len()];
    for held in SOURCES {
        let keep = |d: &Doc| !d.eval_only && d.source != held && d.host != Some(held);
        let oof = cross_validate(docs, &keep);
        let m = train(docs, keep);
        let h = head_if_blended(docs, keep);
        let scored: Vec<(&Doc, WindowLogits)> = docs
            .iter()
            .filter(|d| d.source == held && !d.train_only)
            .map(|d| (d, logits(&m, &h, d)))
            .collect();
        for (bi, &b) in blends.iter().enumerate() {
            let scores: Vec<f32> = oof.iter().map(|l| blended(l, b)).collect();
            let (ti, _) = choose_input(docs, &scores, &keep, false);
            let (tt, _) = choose_tool(docs, &scores, &keep, false);
            let ts = choose_shared(docs, &scores, &keep);
            let held_scores: Vec<(&Doc, f32, &str)> = scored
                .iter()
                .map(|(d, l)| {
                    let ch = match d.channel() {
                        _ if d.eval_only => d.kind,
                        Channel::ToolOutput => "tool_output",
                        _ => "input",
                    };
                    (*d, blended(l, b), ch)
                })
                .collect();
            diagnose(held, b, &held_scores);
            for (ri, (ti, tt)) in [(ti, tt), (ts, ts)].into_iter().enumerate() {
                for &(d, score, ch) in &held_scores {
                    let t = if d.channel() == Channel::ToolOutput {
                        tt
                    } else {
                        ti
                    };
                    let e = tallies[bi * RULES.len() + ri]
                        .entry((held, ch))
                        .or_default();
                    // tp, fn, fp, tn
                    e[match (d.label, score >= t) {
                        (1, true) => 0,
                        (1, false) => 1,
                        (_, true) => 2,
                        _ => 3,
                    }] += 1;
                }
                println!(
                    "held out {held}, blend {b:.2}, rule {}: thresholds input {ti:.3}, tool_output {tt:.3}",
                    RULES[ri]
                );
            }
        }
    }
    let rate = |a: usize, b: usize| a as f64 / (a + b).max(1) as f64;
    for (bi, &b) in blends.iter().enumerate() {
        for (ri, rule) in RULES.iter().enumerate() {
            let tallies = &tallies[bi * RULES.len() + ri];
            println!("\nleave-one-source-out, blend {b:.2}, rule {rule}");
            println!(
                "{:<12} {:<14} {:>6} {:>6} {:>7} {:>7}",
                "source", "channel", "att", "ben", "recall", "FPR"
            );
            let mut pooled = [0usize; 4];
            let mut by_channel: std::collections::BTreeMap<&str, [usize; 4]> = Default::default();
            for ((src, ch), t) in tallies {
                println!(
                    "{src:<12} {ch:<14} {:>6} {:>6} {:>6.1}% {:>6.1}%",
                    t[0] + t[1],
                    t[2] + t[3],
                    100.0 * rate(t[0], t[1]),
                    100.0 * rate(t[2], t[3])
                );
                let c = by_channel.entry(ch).or_default();
                for k in 0..4 {
                    c[k] += t[k];
                }
                // The structured outputs are reported apart, not pooled.
                if ch.starts_with("records") {
                    continue;
                }
                for k in 0..4 {
                    pooled[k] += t[k];
                }
            }
            for (ch, t) in &by_channel {
                let (r, f) = (rate(t[0], t[1]), rate(t[2], t[3]));
                println!(
                    "channel {ch:<14}      {:>6} {:>6} {:>6.1}% {:>6.1}%  BA {:.1}%",
                    t[0] + t[1],
                    t[2] + t[3],
                    100.0 * r,
                    100.0 * f,
                    50.0 * (r + 1.0 - f)
                );
            }
            let (r, f) = (rate(pooled[0], pooled[1]), rate(pooled[2], pooled[3]));
            println!(
                "LOSO pooled, blend {b:.2}, rule {rule}: recall {:.1}%, FPR {:.1}%, balanced accuracy {:.1}%",
                100.0 * r,
                100.0 * f,
                50.0 * (r + 1.0 - f)
            );
        }
    }
}

/// Prints, for a left-out source's documents of each channel that has both
/// attacks and benign texts, the AUC and the best balanced accuracy over
/// thresholds (what a threshold that sat right would give), and for every
/// channel the score quantiles of each class.
fn diagnose(held: &str, blend: f32, scored: &[(&Doc, f32, &str)]) {
    let mut channels: Vec<&str> = scored.iter().map(|s| s.2).collect();
    channels.sort_unstable();
    channels.dedup();
    for ch in channels {
        let mut pos: Vec<f32> = scored
            .iter()
            .filter(|s| s.2 == ch && s.0.label == 1)
            .map(|s| s.1)
            .collect();
        let mut neg: Vec<f32> = scored
            .iter()
            .filter(|s| s.2 == ch && s.0.label == 0)
            .map(|s| s.1)
            .collect();
        pos.sort_by(f32::total_cmp);
        neg.sort_by(f32::total_cmp);
        let q = |v: &[f32]| {
            if v.is_empty() {
                return "-".to_string();
            }
            let at = |p: usize| v[(v.len() - 1) * p / 100];
            format!("{:.3}/{:.3}/{:.3}", at(10), at(50), at(90))
        };
        let mut line = format!(
            "diag held {held} blend {blend:.2} {ch}: attacks p10/p50/p90 {} ({}), benign {} ({})",
            q(&pos),
            pos.len(),
            q(&neg),
            neg.len()
        );
        if !pos.is_empty() && !neg.is_empty() {
            // AUC by counting pairs (ties half).
            let mut wins = 0f64;
            for &p in &pos {
                let below = neg.partition_point(|&n| n < p);
                let ties = neg.partition_point(|&n| n <= p) - below;
                wins += below as f64 + ties as f64 / 2.0;
            }
            let auc = wins / (pos.len() * neg.len()) as f64;
            let best = candidates()
                .map(|t| {
                    let r = pos.iter().filter(|&&s| s >= t).count() as f64 / pos.len() as f64;
                    let f = neg.iter().filter(|&&s| s >= t).count() as f64 / neg.len() as f64;
                    ((r + 1.0 - f) / 2.0, t)
                })
                .fold((0.0, 0.0), |a, x| if x.0 > a.0 { x } else { a });
            line.push_str(&format!(
                "; AUC {auc:.3}, best BA {:.1}% at {:.3}",
                100.0 * best.0,
                best.1
            ));
        }
        println!("{line}");
    }
}

/// Prints the cross-validated figures at threshold `t` on both channels
/// and returns the input balanced accuracy and the tool-output recall.
fn report_at(docs: &[Doc], scores: &[f32], keep: &dyn Fn(&Doc) -> bool, t: f32) -> (f32, f32) {
    let r = |f: &dyn Fn(&Doc) -> bool| rate_at(docs, scores, t, &|d| keep(d) && f(d));
    let recall = r(&|d| d.group == Group::Input && d.label == 1);
    let fpr = r(&|d| d.group != Group::Tool && d.label == 0);
    let tool = r(&|d| d.group == Group::Tool && d.label == 1 && d.kind != "cross");
    println!(
        "shared threshold {t:.3}: input balanced accuracy {:.3} (deepset recall {recall:.3}, benign FPR {fpr:.3}, NotInject FPR {:.3}, BIPIA-on-input recall {:.3}); tool-output recall {tool:.3} (deepset attacks in contexts {:.3}), clean FPR email {:.3} table {:.3} code {:.3}",
        (recall + 1.0 - fpr) / 2.0,
        r(&|d| d.group == Group::NotInject),
        r(&|d| d.group == Group::InputAug),
        r(&|d| d.kind == "cross"),
        r(&|d| d.kind == "email"),
        r(&|d| d.kind == "table"),
        r(&|d| d.kind == "code"),
    );
    ((recall + 1.0 - fpr) / 2.0, tool)
}

/// One threshold for the input and tool-output channels: the best mean of
/// the input balanced accuracy (as [`choose_input`] counts it, NotInject's
/// false positives at most 3 % where present) and the tool-output balanced
/// accuracy (recall against the clean kinds' average false positives), over
/// the channels that have both classes. A threshold learned on one channel
/// then informs the other, which is what a left-out source needs: its
/// channel may have been seen on one kind of text only.
fn choose_shared(docs: &[Doc], scores: &[f32], keep: &dyn Fn(&Doc) -> bool) -> f32 {
    let has_deepset = docs
        .iter()
        .any(|d| keep(d) && d.group == Group::Input && d.label == 1);
    let pos_in = |d: &Doc| {
        keep(d)
            && d.label == 1
            && if has_deepset {
                d.group == Group::Input
            } else {
                d.group == Group::InputAug
            }
    };
    let neg_in = |d: &Doc| keep(d) && d.group != Group::Tool && d.label == 0;
    let ni = |d: &Doc| keep(d) && d.group == Group::NotInject;
    let pos_tool = |d: &Doc| keep(d) && d.group == Group::Tool && d.label == 1;
    let kinds: Vec<&str> = ["email", "table", "code"]
        .into_iter()
        .filter(|k| docs.iter().any(|d| keep(d) && d.kind == *k))
        .collect();
    let count = |f: &dyn Fn(&Doc) -> bool| docs.iter().filter(|d| f(d)).count();
    let input_both = count(&pos_in) > 0 && count(&neg_in) > 0;
    let tool_both = count(&pos_tool) > 0 && !kinds.is_empty();
    let mut best = (f32::MIN, 0.5);
    for t in candidates() {
        if rate_at(docs, scores, t, &ni) > 0.03 {
            continue;
        }
        let mut sum = 0.0;
        let mut n = 0.0;
        if input_both {
            sum +=
                (rate_at(docs, scores, t, &pos_in) + 1.0 - rate_at(docs, scores, t, &neg_in)) / 2.0;
            n += 1.0;
        }
        if tool_both {
            let fpr = kinds
                .iter()
                .map(|k| rate_at(docs, scores, t, &|d| keep(d) && d.kind == *k))
                .sum::<f32>()
                / kinds.len() as f32;
            sum += (rate_at(docs, scores, t, &pos_tool) + 1.0 - fpr) / 2.0;
            n += 1.0;
        }
        if n > 0.0 && sum / n > best.0 {
            best = (sum / n, t);
        }
    }
    best.1
}

fn candidates() -> impl Iterator<Item = f32> {
    (1..200).map(|i| i as f32 / 200.0)
}

/// The share of the documents `f` selects whose score is at least `t`
/// (`scores` is aligned with `docs`).
fn rate_at(docs: &[Doc], scores: &[f32], t: f32, f: &dyn Fn(&Doc) -> bool) -> f32 {
    let sel: Vec<f32> = docs
        .iter()
        .zip(scores)
        .filter(|(d, _)| f(d))
        .map(|(_, &s)| s)
        .collect();
    sel.iter().filter(|&&s| s >= t).count() as f32 / sel.len().max(1) as f32
}

/// Input threshold: the best balanced accuracy on the input documents that
/// `keep` selects whose NotInject false-positive rate stays at or below
/// 3 %. The attacks are deepset's; without them (deepset left out), the
/// BIPIA attacks on the input channel. Returns the threshold and its
/// balanced accuracy.
fn choose_input(
    docs: &[Doc],
    scores: &[f32],
    keep: &dyn Fn(&Doc) -> bool,
    verbose: bool,
) -> (f32, f32) {
    let has_deepset = docs
        .iter()
        .any(|d| keep(d) && d.group == Group::Input && d.label == 1);
    let pos = |d: &Doc| {
        keep(d)
            && d.label == 1
            && if has_deepset {
                d.group == Group::Input
            } else {
                d.group == Group::InputAug
            }
    };
    let neg = |d: &Doc| keep(d) && d.group != Group::Tool && d.label == 0;
    let ni = |d: &Doc| keep(d) && d.group == Group::NotInject;
    let mut best = (f32::MIN, 0.5);
    for t in candidates() {
        let recall = rate_at(docs, scores, t, &pos);
        let fpr = rate_at(docs, scores, t, &neg);
        let ba = (recall + 1.0 - fpr) / 2.0;
        if rate_at(docs, scores, t, &ni) <= 0.03 && ba > best.0 {
            best = (ba, t);
        }
    }
    let t = best.1;
    if verbose {
        println!(
            "input threshold {t:.3}: cross-validated balanced accuracy {:.3} (deepset recall {:.3}, benign FPR {:.3}, NotInject FPR {:.3}, BIPIA-on-input recall {:.3})",
            best.0,
            rate_at(docs, scores, t, &pos),
            rate_at(docs, scores, t, &neg),
            rate_at(docs, scores, t, &ni),
            rate_at(docs, scores, t, &|d| keep(d) && d.group == Group::InputAug),
        );
    }
    (t, best.0)
}

/// Tool-output threshold: the lowest at which the kinds of clean context
/// (email, table, code) that `keep` selects average at most 3 % false
/// positives. Returns the threshold and the cross-validated recall there.
fn choose_tool(
    docs: &[Doc],
    scores: &[f32],
    keep: &dyn Fn(&Doc) -> bool,
    verbose: bool,
) -> (f32, f32) {
    let pos = |d: &Doc| keep(d) && d.group == Group::Tool && d.label == 1;
    if verbose && std::env::var_os("GUARD_TRAIN_VERBOSE").is_some() {
        for t in [0.5f32, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995] {
            let r = |f: &dyn Fn(&Doc) -> bool| rate_at(docs, scores, t, f);
            println!(
                "  t={t:.3} recall {:.3} fpr email {:.3} table {:.3} code {:.3} | input recall {:.3} fpr {:.3} notinject {:.3}",
                r(&pos),
                r(&|d| d.kind == "email"),
                r(&|d| d.kind == "table"),
                r(&|d| d.kind == "code"),
                r(&|d| d.group == Group::Input && d.label == 1),
                r(&|d| d.group != Group::Tool && d.label == 0),
                r(&|d| d.group == Group::NotInject),
            );
        }
    }
    let kinds: Vec<&str> = ["email", "table", "code"]
        .into_iter()
        .filter(|k| docs.iter().any(|d| keep(d) && d.kind == *k))
        .collect();
    for t in candidates() {
        let fpr = kinds
            .iter()
            .map(|k| rate_at(docs, scores, t, &|d| keep(d) && d.kind == *k))
            .sum::<f32>()
            / kinds.len().max(1) as f32;
        if fpr <= 0.03 {
            let recall = rate_at(docs, scores, t, &pos);
            if verbose {
                println!("tool_output threshold {t:.3}: cross-validated recall {recall:.3}");
            }
            return (t, recall);
        }
    }
    (1.0, 0.0)
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
