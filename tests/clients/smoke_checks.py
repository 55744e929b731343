"""The checks of the Python smoke tests in this directory: each counts, and
the first that fails stops the run with what it checked."""

_count = 0


def check(cond, what):
    global _count
    if not cond:
        raise AssertionError(what)
    _count += 1


def report():
    """The line a smoke test ends with when every check held."""
    return "ok: %d checks" % _count
