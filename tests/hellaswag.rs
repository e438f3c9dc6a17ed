//! HellaSwag scoring against transformers: tests/fixtures/hellaswag_tiny.jsonl (five hand-written
//! examples in the dataset's format) scored by GPT2LMHeadModel in float64 on ref_gpt2vocab's
//! model (tools/hellaswag_reference.py, tests/fixtures/README.md), and the scoring rule by hand.

use std::path::{Path, PathBuf};

use train_gpt2_cuda::engine::{create_engine, EngineOptions};
use train_gpt2_cuda::formats::checkpoint::read_checkpoint;
use train_gpt2_cuda::hellaswag::{
    evaluate, read_examples, render, row_length, score, Example, Rendered, ENDINGS, MAX_LINE,
};
use train_gpt2_cuda::tokenizer::Tokenizer;

mod engine_bin;

fn fixture(name: &str) -> PathBuf {
    engine_bin::root().join("tests/fixtures").join(name)
}

/// The reference's example: rows, context length, sums, counts, predictions.
struct Expected {
    rows: Vec<Vec<u32>>,
    ctx_len: usize,
    sum: Vec<f64>,
    count: Vec<usize>,
    pred_sum: usize,
    pred_norm: usize,
}

fn expected() -> (Vec<Expected>, usize, usize) {
    let text = std::fs::read_to_string(fixture("hellaswag_tiny_expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let num = |x: &serde_json::Value| x.as_u64().unwrap() as usize;
    let examples = v["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Expected {
            rows: e["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| num(x) as u32)
                        .collect()
                })
                .collect(),
            ctx_len: num(&e["ctx_len"]),
            sum: e["sum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
            count: e["count"].as_array().unwrap().iter().map(num).collect(),
            pred_sum: num(&e["pred_sum"]),
            pred_norm: num(&e["pred_norm"]),
        })
        .collect();
    (examples, num(&v["correct_norm"]), num(&v["correct_sum"]))
}

fn rendered_fixture() -> Vec<Rendered> {
    let tok = Tokenizer::gpt2().unwrap();
    let examples = read_examples(&fixture("hellaswag_tiny.jsonl")).unwrap();
    examples.iter().map(|ex| render(&tok, ex)).collect()
}

#[test]
fn scores_match_transformers() {
    let (want, correct_norm, correct_sum) = expected();
    let rendered = rendered_fixture();
    assert_eq!(rendered.len(), want.len());
    // the rows as transformers' GPT-2 tokenizer rendered them
    for (r, w) in rendered.iter().zip(&want) {
        assert_eq!((r.rows.to_vec(), r.ctx_len), (w.rows.clone(), w.ctx_len));
    }
    let ck = read_checkpoint(&fixture("ref_gpt2vocab_model.bin")).unwrap();
    let t = row_length(&rendered, ck.config.max_seq_len, "maxT").unwrap();
    assert_eq!(t, 8);
    let mut first = None;
    // one example a forward, two (and a last batch of one), all five: the same scores
    for per_batch in [1, 2, 5] {
        let b = ENDINGS * per_batch;
        let opts = EngineOptions::cpu();
        let mut engine = create_engine(&opts, ck.config, ck.params.clone(), b, t).unwrap();
        let mut seen = Vec::new();
        let (total, scores) = evaluate(engine.as_mut(), &rendered, per_batch, t, |s| {
            seen.push(s.examples)
        })
        .unwrap();
        assert_eq!(seen.len(), rendered.len().div_ceil(per_batch));
        assert_eq!(seen.last(), Some(&rendered.len()));
        for (i, (s, w)) in scores.iter().zip(&want).enumerate() {
            assert_eq!(s.count.to_vec(), w.count, "example {i}");
            for e in 0..ENDINGS {
                // about 7 fp32 losses of 10.8 summed: a few ulps of each
                let err = (s.sum[e] - w.sum[e]).abs();
                assert!(
                    err < 2e-5,
                    "example {i} ending {e}: {} vs {}",
                    s.sum[e],
                    w.sum[e]
                );
            }
            assert_eq!(
                (s.pred_sum, s.pred_norm),
                (w.pred_sum, w.pred_norm),
                "example {i}"
            );
        }
        assert_eq!(
            (total.examples, total.correct_norm, total.correct_sum),
            (5, correct_norm, correct_sum)
        );
        // the fixture tells the two rules apart
        assert_ne!(correct_norm, correct_sum);
        match &first {
            None => first = Some(scores),
            Some(f) => assert!(*f == scores, "batches of {per_batch} scored differently"),
        }
    }
}

#[test]
fn score_counts_the_ending_s_tokens_and_breaks_ties_to_the_first() {
    // context of 2 tokens; endings of 1, 2, 3 and 2 tokens; T = 6
    let r = Rendered {
        rows: [
            vec![1, 2, 3],
            vec![1, 2, 3, 4],
            vec![1, 2, 3, 4, 5],
            vec![1, 2, 9, 9],
        ],
        ctx_len: 2,
        label: 0,
    };
    let t = 6;
    // position p's loss predicts token p + 1: the ending's tokens are predicted at 1..len-1;
    // position 0 (a context token predicted) and the padding must not count
    let mut losses = vec![100.0f32; ENDINGS * t];
    let counted: [&[f32]; ENDINGS] = [&[3.0], &[1.0, 4.0], &[1.0, 1.0, 1.5], &[2.5, 2.5]];
    for (i, vals) in counted.iter().enumerate() {
        losses[i * t + 1..i * t + 1 + vals.len()].copy_from_slice(vals);
    }
    let s = score(&r, &losses, t);
    assert_eq!(s.count, [1, 2, 3, 2]);
    assert_eq!(s.sum, [3.0, 5.0, 3.5, 5.0]);
    assert_eq!(s.avg(), [3.0, 2.5, 3.5 / 3.0, 2.5]);
    // lowest sum: ending 0 (3.0); lowest average: ending 2 (1.17)
    assert_eq!((s.pred_sum, s.pred_norm), (0, 2));
    // ties: sums 5.0 at 1 and 3, averages 2.5 at 1 and 3: the first wins
    losses[2 * t + 1..2 * t + 4].copy_from_slice(&[9.0, 9.0, 9.0]);
    losses[t + 1..t + 3].copy_from_slice(&[1.0, 4.0]);
    losses[1] = 9.0;
    let s = score(&r, &losses, t);
    assert_eq!((s.pred_sum, s.pred_norm), (1, 1));
    assert!(s.finite);
    // a NaN loss never wins (comparisons with NaN are false: ending 0 won every one), and the
    // example is marked, to be counted wrong
    losses[1] = f32::NAN;
    let s = score(&r, &losses, t);
    assert_eq!((s.pred_sum, s.pred_norm), (1, 1));
    assert!(!s.finite);
    losses[1] = 0.5;
    losses[t + 1] = f32::INFINITY;
    let s = score(&r, &losses, t);
    assert_eq!((s.pred_sum, s.pred_norm), (0, 0));
    assert!(!s.finite);
}

/// Writes `lines` to a file of its own and reads it as examples.
fn read_lines(name: &str, lines: &str) -> anyhow::Result<Vec<Example>> {
    let dir = engine_bin::scratch(&format!("hellaswag-{name}"));
    let path = dir.join("examples.jsonl");
    std::fs::write(&path, lines).unwrap();
    read_examples(&path)
}

/// A gzipped file (`*.gz`) is read as its text (it said "stream did not contain valid UTF-8").
#[test]
fn a_gzipped_file_reads_as_its_text() {
    let good = r#"{"ctx": "A", "endings": ["b", "c", "d", "e"], "label": 2}"#;
    let text = format!("{good}\n{good}\n");
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend(miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6));
    let crc = train_gpt2_cuda::formats::gzip::crc32(0, text.as_bytes());
    gz.extend(crc.to_le_bytes());
    gz.extend((text.len() as u32).to_le_bytes());
    let dir = engine_bin::scratch("hellaswag-gz");
    let path = dir.join("examples.jsonl.gz");
    std::fs::write(&path, gz).unwrap();
    let ex = read_examples(&path).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[1].label, ex[1].endings[3].as_str()), (2, "e"));
}

