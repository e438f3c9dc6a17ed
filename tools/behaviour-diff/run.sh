#!/usr/bin/env bash
# tools/behaviour-diff/run.sh: the behaviour-diff harness of train-gpt2-cuda's host code (CPU only).
#
#   tools/behaviour-diff/run.sh BIN RESULTDIR [SCENARIO_REGEX]
#
# Runs 28 small training scenarios (about 300 calls) with BIN, each in
# RESULTDIR/<scenario>/scratch/work (its cwd; --out-dir is relative to it), and writes
# RESULTDIR/<scenario>/record.txt: for every call the command, the exit code, stdout and stderr
# normalised (timings, peak memory, paths -> placeholders), then every file under the work folder
# (type, mode, size, sha256) and every log.jsonl with its timing fields replaced by <T>.
# RESULTDIR/_summary.txt lists the scenarios and their exit codes. Two runs of the same binary
# give identical RESULTDIRs (diff -r); the signal scenarios (sig-*) record only what is
# deterministic about them. tools/behaviour-diff/compare runs this on two binaries and diffs the
# results; README.md beside this file says what it is for and what it does not cover.
#
# Inputs come from this repository (found relative to this script): data/shakespeare/{train,val}.bin
# and tests/fixtures/{hellaswag_tiny.jsonl,ref_tiny_model.bin}; the shards and the model the
# scenarios need besides are generated (deterministically, mkshard.py, mkmodel.py) into
# RESULTDIR/.inputs. RESULTDIR is cleared first; one that is not empty and not a result folder of
# this harness is refused. The binary runs with CARGO_MANIFEST_DIR set to this repository, so
# that the default corpus (--train without --val) is its data/shakespeare whichever tree BIN was
# built in.
#
# Scenarios (in this order; sig-* last, they time a signal against the run's progress):
#   plain                  validation, --sample-every and the final sample, --checkpoint-every
#   grad-accum             --grad-accum 3, --total-batch 96, a --total-batch not a multiple, both
#   epochs                 --epochs 0.5, 1.5 (wraps), with --grad-accum, less than a step (x2), with --steps
#   overfit                --overfit-batch, with --grad-accum, with --epochs (note), resumed
#   keep-checkpoints       --checkpoint-every 1 --keep-checkpoints 2 --keep-every 3, resumed; --keep-every alone
#   keep-best              --keep-best over validations, resumed in place / from a state elsewhere,
#                          --val-every 0 (note), a rising val loss, resumed from an earlier state in place
#   resume                 6 steps vs 4 + resume; from a state elsewhere; in place from an earlier state
#                          (set aside); a straight run continued from its own state; --shuffle
#   resume-notes           notes for --steps/--lr/--warmup/--beta1/--beta2/--eps/--weight-decay/
#                          --grad-clip/--lr-schedule changes; refusals (batch, seq, model, grad-accum,
#                          shuffle, overfit, data, --steps too small, no model beside the state, ...)
#   no-state               --no-state checkpoints; resuming that folder
#   skip-outliers          --skip-loss-z/--skip-norm-z skipping steps 67, 68, 70, 71; resumed at 68
#   diverge                --lr 1e20 NaN: plain, with skip flags, --no-state, a NaN model, resumed
#                          with --lr 1e20 (advice names a checkpoint), --keep-checkpoints 1
#   bad-shard              token id 60000 in shard 2 (error at step 6, saved at 5), --no-state,
#                          --grad-accum 2, mended + resume vs a straight run; bad first shard, all
#                          short, 1-token shard, truncated shard, short val shards
#   profile                --profile on the CPU; with --tf32 --no-cuda-graphs --recompute (notes)
#   hellaswag              --hellaswag at each validation, --hellaswag-examples, its errors
#   data-notes             --train without --val, shared train/val file (x2), --val-batches > data,
#                          directory / [..] / no-match / wildcard-in-directory patterns
#   usage-errors           48 flag errors and notes (one call each)
#   readonly               read-only log.jsonl / model_best.bin in a resumed folder; mode kept
#   out-dir                --out-dir a file / under a file / reused (earlier_run_N); --model a
#                          checkpoint of the run in --out-dir; descriptor named like its folder
#   small-vocab-schedules  the V=64 fixture model (no samples: note); wsd, linear, constant,
#                          warm-up longer than the run, --shuffle, --seed
#   sig-accum-int          SIGINT in a step of 100 micro-batches; --resume == a run never stopped
#   sig-accum-nostate-term SIGTERM in such a step with --no-state
#   sig-resumed-int        SIGINT in a run resumed by folder / from a state into another folder
#   sig-val-term           SIGTERM during the validation after step 1; resumed
#   sig-before-first-int   SIGINT during the step-0 validation
#   sig-last-step-int      SIGINT during the only step (with and without --sample-tokens)
#   sig-sample-term        SIGTERM during the final sample
#   sig-lock               a second run (and a --resume) into a live run's folder; then SIGTERM
#   sig-many-steps         NONDETERMINISTIC stop step: SIGINT in a 60-step run; records only the
#                          message with N, exit code, the state, and --resume's final model
#
# KEEP_WORK=1 keeps the scratch folders (raw outputs, checkpoints) and RESULTDIR/.bin, .inputs;
# compare leaves scratch out of its diff.
# SCENARIO_REGEX runs only the scenarios whose name matches (grep -E).
set -u -o pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 BIN RESULTDIR [SCENARIO_REGEX]" >&2
    exit 2
