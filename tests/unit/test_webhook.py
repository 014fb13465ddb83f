"""Webhook output against a local http.server receiver: batches, headers,
retry with backoff on 5xx, fail fast on 4xx, and through the manager."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from bastion.outputs.base import OutputManager
from bastion.outputs.webhook import WebhookError, WebhookOutput
from support.samples import sample_alert, sample_events


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []    # queued answers; 200 when empty
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = rec.statuses.pop(0) if rec.statuses else 200
                if status == 200:
                    rec.bodies.append(json.loads(body))
                    rec.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_batches_and_headers(receiver: Receiver) -> None:
    out = WebhookOutput("w", receiver.url, headers={"Authorization": "Bearer t"}, max_batch=2)
    out.write([("alert", sample_alert()), ("event", sample_events()[0]), ("alert", sample_alert("low"))])
    assert [len(b) for b in receiver.bodies] == [2, 1]
    assert receiver.bodies[0][0]["kind"] == "alert" and receiver.bodies[0][0]["attack"][0] == "T1055"
    assert receiver.headers[0]["Authorization"] == "Bearer t"
    assert receiver.headers[0]["Content-Type"] == "application/json"


def test_retries_5xx_with_backoff(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    out = WebhookOutput("w", receiver.url, retries=3, backoff=0.05)
    t0 = time.monotonic()
    out.write([("alert", sample_alert())])
    assert time.monotonic() - t0 >= 0.05 + 0.1
    assert len(receiver.bodies) == 1


def test_gives_up_after_retries_and_on_4xx(receiver: Receiver) -> None:
    receiver.statuses = [503] * 3
    out = WebhookOutput("w", receiver.url, retries=2, backoff=0.01)
    with pytest.raises(WebhookError, match="3 attempt"):
        out.write([("alert", sample_alert())])
    receiver.statuses = [400]
    with pytest.raises(WebhookError, match="1 attempt"):
        out.write([("alert", sample_alert())])
    assert receiver.bodies == []


def test_unreachable_is_an_error() -> None:
    out = WebhookOutput("w", "http://127.0.0.1:9/x", retries=1, backoff=0.01, timeout=1)
    with pytest.raises(WebhookError):
        out.write([("alert", sample_alert())])


def test_through_the_manager_in_ocsf(receiver: Receiver) -> None:
    from bastion.outputs.formats import make_formatter

    mgr = OutputManager()
    mgr.add(WebhookOutput("w", receiver.url, fmt=make_formatter("ocsf", hostname="h", product_version="1")),
            events=False)
    mgr.start()
    mgr.publish_event(sample_events()[0])     # not for this output
    mgr.publish_alert(sample_alert())
    stats = mgr.close(5)
    assert stats["w"]["sent"] == 1
    [[finding]] = receiver.bodies
    assert finding["class_uid"] == 2004


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(receiver: Receiver, status: int) -> None:
    """A receiver that redirects: the batch fails (not counted as sent), and the other host
    gets neither the body nor the Authorization header."""
    other = Receiver()
    try:
        class Redirect(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(status)
                self.send_header("Location", other.url)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
        out = WebhookOutput("w", url, headers={"Authorization": "Bearer secret"}, retries=2,
                            backoff=0.01)
        with pytest.raises(WebhookError, match="redirects") as exc:
            out.write([("alert", sample_alert())])
        assert other.url in str(exc.value)
        assert other.bodies == [] and other.headers == []
        srv.shutdown()
        srv.server_close()
        out.close()
    finally:
        other.server.shutdown()
        other.server.server_close()
