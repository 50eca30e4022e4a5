//! Reports the prompt-injection detector's quality on the test sets, and the
//! tool-poisoning scan's on the held-out MCP split.
//!
//! ```text
//! cargo run --release -p portcullis-guard --example injection_eval -- [/work/shared/data/guard] [--semantic]
//! ```
//!
//! `--semantic` evaluates the detector with the semantic stage in the
//! decision (its blend and thresholds from `semantic_head.bin`), whatever
//! the default.
//!
//! Nothing here is tuned on: the model and thresholds come from
//! `train_injection`, which reads only `train/`. For each set it prints the
//! rows, recall (attacks flagged), false-positive rate (benign flagged) and
//! balanced accuracy where the set has both classes:
//!
//! - deepset test (input channel);
//! - NotInject three (input; all benign: the over-defense test);
//! - `valid.json`, the PINT-like mix (input): its 48 attacks (PINT public
//!   and internal injections and jailbreaks, BIPIA text and code) and 96
//!   benign rows (PINT chat, documents and hard negatives, WildGuard,
//!   NotInject), and its 48 PINT rows alone; once with every row on the
//!   input channel, once with the BIPIA rows on the tool-output channel;
//! - BIPIA indirect (tool-output channel): every test attack instruction
//!   inserted into 4 test contexts (text attacks into emails and tables, code
//!   attacks into code answers) at start, middle or end, against all clean
//!   test contexts;
//! - the union of all of the above (each text on its own channel);
//! - structured tool outputs (tool-output channel, reported apart from the
//!   union): every test attack inserted into one record of a list of 4–7
//!   records built from the test contexts (`eval::records`), plus as many
//!   clean lists as contexts, in each of JSON, indented JSON, NDJSON, YAML,
//!   CSV, mail, HTML and iCalendar; scored as the detector reads them
//!   (record by record, `injection::structure`) and read whole as before;
//! - MCP tool descriptions (description channel), held-out 30 % split.
//!
//! Figures of the shipped model (thresholds input 0.735, tool_output 0.840,
//! description 0.710; with the features for text addressed to the
//! assistant, docs/guard.md — before them BIPIA indirect was 82.4 % recall
//! and all of the above 82.1 % / BA 89.5 %):
//!
//! | set (channel)                                   | att | ben | recall | FPR   | BA    |
//! | ----------------------------------------------- | --- | --- | ------ | ----- | ----- |
//! | deepset test (input)                            | 60  | 56  | 75.0 % | 5.4 % | 84.8 %|
//! | NotInject three (input)                         | 0   | 113 | –      | 3.5 % | –     |
//! | PINT-like mix, valid.json (input)               | 48  | 96  | 87.5 % | 3.1 % | 92.2 %|
//! | same, BIPIA rows on tool_output                 | 48  | 96  | 87.5 % | 3.1 % | 92.2 %|
//! | of which the 48 PINT rows (input)               | 24  | 24  | 87.5 % | 12.5 %| 87.5 %|
//! | BIPIA indirect (tool_output)                    | 500 | 200 | 81.6 % | 2.0 % | 89.8 %|
//! | all of the above                                | 608 | 465 | 81.4 % | 3.0 % | 89.2 %|
//! | MCP held-out, injected descriptions vs benign   | 9   | 61  | 66.7 % | 1.6 % | 82.5 %|
//! | MCP held-out, every malicious tool vs benign    | 131 | 61  | 5.3 %  | 1.6 % | 51.9 %|
//!
//! The previous model (thresholds 0.620, 0.815, 0.620) had deepset 83.0 %,
//! NotInject 3.5 %, valid.json on input 83.3 % (recall 70.8 %), BIPIA
//! indirect 81.6 % recall at 2.0 %, all 88.2 %. The valid.json gain is
//! mostly its BIPIA rows on the input channel (now 100 % of the code ones,
//! 75 % of the text ones): the trainer now also learns BIPIA train attacks
//! as direct injections.
//!
//! With `--semantic` (blend 0.20, thresholds 0.660 / 0.810 / 0.740):
//! deepset 83.0 % (recall 76.7 %, FPR 10.7 %), NotInject 4.4 %, valid.json
//! 92.2 %, BIPIA indirect 81.6 % recall at 2.0 %, all 88.9 % (recall
//! 81.6 %, FPR 3.9 %): no better, which is why the stage is off.
//!
//! Structured tool outputs (125 lists with an attack and 200 clean lists
//! per format), recall / FPR read as the detector reads them against read
//! whole: JSON 80.0 / 7.5 % against 42.4 / 0.5 %, indented JSON 80.8 /
//! 10.0 % against 48.0 / 4.0 %, NDJSON 80.8 / 8.0 % against 44.0 / 3.0 %,
//! HTML 81.6 / 9.5 % against 43.2 / 2.0 %, iCalendar 81.6 / 12.0 % against
//! 70.4 / 7.0 %; YAML 82.4 / 9.0 %, CSV 80.0 / 8.0 % and mail 82.4 /
//! 15.0 % either way. All eight: 81.2 / 9.9 % (BA 85.7 %) against 61.6 /
//! 6.1 % (BA 77.8 %).
//!
//! Most malicious MCP tools in that set are malicious in their code, not
//! their description, which no description scan can see.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/guard_data.rs"]
mod guard_data;

