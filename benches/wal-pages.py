#!/usr/bin/env python3
"""Which B-trees the frames of a SQLite WAL belong to: what a log's commits write.

    cp log.db /tmp/snap.db; cp log.db-wal /tmp/snap.db-wal   # while `loadgen ingest` runs
    python3 benches/wal-pages.py /tmp/snap.db

Reads the WAL's frame headers (page number, commit marker) up to the first frame of
another generation, then maps each page to its table or index with `dbstat` (read only,
on a copy: opening the original would checkpoint it). A copy taken while a commit is
being written holds part of it; take a few and keep the one with the most commits.
"""
import collections
import shutil
import sqlite3
import struct
import sys

db = sys.argv[1]
copy = db + ".pages"
for suffix in ["", "-wal"]:
    shutil.copy(db + suffix, copy + suffix)
data = open(copy + "-wal", "rb").read()
_, _, page_size, _, salt1, salt2, _, _ = struct.unpack(">IIIIIIII", data[:32])
frames, commits, off = [], 0, 32
while off + 24 + page_size <= len(data):
    page, size, s1, s2 = struct.unpack(">IIII", data[off : off + 16])
    if (s1, s2) != (salt1, salt2):
        break
    frames.append(page)
    commits += size != 0
    off += 24 + page_size
con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
owner = dict((page, name) for name, page in con.execute("SELECT name, pageno FROM dbstat"))
print(
    f"{len(frames)} frames in {commits} commits "
    f"({len(frames) / max(commits, 1):.0f} per commit), {len(set(frames))} distinct pages"
)
for name, n in collections.Counter(owner.get(p, "(free or other)") for p in frames).most_common():
    print(f"{n:8d} {100 * n / len(frames):5.1f} %  {name}")
