"""The console's static files as the server ships them: public (no key) where the API is not,
framed by no other site, and naming the modes and methods the API accepts (a new method or
mode that the console's forms do not offer fails here, not in a user's browser)."""

from __future__ import annotations

import re
from importlib.resources import files

from fastapi.testclient import TestClient

from service.app import create_app
from service.evalruns import RUN_MODES
from service.pipeline import MODES
from service.settings import ApiKey, Settings
from tuner.config import METHODS, RETRIEVER_METHODS

BASE = "http://127.0.0.1"
CONSOLE = files("service") / "console"
KEY = "console-test-key-0123456789"


def test_the_console_is_public_and_the_api_behind_it_is_not() -> None:
    keys = [ApiKey(name="r", key=KEY, scopes=["read"])]  # type: ignore[arg-type,list-item]
    client = TestClient(create_app(Settings(auth_disabled=False, api_keys=keys)), base_url=BASE)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="console/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        got = client.get(f"/console/{asset}")
        assert got.status_code == 200 and kind in got.headers["content-type"], asset
    for escape in ("/console/../app.py", "/console/%2e%2e/app.py", "/console/..%2fapp.py"):
        got = client.get(escape)
        assert got.status_code in (401, 404) and "create_app" not in got.text, escape
    assert client.post("/console/app.js").status_code in (401, 405)  # only reads are public
    assert client.get("/v1/documents").status_code == 401
    assert client.get("/readyz").status_code in (200, 503)  # public as before


def test_the_forms_offer_what_the_api_accepts() -> None:
    html = (CONSOLE / "index.html").read_text("utf-8")
    script = (CONSOLE / "app.js").read_text("utf-8")
    chat_modes = re.findall(r'<select id="mode">(.*?)</select>', html, re.S)[0]
    assert set(re.findall(r'<option value="([^"]+)"', chat_modes)) == set(MODES)
    assert set(re.findall(r'name="eval-mode" value="([^"]+)"', html)) == set(RUN_MODES)
    table = re.search(r"const METHODS = \{(.*?)\};", script, re.S)
    assert table, "app.js lists the tuning methods in METHODS"
    offered = dict(re.findall(r"(\w+): \[([^\]]*)\]", table.group(1)))
    assert set(re.findall(r'"([^"]+)"', offered["generator"])) == set(METHODS)
    assert set(re.findall(r'"([^"]+)"', offered["retriever"])) == set(RETRIEVER_METHODS)


def test_every_control_has_a_label_and_nothing_is_kept_in_local_storage() -> None:
    html = (CONSOLE / "index.html").read_text("utf-8")
    script = (CONSOLE / "app.js").read_text("utf-8")
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    for tag, control in re.findall(r'<(input|select|textarea) id="([^"]+)"', html):
        wrapped = re.search(rf'<label><input id="{control}"', html)
        assert control in labelled or wrapped, f"<{tag} id={control}> has no label"
    assert "localStorage" not in script.replace("never in localStorage", "")
    assert "sessionStorage" in script
