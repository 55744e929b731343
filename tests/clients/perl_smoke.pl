# A smoke test of Cache::Memcached::Fast (Debian's
# libcache-memcached-fast-perl, text protocol) against one server:
#
#     perl perl_smoke.pl HOST:PORT
#
# set, get, get_multi, add, replace, append, prepend, gets and cas (and a
# stale cas), incr, decr, delete, touch and the failure replies. Keys carry
# a random prefix so that runs against a shared cluster do not meet.
# Prints "ok: N checks" and exits 0, or dies with the check.
use strict;
use warnings;
use Cache::Memcached::Fast;

my $addr = shift or die "usage: perl perl_smoke.pl HOST:PORT\n";
my $checks = 0;
sub check {
    my ($cond, $what) = @_;
    die "check failed: $what\n" unless $cond;
    $checks++;
}

my $m = Cache::Memcached::Fast->new({ servers => [$addr], io_timeout => 5 });
my $p = sprintf('perl-%08x-', int(rand(0xffffffff)));
my ($a, $b, $n, $missing) = map { $p . $_ } qw(a b n missing);

check($m->set($a, 'alpha'), 'set');
check($m->get($a) eq 'alpha', 'get after set');
check(!defined $m->get($missing), 'get of a missing key');
check(!$m->add($a, 'x'), 'add of a present key fails');
check($m->add($b, 'beta'), 'add of a new key');
check(!$m->replace($missing, 'x'), 'replace of a missing key fails');
check($m->replace($a, 'alpha2'), 'replace');
check($m->append($a, '+') && $m->prepend($a, '<'), 'append, prepend');
check($m->get($a) eq '<alpha2+', 'value after append and prepend');
my $got = $m->get_multi($a, $b, $missing);
check(keys %$got == 2 && $got->{$a} eq '<alpha2+' && $got->{$b} eq 'beta', 'get_multi');
my $gets = $m->gets($a);
check($gets && $gets->[1] eq '<alpha2+', 'gets');
check($m->cas($a, $gets->[0], 'swapped'), 'cas with the current unique');
check(!$m->cas($a, $gets->[0], 'again'), 'cas with a stale unique fails');
check($m->get($a) eq 'swapped', 'value after cas');
check($m->set($n, '10'), 'set a counter');
check($m->incr($n, 5) == 15, 'incr');
check($m->decr($n, 20) == 0, 'decr floors at 0');
check(!defined($m->incr($missing, 1)) || !$m->incr($missing, 1), 'incr of a missing key');
check($m->touch($a, 300), 'touch');
check($m->delete($a), 'delete');
check(!$m->delete($a), 'delete of a missing key');
print "ok: $checks checks\n";
