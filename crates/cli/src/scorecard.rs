//! `portcullis guard scorecard`: the built-in guard against the `test/`
//! split of the guard data (docs/guard.md, "Scorecard"). It reads exactly
//! the files listed in [`FILES`], builds one source per data set (the
//! `valid.json` mix split by family, the BIPIA indirect documents built with
//! the evaluation's fixed seed) and prints per-source and pooled precision,
//! recall, F1 and false-positive rate, and the pooled figures with each
//! source left out, as a table or JSON. With `--min-recall` / `--max-fpr`
//! it is a gate: the exit status is [`GATE_FAILED`] when a bound is missed.
//!
//! No file outside `test/` is read, and the command refuses a data
//! directory whose `test/` holds anything named after the benchmarks
//! reserved for independent evaluation (AgentDojo, garak, PyRIT).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use portcullis_guard::eval::{self, Rng, Scorecard, Source, Tally};
use portcullis_guard::injection::{Channel, Detector};
use serde_json::{Value, json};

/// The files of `test/` a scorecard reads, and nothing else.
pub const FILES: [&str; 8] = [
    "deepset_test.jsonl",
    "NotInject_three.json",
    "valid.json",
    "bipia/email_clean.jsonl",
    "bipia/table_clean.jsonl",
    "bipia/code_clean.jsonl",
    "bipia/text_attack_test.json",
    "bipia/code_attack_test.json",
];

/// Exit status when the scorecard misses a `--min-recall` or `--max-fpr`.
pub const GATE_FAILED: u8 = 4;

/// How many contexts each BIPIA attack is inserted into (as in
/// `injection_eval`).
const BIPIA_PER_ATTACK: usize = 4;

/// `portcullis guard scorecard …`
#[derive(Debug, Args)]
pub struct ScorecardArgs {
    /// The guard data directory (it holds `test/`; e.g. `shared/data/guard`).
    #[arg(long, env = "PORTCULLIS_GUARD_DATA")]
    data: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Fail (exit 4) when the pooled recall is below this (0–1).
    #[arg(long, value_parser = fraction)]
    min_recall: Option<f64>,
    /// Fail (exit 4) when the pooled false-positive rate is above this (0–1).
    #[arg(long, value_parser = fraction)]
    max_fpr: Option<f64>,
    /// Apply `--min-recall` and `--max-fpr` to every source that has
    /// attacks (recall) or benign texts (FPR) as well as to the pool.
    #[arg(long)]
    per_source: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object.
    Json,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

/// Runs the command.
pub fn run(args: ScorecardArgs) -> Result<ExitCode> {
    let test = args.data.join("test");
    check_layout(&test)?;
    let sources = load(&test)?;
    let detector = Detector::new().context("the injection detector does not build")?;
    let card = eval::scorecard(&detector, &sources);
    let failures = gate(&card, &args);
    let thresholds = detector.model().thresholds;
    match args.format {
        Format::Json => {
            let mut out = to_json(&card);
            out["thresholds"] = json!({
                "input": round(f64::from(thresholds.input)),
                "tool_output": round(f64::from(thresholds.tool_output)),
                "description": round(f64::from(thresholds.description)),
            });
            out["gate"] = json!({
                "min_recall": args.min_recall,
                "max_fpr": args.max_fpr,
                "per_source": args.per_source,
                "passed": failures.is_empty(),
                "failures": failures,
            });
            println!("{out}");
        }
        Format::Table => {
            print!("{}", table(&card));
            for f in &failures {
                println!("GATE FAILED: {f}");
            }
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(GATE_FAILED)
    })
}

/// The benchmarks reserved for independent evaluation (shared/data's
/// README): never read, and a data directory holding one is refused so a
/// score can never be computed next to them by mistake.
const RESERVED: [&str; 3] = ["agentdojo", "garak", "pyrit"];

/// Refuses a directory without the test split, or one holding a file or
/// folder named after a reserved benchmark.
fn check_layout(test: &Path) -> Result<()> {
    if !test.is_dir() {
        bail!(
            "`{}` is not a directory: --data must hold `test/`",
            test.display()
        );
    }
    for dir in [test.to_path_buf(), test.join("bipia")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_lowercase();
            if let Some(r) = RESERVED.iter().find(|r| name.contains(*r)) {
                bail!(
                    "`{}` looks like {r} data, which is reserved for independent evaluation; remove it from the scorecard's data directory",
                    e.path().display()
                );
            }
        }
    }
    Ok(())
}

