#!/usr/bin/env python3
"""Which b-trees the embedded store's group commits write: counts the pages in a SQLite WAL,
named by table or index, per committed transaction.

Usage: scripts/wal_pages.py <dir>/sagaflow.db
Kill the engine with SIGKILL first, so the WAL is left as it was (a clean stop checkpoints it).
Needs the `sqlite3` shell with the `dbstat` table (Debian's has it); it opens a copy of the file.
"""
import collections
import shutil
import struct
import subprocess
import sys
import tempfile


def main(db):
    with open(db + "-wal", "rb") as wal:
        data = wal.read()
    _, _, page_size, _, salt1, salt2, _, _ = struct.unpack(">IIIIIIII", data[:32])
    pages, commits, at = [], 0, 32
    while at + 24 + page_size <= len(data):
        page, size_after, s1, s2, _, _ = struct.unpack(">IIIIII", data[at : at + 24])
        if (s1, s2) != (salt1, salt2):
            break  # frames of an earlier generation of the WAL
        pages.append(page)
        commits += size_after != 0
        at += 24 + page_size
    with tempfile.TemporaryDirectory() as tmp:
        copy = f"{tmp}/copy.db"
        shutil.copy(db, copy)
        shutil.copy(db + "-wal", copy + "-wal")
        rows = subprocess.run(
            ["sqlite3", copy, "SELECT pageno, name FROM dbstat"], capture_output=True, text=True, check=True
        ).stdout
    names = dict(line.split("|", 1) for line in rows.splitlines() if "|" in line)
    print(f"page size {page_size}, {len(pages)} frames, {commits} transactions")
    for name, n in collections.Counter(names.get(str(p), "?") for p in pages).most_common():
        print(f"{n:7d} {n / max(commits, 1):6.2f} per transaction  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
