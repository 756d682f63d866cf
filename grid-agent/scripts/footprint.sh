#!/usr/bin/env bash
# Footprint of grid-agent with the sim driver against the broker at mqtt://127.0.0.1:1883:
# RSS (VmRSS/VmHWM) and CPU (utime+stime) over SECONDS after a 5 s warm-up, then SIGTERM.
# usage: footprint.sh BINARY LABEL [SECONDS]     (numbers go to docs/agent.md)
set -u
bin=$1; label=$2; secs=${3:-60}
dir=$(mktemp -d)
cat > "$dir/config.toml" <<TOML
device_id = "fp-$label-$$"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[agent]
store_path = "$dir/agent.db"
TOML
"$bin" --config "$dir/config.toml" 2>"$dir/log" &
pid=$!
sleep 5
tck=$(getconf CLK_TCK)
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
sleep "$secs"
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid"; rc=$?
cpu=$(echo "scale=4; ($u1+$s1-$u0-$s0)/$tck/$secs*100" | bc)
echo "$label: VmRSS=${rss} kB VmHWM=${hwm} kB threads=$threads cpu=${cpu}% of a core over ${secs}s exit=$rc"
rm -rf "$dir"
