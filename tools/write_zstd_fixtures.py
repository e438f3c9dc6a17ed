#!/usr/bin/env python3
"""zstd files for tests/zstd.rs, written by the reference zstd command-line tool (not the engine's
reader, nor the ruzstd crate it uses).

    python3 tools/write_zstd_fixtures.py        # needs `zstd` on PATH (apt install zstd)

Writes tests/fixtures/zstd/*.zst from data/shakespeare/hamlet.txt (its first 20,000 bytes, or the
whole play), each a different shape of the format (RFC 8878):
- plain.zst: `zstd -3` (with the content checksum, zstd's default);
- nocheck.zst: `zstd -3 --no-check` (no checksum);
- frames.zst: three frames, the text cut in three (the middle one empty), as `cat` joins files;
- skippable.zst: a skippable frame (magic 0x184D2A53, 11 bytes of payload), plain.zst's frame,
  and another skippable frame (magic 0x184D2A5F, empty) at the end;
- play.zst: the whole play (190 KB) at level 19: more than one block (at most 128 KiB each);
- window.zst: the whole play with a 1 KiB window (`--zstd=wlog=10`), so that the decoder hands
  out text before the frame ends;
- only_skippable.zst: one skippable frame and nothing else (its text is empty, as `zstd -d`
  finds);
- records.jsonl.zst: JSON Lines, one record {"text": ...} per 2,000 bytes of the 20,000.
The uncompressed text of every file but play.zst, window.zst, only_skippable.zst and
records.jsonl.zst is the 20,000 bytes; play.zst's and window.zst's is the play. Each is checked by `zstd -d` before it is written.
"""
import json
import os
import struct
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "zstd")


def zstd(data, *args):
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, capture_output=True,
                          check=True).stdout


def unzstd(data):
    return subprocess.run(["zstd", "-q", "-d", "-c"], input=data, capture_output=True,
                          check=True).stdout


def skippable(magic, payload):
    return struct.pack("<II", magic, len(payload)) + payload


def main():
    play = open(os.path.join(ROOT, "data", "shakespeare", "hamlet.txt"), "rb").read()
    text = play[:20000]
    assert text.isascii()
    version = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    print(version)
    os.makedirs(OUT, exist_ok=True)
    plain = zstd(text, "-3")
    files = {
        "plain.zst": plain,
        "nocheck.zst": zstd(text, "-3", "--no-check"),
        "frames.zst": zstd(text[:7000]) + zstd(b"") + zstd(text[7000:]),
        "skippable.zst": skippable(0x184D2A53, b"not zstd!!\n") + plain
        + skippable(0x184D2A5F, b""),
        "play.zst": zstd(play, "-19"),
        "window.zst": zstd(play, "--zstd=wlog=10"),
    }
    for name, data in files.items():
        assert unzstd(data) == (play if name in ("play.zst", "window.zst") else text), name
    files["only_skippable.zst"] = skippable(0x184D2A50, b"abc")
    assert unzstd(files["only_skippable.zst"]) == b""
    records = b"".join(json.dumps({"text": text[i:i + 2000].decode()}).encode() + b"\n"
                       for i in range(0, len(text), 2000))
    files["records.jsonl.zst"] = zstd(records, "-3")
    assert unzstd(files["records.jsonl.zst"]) == records
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
