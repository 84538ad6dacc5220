#!/bin/bash
# merge_picks.sh NEW.tgz: a device run's autotune picks ($OUT/autotune.tgz, autotune_picks_save) merged into the
# committed bench/device/autotune_h100.tgz, which autotune_carry.sh unpacks on a fresh machine: a kernel's picks
# from the run replace those of the same source hash, the others are kept (a source hash that no longer exists is only
# a cache miss on the device).
set -e
new=$1; committed=${2:-bench/device/autotune_h100.tgz}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
tar xzf "$committed" -C "$d"
tar xzf "$new" -C "$d"
(cd "$d" && find . -name "*.autotune.json" | sort | tar czf - -T -) > "$committed.new"
mv "$committed.new" "$committed"
echo "$(tar tzf "$committed" | wc -l) picks files in $committed"
