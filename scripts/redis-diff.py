#!/usr/bin/env python3
"""Differential test of Concord's Redis front door against a real redis-server.

Sends the same random command sequences to Debian's redis-server (7.0) and to a 1-member
Concord over their Redis ports, and compares the replies. Each seed starts from an empty
keyspace: FLUSHALL on Redis; on Concord MSET then DEL of the keyspace keys in every
database the sequence may select (or FLUSHALL/FLUSHDB, --concord-reset, once Concord has
them; the MSET clears an expired key's leftover deadline, which DEL alone does not). The first
divergence of a seed is printed with the seed, the commands up to it and both replies;
at the end a summary (commands compared, divergences per command, distinct kinds of
divergence). Exits 1 if any divergence was found, 2 on a usage or start-up error.

    scripts/redis-diff.py                              # 40 seeds x 250 commands
    CONCORD=/tmp/concord-base scripts/redis-diff.py    # use this binary (no build)
    scripts/redis-diff.py --seed-start 17 --seeds 1 --minimize   # replay one seed, shrink it
    scripts/redis-diff.py --commands get,set,append,strlen --concord-reset flushall
    scripts/redis-diff.py --commands +getex,expire-options   # defaults plus these
    scripts/redis-diff.py --malformed                  # malformed RESP inputs instead
    scripts/redis-diff.py --redis-port 6379 --concord-port 6380   # servers already running
    scripts/redis-diff.py --keep-going --minimize --no-sequence --seeds 200
        # after a divergence empty the keyspace and go on; shrink each new kind of divergence
    scripts/redis-diff.py --redis-port P1 --concord-port P2 --commands +scan,keys,...
        # P2 a second redis-server: checks the fuzzer itself (no divergence expected)

Comparison is exact except: TTL/PTTL/EXPIRETIME/PEXPIRETIME (equal when negative, else
within --ttl-tolerance seconds), RANDOMKEY (both nil, or both a key of the keyspace),
KEYS, SMEMBERS, SUNION, SINTER, SDIFF, SPOP, HKEYS, HVALS (as sorted lists; SPOP is only
sent with counts that pop all or nothing), HGETALL (as sorted field-value pairs), SCAN,
SSCAN and HSCAN (a full iteration from cursor 0 on each side, compared as sets of the
strings listed), SRANDMEMBER and HRANDFIELD (shape only: nil or not, how many), TIME
(shape only: two decimal strings within 5 s of each other), DBSIZE (Concord's at most
Redis's: Redis also counts keys that expired but are not reclaimed yet).

--commands takes command names; besides the plain commands it knows the pseudo-names
`expire-options` (NX/XX/GT/LT on EXPIRE and friends) and `set-cas` (SET NX/XX/GET, which
Concord decides by Paxos). A leading `+` adds names to the default list.

Servers: unless --redis-port is given, starts `redis-server --port P --save ''
--appendonly no` (installing Debian's redis-server with scripts/lib/apt.sh when it is
missing); unless --concord-port is given, starts `$CONCORD server` (default
target/release/concord; this script never builds) as a 1-member cluster, data in a temp
dir. Ports: --base-port (default 23700): Redis +0, Concord client +1, peer +2, Redis
protocol +3. Every process started here is stopped by PID on exit; every wait is bounded.
Environment: CONCORD (binary), REDIS_DIFF_REDIS_PORT, REDIS_DIFF_CONCORD_PORT,
REDIS_DIFF_CONCORD_RESET (defaults of the flags of those names), KEEP=1 (keep the temp dir
with the server logs). Python 3 standard library only.
"""

import argparse
import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------
# A tiny RESP client.
# ---------------------------------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection (or reset it)."""


class Timeout(Exception):
    """No complete reply within the timeout."""


def encode_command(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port, timeout=5.0):
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Closed(str(e))

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Timeout()
        except OSError as e:
            raise Closed(str(e))
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def _line(self):
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()
        raise Timeout()

    def _exact(self, n):
        for _ in range(1000000):
            if len(self.buf) >= n + 2:
                data, self.buf = self.buf[:n], self.buf[n + 2:]
                return data
            self._fill()
        raise Timeout()

    def read_reply(self):
        """One reply as a tuple: ('+', bytes) ('-', bytes) (':', int) ('$', bytes|None)
        ('*', list|None); RESP3 types map onto these where they can."""
        line = self._line()
        if not line:
            raise ValueError("empty reply line")
        t, rest = line[:1], line[1:]
        if t == b"+":
            return ("+", rest)
        if t == b"-":
            return ("-", rest)
        if t == b":":
            return (":", int(rest))
        if t == b"$":
            n = int(rest)
            return ("$", None) if n < 0 else ("$", self._exact(n))
        if t in (b"*", b"~", b">"):
            n = int(rest)
            if n < 0:
                return ("*", None)
            return ("*", [self.read_reply() for _ in range(n)])
        if t == b"%":
            n = int(rest)
            items = []
            for _ in range(n):
                items.append(self.read_reply())
                items.append(self.read_reply())
            return ("*", items)
        if t == b"_":
            return ("$", None)
        if t == b"#":
            return (":", 1 if rest == b"t" else 0)
        if t in (b",", b"("):
            return ("$", rest)
        if t in (b"=", b"!"):
            n = int(rest)
            return ("$", self._exact(n))
        raise ValueError("unknown reply type %r" % line[:40])

    def call(self, args):
        self.send_raw(encode_command(args))
        return self.read_reply()


def read_all(sock, idle=0.7, total=4.0):
    """Everything the server sends until it closes, or is idle for `idle` seconds.
    Returns (bytes, closed)."""
    data = b""
    deadline = time.monotonic() + total
    sock.settimeout(idle)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# ---------------------------------------------------------------------------------------
# Formatting.
# ---------------------------------------------------------------------------------------

SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+*?[]^/,=@%")


def fmt_arg(a):
    """An argument as redis-cli would take it (quoted with \\xHH escapes when needed)."""
    if a and all(b in SAFE for b in a):
        return a.decode()
    out = []
    for b in a:
        if b == 0x22:
            out.append('\\"')
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return '"' + "".join(out) + '"'