fi
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$TOOLS/../.." && pwd)
FIX=$ROOT/tests/fixtures
DATA=$ROOT/data/shakespeare
for f in "$DATA/train.bin" "$DATA/val.bin" "$FIX/hellaswag_tiny.jsonl" "$FIX/ref_tiny_model.bin"; do
    [ -f "$f" ] || { echo "missing input: $f (run.sh must stay at tools/behaviour-diff/ in the repository)" >&2; exit 2; }
done
BIN_SRC=$(readlink -f "$1")
[ -x "$BIN_SRC" ] || { echo "not an executable: $1" >&2; exit 2; }
if [ -e "$2" ] && [ -n "$(ls -A "$2" 2>/dev/null)" ] && [ ! -e "$2/.train-diff-result" ]; then
    echo "$2 exists, is not empty and is not a result folder of this harness: refusing to clear it" >&2
    exit 2
fi
rm -rf "$2"
mkdir -p "$2"
R=$(cd "$2" && pwd)
touch "$R/.train-diff-result"
FILTER=${3:-.}

export LC_ALL=C
unset RUST_BACKTRACE RUST_LOG
# the default corpus is this repository's, wherever BIN was built (src/data.rs: default_corpus_dir)
export CARGO_MANIFEST_DIR=$ROOT
export PYTHONDONTWRITEBYTECODE=1
# the binary under a fixed name (clap's usage lines name argv[0]'s file name)
mkdir -p "$R/.bin"
cp "$BIN_SRC" "$R/.bin/train-gpt2-cuda"
EXE="$R/.bin/train-gpt2-cuda"
export PATH="$R/.bin:$PATH"

# ---------------------------------------------------------------------------------------------
# inputs (deterministic), shared read-only by the scenarios through the link work/in
IN="$R/.inputs"
mkdir -p "$IN"
cp "$DATA/train.bin" "$DATA/val.bin" "$IN/"
cp "$FIX/hellaswag_tiny.jsonl" "$FIX/ref_tiny_model.bin" "$IN/"
MK="python3 $TOOLS/mkshard.py"
# 66 batches of 2x16 of a periodic pattern (learnt at once), then 6 of random ids: loss spikes
$MK "$IN/spike.bin" spike $((66 * 32 + 1)) $((6 * 32)) 16 7
# 10 batches of 2x16 (epochs)
$MK "$IN/ep.bin" slice "$IN/train.bin" 0 $((10 * 32 + 1))
# 3 batches of 2x16 of validation data
$MK "$IN/smallval.bin" slice "$IN/val.bin" 0 100
# ids < 64 for the V=64 fixture model
$MK "$IN/tiny_train.bin" rand 2000 64 1
$MK "$IN/tiny_val.bin" rand 500 64 2
# the V=64 model with every parameter x 1e30: its first loss is not finite
python3 "$TOOLS/mkmodel.py" "$IN/ref_tiny_model.bin" "$IN/huge.bin" 1e30
chmod a-w "$IN"/*

# ---------------------------------------------------------------------------------------------
# recording

# milliseconds since the epoch (for the timings printed, not recorded)
now_ms() { local n; n=$(date +%s%N); echo $((n / 1000000)); }

# a path as a sed -E pattern (its special characters escaped)
sed_pattern() { printf '%s' "$1" | sed -e 's/[][\\.*^$+?(){}|#]/\\&/g'; }
R_PAT=$(sed_pattern "$R")
TOOLS_PAT=$(sed_pattern "$TOOLS")
ROOT_PAT=$(sed_pattern "$ROOT")

# normalise stdout/stderr text: timing fields, peak memory, paths (the result folder, this
# folder, the repository, the default corpus wherever it is)
norm() {
    sed -E \
        -e "s#${R_PAT}#<R>#g" \
        -e "s#${TOOLS_PAT}#<TD>#g" \
        -e "s#${ROOT_PAT}#<ROOT>#g" \
        -e "s#[^ '\"(]*/data/shakespeare/#<CORPUS>/#g" \
        -e 's#\| [^ |]+ ms \| [^ |]+ tok/s \| MFU [^ |]+#| <ms> ms | <tok/s> tok/s | MFU <mfu>#' \
        -e 's#^peak memory: .*#peak memory: <MiB>#' \
        -e 's#the machine has [0-9.]+ [A-Za-z]+ available of [0-9.]+ [A-Za-z]+#the machine has <MEM> available of <MEM>#' \
        -e '/^  \(step [0-9]+\/[0-9]+: [0-9]+ of [0-9]+ micro-batches\)$/d'
}

# the files under the work folder (type, mode, size, sha256), and each log.jsonl normalised
snap() {
    echo "--- files $1"
    python3 "$TOOLS/snap.py" "$WORK" "$SCDIR/scratch/hashes.json" | norm
}

# write a recorded command line: the binary's name, then the arguments quoted
cmdline() {
    local out="train-gpt2-cuda" a
    for a in "$@"; do out+=" $(printf '%q' "$a")"; done
    echo "$out" | norm
}

begin() {
    SC=$1
    SCDIR="$R/$SC"
    WORK="$SCDIR/scratch/work"
    RAW="$SCDIR/scratch/raw"
    mkdir -p "$WORK" "$RAW"
    ln -s "$IN" "$WORK/in"
    REC="$SCDIR/record.txt"
    : >"$REC"
    NCALL=0
    CALLS_RC=""
    cd "$WORK" || exit 1
    T0=$(now_ms)
}

finish() {
    cd "$R" || exit 1
    local ms=$(($(now_ms) - T0))
    printf '%-28s %4d.%d s  exit codes:%s\n' "$SC" $((ms / 1000)) $((ms % 1000 / 100)) "$CALLS_RC"
    echo "$SC: exit codes$CALLS_RC" >>"$R/_summary.txt"
    if [ "${KEEP_WORK:-0}" != 1 ]; then
        chmod -R u+w "$SCDIR/scratch" 2>/dev/null
        rm -rf "$SCDIR/scratch"
    fi
}

