#!/usr/bin/env bash
# Footprint of grid-agent with the sim driver against the broker at mqtt://127.0.0.1:1883.
# The agent runs under /usr/bin/time -v; after a 5 s warm-up its CPU (utime+stime from
# /proc/PID/stat) is measured over SECONDS, `ps` and /proc/PID/status give RSS and threads at the
# end, then SIGTERM; /usr/bin/time -v adds the peak RSS and the CPU of the whole run.
# MODE "idle" (default): the idle fallback; "self-consumption": the simulated site's grid meter
# ([meter] source = "sim") and the self-consumption fallback, which sets a new setpoint every tick.
# usage: footprint.sh BINARY LABEL [SECONDS] [MODE]     (numbers go to docs/agent.md)
set -u
bin=$1; label=$2; secs=${3:-60}; mode=${4:-idle}
dir=$(mktemp -d)
extra=""
port=$((20000 + $$ % 20000))
if [ "$mode" = "self-consumption" ]; then
    extra=$'[meter]\nsource = "sim"\n'
    fallback=$'fallback = "self-consumption"\nmetrics_listen = "127.0.0.1:'"$port"$'"'
else
    fallback='fallback = "idle"'
fi
cat > "$dir/config.toml" <<TOML
device_id = "fp-$label-$$"
[mqtt]
url = "mqtt://127.0.0.1:1883"
$extra
[agent]
store_path = "$dir/agent.db"
$fallback
TOML
/usr/bin/time -v -o "$dir/time" "$bin" --config "$dir/config.toml" 2>"$dir/log" &
tpid=$!
sleep 5
pid=$(pgrep -P "$tpid" | head -1)
tck=$(getconf CLK_TCK)
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
sleep "$secs"
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
ps_line=$(ps -o rss=,vsz=,nlwp=,pcpu= -p "$pid")
if [ "$mode" = "self-consumption" ]; then
    gauges=$(curl -s "http://127.0.0.1:$port/metrics" | grep -E '^grid_agent_(setpoint_kw|applied_kw|grid_import_kw|meter_missing|soc_ratio)\{' | tr '\n' ' ')
fi
kill -TERM "$pid"; wait "$tpid"; rc=$?
cpu=$(echo "scale=4; ($u1+$s1-$u0-$s0)/$tck/$secs*100" | bc)
maxrss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time")
user=$(awk -F': ' '/User time/ {print $2}' "$dir/time")
sys=$(awk -F': ' '/System time/ {print $2}' "$dir/time")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/time")
echo "$label ($mode): VmRSS=${rss} kB VmHWM=${hwm} kB threads=$threads" \
    "cpu=${cpu}% of a core over ${secs}s idle (ticks $((u1+s1-u0-s0)))" \
    "| ps rss,vsz,nlwp,pcpu: $ps_line" \
    "| time -v: maxrss=${maxrss} kB user=${user}s sys=${sys}s wall=${wall} exit=$rc"
if [ "$mode" = "self-consumption" ]; then
    # The fallback followed the simulated meter: one "no grid-meter reading yet" warning at the
    # first tick (before the first reading), then "readings are back", and the gauges at the end.
    echo "  meter warnings: $(grep -c 'without a meter' "$dir/log")," \
        "back: $(grep -c 'readings are back' "$dir/log") | $gauges"
fi
rm -rf "$dir"
