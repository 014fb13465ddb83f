"""SigmaHQ's published Linux rules, installed into the data dir (``bastion sigma update``).

Layout under ``<data_dir>/sigma/``::

    releases/<release-id>/         one complete installed set (never edited in place)
        rules/linux/**.yml         the Linux rules, SigmaHQ's relative paths kept
        rules-emerging-threats/linux/**.yml   (when the source has them)
        LICENSE*                   the source's licence files, when it has them
        NOTICE                     the DRL 1.1 notice (:data:`DRL_NOTICE`)
        bastion-sigma.json         the manifest: release, source, sha256, counts
    current  -> releases/<id>      the live set (a symlink swapped with rename(2))
    previous -> releases/<id>      the set it replaced, kept for ``rollback``
    .lock                          one update at a time (flock)

An update stages the new set in ``releases/.staging-*``, loads it with
:func:`bastion.detect.sigma.load_sigma` and refuses it when the source is not a
safe archive/tree, holds no Linux rule, or loads no rule at all; only then is it
renamed into place and ``current`` swapped.  So ``current`` always names a set
that loaded, a failed update leaves the live set untouched, and at most two sets
are kept (current and previous); anything else (older sets, stale stagings of a
crashed update) is removed by the next update.

Sources:

- **GitHub release** (default): ``GET <api>/repos/SigmaHQ/sigma/releases/latest``
  (or ``/releases/tags/<tag>``) names the asset (default :data:`DEFAULT_ASSET`,
  the set SigmaHQ recommends to start with) and its ``digest``
  (``sha256:<hex>``).  The download is verified against that digest and
  against an explicit ``sha256`` pin when given; with neither it is refused
  unless ``allow_unverified``.
- **Archive URL** (a URL whose path ends in ``.zip``, ``.tar.gz``, ``.tgz``,
  ``.tar.xz``, ``.tar``): needs a ``sha256`` pin or ``allow_unverified``.
- **Local** (``--from``): a directory holding ``rules/linux`` (a SigmaHQ
  checkout, an unpacked release) or an archive file.

Transport rules: ``https`` everywhere; plain ``http`` only to a loopback host
(127.0.0.0/8, ::1, ``localhost``: local mirrors and the tests).  Redirects are
followed by hand, at most :attr:`Limits.max_redirects`, never from https to
http; the ``Authorization`` header (a GitHub token, when given) goes only to the
origin (scheme, host, port) of the API URL, never to a redirect target or asset
host elsewhere.  Timeouts and a download size cap bound every request.

Archive safety: an archive is attacker-controlled input.  Extraction never uses
``extractall``: every member name is checked (no absolute path, drive letter,
backslash, NUL or ``..``), symlinks, hard links, devices, FIFOs, sparse and
encrypted members refuse the whole archive, and the member count, each kept
file's size and the total extracted bytes are bounded (:class:`Limits`) while
reading, not from the archive's own claims.  Only Linux rules and licence
files are kept.

The queries :func:`installed_rules_dir` and :func:`installed_info` read the
symlink and the manifest only (no pySigma import): cheap enough for ``status``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import io
import ipaddress
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Final, Iterator
from urllib.parse import urlsplit

from bastion.errors import BastionError, Location

if TYPE_CHECKING:
    import httpx

SIGMA_REPO: Final = "SigmaHQ/sigma"
RULESET_URL: Final = "https://github.com/SigmaHQ/sigma"
DRL_URL: Final = "https://github.com/SigmaHQ/Detection-Rule-License"
DEFAULT_API: Final = "https://api.github.com"
DEFAULT_ASSET: Final = "sigma_core.zip"
DRL_NOTICE: Final = (
    f"Sigma rules from SigmaHQ ({RULESET_URL}) are under the Detection Rule License (DRL) 1.1 "
    f"({DRL_URL}); each alert raised by one keeps the rule's author.")
INSTALL_HINT: Final = ("install SigmaHQ's Linux rules with 'bastion sigma update' "
                       "(offline: 'bastion sigma update --from DIR|ARCHIVE')")

MANIFEST: Final = "bastion-sigma.json"
NOTICE: Final = "NOTICE"
MANIFEST_FORMAT: Final = 1
_ARCHIVE_SUFFIXES: Final = (".zip", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar")
_RULES_TOP: Final = re.compile(r"rules(?:-[a-z0-9-]+)?")     # rules, rules-emerging-threats, ...
_LICENSE: Final = re.compile(r"LICEN[CS]E(?:\.[A-Za-z0-9.]+)?")  # LICENSE, LICENSE.Detection.Rules.md
_RULE_SUFFIXES: Final = (".yml", ".yaml")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_SLUG: Final = re.compile(r"[^A-Za-z0-9._-]+")
_TAG: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")     # a release tag we accept


# ---------------------------------------------------------------- errors

class SigmaInstallError(BastionError):
    """A Sigma rule set could not be installed; the live set is unchanged."""


class SigmaDownloadError(SigmaInstallError):
    """Fetching the release or its asset failed (network, HTTP status, transport rule)."""


class SigmaChecksumError(SigmaDownloadError):
    """The download does not match its checksum, or no checksum is available."""


class SigmaArchiveError(SigmaInstallError):
    """The archive or directory is unsafe, malformed, too large, or holds no Linux rule."""


# ---------------------------------------------------------------- limits and results

@dataclass(frozen=True)
class Limits:
    """Bounds on what one update may fetch and unpack."""

    max_download: int = 64 << 20        # bytes of the archive (sigma_all_rules.zip is ~2 MiB)
    max_json: int = 4 << 20             # bytes of the release JSON
    max_members: int = 50_000           # entries in an archive
    max_file: int = 4 << 20             # bytes of one kept file
    max_total: int = 256 << 20          # bytes extracted in all
    max_redirects: int = 5
    timeout: float = 30.0               # seconds per connect/read/write
    deadline: float = 600.0             # seconds for all the requests of one update


@dataclass(frozen=True)
class Fetched:
    """A downloaded archive and what vouches for it."""

    path: Path
    sha256: str
    release: str           # the release tag, or the archive's file name
    source: str            # the URL it came from
    verified: str          # "github-digest", "pinned", "github-digest+pinned", "unverified"


@dataclass
class InstallResult:
    """What an update did."""

    release: str
    release_id: str
    source: str
    sha256: str
    verified: str
    path: Path
    rules: int
    unsupported: int
    errors: list[str] = field(default_factory=list)
    files: int = 0
    previous: str | None = None
    already_current: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "release_id": self.release_id, "source": self.source,
                "sha256": self.sha256, "verified": self.verified, "path": str(self.path),
                "rules": self.rules, "unsupported": self.unsupported, "errors": list(self.errors),
                "files": self.files, "previous": self.previous,
                "already_current": self.already_current, "notice": DRL_NOTICE}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InstallResult:
        return cls(release=str(d["release"]), release_id=str(d["release_id"]),
                   source=str(d["source"]), sha256=str(d["sha256"]), verified=str(d["verified"]),
                   path=Path(str(d["path"])), rules=int(d["rules"]),
                   unsupported=int(d["unsupported"]), errors=[str(e) for e in d["errors"]],
                   files=int(d["files"]), previous=d.get("previous"),
                   already_current=bool(d.get("already_current")))


# ---------------------------------------------------------------- cheap queries

def sigma_root(data_dir: Path) -> Path:
    return data_dir / "sigma"


def _release_of(root: Path, link: str) -> Path | None:
    """The release directory a link names, when it is a complete installed set."""
    try:
        target = os.readlink(root / link)
    except OSError:
        return None
    path = (root / target).resolve()
    releases = (root / "releases").resolve()
    if path.parent != releases or not (path / MANIFEST).is_file():
        return None
    return path


def installed_rules_dir(data_dir: Path) -> Path | None:
    """The live installed rule set (pass it to ``load_sigma([dir])``), or None.

    The returned path is the resolved release directory, so a concurrent
    update swapping ``current`` does not change what a caller loads."""
    return _release_of(sigma_root(data_dir), "current")


def _read_manifest(release_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((release_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SigmaInstallError(f"unreadable manifest of an installed Sigma rule set: {exc}",
                                location=Location(str(release_dir / MANIFEST))) from exc
    if not isinstance(data, dict):
        raise SigmaInstallError("manifest of an installed Sigma rule set is not an object",
                                location=Location(str(release_dir / MANIFEST)))
    return data


def _int(m: dict[str, Any], key: str) -> int:
    v = m.get(key, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def installed_info(data_dir: Path) -> dict[str, Any]:
    """What is installed, from the manifest (no pySigma import).

    Keys: ``installed`` (bool); when true ``rules`` (loaded at install),
    ``unsupported``, ``errors``, ``files``, ``release``, ``release_id``,
    ``source``, ``sha256``, ``verified``, ``installed_at``, ``path``,
    ``notice`` and ``previous`` (release of the rollback set or None); when
    false ``hint`` says how to install them."""
    root = sigma_root(data_dir)
    cur = _release_of(root, "current")
    if cur is None:
        return {"installed": False, "rules": 0, "hint": INSTALL_HINT}
    m = _read_manifest(cur)
    prev = _release_of(root, "previous")
    prev_release = None
    if prev is not None and prev != cur:
        try:
            prev_release = str(_read_manifest(prev).get("release", prev.name))
        except SigmaInstallError:
            prev_release = None
    return {
        "installed": True,
        "rules": _int(m, "rules"),
        "unsupported": _int(m, "unsupported"),
        "errors": _int(m, "errors"),
        "files": _int(m, "files"),
        "release": str(m.get("release", "")),
        "release_id": cur.name,
        "source": str(m.get("source", "")),
        "sha256": str(m.get("sha256", "")),
        "verified": str(m.get("verified", "")),
        "installed_at": str(m.get("installed_at", "")),
        "path": str(cur),
        "notice": DRL_NOTICE,
        "previous": prev_release,
    }


def describe_installed(info: dict[str, Any]) -> str:
    """One line for ``status``: how many rules are installed, or how to install them."""
    if not info.get("installed"):
        return f"no Sigma rules installed: {info.get('hint', INSTALL_HINT)}"
    return (f"{info['rules']} SigmaHQ Linux rules installed (release {info['release']}, "
            f"{info['unsupported']} unsupported, installed {info['installed_at']})")


# ---------------------------------------------------------------- transport

def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, previous: str | None = None) -> None:
    """Refuse a URL the transport rules do not allow (see the module doc)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise SigmaDownloadError("credentials in a URL are refused", location=Location(url))
    if not host:
        raise SigmaDownloadError("URL without a host", location=Location(url))
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        if previous is not None and urlsplit(previous).scheme == "https":
            raise SigmaDownloadError(f"redirect from https to plain http refused (from {previous})",
                                     location=Location(url))
        if _is_loopback(host):
            return
        raise SigmaDownloadError(
            "plain http is refused except to a loopback address (127.0.0.0/8, ::1, localhost); use https",
            location=Location(url))
    raise SigmaDownloadError(f"unsupported URL scheme {parts.scheme!r} (https only)", location=Location(url))


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or {"https": 443, "http": 80}.get(p.scheme)
    return (p.scheme, (p.hostname or "").lower(), port)