# note: a free text line in the record
note() { echo "### note: $*" >>"$REC"; }

# call ARGS...: one call of the binary, its output in $RAW/$NCALL.out and .err; returns its
# exit code
call() {
    NCALL=$((NCALL + 1))
    timeout -k 5 240 "$EXE" "$@" >"$RAW/$NCALL.out" 2>"$RAW/$NCALL.err" </dev/null
    local rc=$?
    CALLS_RC+=" $rc"
    return $rc
}

# t ARGS...: one training call (or any subcommand), recorded, with a snapshot of the files after
t() {
    call "$@"
    local rc=$? n=$NCALL
    {
        echo "### call $n: $(cmdline "$@")"
        echo "exit: $rc"
        echo "--- stdout"
        norm <"$RAW/$n.out"
        echo "--- stderr"
        norm <"$RAW/$n.err"
        snap "after call $n"
    } >>"$REC"
    return $rc
}

# quiet ARGS...: a call whose output is not recorded (only its exit code): set-up runs
quiet() {
    call "$@"
    local rc=$? n=$NCALL
    echo "### call $n (set-up, output not recorded): $(cmdline "$@")" >>"$REC"
    echo "exit: $rc" >>"$REC"
    return $rc
}

# sig PATTERN SIGNAL ARGS...: starts a training call, waits for a stdout line matching PATTERN
# (grep -E), sends SIGNAL to it once, and waits for it to end. Leaves the raw outputs in
# $RAW/$NCALL.out/.err and the exit code in SIG_RC (recording is up to the scenario).
sig() {
    local pat=$1 signal=$2
    shift 2
    NCALL=$((NCALL + 1))
    local n=$NCALL pid i found=no
    "$EXE" "$@" >"$RAW/$n.out" 2>"$RAW/$n.err" </dev/null &
    pid=$!
    for i in $(seq 1 1200); do
        if grep -q -E "$pat" "$RAW/$n.out" 2>/dev/null; then found=yes; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    # (SIG_DELAY: seconds to wait after the match)
    sleep "${SIG_DELAY:-0}"
    kill "-$signal" "$pid" 2>/dev/null
    # (a watchdog: a run that does not stop within 120 s is killed; it ends with the run)
    (
        exec >/dev/null 2>&1 </dev/null
        for i in $(seq 1 1200); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
        kill -KILL "$pid"
    ) &
    local dog=$!
    wait "$pid"
    SIG_RC=$?
    wait "$dog" 2>/dev/null
    CALLS_RC+=" $SIG_RC"
    {
        echo "### call $n (SIG$signal sent once, ${SIG_DELAY:-0} s after a stdout line matched '$pat': $found): $(cmdline "$@")"
        echo "exit: $SIG_RC"
    } >>"$REC"
}

# sigrec: records the last sig call's stdout and stderr (normalised) and the files after it
sigrec() {
    {
        echo "--- stdout"
        norm <"$RAW/$NCALL.out"
        echo "--- stderr"
        norm <"$RAW/$NCALL.err"
        snap "after call $NCALL"
    } >>"$REC"
}

# ---------------------------------------------------------------------------------------------
# the scenarios

# flags most scenarios share: d1 (vocabulary 50257), B=2, T=16, the copied Shakespeare shards
D1=(--device cpu --model d1 --batch 2 --seq 16 --train in/train.bin --val in/val.bin)
# the V=64 fixture model (30K parameters) on random ids < 64
TINY=(--device cpu --model in/ref_tiny_model.bin --batch 2 --seq 8 --train in/tiny_train.bin --val in/tiny_val.bin)

# 1. a plain run: validation, samples during and at the end, checkpoints
sc_plain() {
    t --device cpu --model d1 --batch 4 --seq 32 --train in/train.bin --val in/val.bin \
        --steps 6 --val-every 2 --val-batches 2 --sample-every 3 --sample-tokens 8 \
        --checkpoint-every 2 --out-dir out
}

# 2. gradient accumulation: --grad-accum, --total-batch (and one that is not a multiple)
sc_grad_accum() {
    t "${D1[@]}" --steps 3 --grad-accum 3 --val-every 2 --val-batches 2 --sample-tokens 0 --out-dir ga
    t "${D1[@]}" --steps 2 --total-batch 96 --val-every 0 --val-batches 1 --sample-tokens 0 --out-dir tb
    t "${D1[@]}" --steps 2 --total-batch 100 --val-every 0 --sample-tokens 0 --out-dir tb2
    t "${D1[@]}" --steps 2 --total-batch 96 --grad-accum 3 --sample-tokens 0 --out-dir tb3
}

# 3. --epochs: half an epoch, more than one (wraps around), with --grad-accum, less than a step
sc_epochs() {
    local E=(--device cpu --model d1 --batch 2 --seq 16 --train in/ep.bin --val in/val.bin --val-batches 1 --sample-tokens 0)
    t "${E[@]}" --epochs 0.5 --val-every 2 --out-dir e1
    t "${E[@]}" --epochs 1.5 --val-every 0 --checkpoint-every 5 --out-dir e2
    t "${E[@]}" --epochs 0.5 --grad-accum 3 --val-every 0 --out-dir e3
    t "${E[@]}" --epochs 0.05 --out-dir e4
    t "${E[@]}" --epochs 0.5 --grad-accum 6 --out-dir e5
    t "${E[@]}" --epochs 1 --steps 3 --out-dir e6
}