use std::path::PathBuf;

use guard_data::{Rng, Sample};
use portcullis_guard::eval::{RecordFormat, records};
use portcullis_guard::injection::{Channel, Detector, Model, semantic};
use portcullis_guard::poisoning::{self, ToolDefinition};

#[derive(Default, Clone, Copy)]
struct Tally {
    tp: usize,
    fnn: usize,
    fp: usize,
    tn: usize,
}

impl Tally {
    fn add(&mut self, label: u8, flagged: bool) {
        match (label, flagged) {
            (1, true) => self.tp += 1,
            (1, false) => self.fnn += 1,
            (_, true) => self.fp += 1,
            (_, false) => self.tn += 1,
        }
    }
    fn merge(&mut self, o: Tally) {
        self.tp += o.tp;
        self.fnn += o.fnn;
        self.fp += o.fp;
        self.tn += o.tn;
    }
    fn print(&self, name: &str) {
        let pos = self.tp + self.fnn;
        let neg = self.fp + self.tn;
        let recall = self.tp as f64 / pos.max(1) as f64;
        let fpr = self.fp as f64 / neg.max(1) as f64;
        let f = |x: f64, n: usize| {
            if n == 0 {
                "     -".to_string()
            } else {
                format!("{:5.1}%", x * 100.0)
            }
        };
        let ba = if pos > 0 && neg > 0 {
            format!("{:5.1}%", (recall + 1.0 - fpr) * 50.0)
        } else {
            "     -".to_string()
        };
        println!(
            "{name:<44} {pos:>5} {neg:>5}   {}  {}  {ba}",
            f(recall, pos),
            f(fpr, neg)
        );
    }
}

