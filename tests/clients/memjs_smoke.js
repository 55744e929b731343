// A smoke test of memjs (npm, binary protocol only) against one server.
//
//     NODE_PATH=<dir>/node_modules node memjs_smoke.js HOST:PORT
//
// set, get, add, replace, append, prepend, increment and decrement (with an
// initial value: memjs creates counters), delete, touch, a stat group, and
// the failure replies (add of a present key, replace and delete of a
// missing one). memjs has no cas or multi-get. Keys carry a random prefix
// so that runs against a shared cluster do not meet. Prints "ok: N checks"
// and exits 0, or exits 1 with the failed check. With STORE_SASL_USER and
// STORE_SASL_PASSWORD set, memjs authenticates with SASL PLAIN first (a
// server run with -S).
'use strict';

const crypto = require('crypto');
const memjs = require('memjs');

const addr = process.argv[2];
const prefix = 'smoke-' + crypto.randomBytes(4).toString('hex') + '-';
const key = (name) => prefix + name;
let checks = 0;

function check(cond, what) {
  if (!cond) {
    throw new Error('check failed: ' + what);
  }
  checks += 1;
}

async function main() {
  const credentials = process.env.STORE_SASL_USER === undefined ? {} : {
    username: process.env.STORE_SASL_USER,
    password: process.env.STORE_SASL_PASSWORD,
  };
  const c = memjs.Client.create(addr, { retries: 0, timeout: 5, ...credentials });
  const [a, b, n, missing] = [key('a'), key('b'), key('n'), key('missing')];
  check(await c.set(a, 'alpha', { expires: 0 }), 'set');
  check((await c.get(a)).value.toString() === 'alpha', 'get after set');
  check((await c.get(missing)).value === null, 'get of a missing key');
  check((await c.add(a, 'x')) === false, 'add of a present key fails');
  check(await c.add(b, 'beta'), 'add of a new key');
  check((await c.replace(missing, 'x')) === false, 'replace of a missing key fails');
  check(await c.replace(a, 'alpha2'), 'replace');
  check(await c.append(a, '+'), 'append');
  check(await c.prepend(a, '<'), 'prepend');
  // memjs 1.3.2's prepend sends the append opcode (0x0e), so memcached
  // appends too.
  const joined = (await c.get(a)).value.toString();
  check(joined === 'alpha2+<', 'value after append and prepend: ' + joined);
  const created = await c.increment(n, 5, { initial: 10 });
  check(created.success && created.value === 10, 'increment creates with its initial value');
  const added = await c.increment(n, 5, {});
  check(added.success && added.value === 15, 'increment');
  const floored = await c.decrement(n, 20, {});
  check(floored.success && floored.value === 0, 'decrement floors at 0');
  check(await c.touch(b, 100), 'touch');
  check((await c.touch(missing, 100)) === false, 'touch of a missing key');
  check(await c.delete(a), 'delete');
  check((await c.delete(a)) === false, 'delete of a missing key');
  check((await c.get(a)).value === null, 'get after delete');
  const stats = await new Promise((resolve, reject) => {
    c.stats((err, server, stats) => (err ? reject(err) : resolve(stats)));
  });
  check(stats && 'pid' in stats && 'curr_items' in stats, 'stats');
  c.close();
  console.log('ok: ' + checks + ' checks');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
