#!/usr/bin/env python3
"""hashload: closed-loop load through libmemcached's own client (pylibmc,
Debian's python3-pylibmc), which hashes each key to one server of its list
(ketama consistent hashing), as applications that spread keys over a
cluster's servers do. Issue 17 asks for the figures of such a client over
every server against the same client on the leader alone.

    python3 bench/hashload.py --servers 127.0.0.1:11211,127.0.0.1:11212 \\
        --workload get --batch 1 --processes 8 --seconds 8 --warmup 1 \\
        --keys 100000 --key-size 32 --value-size 100

Each of --processes processes holds one client (a connection to every
server) and sends one request at a time: `--batch 1` a get or set of one
key, `--batch 16` a get_multi or set_multi of 16 keys (libmemcached sends
a multi-get as one `get` per server with that server's keys), counted as
16 operations. Prints one JSON line like bench/mcload.c's.
"""

import argparse
import json
import multiprocessing
import random
import sys
import time


def key(i, size):
    # `client bench`'s keys, so that a get finds what its preload set.
    return "k" + str(i).zfill(size - 1)


def worker(opts, start_at, results):
    import pylibmc

    servers = opts.servers.split(",")
    client = pylibmc.Client(servers, binary=False,
                            behaviors={"ketama": True, "tcp_nodelay": True})
    rng = random.Random()
    value = b"v" * opts.value_size
    ops = errors = 0
    end = start_at + opts.warmup + opts.seconds
    measured_from = start_at + opts.warmup
    while time.time() < start_at:
        time.sleep(0.001)
    while True:
        now = time.time()
        if now >= end:
            break
        keys = [key(rng.randrange(opts.keys), opts.key_size) for _ in range(opts.batch)]
        try:
            if opts.workload == "get":
                if opts.batch == 1:
                    client.get(keys[0])
                else:
                    client.get_multi(keys)
            elif opts.batch == 1:
                client.set(keys[0], value)
            else:
                failed = client.set_multi({k: value for k in keys})
                errors += len(failed) if now >= measured_from else 0
        except pylibmc.Error:
            if now >= measured_from:
                errors += opts.batch
            continue
        if now >= measured_from:
            ops += opts.batch
    results.put((ops, errors))


def preload(opts):
    import pylibmc

    client = pylibmc.Client(opts.servers.split(","), binary=False,
                            behaviors={"ketama": True, "tcp_nodelay": True})
    value = b"v" * opts.value_size
    chunk = 100
    for first in range(0, opts.keys, chunk):
        client.set_multi({key(i, opts.key_size): value
                          for i in range(first, min(first + chunk, opts.keys))})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", required=True)
    ap.add_argument("--workload", choices=["get", "set"], default="get")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--key-size", type=int, default=32)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--preload", action="store_true",
                    help="set every key once, then exit")
    opts = ap.parse_args()
    try:
        import pylibmc  # noqa: F401
    except ImportError:
        sys.exit("hashload: pylibmc missing (apt-get install python3-pylibmc)")
    if opts.preload:
        started = time.time()
        preload(opts)
        print(json.dumps({"preloaded": opts.keys, "seconds": round(time.time() - started, 3)}))
        return
    results = multiprocessing.Queue()
    start_at = time.time() + 0.5
    procs = [multiprocessing.Process(target=worker, args=(opts, start_at, results))
             for _ in range(opts.processes)]
    for p in procs:
        p.start()
    totals = [results.get() for _ in procs]
    for p in procs:
        p.join()
    ops = sum(o for o, _ in totals)
    errors = sum(e for _, e in totals)
    print(json.dumps({"ops_per_s": round(ops / opts.seconds, 1), "ops": ops,
                      "errors": errors, "seconds": opts.seconds}))


if __name__ == "__main__":
    main()
