"""HTTP header names live only in http/ (and in providers/ and transport/, which speak to
upstreams, and the CLI's own HTTP client): fails when a module elsewhere under src/relaygate
writes the name of a header relaygate reads from clients or adds to its answers. Run by
`make lint`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "relaygate"
ALLOWED = ("http", "providers", "transport", "cli")
NAMES = re.compile(
    # a whole string literal (the formatter writes them in double quotes): a name quoted inside
    # a message ('x-api-key') is prose, not a header being read or written
    r'"(x-relaygate-[a-z-]+|x-ratelimit-[a-z-]+|retry-after|x-should-retry|x-request-id|'
    r'authorization|x-api-key|admin-secret|x-goog-api-key|cache-control)"',
    re.IGNORECASE,
)


def main() -> int:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in NAMES.finditer(line):
                found.append(f"{path.relative_to(SRC.parent)}:{number}: {match.group(1)}")
    for line in found:
        print(f"header name outside http/: {line}")
    if not found:
        print("header names: ok (only in http/, providers/, transport/ and cli/)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
