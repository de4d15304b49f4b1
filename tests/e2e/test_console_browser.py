"""The web console in Debian's headless Chromium, against a real `ragtune serve` on loopback:
add a document, ask and see its citation, open the passage, rate the answer, delete the
document, ask again and see no citation; start a tiny tuning job and watch it finish. Every page
is checked with axe-core and photographed at desktop and phone widths under the test's tmp dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
PAGES = ("chat", "documents", "tuning", "evals", "feedback")
# serious or critical axe findings fail the test; "minor" ones are reported only
BLOCKING = {"serious", "critical"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("console-data")
    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_GENERATOR": str(tiny_llama),
        "RAGTUNE_THREADS": "1",
        "RAGTUNE_DATA_DIR": str(data),
        "RAGTUNE_AUTH_DISABLED": "1",  # loopback, one local user
    }
    ragtune = str(Path(sys.executable).parent / "ragtune")
    log = (data / "serve.log").open("w")
    proc = subprocess.Popen(
        [ragtune, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        tail = (data / "serve.log").read_text()[-2000:]
        assert proc.poll() is None, f"ragtune serve exited: {tail}"
        assert httpx.get(f"{base}/readyz", timeout=2).status_code == 200, tail
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: .ci/run installs it (apt)"
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True
        )
        yield ctx
        ctx.close()


def _axe(page: object, where: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        (v["id"], v["impact"], len(v["nodes"]))
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]
    assert not bad, f"axe-core on {where}: {bad}"


def _shoot(page: object, shots: Path, name: str) -> None:
    for label, width in (("desktop", 1280), ("phone", 375)):
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        page.screenshot(path=str(shots / f"{name}-{label}.png"), full_page=True)  # type: ignore[attr-defined]
        overflow = page.evaluate(  # type: ignore[attr-defined]
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        wide = page.evaluate(  # type: ignore[attr-defined]
            "[...document.querySelectorAll('body *')].filter(e => e.offsetParent &&"
            " e.getBoundingClientRect().right > innerWidth + 1).map(e => e.tagName + '#' + e.id)"
        )
        assert overflow <= 0, f"{name} scrolls sideways at {width} px ({overflow} px): {wide}"
    page.set_viewport_size({"width": 1280, "height": 900})  # type: ignore[attr-defined]


def _ask(page: object, question: str) -> object:
    page.click("nav >> text=Chat")  # type: ignore[attr-defined]
    page.fill("#question", question)  # type: ignore[attr-defined]
    page.click("#ask-form button[type=submit]")  # type: ignore[attr-defined]
    first = page.locator("#answers > li").first  # type: ignore[attr-defined]
    first.locator(".feedback, .no-citations, .citation").first.wait_for(timeout=60_000)
    return first


def test_console_end_to_end(server: str, browser: object, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    assert page.title() == "ragtune console"
    for name in PAGES:
        page.click(f"nav button[data-page={name}]")
        page.wait_for_timeout(300)
        _axe(page, name)
        _shoot(page, shots, name)

    # keyboard: the nav buttons come first in tab order, Enter opens a page
    page.click("nav button[data-page=chat]")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.page") == "documents"
    page.keyboard.press("Enter")
    assert page.is_visible("#page-documents")

    # add a document by paste; the list shows it without a reload
    page.fill("#doc-id", "apt-basics")
    page.fill("#doc-text", "To install a package on Debian, run apt install NAME as root.")
    page.click("#doc-form button[type=submit]")
    page.wait_for_selector("#doc-rows td:text-is('apt-basics')")

    # ask in rag mode: the answer cites the document; its passage opens highlighted
    answer = _ask(page, "How do I install a package on Debian?")
    citation = answer.locator(".citation").first
    citation.wait_for()
    assert "apt-basics" in citation.inner_text()
    citation.click()
    page.wait_for_selector("#passage mark")
    assert "apt install" in page.inner_text("#passage mark")
    assert "apt-basics" in page.inner_text("#passage-doc")
    _axe(page, "chat with an answer and an open passage")
    _shoot(page, shots, "chat-answer")

    # rate it: the rating reaches /v1/feedback
    answer.locator("button[aria-label='Good answer']").click()
    page.wait_for_selector("#answers li .feedback p:has-text('Thanks')")
    rated = httpx.get(server + "/v1/feedback", timeout=10).json()["feedback"]
    assert [r["rating"] for r in rated] == ["up"]

    # delete with confirmation; asking again cites nothing
    page.click("nav button[data-page=documents]")
    page.once("dialog", lambda d: d.accept())
    page.click("button[aria-label='Delete apt-basics']")
    page.wait_for_selector("#doc-page:has-text('No documents yet.')")
    again = _ask(page, "How do I install a package on Debian?")
    again.locator(".no-citations").wait_for()

    # an API refusal is one sentence next to its form: a 422 from the document form
    page.click("nav button[data-page=documents]")
    page.fill("#doc-id", "bad id with\ttab")
    page.fill("#doc-text", "x")
    page.click("#doc-form button[type=submit]")
    page.wait_for_selector("#doc-error:not(:empty)")
    assert page.inner_text("#doc-error").startswith(("Not accepted", "Conflict", "Not found"))

    # a tiny tuning job from the form, watched in the page until it finishes
    tools = [
        "apt installs packages",
        "grub shows the boot menu",
        "bash is the login shell",
        "ssh opens a remote shell",
        "cron runs timed jobs",
        "tar packs archives",
        "rsync copies trees",
        "ufw guards ports",
        "systemd starts services",
        "journalctl reads logs",
        "df shows free disk",
        "top lists processes",
    ]
    docs = [
        {"id": t.split()[0], "text": f"On Debian, {t}. The {t.split()[0]} manual explains it."}
        for t in tools
    ]
    added = httpx.post(server + "/v1/documents", json={"documents": docs}, timeout=60)
    assert added.status_code == 201, added.text
    page.click("nav button[data-page=tuning]")
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"what does {d['id']} do"},
                        {"role": "assistant", "content": d["text"]},
                    ]
                }
            )
            + "\n"
            for d in docs
        )
    )
    page.set_input_files("#tune-upload", str(train))
    page.fill("#tune-steps", "2")
    page.click("#tune-form button[type=submit]")
    page.wait_for_selector("#jobs li, #tune-error:not(:empty)", timeout=30_000)
    assert not page.inner_text("#tune-error"), page.inner_text("#tune-error")
    page.wait_for_selector(
        "#jobs li[data-state=succeeded], #jobs li[data-state=failed]", timeout=300_000
    )
    job = page.inner_text("#jobs li")
    assert page.is_visible("#jobs li[data-state=succeeded]"), job
    page.wait_for_selector("#adapters li button:has-text('Load for chat')")
    _shoot(page, shots, "tuning-done")

    # an eval run: dataset uploaded in the form, progress watched, report opened in the page
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "what installs packages", "answer": "apt", "doc_ids": ["apt"]}\n')
    page.click("nav button[data-page=evals]")
    page.set_input_files("#eval-file", str(qa))
    page.click("#eval-form button[type=submit]")
    page.wait_for_selector("#eval-runs li[data-state=succeeded] button", timeout=300_000)
    page.click("#eval-runs li[data-state=succeeded] button")
    report = page.frame_locator("#eval-report")
    report.locator("body").wait_for(timeout=30_000)
    assert report.locator("body").inner_text().strip(), "the report frame is empty"
    _axe(page, "evals with a report")
    _shoot(page, shots, "eval-report")

    # the key lives in sessionStorage only
    page.fill("#api-key", "secret-key")
    page.click("#key-form button[type=submit]")
    assert page.evaluate("sessionStorage.getItem('ragtune.key')") == "secret-key"
    assert page.evaluate("localStorage.length") == 0
    page.evaluate("sessionStorage.clear()")
    assert not errors, errors
