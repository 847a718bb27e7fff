#!/usr/bin/env bash
# CPU used by a benchmark, split by process: the command itself with its children (the
# load generator and the engines it starts), PostgreSQL (every server process, and the
# backends that ended meanwhile, through the postmaster's children times) and the NATS
# server. Loopback services of this machine; run on an otherwise idle machine.
#
#   benches/cpu-split.sh target/release/loadgen nats --no-raw --per-patient 2 --patients 30000
set -euo pipefail
tick=$(getconf CLK_TCK)
postmaster=$(head -1 /var/run/postgresql/*.pid)
nats=$(pgrep -x nats-server | head -1)
# utime + stime of every postgres process, plus the postmaster's reaped children.
pg_ticks() {
  local sum=0 p
  for p in $(pgrep postgres); do
    sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((sum + $(awk '{print $16 + $17}' "/proc/$postmaster/stat")))
}
nats_ticks() { awk '{print $14 + $15}' "/proc/$nats/stat"; }
pg0=$(pg_ticks)
nats0=$(nats_ticks)
/usr/bin/time -f "command (with children): user %U s, sys %S s, wall %e s" "$@"
pg1=$(pg_ticks)
nats1=$(nats_ticks)
echo "postgres: $(echo "scale=2; ($pg1 - $pg0) / $tick" | bc) s; nats-server: $(echo "scale=2; ($nats1 - $nats0) / $tick" | bc) s"
