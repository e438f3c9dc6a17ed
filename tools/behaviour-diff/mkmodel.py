#!/usr/bin/env python3
"""usage: mkmodel.py SRC OUT FACTOR: an llm.c fp32 checkpoint (version 3) with every parameter
multiplied by FACTOR (a model whose first loss is not finite, for FACTOR 1e30)."""
import struct, sys
src, out, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = open(src, "rb").read()
h = struct.unpack("<256i", data[:1024])
assert h[0] == 20240326 and h[1] == 3, h[:2]
n = (len(data) - 1024) // 4
p = struct.unpack("<%df" % n, data[1024:])
with open(out, "wb") as f:
    f.write(data[:1024])
    f.write(struct.pack("<%df" % n, *[x * factor for x in p]))
