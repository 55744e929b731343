"""A smoke test of a binary-protocol memcached client against one server.

    python3 binary_smoke.py pylibmc|bmemcached HOST:PORT

pylibmc (libmemcached, Debian's python3-pylibmc) in binary mode, and
python-binary-memcached (`bmemcached`, PyPI): set, get, multi-get, add,
replace, append, prepend, cas, incr, decr, delete, touch where the client
has it, and the failure replies (add of a present key, replace and delete
of a missing one, a stale cas, incr of a missing or non-numeric value).
Keys carry a random prefix so that runs against a shared cluster do not
meet. Prints one line "ok: N checks" and exits 0, or fails with the check.

With STORE_SASL_USER and STORE_SASL_PASSWORD set, the client authenticates
with SASL PLAIN first (a server run with -S).
"""

import os
import sys

from smoke_checks import check, report


def key(name):
    return PREFIX + name


def run_pylibmc(addr):
    import pylibmc

    c = pylibmc.Client([addr], binary=True, behaviors={"cas": True}, **CREDENTIALS)
    a, b, n, missing = key("a"), key("b"), key("n"), key("missing")
    check(c.set(a, b"alpha") is True, "set")
    check(c.get(a) == b"alpha", "get after set")
    check(c.get(missing) is None, "get of a missing key")
    check(c.add(a, b"x") is False, "add of a present key fails")
    check(c.add(b, b"beta") is True, "add of a new key")
    try:
        c.replace(missing, b"x")
        check(False, "replace of a missing key fails")
    except pylibmc.NotFound:
        check(True, "replace of a missing key fails")
    check(c.replace(a, b"alpha2") is True, "replace")
    check(c.append(a, b"+") is True and c.prepend(a, b"<") is True, "append, prepend")
    check(c.get(a) == b"<alpha2+", "value after append and prepend")
    got = c.get_multi([a, b, missing])
    check(got == {a: b"<alpha2+", b: b"beta"}, "get_multi: %r" % (got,))
    value, unique = c.gets(a)
    check(value == b"<alpha2+" and unique, "gets")
    check(c.cas(a, b"swapped", unique) is True, "cas with the current unique")
    check(c.cas(a, b"again", unique) is False, "cas with a stale unique fails")
    check(c.get(a) == b"swapped", "value after cas")
    check(c.set(n, b"10") is True, "set a counter")
    check(c.incr(n, 5) == 15, "incr")
    check(c.decr(n, 20) == 0, "decr floors at 0")
    try:
        c.incr(missing, 1)
        check(False, "incr of a missing key fails")
    except pylibmc.NotFound:
        check(True, "incr of a missing key fails")
    failed = c.set_multi({key("m%d" % i): b"v%d" % i for i in range(20)})
    check(failed == [], "set_multi (quiet sets): %r" % (failed,))
    got = c.get_multi([key("m%d" % i) for i in range(20)])
    check(len(got) == 20 and got[key("m7")] == b"v7", "get_multi of 20 keys")
    check(c.touch(b, 100) is True, "touch")
    check(c.touch(missing, 100) is False, "touch of a missing key")
    check(c.delete(a) is True, "delete")
    check(c.delete(a) is False, "delete of a missing key")
    check(c.get(a) is None, "get after delete")


def run_bmemcached(addr):
    import bmemcached

    c = bmemcached.Client((addr,), **CREDENTIALS)
    a, b, n, missing = key("a"), key("b"), key("n"), key("missing")
    check(c.set(a, "alpha") is True, "set")
    check(c.get(a) == "alpha", "get after set")
    check(c.get(missing) is None, "get of a missing key")
    check(c.add(a, "x") is False, "add of a present key fails")
    check(c.add(b, "beta") is True, "add of a new key")
    check(c.replace(missing, "x") is False, "replace of a missing key fails")
    check(c.replace(a, "alpha2") is True, "replace")
    got = c.get_multi([a, b, missing])
    check(got == {a: "alpha2", b: "beta"}, "get_multi: %r" % (got,))
    value, unique = c.gets(a)
    check(value == "alpha2" and unique, "gets")
    check(c.cas(a, "swapped", unique) is True, "cas with the current unique")
    check(not c.cas(a, "again", unique), "cas with a stale unique fails")
    check(c.get(a) == "swapped", "value after cas")
    check(c.set(n, 10) is True, "set a counter")
    check(c.incr(n, 5) == 15, "incr")
    check(c.decr(n, 20) == 0, "decr floors at 0")
    # bmemcached's incr creates a missing counter (initial value 0).
    check(c.incr(missing + "c", 3) == 0, "incr creates its counter")
    check(c.incr(missing + "c", 3) == 3, "then counts")
    c.set(key("text"), "abc")
    try:
        c.incr(key("text"), 1)
        check(False, "incr of a non-numeric value fails")
    except Exception:
        check(True, "incr of a non-numeric value fails")
    failed = c.set_multi({key("m%d" % i): "v%d" % i for i in range(20)})
    check(failed == [], "set_multi: %r" % (failed,))
    got = c.get_multi([key("m%d" % i) for i in range(20)])
    check(len(got) == 20 and got[key("m7")] == "v7", "get_multi of 20 keys")
    check(c.delete(a) is True, "delete")
    check(c.get(a) is None, "get after delete")
    # bmemcached reports a delete of a missing key as done, as it does
    # against memcached.
    stats = c.stats()
    check(any("pid" in s for s in stats.values()), "stats: %r" % (stats,))


PREFIX = "smoke-%s-" % os.urandom(4).hex()
CREDENTIALS = (
    {"username": os.environ["STORE_SASL_USER"], "password": os.environ["STORE_SASL_PASSWORD"]}
    if "STORE_SASL_USER" in os.environ
    else {}
)

if __name__ == "__main__":
    client, addr = sys.argv[1], sys.argv[2]
    {"pylibmc": run_pylibmc, "bmemcached": run_bmemcached}[client](addr)
    print(report())