# 4. --overfit-batch (also with --grad-accum, and with --epochs: a note)
sc_overfit() {
    t "${D1[@]}" --steps 5 --lr 1e-3 --overfit-batch --val-every 0 --val-batches 1 --sample-tokens 0 --checkpoint-every 2 --out-dir of
    t "${D1[@]}" --steps 2 --lr 1e-3 --overfit-batch --grad-accum 2 --val-every 0 --val-batches 1 --sample-tokens 0 --out-dir of2
    t --device cpu --model d1 --batch 2 --seq 16 --train in/ep.bin --val in/val.bin --epochs 0.3 --overfit-batch --val-every 0 --val-batches 1 --sample-tokens 0 --out-dir of3
    # resumed overfit run (the loader's place is its start)
    t "${D1[@]}" --steps 7 --lr 1e-3 --overfit-batch --val-every 0 --val-batches 1 --sample-tokens 0 --checkpoint-every 2 --resume of
}

# 5. --keep-checkpoints 2 --checkpoint-every 1 (--keep-every 3), resumed; --keep-every alone
sc_keep_checkpoints() {
    local K=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --checkpoint-every 1 --keep-checkpoints 2)
    t "${K[@]}" --steps 7 --keep-every 3 --out-dir kc
    t "${K[@]}" --steps 9 --keep-every 3 --resume kc
    t "${K[@]}" --steps 4 --out-dir kc2
    t "${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --steps 2 --keep-every 2 --out-dir kc3
}

# 6. --keep-best over several validations; resumed in its folder, from a state into another
#    folder; --keep-best with --val-every 0 (a note)
sc_keep_best() {
    local KB=("${D1[@]}" --val-batches 2 --sample-tokens 0 --keep-best --lr 3e-3 --val-every 2)
    t "${KB[@]}" --steps 6 --checkpoint-every 2 --out-dir kb
    t "${KB[@]}" --steps 10 --checkpoint-every 2 --resume kb
    t "${KB[@]}" --steps 8 --checkpoint-every 2 --resume kb/state_000004.bin --out-dir kb2
    t "${D1[@]}" --val-batches 2 --sample-tokens 0 --keep-best --val-every 0 --steps 2 --out-dir kb3
    # (a worse validation does not replace the best: a lr that makes the loss go up)
    t "${D1[@]}" --val-batches 2 --sample-tokens 0 --keep-best --val-every 1 --steps 4 --lr 1e-1 --out-dir kb4
    t "${D1[@]}" --val-batches 2 --sample-tokens 0 --keep-best --val-every 1 --steps 3 --lr 3e-1 --checkpoint-every 1 --out-dir kb5
    t "${D1[@]}" --val-batches 2 --sample-tokens 0 --keep-best --val-every 1 --steps 5 --lr 3e-1 --checkpoint-every 1 --resume kb5/state_000002.bin
}

# 7. resume: a run of 6 steps stopped at 4 and resumed (by its folder) against one that never
#    stopped; from a state file into another --out-dir; in its own folder from an earlier state
#    (the later checkpoints are set aside)
sc_resume() {
    local RS=("${D1[@]}" --val-every 2 --val-batches 2 --sample-tokens 4 --checkpoint-every 2)
    t "${RS[@]}" --steps 6 --out-dir straight
    t "${RS[@]}" --steps 4 --out-dir run
    t "${RS[@]}" --steps 6 --resume run
    t "${RS[@]}" --steps 6 --resume run/state_000002.bin --out-dir other
    t "${RS[@]}" --steps 6 --resume run/state_000002.bin
    # a run that never stopped, continued from its own step-2 state: the same steps 3 to 6
    t "${RS[@]}" --steps 6 --resume straight/state_000002.bin --out-dir again
    # --shuffle: the data order is restored too
    t "${RS[@]}" --steps 4 --shuffle --seed 5 --out-dir sh
    t "${D1[@]}" --val-every 2 --val-batches 2 --sample-tokens 4 --steps 4 --shuffle --seed 5 --out-dir sh_a
    t "${RS[@]}" --steps 4 --shuffle --seed 5 --resume sh/state_000002.bin --out-dir sh_b
}

# 8. the notes a resume gives (--lr, --steps, --warmup, --beta1/2, --eps, --weight-decay,
#    --grad-clip changed), and what it refuses
sc_resume_notes() {
    local RN=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --checkpoint-every 2)
    quiet "${RN[@]}" --steps 4 --out-dir base
    t "${RN[@]}" --steps 6 --resume base/state_000004.bin --out-dir n1
    t "${RN[@]}" --steps 4 --lr 1e-3 --resume base/state_000002.bin --out-dir n2
    t "${RN[@]}" --steps 4 --warmup 3 --resume base/state_000002.bin --out-dir n3
    t "${RN[@]}" --steps 4 --beta1 0.8 --beta2 0.95 --eps 1e-6 --weight-decay 0.1 --grad-clip 0.5 --resume base/state_000002.bin --out-dir n4
    t "${RN[@]}" --steps 4 --grad-clip 0 --lr-schedule linear --resume base/state_000002.bin --out-dir n5
    # refused: another --batch, --seq, --model, --grad-accum, --shuffle, --overfit-batch, data;
    # fewer --steps than the state's; a state without its model
    over RN --steps 4 --batch 4 --resume base/state_000002.bin --out-dir r1
    over RN --steps 4 --seq 32 --resume base/state_000002.bin --out-dir r2
    over RN --steps 4 --model d2 --resume base/state_000002.bin --out-dir r3
    t "${RN[@]}" --steps 4 --grad-accum 2 --resume base/state_000002.bin --out-dir r4
    t "${RN[@]}" --steps 4 --shuffle --resume base/state_000002.bin --out-dir r5
    t "${RN[@]}" --steps 4 --overfit-batch --resume base/state_000002.bin --out-dir r6
    over RN --steps 4 --train in/ep.bin --resume base/state_000002.bin --out-dir r7
    t "${RN[@]}" --steps 3 --resume base/state_000004.bin --out-dir r8
    t "${RN[@]}" --steps 4 --resume base/state_000004.bin --out-dir r9
    mkdir -p lone && cp base/state_000002.bin lone/
    t "${RN[@]}" --steps 4 --resume lone --out-dir r10
    t "${RN[@]}" --steps 4 --resume base/model_000002.bin --out-dir r11
    t "${RN[@]}" --steps 4 --resume empty_dir_that_is_not_there --out-dir r12
}