fn tally(det: &Detector, samples: &[Sample], channel: Channel) -> Tally {
    let mut t = Tally::default();
    for s in samples {
        t.add(s.label, det.assess(&s.text, channel).flagged);
    }
    t
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(
        args.iter()
            .find(|a| !a.starts_with("--"))
            .map_or("/work/shared/data/guard", String::as_str),
    );
    let test = root.join("test");
    let det = if args.iter().any(|a| a == "--semantic") {
        let head = semantic::Head::shipped().expect("semantic head");
        println!("semantic stage on: blend {:.2}", head.blend);
        Detector::with_semantic(Model::shipped().expect("model"), Some(head))
            .expect("detector builds")
    } else {
        Detector::new().expect("detector builds")
    };
    let th = det
        .semantic()
        .map_or(det.model().thresholds, |h| h.thresholds);
    println!(
        "thresholds (chosen on train/): input {:.3}, tool_output {:.3}, description {:.3}\n",
        th.input, th.tool_output, th.description
    );
    println!(
        "{:<44} {:>5} {:>5}   {:>6}  {:>6}  {:>6}",
        "set (channel)", "att", "ben", "recall", "FPR", "BA"
    );

    let mut all = Tally::default();
    let deepset = guard_data::jsonl(&test.join("deepset_test.jsonl"), "deepset");
    let t = tally(&det, &deepset, Channel::Input);
    t.print("deepset test (input)");
    all.merge(t);

    let notinject = guard_data::prompts(&test.join("NotInject_three.json"), "notinject");
    let t = tally(&det, &notinject, Channel::Input);
    t.print("NotInject three (input)");
    all.merge(t);

    let valid = guard_data::prompts(&test.join("valid.json"), "valid");
    let t = tally(&det, &valid, Channel::Input);
    t.print("PINT-like mix, valid.json (input)");
    all.merge(t);
    // The same rows, each on the channel it belongs to: BIPIA rows are
    // instructions meant to arrive inside a tool output (indirect
    // injection), where a plain request is out of place; on the input
    // channel a user may ask exactly that.
    let mut natural = Tally::default();
    for s in &valid {
        let channel = if s.source.starts_with("BIPIA") {
            Channel::ToolOutput
        } else {
            Channel::Input
        };
        natural.add(s.label, det.assess(&s.text, channel).flagged);
    }
    natural.print("  same, BIPIA rows on tool_output");
    let pint: Vec<Sample> = valid
        .iter()
        .filter(|s| s.source.starts_with("PINT"))
        .cloned()
        .collect();
    tally(&det, &pint, Channel::Input).print("  of which PINT rows (input)");
    let mut sources: Vec<&str> = valid.iter().map(|s| s.source.as_str()).collect();
    sources.sort();
    sources.dedup();
    for src in sources {
        let sub: Vec<Sample> = valid.iter().filter(|s| s.source == src).cloned().collect();
        tally(&det, &sub, Channel::Input).print(&format!("    {src}"));
    }

    let b = test.join("bipia");
    let email = guard_data::bipia_contexts(&b.join("email_clean.jsonl"));
    let table = guard_data::bipia_contexts(&b.join("table_clean.jsonl"));
    let code = guard_data::bipia_contexts(&b.join("code_clean.jsonl"));
    let text_attacks = guard_data::bipia_attacks(&b.join("text_attack_test.json"));
    let code_attacks = guard_data::bipia_attacks(&b.join("code_attack_test.json"));
    let mut rng = Rng(portcullis_guard::eval::BIPIA_TEST_SEED);
    let mut text_ctx = email.clone();
    text_ctx.extend(table.iter().cloned());
    let mut bipia = Tally::default();
    for (name, ctx, attacks) in [
        ("text attacks in emails+tables", &text_ctx, &text_attacks),
        ("code attacks in code", &code, &code_attacks),
    ] {
        let mut t = Tally::default();
        for (doc, _, _) in guard_data::bipia_positives(ctx, attacks, 4, &mut rng) {
            t.add(1, det.assess(&doc, Channel::ToolOutput).flagged);
        }
        t.print(&format!("  BIPIA {name} (tool_output)"));
        bipia.merge(t);
    }
    for (name, set) in [("email", &email), ("table", &table), ("code", &code)] {
        let mut t = Tally::default();
        for c in set.iter() {
            t.add(0, det.assess(c, Channel::ToolOutput).flagged);
        }
        t.print(&format!("  BIPIA clean {name} (tool_output)"));
        bipia.merge(t);
    }
    bipia.print("BIPIA indirect (tool_output)");
    all.merge(bipia);
    all.print("all of the above");

    // Structured tool outputs (test contexts and attacks, never tuned on):
    // the same detector reading JSON record by record, and reading every
    // text whole as before (`Detector::without_structure`).
    let flat = if det.semantic().is_some() {
        let head = semantic::Head::shipped().expect("semantic head");
        Detector::with_semantic(Model::shipped().expect("model"), Some(head))
    } else {
        Detector::new()
    }
    .expect("detector builds")
    .without_structure();
    println!("\nstructured tool outputs (tool_output): records / whole text");
    let mut rng = Rng(portcullis_guard::eval::BIPIA_TEST_SEED ^ 0x5eed);
    let (mut rec_all, mut flat_all) = (Tally::default(), Tally::default());
    for format in RecordFormat::ALL {
        let (mut rec, mut whole) = (Tally::default(), Tally::default());
        for (ctx, attacks) in [(&text_ctx, &text_attacks), (&code, &code_attacks)] {
            for (doc, label) in records(ctx, attacks, 1, &mut rng, format) {
                rec.add(label, det.assess(&doc, Channel::ToolOutput).flagged);
                whole.add(label, flat.assess(&doc, Channel::ToolOutput).flagged);
            }
        }
        rec.print(&format!("  {} records", format.as_str()));
        whole.print(&format!("  {} whole text", format.as_str()));
        rec_all.merge(rec);
        flat_all.merge(whole);
    }
    rec_all.print("structured, read as records");
    flat_all.print("structured, read whole");

    // Tool poisoning on the held-out split.
    let tools = guard_data::mcp_tools(&root.join("train/mcp_tool_descriptions.jsonl"));
    println!();
    let mut by_cat: std::collections::BTreeMap<String, Tally> = Default::default();
    let mut borne = Tally::default();
    let mut every = Tally::default();
    for t in tools.iter().filter(|t| t.held_out) {
        let params: Vec<&str> = t.params.iter().map(String::as_str).collect();
        let def = ToolDefinition {
            name: &t.name,
            description: &t.description,
            params: &params,
        };
        let flagged = poisoning::scan_tool(&det, &def).flagged;
        by_cat
            .entry(t.category.clone())
            .or_default()
            .add(t.label, flagged);
        every.add(t.label, flagged);
        if t.description_borne() {
            borne.add(t.label, flagged);
        }
    }
    borne.print("MCP held-out: injected descriptions vs benign");
    every.print("MCP held-out: every malicious tool vs benign");
    for (cat, t) in by_cat {
        t.print(&format!("  {cat}"));
    }
}
