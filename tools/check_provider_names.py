"""Fails when a provider name appears in code outside src/relaygate/providers/ (issue 4): adding a
provider must be one module plus its fixtures, with no `if provider == "..."` anywhere else.

It reads Python tokens: an identifier equal to a provider name, or a string literal that is a
provider name or starts with one followed by '/' or ':', is a hit. Prose in comments and docstrings
("the OpenAI format") is not code and is not flagged. A line may opt out with `# provider-name-ok`
(for documentation examples only)."""

from __future__ import annotations

import ast
import io
import pkgutil
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "relaygate"
PROVIDERS = SRC / "providers"


def provider_names() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(PROVIDERS)])
        if not m.name.startswith("_") and m.name not in {"base", "registry"}
    )


def hits(path: Path, names: list[str]) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    pattern = re.compile(rf"^({'|'.join(map(re.escape, names))})([/:].*)?$", re.IGNORECASE)
    found = []
    prev = ""
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        line = lines[tok.start[0] - 1] if tok.start[0] <= len(lines) else ""
        after_dot, prev = prev == ".", tok.string
        if "provider-name-ok" in line:
            continue
        if tok.type == tokenize.NAME and not after_dot and tok.string.lower() in names:
            found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: identifier '{tok.string}'")
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, str) and pattern.match(value.strip()):
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: string {tok.string}")
    return found


def main() -> int:
    names = provider_names()
    bad = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if PROVIDERS not in path.parents
        for hit in hits(path, names)
    ]
    for line in bad:
        print(line)
    if bad:
        print(
            f"{len(bad)} provider name(s) outside providers/: move that knowledge into the module"
        )
        return 1
    print(f"provider names: ok ({len(names)} providers, none named in code outside providers/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
