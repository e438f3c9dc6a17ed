#!/usr/bin/env python3
"""Writes tests/fixtures/shard_small.bin, an llm.c token shard written independently of the Rust
code with Python's struct module: 256 little-endian int32 header (magic 20240520, version 1, token
count, zeros), then the tokens as little-endian uint16.

Run from the repository root: python3 tools/write_shard_fixture.py
The tokens are repeated in tests/data.rs (SMALL_SHARD_TOKENS)."""
import struct

TOKENS = [50256, 15496, 995, 0, 1, 255, 256, 257, 4660, 65535, 12345, 198, 50255, 7, 8, 9, 10]

header = [0] * 256
header[0] = 20240520
header[1] = 1
header[2] = len(TOKENS)
with open("tests/fixtures/shard_small.bin", "wb") as f:
    f.write(struct.pack("<256i", *header))
    f.write(struct.pack("<%dH" % len(TOKENS), *TOKENS))
