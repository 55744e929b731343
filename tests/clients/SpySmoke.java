// A smoke test of spymemcached (Debian's libspymemcached-java) against one
// server, over the text or the binary protocol:
//
//     javac -cp spymemcached.jar -d OUT SpySmoke.java
//     java -cp spymemcached.jar:OUT SpySmoke HOST:PORT text|binary
//
// set, get, bulk get, add, replace, append, prepend, gets and cas (and a
// stale cas), incr, decr, delete, touch and the failure replies. Keys carry
// a random prefix so that runs against a shared cluster do not meet.
// Prints "ok: N checks" and exits 0, or exits 1 with the failed check.

import java.net.InetSocketAddress;
import java.util.Arrays;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;

import net.spy.memcached.BinaryConnectionFactory;
import net.spy.memcached.CASResponse;
import net.spy.memcached.CASValue;
import net.spy.memcached.ConnectionFactory;
import net.spy.memcached.DefaultConnectionFactory;
import net.spy.memcached.MemcachedClient;

public class SpySmoke {
    static int checks = 0;

    static void check(boolean cond, String what) {
        if (!cond) {
            System.err.println("check failed: " + what);
            System.exit(1);
        }
        checks++;
    }

    public static void main(String[] args) throws Exception {
        String[] hostPort = args[0].split(":");
        ConnectionFactory factory = args[1].equals("binary")
                ? new BinaryConnectionFactory()
                : new DefaultConnectionFactory();
        InetSocketAddress addr = new InetSocketAddress(hostPort[0], Integer.parseInt(hostPort[1]));
        MemcachedClient c = new MemcachedClient(factory, Arrays.asList(addr));
        String p = "spy-" + Long.toHexString(new Random().nextLong()) + "-";
        String a = p + "a", b = p + "b", n = p + "n", missing = p + "missing";

        check(c.set(a, 0, "alpha").get(), "set");
        check("alpha".equals(c.get(a)), "get after set");
        check(c.get(missing) == null, "get of a missing key");
        check(!c.add(a, 0, "x").get(), "add of a present key fails");
        check(c.add(b, 0, "beta").get(), "add of a new key");
        check(!c.replace(missing, 0, "x").get(), "replace of a missing key fails");
        check(c.replace(a, 0, "alpha2").get(), "replace");
        check(c.append(0, a, "+").get() && c.prepend(0, a, "<").get(), "append, prepend");
        check("<alpha2+".equals(c.get(a)), "value after append and prepend");
        Map<String, Object> got = c.getBulk(a, b, missing);
        check(got.size() == 2 && "<alpha2+".equals(got.get(a)) && "beta".equals(got.get(b)),
                "getBulk: " + got);
        CASValue<Object> gets = c.gets(a);
        check(gets != null && "<alpha2+".equals(gets.getValue()), "gets");
        check(c.cas(a, gets.getCas(), "swapped") == CASResponse.OK, "cas with the current unique");
        check(c.cas(a, gets.getCas(), "again") == CASResponse.EXISTS, "cas with a stale unique");
        check("swapped".equals(c.get(a)), "value after cas");
        check(c.set(n, 0, "10").get(), "set a counter");
        check(c.incr(n, 5) == 15, "incr");
        check(c.decr(n, 20) == 0, "decr floors at 0");
        check(c.incr(missing, 1) == -1, "incr of a missing key");
        check(c.touch(a, 300).get(), "touch");
        check(c.delete(a).get(), "delete");
        check(!c.delete(a).get(), "delete of a missing key");
        c.shutdown(5, TimeUnit.SECONDS);
        System.out.println("ok: " + checks + " checks");
    }
}
