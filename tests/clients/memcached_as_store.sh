#!/usr/bin/env bash
# Starts `store addsrv` for a client's own test harness that starts
# memcached itself (async-memcached's through MEMCACHED_BIN, gomemcache's
# as `memcached` in PATH): memcached's command line becomes the store's. Each instance
# keeps its data beside the port file the harness names
# (MEMCACHED_PORT_FILENAME) or its Unix socket, so a restart finds its
# data, as a store does.
#
#   -p -1            a free port, written to MEMCACHED_PORT_FILENAME as
#                    memcached writes it ("TCP INET: <port>")
#   -l -t -c -m -I   passed on (the store takes memcached's meaning)
#   -u USER          ignored: the store does not change user
#   -U 0             ignored: the store has no UDP listener
#   -s PATH -a MASK  a Unix socket instead (the store's own -s and -a)
#
# The script ends by exec'ing the store, so the harness's kill reaches it.
#
# With STORE_AS_FOLLOWER set, a TCP server is instead the third server of
# a cluster started for it (`store up` with one LB and two servers), a
# follower: the harness's kill reaches it, and a watcher then stops the
# rest of the cluster.
set -euo pipefail
port='' listen=127.0.0.1 socket='' args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -u) shift 2 ;;
        -U) [ "$2" = 0 ] || { echo "UDP is not served" >&2; exit 64; }; shift 2 ;;
        -p) port=$2; shift 2 ;;
        -l) listen=$2; shift 2 ;;
        -t|-c|-m|-I) args+=("$1" "$2"); shift 2 ;;
        -s) socket=$2; args+=("$1" "$2"); shift 2 ;;
        -a) args+=("$1" "$2"); shift 2 ;;
        *) echo "memcached argument not mapped: $1" >&2; exit 64 ;;
    esac
done
: "${STORE_BIN:?STORE_BIN names the store binary}"
if [ -n "$socket" ]; then
    # Beside the socket, or under STORE_DATA_ROOT when the socket's
    # directory is shared (gomemcache's is /tmp).
    data="$(dirname "$socket")/store-data"
    [ -z "${STORE_DATA_ROOT:-}" ] || data="$STORE_DATA_ROOT/$(basename "$socket").data"
    exec "$STORE_BIN" addsrv --data-dir "$data" "${args[@]}"
fi
: "${MEMCACHED_PORT_FILENAME:?the harness names a port file}"
dir=$(dirname "$MEMCACHED_PORT_FILENAME")
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
if [ -n "${STORE_AS_FOLLOWER:-}" ]; then
    if [ -n "$port" ] && [ "$port" != -1 ]; then
        echo "a follower takes a port of its own choosing (-p -1), not $port" >&2
        exit 64
    fi
    # An LB and two servers (`store up`), which list themselves once both
    # are in the group; then this script becomes the third server.
    out="$dir/store-up.out"
    : >"$out"
    base=$(free_port)
    "$STORE_BIN" up --lbs 1 --servers 2 -p "$base" --data-dir "$dir/store-cluster" >"$out" 2>&1 &
    up=$!
    lb=''
    for _ in $(seq 600); do
        if grep -q '^  server-2 ' "$out"; then
            lb=$(awk '$1 == "lb" { print $2; exit }' "$out" || true)
            break
        fi
        kill -0 "$up" 2>/dev/null || { cat "$out" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$lb" ] || { cat "$out" >&2; kill -TERM "$up"; exit 1; }
    # After the exec below this script's pid is the third server's: once
    # the harness kills it, the watcher stops the rest of the cluster.
    script=$$
    ( while kill -0 "$script" 2>/dev/null; do sleep 0.1; done; kill -TERM "$up" 2>/dev/null ) &
    port=$(free_port)
    printf 'TCP INET: %s\n' "$port" > "$MEMCACHED_PORT_FILENAME"
    exec "$STORE_BIN" addsrv -p "$port" -l "$listen" --lb "$lb" \
        --cluster-file "$dir/store-cluster/lb/cluster" --data-dir "$dir/store-data" "${args[@]}"
fi
if [ -z "$port" ] || [ "$port" = -1 ]; then
    port=$(free_port)
fi
printf 'TCP INET: %s\n' "$port" > "$MEMCACHED_PORT_FILENAME"
exec "$STORE_BIN" addsrv -p "$port" -l "$listen" --data-dir "$dir/store-data" "${args[@]}"
