"""The dashboard (SPEC §7, §9) in headless Chromium (Debian's, driven by Playwright): after real
traffic with errors it shows the right numbers and key states, refreshes by itself, shows no
secret and no client to anyone without the admin secret, and asks nothing from the internet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from relaygate.keys.pool import key_id
from relaygate.web.dashboard import percentile
from tests.conftest import ADMIN_SECRET, CLIENT_KEY, openai_provider
from tests.fakes.openai_upstream import Reply

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GOOD = "sk-canary-good-upstream-0001-abcdefgh"
BAD = "sk-canary-bad-upstream-0002-abcdefgh"
DOWN = "sk-canary-down-upstream-0003-abcdefgh"
CLIENT_NAME = "acme-canary-client"
SECRETS = (GOOD, BAD, DOWN, CLIENT_KEY, ADMIN_SECRET)
MSG = [{"role": "user", "content": "dashboard traffic"}]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser test (make browser)")
        pytest.skip(f"{CHROMIUM} is not installed (make browser)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        yield chromium
        chromium.close()


def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A page at `url`; the returned list collects its script errors and console errors."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(url)
    return page, problems


def chat(gw, model: str, **extra) -> httpx.Response:
    return httpx.post(
        gw.v1 + "/chat/completions",
        headers=gw.headers(),
        json={"model": model, "messages": MSG, **extra},
        timeout=15,
    )


def drive_traffic(live_gateway, fake):
    """6 answered requests (one streamed) through a pool whose second key answers 500, 2 failed
    requests through a provider whose only key answers 500, and 1 request for an unknown model."""
    fake.script(BAD, Reply(status=500))
    fake.script(DOWN, Reply(status=500))
    gw = live_gateway(
        {
            "admin_secret": ADMIN_SECRET,
            "clients": [{"name": CLIENT_NAME, "key": CLIENT_KEY}],
            "retries": {"max_attempts": 2, "backoff_base_s": 0.01},
            "providers": {
                "up": openai_provider(fake, [GOOD, BAD], key_strategy="round_robin"),
                "down": openai_provider(fake, [DOWN]),
            },
            "pricing": {"up/gpt-4o-mini": {"input_per_mtok": 1000, "output_per_mtok": 2000}},
        }
    )
    answered = [chat(gw, "up/gpt-4o-mini").status_code for _ in range(5)]
    streamed = chat(gw, "up/gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    assert answered == [200] * 5 and streamed.status_code == 200
    assert "data: [DONE]" in streamed.text
    failed = [chat(gw, "down/gpt-4o-mini").status_code for _ in range(2)]
    assert all(status >= 500 for status in failed), failed
    assert chat(gw, "nope/no-such-model").status_code == 404
    assert len(fake.calls(BAD)) >= 1  # the bad key was really tried
    return gw


def bar_total(page: Page, chart: str, series: str | None = None) -> int:
    selector = f"#{chart} rect.bar" + (f'[data-series="{series}"]' if series else "")
    values = page.eval_on_selector_all(selector, "rects => rects.map(r => r.dataset.value)")
    return sum(int(v) for v in values)


def assert_nothing_secret(text: str, *, client_name_allowed: bool = False) -> None:
    for secret in SECRETS:
        assert secret not in text
    if not client_name_allowed:
        assert CLIENT_NAME not in text


def test_dashboard_shows_the_traffic_and_hides_clients_until_the_admin_secret(
    browser, live_gateway, fake_openai, tmp_path: Path
):
    gw = drive_traffic(live_gateway, fake_openai)
    public = httpx.get(gw.base + "/status.json", timeout=10)
    assert public.status_code == 200
    assert_nothing_secret(public.text)
    data = public.json()
    assert data["today"]["requests"] == 8 and data["today"]["errors"] == 2
    assert data["since_start"]["refusals"] == {"model_not_found": 1}

    page, problems = open_page(browser, gw.base + "/?refresh=1")
    expect(page.locator("#kpi-requests .value")).to_have_text("8")
    expect(page.locator("#kpi-errors .value")).to_have_text("2")
    expect(page.locator("#kpi-errors .sub")).to_have_text("25.0% of requests")
    assert page.locator("#kpi-spend .value").inner_text() != "$0"
    # the charts carry the same numbers
    assert bar_total(page, "chart-minutes") == 8
    assert bar_total(page, "chart-minutes", "errors") == 2
    assert bar_total(page, "chart-days") == 8
    assert bar_total(page, "chart-days", "errors") == 2
    assert page.locator("#chart-latency path").count() == 2
    expect(page.locator("#spend-model")).to_contain_text("gpt-4o-mini")
    expect(page.locator("#spend-provider")).to_contain_text("down")
    expect(page.locator("#errors-table")).to_contain_text("down")
    expect(page.locator("#since-start")).to_contain_text("refused: model_not_found1")

    # every key with its state as the gateway sees it; the failing one is not ready
    states = {k["key_id"]: k for k in gw.gateway.key_states()}
    assert states[key_id("down", DOWN)]["state"] == "cooling"
    for kid, state in states.items():
        line = page.locator(f'tr[data-key-id="{kid}"]')
        expect(line.locator(".pill")).to_have_text(state["state"])
        expect(line.locator("td").nth(3)).to_have_text(str(state["requests_today"]))
    expect(page.locator(f'tr[data-key-id="{key_id("down", DOWN)}"] .countdown')).to_contain_text(
        " s"
    )

    # no secret and no client anywhere on the page without the admin secret
    assert page.locator("#admin-section").is_hidden()
    assert_nothing_secret(page.content())
    assert_nothing_secret(page.inner_text("body"))

    # it refreshes by itself
    assert chat(gw, "up/gpt-4o-mini").status_code == 200
    expect(page.locator("#kpi-requests .value")).to_have_text("9")

    assert problems == []

    # a wrong secret is refused (the browser logs the 403) and forgotten
    page.click("#admin-toggle")
    page.fill("#admin-secret", "not-the-admin-secret")
    page.press("#admin-secret", "Enter")
    expect(page.locator("#admin-error")).to_have_text("That secret was refused.")
    assert page.locator("#admin-section").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0

    # the right one shows spend by client and the failures, with the client's name
    page.click("#admin-toggle")
    page.fill("#admin-secret", ADMIN_SECRET)
    page.press("#admin-secret", "Enter")
    expect(page.locator("#spend-client")).to_contain_text(CLIENT_NAME)
    expect(page.locator("#failures-table")).to_contain_text(CLIENT_NAME)
    expect(page.locator("#admin-toggle")).to_contain_text("lock")
    assert_nothing_secret(page.content(), client_name_allowed=True)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # locking hides it again
    page.click("#admin-toggle")
    assert page.locator("#admin-section").is_hidden()
    assert CLIENT_NAME not in page.inner_text("body")
    assert problems == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]
    page.close()


def test_dashboard_needs_nothing_from_the_internet(browser, live_gateway, fake_openai):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, [GOOD])}})
    assert chat(gw, "up/gpt-4o-mini").status_code == 200
    origin = urlsplit(gw.base)
    assert origin.hostname == "127.0.0.1"
    page = browser.new_page()
    page.set_default_timeout(10_000)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.route(  # anything else would be refused, and still listed in `requested`
        "**/*",
        lambda route: (
            route.continue_()
            if urlsplit(route.request.url).netloc == origin.netloc
            else route.abort()
        ),
    )
    page.goto(gw.base + "/?refresh=1")
    expect(page.locator("#kpi-requests .value")).to_have_text("1")
    expect(page.locator("#updated")).to_contain_text("live")
    page.wait_for_timeout(1500)  # at least one refresh more
    assert page.locator("#admin-box").is_hidden()  # no admin secret, no admin door
    page.close()
    elsewhere = [url for url in requested if urlsplit(url).netloc != origin.netloc]
    assert elsewhere == []
    paths = [urlsplit(url).path for url in requested]
    assert {"/", "/static/dashboard.js", "/static/charts.js", "/static/dashboard.css"} <= set(paths)
    assert paths.count("/status.json") >= 2
    assert "/admin/dashboard.json" not in paths


def test_static_files_are_an_allow_list_with_their_content_types(live_gateway, fake_openai):
    gw = live_gateway({"providers": {"up": openai_provider(fake_openai, [GOOD])}})
    page = httpx.get(gw.base + "/")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    script = httpx.get(gw.base + "/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    charts = httpx.get(gw.base + "/static/charts.js")
    assert charts.status_code == 200 and charts.headers["content-type"].startswith(
        "text/javascript"
    )
    sheet = httpx.get(gw.base + "/static/dashboard.css")
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/css")
    for name in ("dashboard.py", "__init__.py", "dashboard.html", "../http/app.py"):
        assert httpx.get(gw.base + "/static/" + name).status_code == 404
    # the admin data does not exist without an admin secret
    assert httpx.get(gw.base + "/admin/dashboard.json").status_code == 404


def test_admin_data_needs_the_admin_secret(live_gateway, fake_openai):
    gw = drive_traffic(live_gateway, fake_openai)
    assert httpx.get(gw.base + "/admin/dashboard.json").status_code == 403
    wrong = httpx.get(gw.base + "/admin/dashboard.json", headers={"admin-secret": "nope"})
    assert wrong.status_code == 403
    answer = httpx.get(gw.base + "/admin/dashboard.json", headers={"admin-secret": ADMIN_SECRET})
    assert answer.status_code == 200
    data = answer.json()
    today = {row["name"]: row for row in data["spend_by_client"]["today"]}
    assert today[CLIENT_NAME]["requests"] == 8 and today[CLIENT_NAME]["errors"] == 2
    assert len(data["failures"]) == 2
    assert {f["client"] for f in data["failures"]} == {CLIENT_NAME}
    for secret in (GOOD, BAD, DOWN, CLIENT_KEY, ADMIN_SECRET):
        assert secret not in answer.text


def test_latency_percentiles_are_nearest_rank():
    values = list(range(1, 101))  # 1..100 ms
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile([7], 0.95) == 7
    assert percentile([10, 20, 30, 40], 0.50) == 20
    assert percentile([], 0.5) is None
