"""The spine end to end: the official openai SDK against the gateway against a fake upstream."""

from __future__ import annotations

import openai

from tests.conftest import openai_provider


def test_non_streaming_and_streaming(live_gateway, fake_openai):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, ["sk-up-1"])}})
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.key, max_retries=0)
    answer = client.chat.completions.create(
        model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    assert answer.choices[0].message.content == "Echo: hello there"
    chunks = list(
        client.chat.completions.create(
            model="up/gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