@dataclass(frozen=True)
class _Auth:
    origin: tuple[str, str, int | None]
    token: str


def _client(limits: Limits) -> httpx.Client:
    import httpx

    from bastion import __version__
    return httpx.Client(follow_redirects=False, timeout=httpx.Timeout(limits.timeout),
                        headers={"User-Agent": f"bastion/{__version__} (sigma update)",
                                 "Accept-Encoding": "identity"})


def _raw_chunks(resp: httpx.Response, url: str, deadline: float) -> Iterator[bytes]:
    """The body as sent (no transparent decompression: its size is what is capped), within the deadline."""
    enc = resp.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise SigmaDownloadError(f"unexpected Content-Encoding {enc!r} (identity was asked for)",
                                 location=Location(url))
    for chunk in resp.iter_raw():
        if time.monotonic() > deadline:
            raise SigmaDownloadError("download took longer than the deadline", location=Location(url))
        yield chunk


@contextmanager
def _get(client: httpx.Client, url: str, *, accept: str, auth: _Auth | None,
         limits: Limits, deadline: float) -> Iterator[httpx.Response]:
    """GET ``url`` streamed, following redirects by the transport rules; 200 or an error."""
    import httpx

    current, previous = url, None
    for _hop in range(limits.max_redirects + 1):
        check_url(current, previous=previous)
        if time.monotonic() > deadline:
            raise SigmaDownloadError("update took longer than the deadline", location=Location(current))
        headers = {"Accept": accept}
        if auth is not None and _origin(current) == auth.origin:
            headers["Authorization"] = f"Bearer {auth.token}"
        try:
            resp = client.send(client.build_request("GET", current, headers=headers), stream=True)
        except httpx.HTTPError as exc:
            raise SigmaDownloadError(f"request failed: {exc or type(exc).__name__}",
                                     location=Location(current)) from exc
        try:
            if resp.status_code in (301, 302, 303, 307, 308):
                loc = resp.headers.get("location")
                if not loc:
                    raise SigmaDownloadError(f"HTTP {resp.status_code} redirect without a Location",
                                             location=Location(current))
                previous, current = current, str(resp.url.join(loc))
                continue
            if resp.status_code != 200:
                body = _read_capped(resp, 2048, current, what="error body", deadline=deadline, strict=False)
                text = body.decode("utf-8", "replace").strip().splitlines()
                detail = f": {text[0][:200]}" if text else ""
                raise SigmaDownloadError(f"HTTP {resp.status_code} {resp.reason_phrase}{detail}",
                                         location=Location(current))
            yield resp
            return
        finally:
            resp.close()
    raise SigmaDownloadError(f"more than {limits.max_redirects} redirects", location=Location(url))