#[test]
fn bad_examples_are_named_by_their_line() {
    let good = r#"{"ctx": "A", "endings": ["b", "c", "d", "e"], "label": 1}"#;
    let ex = read_lines(
        "good",
        &format!("{good}\n\n{}\n", good.replace("1}", "\"3\"}")),
    )
    .unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[0].label, ex[1].label), (1, 3));
    assert_eq!(ex[0].endings[3], "e");
    let cases = [
        ("not json", "line 3: not a JSON record"),
        (
            r#"{"endings": ["b", "c", "d", "e"], "label": 1}"#,
            "line 3: no \"ctx\" string",
        ),
        (
            r#"{"ctx": "", "endings": ["b", "c", "d", "e"], "label": 1}"#,
            "line 3: an empty \"ctx\"",
        ),
        (
            r#"{"ctx": "A", "endings": ["b", "c", "d"], "label": 1}"#,
            "line 3: 3 endings, not 4",
        ),
        (
            r#"{"ctx": "A", "endings": ["b", 2, "d", "e"], "label": 1}"#,
            "line 3: an ending that is not a string",
        ),
        (
            r#"{"ctx": "A", "endings": "bcde", "label": 1}"#,
            "line 3: no \"endings\" array",
        ),
        (
            r#"{"ctx": "A", "endings": ["b", "c", "d", "e"], "label": 4}"#,
            "line 3: no \"label\" in 0..4",
        ),
        (
            r#"{"ctx": "A", "endings": ["b", "c", "d", "e"], "label": "x"}"#,
            "line 3: no \"label\" in 0..4",
        ),
        (
            r#"{"ctx": "A", "endings": ["b", "c", "d", "e"]}"#,
            "line 3: no \"label\" in 0..4",
        ),
    ];
    for (i, (line, want)) in cases.iter().enumerate() {
        let e = read_lines(&format!("bad{i}"), &format!("{good}\n\n{line}\n")).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(want), "{e}");
    }
    let e = format!("{:#}", read_lines("empty", "\n\n").unwrap_err());
    assert!(
        e.ends_with("hellaswag-empty/examples.jsonl: no examples"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        read_examples(Path::new("/nonexistent.jsonl")).unwrap_err()
    );
    assert!(e.contains("/nonexistent.jsonl: cannot read"), "{e}");
}

