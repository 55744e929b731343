<?php
// A smoke test of php-memcached (Debian's php8.2-memcached, libmemcached)
// against one server:
//
//     php php_smoke.php HOST:PORT text|binary [USER PASSWORD]
//
// set, get, multi-get, add, replace, append, prepend, cas (with the
// unique from a get), increment, decrement, delete, touch and the failure
// replies (add of a present key, replace and delete of a missing one, a
// stale cas). With USER and PASSWORD (binary only), SASL PLAIN first.
// Keys carry a random prefix so that runs against a shared cluster do not
// meet. Prints "ok: N checks" and exits 0, or exits 1 with the check.

[$addr, $protocol] = [$argv[1], $argv[2]];
[$host, $port] = explode(':', $addr);
require __DIR__ . '/smoke_checks.php';

$m = new Memcached();
$m->setOption(Memcached::OPT_COMPRESSION, false);
$m->setOption(Memcached::OPT_BINARY_PROTOCOL, $protocol === 'binary');
if (isset($argv[3])) {
    $m->setSaslAuthData($argv[3], $argv[4]);
}
$m->addServer($host, (int)$port);
$p = 'php-' . bin2hex(random_bytes(4)) . '-';
[$a, $b, $n, $missing] = [$p . 'a', $p . 'b', $p . 'n', $p . 'missing'];

check($m->set($a, 'alpha') === true, 'set');
check($m->get($a) === 'alpha', 'get after set');
check($m->get($missing) === false && $m->getResultCode() === Memcached::RES_NOTFOUND, 'get of a missing key');
check($m->add($a, 'x') === false, 'add of a present key fails');
check($m->add($b, 'beta') === true, 'add of a new key');
check($m->replace($missing, 'x') === false, 'replace of a missing key fails');
check($m->replace($a, 'alpha2') === true, 'replace');
check($m->append($a, '+') === true && $m->prepend($a, '<') === true, 'append, prepend');
check($m->get($a) === '<alpha2+', 'value after append and prepend');
$got = $m->getMulti([$a, $b, $missing]);
check($got == [$a => '<alpha2+', $b => 'beta'], 'getMulti: ' . json_encode($got));
$item = $m->get($a, null, Memcached::GET_EXTENDED);
check($item['value'] === '<alpha2+' && $item['cas'] > 0, 'get with its unique');
check($m->cas($item['cas'], $a, 'swapped') === true, 'cas with the current unique');
check($m->cas($item['cas'], $a, 'again') === false, 'cas with a stale unique fails');
check($m->get($a) === 'swapped', 'value after cas');
check($m->set($n, '10') === true, 'set a counter');
check($m->increment($n, 5) === 15, 'increment');
check($m->decrement($n, 20) === 0, 'decrement floors at 0');
check($m->touch($a, 300) === true, 'touch');
check($m->delete($a) === true, 'delete');
check($m->delete($a) === false && $m->getResultCode() === Memcached::RES_NOTFOUND, 'delete of a missing key');
report();
