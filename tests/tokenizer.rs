//! The GPT-2 tokenizer against ids published by tiktoken users (independent references), GPT-2's
//! byte-to-token table recomputed here, and exact round trips of unicode text and the whole
//! default corpus; a large text encoded in pieces gives the whole text's ids.

mod engine_bin;

use engine_bin::Trickle;
use train_gpt2_cuda::data::default_corpus_dir;
use train_gpt2_cuda::tokenizer::{for_each_text_part, split_for_encoding, Decoder, Tokenizer};

fn tok() -> Tokenizer {
    Tokenizer::gpt2().unwrap()
}

#[test]
fn known_gpt2_ids() {
    let tk = tok();
    assert_eq!(tk.encode("Hello world"), vec![15496, 995]);
    assert_eq!(tk.encode("hello world"), vec![31373, 995]);
    assert_eq!(tk.encode(" the"), vec![262]);
    assert_eq!(tk.encode("\n"), vec![198]);
    assert_eq!(tk.encode(" "), vec![220]);
    assert_eq!(tk.encode("!"), vec![0]);
    assert_eq!(tk.encode("A"), vec![32]);
    // The first 24 tokens of tiny Shakespeare, as printed by tiktoken's get_encoding('gpt2').
    let text =
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.";
    assert_eq!(
        tk.encode(text),
        vec![
            5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13, 198, 198,
            3237, 25, 198, 5248, 461, 11, 2740, 13
        ]
    );
    assert_eq!(tk.decode(&[15496, 995]).unwrap(), "Hello world");
}

#[test]
fn endoftext_is_not_special_in_text() {
    let tk = tok();
    assert_eq!(tk.eot(), 50256);
    assert_eq!(tk.vocab_size(), 50257);
    assert_eq!(tk.token_bytes(50256).unwrap(), b"<|endoftext|>");
    // tiktoken's encode("<|endoftext|>", disallowed_special=()) gives these ordinary tokens.
    let ids = tk.encode("<|endoftext|>");
    assert_eq!(ids, vec![27, 91, 437, 1659, 5239, 91, 29]);
    assert_eq!(tk.decode(&ids).unwrap(), "<|endoftext|>");
    assert_eq!(
        tk.decode(&[50256, 15496, 995]).unwrap(),
        "<|endoftext|>Hello world"
    );
}

/// GPT-2's `bytes_to_unicode` order: the printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ keep their order
/// as tokens 0..188, then the other bytes in increasing order are tokens 188..256.
#[test]
fn single_byte_tokens_follow_gpt2_byte_order() {
    let tk = tok();
    let mut order: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    assert_eq!(order.len(), 188);
    let printable = order.clone();
    order.extend((0u8..=255).filter(|b| !printable.contains(b)));
    assert_eq!(order.len(), 256);
    for (id, &byte) in order.iter().enumerate() {
        assert_eq!(tk.token_bytes(id as u32).unwrap(), &[byte], "token {id}");
    }
}

#[test]
fn unicode_round_trips() {
    let tk = tok();
    let texts = [
        "héllo wörld, naïve café, Ærøskøbing, ñandú",
        "日本語のテキストと中文字符，한국어 문장",
        "emoji 🦀🎉👍🏽 and a family 👨‍👩‍👧‍👦",
        "Ελληνικά, Русский текст, עברית, العربية",
        "tabs\tand\r\nwindows lines\u{0}nul and \u{FFFD}",
        "",
    ];
    for text in texts {
        let ids = tk.encode(text);
        assert!(ids.iter().all(|&id| id < 50256), "{text}: {ids:?}");
        assert_eq!(tk.decode(&ids).unwrap(), text);
        assert_eq!(tk.decode_bytes(&ids).unwrap(), text.as_bytes());
    }
    // A crab is 4 UTF-8 bytes split over several tokens: a part alone decodes lossily, not an error.
    let ids = tk.encode("🦀");
    assert!(ids.len() > 1, "{ids:?}");
    let first = tk.decode_bytes(&ids[..1]).unwrap();
    assert_eq!(first, &"🦀".as_bytes()[..first.len()]);
    assert!(tk.decode(&ids[..1]).unwrap().contains('\u{FFFD}'));
}