def fmt_cmd(args):
    if isinstance(args, tuple) and args[0] == "txn":
        return "; ".join(fmt_cmd(c) for c in args[1])
    if isinstance(args, tuple):
        return " ".join(fmt_arg(a) for a in args[1]) + "   (full iteration)"
    return " ".join(fmt_arg(a) for a in args)


def short(b, n=120):
    s = fmt_arg(b) if b else '""'
    return s if len(s) <= n else s[:n] + '..."(%d bytes)' % len(b)


def fmt_reply(r):
    t = r[0]
    if t == "+":
        return "+" + r[1].decode("latin-1")
    if t == "-":
        return "(error) " + r[1].decode("latin-1")
    if t == ":":
        return "(integer) %d" % r[1]
    if t == "$":
        return "(nil)" if r[1] is None else short(r[1])
    if t == "*":
        if r[1] is None:
            return "(nil array)"
        return "[" + ", ".join(fmt_reply(x) for x in r[1]) + "]"
    if t == "closed":
        return "(connection closed: %s)" % r[1]
    if t == "timeout":
        return "(no reply within the timeout)"
    if t == "keyset":
        return "{" + ", ".join(short(k) for k in sorted(r[1])) + "}"
    if t == "txn":
        return "<" + "; ".join(fmt_reply(x) for x in r[1]) + ">"
    return repr(r)


def kind(r):
    """A reply with its value left out (errors keep their text): for grouping divergences."""
    t = r[0]
    if t == "-":
        text = r[1].decode("latin-1")
        for prefix in ("ERR unknown command", "ERR Unsupported option "):
            if text.startswith(prefix):
                text = prefix.strip() + " ..."
        return "error: " + text
    return {"+": "status", ":": "integer", "$": "bulk" if r[1] is not None else "nil",
            "*": "array", "closed": "connection closed", "timeout": "timeout",
            "keyset": "scan"}.get(t, t) + ("" if t != "+" else " " + r[1].decode("latin-1"))


# ---------------------------------------------------------------------------------------
# The command generator.
# ---------------------------------------------------------------------------------------

KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4", b"num", b"", b"bin\x00\xff\r\n"]
FIELDS = [b"f", b"g", b"h", b"n", b"", b"\x00\xff", b"long" * 10]
MEMBERS = [b"a", b"b", b"c", b"1", b"2", b"-3", b"", b"m" * 40, b"\x00\xff", b"a b"]

