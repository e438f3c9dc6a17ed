//! The Parquet reader (`formats::parquet`) against files pyarrow wrote
//! (`tools/write_parquet_fixtures.py`, tests/fixtures/parquet/): each layout's text column row by
//! row as pyarrow was given it (`texts.json`): PLAIN, dictionary, DELTA_BYTE_ARRAY and
//! DELTA_LENGTH_BYTE_ARRAY values (320 rows: several blocks of lengths), data pages v1 and v2,
//! snappy, gzip, zstd, lz4 and none, nulls, many row groups and pages, a footer over 64 KiB, a
//! required column, and a column after others (an int, a struct of two leaves, then a list after
//! it). The layouts not read are refused with what they are, as are a missing column or one that
//! is not a string, and a truncated file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use train_gpt2_cuda::formats::parquet::{read_text_column, ColumnSummary};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
}

fn expected() -> BTreeMap<String, Vec<Option<String>>> {
    let text = std::fs::read_to_string(fixture("texts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read(
    path: &std::path::Path,
    field: &str,
) -> anyhow::Result<(Vec<Option<String>>, ColumnSummary)> {
    let mut rows = Vec::new();
    let summary = read_text_column(path, field, |v| {
        rows.push(v.map(str::to_owned));
        Ok(())
    })?;
    Ok((rows, summary))
}

fn err(path: &std::path::Path, field: &str) -> String {
    format!("{:#}", read(path, field).unwrap_err())
}

#[test]
fn every_layout_reads_as_pyarrow_wrote_it() {
    let want = expected();
    assert_eq!(want.len(), 10);
    for (name, rows) in &want {
        let (got, summary) =
            read(&fixture(name), "text").unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(&got, rows, "{name}");
        assert_eq!(summary.rows, rows.len() as u64, "{name}");
        let nulls = rows.iter().filter(|r| r.is_none()).count() as u64;
        assert_eq!(summary.nulls, nulls, "{name}");
    }
    // the layouts really differ: row groups of 7 rows (6 groups), and nulls (every sixth row from
    // the third)
    let (_, s) = read(&fixture("nulls_gzip_groups.parquet"), "text").unwrap();
    assert_eq!((s.row_groups, s.nulls), (6, 7));
    let (_, s) = read(&fixture("columns.parquet"), "text").unwrap();
    assert_eq!(s.row_groups, 2);
    // a footer of more than 64 KiB (its length's third byte is not 0), in 5 row groups
    let big = std::fs::read(fixture("big_footer.parquet")).unwrap();
    let footer = u32::from_le_bytes(big[big.len() - 8..big.len() - 4].try_into().unwrap());
    assert!(footer > 1 << 16, "{footer}");
    let (_, s) = read(&fixture("big_footer.parquet"), "text").unwrap();
    assert_eq!(s.row_groups, 5);
    // another string column of the same file: the struct's leaf is not top-level
    let e = err(&fixture("columns.parquet"), "meta");
    assert!(
        e.contains("column 'meta' is a group of 2 fields, not a string"),
        "{e}"
    );
    // a list is a group of one field (its element)
    let e = err(&fixture("columns.parquet"), "tags");
    assert!(
        e.contains("column 'tags' is a group of 1 field, not a string"),
        "{e}"
    );
}

#[test]
fn what_is_not_read_is_refused_clearly() {
    let e = err(&fixture("brotli.parquet"), "text");
    assert!(
        e.contains("brotli.parquet: row group 0, column 'text'")
            && e.contains("the BROTLI codec is not read here"),
        "{e}"
    );
    let e = err(&fixture("columns.parquet"), "body");
    assert!(
        e.contains("no column 'body' (the file has 'id', 'meta', 'text', 'tags'): name the text column with --text-field"),
        "{e}"
    );
    let e = err(&fixture("columns.parquet"), "id");
    assert!(
        e.contains("column 'id' is of Parquet type INT64 (not BYTE_ARRAY"),
        "{e}"
    );
    let e = err(&fixture("columns.parquet"), "tags");
    assert!(e.contains("column 'tags' is a group"), "{e}");

    // truncated, or not Parquet at all
    let dir = std::env::temp_dir().join(format!("parquet-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixture("nulls_gzip_groups.parquet")).unwrap();
    let path = dir.join("bad.parquet");
    // (cut: it starts as Parquet does, so it is named as cut short, not as another kind of file)
    for len in [good.len() - 100, 3000] {
        std::fs::write(&path, &good[..len]).unwrap();
        let e = err(&path, "text");
        assert!(
            e.contains(&format!(
                "bad.parquet: truncated or damaged: it starts with PAR1 as a Parquet file does, \
                 but does not end with it ({len} bytes)"
            )),
            "{e}"
        );
    }
    std::fs::write(&path, b"PAR1").unwrap();
    let e = err(&path, "text");
    assert!(
        e.contains("bad.parquet: truncated: 4 bytes")
            && e.contains("shorter than its magic and footer"),
        "{e}"
    );
    std::fs::write(&path, b"{\"text\": \"not Parquet\"}\n").unwrap();
    let e = err(&path, "text");
    assert!(
        e.contains("bad.parquet: not a Parquet file (no PAR1 magic at its start)"),
        "{e}"
    );
    std::fs::write(&path, b"PAR").unwrap();
    let e = err(&path, "text");
    assert!(
        e.contains("bad.parquet: not a Parquet file (3 bytes, shorter than its magic"),
        "{e}"
    );
    // the data cut out, the footer kept: the chunks run past the data
    let mut cut = good[..1000].to_vec();
    let footer_len = u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap());
    cut.extend_from_slice(&good[good.len() - 8 - footer_len as usize..]);
    std::fs::write(&path, &cut).unwrap();
    let e = err(&path, "text");
    assert!(
        e.contains("runs past the data: truncated or damaged"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
