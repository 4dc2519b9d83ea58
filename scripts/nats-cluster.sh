#!/usr/bin/env bash
# nats-cluster.sh start DIR | stop DIR | kill DIR N | restart DIR N
# A three-node JetStream cluster of Debian's nats-server on loopback, for the
# replication tests and benchmarks: free ports, configuration and data under
# DIR, one pid file per node. `start` prints the client URLs (comma-separated)
# once every node answers its health check with JetStream on, and fails
# (stopping what it started) otherwise; `stop` ends the nodes and waits for
# them; `kill` ends node N (0-2) at once (SIGKILL, as a crash would);
# `restart` starts node N again on its ports and data and waits for its
# health check.
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[[ -n $cmd && -n $dir ]] || { echo "usage: $0 start|stop DIR, or kill|restart DIR N" >&2; exit 2; }

stop() {
  for pidf in "$dir"/n*.pid; do
    [[ -f $pidf ]] || continue
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidf"
  done
}

healthy() { # healthy PORT: JetStream answers on the monitoring port
  python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz?js-enabled-only=true", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

if [[ $cmd == stop ]]; then stop; exit 0; fi
if [[ $cmd == kill || $cmd == restart ]]; then
  n=${3:-}
  [[ $n =~ ^[012]$ && -f $dir/n$n.conf ]] || { echo "$0 $cmd: no node '$n' in $dir" >&2; exit 2; }
  if [[ $cmd == kill ]]; then
    [[ -f $dir/n$n.pid ]] && kill -9 "$(cat "$dir/n$n.pid")" 2>/dev/null || true
    rm -f "$dir/n$n.pid"
    exit 0
  fi
  nats-server -c "$dir/n$n.conf" >> "$dir/n$n.log" 2>&1 &
  echo $! > "$dir/n$n.pid"
  port=$(sed -n 's/^http: 127.0.0.1:\([0-9]*\)$/\1/p' "$dir/n$n.conf")
  for _ in $(seq 100); do healthy "$port" && exit 0; sleep 0.1; done
  echo "node n$n did not come back (see $dir/n$n.log)" >&2
  exit 1
fi
[[ $cmd == start ]] || { echo "usage: $0 start|stop DIR, or kill|restart DIR N" >&2; exit 2; }
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
mkdir -p "$dir"
# Nine free loopback ports (client, cluster, monitoring for each node).
mapfile -t ports < <(python3 -c '
import socket
socks = []
for _ in range(9):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks: print(s.getsockname()[1])
')
routes=""
for i in 0 1 2; do routes+="nats-route://127.0.0.1:${ports[3 + i]},"; done
routes=${routes%,}
urls=""
for i in 0 1 2; do
  cat > "$dir/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${ports[i]}
http: 127.0.0.1:${ports[6 + i]}
jetstream { store_dir: "$dir/n$i" }
cluster {
  name: batpak
  listen: 127.0.0.1:${ports[3 + i]}
  routes: [ ${routes//,/, } ]
}
CONF
  nats-server -c "$dir/n$i.conf" > "$dir/n$i.log" 2>&1 &
  echo $! > "$dir/n$i.pid"
  urls+="nats://127.0.0.1:${ports[i]},"
done
trap 'stop' ERR
for i in 0 1 2; do
  ok=0
  for _ in $(seq 100); do
    if healthy "${ports[6 + i]}"; then ok=1; break; fi
    sleep 0.1
  done
  [[ $ok == 1 ]] || { echo "node n$i did not come up (see $dir/n$i.log)" >&2; stop; exit 1; }
done
echo "${urls%,}" > "$dir/urls"
# A test that owns the cluster may die before it stops it (a timeout kills
# it): with BATPAK_CLUSTER_OWNER=PID, a watchdog stops the nodes once PID is gone.
if [[ -n ${BATPAK_CLUSTER_OWNER:-} ]]; then
  ( while kill -0 "$BATPAK_CLUSTER_OWNER" 2>/dev/null && [[ -d $dir ]]; do sleep 1; done; stop ) >/dev/null 2>&1 &
  disown
fi
echo "${urls%,}"