fn read(test: &Path, file: &str) -> Result<String> {
    let path = test.join(file);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// The sources, in the order they are shown.
fn load(test: &Path) -> Result<Vec<Source>> {
    let parsed = |file: &str, r: Result<Vec<eval::Sample>, eval::DataError>| {
        r.with_context(|| format!("`{}`", test.join(file).display()))
    };
    let pairs = |s: Vec<eval::Sample>| s.into_iter().map(|s| (s.text, s.label)).collect();
    let mut sources = vec![
        Source {
            name: "deepset".into(),
            channel: Channel::Input,
            samples: pairs(parsed(
                FILES[0],
                eval::jsonl(&read(test, FILES[0])?, "deepset"),
            )?),
        },
        Source {
            name: "notinject".into(),
            channel: Channel::Input,
            samples: pairs(parsed(
                FILES[1],
                eval::prompts(&read(test, FILES[1])?, "notinject"),
            )?),
        },
    ];
    // The mix, by family (`PINT_jailbreak` → `PINT`), each on the channel
    // its rows belong to: BIPIA rows are instructions meant to arrive in a
    // tool output.
    let valid = parsed(FILES[2], eval::prompts(&read(test, FILES[2])?, "valid"))?;
    let mut families: Vec<String> = valid.iter().map(|s| family(&s.source)).collect();
    families.sort();
    families.dedup();
    for f in families {
        sources.push(Source {
            name: format!("valid/{f}"),
            channel: if f == "BIPIA" {
                Channel::ToolOutput
            } else {
                Channel::Input
            },
            samples: valid
                .iter()
                .filter(|s| family(&s.source) == f)
                .map(|s| (s.text.clone(), s.label))
                .collect(),
        });
    }
    // BIPIA indirect injection: attacks inserted into clean test contexts,
    // against the clean contexts.
    let contexts = |file: &str| -> Result<Vec<String>> {
        eval::bipia_contexts(&read(test, file)?)
            .with_context(|| format!("`{}`", test.join(file).display()))
    };
    let attacks = |file: &str| -> Result<Vec<(String, String)>> {
        eval::bipia_attacks(&read(test, file)?)
            .with_context(|| format!("`{}`", test.join(file).display()))
    };
    let mut text_ctx = contexts(FILES[3])?;
    text_ctx.extend(contexts(FILES[4])?);
    let code_ctx = contexts(FILES[5])?;
    let mut rng = Rng(eval::BIPIA_TEST_SEED);
    for (name, ctx, attack_file) in [
        ("bipia/text", &text_ctx, FILES[6]),
        ("bipia/code", &code_ctx, FILES[7]),
    ] {
        let mut samples: Vec<(String, u8)> =
            eval::bipia_positives(ctx, &attacks(attack_file)?, BIPIA_PER_ATTACK, &mut rng)
                .into_iter()
                .map(|(doc, _, _)| (doc, 1))
                .collect();
        samples.extend(ctx.iter().map(|c| (c.clone(), 0)));
        sources.push(Source {
            name: name.into(),
            channel: Channel::ToolOutput,
            samples,
        });
    }
    Ok(sources)
}

/// `PINT_public_prompt_injection` → `PINT`, `WildGuard` → `WildGuard`.
fn family(source: &str) -> String {
    source.split('_').next().unwrap_or(source).to_string()
}

/// The bounds the scorecard misses, as sentences.
fn gate(card: &Scorecard, args: &ScorecardArgs) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |name: &str, t: &Tally| {
        if let (Some(min), Some(recall)) = (args.min_recall, t.recall())
            && recall < min
        {
            failures.push(format!(
                "{name}: recall {} is below {}",
                pct(recall),
                pct(min)
            ));
        }
        if let (Some(max), Some(fpr)) = (args.max_fpr, t.fpr())
            && fpr > max
        {
            failures.push(format!(
                "{name}: false-positive rate {} is above {}",
                pct(fpr),
                pct(max)
            ));
        }
    };
    check("all", &card.all);
    if args.per_source {
        for s in &card.sources {
            check(&s.name, &s.tally);
        }
    }
    failures
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn metrics(t: &Tally) -> Value {
    let m = |x: Option<f64>| x.map(round);
    json!({
        "attacks": t.attacks(),
        "benign": t.benign(),
        "tp": t.tp, "fn": t.fn_, "fp": t.fp, "tn": t.tn,
        "precision": m(t.precision()),
        "recall": m(t.recall()),
        "f1": m(t.f1()),
        "fpr": m(t.fpr()),
    })
}

fn to_json(card: &Scorecard) -> Value {
    let sources: Vec<Value> = card
        .sources
        .iter()
        .map(|s| {
            let mut v = metrics(&s.tally);
            v["source"] = json!(s.name);
            v["channel"] = json!(s.channel.as_str());
            v
        })
        .collect();
    let all_f1 = card.all.f1();
    let loo: Vec<Value> = card
        .leave_one_out
        .iter()
        .map(|l| {
            let mut v = metrics(&l.tally);
            v["left_out"] = json!(l.name);
            v["f1_change"] = json!(
                l.tally
                    .f1()
                    .zip(all_f1)
                    .map(|(without, with)| round(without - with))
            );
            v
        })
        .collect();
    json!({ "sources": sources, "all": metrics(&card.all), "leave_one_out": loo })
}

fn table(card: &Scorecard) -> String {
    let f = |x: Option<f64>| x.map_or("     -".to_string(), |v| format!("{:5.1}%", v * 100.0));
    let row = |name: &str, channel: &str, t: &Tally| {
        format!(
            "{name:<22} {channel:<12} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}  {}  {}  {}  {}\n",
            t.attacks(),
            t.benign(),
            t.tp,
            t.fn_,
            t.fp,
            t.tn,
            f(t.precision()),
            f(t.recall()),
            f(t.f1()),
            f(t.fpr())
        )
    };
    let header = |first: &str| {
        format!(
            "{first:<22} {:<12} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}  {:>6}  {:>6}  {:>6}  {:>6}\n",
            "channel", "att", "ben", "TP", "FN", "FP", "TN", "prec", "recall", "F1", "FPR"
        )
    };
    let mut out = header("source");
    for s in &card.sources {
        out.push_str(&row(&s.name, s.channel.as_str(), &s.tally));
    }
    out.push_str(&row("all", "", &card.all));
    out.push('\n');
    out.push_str(&header("all but"));
    for l in &card.leave_one_out {
        out.push_str(&row(&l.name, "", &l.tally));
    }
    out
}
