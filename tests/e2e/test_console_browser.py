"""The web console in Debian's headless Chromium, against a real `ragtune serve` on loopback
with API keys on: the key typed in (kept for the tab only) and the refusals the API answers
shown next to what caused them; add, find, edit, upload and delete documents; ask, see the
citation, open the highlighted passage, rate the answer and suggest a better one; list, filter
and export the ratings; start a tiny tuning job and a sweep from the form and watch them finish;
load, promote and (refused) delete the adapter; re-embed the index; run an evaluation and read
its report in the page. Every page is checked with axe-core and photographed at desktop and
phone widths under the test's tmp dir."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_serve import _free_port, _ragtune
from tests.helpers import wait_ready

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

ADMIN = "k-curator-0123456789abcdef"
READER = "k-asker-0123456789abcdef"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("console-data")
    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_GENERATOR": str(tiny_llama),
        "RAGTUNE_THREADS": "1",
        "RAGTUNE_DATA_DIR": str(data),
        "RAGTUNE_API_KEYS": json.dumps(
            [
                {"name": "curator", "key": ADMIN, "scopes": ["admin"]},
                {"name": "asker", "key": READER, "scopes": ["read"]},
            ]
        ),
    }
    env.pop("RAGTUNE_AUTH_DISABLED", None)
    log = (data / "serve.log").open("w")
    proc = subprocess.Popen(
        [_ragtune(), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_ready(base, proc, 120)
        assert ready, (
            f"ragtune serve never became ready: {(data / 'serve.log').read_text()[-2000:]}"
        )
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: .ci/run installs it (apt)"
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=FLAGS, headless=True
        )
        yield ctx
        ctx.close()


def _axe(page: Any, where: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        (v["id"], v["impact"], len(v["nodes"]))
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]
    assert not bad, f"axe-core on {where}: {bad}"


def _shoot(page: Any, shots: Path, name: str) -> None:
    for label, width in (("desktop", 1280), ("phone", 375)):
        page.set_viewport_size({"width": width, "height": 900})
        page.evaluate("scrollTo(0, 0)")  # the sticky header at the top of the picture
        page.screenshot(path=str(shots / f"{name}-{label}.png"), full_page=True)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        wide = page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => e.offsetParent &&"
            " e.getBoundingClientRect().right > innerWidth + 1).map(e => e.tagName + '#' + e.id)"
        )
        assert overflow <= 0, f"{name} scrolls sideways at {width} px ({overflow} px): {wide}"
    page.set_viewport_size({"width": 1280, "height": 900})


def _ask(page: Any, question: str, mode: str = "rag") -> Any:
    page.click("nav button[data-page=chat]")
    page.select_option("#mode", mode)
    page.fill("#question", question)
    page.click("#ask-form button[type=submit]")
    first = page.locator("#answers > li").first
    first.locator(".feedback").wait_for(timeout=60_000)
    return first


def _start_and_watch(page: Any, form: str, items: str, error: str, timeout: float) -> str:
    """Submit ``form``, see its first item appear in ``items`` with no refusal in ``error``,
    and wait until that item has ended; its text."""
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(f"{items}, {error}:not(:empty)", timeout=30_000)
    assert not page.inner_text(error), page.inner_text(error)
    live = "".join(f":not([data-state={s}])" for s in ("queued", "validating", "running"))
    page.wait_for_selector(f"{items}{live}", timeout=timeout * 1000)
    return str(page.inner_text(items))


def _use_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")


def _open(browser: Any, server: str, key: str | None = ADMIN) -> tuple[Any, list[str]]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    if key:
        _use_key(page, key)
    return page, errors


def _error_next_to(page: Any, selector: str) -> str:
    page.wait_for_selector(f"{selector}:not(:empty)")
    return str(page.inner_text(selector))


def test_key_is_kept_for_the_tab_and_refusals_read_as_sentences(
    server: str, browser: Any, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page, errors = _open(browser, server, key=None)
    assert page.title() == "ragtune console"
    # 401: no key yet, said next to the chat form
    assert "needs an API key" in _error_next_to(page, "#ask-error")
    _use_key(page, READER)
    page.wait_for_selector("#ask-error:empty")
    assert page.evaluate("sessionStorage.getItem('ragtune.key')") == READER
    assert page.evaluate("localStorage.length") == 0
    assert page.input_value("#api-key") == ""  # not left in the field either
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

    # 403: a read key may not write, said next to the document form
    page.fill("#doc-id", "nope")
    page.fill("#doc-text", "a reader's document")
    page.click("#doc-form button[type=submit]")
    assert "may not do that" in _error_next_to(page, "#doc-error")
    listed = httpx.get(server + "/v1/documents", headers=AS_ADMIN, timeout=10).json()
    assert listed["total"] == 0

    # 429 with its wait and 413, as the API words them (answered here by the browser's router:
    # the per-key limiter and the body bound are tested against the server in tests/service)
    page.route(
        "**/v1/eval/runs",
        lambda route: route.fulfill(
            status=429,
            headers={"Retry-After": "7", "Content-Type": "application/json"},
            body=json.dumps({"error": {"code": "rate_limited", "message": "slow down"}}),
        ),
    )
    page.click("nav button[data-page=evals]")
    assert _error_next_to(page, "#eval-error") == "Too many requests: wait 7 seconds and retry."
    page.unroute("**/v1/eval/runs")
    too_big = {"error": {"code": "too_large", "message": "the body is over 1 MiB"}}
    page.route(
        "**/v1/files",
        lambda route: route.fulfill(status=413, json=too_big),
    )
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "q", "answer": "a"}\n')
    page.set_input_files("#eval-file", str(qa))
    page.click("#eval-form button[type=submit]")
    assert page.wait_for_selector("#eval-error:has-text('Too large')")
    assert "over 1 MiB" in page.inner_text("#eval-error")
    page.unroute("**/v1/files")

    # another tab starts without the key: it was never stored beyond this one
    other, other_errors = _open(browser, server, key=None)
    assert "needs an API key" in _error_next_to(other, "#ask-error")
    assert other.evaluate("sessionStorage.length") == 0
    other.close()
    page.close()
    assert not errors and not other_errors, errors + other_errors


def test_documents_chat_citations_and_feedback(server: str, browser: Any, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    from playwright.sync_api import expect

    page, errors = _open(browser, server)

    # add a document by paste; the list shows it without a reload
    page.click("nav button[data-page=documents]")
    page.fill("#doc-id", "apt-basics")
    page.fill("#doc-text", "To install a package on Debian, run apt install NAME as root.")
    page.fill("#doc-meta", '{"source": "notes"}')
    page.click("#doc-form button[type=submit]")
    page.wait_for_selector("#doc-rows td:text-is('apt-basics')")
    assert "version 1" in page.inner_text("#doc-status")
    added = httpx.get(server + "/v1/documents/apt-basics", headers=AS_ADMIN, timeout=10).json()
    assert added["metadata"] == {"source": "notes"}

    # upload: one result per file, a refused file named with its reason, the good one added
    good, bad = tmp_path / "grub-notes.md", tmp_path / "broken.jsonl"
    good.write_text("# GRUB\n\nGRUB shows the boot menu when the machine starts.\n")
    bad.write_text('{"text": "fine line", "id": "ok-line"}\n{not json\n')
    page.set_input_files("#upload-files", [str(good), str(bad)])
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-results li:nth-child(2):not(:has-text('uploading'))")
    results = page.locator("#upload-results li").all_inner_texts()
    assert results[0] == "grub-notes.md: grub-notes.md (added, version 1, 1 passage)", results
    assert results[1].startswith("broken.jsonl: ok-line (added, version 1"), results
    assert "refused broken.jsonl:2: not JSON" in results[1], results
    page.wait_for_selector("#doc-page:has-text('of 3')")

    # search (server-side, over id and text) and edit
    page.fill("#doc-filter", "boot menu")
    page.wait_for_selector("#doc-page:has-text('matching')")
    assert page.locator("#doc-rows tr").count() == 1
    page.click("#doc-rows button:has-text('Edit')")
    expect(page.locator("#doc-text")).to_have_value(re.compile("boot menu"))
    edited_id = page.input_value("#doc-id")
    url = f"{server}/v1/documents/{edited_id}"
    before = httpx.get(url, headers=AS_ADMIN, timeout=10).json()["metadata"]
    assert before["title"] == "GRUB"  # from the upload: an edit of the text keeps it
    page.fill("#doc-text", "GRUB shows the boot menu; press e to edit an entry.")
    page.click("#doc-form button[type=submit]")
    page.wait_for_selector("#doc-status:has-text('version 2')")
    stored = httpx.get(url, headers=AS_ADMIN, timeout=10).json()
    assert stored["text"].endswith("press e to edit an entry.") and stored["version"] == 2
    assert stored["metadata"] == before
    # metadata that is not a JSON object is refused in the page, before any request
    page.click(f"button[aria-label='Edit {edited_id}']")
    expect(page.locator("#doc-meta")).to_have_value(re.compile('"title": "GRUB"'))
    page.fill("#doc-meta", "[1, 2]")
    page.click("#doc-form button[type=submit]")
    assert "(metadata): a JSON object is needed" in _error_next_to(page, "#doc-error")
    assert httpx.get(url, headers=AS_ADMIN, timeout=10).json()["version"] == 2
    page.fill("#doc-filter", "")
    page.wait_for_selector("#doc-page:has-text('of 3'):not(:has-text('matching'))")

    # 404: a document deleted elsewhere, then edited here
    httpx.delete(server + "/v1/documents/ok-line", headers=AS_ADMIN, timeout=10)
    page.click("button[aria-label='Edit ok-line']")
    assert _error_next_to(page, "#doc-error").startswith("Not found")

    # 422: the field is named next to the form; nothing is written
    page.fill("#doc-id", "bad id with\ttab")
    page.fill("#doc-text", "x")
    page.fill("#doc-meta", "")
    page.click("#doc-form button[type=submit]")
    refusal = _error_next_to(page, "#doc-error")
    assert refusal.startswith("Not accepted (doc_id): control"), refusal
    _shoot(page, shots, "documents-edited")

    # ask in rag mode: the answer cites the document; its passage opens highlighted
    answer = _ask(page, "How do I install a package on Debian?")
    citation = answer.locator(".citation", has_text="apt-basics").first
    citation.wait_for()
    citation.click()
    page.wait_for_selector("#passage mark")
    assert "apt install" in page.inner_text("#passage mark")
    assert "apt-basics" in page.inner_text("#passage-doc")
    _axe(page, "chat with an answer and an open passage")
    _shoot(page, shots, "chat-answer")

    # rate it, then suggest a better answer: both reach /v1/feedback
    answer.locator("button:has-text('Good answer')").click()
    answer.locator("p[role=status]:has-text('Thanks')").wait_for()
    rated = httpx.get(server + "/v1/feedback", headers=AS_ADMIN, timeout=10).json()["feedback"]
    assert [r["rating"] for r in rated] == ["up"]
    second = _ask(page, "What shows the boot menu?")
    second.locator("textarea").fill("GRUB shows it at boot.")
    second.locator("button:has-text('Send the better answer')").click()
    second.locator("p[role=status]:has-text('better answer')").wait_for()

    # the feedback page lists, filters and exports them
    page.click("nav button[data-page=feedback]")
    page.wait_for_selector("#fb-page:has-text('of 2 ratings')")
    page.select_option("#fb-rating", "down")
    page.click("#fb-filter button[type=submit]")
    page.wait_for_selector("#fb-page:has-text('of 1 ratings')")
    assert "GRUB shows it at boot." in page.inner_text("#fb-rows")
    with page.expect_download() as download:
        page.click("#fb-export")
    lines = Path(download.value.path()).read_text().splitlines()
    exported = [json.loads(line) for line in lines]
    assert [(r["rating"], r["correction"]) for r in exported] == [
        ("down", "GRUB shows it at boot.")
    ]
    _axe(page, "feedback with ratings")
    _shoot(page, shots, "feedback-rated")

    # delete with confirmation; asking again cites nothing
    page.click("nav button[data-page=documents]")
    page.once("dialog", lambda d: d.accept())
    page.click("button[aria-label='Delete apt-basics']")
    page.wait_for_selector("#doc-page:has-text('of 1')")
    page.once("dialog", lambda d: d.accept())
    page.click("#doc-rows button:has-text('Delete')")
    page.wait_for_selector("#doc-page:has-text('No documents yet.')")
    again = _ask(page, "How do I install a package on Debian?")
    assert again.locator(".no-citations").is_visible()
    page.close()
    assert not errors, errors


def test_tuning_sweep_adapters_index_and_eval(server: str, browser: Any, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    tools = ["apt installs packages", "grub shows the boot menu", "bash is the login shell",
             "ssh opens a remote shell", "cron runs timed jobs", "tar packs archives",
             "rsync copies trees", "ufw guards ports", "systemd starts services",
             "journalctl reads logs", "df shows free disk", "top lists processes"]  # fmt: skip
    docs = [
        {"id": t.split()[0], "text": f"On Debian, {t}. The {t.split()[0]} manual explains it."}
        for t in tools
    ]
    added = httpx.post(
        server + "/v1/documents", json={"documents": docs}, headers=AS_ADMIN, timeout=60
    )
    assert added.status_code == 201, added.text
    notes = [{"id": f"note-{i:02}", "text": f"Note {i} on Debian."} for i in range(13)]
    added = httpx.post(
        server + "/v1/documents", json={"documents": notes}, headers=AS_ADMIN, timeout=60
    )
    assert added.status_code == 201, added.text
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
    page, errors = _open(browser, server)

    # 25 documents: two pages of 20
    page.click("nav button[data-page=documents]")
    page.wait_for_selector("#doc-page:text-is('1–20 of 25')")
    assert page.is_disabled("#doc-prev") and page.locator("#doc-rows tr").count() == 20
    page.click("#doc-next")
    page.wait_for_selector("#doc-page:text-is('21–25 of 25')")
    assert page.is_disabled("#doc-next") and page.locator("#doc-rows tr").count() == 5
    page.click("#doc-prev")
    page.wait_for_selector("#doc-page:text-is('1–20 of 25')")

    # a tiny tuning job from the form, watched in the page until it finishes
    page.click("nav button[data-page=tuning]")
    # the form offers the data each component and method can take
    page.select_option("#tune-method", "dpo")
    assert page.input_value("#tune-source") == "feedback"
    page.select_option("#tune-method", "lora")
    assert page.input_value("#tune-source") == "raft"  # ratings are for kto and dpo only
    page.select_option("#tune-component", "retriever")
    assert page.input_value("#tune-source") == "pairs" and page.is_visible("#tune-activate")
    page.select_option("#tune-component", "generator")
    assert not page.is_visible("#tune-activate")
    page.select_option("#tune-source", "file")
    page.set_input_files("#tune-upload", str(train))
    page.fill("#tune-steps", "2")
    job = _start_and_watch(page, "#tune-form", "#jobs > li", "#tune-error", timeout=300)
    assert page.is_visible("#jobs > li[data-state=succeeded]"), job
    chart = page.get_attribute("#loss-chart", "aria-label") or ""
    assert "training " in chart and "at step" in chart, chart
    adapter = page.locator("#adapters li").first
    adapter.locator("button:has-text('Load for chat')").wait_for()
    adapter_id = adapter.get_attribute("data-adapter")
    assert "eval gate not run" in adapter.inner_text()
    _shoot(page, shots, "tuning-done")

    # load it and ask in ft mode; promote it; deleting the promoted one is refused (409)
    adapter.locator("button:has-text('Load for chat')").click()
    page.wait_for_selector("#adapter-status:has-text('Loaded')")
    page.click("nav button[data-page=chat]")
    page.wait_for_selector(f"#adapter option[value='{adapter_id}']", state="attached")
    page.select_option("#adapter", adapter_id)
    _ask(page, "what does cron do", mode="ft")
    page.click("nav button[data-page=tuning]")
    page.click(f"button[aria-label='Promote {adapter_id}']")
    page.wait_for_selector("#adapter-status:has-text('Promoted')")
    page.wait_for_selector(f"#adapters li[data-adapter='{adapter_id}'] strong:text('promoted')")
    page.once("dialog", lambda d: d.accept())
    page.click(f"button[aria-label='Delete {adapter_id}']")
    assert _error_next_to(page, "#adapter-error").startswith("Conflict:")
    assert page.locator(f"#adapters li[data-adapter='{adapter_id}']").count() == 1

    # a two-trial sweep of the learning rate, watched to its end, its report read in the page
    page.check("#tune-sweep")
    page.fill("#sweep-trials", "2")
    sweep = _start_and_watch(page, "#tune-form", "#sweeps > li", "#tune-error", timeout=400)
    assert page.is_visible("#sweeps > li[data-state=succeeded]"), sweep
    assert "2 of 2 trials" in sweep and "trial 1" in sweep, sweep
    page.click("#sweeps button:has-text('Open report')")
    report = page.frame_locator("#sweep-report")
    assert report.locator("h1").inner_text(timeout=30_000).startswith("Sweep sweep-")
    _axe(page, "tuning with a sweep")
    _shoot(page, shots, "tuning-sweep")

    # re-embed the index with its own embedder: the status follows it to the end
    page.click("#reindex-form button[type=submit]")
    page.wait_for_selector("#index-status:has-text('succeeded')", timeout=120_000)
    assert not page.inner_text("#index-error")
    assert "25 documents" in page.inner_text("#index-info")

    # an eval run: dataset uploaded in the form, progress watched, report opened in the page
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "what installs packages", "answer": "apt", "doc_ids": ["apt"]}\n')
    assert not errors, errors
    page.click("nav button[data-page=evals]")
    page.wait_for_selector("#page-evals", state="visible")
    page.set_input_files("#eval-file", str(qa))
    page.uncheck("input[name=eval-mode][value=rag]")
    page.click("#eval-form button[type=submit]")
    assert _error_next_to(page, "#eval-error") == "Modes: tick at least one."
    page.check("input[name=eval-mode][value=rag]")
    page.check("input[name=eval-mode][value=ft]")
    page.click("#eval-form button[type=submit]")
    page.wait_for_selector("#eval-runs li", timeout=30_000)
    page.wait_for_selector("#eval-runs li[data-state=succeeded] button", timeout=300_000)
    assert "rag, ft" in page.inner_text("#eval-runs li")
    page.click("#eval-runs li[data-state=succeeded] button:has-text('Open report')")
    report = page.frame_locator("#eval-report")
    report.locator("h1").wait_for(timeout=30_000)
    text = report.locator("body").inner_text()
    assert "rag" in text and "ft" in text, text[:500]
    # its charts are in the page: data: images the console's policy lets the frame show
    charts = report.locator("img[src^='data:image/png']")
    assert charts.count() >= 1 and charts.first.evaluate("i => i.naturalWidth") > 0
    _axe(page, "evals with a report")
    _shoot(page, shots, "eval-report")
    page.close()
    assert not errors, errors
