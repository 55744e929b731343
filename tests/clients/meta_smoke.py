"""A smoke test of meta-memcache (PyPI, the meta protocol only) against one
server.

    python3 meta_smoke.py HOST:PORT

set, get, multi-get, get with its CAS and a set that must match it (and a
stale one that must not), add-mode refill, touch, counters (created with an
initial value, then incremented and read back), delete and invalidate,
and the lease of get_or_lease: a miss wins the lease (`mg ... N`), and
a second reader of the same key does not win it again. Keys carry a random
prefix so that runs against a shared cluster do not meet. Prints one line
"ok: N checks" and exits 0, or fails with the check.
"""

import os
import sys

from meta_memcache import (
    CacheClient,
    Key,
    LeasePolicy,
    ServerAddress,
    connection_pool_factory_builder,
)

from smoke_checks import check, report


def main(addr):
    host, port = addr.rsplit(":", 1)
    c = CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host=host, port=int(port))],
        connection_pool_factory_fn=connection_pool_factory_builder(recv_timeout=5),
    )
    prefix = "meta-%s-" % os.urandom(4).hex()
    a, b, n, missing, leased = (prefix + s for s in ("a", "b", "n", "missing", "lease"))
    check(c.set(key=a, value=b"alpha", ttl=0) is True, "set")
    check(c.get(key=a) == b"alpha", "get after set")
    check(c.get(key=missing) is None, "get of a missing key")
    check(c.set(key=b, value={"x": [1, 2]}, ttl=100) is True, "set of a structure")
    got = c.multi_get(keys=[a, b, missing])
    check(
        got == {Key(a): b"alpha", Key(b): {"x": [1, 2]}, Key(missing): None},
        "multi_get: %r" % (got,),
    )
    value, cas = c.get_cas(key=a)
    check(value == b"alpha" and cas, "get_cas")
    check(c.set(key=a, value=b"swapped", ttl=0, cas_token=cas) is True, "set with the current CAS")
    check(c.set(key=a, value=b"again", ttl=0, cas_token=cas) is False, "set with a stale CAS fails")
    check(c.get(key=a) == b"swapped", "value after the CAS set")
    check(c.refill(key=a, value=b"refilled", ttl=0) is False, "refill of a present key fails")
    check(c.refill(key=missing, value=b"filled", ttl=0) is True, "refill of a missing key")
    check(c.touch(key=a, ttl=300) is True, "touch")
    check(c.touch(key=prefix + "nothing", ttl=300) is False, "touch of a missing key")
    check(c.delta_initialize(key=n, delta=5, initial_value=10, initial_ttl=0) is True, "counter created")
    check(c.delta_and_get(key=n, delta=5) == 15, "delta_and_get")
    check(c.delta(key=n, delta=1) is True, "delta")
    check(c.delta_and_get(key=n, delta=0) == 16, "counter value")
    check(c.delete(key=a) is True, "delete")
    check(c.delete(key=a) is False, "delete of a missing key")
    check(c.invalidate(key=b) is True, "invalidate")
    check(c.get(key=b) is None, "get after invalidate")
    policy = LeasePolicy(ttl=30, miss_retries=1, miss_retry_wait=0.01, wait_backoff_factor=1)
    check(c.get_or_lease(key=leased, lease_policy=policy) is None, "the first reader wins the lease")
    # Another reader finds the lease taken: it waits and retries, then
    # gives up without a value (the winner has not filled it).
    check(c.get_or_lease(key=leased, lease_policy=policy) is None, "a second reader does not win")
    check(c.set(key=leased, value=b"filled", ttl=0) is True, "the winner fills the key")
    check(c.get_or_lease(key=leased, lease_policy=policy) == b"filled", "then readers get it")
    print(report())


if __name__ == "__main__":
    main(sys.argv[1])
