#!/bin/sh
# SPDX-License-Identifier: GPL-3.0-or-later
# Runs corpus cases on a lab VM, as the corpus README defines them, and says
# exactly which step of which case failed:
#   run_cases.sh ROOT NAME:KIND [NAME:KIND ...]      KIND: build or loadfail
# ROOT/NAME holds patch.ko, check and (optionally) setup. Each case prints one
# line "CASE NAME OK: ..." or "CASE NAME FAIL: ..." (then the kernel log tail).
# All cases run in one call: a module run costs seconds on an emulated guest.
set -u

run_one() {  # dir name kind
    dir=$1 name=$2 kind=$3
    sysfs=/sys/kernel/livepatch/$name
    dmesg --clear
    if [ -x "$dir/setup" ] && ! "$dir/setup"; then echo "FAIL: setup script failed"; return 1; fi
    if "$dir/check"; then echo "FAIL: check passes before the patch is loaded"; return 1; fi
    start=$(date +%s%N)
    if ! insmod "$dir/patch.ko"; then
        [ "$kind" = loadfail ] || { echo "FAIL: insmod failed"; return 1; }
        if grep -q "^$name " /proc/modules || [ -d "$sysfs" ]; then
            echo "FAIL: the failed load left the patch loaded"; return 1
        fi
        if "$dir/check"; then echo "FAIL: check passes after a failed load"; return 1; fi
        echo "OK: load refused cleanly"; return 0
    fi
    [ "$kind" = loadfail ] && { echo "FAIL: the load should have failed"; return 1; }
    for _ in $(seq 600); do [ "$(cat "$sysfs/transition")" = 0 ] && break; sleep 0.1; done
    [ "$(cat "$sysfs/enabled")" = 1 ] || { echo "FAIL: enabled is not 1"; return 1; }
    [ "$(cat "$sysfs/transition")" = 0 ] || { echo "FAIL: transition still 1 after 60 s"; return 1; }
    took=$(( ($(date +%s%N) - start) / 1000000 ))
    "$dir/check" || { echo "FAIL: check fails while the patch is live"; return 1; }
    echo 0 > "$sysfs/enabled"
    for _ in $(seq 600); do [ -d "$sysfs" ] || break; sleep 0.1; done
    [ -d "$sysfs" ] && { echo "FAIL: unpatch transition did not complete in 60 s"; return 1; }
    rmmod "$name" || { echo "FAIL: rmmod failed"; return 1; }
    if grep -q "^$name " /proc/modules; then echo "FAIL: still loaded after rmmod"; return 1; fi
    if "$dir/check"; then echo "FAIL: check still passes after the unload"; return 1; fi
    if dmesg | grep -qE "WARNING:|Call Trace:|BUG:|Oops"; then
        echo "FAIL: the kernel log has a warning or call trace"; return 1
    fi
    echo "OK: check failed before, passed live (transition ${took} ms), failed after unload; kernel log clean"
}

root=$1
shift
failures=0
for spec in "$@"; do
    name=${spec%%:*}
    if out=$(run_one "$root/$name" "$name" "${spec#*:}" 2>&1); then
        echo "CASE $name $(echo "$out" | tail -n 1)"
    else
        failures=$((failures + 1))
        echo "CASE $name $(echo "$out" | grep FAIL: | tail -n 1)"
        dmesg | tail -n 15 | sed "s/^/CASE $name   dmesg: /"
        rmmod "$name" 2>/dev/null  # leave the VM clean for the next case
    fi
done
echo "DONE $failures failed"