I64MAX, I64MIN = 2**63 - 1, -(2**63)
INTS = [b"0", b"1", b"-1", b"2", b"42", b"-42", b"100", b"1000", b"123456789",
        b"%d" % I64MAX, b"%d" % I64MIN, b"%d" % (I64MAX - 1), b"%d" % (I64MIN + 1),
        b"%d" % (I64MAX // 2), b"4611686018427387904"]
BAD_INTS = [b"", b"abc", b"1.5", b"1e3", b" 1", b"1 ", b"+1", b"007", b"-0", b"0x10",
            b"%d" % (I64MAX + 1), b"%d" % (I64MIN - 1), b"18446744073709551616",
            b"99999999999999999999999", b"1\x00", b"-", b"\xff"]
FLOATS = [b"3.14", b"-2.5", b"0.1", b"1e3", b"1.5e-3", b"inf", b"-inf", b"+inf", b"nan",
          b"1.0", b"10.50", b"5.0e3", b"1e308", b"-1e308", b"0.0", b"-0.0", b".5", b"5.",
          b"1e400", b"0x1p3", b" 1.5", b"1.5 ", b"17.000000000000001", b"1e-320",
          b"123456789012345678901234567890"]
OTHER = [b"", b"abc", b"hello world", b"\x00\x01\xff\xfe", b"\r\n", "\u00e9t\u00e9".encode(),
         b"x" * 300, b"y" * 17, "\U0001f525".encode(), b"-", b"OK", b"nil"]


class Gen:
    def __init__(self, rng, commands, now_s):
        self.r = rng
        self.commands = [c for c in commands if c not in ("expire-options", "set-cas")]
        self.expire_options = "expire-options" in commands
        self.set_cas = "set-cas" in commands
        self.now_s = now_s

    def pick(self, xs):
        return self.r.choice(xs)

    def key(self):
        return self.pick(KEYS)

    def value(self):
        x = self.r.random()
        if x < 0.45:
            return self.pick(INTS)
        if x < 0.55:
            return self.pick(BAD_INTS)
        if x < 0.7:
            return self.pick(FLOATS)
        return self.pick(OTHER)

    def int_arg(self, bad=0.15):
        return self.pick(BAD_INTS) if self.r.random() < bad else self.pick(INTS)

    # Expiry arguments stay well away from "a few seconds from now", so the two servers,
    # asked a few milliseconds apart, always agree whether a key has expired.
    def rel_seconds(self):
        if self.r.random() < 0.5:
            return self.pick([b"100", b"1000", b"86400", b"315360000"])
        return self.pick([b"100", b"1000", b"86400", b"315360000", b"0", b"-1", b"-100",
                          b"%d" % I64MAX, b"%d" % (I64MAX // 1000), b"%d" % (I64MAX // 1000 + 1),
                          b"%d" % (I64MAX // 1000 - 10**7), b"%d" % I64MIN,
                          b"%d" % (I64MIN // 1000), b"abc", b"1.5", b""])

    def rel_ms(self):
        if self.r.random() < 0.5:
            return self.pick([b"100000", b"1000000", b"86400000"])
        return self.pick([b"100000", b"1000000", b"86400000", b"0", b"-1", b"-100000",
                          b"%d" % I64MAX, b"%d" % (I64MAX - 10**6), b"%d" % (I64MAX - 10**13),
                          b"%d" % I64MIN, b"abc", b"1.5", b"07"])

    def abs_seconds(self):
        n = self.now_s
        return self.pick([b"%d" % (n + 1000), b"%d" % (n + 86400), b"%d" % (n - 1000), b"1",
                          b"0", b"-1", b"%d" % I64MAX, b"%d" % (I64MAX // 1000),
                          b"%d" % (I64MAX // 1000 + 1), b"%d" % I64MIN, b"abc"])

    def abs_ms(self):
        n = self.now_s * 1000
        return self.pick([b"%d" % (n + 1000000), b"%d" % (n + 86400000), b"%d" % (n - 1000000),
                          b"1", b"0", b"-1", b"%d" % I64MAX, b"%d" % I64MIN, b"abc"])

    def time_opt(self):
        opt = self.pick([b"EX", b"PX", b"EXAT", b"PXAT"])
        arg = {b"EX": self.rel_seconds, b"PX": self.rel_ms, b"EXAT": self.abs_seconds,
               b"PXAT": self.abs_ms}[opt]()
        return [self.case(opt), arg]

    def case(self, word):
        x = self.r.random()
        if x < 0.15:
            return word.lower()
        if x < 0.2:
            return bytes(c ^ 0x20 if self.r.random() < 0.5 and chr(c).isalpha() else c
                         for c in word)
        return word

    def keys(self, lo=1, hi=4):
        return [self.key() for _ in range(self.r.randint(lo, hi))]

    # One generator per command; each returns the argument list after the name.
    def g_ping(self):
        return self.pick([[], [self.value()]])

    def g_echo(self):
        return [self.value()]

    def g_select(self):
        return [self.pick([b"0", b"0", b"0", b"1", b"1", b"15", b"16", b"-1", b"abc", b"01"])]

    def g_get(self):
        return [self.key()]

    g_strlen = g_type = g_getdel = g_incr = g_decr = g_ttl = g_pttl = g_persist = g_get
    g_expiretime = g_pexpiretime = g_get

    def g_set(self):
        args = [self.key(), self.value()]
        n = self.pick([0, 0, 0, 1, 1, 1, 2, 3])
        for _ in range(n):
            x = self.r.random()
            if x < 0.55:
                opt = self.time_opt()
                if self.r.random() < 0.05:
                    opt = opt[:1]  # option without its value
                args += opt
            elif x < 0.75:
                args.append(self.case(b"KEEPTTL"))
            elif x < 0.85 and self.set_cas:
                args.append(self.case(self.pick([b"NX", b"XX", b"GET"])))
            elif x < 0.9:
                args.append(self.pick([b"FOO", b"EXX", b"", b"PERSIST"]))
        return args

    def g_setnx(self):
        return [self.key(), self.value()]

    g_getset = g_setnx

    def g_setex(self):
        return [self.key(), self.rel_seconds(), self.value()]

    def g_psetex(self):
        return [self.key(), self.rel_ms(), self.value()]

    def g_mset(self):
        args = []
        for _ in range(self.r.randint(1, 3)):
            args += [self.key(), self.value()]
        return args

    def g_mget(self):
        return self.keys()

    g_del = g_unlink = g_exists = g_touch = g_mget

    def g_incrby(self):
        return [self.key(), self.int_arg()]

    g_decrby = g_incrby

    def g_incrbyfloat(self):
        x = self.r.random()
        arg = self.pick(FLOATS) if x < 0.6 else self.pick(INTS) if x < 0.85 else self.pick(BAD_INTS)
        return [self.key(), arg]

    def expire_opts(self):
        if not self.expire_options or self.r.random() < 0.5:
            return []
        opts = [self.case(self.pick([b"NX", b"XX", b"GT", b"LT"]))]
        if self.r.random() < 0.25:
            opts.append(self.case(self.pick([b"NX", b"XX", b"GT", b"LT", b"FOO"])))
        return opts

    def g_expire(self):
        return [self.key(), self.rel_seconds()] + self.expire_opts()

    def g_pexpire(self):
        return [self.key(), self.rel_ms()] + self.expire_opts()

    def g_expireat(self):
        return [self.key(), self.abs_seconds()] + self.expire_opts()

    def g_pexpireat(self):
        return [self.key(), self.abs_ms()] + self.expire_opts()

    def g_append(self):
        return [self.key(), self.value()]

    def index(self):
        return self.pick([b"0", b"1", b"2", b"3", b"-1", b"-2", b"-3", b"-100", b"100", b"5",
                          b"%d" % I64MAX, b"%d" % I64MIN, b"abc", b"1.5", b""])

    def g_getrange(self):
        return [self.key(), self.index(), self.index()]

    def g_substr(self):
        return self.g_getrange()

    def g_setrange(self):
        off = self.pick([b"0", b"1", b"3", b"10", b"100", b"-1", b"abc", b"536870912",
                         b"%d" % I64MAX, b"%d" % (2**32)])
        return [self.key(), off, self.pick([self.value(), b""])]

    def g_getex(self):
        args = [self.key()]
        n = self.pick([0, 1, 1, 1, 2])
        for _ in range(n):
            if self.r.random() < 0.7:
                args += self.time_opt()
            else:
                args.append(self.case(self.pick([b"PERSIST", b"PERSIST", b"KEEPTTL", b"FOO"])))
        return args

    def g_time(self):
        return []

    g_dbsize = g_randomkey = g_time

    def g_keys(self):
        return [self.pick([b"*", b"k*", b"k?", b"[k]*", b"*0", b"\\*", b"bin*", b"", b"k[0-2]",
                           b"k[^0]", b"*\x00*", b"n?m", b"[", b"*[", b"k\\"])]

    def g_flushdb(self):
        return self.pick([[], [], [b"ASYNC"], [b"SYNC"], [b"sync"], [b"FOO"], [b"ASYNC", b"SYNC"]])

    g_flushall = g_flushdb

    def g_scan(self):
        # Only cursors that start a full iteration ("" parses as 0) or are refused: any other
        # cursor's answer depends on each server's hash table.
        args = [self.pick([b"0"] * 8 + [b"abc", b"18446744073709551616", b"", b" 0"])]
        for _ in range(self.pick([0, 0, 1, 1, 2, 3])):
            x = self.r.random()
            if x < 0.4:
                args += [self.case(b"MATCH"), self.g_keys()[0]]
            elif x < 0.75:
                args += [self.case(b"COUNT"), self.pick([b"1", b"2", b"10", b"1000", b"0", b"-1",
                                                          b"abc"])]
            elif x < 0.9:
                args += [self.case(b"TYPE"), self.pick([b"string", b"list", b"STRING", b"foo",
                                                         b"set"])]
            else:
                args.append(self.pick([b"MATCH", b"FOO", b"COUNT"]))
        return args

    # Sets. SPOP without a count and SRANDMEMBER choose at random: SPOP is only sent with
    # counts that take every member or none, and SRANDMEMBER's answers are compared by shape.
    def member(self):
        return self.pick(MEMBERS)

    def members(self, lo=1, hi=3):
        return [self.member() for _ in range(self.r.randint(lo, hi))]

    def g_sadd(self):
        return [self.key()] + self.members()

    g_srem = g_smismember = g_sadd

    def g_smembers(self):
        return [self.key()]

    g_scard = g_smembers

    def g_sismember(self):
        return [self.key(), self.member()]

    def g_srandmember(self):
        return [self.key()] + self.pick([[], [b"0"], [b"2"], [b"100"], [b"-3"], [b"abc"],
                                         [b"%d" % I64MIN]])

    def g_spop(self):
        return [self.key(), self.pick([b"0", b"100", b"1000", b"-1", b"abc"])]

    def g_smove(self):
        return [self.key(), self.key(), self.member()]

    def g_sunion(self):
        return self.keys(1, 3)

    g_sinter = g_sdiff = g_sunion

    def g_sunionstore(self):
        return [self.key()] + self.keys(1, 3)

    g_sinterstore = g_sdiffstore = g_sunionstore

    def g_sintercard(self):
        keys = self.keys(1, 3)
        n = self.pick([b"%d" % len(keys)] * 4 + [b"0", b"-1", b"abc", b"%d" % (len(keys) + 1)])
        args = [n] + keys
        if self.r.random() < 0.4:
            args += [self.case(b"LIMIT"), self.pick([b"0", b"1", b"2", b"-1", b"abc"])]
        return args

    def g_sscan(self):
        args = [self.key(), self.pick([b"0"] * 8 + [b"abc", b""])]
        for _ in range(self.pick([0, 0, 1, 2])):
            x = self.r.random()
            if x < 0.4:
                args += [self.case(b"MATCH"), self.pick([b"*", b"a*", b"?", b"[ab]", b"m*"])]
            elif x < 0.8:
                args += [self.case(b"COUNT"), self.pick([b"1", b"2", b"10", b"0", b"abc"])]
            else:
                args.append(self.pick([b"MATCH", b"FOO"]))
        return args

    # Hashes. HRANDFIELD's answers are compared by shape.
    def field(self):
        return self.pick(FIELDS)

    def g_hset(self):
        args = [self.key()]
        for _ in range(self.r.randint(1, 3)):
            args += [self.field(), self.value()]
        return args

    g_hmset = g_hset

    def g_hsetnx(self):
        return [self.key(), self.field(), self.value()]

    def g_hget(self):
        return [self.key(), self.field()]

    g_hexists = g_hstrlen = g_hget

    def g_hmget(self):
        return [self.key()] + [self.field() for _ in range(self.r.randint(1, 3))]

    g_hdel = g_hmget

    def g_hlen(self):
        return [self.key()]

    g_hgetall = g_hkeys = g_hvals = g_hlen

    def g_hincrby(self):
        return [self.key(), self.field(), self.int_arg()]

    def g_hincrbyfloat(self):
        x = self.r.random()
        arg = self.pick(FLOATS) if x < 0.6 else self.pick(INTS) if x < 0.85 else self.pick(BAD_INTS)
        return [self.key(), self.field(), arg]

    def g_hrandfield(self):
        return [self.key()] + self.pick([[], [b"0"], [b"2"], [b"100"], [b"-3"], [b"abc"],
                                         [b"2", b"WITHVALUES"], [b"-2", b"withvalues"],
                                         [b"1", b"FOO"], [b"%d" % I64MIN]])

    def g_hscan(self):
        args = [self.key(), self.pick([b"0"] * 8 + [b"abc", b""])]
        for _ in range(self.pick([0, 0, 1, 2])):
            x = self.r.random()
            if x < 0.4:
                args += [self.case(b"MATCH"), self.pick([b"*", b"f*", b"?", b"[fg]", b"l*"])]
            elif x < 0.8:
                args += [self.case(b"COUNT"), self.pick([b"1", b"2", b"10", b"0", b"abc"])]
            else:
                args.append(self.pick([b"MATCH", b"FOO"]))
        return args

    # A transaction of one key (Concord's rule): an optional WATCH of the key (and
    # sometimes a write of it by the same connection in between, which must abort EXEC),
    # MULTI, commands of that key (now and then one with a wrong arity or an unknown name,
    # which must end in EXECABORT), then EXEC or DISCARD. Its replies are compared as one.
    TXN = ("get", "set", "setnx", "getset", "incr", "incrby", "decr", "append", "strlen",
           "del", "exists", "type", "sadd", "srem", "scard", "sismember", "hset", "hget",
           "hdel", "hlen", "hexists", "hincrby", "getdel", "ping")

    def txn(self):
        key = self.key()
        steps = []
        watch = self.r.random() < 0.5
        if watch:
            steps.append([b"WATCH", key])
            if self.r.random() < 0.3:
                steps.append([b"SET", key, self.value()])
        steps.append([b"MULTI"])
        for _ in range(self.r.randint(0, 4)):
            name = self.pick(self.TXN)
            args = getattr(self, "g_" + name, None)
            args = args() if args else [self.key()]
            if name in ("del", "exists"):
                args = [key] * len(args)
            elif name != "ping" and args:
                args[0] = key
            if name == "set":
                args = args[:2]
            x = self.r.random()
            if x < 0.03:
                steps.append([b"NOSUCHCMD", key])
            elif x < 0.06:
                steps.append([name.upper().encode()])
            else:
                steps.append([name.upper().encode()] + args)
        steps.append([self.pick([b"EXEC"] * 6 + [b"DISCARD"])])
        return ("txn", steps)

    def command(self):
        name = self.pick(self.commands)
        if name == "txn":
            return self.txn()
        gen = getattr(self, "g_" + name, None)
        args = gen() if gen else self.keys(0, 2)
        word = self.case(name.upper().encode())
        # Wrong arity now and then: the last argument dropped (not any: a value moved into
        # a key's place would write keys outside the keyspace) or one added.
        x = self.r.random()
        if x < 0.04 and args and name != "spop":
            # (SPOP without its count pops a random member: the two servers would differ.)
            args.pop()
        elif x < 0.07 and (self.expire_options or "expire" not in name):
            # (An extra argument to EXPIRE and friends is an option in Redis 7.)
            args.append(self.value())
        cmd = [word] + args
        if name == "scan" and args and args[0] in (b"0", b""):
            return ("scan-full", cmd)
        if name in ("sscan", "hscan") and len(args) > 1 and args[1] in (b"0", b""):
            return (name + "-full", cmd)
        return cmd


def cmd_name(cmd):
    if isinstance(cmd, tuple) and cmd[0] == "txn":
        return "txn"
    if isinstance(cmd, tuple):
        return cmd[0][:-len("-full")]
    return cmd[0].decode("latin-1").lower()


# ---------------------------------------------------------------------------------------
# Running and comparing.
# ---------------------------------------------------------------------------------------


class Side:
    """One server: a connection that is reopened when the server closes it."""

    def __init__(self, name, port, timeout):
        self.name, self.port, self.timeout = name, port, timeout
        self.conn = None
        self.db = 0
        self.dbs = {0}

    def connect(self):
        if self.conn:
            self.conn.close()
        self.conn = Conn(self.port, self.timeout)
        self.db = 0

    def call(self, args):
        if self.conn is None:
            self.connect()
        try:
            reply = self.conn.call(args)
        except Closed as e:
            self.conn.close()
            self.conn = None
            return ("closed", str(e))
        except Timeout:
            self.conn.close()
            self.conn = None
            return ("timeout",)
        if args and args[0].lower() == b"select" and reply == ("+", b"OK") and len(args) == 2:
            self.db = int(args[1])
            self.dbs.add(self.db)
        return reply

    def run(self, cmd):
        if isinstance(cmd, tuple) and cmd[0] == "txn":
            return ("txn", tuple(self.call(c) for c in cmd[1]))
        if isinstance(cmd, tuple):
            # SCAN's cursor is its first argument, SSCAN's its second (after the key).
            return self.scan_full(cmd[1], 1 if cmd[0] == "scan-full" else 2)
        return self.call(cmd)

    def scan_full(self, cmd, at):
        keys, cursor = set(), cmd[at]
        for _ in range(10000):
            reply = self.call(cmd[:at] + [cursor] + cmd[at + 1:])
            if reply[0] != "*" or reply[1] is None or len(reply[1]) != 2:
                return reply
            (ct, cursor), (lt, items) = reply[1]
            if ct != "$" or lt != "*":
                return reply
            keys.update(i[1] for i in items)
            if cursor == b"0":
                return ("keyset", frozenset(keys))
        return ("-", b"(redis-diff) SCAN did not end after 10000 calls")


def is_digits(b):
    return isinstance(b, bytes) and b.isdigit()


def same(name, a, b, tol_s):
    """Whether replies a (Redis) and b (Concord) to command `name` agree."""
    if a == b:
        return True
    if name in ("ttl", "pttl", "expiretime", "pexpiretime") and a[0] == b[0] == ":":
        x, y = a[1], b[1]
        if x < 0 or y < 0:
            return x == y
        tol = tol_s * 1000 if name in ("pttl", "pexpiretime") else tol_s
        return abs(x - y) <= tol
    if name == "dbsize" and a[0] == b[0] == ":":
        # Redis counts keys that expired but were not reclaimed yet; Concord does not.
        return 0 <= b[1] <= a[1]
    if name == "randomkey" and a[0] == b[0] == "$":
        if a[1] is None or b[1] is None:
            return a[1] is None and b[1] is None
        return a[1] in KEYS and b[1] in KEYS
    unordered = ("keys", "smembers", "sunion", "sinter", "sdiff", "spop", "hkeys", "hvals")
    if name == "hgetall" and a[0] == b[0] == "*" and a[1] is not None and b[1] is not None:
        pairs = lambda r: sorted(zip(r[1][0::2], r[1][1::2]))
        return len(a[1]) == len(b[1]) and pairs(a) == pairs(b)
    if name in unordered and a[0] == b[0] == "*" and a[1] is not None and b[1] is not None:
        return sorted(a[1]) == sorted(b[1])
    if name in ("srandmember", "hrandfield") and a[0] == b[0]:
        # Random members: the same shape (nil or a member; as many members).
        if a[0] == "$":
            return (a[1] is None) == (b[1] is None)
        if a[0] == "*" and a[1] is not None and b[1] is not None:
            return len(a[1]) == len(b[1])
    if name == "time" and a[0] == b[0] == "*" and a[1] and b[1]:
        if len(a[1]) != 2 or len(b[1]) != 2:
            return False
        if not all(x[0] == "$" and is_digits(x[1]) for x in a[1] + b[1]):
            return False
        return abs(int(a[1][0][1]) - int(b[1][0][1])) <= 5 and 0 <= int(b[1][1][1]) < 10**6
    return False


class Runner:
    def same_deadline(self, cmd, a, b):
        """An EXPIRE-family GT or LT whose 0 and 1 differ only because the new deadline fell
        in the same millisecond as the old one on one server and not on the other (each
        reads its own clock): accepted when the key's deadlines now agree within the TTL
        tolerance on both."""
        if cmd_name(cmd) not in ("expire", "pexpire", "expireat", "pexpireat"):
            return False
        if not any(x.upper() in (b"GT", b"LT") for x in cmd[3:]):
            return False
        if {a, b} != {(":", 0), (":", 1)}:
            return False
        probe = [b"PEXPIRETIME", cmd[1]]
        x, y = self.redis.run(probe), self.concord.run(probe)
        return x[0] == y[0] == ":" and abs(x[1] - y[1]) <= self.args.ttl_tolerance * 1000

    def __init__(self, args, redis_port, concord_port):
        self.args = args
        self.redis = Side("redis", redis_port, args.timeout)
        self.concord = Side("concord", concord_port, args.timeout)

    def reset(self):
        for side in (self.redis, self.concord):
            if side.conn is None:
                side.connect()
        r = self.redis.call([b"FLUSHALL"])
        if r != ("+", b"OK"):
            raise RuntimeError("FLUSHALL on redis answered %s" % fmt_reply(r))
        self.redis.call([b"SELECT", b"0"])
        self.redis.dbs = {0}
        mode = self.args.concord_reset
        c = self.concord
        # Every database the sequence may select, not only those it did: a run before this
        # one (another invocation, against a running server) may have left keys there.
        dbs = sorted(c.dbs | ({1, 15} if "select" in self.args.commands else set()))
        if mode == "flushall":
            r = c.call([b"FLUSHALL"])
            if r != ("+", b"OK"):
                raise RuntimeError("FLUSHALL on concord answered %s" % fmt_reply(r))
        elif mode in ("del", "flushdb"):
            for db in dbs:
                c.call([b"SELECT", b"%d" % db])
                # DEL alone leaves an expired key's state behind (DEL of a key that reads
                # as absent writes nothing, and SET KEEPTTL would revive its deadline):
                # MSET first writes a fresh value without an expiry.
                steps = [[b"FLUSHDB"]] if mode == "flushdb" else [
                    [b"MSET"] + [x for k in KEYS for x in (k, b"reset")], [b"DEL"] + KEYS]
                for step in steps:
                    r = c.call(step)
                    if r[0] == "-" or r[0] in ("closed", "timeout"):
                        raise RuntimeError("resetting concord db %d: %s" % (db, fmt_reply(r)))
        c.call([b"SELECT", b"0"])
        c.dbs = {0}

    def replay(self, cmds, tol):
        """Runs cmds from an empty keyspace; returns the two replies to the last one."""
        self.reset()
        a = b = None
        for cmd in cmds:
            a, b = self.redis.run(cmd), self.concord.run(cmd)
        return a, b

    def minimize(self, cmds, sig):
        """Greedy delta debugging: drops chunks of the commands before the last one while
        the last one still diverges the same way. Bounded number of replays."""
        tol = self.args.ttl_tolerance
        prefix, last = list(cmds[:-1]), cmds[-1]
        budget = self.args.minimize_budget
        chunk = max(1, len(prefix) // 2)
        while prefix and budget > 0:
            i, removed = 0, False
            while i < len(prefix) and budget > 0:
                trial = prefix[:i] + prefix[i + chunk:]
                budget -= 1
                a, b = self.replay(trial + [last], tol)
                if not same(cmd_name(last), a, b, tol) and (kind(a), kind(b)) == sig:
                    prefix, removed = trial, True
                else:
                    i += chunk
            if chunk > 1:
                chunk //= 2
            elif not removed:
                break
        a, b = self.replay(prefix + [last], tol)
        return prefix + [last], a, b

    def fuzz(self):
        args = self.args
        names = {}
        compared = 0
        per_cmd = {}
        kinds = {}
        failed_seeds = []
        now_s = int(time.time())
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            rng = random.Random(seed)
            gen = Gen(rng, args.commands, now_s)
            self.reset()
            sent = []
            for n in range(args.ops):
                cmd = gen.command()
                sent.append(cmd)
                name = cmd_name(cmd)
                a = self.redis.run(cmd)
                b = self.concord.run(cmd)
                compared += 1
                names[name] = names.get(name, 0) + 1
                if same(name, a, b, args.ttl_tolerance):
                    continue
                if self.same_deadline(cmd, a, b):
                    continue
                per_cmd[name] = per_cmd.get(name, 0) + 1
                sig = (kind(a), kind(b))
                if not failed_seeds or failed_seeds[-1] != seed:
                    failed_seeds.append(seed)
                key = (name,) + sig
                new = key not in kinds
                print("=" * 78)
                print("DIVERGENCE seed %d, command %d of %d: %s%s"
                      % (seed, n + 1, args.ops, fmt_cmd(cmd), "" if new else "   (a kind seen before)"))
                print("  redis:   %s" % fmt_reply(a))
                print("  concord: %s" % fmt_reply(b))
                if args.print_sequence:
                    print("  sequence (redis-cli syntax, from an empty keyspace):")
                    for i, c in enumerate(sent):
                        print("    %4d  %s" % (i + 1, fmt_cmd(c)))
                repro = None
                if args.minimize and new:
                    small, ma, mb = self.minimize(sent, sig)
                    repro = (small, ma, mb)
                    print("  minimized (%d commands):" % len(small))
                    for c in small:
                        print("    %s" % fmt_cmd(c))
                    print("    -> redis:   %s" % fmt_reply(ma))
                    print("    -> concord: %s" % fmt_reply(mb))
                if new:
                    kinds[key] = (seed, cmd, a, b, repro)
                sys.stdout.flush()
                if not args.keep_going:
                    break
                # Start over from an empty keyspace with the rest of this seed's commands.
                self.reset()
                sent = []
        print("=" * 78)
        print("SUMMARY: %d seeds x up to %d commands; %d commands compared"
              % (args.seeds, args.ops, compared))
        print("  commands sent: " + ", ".join("%s %d" % kv for kv in sorted(names.items())))
        if not per_cmd:
            print("  no divergence")
            return 0
        print("  divergences by command%s: " % ("" if args.keep_going else " (first per seed)")
              + ", ".join("%s %d" % kv for kv in sorted(per_cmd.items())))
        print("  seeds with a divergence: " + " ".join(map(str, failed_seeds)))
        print("  distinct kinds (command | redis | concord | first seed: command):")
        for (name, ka, kb), (seed, cmd, a, b, repro) in sorted(kinds.items(),
                                                                key=lambda kv: kv[0]):
            print("   - %s | %s | %s | seed %d: %s -> redis %s, concord %s"
                  % (name, ka, kb, seed, fmt_cmd(cmd), fmt_reply(a), fmt_reply(b)))
            if repro:
                print("       minimized: %s -> redis %s, concord %s"
                      % ("; ".join(fmt_cmd(c) for c in repro[0]), fmt_reply(repro[1]),
                         fmt_reply(repro[2])))
        return 1


# ---------------------------------------------------------------------------------------
# Malformed input.
# ---------------------------------------------------------------------------------------

MALFORMED = [
    ("multibulk count not a number", b"*abc\r\n"),
    ("multibulk count with trailing junk", b"*1x\r\n$4\r\nPING\r\n"),
    ("multibulk count above INT_MAX", b"*3000000000\r\n"),
    ("huge multibulk count (waits for the arguments)", b"*2000000000\r\n$4\r\nPING\r\n"),
    ("oversize multibulk count line (no CR in 70000 bytes)", b"*" + b"1" * 70000),
    ("negative multibulk count (ignored), then PING", b"*-5\r\n*1\r\n$4\r\nPING\r\n"),
    ("zero multibulk count (ignored), then PING", b"*0\r\n*1\r\n$4\r\nPING\r\n"),
    ("bulk length not a number", b"*1\r\n$abc\r\n"),
    ("bulk length negative", b"*1\r\n$-1\r\n"),
    ("bulk length -5", b"*2\r\n$4\r\nECHO\r\n$-5\r\n"),
    ("bulk length above proto-max-bulk-len", b"*2\r\n$4\r\nECHO\r\n$536870913\r\n"),
    ("bulk length at proto-max-bulk-len (waits)", b"*2\r\n$4\r\nECHO\r\n$536870912\r\n"),
    ("bulk length with plus sign", b"*1\r\n$+4\r\nPING\r\n"),
    ("oversize bulk length line", b"*1\r\n$" + b"9" * 70000),
    ("missing $ before the bulk", b"*1\r\nPING\r\n"),
    ("empty line instead of $", b"*1\r\n\r\n"),
    ("bulk not followed by CRLF (Redis skips 2 bytes)", b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n"),
    ("empty command name", b"*1\r\n$0\r\n\r\n"),
    ("inline unbalanced double quote", b'SET k "abc\r\n'),
    ("inline unbalanced single quote", b"ECHO 'abc\r\n"),
    ("inline closing quote followed by a letter", b'ECHO "foo"bar\r\n'),
    ("inline quoted escapes", b'ECHO "a\\x41\\n\\t\\"b" \'c\\\'d\'\r\n'),
    ("inline bad \\x escape", b'ECHO "\\xZZ"\r\n'),
    ("inline empty line then PING", b"\r\n\n   \r\nPING\r\n"),
    ("inline LF only", b"PING\nECHO hi\n"),
    ("inline with NUL byte", b"ECHO a\x00b\r\nPING\r\n"),
    ("inline oversize (70000 bytes, no newline)", b"ECHO " + b"a" * 70000),
    ("inline unknown command", b"FOO bar baz\r\n"),
    ("pipelined: good, bad count, good", b"*1\r\n$4\r\nPING\r\n*x\r\n*1\r\n$4\r\nPING\r\n"),
    ("RESP3 type byte as a request", b"%1\r\n+a\r\n+b\r\n"),
    ("multibulk with $ line missing LF", b"*1\r\n$4\rPING\r\n"),
    ("NUL byte in the multibulk count line", b"*1\x00\r\n$4\r\nPING\r\n"),
    ("bulk line at top level (an inline command)", b"$4\r\nPING\r\n"),
    ("leading space before * (an inline command)", b" *1\r\n"),
    ("inline tab and vertical tab separators", b"ECHO\tfoo\r\nECHO a\x0bb\r\nECHO \x0bx\r\n"),
    ("inline quoted empty strings", b'ECHO ""\r\nECHO \'\'\r\n'),
    ("inline truncated \\x escape", b'ECHO "\\x4"\r\n'),
    ("100000-byte argument", b"*2\r\n$4\r\nECHO\r\n$100000\r\n" + b"z" * 100000 + b"\r\n"),
    ("incomplete request (no reply expected)", b"*2\r\n$4\r\nECHO\r\n$5\r\nab"),
    ("lower-case inline command with CRLF in quotes", b'echo "a\\r\\nb"\r\n'),
]


def malformed(redis_port, concord_port):
    diverged = 0
    for title, data in MALFORMED:
        results = []
        for port in (redis_port, concord_port):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                s.sendall(data)
            except OSError:
                pass
            results.append(read_all(s))
            s.close()
        (ra, rc), (ca, cc) = results
        ok = ra == ca and rc == cc
        diverged += not ok
        state = lambda c: "closed" if c else "open"
        print("%-4s %s: sent %s" % ("ok" if ok else "DIFF", title, short(data, 60)))
        if not ok:
            print("       redis:   %s %s" % (short(ra, 200), state(rc)))
            print("       concord: %s %s" % (short(ca, 200), state(cc)))
        else:
            print("       both:    %s %s" % (short(ra, 200), state(rc)))
    print("SUMMARY: %d malformed inputs, %d divergences" % (len(MALFORMED), diverged))
    return 1 if diverged else 0


# ---------------------------------------------------------------------------------------
# Servers.
# ---------------------------------------------------------------------------------------

PROCS = []
WORKDIR = [None]


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in PROCS:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    PROCS.clear()
    if WORKDIR[0] and not os.environ.get("KEEP"):
        shutil.rmtree(WORKDIR[0], ignore_errors=True)
    elif WORKDIR[0]:
        print("kept %s" % WORKDIR[0], file=sys.stderr)


def on_signal(signum, _frame):
    sys.exit(128 + signum)


def wait_ping(port, what, proc, log):
    for _ in range(300):
        if proc is not None and proc.poll() is not None:
            break
        try:
            c = Conn(port, 1)
            ok = c.call([b"PING"]) == ("+", b"PONG")
            c.close()
            if ok:
                return
        except (OSError, Closed, Timeout, ValueError):
            pass
        time.sleep(0.1)
    tail = ""
    if log and os.path.exists(log):
        with open(log, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
    sys.exit("error: %s on port %d did not answer PING; log tail:\n%s" % (what, port, tail))


def start_redis(port, work):
    if not shutil.which("redis-server"):
        subprocess.run(["bash", "-c", 'source "$1/scripts/lib/apt.sh"; apt_install redis-server redis-server',
                        "_", ROOT], check=True)
    log = os.path.join(work, "redis.log")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--daemonize", "no",
                          "--dir", work], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    PROCS.append(p)
    wait_ping(port, "redis-server", p, log)


def start_concord(binary, base, work):
    c, peer, r = base + 1, base + 2, base + 3
    log = os.path.join(work, "concord.log")
    url = lambda p: "http://127.0.0.1:%d" % p
    p = subprocess.Popen([binary, "server", "--name", "d1", "--data-dir", os.path.join(work, "d1"),
                          "--listen-client-urls", url(c), "--advertise-client-urls", url(c),
                          "--listen-peer-urls", url(peer), "--initial-advertise-peer-urls", url(peer),
                          "--initial-cluster", "d1=" + url(peer), "--initial-cluster-state", "new",
                          "--listen-redis-urls", "redis://127.0.0.1:%d" % r],
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    PROCS.append(p)
    for _ in range(300):
        if p.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url(c) + "/health", timeout=1) as resp:
                if b"true" in resp.read():
                    break
        except OSError:
            pass
        time.sleep(0.1)
    wait_ping(r, "concord", p, log)
    return r


# Every command Concord answers with Redis's semantics, but INCRBYFLOAT: Redis computes
# it in 80-bit long double and prints 17 decimals (100000 + 0.1 = 100000.10000000000000142),
# Concord in 64-bit floats, shortest form (100000.1); docs/ap.md lists the difference.
DEFAULT_COMMANDS = ("ping,echo,select,get,set,mget,mset,del,unlink,exists,incr,decr,incrby,decrby,"
                    "expire,pexpire,expireat,pexpireat,persist,ttl,pttl,setex,psetex,append,"
                    "strlen,getrange,substr,setrange,getdel,getex,type,touch,expiretime,pexpiretime,"
                    "dbsize,keys,scan,randomkey,time,expire-options,sadd,srem,smembers,scard,"
                    "sismember,smismember,srandmember,spop,smove,sunion,sinter,sdiff,"
                    "sunionstore,sinterstore,sdiffstore,sintercard,sscan,hset,hmset,hsetnx,hget,"
                    "hmget,hdel,hexists,hlen,hgetall,hkeys,hvals,hstrlen,hincrby,hrandfield,"
                    "hscan,set-cas,setnx,getset,txn")
KNOWN = set(DEFAULT_COMMANDS.split(",")) | set(
    "setex psetex append strlen getrange substr setrange getdel getex incrbyfloat type touch "
    "expiretime pexpiretime time dbsize keys scan flushdb flushall randomkey "
    "expire-options set-cas txn".split())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--seed-start", type=int, default=1)
    ap.add_argument("--ops", type=int, default=250, help="commands per seed")
    ap.add_argument("--commands", default=DEFAULT_COMMANDS,
                    help="comma-separated command names; +a,b adds to the default list")
    ap.add_argument("--concord-reset", choices=["del", "flushdb", "flushall", "none"],
                    default=os.environ.get("REDIS_DIFF_CONCORD_RESET", "flushall"),
                    help="how Concord is emptied before each seed (default flushall)")
    ap.add_argument("--malformed", action="store_true", help="send malformed RESP instead")
    ap.add_argument("--minimize", action="store_true",
                    help="shrink the first divergence of each kind to a short reproducer")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a divergence, empty the keyspace and go on with the seed")
    ap.add_argument("--minimize-budget", type=int, default=150, help="replays per shrink")
    ap.add_argument("--no-sequence", dest="print_sequence", action="store_false",
                    help="do not print the whole sequence at a divergence")
    ap.add_argument("--ttl-tolerance", type=int, default=2, help="seconds")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per reply")
    ap.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_DIFF_REDIS_PORT", 0)),
                    help="use a running Redis (env REDIS_DIFF_REDIS_PORT)")
    ap.add_argument("--concord-port", type=int,
                    default=int(os.environ.get("REDIS_DIFF_CONCORD_PORT", 0)),
                    help="use a running Concord Redis port (env REDIS_DIFF_CONCORD_PORT)")
    ap.add_argument("--concord-bin", default=os.environ.get("CONCORD",
                                                            os.path.join(ROOT, "target/release/concord")))
    ap.add_argument("--base-port", type=int, default=23700)
    args = ap.parse_args()

    cmds = args.commands
    if cmds.startswith("+"):
        cmds = DEFAULT_COMMANDS + "," + cmds[1:]
    args.commands = [c.strip().lstrip("+").lower() for c in cmds.split(",") if c.strip()]
    unknown = [c for c in args.commands if c not in KNOWN]
    if unknown:
        print("note: no generator for %s; they get 0-2 key arguments" % ",".join(unknown),
              file=sys.stderr)
    if not [c for c in args.commands if c not in ("expire-options", "set-cas")]:
        ap.error("--commands names no command")

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    WORKDIR[0] = tempfile.mkdtemp(prefix="redis-diff.")

    redis_port = args.redis_port
    if not redis_port:
        redis_port = args.base_port
        start_redis(redis_port, WORKDIR[0])
    else:
        wait_ping(redis_port, "redis", None, None)
    concord_port = args.concord_port
    if not concord_port:
        if not os.access(args.concord_bin, os.X_OK):
            sys.exit("error: no concord binary at %s (set CONCORD or --concord-bin; this script "
                     "does not build)" % args.concord_bin)
        concord_port = start_concord(args.concord_bin, args.base_port, WORKDIR[0])
    else:
        wait_ping(concord_port, "concord", None, None)

    if args.malformed:
        return malformed(redis_port, concord_port)
    print("redis on %d, concord on %d; commands: %s" % (redis_port, concord_port,
                                                        ",".join(args.commands)))
    try:
        return Runner(args, redis_port, concord_port).fuzz()
    except (RuntimeError, OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
