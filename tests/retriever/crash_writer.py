"""A writer process for the crash test: random writes, each announced before and acknowledged
after, one JSON line each, flushed. The test SIGKILLs it at random moments."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retriever.config import RetrieverConfig  # noqa: E402
from retriever.index import DocumentIn, Retriever  # noqa: E402
from tests.fakes import FakeEmbedder  # noqa: E402


def main(folder: str, seed: int, start: int) -> None:
    rng = random.Random(seed)
    r = Retriever(Path(folder), FakeEmbedder(dim=128), RetrieverConfig(snapshot_every=7))
    live = {d.id for d in r.store.documents(0, 10**6)}
    n = start
    while True:
        op = rng.choice(["add", "add", "update", "delete"]) if live else "add"
        doc_id = f"doc{n}" if op == "add" else rng.choice(sorted(live))
        text = f"unique{n} " + " ".join(f"filler{rng.randrange(50)}" for _ in range(30))
        print(json.dumps({"phase": "start", "op": op, "id": doc_id, "text": text}), flush=True)
        if op == "delete":
            r.delete([doc_id])
            live.discard(doc_id)
        else:
            r.upsert(DocumentIn(text, id=doc_id))
            live.add(doc_id)
        print(json.dumps({"phase": "ack", "op": op, "id": doc_id, "text": text}), flush=True)
        n += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
