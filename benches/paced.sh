#!/usr/bin/env bash
# One `loadgen nats` run, and what each side cost during its paced phase: CPU of the
# engine(s), the load generator, the NATS server and PostgreSQL over 15 s of the paced
# phase (utime + stime from /proc/PID/stat, sampled every second), and — when
# PostgreSQL has pg_stat_statements loaded — its statements over the whole paced phase
# (reset as the phase begins, read as it ends). Loopback services of this machine; run on
# an otherwise idle machine, and compare only runs made back to back.
#
#   benches/paced.sh LOADGEN PARCOURS RATE [loadgen nats flags…]
#   benches/paced.sh target/profiling/loadgen target/profiling/parcours 2000 --nats nats://127.0.0.1:4223
#
# Prints the paced phase's lines of the run, then `cpu over 15 s of the paced phase,
# % of one core: engine … loadgen … nats … postgres … machine … (of 100 × cores)`, then
# the statements (calls, execution and planning ms, rows, buffer hits and reads). The
# full output of the run is kept in $PACED_LOG (default /tmp/paced.log); the paced phase
# lasts $PACED_SECS (default 60: a shorter phase ends before the kernel's write-back of
# the first 30 s of dirty pages begins, and reads optimistic; benches/README.md,
# "Realistic keys, a cause's ids side by side, and what `sync_interval: always` costs").
#
# pg_stat_statements, once (restarts PostgreSQL):
#   psql -h 127.0.0.1 -U postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
#   pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main restart
#   psql -h 127.0.0.1 -U postgres -c "CREATE EXTENSION pg_stat_statements"
# and back: ALTER SYSTEM RESET shared_preload_libraries, restart.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,18p' "$0"; exit 2; }
loadgen=$1 parcours=$2 rate=$3
shift 3
log=${PACED_LOG:-/tmp/paced.log}
samples=$(mktemp)
trap 'rm -f "$samples"; kill $(jobs -p) 2>/dev/null || true' EXIT

tick=$(getconf CLK_TCK)
engine=$(basename "$parcours" | cut -c1-15)
generator=$(basename "$loadgen" | cut -c1-15)
postmaster=$(head -1 /var/run/postgresql/*.pid)
psql_() { psql -h 127.0.0.1 -U postgres -d postgres -qAt "$@" 2>/dev/null; }
statements=false
if [ "$(psql_ -c "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")" = 1 ]; then
  statements=true
fi

ticks() {
  local sum=0 p
  for p in "$@"; do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$sum"
}
# Every second: time, then the ticks of the engines, the generator, NATS, PostgreSQL
# (every server process, and the children the postmaster reaped), and the machine.
(
  while true; do
    pg=$(($(ticks $(pgrep -x postgres)) + $(awk '{print $16 + $17}' "/proc/$postmaster/stat")))
    echo "$(date +%s.%N) $(ticks $(pgrep -x "$engine")) $(ticks $(pgrep -x "$generator")) \
$(ticks $(pgrep -x nats-server)) $pg $(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat)"
    sleep 1
  done
) >"$samples" &

paced_at=""
seen_throughput=false
# The paced phase begins: its start noted, the statements' counts reset.
phase_begins() {
  date +%s.%N >"$samples.paced"
  if $statements; then psql_ -c "SELECT pg_stat_statements_reset()" >/dev/null; fi
}
"$loadgen" nats --no-raw --rate "$rate" --paced-secs "${PACED_SECS:-60}" --parcours "$parcours" "$@" 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      throughput*) seen_throughput=true ;;
      "  engine:"*)
        # The first engine line after the saturated phase's result comes once the load
        # generator has read the engines' /metrics (whose first read folds the whole log
        # into the indicators): the paced phase begins now.
        if $seen_throughput; then
          seen_throughput=false
          phase_begins
        fi
        ;;
      settled:*)
        # The dirty pages were written back (`sync`) after that read: the phase begins now.
        phase_begins
        ;;
      "paced at"*)
        if $statements; then
          psql_ -c "COPY (SELECT calls, round(total_exec_time::numeric, 1), \
            round(total_plan_time::numeric, 1), rows, shared_blks_hit, shared_blks_read, \
            left(regexp_replace(query, '\s+', ' ', 'g'), 110) \
            FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' \
            ORDER BY total_exec_time + total_plan_time DESC LIMIT 12) TO STDOUT" >"$samples.statements"
        fi
        ;;
    esac
    echo "$line"
  done >"$log"
paced_at=$(cat "$samples.paced" 2>/dev/null || true)
sed -n '/^paced at/,$p' "$log"
if [ -n "$paced_at" ]; then
  # Skip the paced phase's first 3 s.
  python3 - "$samples" "$paced_at" "$tick" "$(nproc)" <<'EOF'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 6]
start, tick, cores = float(sys.argv[2]) + 3, float(sys.argv[3]), int(sys.argv[4])
window = [r for r in rows if start <= r[0] <= start + 15]
if len(window) < 2:
    sys.exit("too few samples in the paced phase")
a, b = window[0], window[-1]
dt = b[0] - a[0]
names = ["engine", "loadgen", "nats", "postgres", "machine"]
cpu = " ".join(f"{n} {100 * (b[i + 1] - a[i + 1]) / tick / dt:.0f}%" for i, n in enumerate(names))
print(f"cpu over {dt:.1f} s of the paced phase, % of one core: {cpu} (of {100 * cores})")
EOF
fi
if [ -s "$samples.statements" ]; then
  echo "statements over the paced phase: calls, exec ms, plan ms, rows, hits, reads, query"
  tr '\t' ' ' <"$samples.statements"
fi
rm -f "$samples.paced" "$samples.statements"
