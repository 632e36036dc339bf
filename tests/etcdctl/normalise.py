#!/usr/bin/env python3
"""Normalises a raw etcdctl session transcript (tests/etcdctl/session.sh) so that a run
against etcd and a run against Concord can be compared line by line.

    python3 tests/etcdctl/normalise.py < transcript.raw > transcript.txt

Only values that legitimately differ between two correct servers (or between two runs of
the same server) are rewritten; each rule says why. Everything else (keys, values,
revisions, versions of keys, counts, error messages, exit codes, line order) is kept.

Ids are not blanked but numbered in order of first appearance (<LEASE-1>, <LEASE-2>, ...)
or named after their member (<ID-m1>), so the transcript still shows which lease or member
each line refers to.
"""

import json
import re
import sys
from collections import OrderedDict

HEADER = re.compile(r"^### \[\d+\] ")

# --- lease ids --------------------------------------------------------------------------
# Lease ids are chosen by the server (etcd: member id bits + a counter), so they differ per
# run and per implementation. etcdctl prints them as %016x in `lease ...` messages, as %x
# in lock/election keys (concurrency recipes: "<name>/<lease hex>"), and in decimal in JSON.
LEASE_HEX = [
    re.compile(r"\blease ([0-9a-f]{16})\b"),
    re.compile(r"--lease=([0-9a-f]+)\b"),
    re.compile(r"\blease (?:revoke|timetolive|keep-alive(?: --once)?) ([0-9a-f]+)\b"),
    re.compile(r"\b(?:mylock|myelection)/([0-9a-f]+)\b"),
    re.compile(r"ETCD_LOCK_KEY=\S*/([0-9a-f]+)\b"),
]
LEASE_LIST_LINE = re.compile(r"^([0-9a-f]{16})$")  # `etcdctl lease list` body
LEASE_DEC = [
    re.compile(r'"(?:ID|id|lease)":(\d+)'),
    re.compile(r'"Lease" : (\d+)'),
]

# --- member ids ---------------------------------------------------------------------------
# Member ids are derived by each implementation from its own hash of URLs, token and time.
# They are mapped to the member's name, learnt from `member list`, so tables still show
# which endpoint is which member.
MEMBER_LINE = re.compile(r"^([0-9a-f]+), (?:started|unstarted), (\S*),")
# `member add` prints the new id, then ETCD_NAME="<name>" (the name is not in `member list`
# until the member starts).
MEMBER_ADDED = re.compile(r"^Member ([0-9a-f]+) added to cluster ([0-9a-f]+)$")
ETCD_NAME = re.compile(r'^ETCD_NAME="(.*)"$')
MEMBER_REFS = [
    re.compile(r"^Member ([0-9a-f]+) (?:added to|removed from) cluster"),
    re.compile(r"\bmember (?:promote|remove|update) ([0-9a-f]+)\b"),
]
# Cluster id in `member add/remove` output: hash chosen by the implementation.
CLUSTER_REF = re.compile(r"(cluster )[0-9a-f]+$")
# ETCD_INITIAL_CLUSTER lists the members in member-id order; ids differ, so sort it.
INITIAL_CLUSTER = re.compile(r'^ETCD_INITIAL_CLUSTER="(.*)"$')
MEMBER_ROW = re.compile(r"^\|\s*([0-9a-f]+)\s*\|\s*(?:started|unstarted)\s*\|\s*(\S+)\s*\|")

