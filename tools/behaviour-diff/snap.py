#!/usr/bin/env python3
"""usage: snap.py WORKDIR CACHE.json: every entry under WORKDIR (the link WORKDIR/in left out),
sorted: 'd MODE path/', 'l path -> target', 'f MODE SIZE SHA256[:16] path', log.jsonl files as
'f MODE (log, below) path'; then each log.jsonl with its timing fields replaced by <T> (see
norm_log.py), or 'as before' where it has not changed since the last call. CACHE keeps the hashes of files by (path, size, mtime, inode) between calls."""
import hashlib, json, os, stat, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from norm_log import normalised

work, cache_path = sys.argv[1], sys.argv[2]
try:
    cache = json.load(open(cache_path))
except Exception:
    cache = {}
entries, logs = [], []
for root, dirs, files in os.walk(work):
    rel_root = os.path.relpath(root, work)
    if rel_root == ".":
        dirs[:] = [d for d in dirs if d != "in"]
        files = [f for f in files if f != "in"]
    for name in dirs + files:
        p = os.path.join(root, name)
        rel = os.path.normpath(os.path.join(rel_root, name))
        st = os.lstat(p)
        mode = "%o" % stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append((rel, "l %s -> %s" % (rel, os.readlink(p))))
        elif stat.S_ISDIR(st.st_mode):
            entries.append((rel, "d %s %s/" % (mode, rel)))
        elif name == "log.jsonl":
            entries.append((rel, "f %s (log, below) %s" % (mode, rel)))
            logs.append(rel)
        elif stat.S_ISREG(st.st_mode):
            key = "%s|%d|%d|%d" % (rel, st.st_size, st.st_mtime_ns, st.st_ino)
            h = cache.get(key)
            if h is None:
                d = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        d.update(chunk)
                h = cache[key] = d.hexdigest()[:16]
            entries.append((rel, "f %s %d %s %s" % (mode, st.st_size, h, rel)))
        else:
            entries.append((rel, "? %s %s" % (mode, rel)))
for _, line in sorted(entries):
    print(line)
sys.stdout.flush()
# (a log is printed when it is new or has changed since the last snapshot)
seen = cache.setdefault("logs", {})
for rel in sorted(logs):
    text = normalised(os.path.join(work, rel))
    digest = hashlib.sha256(text.encode()).hexdigest()
    if seen.get(rel) == digest:
        print("--- %s: as before" % rel)
    else:
        print("--- %s (timings stripped)" % rel)
        sys.stdout.write(text)
        seen[rel] = digest
json.dump(cache, open(cache_path, "w"))
