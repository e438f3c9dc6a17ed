#!/usr/bin/env python3
"""Does a bf16 training run track the fp32 run of the same seed and data?

    python3 tools/loss_band.py FP32.log BF16.log [--window 25] [--band 0.02] [--val-band 0.02]

Reads two train-gpt2-cuda logs (lines `step    N/M | loss X | ...` and `val loss X`) and compares:
- the training loss averaged over consecutive windows of --window steps (single-step losses are
  noisy: the two runs round differently, so their per-step losses differ by more than their trend);
  a last window shorter than half of one joins the window before it;
- every validation loss, in order.
A window or validation loss passes when |bf16 - fp32| <= band * fp32; a NaN or infinite loss
fails. Prints one line per comparison and exits 0 when all pass; 1 when one does not, or on bad
input, with a message saying which: a missing file, a file without steps, runs of other steps
(another M, a run cut short, other step numbers) or validations, or logs whose model lines name
the precisions the other way round (the first must be fp32, the second bf16).
"""
import argparse
import math
import re
import sys

STEP = re.compile(r"^step\s+(\d+)/(\d+) \| loss (\S+)")
VAL = re.compile(r"^val loss (\S+)")
# the engine's model line: "model: L=.. (..) on cuda: NAME, bf16, ..." or "... on cpu (N threads)"
PRECISION = re.compile(r"^model: .* on (?:cuda: .*?, (fp32|bf16)\b|(cpu) )")


def number(path, line, text):
    try:
        return float(text)  # NaN and inf as the engine prints them too
    except ValueError:
        raise SystemExit(f"error: {path}: not a loss in `{line}`") from None


def parse(path):
    """(steps: [(N, M, loss)], vals: [loss], precision: 'fp32', 'bf16' or None) of a log."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        raise SystemExit(f"error: {path}: cannot read ({e.strerror})") from None
    steps, vals, precision = [], [], None
    for line in text.splitlines():
        m = STEP.match(line)
        if m:
            steps.append((int(m.group(1)), int(m.group(2)), number(path, line, m.group(3))))
            continue
        m = VAL.match(line)
        if m:
            vals.append(number(path, line, m.group(1)))
            continue
        m = PRECISION.match(line)
        if m and precision is None:
            precision = "fp32" if m.group(2) else m.group(1)
    if not steps:
        raise SystemExit(f"error: {path}: no `step N/M | loss X` lines: not a training log")
    n, total, _ = steps[-1]
    if n != total:
        raise SystemExit(f"error: {path}: the run stopped at step {n} of {total}: compare whole runs")
    return steps, vals, precision


def relative(a, b):
    """|b - a| / |a|: 0 where they are equal, infinite where a is 0 and b is not, NaN for NaN."""
    if a == b:
        return 0.0
    return abs(b - a) / abs(a) if a != 0 else math.inf


def windows(n, window):
    """The [start, end) of each window over n steps, a last one shorter than half joined on."""
    spans = [[s, min(s + window, n)] for s in range(0, n, window)]
    if len(spans) > 1 and 2 * (spans[-1][1] - spans[-1][0]) < window:
        last = spans.pop()
        spans[-1][1] = last[1]
    return spans


def within(rel, band):
    # losses are printed to 4 decimals: a difference on the band's edge passes whatever the
    # rounding of the division (1e-9 of the band); NaN never passes
    return rel <= band * (1 + 1e-9)


def compare(fp32, bf16, window, band, val_band):
    """(lines, all_pass) for two parsed logs."""
    (s32, v32, p32), (s16, v16, p16) = fp32, bf16
    if (p32, p16) != ("fp32", "bf16") and (p32 or p16):
        raise SystemExit(f"error: the logs' model lines say {p32 or 'nothing'} and "
                         f"{p16 or 'nothing'}: give the fp32 run's log first, the bf16 run's second")
    if [(n, m) for n, m, _ in s32] != [(n, m) for n, m, _ in s16] or len(v32) != len(v16):
        raise SystemExit(f"error: the runs differ: steps {s32[0][0]}-{s32[-1][0]} of "
                         f"{s32[-1][1]} ({len(s32)} lines) vs {s16[0][0]}-{s16[-1][0]} of "
                         f"{s16[-1][1]} ({len(s16)} lines), {len(v32)} vs {len(v16)} validations")
    lines, ok = [], True
    for start, end in windows(len(s32), window):
        a = [loss for _, _, loss in s32[start:end]]
        b = [loss for _, _, loss in s16[start:end]]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        rel = relative(ma, mb)
        good = within(rel, band)
        ok &= good
        lines.append(f"steps {s32[start][0]:>5}-{s32[end - 1][0]:<5} fp32 {ma:.4f} bf16 {mb:.4f} "
                     f"rel diff {rel:.2e} {'ok' if good else 'FAIL'}")
    for i, (a, b) in enumerate(zip(v32, v16)):
        rel = relative(a, b)
        good = within(rel, val_band)
        ok &= good
        lines.append(f"val {i:>3}          fp32 {a:.4f} bf16 {b:.4f} rel diff {rel:.2e} "
                     f"{'ok' if good else 'FAIL'}")
    return lines, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fp32")
    p.add_argument("bf16")
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--band", type=float, default=0.02)
    p.add_argument("--val-band", type=float, default=0.02)
    a = p.parse_args(argv)
    if a.window < 1 or not 0 < a.band < math.inf or not 0 < a.val_band < math.inf:
        raise SystemExit("error: --window must be at least 1, --band and --val-band positive "
                         "and finite")
    lines, ok = compare(parse(a.fp32), parse(a.bf16), a.window, a.band, a.val_band)
    print("\n".join(lines))
    print(f"bf16 tracks fp32 within {a.band * 100:g}% (windows of {a.window} steps) and "
          f"{a.val_band * 100:g}% (validation): {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
