#!/usr/bin/env bash
# Soak test, not run in CI: interrupts one small training run KILLS times at random moments (SIGKILL,
# SIGTERM or SIGINT, chosen at random; one in five during start-up, the others 0-0.5 s after the run has
# logged a new step), resumes it with --resume auto each time, lets it finish, and compares its loss log
# and its final checkpoint (weights, optimiser state, RNG) with an uninterrupted run of the same command.
#
#   tests/soak.sh [KILLS=50] [ITERS=2000]        PYTHON=python3, WORK=<temp dir> (kept for inspection)
#
# Exit 0 only when every interruption ended as expected (137, 143 or 130; a start-up kill may also see 1
# from an interrupted import) and the two runs are bitwise identical.
set -euo pipefail
set -m  # job control: background jobs get their own process group and do not ignore SIGINT

kills=${1:-50}
iters=${2:-2000}
python=${PYTHON:-python3}
work=${WORK:-$(mktemp -d)}
export OMP_NUM_THREADS=1
flags=(dcgan --data synthetic --device cpu --batch-size 8 --z-dim 8 --ngf 4 --ndf 4 --seed 3 --deterministic
       --log-every 1 --sample-every 0 --save-every 7 --iters "$iters")
echo "soak: $kills interruptions of a $iters-iteration dcgan run in $work"

logged() { if [[ -f $1/losses.jsonl ]]; then wc -l < "$1/losses.jsonl"; else echo 0; fi; }

"$python" -m fastgan.train "${flags[@]}" --out "$work/whole" > "$work/whole.log" 2>&1
signals=(KILL TERM INT)
declare -A count=([KILL]=0 [TERM]=0 [INT]=0 [startup]=0 [complete]=0)
for i in $(seq 1 "$kills"); do
    before=$(logged "$work/run")
    "$python" -m fastgan.train "${flags[@]}" --out "$work/run" --resume auto > "$work/run-$i.log" 2>&1 &
    pid=$!
    sig=${signals[RANDOM % 3]}
    if (( RANDOM % 5 == 0 )); then
        sleep "$(( RANDOM % 3 )).$(( RANDOM % 10 ))"
        count[startup]=$(( count[startup] + 1 ))
    else
        while kill -0 "$pid" 2>/dev/null && (( $(logged "$work/run") <= before )); do sleep 0.02; done
        sleep "0.$(( RANDOM % 50 ))"
    fi
    kill -s "$sig" "$pid" 2>/dev/null || true
    rc=0
    wait "$pid" || rc=$?
    if grep -q "already complete" "$work/run-$i.log"; then
        count[complete]=$(( count[complete] + 1 ))
    fi
    case "$sig:$rc" in
        KILL:137 | TERM:143 | INT:130 | *:0) ;;
        *:1) grep -q KeyboardInterrupt "$work/run-$i.log" || { echo "soak: run $i: exit 1"; cat "$work/run-$i.log"; exit 1; } ;;
        *) echo "soak: run $i: SIG$sig gave exit $rc"; tail -n 3 "$work/run-$i.log"; exit 1 ;;
    esac
    count[$sig]=$(( count[$sig] + 1 ))
    echo "soak: $i SIG$sig exit $rc, logged steps $before -> $(logged "$work/run")"
done
"$python" -m fastgan.train "${flags[@]}" --out "$work/run" --resume auto > "$work/final.log" 2>&1
echo "soak: SIGKILL ${count[KILL]}, SIGTERM ${count[TERM]}, SIGINT ${count[INT]} (${count[startup]} during start-up;" \
     "${count[complete]} found the run complete)"

"$python" - "$work/whole" "$work/run" <<'EOF'
import sys
from pathlib import Path

import torch

from fastgan.train.checkpoint import latest_checkpoint, load_checkpoint

whole, run = map(Path, sys.argv[1:])
logs = [open(f"{d}/losses.jsonl").read() for d in (whole, run)]
assert logs[0] == logs[1], "the loss logs differ"
a, b = (load_checkpoint(latest_checkpoint(d)) for d in (whole, run))


def tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from tensors(v, f"{prefix}/{k}")


for group in ("nets", "optimizers", "rng"):
    ta, tb = dict(tensors(a[group])), dict(tensors(b[group]))
    assert ta.keys() == tb.keys(), group
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{group}: {different[:5]} differ"
print(f"soak: step {a['step']}: losses ({logs[0].count(chr(10))} records), weights, optimiser state and RNG "
      "identical to the uninterrupted run")
EOF
