#!/usr/bin/env python3
"""Writes tiny llm.c-format files with known contents, for tests/formats.rs.

An independent writer: Python standard library only (struct), written from the llm.c formats, not
from the Rust code. Every value is a simple formula of its index, so that the Rust tests can
recompute each one. Run from anywhere; writes into tests/fixtures/ next to this tools/ folder:

    python3 tools/write_llmc_fixtures.py

Files (all little-endian, 256 x int32 header, rest of header zero):
  llmc_model_v3.bin      checkpoint, fp32 params          (magic 20240326, version 3)
  llmc_model_v5.bin      the same params as bf16          (magic 20240326, version 5)
  llmc_debug_state.bin   B=2, T=3 batch + expectations    (magic 20240327, version 2)
  llmc_tokenizer_v1.bin  10 tokens, no EOT field          (magic 20240328, version 1)
  llmc_tokenizer_v2.bin  the same tokens, EOT = 9         (magic 20240328, version 2)

The model config is maxT=8, V=10, Vp=16, L=2, NH=2, C=4. Vp=16 is not the multiple of 128 that
llm.c pads to: it keeps the files a few KB while still having padding rows (V..Vp of wte), and it
checks that the reader takes Vp from the header instead of assuming the 128 padding.
"""

import os
import struct

MAXT, V, VP, L, NH, C = 8, 10, 16, 2, 2, 4
B, T = 2, 3
LOSS = 2.418367  # the debug state's expected loss, as an f32
TOKEN_LENS = [1, 2, 3, 5, 8, 13, 255, 1, 4, 6]
EOT = 9


def param_shapes():
    """The 16 parameter tensors in checkpoint order (llm.c's PARAM_NAMES order)."""
    return [
        ("wte", VP * C),
        ("wpe", MAXT * C),
        ("ln1w", L * C),
        ("ln1b", L * C),
        ("qkvw", L * 3 * C * C),
        ("qkvb", L * 3 * C),
        ("attprojw", L * C * C),
        ("attprojb", L * C),
        ("ln2w", L * C),
        ("ln2b", L * C),
        ("fcw", L * 4 * C * C),
        ("fcb", L * 4 * C),
        ("fcprojw", L * C * 4 * C),
        ("fcprojb", L * C),
        ("lnfw", C),
        ("lnfb", C),
    ]


NUM_PARAMS = sum(n for _, n in param_shapes())


def is_wte_padding(i):
    """Rows V..Vp of wte are zero in llm.c's files (params and grads)."""
    return V * C <= i < VP * C


def param(i):
    return 0.0 if is_wte_padding(i) else (i % 97) / 97.0 - 0.5


def grad(i):
    return 0.0 if is_wte_padding(i) else ((i * 7) % 101) / 101.0 * 0.02 - 0.01


def logit(i):
    return (i % 13) / 13.0 * 4.0 - 2.0


def x_token(i):
    return (7 * i + 3) % V


def y_token(i):
    return (7 * i + 4) % V


def token_bytes(k):
    return bytes((k * 37 + j * 11 + 200) % 256 for j in range(TOKEN_LENS[k]))


def header(*fields):
    h = list(fields) + [0] * (256 - len(fields))
    return struct.pack("<256i", *h)


def f32s(xs):
    return struct.pack("<%df" % len(xs), *xs)  # each double rounds to the nearest f32


def bf16_bits(x):
    """f32 -> bf16 bits, rounded to nearest, ties to even (finite values only)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def self_check():
    assert NUM_PARAMS == 592, NUM_PARAMS
    assert bf16_bits(1.0) == 0x3F80
    assert bf16_bits(1.00390625) == 0x3F80  # exactly halfway, ties to even (down)
    assert bf16_bits(1.01171875) == 0x3F82  # exactly halfway, ties to even (up)
    above_half = struct.unpack("<f", struct.pack("<I", 0x3F808001))[0]
    assert bf16_bits(above_half) == 0x3F81  # one f32 ulp above halfway rounds up
    below_half = struct.unpack("<f", struct.pack("<I", 0x3F817FFF))[0]
    assert bf16_bits(below_half) == 0x3F81  # one f32 ulp below halfway rounds down
    assert bf16_bits(-2.0) == 0xC000
    assert all(1 <= n <= 255 for n in TOKEN_LENS) and len(TOKEN_LENS) == V


def main():
    self_check()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    params = [param(i) for i in range(NUM_PARAMS)]
    files = {
        "llmc_model_v3.bin": header(20240326, 3, MAXT, V, L, NH, C, VP) + f32s(params),
        "llmc_model_v5.bin": header(20240326, 5, MAXT, V, L, NH, C, VP)
        + struct.pack("<%dH" % NUM_PARAMS, *[bf16_bits(p) for p in params]),
        "llmc_debug_state.bin": header(20240327, 2, B, T)
        + struct.pack("<%di" % (B * T), *[x_token(i) for i in range(B * T)])
        + struct.pack("<%di" % (B * T), *[y_token(i) for i in range(B * T)])
        + f32s([logit(i) for i in range(B * T * V)])
        + f32s([LOSS])
        + f32s([grad(i) for i in range(NUM_PARAMS)]),
    }
    tokens = b"".join(struct.pack("<B", TOKEN_LENS[k]) + token_bytes(k) for k in range(V))
    files["llmc_tokenizer_v1.bin"] = header(20240328, 1, V) + tokens
    files["llmc_tokenizer_v2.bin"] = header(20240328, 2, V, EOT) + tokens
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print("wrote %s (%d bytes)" % (os.path.normpath(os.path.join(out, name)), len(data)))


if __name__ == "__main__":
    main()
