"""Every field of every request body and query string has a bound (issue 14, item 2).

One walk over the app's OpenAPI schema finds each field of each operation; each must carry a
bound (maximum, maxLength, maxItems, maxProperties, enum or const; metadata's x-max-bytes;
booleans and uploaded bytes, bounded by the body limit, need none). A value at the bound passes
the route's own validation (checked on its body and query models, so nothing starts a job or
decodes 32k tokens); a value one past it is sent to the real app and must come back 422 naming
the field. Then the regressions the issue found by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.helpers import app_clients

Wrap = Callable[[Any], Any]
BOUND_KEYS = ("maximum", "exclusiveMaximum", "maxLength", "enum", "const")


@dataclass
class Leaf:
    """One field of one operation, and how to put a value for it in a request."""

    method: str
    path: str
    where: str  # json | multipart | query
    field: str  # dotted, [] for list items
    schema: dict[str, Any]
    wrap: Wrap  # the field's value -> the whole body (or query) around it

    @property
    def name(self) -> str:
        return next(p for p in reversed(self.field.split(".")) if p != "[]")

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path} {self.where}:{self.field}"


class Schema:
    """The app's OpenAPI document: resolving refs, minimal valid values, every field."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.doc
            for part in schema["$ref"].lstrip("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        schema = self.resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            options = schema.get("anyOf") or schema["oneOf"]
            found = [b for o in options for b in self.branches(o)]
            return [b for b in found if b.get("type") != "null"]
        return [schema]

    def minimal(self, schema: dict[str, Any]) -> Any:
        """A small value the schema accepts."""
        schema = self.branches(schema)[0]
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            return {k: self.minimal(props[k]) for k in schema.get("required", [])}
        if kind == "array":
            return [self.minimal(schema["items"])] * schema.get("minItems", 0)
        if kind == "string":
            return (
                "<binary>" if schema.get("format") == "binary" else "a" * schema.get("minLength", 1)
            )
        if kind in ("integer", "number"):
            if "default" in schema and schema["default"] is not None:
                return schema["default"]
            low = (
                schema["minimum"] if "minimum" in schema else schema.get("exclusiveMinimum", -1) + 1
            )
            return int(low) if kind == "integer" else low  # the schema may write 0 as 0.0
        return False if kind == "boolean" else None

    def leaves(self) -> Iterator[Leaf]:
        for path, ops in self.doc["paths"].items():
            for method, op in ops.items():
                for param in op.get("parameters", []):
                    if param["in"] == "query":
                        name = param["name"]
                        yield from self._walk(
                            Leaf(
                                method,
                                path,
                                "query",
                                name,
                                param["schema"],
                                lambda v, n=name: {n: v},
                            )
                        )
                content = op.get("requestBody", {}).get("content", {})
                for media, where in (
                    ("application/json", "json"),
                    ("multipart/form-data", "multipart"),
                ):
                    if media in content:
                        root = content[media]["schema"]
                        yield from self._walk(Leaf(method, path, where, "", root, lambda v: v))

    def _walk(self, leaf: Leaf) -> Iterator[Leaf]:
        for branch in self.branches(leaf.schema):
            here = Leaf(leaf.method, leaf.path, leaf.where, leaf.field, branch, leaf.wrap)
            props = branch.get("properties")
            if props is not None:
                for name, sub in props.items():
                    field = f"{leaf.field}.{name}" if leaf.field else name

                    def wrap(v: Any, b: dict = branch, n: str = name, w: Wrap = leaf.wrap) -> Any:
                        return w({**self.minimal(b), n: v})

                    yield from self._walk(
                        Leaf(leaf.method, leaf.path, leaf.where, field, sub, wrap)
                    )
                continue
            yield here
            if branch.get("type") == "array":
                for item in items_of(branch):
                    yield from self._walk(
                        Leaf(
                            leaf.method,
                            leaf.path,
                            leaf.where,
                            f"{leaf.field}.[]",
                            item,
                            lambda v, w=leaf.wrap, b=branch: w(
                                [v] * len(b.get("prefixItems", [0]))
                            ),
                        )
                    )

    def bounded(self, schema: dict[str, Any]) -> bool:
        """Whether every value the schema accepts is bounded in size."""
        branches = self.branches(schema)
        return bool(branches) and all(self._bounded(b) for b in branches)

    def _bounded(self, s: dict[str, Any]) -> bool:
        if any(k in s for k in ("enum", "const")) or s.get("type") in ("boolean", "null"):
            return True
        kind = s.get("type")
        if kind in ("integer", "number"):
            return "maximum" in s or "exclusiveMaximum" in s
        if kind == "string":
            return "maxLength" in s or binary(s)
        if kind == "array":
            return "maxItems" in s and all(self.bounded(item) for item in items_of(s))
        if "x-max-bytes" in s:  # metadata: bounded as JSON text (service.bounds.Metadata)
            return True
        if kind == "object" or "properties" in s:
            # no additionalProperties with properties: unknown fields are ignored, never read
            extra = s.get("additionalProperties", "properties" not in s)
            props = all(self.bounded(p) for p in s.get("properties", {}).values())
            if extra is False:
                return props
            return (
                props and "maxProperties" in s and isinstance(extra, dict) and self.bounded(extra)
            )
        return False


def binary(s: dict[str, Any]) -> bool:
    """An uploaded file's bytes (bounded by the body limit, as the whole request is)."""
    return s.get("format") == "binary" or "contentMediaType" in s


def items_of(s: dict[str, Any]) -> list[dict[str, Any]]:
    return list(s.get("prefixItems") or [s.get("items", {})])


def at_and_past(schema: Schema, s: dict[str, Any]) -> tuple[Any, Any] | None:
    """A value at the bound and one just past it; None where there is nothing to probe."""
    if "const" in s:
        return s["const"], f"not-{s['const']}"
    if "enum" in s:
        return s["enum"][0], "not-an-option"
    kind = s.get("type")
    if kind in ("integer", "number") and not ("maximum" in s or "exclusiveMaximum" in s):
        return None  # unbounded: the walk's first check lists it
    if kind == "integer":
        # the schema writes bounds as floats: past 2**53 they are exact only to a few units
        top = int(s["maximum"]) if "maximum" in s else int(s["exclusiveMaximum"]) - 1
        slack = 4096 if top > 2**53 else 0
        return top - slack, top + 1 + slack
    if kind == "number":
        if "maximum" in s:
            top = s["maximum"]
            return top, top + max(abs(top), 1) * 1e-3
        top = s["exclusiveMaximum"]
        return top - max(abs(top), 1) * 1e-6, top
    if kind == "string" and "maxLength" in s and not binary(s):
        return "a" * s["maxLength"], "a" * (s["maxLength"] + 1)
    if kind == "array" and "maxItems" in s:
        items = schema.branches(items_of(s)[0])[0]
        pool = items.get("enum") or [schema.minimal(items)]
        n = s["maxItems"]
        return [pool[i % len(pool)] for i in range(n)], [pool[i % len(pool)] for i in range(n + 1)]
    if "x-max-bytes" in s:  # {"k": "aaa"} is 9 bytes of JSON plus the string
        room = s["x-max-bytes"] - len(json.dumps({"k": ""}))
        return {"k": "a" * room}, {"k": "a" * (room + 1)}
    if kind == "object" and "maxProperties" in s:
        value = schema.minimal(s["additionalProperties"])
        n = s["maxProperties"]
        return {f"k{i}": value for i in range(n)}, {f"k{i}": value for i in range(n + 1)}
    return None


def names(body: dict[str, Any], name: str) -> bool:
    """Whether a 422 body names the field: in a validation error's location, or its message."""
    error = body.get("error", {})
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and name in [str(x) for x in detail.get("loc", [])]:
            return True
    text = json.dumps(error.get("details")) + " " + str(error.get("message", ""))
    return re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", text) is not None


def send(client: Any, leaf: Leaf, value: Any) -> Any:
    url = re.sub(r"\{[^}]+\}", "x", leaf.path)
    payload = leaf.wrap(value)
    if leaf.where == "query":
        return client.request(leaf.method, url, params=payload)
    if leaf.where == "json":
        return client.request(leaf.method, url, json=payload)
    files, data = [], {}
    for key, item in payload.items():
        parts = item if isinstance(item, list) else [item]
        if all(p == "<binary>" for p in parts):
            files += [(key, (f"f{i}.txt", b"x", "text/plain")) for i in range(len(parts))]
        else:
            data[key] = item
    return client.request(leaf.method, url, files=files, data=data)


def route_errors(app: Any, leaf: Leaf, value: Any) -> list[dict[str, Any]]:
    """The route's own validation of a request holding ``value`` (nothing runs)."""
    from fastapi.routing import iter_route_contexts  # included routers, with full paths

    route = next(
        c.route
        for c in iter_route_contexts(app.routes)
        if c.path_format == leaf.path and leaf.method.upper() in (c.methods or ())
    )
    payload = leaf.wrap(value)
    if leaf.where == "json":
        return list(route.body_field.validate(payload, {}, loc=("body",))[1] or [])

    def query_params(dependant: Any) -> Iterator[Any]:
        yield from dependant.query_params
        for sub in dependant.dependencies:
            yield from query_params(sub)

    errors: list[dict[str, Any]] = []
    for param in query_params(route.dependant):
        if param.alias in payload:
            errors += list(param.validate(payload[param.alias], {}, loc=("query",))[1] or [])
    return errors


@pytest.fixture
def client(tiny_llama: Path, tmp_path: Path) -> Iterator[Any]:
    with app_clients(tiny_llama, tmp_path) as make:
        yield make(Settings(generator=str(tiny_llama), auth_disabled=True))


def test_every_field_has_a_bound_that_holds_at_the_edge(client: Any) -> None:
    schema = Schema(client.get("/openapi.json").json())
    leaves = list(schema.leaves())
    fields = {leaf.field.split(".")[-1] for leaf in leaves}
    assert {"seed", "resamples", "rank", "max_steps", "filters", "stop", "offset"} <= fields
    unbounded = sorted({leaf.label for leaf in leaves if not schema.bounded(leaf.schema)})
    assert unbounded == [], "fields with no bound:\n" + "\n".join(unbounded)

    wrong: list[str] = []
    probed = 0
    for leaf in leaves:
        values = at_and_past(schema, leaf.schema)
        if values is None:
            continue
        at, past = values
        probed += 1
        if leaf.where != "multipart":
            refused = [
                e for e in route_errors(client.app, leaf, at) if leaf.name in map(str, e["loc"])
            ]
            if refused:
                wrong.append(f"{leaf.label}: refused at its bound: {refused[0]['msg']}")
        r = send(client, leaf, past)
        if r.status_code != 422 or not names(r.json(), leaf.name):
            wrong.append(f"{leaf.label}: past its bound got {r.status_code} {r.text[:200]}")
    assert probed >= 60
    assert wrong == [], "\n".join(wrong)


def test_the_values_the_issue_found_are_422_naming_the_field(client: Any) -> None:
    chat = {"model": client.app.state.ragtune.settings.generator, "max_tokens": 2}
    chat |= {"retrieval": False, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ("/v1/chat/completions", {**chat, "seed": 18446744073709551616}, "seed"),
        ("/v1/chat/completions", {**chat, "stop": ["x"] * 90_000}, "stop"),
        ("/v1/chat/completions", {**chat, "stop": ["x" * 65]}, "stop"),
        ("/v1/eval/runs", {"dataset": "file-x", "resamples": 10**15}, "resamples"),
        ("/v1/tune/jobs", {"dataset": "file-x", "hyperparameters": {"rank": 1e9}}, "rank"),
        (
            "/v1/tune/jobs",
            {"dataset": "file-x", "hyperparameters": {"max_steps": 1e12}},
            "max_steps",
        ),
        ("/v1/search", {"query": "apt", "filters": {"tags": [["apt"]]}}, "filters"),
        ("/v1/query", {"question": "apt", "filters": {"tags": [["apt"]]}}, "filters"),
    ]
    for url, body, field in cases:
        r = client.post(url, json=body)
        assert r.status_code == 422 and names(r.json(), field), (url, field, r.text[:300])
    # a seed at the bound is served
    ok = client.post("/v1/chat/completions", json={**chat, "seed": 2**63 - 1})
    assert ok.status_code == 200, ok.text
    for offset in (10**9, 10**18, 2**63):
        r = client.get("/v1/documents", params={"offset": offset})
        assert r.status_code in (200, 422), (offset, r.text)
        assert r.status_code == 422 or r.json()["documents"] == []


def test_a_sampling_seed_is_any_signed_64_bit_integer(client: Any) -> None:
    """OpenAI clients may send a negative seed, and the engine takes one; a bootstrap seed
    (numpy's) is never negative."""
    chat = {"model": client.app.state.ragtune.settings.generator, "max_tokens": 2}
    chat |= {"retrieval": False, "messages": [{"role": "user", "content": "hi"}]}
    for seed in (-1, -(2**63)):
        r = client.post("/v1/chat/completions", json={**chat, "seed": seed})
        assert r.status_code == 200, (seed, r.text)
    r = client.post("/v1/chat/completions", json={**chat, "seed": -(2**63) - 1})
    assert r.status_code == 422 and names(r.json(), "seed"), r.text
    r = client.post("/v1/eval/runs", json={"dataset": "file-x", "seed": -1})
    assert r.status_code == 422 and names(r.json(), "seed"), r.text
