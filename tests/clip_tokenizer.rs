//! The CLIP tokenizer against open_clip's `tokenize` on the strings of
//! `tools/make_clip_tokenizer_fixture.py` (HTML entities, mojibake, accents, CJK, emoji, digits,
//! contractions, whitespace runs, control characters, special tokens, long inputs).

use vitkit::text::Tokenizer;
use vitkit::text::tokenizer::{EOT, SOT};

#[test]
fn ids_identical_to_open_clip() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/clip_tokenizer.json")).expect("fixture is JSON");
    let context = fixture["context"].as_u64().expect("context") as usize;
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 200, "only {} strings", cases.len());
    let tokenizer = Tokenizer::clip();
    let mut wrong = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let mut expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        expected.resize(context, 0);
        let got = tokenizer.tokenize(&[text], context);
        if got.ids != expected {
            wrong.push(format!(
                "{text:?}\n  open_clip {expected:?}\n  vitkit    {:?}",
                got.ids
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} strings differ:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn truncation_keeps_the_end_token_and_is_counted() {
    let tokenizer = Tokenizer::clip();
    let long = "a photo of a cat ".repeat(30);
    let batch = tokenizer.tokenize(&[long.as_str(), "a cat"], 77);
    assert_eq!(batch.truncated, 1);
    let rows: Vec<&[u32]> = batch.rows().collect();
    assert_eq!((rows[0][0], rows[0][76]), (SOT, EOT));
    assert!(rows[0].iter().all(|&id| id != 0));
    assert_eq!(rows[1][..4], [SOT, 320, 2368, EOT]);
}