# --- response headers -----------------------------------------------------------------------
HEADER_FIELDS = [
    # Cluster id: hash chosen by the implementation.
    (re.compile(r'"cluster_id":\d+'), '"cluster_id":<CLUSTER>'),
    (re.compile(r'"ClusterID" : \d+'), '"ClusterID" : <CLUSTER>'),
    # Member id of whichever member answered: the client balances over all endpoints.
    (re.compile(r'"member_id":\d+'), '"member_id":<MEMBER>'),
    (re.compile(r'"MemberID" : \d+'), '"MemberID" : <MEMBER>'),
    # Raft term: depends on how many elections happened at startup.
    (re.compile(r'"raft_term":\d+'), '"raft_term":<TERM>'),
    (re.compile(r'"RaftTerm" : \d+'), '"RaftTerm" : <TERM>'),
]
OTHER = [
    # Which member leads is decided by the first election, so the ids in move-leader's
    # message are not tied to a member name.
    (re.compile(r"Leadership transferred from [0-9a-f]+ to [0-9a-f]+"),
     "Leadership transferred from <LEADER-ID> to <FOLLOWER-ID>"),
    # Round-trip times.
    (re.compile(r"took = [0-9.]+[a-zµ]*s\b"), "took = <DURATION>"),
    # Remaining lease TTL: wall-clock dependent (59 or 60 right after a keep-alive).
    (re.compile(r"remaining\(\d+s\)"), "remaining(<TTL>s)"),
    (re.compile(r'"ttl":\d+'), '"ttl":<TTL>'),
    # Keys attached to a lease: etcd lists them in Go map order (random), so sort them.
    (re.compile(r"attached keys\(\[([^]]*)\]\)"),
     lambda m: "attached keys([%s])" % " ".join(sorted(m.group(1).split()))),
    # An admin-only Maintenance call (defragment, hash, hashkv, snapshot) by a user without
    # the root role: etcd 3.4 and 3.5 return their internal error unmapped (gRPC Unknown,
    # "auth: permission denied"); etcd 3.6 maps it (togRPCError) to PermissionDenied
    # "etcdserver: permission denied", as every other service does. Written in 3.6's form.
    (re.compile(r"rpc error: code = Unknown desc = auth: permission denied"),
     "etcdserver: permission denied"),
]

# Table columns whose values legitimately differ, by header name.
TABLE_COLUMNS = {
    "VERSION": "<VERSION>",  # server version string
    "DB SIZE": "<SIZE>",  # storage engine file size
    "TOTAL SIZE": "<SIZE>",  # snapshot file size (page layout is implementation-defined)
    "TOTAL KEYS": "<N>",  # bbolt-internal key count (all buckets), not the KV key count
    "IS LEADER": "<BOOL>",  # which member wins the first election; a separate step counts leaders
    "RAFT TERM": "<TERM>",  # number of elections
    "RAFT INDEX": "<INDEX>",  # raft log length: depends on internal entries (conf changes, ...)
    "RAFT APPLIED INDEX": "<INDEX>",
}


def collect(lines):
    """First pass: lease ids in order of first appearance, member id -> name."""
    leases = OrderedDict()
    members = {}
    in_lease_list = False
    added = None
    for line in lines:
        if HEADER.match(line):
            in_lease_list = "lease list" in line
        hits = []
        for rx in LEASE_HEX:
            hits += [(m.start(1), int(m.group(1), 16)) for m in rx.finditer(line)]
        for rx in LEASE_DEC:
            hits += [(m.start(1), int(m.group(1))) for m in rx.finditer(line)]
        m = LEASE_LIST_LINE.match(line)
        if in_lease_list and m:
            hits.append((0, int(m.group(1), 16)))
        for _, lease in sorted(hits):
            if lease != 0:
                leases.setdefault(lease, "<LEASE-%d>" % (len(leases) + 1))
        m = MEMBER_LINE.match(line) or MEMBER_ROW.match(line)
        if m and m.group(2):
            members[int(m.group(1), 16)] = "<ID-%s>" % m.group(2)
        m = MEMBER_ADDED.match(line)
        if m:
            added = int(m.group(1), 16)
        m = ETCD_NAME.match(line)
        if m and added is not None:
            members.setdefault(added, "<ID-%s>" % m.group(1))
            added = None
    return leases, members


def lease_sub(leases, base):
    def sub(m):
        v = int(m.group(1), base)
        label = leases.get(v)
        if label is None:  # 0: "no lease"
            return m.group(0)
        return m.group(0)[: m.start(1) - m.start(0)] + label + m.group(0)[m.end(1) - m.start(0):]

    return sub


def member_label(members, text):
    try:
        return members.get(int(text, 16), "<ID-unknown>")
    except ValueError:
        return text