/// The bundled plays' text files, in name order.
fn plays() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(default_corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn whole_default_corpus_round_trips() {
    let tk = tok();
    let files = plays();
    assert_eq!(files.len(), 8, "{files:?}");
    let mut total_bytes = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        total_bytes += text.len();
        let ids = tk.encode(&text);
        // English prose is about 3.5-4.5 bytes per GPT-2 token; guards against a degenerate split.
        let ratio = text.len() as f64 / ids.len() as f64;
        assert!((2.5..5.0).contains(&ratio), "{}: {ratio}", f.display());
        assert!(tk.decode(&ids).unwrap() == text, "{}", f.display());
    }
    assert!((900_000..1_200_000).contains(&total_bytes), "{total_bytes}");
}

#[test]
fn out_of_range_ids_are_errors() {
    let tk = tok();
    let e = tk.decode(&[15496, 50257]).unwrap_err().to_string();
    assert!(
        e.contains("token id 50257 at position 1 is out of range for vocabulary size 50257"),
        "{e}"
    );
    let e = tk.decode_bytes(&[u32::MAX]).unwrap_err().to_string();
    assert!(e.contains(&format!("token id {}", u32::MAX)), "{e}");
    assert!(tk.token_bytes(50257).is_none());
}

#[test]
fn decoder_from_token_bytes() {
    let tk = tok();
    let table = tk.decoder().all_token_bytes().to_vec();
    assert_eq!(table.len(), 50257);
    let d = Decoder::from_token_bytes(table, 50256).unwrap();
    let text = "To be, or not to be: that is the question. 🦀";
    assert_eq!(d.decode(&tk.encode(text)).unwrap(), text);
    assert_eq!(d.eot(), 50256);
    assert_eq!(d.vocab_size(), 50257);

    // A tiny hand-made vocabulary.
    let d = Decoder::from_token_bytes(vec![b"ab".to_vec(), b"c".to_vec(), b"<eot>".to_vec()], 2)
        .unwrap();
    assert_eq!(d.decode(&[2, 0, 1, 0]).unwrap(), "<eot>abcab");
    let e = d.decode(&[0, 3]).unwrap_err().to_string();
    assert!(
        e.contains("token id 3 at position 1 is out of range for vocabulary size 3"),
        "{e}"
    );
    let e = Decoder::from_token_bytes(vec![b"a".to_vec()], 1)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("end-of-text id 1 is out of range for vocabulary size 1"),
        "{e}"
    );
    let e = Decoder::from_token_bytes(vec![], 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token table is empty"), "{e}");
}

