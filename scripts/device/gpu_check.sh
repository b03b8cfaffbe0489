#!/usr/bin/env bash
# The device check of issue 9, run ON the lent GPU machine by the calls that prepare.sh prints (see
# scripts/device/README.md). Fail-soft: each phase is its own process under a time limit, a failed stage
# never stops the next, and the report phase always prints the table and writes $OUT/gpu_check.json.
#
#   bash scripts/device/gpu_check.sh [--phases stash,prep,install,ort,report] [--payload slim|full]
#                                    [--deadline SECONDS] [--state DIR] [--cpu-dry-run] [gpu_check.py options]
set -u -o pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
STATE=${GTE_DEVICE_STATE:-/tmp/gte-device}
OUT=${OUT:-$ROOT/device-out}
PY=${PYTHON:-python3}
PHASES=all PAYLOAD=slim DRY="" DEADLINE=540
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --phases) PHASES=$2; shift 2 ;;
    --payload) PAYLOAD=$2; shift 2 ;;
    --deadline) DEADLINE=$2; shift 2 ;;
    --state) STATE=$2; shift 2 ;;
    --cpu-dry-run) DRY=--cpu-dry-run; shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
[ "$PHASES" = all ] && PHASES=stash,prep,install,ort,report
mkdir -p "$STATE" "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1
START=$SECONDS
say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
has() { [[ ",$PHASES," == *",$1,"* ]]; }
say "phases $PHASES, payload $PAYLOAD, state $STATE, out $OUT, deadline ${DEADLINE}s $DRY"

if has stash; then
  # Copy this call's carried part out of the checkout: later calls re-lay the tree, the state folder stays.
  $PY scripts/device/payload.py stash device-payload "$STATE/payload" 2>&1 | tee -a "$LOG"
  if has install && [ -z "$DRY" ] && [ ! -f "$STATE/site/.installed-ok" ]; then
    missing=$($PY -c "import sys; sys.path.insert(0, 'scripts/device'); import payload; print(' '.join(payload.missing_parts('$STATE/payload/$PAYLOAD')))")
    if [ -n "$missing" ]; then
      # Fail fast: without every part nothing GPU-side can run, and each minute here is device time.
      say "payload $PAYLOAD incomplete: missing $missing. The machine was replaced between calls or a call was skipped: start again from call 1."
      exit 3
    fi
  fi
fi

for phase in prep install ort; do
  has "$phase" || continue
  left=$((DEADLINE - (SECONDS - START) - 25))  # keep time for the report
  if [ "$left" -lt 20 ]; then
    say "$phase: skipped, only $((DEADLINE - (SECONDS - START)))s of the ${DEADLINE}s deadline left"
    continue
  fi
  pypath="$STATE/src"
  [ -d "$STATE/site/onnxruntime" ] && pypath="$pypath:$STATE/site"
  say "$phase: start (limit ${left}s)"
  PYTHONPATH="$pypath${PYTHONPATH:+:$PYTHONPATH}" timeout --signal=INT --kill-after=15 "$left" \
    $PY scripts/device/gpu_check.py --phase "$phase" --state "$STATE" --out "$OUT" --payload "$PAYLOAD" $DRY "${EXTRA[@]}" \
    2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "$phase: stopped at its time limit"
  say "$phase: exit $rc"
  if [ "$phase" = install ] && [ -d "$STATE/site/onnxruntime" ]; then touch "$STATE/site/.installed-ok"; fi
done

rc=0
if has report; then
  $PY scripts/device/gpu_check.py --phase report --state "$STATE" --out "$OUT" --payload "$PAYLOAD" $DRY "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
fi
say "done in $((SECONDS - START))s (exit $rc)"
exit "$rc"