def _read_capped(resp: httpx.Response, cap: int, url: str, *, what: str, deadline: float,
                 strict: bool = True) -> bytes:
    import httpx

    out = bytearray()
    try:
        for chunk in _raw_chunks(resp, url, deadline):
            out += chunk
            if len(out) > cap:
                if not strict:
                    return bytes(out[:cap])
                raise SigmaDownloadError(f"{what} larger than {cap} bytes", location=Location(url))
    except httpx.HTTPError as exc:
        raise SigmaDownloadError(f"reading the {what} failed: {exc or type(exc).__name__}",
                                 location=Location(url)) from exc
    return bytes(out)


def _download(client: httpx.Client, url: str, dest: Path, *, auth: _Auth | None,
              limits: Limits, deadline: float, expected_size: int | None) -> str:
    """Stream ``url`` into ``dest`` (size-capped); the sha256 of what was written."""
    import httpx

    h = hashlib.sha256()
    n = 0
    with _get(client, url, accept="application/octet-stream", auth=auth, limits=limits,
              deadline=deadline) as resp:
        declared = resp.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_download:
            raise SigmaDownloadError(f"archive of {declared} bytes exceeds the {limits.max_download}-byte cap",
                                     location=Location(url))
        try:
            with open(dest, "wb") as f:
                for chunk in _raw_chunks(resp, url, deadline):
                    n += len(chunk)
                    if n > limits.max_download:
                        raise SigmaDownloadError(
                            f"archive exceeds the {limits.max_download}-byte cap", location=Location(url))
                    h.update(chunk)
                    f.write(chunk)
        except httpx.HTTPError as exc:
            raise SigmaDownloadError(f"download failed: {exc or type(exc).__name__}",
                                     location=Location(url)) from exc
    if expected_size is not None and n != expected_size:
        raise SigmaDownloadError(f"downloaded {n} bytes, the release says {expected_size}",
                                 location=Location(url))
    return h.hexdigest()


