#!/usr/bin/env python3
"""gzip files for tests/gzip.rs, written with Python's zlib (not the engine's reader).

    python3 tools/write_gzip_fixtures.py

Writes tests/fixtures/gzip/*.gz from data/shakespeare/hamlet.txt (its first 20,000 bytes, or the
whole play), each a different shape of the format (RFC 1952):
- plain.gz: Python's gzip.compress (no name, mtime 0);
- all_flags.gz: a header with every optional field (extra field, file name, comment, header CRC);
- stored.gz: deflate level 0 (stored blocks only);
- members.gz: three members, the text cut in three (the middle one empty);
- play.gz: the whole play at level 9 (more than one 64 KiB read of compressed data);
- records.jsonl.gz: JSON Lines, one record {"text": ...} per 2,000 bytes of the 20,000.
The uncompressed text of every file but play.gz and records.jsonl.gz is the 20,000 bytes;
play.gz's is the play.
"""
import gzip
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gzip")


def deflate(data, level):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def member(data, level=6, flags=0, extra=b"", name=b"", comment=b""):
    header = bytes([0x1F, 0x8B, 8, flags]) + struct.pack("<I", 0) + bytes([0, 3])
    if flags & 0x04:
        header += struct.pack("<H", len(extra)) + extra
    if flags & 0x08:
        header += name + b"\0"
    if flags & 0x10:
        header += comment + b"\0"
    if flags & 0x02:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + deflate(data, level) + trailer


def main():
    play = open(os.path.join(ROOT, "data", "shakespeare", "hamlet.txt"), "rb").read()
    text = play[:20000]
    os.makedirs(OUT, exist_ok=True)
    files = {
        "plain.gz": gzip.compress(text, mtime=0),
        "all_flags.gz": member(text, flags=0x02 | 0x04 | 0x08 | 0x10, extra=b"XY\x02\x00ab",
                               name=b"hamlet.txt", comment=b"every optional header field"),
        "stored.gz": member(text, level=0),
        "members.gz": member(text[:7000]) + member(b"") + member(text[7000:]),
        "play.gz": member(play, level=9),
    }
    assert text.isascii()
    records = b"".join(json.dumps({"text": text[i:i + 2000].decode()}).encode() + b"\n"
                       for i in range(0, len(text), 2000))
    for name, data in files.items():
        assert gzip.decompress(data) == (play if name == "play.gz" else text), name
    files["records.jsonl.gz"] = member(records)
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
