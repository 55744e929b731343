<?php
// A smoke test of php-memcache (PECL memcache 4.0, Debian's
// php8.2-memcache: its own protocol code, not libmemcached) against one
// server:
//
//     php -d memcache.protocol=ascii|binary php_memcache_smoke.php HOST:PORT
//
// set, get, multi-get, add, replace, append, prepend, cas (with the
// unique from a get), increment, decrement, delete, version, stats and
// the failure replies (add of a present key, replace and delete of a
// missing one, a stale cas). Keys carry a random prefix so that runs
// against a shared cluster do not meet. Prints "ok: N checks" and exits
// 0, or exits 1 with the check.

[$host, $port] = explode(':', $argv[1]);
require __DIR__ . '/smoke_checks.php';

$m = new Memcache();
check($m->addServer($host, (int) $port), 'addServer');
$p = sprintf('phpmc-%08x-', mt_rand());
[$a, $b, $n, $missing] = [$p . 'a', $p . 'b', $p . 'n', $p . 'missing'];

check($m->set($a, 'alpha', 0, 0), 'set');
check($m->get($a) === 'alpha', 'get after set');
check($m->get($missing) === false, 'get of a missing key');
check(!$m->add($a, 'x'), 'add of a present key fails');
check($m->add($b, 'beta'), 'add of a new key');
check(!$m->replace($missing, 'x'), 'replace of a missing key fails');
check($m->replace($a, 'alpha2'), 'replace');
check($m->append($a, '+') && $m->prepend($a, '<'), 'append, prepend');
check($m->get($a) === '<alpha2+', 'value after append and prepend');
$got = $m->get([$a, $b, $missing]);
check($got == [$a => '<alpha2+', $b => 'beta'], 'multi-get');
$flags = null;
$cas = null;
check($m->get($a, $flags, $cas) === '<alpha2+' && $cas > 0, 'get with its unique');
check($m->cas($a, 'swapped', 0, 0, $cas), 'cas with the current unique');
check(!$m->cas($a, 'again', 0, 0, $cas), 'cas with a stale unique fails');
check($m->get($a) === 'swapped', 'value after cas');
check($m->set($n, '10'), 'set a counter');
check($m->increment($n, 5) === 15, 'increment');
check($m->decrement($n, 20) === 0, 'decrement floors at 0');
check($m->increment($missing, 1) === false, 'increment of a missing key');
check($m->delete($a), 'delete');
check(!$m->delete($a), 'delete of a missing key');
check(is_string($m->getVersion()), 'version');
$stats = $m->getStats();
check(is_array($stats) && isset($stats['curr_items']), 'stats');
report();