def _norm_sha(value: str, where: str) -> str:
    v = value.strip().lower()
    if v.startswith("sha256:"):
        v = v[len("sha256:"):]
    if not _SHA256.fullmatch(v):
        raise SigmaChecksumError(f"not a sha256 (64 hex digits): {value!r}", location=Location(where))
    return v


def is_archive_url(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(_ARCHIVE_SUFFIXES)


def release_url(api: str, tag: str | None) -> str:
    base = api.rstrip("/")
    tail = f"tags/{tag}" if tag else "latest"
    return f"{base}/repos/{SIGMA_REPO}/releases/{tail}"


def _pick_asset(release: Any, asset: str, url: str) -> tuple[str, str, str | None, int | None]:
    """(tag, download URL, sha256 or None, size or None) of ``asset`` in a release JSON."""
    if not isinstance(release, dict) or not isinstance(release.get("tag_name"), str):
        raise SigmaDownloadError("not a GitHub release (no tag_name)", location=Location(url))
    if not _TAG.fullmatch(release["tag_name"]):
        raise SigmaDownloadError(f"release tag_name {release['tag_name'][:120]!r} is not a plain tag",
                                 location=Location(url))
    assets = release.get("assets")
    if not isinstance(assets, list):
        raise SigmaDownloadError("GitHub release without an assets list", location=Location(url))
    names = [a.get("name") for a in assets if isinstance(a, dict)]
    for a in assets:
        if isinstance(a, dict) and a.get("name") == asset:
            dl = a.get("browser_download_url")
            if not isinstance(dl, str) or not dl:
                raise SigmaDownloadError(f"asset {asset} has no download URL", location=Location(url))
            digest = a.get("digest")
            sha = None
            if isinstance(digest, str) and digest.lower().startswith("sha256:"):
                sha = _norm_sha(digest, url)
            size = a.get("size")
            return (release["tag_name"], dl, sha, size if isinstance(size, int) and size >= 0 else None)
    raise SigmaDownloadError(
        f"release {release['tag_name']} has no asset {asset!r} (it has: {', '.join(map(str, names)) or 'none'})",
        location=Location(url))


def fetch(dest_dir: Path, *, url: str = DEFAULT_API, tag: str | None = None,
          asset: str = DEFAULT_ASSET, sha256: str | None = None, allow_unverified: bool = False,
          token: str | None = None, limits: Limits = Limits(), have: str | None = None) -> Fetched | None:
    """Download SigmaHQ's release asset (or an archive URL) into ``dest_dir``, verified.

    ``url`` is the GitHub API base (default) or an archive URL.  Raises
    :class:`SigmaChecksumError` on a mismatch, or when no checksum is
    available and ``allow_unverified`` is false.  Returns None, without
    downloading, when the release's digest is ``have`` (the live set's sha256)."""
    check_url(url)
    if tag is not None and not _TAG.fullmatch(tag):
        raise SigmaDownloadError(f"not a release tag: {tag!r}", location=Location("--tag"))
    pin = _norm_sha(sha256, "--sha256") if sha256 is not None else None
    deadline = time.monotonic() + limits.deadline
    with _client(limits) as client:
        if is_archive_url(url):
            if pin is None and not allow_unverified:
                raise SigmaChecksumError(
                    "an archive URL carries no checksum: pin it with --sha256 "
                    "(or accept it unverified with --allow-unverified)", location=Location(url))
            name = PurePosixPath(urlsplit(url).path).name
            dest = dest_dir / "download.bin"
            got = _download(client, url, dest, auth=None, limits=limits, deadline=deadline, expected_size=None)
            return Fetched(dest, _verify(got, None, pin, allow_unverified, url), name, url,
                           "pinned" if pin else "unverified")
        api = release_url(url, tag)
        auth = _Auth(_origin(api), token) if token else None
        with _get(client, api, accept="application/vnd.github+json", auth=auth, limits=limits,
                  deadline=deadline) as resp:
            raw = _read_capped(resp, limits.max_json, api, what="release JSON", deadline=deadline)
        try:
            release = json.loads(raw)
        except ValueError as exc:
            raise SigmaDownloadError(f"release JSON is malformed: {exc}", location=Location(api)) from exc
        rtag, dl, digest, size = _pick_asset(release, asset, api)
        if pin is not None and digest is not None and pin != digest:
            raise SigmaChecksumError(f"--sha256 {pin} is not the release's digest {digest}; nothing installed",
                                     location=Location(api))
        if digest is not None and digest == have:
            return None
        if digest is None and pin is None and not allow_unverified:
            raise SigmaChecksumError(
                f"release {rtag} gives no sha256 digest for {asset}: pin one with --sha256 "
                "(or accept it unverified with --allow-unverified)", location=Location(api))
        dest = dest_dir / "download.bin"
        got = _download(client, dl, dest, auth=auth, limits=limits, deadline=deadline, expected_size=size)
        verified = "+".join(v for v, s in (("github-digest", digest), ("pinned", pin)) if s) or "unverified"
        return Fetched(dest, _verify(got, digest, pin, allow_unverified, dl), rtag, dl, verified)


def _verify(got: str, digest: str | None, pin: str | None, allow_unverified: bool, url: str) -> str:
    for what, want in (("the release's digest", digest), ("--sha256", pin)):
        if want is not None and got != want:
            raise SigmaChecksumError(f"sha256 mismatch: got {got}, {what} says {want}; nothing installed",
                                     location=Location(url))
    if digest is None and pin is None and not allow_unverified:  # pragma: no cover - checked by callers
        raise SigmaChecksumError("no checksum to verify against", location=Location(url))
    return got


# ---------------------------------------------------------------- archive and tree safety

def _member_parts(name: str, where: str) -> tuple[str, ...]:
    """The checked path components of an archive member name."""
    if not name or "\x00" in name or "\\" in name:
        raise SigmaArchiveError(f"unsafe member name {name!r}", location=Location(where))
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise SigmaArchiveError(f"absolute member path {name!r}", location=Location(where))
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise SigmaArchiveError(f"member path with '..': {name!r}", location=Location(where))
    return parts


def kept_path(parts: tuple[str, ...], top: str | None = None) -> tuple[str, ...] | None:
    """Where a file is kept in the installed set, or None when it is not kept.

    Kept: ``rules*/linux/**.yml`` and top-level ``LICENSE*`` files, at the
    archive root or under its top folder ``top`` (a GitHub source archive
    holds everything under ``<owner>-<repo>-<sha>/``)."""
    for skip in (0, 1) if top is not None and parts[:1] == (top,) else (0,):
        p = parts[skip:]
        if len(p) == 1 and _LICENSE.fullmatch(p[0]):
            return p
        if (len(p) >= 3 and _RULES_TOP.fullmatch(p[0]) and p[1] == "linux"
                and p[-1].lower().endswith(_RULE_SUFFIXES)):
            return p
    return None


def _top_folder(first: tuple[str, ...], is_dir: bool) -> str | None:
    """The archive's top folder, judged from its first member (None: rules at the root)."""
    if not first or (len(first) == 1 and not is_dir) or _RULES_TOP.fullmatch(first[0]):
        return None
    return first[0]


@dataclass
class _Sink:
    """Writes kept files into the staging directory, enforcing the limits."""

    root: Path
    limits: Limits
    where: str
    total: int = 0
    rules: int = 0
    licenses: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)

    def add(self, rel: tuple[str, ...], src: IO[bytes], name: str) -> None:
        key = "/".join(rel)
        if key in self.digests:
            raise SigmaArchiveError(f"duplicate member {name!r}", location=Location(self.where))
        dest = self.root.joinpath(*rel)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise SigmaArchiveError(f"member {name!r} clashes with another ({exc.strerror})",
                                    location=Location(self.where)) from exc
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 16):
                n += len(chunk)
                self.total += len(chunk)
                if n > self.limits.max_file:
                    raise SigmaArchiveError(f"member {name!r} exceeds the {self.limits.max_file}-byte cap",
                                            location=Location(self.where))
                if self.total > self.limits.max_total:
                    raise SigmaArchiveError(f"extracted data exceeds the {self.limits.max_total}-byte cap",
                                            location=Location(self.where))
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())          # durable before the set can go live
        self.digests[key] = h.hexdigest()
        if len(rel) == 1:
            self.licenses.append(rel[0])
        else:
            self.rules += 1

    def tree_sha256(self) -> str:
        h = hashlib.sha256()
        for key in sorted(self.digests):
            h.update(f"{key}\0{self.digests[key]}\n".encode())
        return h.hexdigest()


