# A smoke test of Dalli (Rails' memcache client; Debian's ruby-dalli 3.0.6,
# which speaks the binary protocol) against one server:
#
#     ruby dalli_smoke.rb HOST:PORT
#
# set, get, get_multi, add, replace, append, prepend, cas (fetch-modify-
# store, and a write in between that makes it fail), incr and decr (with
# an initial value), delete, touch, fetch with a block, and the failure
# replies; with STORE_SASL_USER and STORE_SASL_PASSWORD set, over SASL
# PLAIN. Keys carry a random
# prefix so that runs against a shared cluster do not meet. Prints
# "ok: N checks" and exits 0, or exits 1 with the check that failed.
require "dalli"
require "logger"

# Dalli logs its SASL exchange to stdout; the result line is the output.
Dalli.logger.level = Logger::WARN

addr = ARGV[0]
abort "usage: ruby dalli_smoke.rb HOST:PORT" unless addr
user = ENV["STORE_SASL_USER"]
password = ENV["STORE_SASL_PASSWORD"]
$checks = 0
def check(cond, what)
  unless cond
    warn "check failed: #{what}"
    exit 1
  end
  $checks += 1
end

options = { socket_timeout: 5 }
options.merge!(username: user, password: password) if user
dc = Dalli::Client.new(addr, options)
# Raw values (not marshalled), so that append and prepend make sense.
RAW = { raw: true }.freeze
p = format("dalli-%08x-", rand(0xffffffff))
a, b, n, missing = %w[a b n missing].map { |k| p + k }

check(dc.set(a, "alpha", nil, RAW), "set")
check(dc.get(a) == "alpha", "get after set")
check(dc.get(missing).nil?, "get of a missing key")
check(!dc.add(a, "x", nil, RAW), "add of a present key fails")
check(dc.add(b, "beta", nil, RAW), "add of a new key")
# Dalli 3.0.6 answers a failed replace with 0 (memcached's and ours).
replaced = dc.replace(missing, "x", nil, RAW)
check((!replaced || replaced == 0) && dc.get(missing).nil?, "replace of a missing key fails")
check(dc.replace(a, "alpha2", nil, RAW), "replace")
check(dc.append(a, "+") && dc.prepend(a, "<"), "append, prepend")
check(dc.get(a) == "<alpha2+", "value after append and prepend")
got = dc.get_multi(a, b, missing)
check(got == { a => "<alpha2+", b => "beta" }, "get_multi")
check(dc.cas(a) { |v| v + "!" }, "cas")
check(dc.get(a) == "<alpha2+!", "value after cas")
# Another write between the read and the swap: the cas fails.
stale = dc.cas(a) { |v| dc.set(a, "moved", nil, RAW); v + "?" }
check(!stale, "cas after another write fails")
check(dc.get(a) == "moved", "the other write stays")
check(dc.cas(missing) { |v| v }.nil?, "cas of a missing key")
check(dc.incr(n, 1, nil, 10) == 10, "incr creates the counter at its initial value")
check(dc.incr(n, 5) == 15, "incr")
check(dc.decr(n, 20) == 0, "decr floors at 0")
check(dc.incr(missing, 1).nil?, "incr of a missing key without an initial value")
check(dc.touch(a, 300), "touch")
check(!dc.touch(missing, 300), "touch of a missing key")
check(dc.fetch(p + "f") { "made" } == "made", "fetch runs the block on a miss")
check(dc.fetch(p + "f") { "again" } == "made", "fetch finds the stored value")
check(dc.delete(a), "delete")
check(!dc.delete(a), "delete of a missing key")
dc.close
puts "ok: #{$checks} checks"