/// Ids decoded one at a time give whole characters as soon as their last byte comes, and in all
/// the text that std's lossy UTF-8 decoding gives for all the bytes at once (the reference):
/// a character split between tokens, bytes that can begin no character, a character broken off
/// by ASCII, one still cut short at the end.
#[test]
fn a_stream_of_ids_decodes_to_the_whole_text() {
    // one token per byte (id = the byte), and an end-of-text token
    let mut table: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    table.push(b"<eot>".to_vec());
    let d = Decoder::from_token_bytes(table, 256).unwrap();
    // what each id completes, what the finish adds, and the whole text
    let stream = |ids: &[u32]| {
        let mut s = d.stream();
        let pieces: Vec<String> = ids.iter().map(|&id| s.push(id).to_string()).collect();
        let end = s.finish().unwrap().to_string();
        (pieces, end, s.text().to_string())
    };
    // é (C3 A9), 🦀 (F0 9F A6 80), a lone continuation byte, E2 broken off by 'a', <eot>, and
    // the first two bytes of 🦀 at the end
    let ids = [
        0xC3, 0xA9, 0xF0, 0x9F, 0xA6, 0x80, 0x80, 0xE2, 0x61, 256, 0xF0, 0x9F,
    ];
    let (pieces, end, text) = stream(&ids);
    assert_eq!(
        pieces,
        [
            "",
            "é",
            "",
            "",
            "",
            "🦀",
            "\u{FFFD}",
            "",
            "\u{FFFD}a",
            "<eot>",
            "",
            ""
        ]
    );
    assert_eq!(end, "\u{FFFD}");
    assert_eq!(text, "é🦀\u{FFFD}\u{FFFD}a<eot>\u{FFFD}");
    assert_eq!(text, d.decode(&ids).unwrap());
    // random bytes: the pieces, then the finished text, as std decodes them
    let mut x = 12345u64;
    let ids: Vec<u32> = (0..5000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // mostly bytes from 0x80 up, so that multibyte characters come whole now and then
            let b = (x >> 56) as u32;
            if b < 0x40 {
                b + 0x20
            } else {
                b.max(0x80)
            }
        })
        .collect();
    let bytes: Vec<u8> = ids.iter().map(|&id| id as u8).collect();
    let want = String::from_utf8_lossy(&bytes);
    let (pieces, end, text) = stream(&ids);
    assert_eq!(text, want);
    assert_eq!(pieces.concat() + &end, want);
    assert!(
        want.chars()
            .filter(|&c| c != '\u{FFFD}' && !c.is_ascii())
            .count()
            > 10
    );
    // GPT-2's own tokens, whose bytes split characters too
    let tk = tok();
    for text in TRICKY.iter().chain(["日本語 🦀 é"].iter()) {
        let mut s = tk.decoder().stream();
        let pieces: String = tk
            .encode(text)
            .into_iter()
            .map(|id| s.push(id).to_string())
            .collect();
        assert_eq!(pieces, *text);
        assert_eq!(s.finish().unwrap(), "");
        assert_eq!(s.text(), *text);
    }
    // an id out of range adds nothing, and the finish names the first one
    let mut s = d.stream();
    assert_eq!(s.push(0x41), "A");
    assert_eq!(s.push(257), "");
    assert_eq!(s.push(0x42), "B");
    assert_eq!(s.push(900), "");
    assert_eq!(s.text(), "AB");
    let e = s.finish().unwrap_err().to_string();
    assert_eq!(
        e,
        "tokenizer: token id 257 at position 1 is out of range for vocabulary size 257"
    );
}

/// Texts where a cut in the wrong place changes the ids: runs of spaces, newlines before and after
/// spaces, tabs, a no-break space, contractions, digits, punctuation, CJK and emoji.
const TRICKY: &[&str] = &[
    "a  b c   d",
    "line one \nline two\n next \n\n  after",
    "don't 's 're 've 'm 'll 'd it's",
    "tab\t x\t\ty z",
    "no\u{a0}break x\u{a0} y",
    "1 2 34 567 8.9 10,000 -5 +6",
    "!! ?? ... ,, -- \"quoted\" (paren)",
    "数字 123 中文 文本 ok",
    "emoji 🦀 crab 🦀🦀 end",
    "  leading and trailing  ",
    " ",
    "",
];

#[test]
fn pieces_encode_to_the_whole_text_s_ids() {
    let tk = tok();
    // the rule matters: cutting before every whitespace character (not only before the safe
    // spaces) changes the ids of some of these texts ("\n\n" is one token, "\n" "\n" two)
    let naive = |t: &str| -> Vec<u32> {
        let mut ids = Vec::new();
        let mut start = 0;
        for (i, _) in t.char_indices().filter(|(_, ch)| ch.is_whitespace()) {
            ids.extend(tk.encode(&t[start..i]));
            start = i;
        }
        ids.extend(tk.encode(&t[start..]));
        ids
    };
    assert!(TRICKY.iter().any(|t| naive(t) != tk.encode(t)));
    for text in TRICKY {
        // pieces of at least 1 byte: a cut at every safe place
        let pieces = split_for_encoding(text, 1);
        assert_eq!(pieces.concat(), *text);
        let ids: Vec<u32> = pieces.iter().flat_map(|p| tk.encode(p)).collect();
        assert_eq!(ids, tk.encode(text), "{text:?} cut as {pieces:?}");
    }
    // "a  b c   d": the only safe cut is before " c" (the others are inside runs of spaces)
    assert_eq!(split_for_encoding("a  b c   d", 1), ["a  b", " c   d"]);

    // the bundled plays as one text, cut into about 1,000 pieces of at least 1,000 bytes
    let text: String = plays()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let pieces = split_for_encoding(&text, 1000);
    assert!(pieces.len() > 900, "{} pieces", pieces.len());
    assert!(pieces[..pieces.len() - 1].iter().all(|p| p.len() >= 1000));
    assert_eq!(pieces.concat(), text);
    let whole = tk.encode(&text);
    assert_eq!(tk.encode_parallel(&text, 1000), whole);
    // and the shards hold these ids (with an end-of-text before each play)
    assert!(whole.len() > 250_000);
}

