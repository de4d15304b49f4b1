"""Ratings of answers over the real app: one per answer and key, updatable, listed with filters
and pages, stale once a shown passage changed or its document went, clear 4xx otherwise."""

from __future__ import annotations

from pathlib import Path

from service.settings import AnswerLogSettings, ApiKey, Settings
from tests.helpers import app_clients

KEYS = {"ann": "key-for-ann-0123456789abcdef", "bob": "key-for-bob-0123456789abcdef"}
DOC = {"id": "apt-basics", "text": "To install a package on debian run apt install as root."}


def _settings() -> Settings:
    scopes = {"ann": ["read", "write", "admin"], "bob": ["read"]}
    keys = [ApiKey(name=n, key=k, scopes=scopes[n]) for n, k in KEYS.items()]  # type: ignore[arg-type]
    return Settings(auth_disabled=False, api_keys=keys)


def _h(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _ask(client, question: str = "how do I install a package ?", mode: str = "rag") -> str:  # noqa: ANN001
    r = client.post(
        "/v1/query",
        json={"question": question, "mode": mode, "max_new_tokens": 3},
        headers=_h("ann"),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_one_rating_per_answer_and_key_updatable_and_listed(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings())
        assert client.post("/v1/documents", json=DOC, headers=_h("ann")).status_code == 201
        first, second = _ask(client), _ask(client, "what is debian ?", "base")
        r = client.post(
            "/v1/feedback", json={"answer_id": first, "rating": "up"}, headers=_h("ann")
        )
        assert r.status_code == 201 and r.json()["rating"] == "up" and r.json()["stale"] == []
        again = client.post(
            "/v1/feedback",
            json={"answer_id": first, "rating": "down", "correction": "run apt install [1]"},
            headers=_h("ann"),
        )
        assert again.status_code == 200  # replaced, not added
        assert again.json()["created"] == r.json()["created"]
        client.post("/v1/feedback", json={"answer_id": first, "rating": "up"}, headers=_h("bob"))
        client.post("/v1/feedback", json={"answer_id": second, "rating": "up"}, headers=_h("bob"))
        listed = client.get("/v1/feedback", headers=_h("ann")).json()  # an admin: everyone's
        assert listed["total"] == 3
        bobs = client.get("/v1/feedback", headers=_h("bob")).json()  # a reader: his own
        assert bobs["total"] == 2 and {f["key_name"] for f in bobs["feedback"]} == {"bob"}
        mine = [f for f in listed["feedback"] if f["key_name"] == "ann"]
        assert len(mine) == 1 and mine[0]["rating"] == "down"
        assert mine[0]["correction"] == "run apt install [1]"
        assert mine[0]["answer"]["messages"][0]["content"] == "how do I install a package ?"
        ups = client.get("/v1/feedback", params={"rating": "up"}, headers=_h("ann")).json()
        assert ups["total"] == 2 and {f["rating"] for f in ups["feedback"]} == {"up"}
        one = client.get("/v1/feedback", params={"answer_id": second}, headers=_h("ann")).json()
        assert one["total"] == 1 and one["feedback"][0]["answer_id"] == second
        pages = [
            client.get("/v1/feedback", params={"limit": 1, "offset": i}, headers=_h("ann")).json()
            for i in range(4)
        ]
        assert [len(p["feedback"]) for p in pages] == [1, 1, 1, 0]
        seen = {(p["feedback"][0]["answer_id"], p["feedback"][0]["key_name"]) for p in pages[:3]}
        assert len(seen) == 3


def test_a_rating_goes_stale_when_a_shown_passage_changes_or_its_document_goes(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings())
        client.post("/v1/documents", json=DOC, headers=_h("ann"))
        answer = _ask(client)
        client.post("/v1/feedback", json={"answer_id": answer, "rating": "up"}, headers=_h("ann"))

        def stale() -> list[str]:
            return client.get("/v1/feedback", headers=_h("ann")).json()["feedback"][0]["stale"]

        assert stale() == []
        edited = client.put(
            "/v1/documents/apt-basics",
            json={"text": "Use the graphical installer instead; it is simpler."},
            headers=_h("ann"),
        )
        assert edited.status_code == 200
        changed = stale()
        assert len(changed) == 1 and changed[0].startswith("document 'apt-basics' changed at")
        assert client.delete("/v1/documents/apt-basics", headers=_h("ann")).status_code == 200
        assert stale() == ["document 'apt-basics' was deleted"]


def test_bad_ratings_get_clear_errors(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings())
        answer = _ask(client, "what is debian ?", "base")
        unknown = client.post(
            "/v1/feedback", json={"answer_id": "ans-nope", "rating": "up"}, headers=_h("ann")
        )
        assert unknown.status_code == 404 and "ans-nope" in unknown.json()["error"]["message"]
        long = client.post(
            "/v1/feedback",
            json={"answer_id": answer, "rating": "down", "correction": "x" * 8001},
            headers=_h("ann"),
        )
        assert long.status_code == 422 and "correction" in long.text
        wrong = client.post(
            "/v1/feedback", json={"answer_id": answer, "rating": "meh"}, headers=_h("ann")
        )
        assert wrong.status_code == 422 and "rating" in wrong.text
        nobody = client.post("/v1/feedback", json={"answer_id": answer, "rating": "up"})
        assert nobody.status_code == 401
        off = make(Settings(answer_log=AnswerLogSettings(enabled=False)))
        r = off.post("/v1/feedback", json={"answer_id": answer, "rating": "up"})
        assert r.status_code == 409 and "answer_log" in r.json()["error"]["message"]


def test_the_cli_lists_and_exports_the_ratings(tiny_llama: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from service.cli import main

    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings())
        up, down = _ask(client, "what is debian ?", "base"), _ask(client, "what is apt ?", "base")
        client.post("/v1/feedback", json={"answer_id": up, "rating": "up"}, headers=_h("ann"))
        client.post(
            "/v1/feedback",
            json={"answer_id": down, "rating": "down", "correction": "apt installs packages"},
            headers=_h("bob"),
        )
    listed = CliRunner().invoke(main, ["feedback", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2 and any(down in ln and "-> apt installs" in ln for ln in lines)
    only_up = CliRunner().invoke(main, ["feedback", "list", "--rating", "up"])
    assert only_up.output.strip().splitlines() == [ln for ln in lines if up in ln]
    out = tmp_path / "feedback.jsonl"
    exported = CliRunner().invoke(main, ["feedback", "export", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["answer_id"] for r in rows} == {up, down}
    assert all(r["answer"]["answer"] is not None for r in rows)
    kto = CliRunner().invoke(main, ["feedback", "export", "--as", "kto", "--out", str(out)])
    assert kto.exit_code == 0, kto.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["label"] for r in rows) == [False, True, True]  # the correction is desirable
    assert {r["completion"][0]["content"] for r in rows if r["label"]} >= {"apt installs packages"}
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)


def test_the_cli_says_so_when_nothing_was_rated(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from service.cli import main

    result = CliRunner().invoke(main, ["feedback", "list"])
    assert result.exit_code == 1 and "no answer log" in result.output
