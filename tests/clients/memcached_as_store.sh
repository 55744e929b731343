#!/usr/bin/env bash
# Starts `store addsrv` for a client's own test harness that starts
# memcached itself (MEMCACHED_BIN): memcached's command line, as
# async-memcached's harness writes it, becomes the store's. Each instance
# keeps its data beside the port file the harness names
# (MEMCACHED_PORT_FILENAME), so a restart finds its data, as a store does.
#
#   -p -1            a free port, written to MEMCACHED_PORT_FILENAME as
#                    memcached writes it ("TCP INET: <port>")
#   -l -t -c -m -I   passed on (the store takes memcached's meaning)
#   -u USER          ignored: the store does not change user
#   -U 0             ignored: the store has no UDP listener
#   -s PATH -a MASK  a Unix socket: refused (exit 64), not served
#
# The script ends by exec'ing the store, so the harness's kill reaches it.
set -euo pipefail
port='' listen=127.0.0.1 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -u) shift 2 ;;
        -U) [ "$2" = 0 ] || { echo "UDP is not served" >&2; exit 64; }; shift 2 ;;
        -p) port=$2; shift 2 ;;
        -l) listen=$2; shift 2 ;;
        -t|-c|-m|-I) args+=("$1" "$2"); shift 2 ;;
        -s|-a) echo "Unix sockets are not served" >&2; exit 64 ;;
        *) echo "memcached argument not mapped: $1" >&2; exit 64 ;;
    esac
done
: "${STORE_BIN:?STORE_BIN names the store binary}"
: "${MEMCACHED_PORT_FILENAME:?the harness names a port file}"
dir=$(dirname "$MEMCACHED_PORT_FILENAME")
if [ -z "$port" ] || [ "$port" = -1 ]; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
printf 'TCP INET: %s\n' "$port" > "$MEMCACHED_PORT_FILENAME"
exec "$STORE_BIN" addsrv -p "$port" -l "$listen" --data-dir "$dir/store-data" "${args[@]}"