fn parts_of(bytes: &[u8], step: usize, part_bytes: usize) -> anyhow::Result<(Vec<String>, u64)> {
    let mut parts = Vec::new();
    let n = for_each_text_part(Trickle::new(bytes, step), part_bytes, &"text", |p| {
        parts.push(p.to_string());
        Ok(())
    })?;
    Ok((parts, n))
}

#[test]
fn text_read_in_parts_is_cut_where_the_whole_text_is() {
    let mut texts: Vec<String> = TRICKY.iter().map(|t| t.to_string()).collect();
    texts.push(TRICKY.join(" "));
    texts.push(TRICKY.concat());
    for text in &texts {
        for part_bytes in [1, 2, 3, 5, 8, 13, 40, 1000] {
            for step in [1, 3, 7, 64] {
                let (parts, n) = parts_of(text.as_bytes(), step, part_bytes).unwrap();
                let want: Vec<&str> = split_for_encoding(text, part_bytes)
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect();
                assert_eq!(
                    parts, want,
                    "{text:?} in parts of {part_bytes}, reads of {step}"
                );
                assert_eq!(n, text.len() as u64);
            }
        }
    }
    // a play read 4 kB at a time through std's reader: the same ~1,000 pieces
    let text = std::fs::read_to_string(&plays()[0]).unwrap();
    let (parts, _) = parts_of(text.as_bytes(), 4096, 1000).unwrap();
    assert!(parts.len() > 100, "{}", parts.len());
    assert_eq!(parts, split_for_encoding(&text, 1000));
}

#[test]
fn text_read_in_parts_reports_the_first_invalid_byte_of_the_whole_input() {
    let text = "数字 123 🦀 crab é x".as_bytes();
    // every byte replaced by one that cannot be in UTF-8, and every cut of the text (a character
    // cut short at the end); the offset is the whole input's, whatever the reads and parts
    let mut cases: Vec<Vec<u8>> = (0..text.len())
        .map(|i| {
            let mut b = text.to_vec();
            b[i] = 0xff;
            b
        })
        .collect();
    cases.extend((1..text.len()).map(|n| text[..n].to_vec()));
    let mut failed = 0;
    for bytes in &cases {
        let whole = std::str::from_utf8(bytes);
        for (part_bytes, step) in [(1, 1), (2, 3), (4, 2), (7, 5), (100, 64)] {
            let got = parts_of(bytes, step, part_bytes);
            match whole {
                Ok(s) => assert_eq!(got.unwrap().1, s.len() as u64),
                Err(e) => {
                    let msg = got.unwrap_err().to_string();
                    let want = format!(
                        "text: not UTF-8 text (invalid byte at offset {})",
                        e.valid_up_to()
                    );
                    assert_eq!(
                        msg, want,
                        "{bytes:?}, parts of {part_bytes}, reads of {step}"
                    );
                    failed += 1;
                }
            }
        }
    }
    // most of the cases are invalid (cuts between characters are valid text)
    assert!(failed > 5 * text.len(), "{failed}");

    // a read that fails names the input
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let e = for_each_text_part(Broken, 10, &"f.txt", |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "f.txt: cannot read: disk on fire");
    // and an error of the caller's stops the reading
    let mut calls = 0;
    let e = for_each_text_part("a b c d e".as_bytes(), 1, &"t", |_| {
        calls += 1;
        anyhow::bail!("enough")
    })
    .unwrap_err();
    assert_eq!((e.to_string(), calls), ("enough".to_string(), 1));
}
