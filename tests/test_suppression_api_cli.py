"""Suppression lists by hand (issue 6): the CLI and the API (token-scoped), on a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.cli import build_cli
from bouncetrack.core.config import Config
from bouncetrack.store import open_store
from bouncetrack.store.views import Suppression
from bouncetrack.core.tokens import hash_api_token
from tests.configkit import write_config

DAY = 86400.0


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(
        tmp_path,
        f"""\
            domains:
              a.test: {{tracking: true, api_tokens: ["{hash_api_token('tok-a')}", "{hash_api_token('tok-ab')}"]}}
              b.test: {{tracking: true, api_tokens: ["{hash_api_token('tok-ab')}"]}}
              c.test: {{tracking: true}}
        """,
    )


def seed(config: Config) -> None:
    store = open_store(config.store_url)
    now = time.time()
    store.add_suppressions([
        Suppression("a.test", "x@remote.test", "hard_bounce", "ev1", now, now + 30 * DAY),
        Suppression("b.test", "x@remote.test", "complaint", "ev2", now, None),
        Suppression("c.test", "x@remote.test", "manual", None, now, None),
        Suppression("a.test", "old@remote.test", "manual", None, now - 10 * DAY, now - DAY),
    ])
    store.close()


# ------------------------------------------------------------------------ CLI


def cli(config: Config, *args: str) -> Any:
    return CliRunner().invoke(build_cli(), ["suppression", *args[:1], "--config", str(config.path), *args[1:]])


def test_cli_add_list_remove(config: Config) -> None:
    r = cli(config, "add", "--domain", "A.test", "--reason", "asked to", "--expire-days", "2", "Y@Remote.test", "z@remote.test")
    assert r.exit_code == 0, r.output
    assert "added 2 to a.test" in r.output
    r = cli(config, "list")
    assert r.exit_code == 0
    header, *rows = r.output.strip().splitlines()
    assert header.split("\t") == ["DOMAIN", "ADDRESS", "REASON", "LISTED", "EXPIRES", "STATE", "SOURCE_EVENT"]
    lines = [line.split("\t") for line in rows]
    assert [(f[0], f[1], f[2], f[5]) for f in lines] == [
        ("a.test", "y@remote.test", "asked to", "active"), ("a.test", "z@remote.test", "asked to", "active")]
    r = cli(config, "remove", "y@remote.test", "nobody@remote.test")
    assert r.exit_code == 0 and "removed y@remote.test from a.test" in r.output
    assert "not listed: nobody@remote.test" in r.output
    assert [line.split("\t")[1] for line in cli(config, "list", "--no-header").output.strip().splitlines()] == [
        "z@remote.test"]
    r = cli(config, "list", "--all", "--no-header", "y@remote.test")
    assert r.output.split("\t")[5] == "removed"
    assert cli(config, "remove", "y@remote.test").exit_code == 1  # already gone
    assert cli(config, "add", "--domain", "a.test", "not-an-address").exit_code == 1


def test_cli_remove_scoped_by_domain_and_expired_entries_hidden(config: Config) -> None:
    seed(config)
    listed = cli(config, "list", "--domain", "a.test").output
    assert "x@remote.test" in listed and "old@remote.test" not in listed  # expired
    assert "\texpired\t" in cli(config, "list", "--all", "--domain", "a.test", "old@remote.test").output
    r = cli(config, "remove", "--domain", "b.test", "x@remote.test")
    assert r.exit_code == 0 and r.output.strip() == "removed x@remote.test from b.test"
    domains = sorted(line.split("\t")[0]
                     for line in cli(config, "list", "--no-header", "x@remote.test").output.strip().splitlines())
    assert domains == ["a.test", "c.test"]


def test_cli_add_refuses_a_domain_no_list_is_read_for(config: Config, tmp_path: Path) -> None:
    r = cli(config, "add", "--domain", "typo.test", "x@remote.test")
    assert r.exit_code == 1
    assert "typo.test is not a configured domain (domains: a.test, b.test, c.test)" in r.output
    assert "nothing would ever read this list" in r.output
    assert "x@remote.test" not in cli(config, "list").output
    # With the default entry's policy on, every domain's list is read: accepted.
    on = write_config(tmp_path, "domains:\n  default:\n    suppression: {policy: reject}\n", name="on.yaml")
    assert cli(on, "add", "--domain", "typo.test", "x@remote.test").exit_code == 0


# ------------------------------------------------------------------------ API


@pytest.fixture()
def client(config: Config) -> Iterator[TestClient]:
    seed(config)
    with TestClient(create_app(config)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_requires_a_token(client: TestClient) -> None:
    assert client.get("/v1/suppressions").status_code == 401
    assert client.get("/v1/suppressions", headers=auth("wrong")).status_code == 401
    assert client.post("/v1/suppressions", json={"addresses": ["a@b.test"]}).status_code == 401
    assert client.delete("/v1/suppressions/x@remote.test").status_code == 401


def test_api_list_is_scoped_to_the_token(client: TestClient) -> None:
    r = client.get("/v1/suppressions", headers=auth("tok-a"))
    assert r.status_code == 200
    body = r.json()
    assert [(s["domain"], s["address"], s["reason"], s["active"]) for s in body["suppressions"]] == [
        ("a.test", "x@remote.test", "hard_bounce", True)]
    assert body["suppressions"][0]["source_event_id"] == "ev1" and body["suppressions"][0]["expires_at"].endswith("Z")
    both = client.get("/v1/suppressions", headers=auth("tok-ab")).json()
    assert sorted(s["domain"] for s in both["suppressions"]) == ["a.test", "b.test"]  # never c.test
    r = client.get("/v1/suppressions", headers=auth("tok-a"), params={"domain": "c.test"})
    assert r.status_code == 403 and r.json()["parameter"] == "domain"
    every = client.get("/v1/suppressions", headers=auth("tok-a"), params={"state": "all"}).json()
    assert {s["address"]: s["active"] for s in every["suppressions"]} == {"x@remote.test": True, "old@remote.test": False}
    one = client.get("/v1/suppressions", headers=auth("tok-ab"), params={"address": "X@Remote.TEST", "domain": "b.test"})
    assert [s["domain"] for s in one.json()["suppressions"]] == ["b.test"]


def test_api_pages_with_a_cursor(client: TestClient) -> None:
    for i in range(5):
        assert client.post("/v1/suppressions", headers=auth("tok-a"), json={"addresses": [f"p{i}@remote.test"]}).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/suppressions", headers=auth("tok-a"), params=params).json()
        seen += [s["address"] for s in body["suppressions"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["x@remote.test", *[f"p{i}@remote.test" for i in range(5)]]
    assert client.get("/v1/suppressions", headers=auth("tok-a"), params={"cursor": "x1"}).status_code == 400


def test_api_add(client: TestClient, config: Config) -> None:
    r = client.post("/v1/suppressions", headers=auth("tok-a"),
                    json={"addresses": ["New@Remote.test", "new@remote.test"], "reason": "user asked", "expire_days": 10})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["added"] == 1 and body["suppressions"][0]["address"] == "new@remote.test"
    store = open_store(config.store_url)
    (entry,) = store.suppressions(["a.test"], time.time(), address="new@remote.test")
    assert entry.reason == "user asked" and entry.expires_at == pytest.approx(time.time() + 10 * DAY, abs=60)
    store.close()
    # Several domains in scope: name one; outside the scope: 403; bad input: 400 naming it.
    r = client.post("/v1/suppressions", headers=auth("tok-ab"), json={"addresses": ["n@remote.test"]})
    assert r.status_code == 400 and r.json()["parameter"] == "domain"
    assert client.post("/v1/suppressions", headers=auth("tok-ab"),
                       json={"addresses": ["n@remote.test"], "domain": "B.test"}).status_code == 201
    assert client.post("/v1/suppressions", headers=auth("tok-a"),
                       json={"addresses": ["n@remote.test"], "domain": "c.test"}).status_code == 403
    r = client.post("/v1/suppressions", headers=auth("tok-a"), json={"addresses": ["ok@remote.test", "broken"]})
    assert r.status_code == 400 and r.json()["parameter"] == "addresses[1]"
    r = client.post("/v1/suppressions", headers=auth("tok-a"), json={"addresses": []})
    assert r.status_code == 400 and r.json()["parameter"] == "addresses"


def test_api_delete_is_scoped(client: TestClient, config: Config) -> None:
    r = client.delete("/v1/suppressions/X@remote.test", headers=auth("tok-a"))
    assert r.status_code == 200 and r.json() == {"removed": 1, "domains": ["a.test"]}
    assert client.delete("/v1/suppressions/x@remote.test", headers=auth("tok-a")).status_code == 404
    r = client.delete("/v1/suppressions/x@remote.test", headers=auth("tok-ab"))
    assert r.json() == {"removed": 1, "domains": ["b.test"]}
    store = open_store(config.store_url)
    left = store.suppressions(None, time.time(), address="x@remote.test")
    assert [s.domain for s in left] == ["c.test"]  # outside every token's scope: untouched
    store.close()
    assert client.delete("/v1/suppressions/x@remote.test", headers=auth("tok-a"),
                         params={"domain": "c.test"}).status_code == 403


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/suppressions"]) == {"get", "post"}
    assert "delete" in paths["/v1/suppressions/{address}"]
    schema = paths["/v1/suppressions"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/SuppressionPage")


def test_every_router_answers_an_error_alike(client: TestClient) -> None:
    """One error body for the /v1/ routers (api/deps.error_response), each router's headers kept."""
    h = auth("tok-a")  # a.test only
    answers = {
        "suppressions": client.get("/v1/suppressions", params={"domain": "b.test"}, headers=h),
        "forget": client.delete("/v1/addresses/x@remote.test", params={"domain": "b.test"}, headers=h),
        "download": client.get("/v1/bounces/2026-01-01/2026-01-02", params={"domain": "b.test"}, headers=h),
        "validate": client.post("/v1/addresses/validate", json={"addresses": ["x@remote.test"], "domain": "b.test"},
                                headers=h),
    }
    for name, r in answers.items():
        assert r.status_code == 403, (name, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"detail", "parameter"} and body["parameter"] == "domain", (name, body)
    for name in ("suppressions", "forget", "download"):
        assert answers[name].headers["cache-control"] == "no-store", name
    assert answers["download"].headers["vary"] == "Accept, Authorization"
    # One scope check (api/auth.token_scope): the same refusal everywhere, and the same 400 for no domain.
    assert {r.json()["detail"] for r in answers.values()} == {"domain: 'b.test' is not among this token's domains"}
    bad = [client.get("/v1/suppressions", params={"domain": "-x-"}, headers=h),
           client.delete("/v1/addresses/x@remote.test", params={"domain": "-x-"}, headers=h),
           client.get("/v1/bounces/2026-01-01/2026-01-02", params={"domain": "-x-"}, headers=h),
           client.post("/v1/addresses/validate", json={"addresses": ["x@remote.test"], "domain": "-x-"}, headers=h)]
    assert [r.status_code for r in bad] == [400] * 4, [r.text for r in bad]
    assert len({r.json()["detail"] for r in bad}) == 1 and bad[0].json()["parameter"] == "domain"
