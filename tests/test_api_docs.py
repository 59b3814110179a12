"""The API's own documentation on a real daemon: /docs from local files, an OpenAPI document that
groups and describes every route and its errors, and request examples the API really accepts."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

from pydantic import BaseModel

from sendguard.http.docs import Tag
from sendguard.http.errors import CodedErrorOut, ErrorOut, ForbiddenOut, InvalidOut
from tests.conftest import Api, Daemon
from tests.peers import DnsServer

ClientFor = Callable[..., Api]
# A mass send at 2 messages, so the batch example opens an approval request the decisions can name.
RULES = '[ingress]\nrecipient_cooldown = "0s"\n\n[approvals]\nmass_send_threshold = 2\n'
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
ERROR_MODELS: dict[str, type[BaseModel]] = {
    "401": ErrorOut,
    "403": ForbiddenOut,
    "404": ErrorOut,
    "409": ErrorOut,
    "413": CodedErrorOut,
    "422": InvalidOut,
    "503": CodedErrorOut,
}
# The errors particular to a route, beyond what every /v1 route and every body can answer.
OWN_ERRORS = {
    ("get", "/v1/messages/{message_id}"): {"404"},
    ("post", "/v1/messages/{message_id}/cancel"): {"404", "409"},
    ("post", "/v1/batches"): {"409"},
    ("post", "/v1/events"): {"404", "409"},
    ("get", "/v1/inbound/unparsed/{kept_as}"): {"404"},
    ("delete", "/v1/safe-mode/{scope}"): {"404"},
    ("delete", "/v1/suppressions/{entry}"): {"404"},
    ("get", "/v1/approvals/{approval_id}"): {"404"},
    ("post", "/v1/approvals/{approval_id}/approve"): {"404", "409"},
    ("post", "/v1/approvals/{approval_id}/deny"): {"404", "409"},
    ("get", "/v1/audit"): {"409"},
    ("post", "/v1/rules/reload"): {"422"},
    ("get", "/readyz"): {"503"},
}
# Who posts each route's examples, in this order: the batch opens the request the approvers decide.
EXAMPLE_POSTERS = {
    "/v1/messages": ("agent", "sdr-bot"),
    "/v1/batches": ("agent", "sdr-bot"),
    "/v1/recipients/check": ("agent", "sdr-bot"),
    "/v1/events": ("operator", "oncall"),
    "/v1/approvals/{approval_id}/approve": ("approver", "dana", "--group", "ops"),
    "/v1/approvals/{approval_id}/deny": ("approver", "finn", "--group", "legal"),
    "/v1/safe-mode": ("operator", "oncall"),
    "/v1/alerts": ("operator", "oncall"),
    "/v1/recall": ("operator", "oncall"),
    "/v1/suppressions": ("admin", "root"),
}


class _Urls(HTMLParser):
    """Every URL a page makes the browser load: src and href attributes, and strings in its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_script = tag == "script"
        self.loaded += [value for name, value in attrs if name in ("src", "href") and value is not None]

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.loaded += re.findall(r"""\burl:\s*['"]([^'"]+)""", data)


def test_docs_load_only_from_the_daemon_itself(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(RULES)
    page = daemon.http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"validatorUrl": null' in page.text  # Swagger UI's validator badge is an image from swagger.io
    absolute = re.findall(r"https?://[^\s'\"<>]+", page.text)
    assert all(url.startswith(daemon.base) for url in absolute), absolute
    parser = _Urls()
    parser.feed(page.text)
    assets = [url for url in parser.loaded if not url.endswith(".json")]
    assert len(assets) == 3 and all(url.startswith("/docs/assets/") for url in assets), parser.loaded
    assert "/openapi.json" in parser.loaded
    for url in assets:
        served = daemon.http.get(url)
        assert served.status_code == 200, url
        expected = CONTENT_TYPES[url[url.rindex(".") :]]
        assert served.headers["content-type"].startswith(expected), (url, served.headers["content-type"])
        assert served.content, url


def test_every_route_is_grouped_described_and_documents_its_errors(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    document = daemon.http.get("/openapi.json").json()
    assert [tag["name"] for tag in document["tags"]] == [tag.value for tag in Tag]
    assert "HTTPValidationError" not in document["components"]["schemas"], "FastAPI's 422, not ours"
    seen = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            seen.add((method, path))
            assert operation.get("tags") and set(operation["tags"]) <= set(Tag), where
            assert operation.get("summary") and operation.get("description"), where
            errors = {code for code in operation["responses"] if code[0] in "45"}
            expected = set(OWN_ERRORS.get((method, path), set()))
            if path.startswith("/v1/"):
                expected |= {"401", "403", "503"}
            if "requestBody" in operation:
                expected |= {"413", "422"}
            if operation.get("parameters"):
                expected.add("422")
            assert errors == expected, where
            own_body = {"503"} if path == "/readyz" else set()  # readiness answers in its own words
            for code in errors - own_body:
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{ERROR_MODELS[code].__name__}"}, (
                    where,
                    code,
                )
    assert set(OWN_ERRORS) <= seen, set(OWN_ERRORS) - seen

    # The bodies are the ones documented: each error, met for real, reads as its model.
    agent = client_for(daemon, "agent", "sdr-bot")
    with daemon.client() as stranger:
        met = {"401": stranger.get("/v1/safe-mode")}
    met["403"] = agent.client.get("/v1/suppressions")
    met["404"] = agent.client.get("/v1/messages/0192a3b4c5d6e7f8a9b0c1d")
    met["413"] = agent.client.post("/v1/messages", content=b"{" * 2_000_000)
    met["422"] = agent.client.post("/v1/messages", json={"to": "x"})
    for code, response in met.items():
        assert str(response.status_code) == code, response.text
        ERROR_MODELS[code].model_validate(response.json(), strict=True)
    assert InvalidOut.model_validate(met["422"].json()).errors, "the form's 422 names every field"


def test_every_documented_request_example_is_accepted(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer
) -> None:
    for domain in ("initech.example", "globex.example"):  # the batch example's recipients
        dns_server.add_mx_domain(domain)
    daemon = make_daemon(RULES)
    document = daemon.http.get("/openapi.json").json()
    examples = _request_examples(document)
    assert set(examples) == set(EXAMPLE_POSTERS), "every route with an example is posted below"
    approval_id = ""
    for path, poster in EXAMPLE_POSTERS.items():
        api = client_for(daemon, *poster)
        for example in examples[path]:
            answer = api.client.post(path.replace("{approval_id}", approval_id), json=example)
            assert 200 <= answer.status_code < 300, (path, example, answer.text)
            if path == "/v1/batches":
                assert answer.json()["approval"], "the batch example waits for approval"
                approval_id = answer.json()["approval"]["id"]


def _request_examples(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The examples of every JSON request body, by path."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            name = body["schema"]["$ref"].rpartition("/")[2]
            schema = document["components"]["schemas"][name]
            assert schema.get("examples"), f"{path}: {name} has no examples"
            found[path] = schema["examples"]
    return found
