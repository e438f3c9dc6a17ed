#!/usr/bin/env python3
"""Prints a log.jsonl with its timing fields ("ms", "tokens_per_s", "mfu", and any "time"/
"elapsed"/"timestamp" key) replaced by <T>, the rest of each line exactly as written (key order,
number formatting). A line that is not JSON is printed as 'NOT JSON: ...'."""
import json, re, sys

TIMING = re.compile(r'"(ms|tokens_per_s|mfu|time|elapsed|elapsed_s|timestamp|secs)": ?'
                    r'(-?[0-9][0-9.eE+-]*|null|NaN|-?Infinity|"[^"]*")')


def normalised(path):
    data = open(path, "rb").read().decode("utf-8", "backslashreplace")
    out = []
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        try:
            json.loads(line)
            ok = True
        except Exception:
            ok = False
        line = TIMING.sub(lambda m: '"%s": <T>' % m.group(1), line)
        out.append(line if ok else "NOT JSON: " + line)
    if data and not data.endswith("\n"):
        out.append("(no newline at the end)")
    return "".join(l + "\n" for l in out)


if __name__ == "__main__":
    sys.stdout.write(normalised(sys.argv[1]))
