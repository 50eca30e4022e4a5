//! The Rust WordPiece tokenizer gives the same ids as the reference
//! (Hugging Face `tokenizers` with all-MiniLM-L6-v2's `tokenizer.json`) on
//! the golden strings `scripts/distil_embeddings.py` wrote: training
//! texts and hand-written edge cases (accents, CJK, controls, long words).

use portcullis_guard::injection::semantic::Encoder;

#[test]
fn wordpiece_matches_the_reference_tokenizer() {
    let enc = Encoder::shipped().expect("shipped encoder");
    let golden = include_str!("data/wordpiece_golden.jsonl");
    let mut cases = 0;
    let mut failures = Vec::new();
    for line in golden.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let text = v["text"].as_str().expect("text");
        let want: Vec<u32> = v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect();
        let got = enc.tokenizer.ids(text);
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
        cases += 1;
    }
    assert!(cases >= 200, "golden file has {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