# 9. --no-state: checkpoints without states; a --resume of that folder
sc_no_state() {
    t "${D1[@]}" --steps 4 --val-every 2 --val-batches 1 --sample-tokens 0 --checkpoint-every 2 --no-state --out-dir ns
    t "${D1[@]}" --steps 6 --val-every 2 --val-batches 1 --sample-tokens 0 --checkpoint-every 2 --resume ns
}

# 10. --skip-loss-z / --skip-norm-z: steps 67, 68 skipped, 69 taken (third in a row), ...;
#     resumed from step 68 (the windows and the skipped steps travel in the state and the log);
#     the loss flag alone
sc_skip_outliers() {
    local SK=(--device cpu --model d1 --batch 2 --seq 16 --train in/spike.bin --val in/val.bin
        --lr 1e-2 --lr-schedule constant --val-every 0 --val-batches 1 --sample-tokens 0)
    t "${SK[@]}" --steps 72 --skip-loss-z 3 --skip-norm-z 3 --checkpoint-every 68 --out-dir sk
    t "${SK[@]}" --steps 72 --skip-loss-z 3 --skip-norm-z 3 --resume sk/state_000068.bin --out-dir sk2
    t "${SK[@]}" --steps 70 --skip-loss-z 5 --out-dir sk3
    t "${SK[@]}" --steps 4 --skip-norm-z 2 --out-dir sk4
}

# 11. divergence: a loss that becomes NaN (--lr 1e20): the error and the files saved; with a
#     skip flag (NaN skipped twice, the third ends the run); with --no-state; a model whose first
#     loss is NaN; a run resumed with --lr 1e20 (the advice names the checkpoint to go back to)
sc_diverge() {
    local DV=("${D1[@]}" --steps 6 --val-every 0 --val-batches 1 --sample-tokens 0)
    t "${DV[@]}" --lr 1e20 --out-dir d1
    t "${DV[@]}" --lr 1e20 --skip-loss-z 5 --out-dir d2
    t "${DV[@]}" --lr 1e20 --skip-norm-z 5 --checkpoint-every 1 --out-dir d3
    t "${DV[@]}" --lr 1e20 --no-state --out-dir d4
    t --device cpu --model in/huge.bin --batch 2 --seq 8 --train in/tiny_train.bin --val in/tiny_val.bin --steps 3 --val-every 0 --val-batches 1 --sample-tokens 0 --out-dir d5
    quiet "${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --checkpoint-every 1 --steps 3 --out-dir d6
    t "${DV[@]}" --checkpoint-every 1 --lr 1e20 --resume d6
    t "${DV[@]}" --lr 1e20 --resume d6/state_000002.bin --out-dir d7
    t "${DV[@]}" --lr 1e20 --keep-checkpoints 1 --checkpoint-every 1 --skip-loss-z 5 --out-dir d8
}

# 12. a bad shard met during training (token id 60000 > V in the second shard), a shard too
#     short for a batch (a note); the shard mended and the run resumed; the same with --no-state;
#     a bad first shard; all shards short; a shard of under 2 tokens; a shard whose size is not
#     its header's
sc_bad_shard() {
    mkdir -p shards
    $MK shards/train_000000.bin slice in/train.bin 0 161
    $MK shards/train_000001.bin bad in/train.bin 161 161 100 60000
    $MK shards/train_000002.bin slice in/train.bin 322 20
    local BS=(--device cpu --model d1 --batch 2 --seq 16 --val in/val.bin --val-every 0 --val-batches 1 --sample-tokens 0)
    t "${BS[@]}" --train 'shards/train_*.bin' --steps 8 --checkpoint-every 2 --out-dir bs
    t "${BS[@]}" --train 'shards/train_*.bin' --steps 8 --checkpoint-every 2 --no-state --out-dir bs2
    t "${BS[@]}" --train 'shards/train_*.bin' --steps 8 --grad-accum 2 --out-dir bs3
    # mended (as many tokens as before): the run resumes and ends
    $MK shards/train_000001.bin slice in/train.bin 161 161
    t "${BS[@]}" --train 'shards/train_*.bin' --steps 8 --checkpoint-every 2 --resume bs
    t "${BS[@]}" --train 'shards/train_*.bin' --steps 8 --checkpoint-every 2 --out-dir bs_straight
    mkdir -p first short tiny odd
    $MK first/a.bin bad in/train.bin 0 161 3 50257
    t "${BS[@]}" --train 'first/*.bin' --steps 2 --out-dir bs4
    $MK short/a.bin slice in/train.bin 0 20
    $MK short/b.bin slice in/train.bin 20 32
    t "${BS[@]}" --train 'short/*.bin' --steps 2 --out-dir bs5
    $MK tiny/a.bin raw 5
    t "${BS[@]}" --train 'tiny/*.bin' --steps 2 --out-dir bs6
    $MK odd/a.bin slice in/train.bin 0 161
    head -c 1200 odd/a.bin >odd/b.bin
    t "${BS[@]}" --train 'odd/b.bin' --steps 2 --out-dir bs7
    over BS --train 'shards/train_*.bin' --val 'short/*.bin' --steps 2 --out-dir bs8
}

