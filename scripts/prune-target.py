#!/usr/bin/env python3
"""Keeps the shared build cache ($CARGO_TARGET_DIR) from filling the disk across sessions.

Every change to a test builds a new binary under a new hash and leaves the old one; the
incremental caches grow the same way. Once the cache is over the limit, this removes the
incremental caches (rebuilt as needed) and every test or build-script binary but the newest of
its name. What the next build needs is kept; nothing is removed below the limit.

Usage: scripts/prune-target.py [limit in GiB, default 20]
"""

import os
import re
import shutil
import sys
from collections import defaultdict


def size_of(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def main():
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/tandem/target")
    if not os.path.isdir(target):
        return
    before = size_of(target)
    if before < limit * 2**30:
        return
    freed = 0
    for profile in ("debug", "release"):
        incremental = os.path.join(target, profile, "incremental")
        if os.path.isdir(incremental):
            freed += size_of(incremental)
            shutil.rmtree(incremental, ignore_errors=True)
        deps = os.path.join(target, profile, "deps")
        if not os.path.isdir(deps):
            continue
        newest = defaultdict(list)
        for name in os.listdir(deps):
            path = os.path.join(deps, name)
            match = re.match(r"^(.*)-([0-9a-f]{16})$", name)
            if match and os.path.isfile(path) and os.access(path, os.X_OK):
                newest[match.group(1)].append((os.path.getmtime(path), path))
        for binaries in newest.values():
            binaries.sort()
            for _, path in binaries[:-1]:
                for stale in (path, path + ".d"):
                    if os.path.exists(stale):
                        freed += os.path.getsize(stale)
                        os.remove(stale)
    print(f"build cache {before / 2**30:.1f} GiB over {limit:.0f} GiB: freed {freed / 2**30:.1f} GiB "
          f"(incremental caches and superseded binaries) in {target}")


if __name__ == "__main__":
    main()
