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
if [ -z "$port" ] || [ "$port" = -1 ]; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
printf 'TCP INET: %s\n' "$port" > "$MEMCACHED_PORT_FILENAME"
exec "$STORE_BIN" addsrv -p "$port" -l "$listen" --data-dir "$dir/store-data" "${args[@]}"
