"""Print the pins that differ between two lock files: ``python diff_pins.py OLD NEW``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def pins(path: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(Path(path).read_text())}


def main(old_path: str, new_path: str) -> int:
    old, new = pins(old_path), pins(new_path)
    rows = [
        (name, old.get(name, "-"), new.get(name, "-"))
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]
    for name, before, after in rows:
        print(f"  {name:32} {before:>16} -> {after}")
    print(f"{len(rows)} of {len(new)} pins changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