# 13. --profile on the CPU (a note on stdout)
sc_profile() {
    t "${D1[@]}" --steps 2 --val-every 0 --val-batches 1 --sample-tokens 0 --profile --out-dir pf
    t "${D1[@]}" --steps 1 --val-every 0 --val-batches 1 --sample-tokens 0 --profile --tf32 --no-cuda-graphs --recompute gelu --out-dir pf2
}

# 14. --hellaswag at each validation (5 examples, and --hellaswag-examples 3); its errors
sc_hellaswag() {
    local HS=(--device cpu --model d1 --batch 4 --seq 64 --train in/train.bin --val in/val.bin --val-batches 1 --sample-tokens 4)
    t "${HS[@]}" --steps 2 --val-every 1 --hellaswag in/hellaswag_tiny.jsonl --out-dir hs
    t "${HS[@]}" --steps 1 --val-every 0 --hellaswag in/hellaswag_tiny.jsonl --hellaswag-examples 3 --keep-best --out-dir hs2
    over HS --steps 1 --batch 2 --hellaswag in/hellaswag_tiny.jsonl --out-dir hs3
    over HS --steps 1 --seq 4 --hellaswag in/hellaswag_tiny.jsonl --out-dir hs4
    t "${HS[@]}" --steps 1 --hellaswag in/no_such.jsonl --out-dir hs5
    t "${HS[@]}" --steps 1 --hellaswag-examples 3 --out-dir hs6
}

# 15. data notes: --train without --val; a file that is a training and a validation shard;
#     --val-batches larger than the data; a directory or a [..] pattern as --train
sc_data_notes() {
    local DN=(--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --val-batches 1 --sample-tokens 0 --steps 1)
    t "${DN[@]}" --train in/train.bin --out-dir a
    t "${DN[@]}" --train 'in/*.bin' --val in/val.bin --out-dir b
    t "${DN[@]}" --train in/train.bin --val in/train.bin --out-dir c
    mkdir -p both
    $MK both/train.bin slice in/train.bin 0 2000
    $MK both/val.bin slice in/val.bin 0 500
    t "${DN[@]}" --train 'both/*.bin' --val both/val.bin --out-dir c2
    over DN --train in/train.bin --val in/smallval.bin --val-batches 5 --val-every 1 --out-dir d
    t "${DN[@]}" --train in --val in/val.bin --out-dir e
    t "${DN[@]}" --train 'in/[ab].bin' --val in/val.bin --out-dir f
    t "${DN[@]}" --train 'in/none_*.bin' --val in/val.bin --out-dir g
    t "${DN[@]}" --train 'in*/train.bin' --val in/val.bin --out-dir h
}

# over BASE_ARRAY_NAME ARGS...: t with the flags of the array (flag-value pairs) that ARGS do not
# give, then ARGS
# 16. usage and validation errors of the training flags. ue ARGS: a call of ARGS on top of a
#     small, safe base (d1, 1 step, 1 validation batch, no sample, --out-dir u)
over() {
    local -n over_base=$1
    shift
    local args=() i=0 a f given
    while [ $i -lt ${#over_base[@]} ]; do
        f=${over_base[$i]}
        given=no
        for a in "$@"; do
            case "$a" in "$f" | "$f="*) given=yes ;; esac
        done
        # (--epochs conflicts with --steps, --total-batch with --grad-accum)
        case "$f" in --steps) for a in "$@"; do [ "$a" = --epochs ] && given=yes; done ;; esac
        if [ $given = no ]; then args+=("$f" "${over_base[$((i + 1))]}"); fi
        i=$((i + 2))
    done
    t "${args[@]}" "$@"
}
# shellcheck disable=SC2034 # (used through over's name reference)
UE_BASE=(--device cpu --model d1 --batch 2 --seq 16 --steps 1 --val-every 0 --val-batches 1
    --sample-tokens 0 --train in/train.bin --val in/val.bin --out-dir u)
ue() { over UE_BASE "$@"; }
sc_usage_errors() {
    ue --batch 0
    ue --seq 0
    ue --val-batches 0
    ue --steps 0
    ue --lr -1
    ue --lr=-1
    ue --lr 0
    ue --lr nan
    ue --lr 1e400
    ue --lr abc
    ue --grad-accum 0
    ue --keep-every 0 --keep-checkpoints 1
    ue --beta1 1
    ue --beta2 -0.5
    ue --eps 0
    ue --weight-decay -1
    ue --grad-clip -1
    ue --skip-loss-z -1
    ue --skip-norm-z inf
    ue --lr-final-frac 2
    ue --lr-decay-frac -0.1
    ue --epochs 0
    ue --epochs -1
    ue --epochs inf
    ue --epochs 1e-400
    ue --steps 3000000000
    ue --total-batch 0
    ue --sample-every 2
    ue --classifier-chunk 0
    ue --peak-tflops 0
    ue --precision bf16
    ue --kernels plain
    ue --classifier-chunk 2
    ue --device cuda
    ue --model d0
    ue --model d300
    ue --model no_such_model.bin
    ue --seq 2000
    ue --batch 100000000 --seq 1024
    ue --model in/ref_tiny_model.bin --seq 32 --train in/tiny_train.bin --val in/tiny_val.bin
    ue --no-such-flag
    ue --steps 2 --epochs 1
    ue --grad-accum 2 --total-batch 64
    ue --lr-schedule nope
    ue --hellaswag-examples 2
    ue --val-every -1
    ue --resume
    # flags the run cannot act on: notes, and the run goes on
    ue --warmup 5 --lr-decay-frac 0.3 --keep-every 2 --lr-schedule constant --lr-final-frac 0.5 --tf32 --no-cuda-graphs --recompute gelu
}