def _extract_zip(archive: Path, sink: _Sink) -> None:
    where = sink.where
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SigmaArchiveError(f"not a readable zip archive: {exc}", location=Location(where)) from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > sink.limits.max_members:
            raise SigmaArchiveError(f"{len(infos)} members, more than the {sink.limits.max_members} allowed",
                                    location=Location(where))
        for zi in infos:
            parts = _member_parts(zi.filename, where)
            ftype = stat.S_IFMT(zi.external_attr >> 16)
            if zi.create_system == 3 and ftype:           # unix, with a file type in the mode
                if stat.S_ISLNK(ftype):
                    raise SigmaArchiveError(f"symlink member {zi.filename!r} refused", location=Location(where))
                if not (stat.S_ISREG(ftype) or stat.S_ISDIR(ftype)):
                    raise SigmaArchiveError(f"special-file member {zi.filename!r} refused",
                                            location=Location(where))
            if zi.flag_bits & 0x1:
                raise SigmaArchiveError(f"encrypted member {zi.filename!r} refused", location=Location(where))
        top = _top_folder(_member_parts(infos[0].filename, where), infos[0].is_dir()) if infos else None
        for zi in infos:
            if zi.is_dir():
                continue
            rel = kept_path(_member_parts(zi.filename, where), top)
            if rel is None:
                continue
            try:
                with zf.open(zi) as src:
                    sink.add(rel, src, zi.filename)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError,
                    zlib.error) as exc:
                raise SigmaArchiveError(f"cannot read member {zi.filename!r}: {exc}",
                                        location=Location(where)) from exc


class _CappedReader(io.RawIOBase):
    """The decompressed tar stream, refused past ``cap`` bytes: tarfile itself reads
    long-name and pax headers into memory, so the bound must sit under it."""

    def __init__(self, inner: IO[bytes], cap: int, where: str) -> None:
        super().__init__()
        self._inner, self._cap, self._where, self.n = inner, cap, where, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._cap + 1 - self.n if size is None or size < 0 else min(size, self._cap + 1 - self.n)
        data = self._inner.read(max(want, 0))
        self.n += len(data)
        if self.n > self._cap:
            raise SigmaArchiveError(f"decompressed archive exceeds the {self._cap}-byte cap",
                                    location=Location(self._where))
        return data


