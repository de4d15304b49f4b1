"""Every answer has an id and a record in the answer log (service.answerlog): what was asked,
shown and said, never the key that asked; retention drops old records; the log can be off."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from service.answerlog import AnswerLog, new_id, sha256
from service.settings import AnswerLogSettings, ApiKey, Settings
from tests.helpers import app_clients

KEY = "key-for-asking-0123456789abcdef"
DOC = {"id": "apt-basics", "text": "To install a package on debian run apt install as root."}


def _log(client) -> AnswerLog:  # noqa: ANN001 - TestClient
    log = client.app.state.ragtune.answers
    log.flush()
    return log


def test_every_answer_has_an_id_and_a_record_of_what_it_was_given(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        assert client.post("/v1/documents", json=DOC).status_code == 201
        rag = client.post(
            "/v1/query", json={"question": "how do I install a package ?", "max_new_tokens": 4}
        ).json()
        base = client.post(
            "/v1/query", json={"question": "what is debian ?", "mode": "base", "max_new_tokens": 3}
        ).json()
        streamed = {
            "question": "what is apt ?",
            "mode": "base",
            "max_new_tokens": 2,
            "stream": True,
        }
        with client.stream("POST", "/v1/query", json=streamed) as r:
            header = r.headers["x-answer-id"]
            done = [
                line for line in r.iter_lines() if line.startswith("data: {") and '"id"' in line
            ]
        log = _log(client)
    assert rag["id"].startswith("ans-") and rag["id"] != base["id"]
    record = log.get(rag["id"])
    assert record is not None
    assert record["surface"] == "query" and record["mode"] == "rag" and record["adapter"] is None
    assert record["messages"] == [{"role": "user", "content": "how do I install a package ?"}]
    assert record["answer"] == rag["answer"] and record["finish_reason"] == "length"
    assert record["prompt_tokens"] == rag["usage"]["prompt_tokens"]
    assert len(record["prompt_sha256"]) == 64
    cited = rag["citations"]
    assert cited and [p["doc_id"] for p in record["passages"]] == [c["doc_id"] for c in cited]
    first = record["passages"][0]
    assert (first["start"], first["end"]) == (cited[0]["start"], cited[0]["end"])
    assert first["sha256"] == sha256(cited[0]["text"])
    assert log.get(base["id"])["passages"] == []  # base mode shows none
    assert json.loads(done[-1][6:])["id"] == header and log.get(header) is not None


def test_chat_answers_plain_and_streamed_carry_the_logged_id(
    tiny_llama: Path, tmp_path: Path
) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings())
        model = client.get("/v1/models").json()["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "what is apt ?"}],
            "max_tokens": 3,
            "retrieval": False,
        }
        plain = client.post("/v1/chat/completions", json=body).json()
        ids = set()
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    ids.add(json.loads(line[6:])["id"])
        log = _log(client)
    assert len(ids) == 1
    for answer_id in (plain["id"], *ids):
        record = log.get(answer_id)
        assert record is not None and record["surface"] == "chat" and record["mode"] == "base"
    assert log.get(plain["id"])["answer"] == plain["choices"][0]["message"]["content"]


def test_the_log_never_holds_the_key_that_asked(tiny_llama: Path, tmp_path: Path) -> None:
    keys = [ApiKey(name="asker", key=KEY, scopes=["read"])]  # type: ignore[arg-type]
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(Settings(auth_disabled=False, api_keys=keys))
        answer = client.post(
            "/v1/query",
            json={"question": "what is debian ?", "mode": "base", "max_new_tokens": 3},
            headers={"Authorization": f"Bearer {KEY}"},
        ).json()
        log = _log(client)
    assert log.get(answer["id"]) is not None
    for path in log.path.parent.glob(log.path.name + "*"):  # the database and its WAL
        assert KEY.encode() not in path.read_bytes()


def test_with_the_log_off_answers_keep_their_ids_and_nothing_is_written(
    tiny_llama: Path, tmp_path: Path
) -> None:
    settings = Settings(answer_log=AnswerLogSettings(enabled=False))
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(settings)
        answer = client.post(
            "/v1/query", json={"question": "what is debian ?", "mode": "base", "max_new_tokens": 2}
        ).json()
        assert client.app.state.ragtune.answers is None
    assert answer["id"].startswith("ans-")
    assert not settings.layout.answers.exists()


def test_records_past_the_retention_are_dropped(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path / "answers.sqlite", retention_days=30)
    old, new = new_id(), new_id()
    for answer_id, age_days in ((old, 31), (new, 29)):
        log.add(
            {"id": answer_id, "created": time.time() - age_days * 86400, "surface": "query",
             "mode": "base", "adapter": None, "messages": [], "passages": [],
             "prompt_sha256": "0" * 64, "prompt_tokens": 1, "answer": "a", "finish_reason": "stop"}
        )  # fmt: skip
    log.flush()
    assert log.count() == 2
    assert log.purge() == 1
    assert log.get(old) is None and log.get(new) is not None
    log.close()
    keep_all = AnswerLog(tmp_path / "answers.sqlite", retention_days=0)
    assert keep_all.purge() == 0 and keep_all.count() == 1
    keep_all.close()
    with sqlite3.connect(tmp_path / "answers.sqlite") as db:  # a plain SQLite file
        assert db.execute("SELECT answer FROM answers").fetchall() == [("a",)]


def test_a_cancelled_answer_is_recorded_with_how_it_ended(tiny_llama: Path, tmp_path: Path) -> None:
    from service.generation.engine import GenerationEngine
    from service.pipeline import Ask, Pipeline
    from service.settings import Limits
    from tuner.models import load_generator

    gen = load_generator(str(tiny_llama), cache_dir=tmp_path / "m")
    engine = GenerationEngine(gen, max_batch=2)
    log = AnswerLog(tmp_path / "answers.sqlite")
    try:
        pipeline = Pipeline(Limits(), engine=engine, answer_log=log)
        ask = Ask.question("what is debian ?", mode="base", max_new_tokens=200)
        answer = pipeline.submit(pipeline.prepare(ask))
        answer.request.cancel()
        answer.request.done.wait(60)
        log.flush()
        record = log.get(answer.id)
        assert record is not None and record["finish_reason"] == "cancelled"
        assert record["answer"] == answer.text
    finally:
        engine.close()
        log.close()


def test_processes_opening_a_new_log_at_once_all_open_it(tmp_path: Path) -> None:
    """Replicas starting together over one data dir create the log at the same moment."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from service.answerlog import AnswerLog\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "AnswerLog(Path(sys.argv[1])).close()\n"
    )
    root = Path(__file__).resolve().parents[2]
    for round_ in range(4):
        path = tmp_path / f"round{round_}" / "answers.db"
        at = str(time.time() + 1.5)  # after every process has imported
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(path), at],
                cwd=root,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
