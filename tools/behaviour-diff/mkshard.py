#!/usr/bin/env python3
"""Writes llm.c token shards: 256 x int32 header (magic 20240520, version 1, N), then N uint16.
usage: mkshard.py OUT KIND [args]
  slice SRC START N        tokens [START, START+N) of shard SRC
  bad SRC START N POS ID   as slice, with token POS set to ID (an id out of the vocabulary)
  spike N_PERIODIC N_RANDOM PERIOD SEED   a periodic run of ids 0..PERIOD-1, then random ids < 50257
  rand N MAXID SEED        N random ids < MAXID
  raw ID...                the given ids
"""
import random, struct, sys

def read(path):
    with open(path, "rb") as f:
        h = struct.unpack("<256i", f.read(1024))
        assert h[0] == 20240520 and h[1] == 1, path
        n = h[2]
        return list(struct.unpack("<%dH" % n, f.read(2 * n)))

def write(path, toks):
    h = [0] * 256
    h[0], h[1], h[2] = 20240520, 1, len(toks)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *h))
        f.write(struct.pack("<%dH" % len(toks), *toks))

out, kind, a = sys.argv[1], sys.argv[2], sys.argv[3:]
if kind == "slice":
    t = read(a[0]); s, n = int(a[1]), int(a[2]); write(out, t[s:s + n])
elif kind == "bad":
    t = read(a[0])[int(a[1]):int(a[1]) + int(a[2])]; t[int(a[3])] = int(a[4]); write(out, t)
elif kind == "spike":
    per, rnd, period, seed = map(int, a)
    r = random.Random(seed)
    write(out, [i % period for i in range(per)] + [r.randrange(50257) for _ in range(rnd)])
elif kind == "rand":
    n, maxid, seed = map(int, a)
    r = random.Random(seed)
    write(out, [r.randrange(maxid) for _ in range(n)])
elif kind == "raw":
    write(out, [int(x) for x in a])
else:
    sys.exit("unknown kind " + kind)