_TAR_DECOMPRESSORS: Final = ((b"\x1f\x8b", "gz"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"))


def _tar_kind(head: bytes) -> str | None:
    """The tar's compression ("gz", "xz", "bz2", "" for none) from its first 512 bytes; None: no tar."""
    for magic, kind in _TAR_DECOMPRESSORS:
        if head.startswith(magic):
            return kind
    return "" if head[257:262] == b"ustar" else None


def _extract_tar(archive: Path, sink: _Sink, kind: str) -> None:
    where = sink.where
    import bz2
    import gzip

    opener = {"gz": gzip.GzipFile, "xz": lzma.LZMAFile, "bz2": bz2.BZ2File}.get(kind)
    raw: IO[bytes] = opener(archive, "rb") if opener is not None else open(archive, "rb")
    try:
        _read_tar(_CappedReader(raw, sink.limits.max_total, where), sink)
    finally:
        raw.close()


def _read_tar(stream: _CappedReader, sink: _Sink) -> None:
    where = sink.where
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")      # sequential: never seeks back
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise SigmaArchiveError(f"not a readable tar archive: {exc}", location=Location(where)) from exc
    count = 0
    declared = 0
    top: str | None = None
    try:
        with tf:
            while True:
                m = tf.next()
                if m is None:
                    break
                count += 1
                if count > sink.limits.max_members:
                    raise SigmaArchiveError(f"more than the {sink.limits.max_members} members allowed",
                                            location=Location(where))
                parts = _member_parts(m.name, where)
                if count == 1:
                    top = _top_folder(parts, m.isdir())
                if m.issym() or m.islnk():
                    raise SigmaArchiveError(f"link member {m.name!r} refused", location=Location(where))
                if m.isdir():
                    continue
                if not m.isreg() or m.issparse():
                    raise SigmaArchiveError(f"special-file member {m.name!r} refused", location=Location(where))
                declared += m.size
                if declared > sink.limits.max_total:
                    raise SigmaArchiveError(f"archive content exceeds the {sink.limits.max_total}-byte cap",
                                            location=Location(where))
                rel = kept_path(parts, top)
                if rel is None:
                    continue
                if m.size > sink.limits.max_file:
                    raise SigmaArchiveError(f"member {m.name!r} exceeds the {sink.limits.max_file}-byte cap",
                                            location=Location(where))
                src = tf.extractfile(m)
                if src is None:
                    raise SigmaArchiveError(f"cannot read member {m.name!r}", location=Location(where))
                with src:
                    sink.add(rel, src, m.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise SigmaArchiveError(f"corrupt tar archive: {exc}", location=Location(where)) from exc


def extract_archive(archive: Path, dest: Path, *, limits: Limits = Limits(),
                    where: str | None = None) -> _Sink:
    """Unpack the Linux rules and licence files of a zip or tar archive into ``dest``."""
    sink = _Sink(dest, limits, where or str(archive))
    try:
        with open(archive, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SigmaArchiveError(f"cannot read archive: {exc.strerror}", location=Location(sink.where)) from exc
    kind = _tar_kind(head)
    if head.startswith(b"PK"):
        _extract_zip(archive, sink)
    elif kind is not None:
        _extract_tar(archive, sink, kind)
    else:
        raise SigmaArchiveError("neither a zip nor a tar archive", location=Location(sink.where))
    return sink


def copy_tree(src: Path, dest: Path, *, limits: Limits = Limits()) -> _Sink:
    """Copy the Linux rules and licence files of a local directory into ``dest``.

    ``src`` holds ``rules/linux`` (a SigmaHQ checkout or an unpacked release).
    A symlink or special file where a rule is expected is refused."""
    sink = _Sink(dest, limits, str(src))
    tops = sorted(p for p in src.iterdir() if _RULES_TOP.fullmatch(p.name)) if src.is_dir() else []
    if not any((t / "linux").exists() or (t / "linux").is_symlink() for t in tops):
        raise SigmaArchiveError(
            "no rules/linux directory here: pass the root of a SigmaHQ checkout or unpacked release",
            location=Location(str(src)))
    for lic in sorted(src.iterdir()):
        if _LICENSE.fullmatch(lic.name) and lic.is_file() and not lic.is_symlink():
            with open(lic, "rb") as f:
                sink.add((lic.name,), f, lic.name)
    count = 0
    for top in tops:
        base = top / "linux"
        if not base.exists() and not base.is_symlink():
            continue
        if top.is_symlink() or base.is_symlink() or not base.is_dir():
            raise SigmaArchiveError("not a real directory (symlinks are refused)", location=Location(str(base)))
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                count += 1
                if count > limits.max_members:
                    raise SigmaArchiveError(f"more than the {limits.max_members} files allowed",
                                            location=Location(str(src)))
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    raise SigmaArchiveError("symlink in the rule tree refused", location=Location(str(p)))
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not name.lower().endswith(_RULE_SUFFIXES):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise SigmaArchiveError("not a regular file (symlinks and special files are refused)",
                                            location=Location(str(p)))
                rel = p.relative_to(src).parts
                with open(p, "rb") as f:
                    sink.add(rel, f, str(p))
    return sink


# ---------------------------------------------------------------- the installed set

@contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SigmaInstallError("another 'bastion sigma update' is running",
                                        location=Location(str(root / ".lock"))) from exc
            raise
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _point(root: Path, link: str, release_id: str) -> None:
    """Atomically make ``root/link`` name ``releases/<release_id>``."""
    tmp = root / f".{link}.{os.getpid()}.tmp"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(f"releases/{release_id}", tmp)
    os.replace(tmp, root / link)
    _fsync_dir(root)


def _release_id(release: str, sha256: str) -> str:
    slug = _SLUG.sub("_", release).strip("._-")[:64] or "release"
    return f"{slug}-{sha256[:12]}"


def _prepare_root(data_dir: Path) -> Path:
    root = sigma_root(data_dir)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "releases").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SigmaInstallError(f"cannot create the Sigma rule directory: {exc.strerror}",
                                location=Location(str(root))) from exc
    return root


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _result_from_manifest(path: Path, already_current: bool, previous: str | None) -> InstallResult:
    m = _read_manifest(path)
    return InstallResult(release=str(m.get("release", "")), release_id=path.name,
                         source=str(m.get("source", "")), sha256=str(m.get("sha256", "")),
                         verified=str(m.get("verified", "")), path=path, rules=_int(m, "rules"),
                         unsupported=_int(m, "unsupported"), files=_int(m, "files"),
                         errors=[], previous=previous, already_current=already_current)


def install(data_dir: Path, source: Path, *, release: str, origin: str, sha256: str | None,
            verified: str, limits: Limits = Limits()) -> InstallResult:
    """Install the Linux rules of ``source`` (archive file or directory) as the live set.

    ``release`` names the set (a tag, ``local``); ``origin`` is the URL or path
    recorded in the manifest; ``sha256`` is the archive's (for a directory,
    None: the tree's content hash is used).  The set is loaded with
    ``load_sigma`` before it goes live; nothing changes when any step fails."""
    root = _prepare_root(data_dir)
    releases = root / "releases"
    with _locked(root):
        cur = _release_of(root, "current")
        prev = _release_of(root, "previous")
        if sha256 is not None and cur is not None and cur.name == _release_id(release, sha256):
            return _result_from_manifest(cur, True, _manifest_release(prev))
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=releases))
        try:
            if source.is_dir():
                sink = copy_tree(source, stage, limits=limits)
            else:
                sink = extract_archive(source, stage, limits=limits, where=origin)
            if sink.rules == 0:
                raise SigmaArchiveError("no Linux rules (rules/linux/**.yml) in it; nothing installed",
                                        location=Location(origin))
            digest = sha256 if sha256 is not None else sink.tree_sha256()
            rid = _release_id(release, digest)
            if cur is not None and cur.name == rid:
                return _result_from_manifest(cur, True, _manifest_release(prev))
            from bastion.detect.sigma.rules import load_sigma

            dropped = _drop_yaml_references(stage)
            res = load_sigma([stage])
            errors = dropped + [str(e).replace(str(stage) + "/", "") for e in res.errors]
            if not res.rules:
                raise SigmaInstallError(
                    f"none of its {res.files + len(dropped)} rule files loaded ({len(res.unsupported)} unsupported, "
                    f"{len(errors)} with errors{': ' + errors[0] if errors else ''}); "
                    "the installed set is unchanged", location=Location(origin))
            _write_synced(stage / NOTICE, DRL_NOTICE + "\n")
            manifest = {
                "format": MANIFEST_FORMAT, "release": release, "source": origin, "sha256": digest,
                "sha256_of": "directory tree" if sha256 is None else "archive",
                "verified": verified, "installed_at": _now(), "rules": len(res.rules),
                "unsupported": len(res.unsupported), "errors": len(errors), "files": res.files + len(dropped),
                "licenses": sorted(sink.licenses), "notice": DRL_NOTICE,
            }
            _write_synced(stage / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for d in sorted({p.parent for p in stage.rglob("*")} | {stage}, reverse=True):
                _fsync_dir(d)
            stage.chmod(0o755)
            dst = releases / rid
            if dst.exists():                 # the previous set or a leftover: replaced
                shutil.rmtree(dst)
            os.rename(stage, dst)
            _fsync_dir(releases)
            _point(root, "current", rid)
            kept = {rid}
            new_prev = cur if cur is not None else prev
            if new_prev is not None and new_prev.name == rid:
                new_prev = None
            if new_prev is not None:
                _point(root, "previous", new_prev.name)
                kept.add(new_prev.name)
            else:
                _unlink(root / "previous")
        finally:
            if stage.exists():              # not renamed into place: refused or already live
                shutil.rmtree(stage, ignore_errors=True)
        _prune(releases, kept)
        return InstallResult(release=release, release_id=rid, source=origin, sha256=digest, verified=verified,
                             path=dst, rules=len(res.rules), unsupported=len(res.unsupported),
                             errors=errors, files=res.files + len(dropped), previous=_manifest_release(new_prev))


def _drop_yaml_references(stage: Path) -> list[str]:
    """Remove rule files using YAML anchors/aliases (no Sigma rule needs them; aliases let a
    small file expand into a huge structure); one error line per file removed."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: list[str] = []
    for path in sorted(stage.rglob("*")):
        if not path.name.lower().endswith(_RULE_SUFFIXES):
            continue
        try:
            refs = any(isinstance(t, (yaml.AnchorToken, yaml.AliasToken))
                       for t in yaml.scan(path.read_bytes(), Loader=loader))
        except yaml.YAMLError:
            continue                        # malformed: load_sigma reports it
        if refs:
            path.unlink()
            out.append(f"{path.relative_to(stage).as_posix()}: YAML anchors and aliases are refused "
                       "(no Sigma rule needs them)")
    return out


def _manifest_release(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(_read_manifest(path).get("release", path.name))
    except SigmaInstallError:
        return path.name


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _prune(releases: Path, keep: set[str]) -> None:
    for p in releases.iterdir():
        if p.name not in keep:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                _unlink(p)


def rollback(data_dir: Path) -> InstallResult:
    """Make the previous set live again (and the current one the previous)."""
    root = sigma_root(data_dir)
    if not (root / "releases").is_dir():
        raise SigmaInstallError(f"no Sigma rules installed: {INSTALL_HINT}", location=Location(str(root)))
    with _os_errors(root), _locked(root):
        cur = _release_of(root, "current")
        prev = _release_of(root, "previous")
        if prev is None or (cur is not None and prev == cur):
            raise SigmaInstallError("no previous Sigma rule set to roll back to",
                                    location=Location(str(root / "previous")))
        _point(root, "current", prev.name)
        if cur is not None:
            _point(root, "previous", cur.name)
        else:
            _unlink(root / "previous")
        return _result_from_manifest(prev, False, _manifest_release(cur))


@contextmanager
def _os_errors(where: Path) -> Iterator[None]:
    """An unexpected OS failure (permissions, disk full) as a SigmaInstallError naming the file."""
    try:
        yield
    except OSError as exc:
        raise SigmaInstallError(f"{exc.strerror or exc}; the installed set is unchanged",
                                location=Location(str(exc.filename or where))) from exc


def update(data_dir: Path, *, from_path: Path | None = None, url: str = DEFAULT_API,
           tag: str | None = None, asset: str = DEFAULT_ASSET, sha256: str | None = None,
           allow_unverified: bool = False, token: str | None = None,
           limits: Limits = Limits()) -> InstallResult:
    """``bastion sigma update``: fetch (or take ``from_path``), verify, load, swap in.

    Every failure is a :class:`SigmaInstallError` (or subclass) naming the URL
    or file, and leaves the live set as it was."""
    with _os_errors(sigma_root(data_dir)):
        return _update(data_dir, from_path=from_path, url=url, tag=tag, asset=asset, sha256=sha256,
                       allow_unverified=allow_unverified, token=token, limits=limits)


def _update(data_dir: Path, *, from_path: Path | None, url: str, tag: str | None, asset: str,
            sha256: str | None, allow_unverified: bool, token: str | None, limits: Limits) -> InstallResult:
    if from_path is not None:
        if not from_path.exists():
            raise SigmaInstallError("no such file or directory", location=Location(str(from_path)))
        origin = str(from_path.resolve())
        if from_path.is_dir():
            if sha256 is not None:
                raise SigmaInstallError("--sha256 verifies an archive, not a directory",
                                        location=Location(origin))
            return install(data_dir, from_path, release="local", origin=origin, sha256=None,
                           verified="local", limits=limits)
        got = _file_sha256(from_path, limits)
        verified = "local"
        if sha256 is not None:
            want = _norm_sha(sha256, "--sha256")
            if got != want:
                raise SigmaChecksumError(f"sha256 mismatch: got {got}, --sha256 says {want}; nothing installed",
                                         location=Location(origin))
            verified = "pinned"
        return install(data_dir, from_path, release="local", origin=origin, sha256=got,
                       verified=verified, limits=limits)
    root = _prepare_root(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        cur = _release_of(root, "current")
        have = str(_read_manifest(cur).get("sha256", "")) if cur is not None else None
        fetched = fetch(tmp, url=url, tag=tag, asset=asset, sha256=sha256, allow_unverified=allow_unverified,
                        token=token, limits=limits, have=have)
        if fetched is None and cur is not None:         # the live set is that release already
            return _result_from_manifest(cur, True, _manifest_release(_release_of(root, "previous")))
        if fetched is None:
            raise SigmaInstallError("the installed set changed during the update; run it again",
                                    location=Location(str(root / "current")))
        return install(data_dir, fetched.path, release=fetched.release, origin=fetched.source,
                       sha256=fetched.sha256, verified=fetched.verified, limits=limits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_sha256(path: Path, limits: Limits) -> str:
    h = hashlib.sha256()
    n = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                n += len(chunk)
                if n > limits.max_download:
                    raise SigmaArchiveError(f"archive exceeds the {limits.max_download}-byte cap",
                                            location=Location(str(path)))
                h.update(chunk)
    except OSError as exc:
        raise SigmaArchiveError(f"cannot read archive: {exc.strerror}", location=Location(str(path))) from exc
    return h.hexdigest()


__all__ = ["DEFAULT_API", "DEFAULT_ASSET", "DRL_NOTICE", "INSTALL_HINT", "Fetched", "InstallResult", "Limits",
           "SigmaArchiveError", "SigmaChecksumError", "SigmaDownloadError", "SigmaInstallError", "check_url",
           "copy_tree", "describe_installed", "extract_archive", "fetch", "install", "installed_info",
           "installed_rules_dir", "is_archive_url", "kept_path", "release_url", "rollback", "sigma_root",
           "update"]
