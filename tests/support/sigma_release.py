"""A SigmaHQ-shaped release served from a local HTTP server, for ``bastion sigma update`` tests.

``release_zip`` packs corpus rules the way SigmaHQ's release workflow does
(``rules/linux/...`` at the archive root, no licence file), plus one Windows
rule that an install must leave out.  ``ReleaseServer`` is a loopback HTTP
server answering fixed routes (the GitHub releases API JSON, assets,
redirects) and recording every request's headers.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "sigma"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/sigma")

WINDOWS_RULE = """title: Not a Linux rule
id: 0d2b6f5a-1111-4222-8333-944445555666
status: test
author: Somebody
logsource:
    product: windows
    category: process_creation
detection:
    selection:
        Image|endswith: '\\\\cmd.exe'
    condition: selection
level: low
"""


def corpus_linux_rules() -> list[Path]:
    return sorted((CORPUS / "rules" / "linux").rglob("*.yml"))


def release_zip(dest: Path, rules: list[Path] | None = None, *, extra: dict[str, bytes] | None = None) -> Path:
    """A zip laid out like SigmaHQ's release assets (paths relative to the repo root)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in rules if rules is not None else corpus_linux_rules():
            zf.write(p, p.relative_to(CORPUS).as_posix())
        zf.writestr("rules/windows/process_creation/proc_creation_win_not_linux.yml", WINDOWS_RULE)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0            # seconds between 1 KiB pieces of the body (a slow server)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class ReleaseServer:
    """``with ReleaseServer() as srv: srv.routes["/x"] = Route(...)``; ``srv.base`` is its URL."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
                r = outer.routes.get(self.path, Route(404, b'{"message": "Not Found"}'))
                self.send_response(r.status)
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                if not r.trickle:
                    self.wfile.write(r.body)
                    return
                for i in range(0, len(r.body), 1024):
                    time.sleep(r.trickle)
                    try:
                        self.wfile.write(r.body[i:i + 1024])
                        self.wfile.flush()
                    except OSError:         # the client gave up: what the test wants
                        return

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # a short poll: shutdown() waits for the serving loop's next poll (0.5 s by default)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> ReleaseServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def publish(self, tag: str, assets: dict[str, Path], *, digest: bool = True,
                asset_base: str | None = None, digest_override: str | None = None) -> str:
        """Serve a GitHub-shaped ``releases/latest`` (and ``tags/<tag>``) naming ``assets``."""
        base = asset_base or self.base
        entries = []
        for name, path in assets.items():
            url_path = f"/SigmaHQ/sigma/releases/download/{tag}/{name}"
            self.routes[url_path] = Route(body=path.read_bytes(),
                                          headers={"Content-Type": "application/octet-stream"})
            entries.append({
                "name": name, "size": path.stat().st_size, "content_type": "application/zip",
                "browser_download_url": base + url_path,
                "digest": (digest_override or f"sha256:{sha256(path)}") if digest else None,
            })
        body = json.dumps({"tag_name": tag, "name": f"Release {tag}", "assets": entries}).encode()
        for p in ("/repos/SigmaHQ/sigma/releases/latest", f"/repos/SigmaHQ/sigma/releases/tags/{tag}"):
            self.routes[p] = Route(body=body, headers={"Content-Type": "application/json"})
        return base + f"/SigmaHQ/sigma/releases/download/{tag}/"
