"""The OpenAI stream relay's cheap tests for usage and text (providers/_openai_compat.py) decide
exactly as the regexes they stand in front of, on every spelling an upstream may send."""

from __future__ import annotations

import itertools

from relaygate.providers._openai_compat import _CONTENT, _USAGE, _has_text, _maybe_usage

PIECES = [
    b'"content":"hi"',
    b'"content":""',
    b'"content": "hi"',
    b'"content" : ""',
    b'"content":null',
    b'"arguments":"{\\"a\\""',
    b'"arguments":""',
    b'"arguments" :"x"',
    b'"text":"\\"content\\":\\"x"',
    b'"usage":null',
    b'"usage":{"prompt_tokens":1}',
    b'"usage" : {}',
    b'"usage": null',
    b'"role":"assistant"',
]


def test_the_prechecks_agree_with_the_regexes():
    for n in (1, 2, 3):
        for combo in itertools.permutations(PIECES, n):
            data = b'{"choices":[{"delta":{' + b",".join(combo) + b"}}]}"
            assert _has_text(data) == (_CONTENT.search(data) is not None), data
            if not _maybe_usage(data):
                assert _USAGE.search(data) is None, data