# 17. read-only files in a resumed folder (log.jsonl; model_best.bin with --keep-best)
sc_readonly() {
    local RO=("${D1[@]}" --val-every 2 --val-batches 1 --sample-tokens 0 --checkpoint-every 2)
    quiet "${RO[@]}" --steps 2 --keep-best --out-dir ro
    chmod 444 ro/log.jsonl
    t "${RO[@]}" --steps 4 --resume ro
    t "${RO[@]}" --steps 4 --resume ro --out-dir ro_other
    chmod 644 ro/log.jsonl
    chmod 444 ro/model_best.bin
    t "${RO[@]}" --steps 4 --keep-best --resume ro
    t "${RO[@]}" --steps 4 --resume ro
    # a file written again keeps its mode (model_best.bin 600, rewritten by a better validation)
    quiet "${RO[@]}" --steps 2 --keep-best --out-dir mode
    chmod 600 mode/model_best.bin
    t "${RO[@]}" --steps 4 --keep-best --resume mode
}

# 18. --out-dir: a file; under a file; the same command twice (the first run set aside); a new
#     run from a checkpoint of the run in its --out-dir; a descriptor named like a run folder
sc_out_dir() {
    local OD=("${D1[@]}" --steps 2 --val-every 0 --val-batches 1 --sample-tokens 0)
    echo x >afile
    t "${OD[@]}" --out-dir afile
    t "${OD[@]}" --out-dir afile/sub
    t "${OD[@]}" --out-dir twice
    t "${OD[@]}" --out-dir twice
    t "${OD[@]}" --out-dir twice --no-state
    over OD --model twice/model_000002.bin --out-dir twice
    over OD --model twice/model_000002.bin --out-dir fromck
    over OD --model d1 --out-dir d1
    over OD --model d1 --out-dir d1
    t "${OD[@]}" --resume d1
    t "${OD[@]}" --out-dir deep/er/folder
}

# 19. a finetune of the V=64 fixture model (no samples: a note), and the learning-rate
#     schedules and their notes, --shuffle, --weight-decay, --grad-clip 0, --seed
sc_small_vocab_schedules() {
    local S=("${TINY[@]}" --val-every 3 --val-batches 2)
    t "${S[@]}" --steps 6 --sample-tokens 4 --out-dir ft
    t "${S[@]}" --steps 6 --sample-tokens 0 --lr-schedule wsd --warmup 2 --lr-decay-frac 0.5 --lr 1e-3 --out-dir wsd
    t "${S[@]}" --steps 6 --sample-tokens 0 --lr-schedule linear --lr-final-frac 0 --lr 1e-3 --out-dir lin
    t "${S[@]}" --steps 4 --sample-tokens 0 --lr-schedule constant --weight-decay 0.1 --grad-clip 0 --out-dir con
    t "${S[@]}" --steps 3 --sample-tokens 0 --warmup 10 --out-dir warm
    t "${S[@]}" --steps 5 --sample-tokens 0 --shuffle --seed 9 --out-dir shuf
    t "${S[@]}" --steps 3 --sample-tokens 0 --lr-schedule wsd --lr-decay-frac 0.1 --out-dir wsd2
    t --device cpu --model d1 --batch 2 --seq 16 --train in/train.bin --val in/val.bin --steps 2 --val-every 0 --val-batches 1 --sample-tokens 6 --seed 42 --out-dir seed
}

# ------------------------------ signals (timing-dependent, last) ------------------------------
# Each sends one signal once a stdout line shows the run is where the scenario wants it: in a step
# of 100 micro-batches (about 2 s), in a validation of 250 batches, in a sample of 3000 tokens, or
# in a single step of 4x512 (about 2 s). These land well inside those windows, so their output
# is deterministic too; sig-many-steps is not, and records only what is.

# 20. SIGINT in the middle of a step of 100 micro-batches: the step's part is dropped, step 1's
#     checkpoint written, exit 130; --resume completes, equal to a run that never stopped
sc_sig_accum_int() {
    local SA=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --steps 2 --grad-accum 100)
    sig '^step ' INT "${SA[@]}" --out-dir sa
    sigrec
    t "${SA[@]}" --resume sa
    t "${SA[@]}" --out-dir straight
}

# 21. SIGTERM in the middle of such a step with --no-state (the model only; cannot resume)
sc_sig_accum_nostate_term() {
    sig '^step ' TERM "${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --steps 2 --grad-accum 100 --no-state --out-dir sn
    sigrec
}

# 22. SIGINT during a resumed run (resumed by its folder: "continue with the same command")
sc_sig_resumed_int() {
    local SR=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --grad-accum 100)
    quiet "${SR[@]}" --steps 1 --out-dir sr
    sig '^step ' INT "${SR[@]}" --steps 3 --resume sr
    sigrec
    sig '^step ' INT "${SR[@]}" --steps 4 --resume sr/state_000002.bin --out-dir sr2
    sigrec
}

# 23. SIGTERM during the validation after step 1 (250 batches): it finishes, step 1 is saved
sc_sig_val_term() {
    sig '^step ' TERM "${D1[@]}" --val-every 1 --val-batches 250 --sample-tokens 0 --steps 3 --out-dir sv
    sigrec
    t "${D1[@]}" --val-every 1 --val-batches 2 --sample-tokens 0 --steps 3 --resume sv
}

