"""``bastion sigma update`` as a library: installing SigmaHQ's Linux rules into the data dir.

The sources are the SigmaHQ corpus (``../shared/corpus/sigma``) as a directory,
as a release-shaped zip and as a source-archive tar.gz, and a loopback HTTP
server playing the GitHub releases API.  Hostile archives are built here.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.sigma_release import (  # noqa: E402
    CORPUS,
    ReleaseServer,
    Route,
    corpus_linux_rules,
    release_zip,
    sha256,
)

from bastion.detect.sigma import load_sigma  # noqa: E402
from bastion.detect.sigma import install as inst  # noqa: E402
from bastion.detect.sigma.install import (  # noqa: E402
    Limits,
    SigmaArchiveError,
    SigmaChecksumError,
    SigmaDownloadError,
    SigmaInstallError,
)

BASE64_RULE = "rules/linux/process_creation/proc_creation_lnx_base64_decode.yml"
BASE64_AUTHOR = "Daniil Yugoslavskiy, oscd.community"
# the corpus: 210 Linux rules, of which Bastion loads 179 and lists 31 as unsupported
CORPUS_FILES, CORPUS_LOADED, CORPUS_UNSUPPORTED = 210, 179, 31


def _files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def _state(data: Path) -> tuple[str | None, list[str]]:
    """(release id that current names, entries of releases/)."""
    root = data / "sigma"
    cur = os.readlink(root / "current") if (root / "current").is_symlink() else None
    rel = sorted(p.name for p in (root / "releases").iterdir()) if (root / "releases").is_dir() else []
    return cur, rel


def _few_rules(n: int) -> list[Path]:
    return [p for p in corpus_linux_rules() if "process_creation" in p.parts][:n]


def _broken_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rules/linux/process_creation/broken_a.yml", "title: [unclosed\n")
        zf.writestr("rules/linux/process_creation/broken_b.yml", "just: a mapping\n")
    return path


# ---------------------------------------------------------------- what is kept

TOP = "SigmaHQ-sigma-8eaafff"


@pytest.mark.parametrize("name,top,kept", [
    ("rules/linux/process_creation/x.yml", None, "rules/linux/process_creation/x.yml"),
    ("rules-emerging-threats/2024/linux/x.yml", None, None),    # linux must follow the rules folder
    ("rules-emerging-threats/linux/x.yml", None, "rules-emerging-threats/linux/x.yml"),
    (f"{TOP}/rules/linux/auditd/y.yml", TOP, "rules/linux/auditd/y.yml"),
    (f"{TOP}/rules/linux/auditd/y.yml", None, None),            # a folder that is not the top one
    ("rules/windows/process_creation/x.yml", None, None),
    ("rules/linux/README.md", None, None),
    ("LICENSE", None, "LICENSE"),
    (f"{TOP}/LICENSE.Detection.Rules.md", TOP, "LICENSE.Detection.Rules.md"),
    ("docs/LICENSE", None, None),
    ("docs/LICENSE", TOP, None),
    (f"{TOP}/a/rules/linux/x.yml", TOP, None),                  # at most one top folder
])
def test_kept_path(name: str, top: str | None, kept: str | None) -> None:
    got = inst.kept_path(tuple(name.split("/")), top)
    assert ("/".join(got) if got else None) == kept


# ---------------------------------------------------------------- transport rules

@pytest.mark.parametrize("url", ["https://api.github.com", "http://127.0.0.1:8080/x.zip",
                                 "http://127.5.6.7/x", "http://[::1]:9/x", "http://localhost/x"])
def test_allowed_urls(url: str) -> None:
    inst.check_url(url)


@pytest.mark.parametrize("url,why", [
    ("http://example.com/sigma.zip", "plain http is refused except to a loopback"),
    ("http://10.0.0.1/sigma.zip", "plain http is refused except to a loopback"),
    ("ftp://example.com/sigma.zip", "unsupported URL scheme 'ftp'"),
    ("file:///etc/passwd", "URL without a host"),
    ("https://user:pw@example.com/x.zip", "credentials in a URL are refused"),
])
def test_refused_urls(url: str, why: str) -> None:
    with pytest.raises(SigmaDownloadError, match=why) as ei:
        inst.check_url(url)
    assert ei.value.location is not None and ei.value.location.source == url


def test_redirect_from_https_to_http_refused_even_to_loopback() -> None:
    with pytest.raises(SigmaDownloadError, match="redirect from https to plain http refused"):
        inst.check_url("http://127.0.0.1/x.zip", previous="https://github.com/a")


# ---------------------------------------------------------------- nothing installed

def test_nothing_installed_says_how(tmp_path: Path) -> None:
    info = inst.installed_info(tmp_path)
    assert info["installed"] is False and info["rules"] == 0
    assert "bastion sigma update" in info["hint"] and "--from" in info["hint"]
    assert inst.installed_rules_dir(tmp_path) is None
    assert inst.describe_installed(info).startswith("no Sigma rules installed: install SigmaHQ")
    assert not (tmp_path / "sigma").exists()                   # a query creates nothing


def test_queries_do_not_import_pysigma(tmp_path: Path) -> None:
    import subprocess

    code = ("import sys; from pathlib import Path; "
            "from bastion.detect.sigma.install import installed_info, installed_rules_dir; "
            f"installed_info(Path({str(tmp_path)!r})); installed_rules_dir(Path({str(tmp_path)!r})); "
            "print(sorted(m for m in sys.modules if m == 'sigma' or m.startswith(('sigma.', 'httpx'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- installing

def test_install_from_corpus_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    res = inst.update(data, from_path=CORPUS)
    assert (res.files, res.rules, res.unsupported, res.errors) == (CORPUS_FILES, CORPUS_LOADED, CORPUS_UNSUPPORTED, [])
    assert res.release == "local" and res.verified == "local" and res.previous is None
    live = inst.installed_rules_dir(data)
    assert live == res.path and live.parent == (data / "sigma" / "releases").resolve()
    files = _files(live)
    rules = {f for f in files if f.endswith(".yml")}
    assert rules == {p.relative_to(CORPUS).as_posix() for p in corpus_linux_rules()}
    assert files - rules == {"LICENSE", "LICENSE.Detection.Rules.md", "NOTICE", "bastion-sigma.json"}
    assert (live / "NOTICE").read_text().strip() == inst.DRL_NOTICE
    assert "Detection Rule License (DRL) 1.1" in inst.DRL_NOTICE and "author" in inst.DRL_NOTICE
    info = inst.installed_info(data)
    assert info["installed"] is True
    assert (info["rules"], info["unsupported"], info["errors"], info["files"]) == (
        CORPUS_LOADED, CORPUS_UNSUPPORTED, 0, CORPUS_FILES)
    assert info["source"] == str(CORPUS.resolve()) and info["sha256"] == res.sha256
    assert info["installed_at"].endswith("Z") and info["previous"] is None
    assert inst.describe_installed(info).startswith(f"{CORPUS_LOADED} SigmaHQ Linux rules installed")
    # what the agent will evaluate: the installed set, authors kept
    loaded = load_sigma([live])
    assert len(loaded.rules) == CORPUS_LOADED
    by_path = {r.path.relative_to(live).as_posix(): r for r in loaded.rules}
    assert by_path[BASE64_RULE].author == BASE64_AUTHOR


def test_same_source_again_changes_nothing(tmp_path: Path) -> None:
    first = inst.update(tmp_path, from_path=CORPUS)
    before = _state(tmp_path)
    again = inst.update(tmp_path, from_path=CORPUS)
    assert again.already_current and again.release_id == first.release_id and again.rules == CORPUS_LOADED
    assert _state(tmp_path) == before


def test_install_release_zip_keeps_only_linux_rules(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", extra={"deprecated/linux/old.yml": b"title: x\n"})
    res = inst.update(tmp_path / "data", from_path=z)
    assert res.sha256 == sha256(z) and res.rules == CORPUS_LOADED and res.files == CORPUS_FILES
    files = _files(res.path)
    assert not any("windows" in f or f.startswith("deprecated") for f in files)
    assert files - {f for f in files if f.startswith("rules/linux/")} == {"NOTICE", "bastion-sigma.json"}
    manifest = json.loads((res.path / "bastion-sigma.json").read_text())
    assert manifest["sha256_of"] == "archive" and manifest["licenses"] == []


@pytest.mark.parametrize("mode,suffix", [("w:gz", "tar.gz"), ("w:xz", "tar.xz"), ("w:bz2", "tar.bz2"),
                                         ("w", "tar")])
def test_install_source_tarball_with_top_folder(tmp_path: Path, mode: str, suffix: str) -> None:
    tgz = tmp_path / f"sigma-src.{suffix}"
    with tarfile.open(tgz, mode) as tf:  # type: ignore[call-overload]
        tf.add(CORPUS / "LICENSE", "SigmaHQ-sigma-8eaafff/LICENSE")
        for p in _few_rules(6):
            tf.add(p, "SigmaHQ-sigma-8eaafff/" + p.relative_to(CORPUS).as_posix())
        tf.add(CORPUS / "README.md", "SigmaHQ-sigma-8eaafff/README.md")
    res = inst.update(tmp_path / "data", from_path=tgz)
    assert res.files == 6 and res.rules + res.unsupported == 6 and res.rules > 0
    assert "LICENSE" in _files(res.path) and "README.md" not in _files(res.path)


def test_sha256_pin_on_a_local_archive(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "r.zip", _few_rules(3))
    with pytest.raises(SigmaChecksumError, match="sha256 mismatch"):
        inst.update(tmp_path / "data", from_path=z, sha256="0" * 64)
    assert inst.installed_info(tmp_path / "data")["installed"] is False
    res = inst.update(tmp_path / "data", from_path=z, sha256=sha256(z).upper())
    assert res.verified == "pinned" and res.rules == 3
    with pytest.raises(SigmaChecksumError, match="not a sha256"):
        inst.update(tmp_path / "data", from_path=z, sha256="abc")


def test_keeps_current_and_previous_only_and_rolls_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a = inst.update(data, from_path=release_zip(tmp_path / "a.zip", _few_rules(3)))
    b = inst.update(data, from_path=release_zip(tmp_path / "b.zip", _few_rules(4)))
    assert b.previous == "local" and inst.installed_info(data)["rules"] == 4
    c = inst.update(data, from_path=release_zip(tmp_path / "c.zip", _few_rules(5)))
    cur, rel = _state(data)
    assert cur == f"releases/{c.release_id}" and rel == sorted([b.release_id, c.release_id])
    assert a.release_id not in rel
    back = inst.rollback(data)
    assert back.release_id == b.release_id and inst.installed_info(data)["rules"] == 4
    assert os.readlink(data / "sigma" / "previous") == f"releases/{c.release_id}"
    fwd = inst.rollback(data)                                    # and forward again
    assert fwd.release_id == c.release_id and inst.installed_rules_dir(data) == c.path


def test_rollback_without_previous(tmp_path: Path) -> None:
    with pytest.raises(SigmaInstallError, match="no Sigma rules installed"):
        inst.rollback(tmp_path)
    inst.update(tmp_path, from_path=release_zip(tmp_path / "a.zip", _few_rules(2)))
    with pytest.raises(SigmaInstallError, match="no previous Sigma rule set"):
        inst.rollback(tmp_path)


# ---------------------------------------------------------------- a failed update keeps the live set

@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, tuple[str | None, list[str]]]:
    data = tmp_path / "data"
    inst.update(data, from_path=release_zip(tmp_path / "good.zip", _few_rules(3)))
    return data, _state(data)


def test_rules_that_do_not_load_are_refused(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]]) -> None:
    data, before = live
    with pytest.raises(SigmaInstallError, match=r"none of its 2 rule files loaded .*installed set is unchanged"):
        inst.update(data, from_path=_broken_zip(tmp_path / "broken.zip"))
    assert _state(data) == before and inst.installed_info(data)["rules"] == 3


def test_only_unsupported_rules_are_refused(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]]) -> None:
    data, before = live
    syslog = [p for p in corpus_linux_rules() if "builtin" in p.parts][:3]
    with pytest.raises(SigmaInstallError, match=r"none of its 3 rule files loaded \(3 unsupported"):
        inst.update(data, from_path=release_zip(tmp_path / "u.zip", syslog))
    assert _state(data) == before


@pytest.mark.parametrize("kind", ["no-linux", "garbage", "truncated", "empty-dir"])
def test_bad_sources_are_refused(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]], kind: str) -> None:
    data, before = live
    if kind == "no-linux":
        src = release_zip(tmp_path / "w.zip", [])
        why = r"no Linux rules \(rules/linux/\*\*\.yml\)"
    elif kind == "garbage":
        src = tmp_path / "g.zip"
        src.write_bytes(b"this is not an archive\n" * 10)
        why = "neither a zip nor a tar archive"
    elif kind == "truncated":
        full = release_zip(tmp_path / "full.zip", _few_rules(5)).read_bytes()
        src = tmp_path / "t.zip"
        src.write_bytes(full[: len(full) // 2])
        why = "not a readable zip archive"
    else:
        src = tmp_path / "empty"
        src.mkdir()
        why = "no rules/linux directory here"
    with pytest.raises(SigmaArchiveError, match=why) as ei:
        inst.update(data, from_path=src)
    assert ei.value.location is not None and str(src.resolve()) in ei.value.location.source
    assert _state(data) == before


# ---------------------------------------------------------------- hostile archives

def _zip_with(path: Path, name: str, data: bytes = b"title: x\n", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for p in _few_rules(2):
            zf.write(p, p.relative_to(CORPUS).as_posix())
        zi = zipfile.ZipInfo(name)
        if mode is not None:
            zi.create_system = 3
            zi.external_attr = mode << 16
        zf.writestr(zi, data)
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for p in _few_rules(2):
            tf.add(p, p.relative_to(CORPUS).as_posix())
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


def _ti(name: str, type_: bytes, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


@pytest.mark.parametrize("make,why", [
    (lambda p: _zip_with(p, "../../evil.yml"), "member path with '..'"),
    (lambda p: _zip_with(p, "rules/linux/../../../evil.yml"), "member path with '..'"),
    (lambda p: _zip_with(p, "/etc/evil.yml"), "absolute member path"),
    (lambda p: _zip_with(p, "rules\\linux\\evil.yml"), "unsafe member name"),
    (lambda p: _zip_with(p, "rules/linux/link.yml", b"/etc/shadow", stat.S_IFLNK | 0o777), "symlink member"),
    (lambda p: _zip_with(p, "rules/linux/fifo.yml", b"", stat.S_IFIFO | 0o644), "special-file member"),
    (lambda p: _tar_with(p, _ti("rules/linux/link.yml", tarfile.SYMTYPE, linkname="/etc/shadow")),
     "link member"),
    (lambda p: _tar_with(p, _ti("rules/linux/hard.yml", tarfile.LNKTYPE, linkname="etc/passwd")), "link member"),
    (lambda p: _tar_with(p, _ti("rules/linux/dev.yml", tarfile.CHRTYPE, devmajor=1, devminor=3)),
     "special-file member"),
    (lambda p: _tar_with(p, _ti("rules/linux/fifo.yml", tarfile.FIFOTYPE)), "special-file member"),
    (lambda p: _tar_with(p, _ti("../outside.yml", tarfile.REGTYPE, size=9), b"title: x\n"), "member path with '..'"),
    (lambda p: _tar_with(p, _ti("/abs.yml", tarfile.REGTYPE, size=9), b"title: x\n"), "absolute member path"),
    (lambda p: _zip_with(p, "rules/linux/" + _few_rules(2)[0].relative_to(CORPUS / "rules/linux").as_posix()),
     "duplicate member"),
    (lambda p: _zip_with(p, "rules/linux/" + _few_rules(2)[0].relative_to(CORPUS / "rules/linux").as_posix()
                         + "/x.yml"), "clashes with another"),
])
@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")     # zipfile, building the duplicate
def test_hostile_archive_refused_whole(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]],
                                       make: object, why: str) -> None:
    data, before = live
    src = make(tmp_path / "evil.archive")  # type: ignore[operator]
    with pytest.raises(SigmaArchiveError, match=why):
        inst.update(data, from_path=src)
    assert _state(data) == before
    assert not (tmp_path / "evil.yml").exists() and not Path("/evil.yml").exists()
    assert not (tmp_path / "outside.yml").exists()


def test_zip_bomb_bounded(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]]) -> None:
    data, before = live
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rules/linux/process_creation/bomb.yml", b"\0" * (8 << 20))
    assert bomb.stat().st_size < 64 << 10                        # 8 MiB from < 64 KiB
    with pytest.raises(SigmaArchiveError, match="exceeds the 4194304-byte cap"):
        inst.update(data, from_path=bomb)
    # a header that understates the size stops the read there, and the CRC check refuses it
    raw = bytearray(bomb.read_bytes())
    lied = tmp_path / "lied.zip"
    with zipfile.ZipFile(bomb) as zf:
        zi = zf.infolist()[0]
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):                   # patch the sizes to 100 bytes
        i = raw.find(sig)
        off = 22 if sig == b"PK\x03\x04" else 24
        raw[i + off:i + off + 4] = (100).to_bytes(4, "little")
    lied.write_bytes(bytes(raw))
    assert zi.file_size == 8 << 20
    with pytest.raises(SigmaArchiveError, match="cannot read member .*bomb.yml.*Bad CRC-32"):
        inst.update(data, from_path=lied)
    assert _state(data) == before


def test_tar_headers_bounded_under_tarfile(tmp_path: Path) -> None:
    """A GNU long name is read into memory by tarfile itself: the decompressed stream is capped."""
    tgz = tmp_path / "longname.tar.gz"
    with tarfile.open(tgz, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("rules/linux/" + "x" * (3 << 20) + ".yml")
        tf.addfile(ti, None)
    assert tgz.stat().st_size < 64 << 10
    with pytest.raises(SigmaArchiveError, match="decompressed archive exceeds the 1048576-byte cap"):
        inst.update(tmp_path / "data", from_path=tgz, limits=Limits(max_total=1 << 20))
    assert _state(tmp_path / "data") == (None, [])


def test_member_count_and_total_size_bounded(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "r.zip", _few_rules(10))
    with pytest.raises(SigmaArchiveError, match="more than the 5 allowed"):
        inst.update(tmp_path / "d1", from_path=z, limits=Limits(max_members=5))
    with pytest.raises(SigmaArchiveError, match="extracted data exceeds the 2000-byte cap"):
        inst.update(tmp_path / "d2", from_path=z, limits=Limits(max_total=2000))
    tgz = tmp_path / "r.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for p in _few_rules(10):
            tf.add(p, p.relative_to(CORPUS).as_posix())
    with pytest.raises(SigmaArchiveError, match="more than the 5 members allowed"):
        inst.update(tmp_path / "d3", from_path=tgz, limits=Limits(max_members=5))
    with pytest.raises(SigmaArchiveError, match="exceeds the 2000-byte cap"):
        inst.update(tmp_path / "d4", from_path=tgz, limits=Limits(max_total=2000))
    for d in ("d1", "d2", "d3", "d4"):
        assert _state(tmp_path / d)[0] is None
        assert _state(tmp_path / d)[1] == []                     # no staging left behind


def test_symlink_in_a_local_tree_refused(tmp_path: Path) -> None:
    src = tmp_path / "checkout"
    (src / "rules" / "linux").mkdir(parents=True)
    for p in _few_rules(2):
        (src / "rules" / "linux" / p.name).write_bytes(p.read_bytes())
    (src / "rules" / "linux" / "evil.yml").symlink_to("/etc/passwd")
    with pytest.raises(SigmaArchiveError, match="symlink in the rule tree refused") as ei:
        inst.update(tmp_path / "data", from_path=src)
    assert ei.value.location is not None and ei.value.location.source.endswith("evil.yml")


def test_one_update_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "sigma"
    (root / "releases").mkdir(parents=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SigmaInstallError, match="another 'bastion sigma update' is running"):
            inst.update(tmp_path, from_path=CORPUS)
    finally:
        os.close(fd)
    assert _state(tmp_path) == (None, [])


# ---------------------------------------------------------------- download

def test_download_latest_release_verified_by_digest(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip")
    with ReleaseServer() as srv:
        srv.publish("r2026-11-30", {"sigma_core.zip": z, "sigma_all_rules.zip": z})
        res = inst.update(tmp_path / "data", url=srv.base)
    assert res.release == "r2026-11-30" and res.verified == "github-digest" and res.sha256 == sha256(z)
    assert res.rules == CORPUS_LOADED and res.source.endswith("/r2026-11-30/sigma_core.zip")
    assert [s.path for s in srv.seen] == ["/repos/SigmaHQ/sigma/releases/latest",
                                          "/SigmaHQ/sigma/releases/download/r2026-11-30/sigma_core.zip"]
    assert srv.seen[0].headers["accept"] == "application/vnd.github+json"
    assert all("authorization" not in s.headers for s in srv.seen)        # no token given
    info = inst.installed_info(tmp_path / "data")
    assert info["release"] == "r2026-11-30" and info["verified"] == "github-digest"
    assert info["release_id"] == f"r2026-11-30-{sha256(z)[:12]}"


def test_download_by_tag_and_asset_with_pin(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "all.zip", _few_rules(4))
    with ReleaseServer() as srv:
        srv.publish("r2026-10-01", {"sigma_all_rules.zip": z})
        res = inst.update(tmp_path / "data", url=srv.base + "/", tag="r2026-10-01",
                          asset="sigma_all_rules.zip", sha256=sha256(z))
        assert srv.seen[0].path == "/repos/SigmaHQ/sigma/releases/tags/r2026-10-01"
        with pytest.raises(SigmaDownloadError, match=r"has no asset 'sigma_core.zip' \(it has: sigma_all_rules.zip\)"):
            inst.update(tmp_path / "data", url=srv.base)
    assert res.verified == "github-digest+pinned" and res.rules == 4


def test_digest_mismatch_refused_and_live_set_kept(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]]) -> None:
    data, before = live
    z = release_zip(tmp_path / "sigma_core.zip")
    with ReleaseServer() as srv:
        srv.publish("r1", {"sigma_core.zip": z}, digest_override="sha256:" + "ab" * 32)
        with pytest.raises(SigmaChecksumError, match=f"sha256 mismatch: got {sha256(z)}, the release's digest says") as ei:
            inst.update(data, url=srv.base)
    assert ei.value.location is not None and ei.value.location.source.endswith("/r1/sigma_core.zip")
    assert _state(data) == before
    assert [p.name for p in (data / "sigma").iterdir() if p.name.startswith(".download")] == []


def test_pin_mismatch_refused(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(2))
    with ReleaseServer() as srv:
        srv.publish("r1", {"sigma_core.zip": z})
        with pytest.raises(SigmaChecksumError, match="--sha256 1111.* is not the release's digest"):
            inst.update(tmp_path / "data", url=srv.base, sha256="1" * 64)
        assert len(srv.seen) == 1                                    # refused before downloading
    assert inst.installed_info(tmp_path / "data")["installed"] is False


def test_no_checksum_refused_unless_allowed(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(2))
    with ReleaseServer() as srv:
        srv.publish("r-old", {"sigma_core.zip": z}, digest=False)
        with pytest.raises(SigmaChecksumError, match="release r-old gives no sha256 digest for sigma_core.zip"):
            inst.update(tmp_path / "data", url=srv.base)
        assert len(srv.seen) == 1                                    # refused before downloading
        res = inst.update(tmp_path / "data", url=srv.base, allow_unverified=True)
        assert res.verified == "unverified" and res.sha256 == sha256(z)
        pinned = inst.update(tmp_path / "data2", url=srv.base, sha256=sha256(z))
        assert pinned.verified == "pinned"


def test_archive_url_needs_a_pin(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(3))
    with ReleaseServer() as srv:
        srv.routes["/mirror/sigma_core.zip"] = Route(body=z.read_bytes())
        url = srv.base + "/mirror/sigma_core.zip"
        with pytest.raises(SigmaChecksumError, match="an archive URL carries no checksum"):
            inst.update(tmp_path / "data", url=url)
        assert srv.seen == []
        res = inst.update(tmp_path / "data", url=url, sha256=sha256(z))
    assert res.release == "sigma_core.zip" and res.verified == "pinned" and res.rules == 3


def test_redirect_to_another_host_drops_the_token(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(3))
    with ReleaseServer() as api, ReleaseServer() as cdn:
        # the API names an asset on its own origin, which redirects to the CDN (another origin)
        api.publish("r1", {"sigma_core.zip": z})
        asset_path = "/SigmaHQ/sigma/releases/download/r1/sigma_core.zip"
        cdn.routes["/blob/abc"] = Route(body=z.read_bytes())
        api.routes[asset_path] = Route(302, headers={"Location": cdn.base + "/blob/abc"})
        res = inst.update(tmp_path / "data", url=api.base, token="ghp_secret")
    assert res.rules == 3 and res.verified == "github-digest"
    assert [s.headers.get("authorization") for s in api.seen] == ["Bearer ghp_secret", "Bearer ghp_secret"]
    assert [s.path for s in cdn.seen] == ["/blob/abc"]
    assert "authorization" not in cdn.seen[0].headers


def test_asset_on_another_host_gets_no_token(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(2))
    with ReleaseServer() as api, ReleaseServer() as cdn:
        cdn.publish("r1", {"sigma_core.zip": z})
        api.publish("r1", {"sigma_core.zip": z}, asset_base=cdn.base)
        inst.update(tmp_path / "data", url=api.base, token="ghp_secret")
    assert api.seen[0].headers["authorization"] == "Bearer ghp_secret"
    assert [s.path for s in cdn.seen] == ["/SigmaHQ/sigma/releases/download/r1/sigma_core.zip"]
    assert "authorization" not in cdn.seen[0].headers


def test_redirects_bounded_and_never_to_plain_http_elsewhere(tmp_path: Path) -> None:
    with ReleaseServer() as srv:
        srv.routes["/loop.zip"] = Route(302, headers={"Location": "/loop.zip"})
        srv.routes["/away.zip"] = Route(301, headers={"Location": "http://example.com/sigma.zip"})
        with pytest.raises(SigmaDownloadError, match="more than 5 redirects"):
            inst.update(tmp_path / "d", url=srv.base + "/loop.zip", allow_unverified=True)
        assert len(srv.seen) == 6
        with pytest.raises(SigmaDownloadError, match="plain http is refused except to a loopback") as ei:
            inst.update(tmp_path / "d", url=srv.base + "/away.zip", allow_unverified=True)
    assert ei.value.location is not None and ei.value.location.source == "http://example.com/sigma.zip"


def test_download_size_capped(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip")
    with ReleaseServer() as srv:
        srv.publish("r1", {"sigma_core.zip": z})
        with pytest.raises(SigmaDownloadError, match="exceeds the 10000-byte cap"):
            inst.update(tmp_path / "data", url=srv.base, limits=Limits(max_download=10_000))
    assert inst.installed_info(tmp_path / "data")["installed"] is False


@pytest.mark.parametrize("route,why", [
    (Route(404, b'{"message": "Not Found"}'), r'HTTP 404 Not Found: \{"message": "Not Found"\}'),
    (Route(200, b"<html>rate limited</html>"), "release JSON is malformed"),
    (Route(200, b'{"message": "hi"}'), "not a GitHub release"),
])
def test_api_failures_are_named(tmp_path: Path, route: Route, why: str) -> None:
    with ReleaseServer() as srv:
        srv.routes["/repos/SigmaHQ/sigma/releases/latest"] = route
        with pytest.raises(SigmaDownloadError, match=why) as ei:
            inst.update(tmp_path / "data", url=srv.base)
    assert ei.value.location is not None
    assert ei.value.location.source == srv.base + "/repos/SigmaHQ/sigma/releases/latest"


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                    # nothing listens there now
    with pytest.raises(SigmaDownloadError, match="request failed"):
        inst.update(tmp_path / "data", url=f"http://127.0.0.1:{port}")


def test_gzip_content_encoding_refused(tmp_path: Path) -> None:
    import gzip

    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(2))
    with ReleaseServer() as srv:
        srv.routes["/m/sigma_core.zip"] = Route(body=gzip.compress(z.read_bytes()),
                                                headers={"Content-Encoding": "gzip"})
        with pytest.raises(SigmaDownloadError, match="unexpected Content-Encoding 'gzip'"):
            inst.update(tmp_path / "data", url=srv.base + "/m/sigma_core.zip", sha256=sha256(z))
        assert srv.seen[0].headers["accept-encoding"] == "identity"


def test_slow_server_bounded_by_the_deadline(tmp_path: Path) -> None:
    import time

    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(40))
    assert z.stat().st_size > 8 * 1024                           # > 8 pieces: > 1.6 s at the server's pace
    with ReleaseServer() as srv:
        srv.routes["/m/sigma_core.zip"] = Route(body=z.read_bytes(), trickle=0.2)
        t0 = time.monotonic()
        with pytest.raises(SigmaDownloadError, match="took longer than the deadline"):
            inst.update(tmp_path / "data", url=srv.base + "/m/sigma_core.zip", sha256=sha256(z),
                        limits=Limits(deadline=0.5))
        assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("tag", ["r1\nFAKE LINE", "../../x", "r1?x=1", ""])
def test_release_tags_are_plain(tmp_path: Path, tag: str) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(2))
    with ReleaseServer() as srv:
        srv.publish("r1", {"sigma_core.zip": z})
        body = json.loads(srv.routes["/repos/SigmaHQ/sigma/releases/latest"].body)
        body["tag_name"] = tag
        srv.routes["/repos/SigmaHQ/sigma/releases/latest"] = Route(body=json.dumps(body).encode())
        with pytest.raises(SigmaDownloadError, match="is not a plain tag"):
            inst.update(tmp_path / "data", url=srv.base)
        if tag:
            with pytest.raises(SigmaDownloadError, match="not a release tag") as ei:
                inst.update(tmp_path / "data", url=srv.base, tag=tag)
            assert ei.value.location is not None and ei.value.location.source == "--tag"
    assert inst.installed_info(tmp_path / "data")["installed"] is False


def test_yaml_aliases_are_dropped_and_named(tmp_path: Path) -> None:
    laughs = ("title: lol\nid: 6f2b0a52-0000-4000-8000-000000000001\nlogsource: {product: linux, "
              "category: process_creation}\ndetection:\n  a: &a ['x','x','x','x','x','x','x','x','x','x']\n"
              "  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
              "  selection: {Image: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]}\n  condition: selection\n")
    z = release_zip(tmp_path / "r.zip", _few_rules(3),
                    extra={"rules/linux/process_creation/lol.yml": laughs.encode()})
    res = inst.update(tmp_path / "data", from_path=z)
    assert res.rules == 3 and res.files == 4
    assert res.errors == ["rules/linux/process_creation/lol.yml: YAML anchors and aliases are refused "
                          "(no Sigma rule needs them)"]
    assert not (res.path / "rules/linux/process_creation/lol.yml").exists()
    assert inst.installed_info(tmp_path / "data")["errors"] == 1


def test_corrupt_manifest_is_named(tmp_path: Path) -> None:
    res = inst.update(tmp_path, from_path=release_zip(tmp_path / "a.zip", _few_rules(2)))
    (res.path / "bastion-sigma.json").write_text("{not json")
    with pytest.raises(SigmaInstallError, match="unreadable manifest") as ei:
        inst.installed_info(tmp_path)
    assert ei.value.location is not None and ei.value.location.source == str(res.path / "bastion-sigma.json")


def test_os_failure_is_named_and_keeps_the_live_set(tmp_path: Path, live: tuple[Path, tuple[str | None, list[str]]]) -> None:
    data, before = live
    lock = data / "sigma" / ".lock"
    lock.unlink()
    lock.mkdir()                              # an OS failure root cannot bypass: EISDIR on open
    with pytest.raises(SigmaInstallError, match="Is a directory; the installed set is unchanged") as ei:
        inst.update(data, from_path=release_zip(tmp_path / "b.zip", _few_rules(4)))
    assert ei.value.location is not None and ei.value.location.source == str(lock)
    assert _state(data) == before


# ---------------------------------------------------------------- the CLI's machine output

def test_cli_json(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bastion.cli.sigma import sigma_group

    runner = CliRunner()
    r = runner.invoke(sigma_group, ["installed", "--data-dir", str(tmp_path), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["installed"] is False
    r = runner.invoke(sigma_group, ["update", "--data-dir", str(tmp_path), "--from", str(CORPUS), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["rules"], out["unsupported"], out["files"], out["errors"]) == (
        CORPUS_LOADED, CORPUS_UNSUPPORTED, CORPUS_FILES, [])
    assert out["already_current"] is False and out["notice"] == inst.DRL_NOTICE
    info = json.loads(runner.invoke(sigma_group, ["installed", "--data-dir", str(tmp_path), "--json"]).output)
    assert info["rules"] == CORPUS_LOADED and info["path"] == out["path"]
    r = runner.invoke(sigma_group, ["update", "--data-dir", str(tmp_path), "--from", str(CORPUS), "--tag", "r1"])
    assert r.exit_code == 2 and "--from installs offline" in r.output


def test_release_already_live_is_not_downloaded_again(tmp_path: Path) -> None:
    z = release_zip(tmp_path / "sigma_core.zip", _few_rules(3))
    with ReleaseServer() as srv:
        srv.publish("r1", {"sigma_core.zip": z})
        first = inst.update(tmp_path / "data", url=srv.base)
        before = _state(tmp_path / "data")
        again = inst.update(tmp_path / "data", url=srv.base)
        assert [s.path.rsplit("/", 1)[-1] for s in srv.seen] == ["latest", "sigma_core.zip", "latest"]
    assert again.already_current and again.release_id == first.release_id and again.rules == 3
    assert _state(tmp_path / "data") == before
