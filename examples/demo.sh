#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The README's demo (`make demo`): boot a lab VM, live-patch it with livepatch.yml and
# the example patch, and show /proc/cmdline and /sys/kernel/livepatch before and after.
#
#   examples/demo.sh            patch (a rerun reuses the VM and the build: no change)
#   examples/demo.sh rollback   unload the demo patch again
#
# Needs `make setup` (Debian packages and .venv); the first run builds a lab image as root.
# KLP_LAB_STATE: lab state dir (default .lab); KLP_CACHE: downloads, images and builds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"  # livepatch.yml takes patch paths relative to the current directory
STATE=$(realpath -m "${KLP_LAB_STATE:-.lab}")
BIN=$ROOT/.venv/bin
WORK=$STATE/demo  # collection link, playbook log, VM name; never the user's own paths
REPORT=livepatch-report/latest  # livepatch.yml writes one directory per run under livepatch-report/
MODE=${1:-apply}

say() { printf '\n== %s\n' "$*"; }
took() { printf '   (%ss)\n' "$((SECONDS - $1))"; }
die() { printf '\ndemo: error: %s\n' "$*" >&2; exit 1; }
lab() { "$BIN/python" -m lab --state-dir "$STATE" "$@"; }

case $MODE in
    apply) patch_state=enabled ;;
    rollback) patch_state=absent ;;
    *) die "unknown argument '$MODE'; usage: examples/demo.sh [rollback]" ;;
esac
[[ -x $BIN/ansible-playbook ]] || die "no .venv in $ROOT: run 'make setup' (or 'make demo')"

# Plays, changed and failed tasks and the recap, from ansible's default output.
summarise() {
    local line task="" recap="" host ok changed unreachable failed
    while IFS= read -r line; do
        case $line in
            "PLAY RECAP"*) recap=1 ;;
            "PLAY ["*) line=${line#PLAY [} && echo "   ${line%%] \**}" ;;
            "TASK ["*) task=${line#TASK [} && task=${task%%] \**} && task=${task#* : } ;;
            changed:*) echo "     changed: $task" ;;
            fatal:* | failed:* | *ERROR*) echo "     $task: $line" ;;
            *changed=*)
                read -r host _ ok changed unreachable failed _ <<<"$line"
                [[ -z $recap || $host == localhost ]] || echo "   $host $ok $changed $failed $unreachable"
                ;;
        esac
    done
}

show_state() {
    local patches
    printf '   /proc/cmdline:         %s\n' "$(lab ssh "$VM" -- cat /proc/cmdline)"
    # grep -H prints name:value for each patch's sysfs file; it fails when there is none.
    patches=$(lab ssh "$VM" -- 'cd /sys/kernel/livepatch && grep -H . */enabled */transition' \
        2>/dev/null | paste -sd ' ') || patches="(no livepatch loaded)"
    printf '   /sys/kernel/livepatch: %s\n' "$patches"
}

# ---- the lab VM: the lab's default kernel -------------------------------------------
t=$SECONDS
mkdir -p "$WORK"
say "lab VM (the first run builds its image and boots it under QEMU: minutes)"
if [[ $MODE == apply ]]; then
    out=$(lab up) || die "the lab VM did not come up (the reason is above)"
    read -r VM RELEASE _ <<<"$out"
    echo "$VM" >"$WORK/vm"
else
    VM=$(cat "$WORK/vm" 2>/dev/null) || die "no demo VM recorded in $WORK: run 'make demo' first"
    RELEASE=$(lab status | awk -v vm="$VM" '$1 == vm && $5 == "yes" { print $2 }')
    [[ -n $RELEASE ]] || die "the demo VM $VM is not running: 'make demo' boots it again"
fi
printf '   %s runs %s\n' "$VM" "$RELEASE"
took "$t"

# klp.livepatch straight from this checkout, through a collections dir of the demo's own.
mkdir -p "$WORK/collections/ansible_collections/klp"
ln -sfn "$ROOT" "$WORK/collections/ansible_collections/klp/livepatch"

say "before"
show_state

# ---- livepatch.yml ------------------------------------------------------------------
t=$SECONDS
if [[ $MODE == apply ]]; then
    say "livepatch.yml: build for $RELEASE, load behind health gates, verify, report"
    extra=()
else
    say "livepatch.yml with livepatch_state=absent: the rollback"
    extra=(-e '{"livepatch_probes": []}')  # the example's probe expects the patch
fi
# The whole run goes to the log; on screen the plays, what changed and what failed, as
# they happen (PYTHONUNBUFFERED: through a pipe ansible would hold its output back).
PYTHONUNBUFFERED=1 ANSIBLE_COLLECTIONS_PATH=$WORK/collections ANSIBLE_HOST_KEY_CHECKING=False \
    ANSIBLE_NOCOLOR=1 \
    "$BIN/ansible-playbook" -i "$STATE/inventory.yml" livepatch.yml -e @examples/demo-vars.yml \
    -e "livepatch_hosts=$VM" -e "livepatch_state=$patch_state" "${extra[@]}" 2>&1 |
    tee "$WORK/playbook.log" | summarise ||
    die "livepatch.yml failed (above; the whole run: $WORK/playbook.log); fix, then rerun"
took "$t"

say "after"
show_state

say "fleet report: $REPORT/report.html (and report.json, JUnit report.xml)"
"$BIN/python" - "$REPORT/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for h in report["hosts"]:
    print(f"   {h['host']}: {h['kernel_release']}, {h['status']}, patch {h['patch_state']}")
PY

say "done in ${SECONDS}s; next"
state_arg=""
[[ $STATE == "$ROOT/.lab" ]] || state_arg=" --state-dir $STATE"
if [[ $MODE == apply ]]; then
    echo "   roll back:   examples/demo.sh rollback"
else
    echo "   patch again: make demo"
fi
echo "   log in:      python3 -m lab$state_arg ssh $VM"
echo "   stop the VM: python3 -m lab$state_arg down $VM"