def norm_zap(line, to_leader):
    """Client-side zap log lines (JSON): drop the timestamp, the random client id in the
    gRPC target, and measured sizes/durations; keep level, caller, message and error.
    `to_leader`: the client was dialled to the leader's endpoint (move-leader), which
    depends on the election."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict) or "level" not in rec:
        return line
    rec.pop("ts", None)
    if "target" in rec:
        rec["target"] = re.sub(r"client-[0-9a-f-]+", "client-<UUID>", rec["target"])
        if to_leader:
            rec["target"] = re.sub(r"/[^/]+$", "/<LEADER-ENDPOINT>", rec["target"])
    for k in ("took", "size"):
        if k in rec:
            rec[k] = "<%s>" % k.upper()
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def norm_line(line, leases, members, step=""):
    """Normalises one line; `step` is the header of the step it belongs to."""
    in_lease_list = "lease list" in step
    if line.startswith("{") and '"level"' in line:
        line = norm_zap(line, "move-leader" in step)
    for rx in LEASE_HEX:
        line = rx.sub(lease_sub(leases, 16), line)
    for rx in LEASE_DEC:
        line = rx.sub(lease_sub(leases, 10), line)
    m = LEASE_LIST_LINE.match(line)
    if in_lease_list and m:
        line = leases.get(int(m.group(1), 16), line)
    m = MEMBER_LINE.match(line)
    if m:
        line = members.get(int(m.group(1), 16), "<ID-unknown>") + line[m.end(1):]
    for rx in MEMBER_REFS:
        m = rx.search(line)
        if m:
            label = members.get(int(m.group(1), 16), "<ID-unknown>")
            line = line[: m.start(1)] + label + line[m.end(1):]
    line = CLUSTER_REF.sub(r"\1<CLUSTER>", line)
    m = INITIAL_CLUSTER.match(line)
    if m:
        line = 'ETCD_INITIAL_CLUSTER="%s"' % ",".join(sorted(m.group(1).split(",")))
    for rx, rep in HEADER_FIELDS + OTHER:
        line = rx.sub(rep, line)
    return line


def norm_table(rows, members):
    """Re-renders an ASCII table without padding (widths follow the normalised values)
    and rewrites the columns listed in TABLE_COLUMNS."""
    out = []
    names = None
    hashes = OrderedDict()
    for row in rows:
        if row.startswith("+"):
            out.append("+---+")
            continue
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if names is None:
            names = cells
        else:
            for i, name in enumerate(names[: len(cells)]):
                if name in TABLE_COLUMNS:
                    cells[i] = TABLE_COLUMNS[name]
                elif name == "ID":
                    cells[i] = member_label(members, cells[i])
                elif name == "HASH":
                    # Hashes depend on the storage format; numbering them keeps "all
                    # members report the same hash" visible.
                    cells[i] = hashes.setdefault(cells[i], "<HASH-%d>" % (len(hashes) + 1))
        out.append("| " + " | ".join(cells) + " |")
    return out


def main():
    lines = sys.stdin.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    leases, members = collect(lines)
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not HEADER.match(line):
            out.append(norm_line(line, leases, members))
            i += 1
            continue
        # One step: header, stdin/sort markers, output, exit line.
        step = line
        out.append(norm_line(line, leases, members))
        i += 1
        sort = False
        while i < len(lines) and lines[i].startswith("### ") and not lines[i].startswith("### exit="):
            if lines[i] == "### sort":
                sort = True
            out.append(norm_line(lines[i], leases, members))
            i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("### exit="):
            body.append(lines[i])
            i += 1
        text, table = [], []
        for b in body:
            if b.startswith("+-") or b.startswith("|"):
                table.append(b)
            else:
                text.append(norm_line(b, leases, members, step))
        table = norm_table(table, members) if table else []
        if sort:
            text.sort()
            if len(table) > 3:  # border, names, border, rows..., border
                table = table[:3] + sorted(table[3:-1]) + table[-1:]
        out.extend(text + table if table and not body[0].startswith(("+", "|")) else table + text)
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