#[test]
fn a_row_longer_than_the_model_s_context_is_refused() {
    let mut rendered = rendered_fixture();
    assert_eq!(row_length(&rendered, 8, "the model's maxT").unwrap(), 8);
    // example 4's third row is 6 tokens; 9 are one too many
    rendered[3].rows[2].extend([1, 2, 3]);
    let e = row_length(&rendered, 8, "the model's maxT")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "HellaSwag example 4 has a row of 9 tokens (context and ending), more than the model's \
         maxT = 8"
    );
}

/// A line longer than any record (1 MiB) is an error naming it, not read on until the memory runs
/// out (`--hellaswag /dev/zero` took 23 GB before the OOM killer ended it); a line just within
/// the limit is read, and a pipe is read as a stream.
#[test]
fn an_endless_line_is_refused_by_its_number() {
    let good = r#"{"ctx": "A", "endings": ["b", "c", "d", "e"], "label": 1}"#;
    let long = format!("{good}\n\n{}\n{good}\n", "x".repeat(MAX_LINE + 1));
    let e = format!("{:#}", read_lines("long", &long).unwrap_err());
    assert!(
        e.contains(
            "hellaswag-long/examples.jsonl: line 3: longer than 1.0 MiB without a line's end"
        ),
        "{e}"
    );
    // a record padded to the limit, its newline past it: read
    let padded = format!("{good}{}\n", " ".repeat(MAX_LINE - good.len()));
    assert_eq!(read_lines("padded", &padded).unwrap().len(), 1);
    let dir = engine_bin::scratch("hellaswag-utf8");
    let bytes = dir.join("examples.jsonl");
    std::fs::write(&bytes, [good.as_bytes(), b"\n\n\"\xff\"\n"].concat()).unwrap();
    let e = format!("{:#}", read_examples(&bytes).unwrap_err());
    assert!(e.contains("line 3: not UTF-8 text (byte 2)"), "{e}");
    let e = format!("{:#}", read_examples(Path::new("/dev/zero")).unwrap_err());
    assert!(e.contains("/dev/zero: line 1: longer than 1.0 MiB"), "{e}");
    // a FIFO (as `<(zcat hellaswag_val.jsonl.gz)` gives)
    let fifo_dir = engine_bin::scratch("hellaswag-fifo");
    let fifo = fifo_dir.join("examples.jsonl");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("no mkfifo: the FIFO case is not checked");
        return;
    }
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, format!("{good}\n{good}\n")).unwrap())
    };
    assert_eq!(read_examples(&fifo).unwrap().len(), 2);
    writer.join().unwrap();
}