# 24. SIGINT during the first validation, before any step: nothing trained, nothing saved
sc_sig_before_first_int() {
    sig '^log: ' INT "${D1[@]}" --val-every 1 --val-batches 250 --sample-tokens 0 --steps 3 --out-dir sb
    sigrec
}

# 25. SIGINT during the run's only (long: 4x512 tokens, about 2 s) step, 0.4 s after its "log:"
#     line (the GPT-2 tokenizer is built in between, about 40 ms): "at the run's last step", no
#     final sample
sc_sig_last_step_int() {
    SIG_DELAY=0.4 sig '^log: ' INT --device cpu --model d1 --batch 4 --seq 512 --train in/train.bin --val in/val.bin --val-every 0 --val-batches 1 --sample-tokens 8 --steps 1 --out-dir sl
    sigrec
    # (the same without a sample: the message still says the final sample is left out)
    SIG_DELAY=0.4 sig '^log: ' INT --device cpu --model d1 --batch 4 --seq 512 --train in/train.bin --val in/val.bin --val-every 0 --val-batches 1 --sample-tokens 0 --steps 1 --out-dir sl0
    sigrec
}

# 26. SIGTERM during the final sample (3000 tokens): cut short, exit 143
sc_sig_sample_term() {
    sig '^sample after' TERM "${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 3000 --steps 1 --out-dir ss
    sigrec
}

# 27. a second run into the folder of a live run is refused at once (the lock); then SIGTERM
sc_sig_lock() {
    local SL=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --grad-accum 100)
    NCALL=$((NCALL + 1))
    local n=$NCALL pid i
    "$EXE" "${SL[@]}" --steps 2 --out-dir lk >"$RAW/$n.out" 2>"$RAW/$n.err" </dev/null &
    pid=$!
    for i in $(seq 1 600); do grep -q '^log: ' "$RAW/$n.out" 2>/dev/null && break; sleep 0.05; done
    echo "### call $n (in the background, until call $((n + 2)) is done): $(cmdline "${SL[@]}" --steps 2 --out-dir lk)" >>"$REC"
    t "${SL[@]}" --steps 2 --out-dir lk
    t "${SL[@]}" --steps 2 --resume lk
    kill -TERM "$pid"
    wait "$pid"
    local rc=$?
    CALLS_RC+=" $rc"
    {
        echo "### call $n ended (SIGTERM sent after calls $((n + 1)) and $((n + 2))): exit $rc"
        echo "--- stdout"
        norm <"$RAW/$n.out"
        echo "--- stderr"
        norm <"$RAW/$n.err"
    } >>"$REC"
}

# 28. (NONDETERMINISTIC where it stops) SIGINT once the first step line of a 60-step run shows:
#     it stops after step N (N varies); recorded: exit code, the message with N, the state
#     written, and that --resume from it completes with the same final model as a run that
#     never stopped
sc_sig_many_steps() {
    local SM=("${D1[@]}" --val-every 0 --val-batches 1 --sample-tokens 0 --steps 60)
    sig '^step ' INT "${SM[@]}" --out-dir sm
    {
        echo "--- stdout: the interrupted line, steps as N"
        grep -E '^interrupted' "$RAW/$NCALL.out" | norm | sed -E 's/[0-9]+/N/g'
        echo "--- stderr, steps as N"
        norm <"$RAW/$NCALL.err" | sed -E 's/[0-9]+/N/g'
        echo "--- states written: $(find sm -maxdepth 1 -name 'state_*' | wc -l)"
        echo "--- the state named by the message exists: $(f=$(grep '^interrupted' "$RAW/$NCALL.out" | grep -oE 'sm/state_[0-9]+\.bin' | tail -n 1); [ -n "$f" ] && [ -f "$f" ] && echo yes || echo no)"
    } >>"$REC"
    NCALL=$((NCALL + 1))
    timeout -k 5 240 "$EXE" "${SM[@]}" --resume sm >"$RAW/$NCALL.out" 2>"$RAW/$NCALL.err" </dev/null
    local rc=$?
    CALLS_RC+=" $rc"
    {
        echo "### call $NCALL (output not recorded: its steps vary): $(cmdline "${SM[@]}" --resume sm)"
        echo "exit: $rc"
        echo "--- last stdout line: $(norm <"$RAW/$NCALL.out" | tail -n 1)"
    } >>"$REC"
    quiet "${SM[@]}" --out-dir straight
    {
        echo "--- final model of the resumed run: $(sha256sum <sm/model_000060.bin | cut -c1-16)"
        echo "--- final model of a run never stopped: $(sha256sum <straight/model_000060.bin | cut -c1-16)"
        echo "--- final states equal: $(cmp -s sm/state_000060.bin straight/state_000060.bin && echo yes || echo no)"
    } >>"$REC"
}

SCENARIOS=(
    plain grad_accum epochs overfit keep_checkpoints keep_best resume resume_notes no_state
    skip_outliers diverge bad_shard profile hellaswag data_notes usage_errors readonly out_dir
    small_vocab_schedules
    sig_accum_int sig_accum_nostate_term sig_resumed_int sig_val_term sig_before_first_int
    sig_last_step_int sig_sample_term sig_lock sig_many_steps
)

START=$(now_ms)
: >"$R/_summary.txt"
for s in "${SCENARIOS[@]}"; do
    name=${s//_/-}
    echo "$name" | grep -q -E "$FILTER" || continue
    begin "$name"
    "sc_$s"
    finish
done
if [ "${KEEP_WORK:-0}" != 1 ]; then
    rm -rf "$R/.bin" "$R/.inputs"
fi
printf 'harness done in %d s: %s\n' $((($(now_ms) - START + 500) / 1000)) "$R"
