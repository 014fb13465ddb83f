"""``bastion sigma update`` as a user runs it, against a GitHub-shaped release on a loopback server.

One story: nothing installed (status says how) -> the latest release installs,
verified by its digest -> a release whose rules do not load, and one whose
digest does not match, are refused with the live set kept -> a newer release
installs with the first kept for rollback -> rollback -> offline ``--from``.
Then (root) the agent evaluating an installed set raises an alert keeping the
rule's author.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import start_agent  # type: ignore[import-not-found]
from support.sigma_release import (
    CORPUS,
    ReleaseServer,
    corpus_linux_rules,
    release_zip,
    sha256,
)

REPO = Path(__file__).resolve().parents[2]
BASTION = str(REPO / ".venv" / "bin" / "bastion")
DRL = "Detection Rule License (DRL) 1.1"


def bastion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, "sigma", *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def installed(data: Path) -> dict:  # type: ignore[type-arg]
    r = bastion("installed", "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_sigma_update_from_a_release_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = bastion("installed", "--data-dir", str(data))
    assert r.returncode == 0 and "no Sigma rules installed" in r.stdout and "bastion sigma update" in r.stdout

    core = release_zip(tmp_path / "core.zip")
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("rules/linux/process_creation/broken_a.yml", "title: [unclosed\n")
        zf.writestr("rules/linux/process_creation/broken_b.yml", "just: a mapping\n")
    small = release_zip(tmp_path / "small.zip",
                        [p for p in corpus_linux_rules() if "process_creation" in p.parts][:20])

    with ReleaseServer() as srv:
        srv.publish("r2026-11-30", {"sigma_core.zip": core, "sigma_all_rules.zip": core})
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert "installed SigmaHQ release r2026-11-30 from " + srv.base in out
        assert f"sha256 {sha256(core)} (verified against the release's sha256 digest)" in out
        assert "179 rules loaded, 31 unsupported, 0 files with errors (of 210;" in out
        assert out.rstrip().splitlines()[-1].startswith("Sigma rules from SigmaHQ") and DRL in out
        info = installed(data)
        assert (info["installed"], info["rules"], info["release"]) == (True, 179, "r2026-11-30")
        live = Path(info["path"])
        assert (live / "rules/linux/process_creation/proc_creation_lnx_base64_decode.yml").is_file()
        assert not (live / "rules/windows").exists()

        # the same release again: nothing to do
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
        assert r.returncode == 0 and "already installed and live (179 rules); nothing changed" in r.stdout

        # a release whose rules do not load: refused, the live set stays
        srv.publish("r2026-12-01", {"sigma_core.zip": broken})
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
        assert r.returncode == 1
        assert "none of its 2 rule files loaded" in r.stderr and "installed set is unchanged" in r.stderr
        assert r.stderr.startswith("bastion: " + srv.base + "/SigmaHQ/sigma/releases/download/r2026-12-01/")
        assert installed(data)["release"] == "r2026-11-30"

        # a release whose download does not match its digest: refused before anything is unpacked
        srv.publish("r2026-12-02", {"sigma_core.zip": small}, digest_override="sha256:" + "0" * 64)
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
        assert r.returncode == 1 and "sha256 mismatch" in r.stderr and "nothing installed" in r.stderr
        assert installed(data)["release"] == "r2026-11-30"

        # a good newer release: installed, the first kept for rollback
        srv.publish("r2026-12-03", {"sigma_core.zip": small})
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
        assert r.returncode == 0, r.stderr
        assert "previous set (r2026-11-30) kept: 'bastion sigma rollback' restores it" in r.stdout
        info = installed(data)
        assert (info["release"], info["rules"], info["previous"]) == ("r2026-12-03", 20, "r2026-11-30")
        releases = sorted(p.name for p in (data / "sigma" / "releases").iterdir())
        assert len(releases) == 2                                 # current + previous, nothing else

    r = bastion("rollback", "--data-dir", str(data))
    assert r.returncode == 0 and "rolled back to r2026-11-30 (179 rules)" in r.stdout, r.stderr
    assert installed(data)["release"] == "r2026-11-30"

    # offline, from the corpus checkout
    r = bastion("update", "--data-dir", str(data), "--from", str(CORPUS))
    assert r.returncode == 0, r.stderr
    assert "installed local rule set from " + str(CORPUS.resolve()) in r.stdout and DRL in r.stdout
    info = installed(data)
    assert (info["release"], info["rules"], info["previous"]) == ("local", 179, "r2026-11-30")
    assert {"LICENSE", "LICENSE.Detection.Rules.md", "NOTICE"} <= {p.name for p in Path(info["path"]).iterdir()}


def test_sigma_update_refusals_name_the_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = bastion("update", "--data-dir", str(data), "--url", "http://example.com")
    assert r.returncode == 1
    assert r.stderr.strip() == ("bastion: http://example.com: plain http is refused except to a loopback "
                                "address (127.0.0.0/8, ::1, localhost); use https")
    r = bastion("update", "--data-dir", str(data), "--from", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stderr.strip() == f"bastion: {tmp_path / 'nope'}: no such file or directory"
    r = bastion("update", "--data-dir", str(data), "--from", str(CORPUS), "--url", "https://x")
    assert r.returncode == 2 and "--from installs offline" in r.stderr
    assert installed(data)["installed"] is False


def test_installed_set_alerts_live_with_author(tmp_path: Path) -> None:
    """What ``update`` installs is what the agent evaluates: an alert from it keeps the rule's author."""
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    rules = [CORPUS / "rules/linux/process_creation/proc_creation_lnx_base64_decode.yml",
             *[p for p in corpus_linux_rules() if "network_connection" in p.parts]]
    z = release_zip(tmp_path / "core.zip", rules)
    # installed apart from the agent's own data dir (tmp/data), so that a default policy that
    # also evaluates what is installed there cannot load the same rules twice
    data = tmp_path / "installed"
    with ReleaseServer() as srv:
        srv.publish("r2026-11-30", {"sigma_core.zip": z})
        r = bastion("update", "--data-dir", str(data), "--url", srv.base)
    assert r.returncode == 0, r.stderr
    live = installed(data)["path"]
    agent = start_agent(tmp_path, "--quiet", "--sigma", live)
    try:
        err = "".join(agent.stderr)
        assert f"{installed(data)['rules']} rules loaded" in err and "0 files with errors" in err, err
        b64 = subprocess.Popen(["base64", "--decode"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        b64.communicate("aGk=\n")
        rule = "sigma:e2072cab-8c9a-459b-b63c-40ae79e27031"
        deadline, got = time.monotonic() + 15, {}
        while rule not in got and time.monotonic() < deadline:
            q = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json", "--pid", str(b64.pid))
            got = {a["rule"]: a for a in map(json.loads, filter(str.strip, q.stdout.splitlines()))}
            time.sleep(0.2)
        assert rule in got, got
        assert got[rule]["author"] == "Daniil Yugoslavskiy, oscd.community"
        assert got[rule]["sigma"]["path"] == f"{live}/rules/linux/process_creation/proc_creation_lnx_base64_decode.yml"
    finally:
        agent.stop()


def test_update_through_the_running_agent_goes_live_without_restart(tmp_path: Path) -> None:
    """The default policy evaluates what is installed: `sigma update` with an agent running on
    the data dir is done by that agent (its data dir may be tamper-protected) and the set is
    live at once; status says how many rules are live, or that none are and how to fix it."""
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    agent = start_agent(tmp_path, "--quiet")
    try:
        sock = str(agent.socket)
        st = json.loads(agent.cli("status", "--socket", sock, "--json").stdout)
        assert st["protections"]["sigma"] == {"on": False, "detail": "no rules installed: bastion sigma update"}
        human = agent.cli("status", "--socket", sock).stdout
        assert "sigma" in human and "bastion sigma update" in human
        rules = [CORPUS / "rules/linux/process_creation/proc_creation_lnx_base64_decode.yml"]
        src = tmp_path / "src"
        for p in rules:
            dest = src / p.relative_to(CORPUS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
        r = subprocess.run([BASTION, "sigma", "update", "--from", str(src), "--data-dir",
                            str(agent.data_dir), "--socket", sock], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert "the running agent evaluates it now" in r.stdout and DRL in r.stdout, r.stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = json.loads(agent.cli("status", "--socket", sock, "--json").stdout)
            if st["protections"]["sigma"]["on"]:
                break
            time.sleep(0.2)
        assert st["protections"]["sigma"]["on"] and "1 rules live" in st["protections"]["sigma"]["detail"]
        b64 = subprocess.Popen(["base64", "--decode"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True)
        b64.communicate("aGk=\n")
        rule = "sigma:e2072cab-8c9a-459b-b63c-40ae79e27031"
        deadline, got = time.monotonic() + 15, {}
        while rule not in got and time.monotonic() < deadline:
            q = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json", "--pid", str(b64.pid))
            got = {a["rule"]: a for a in map(json.loads, filter(str.strip, q.stdout.splitlines()))}
            time.sleep(0.2)
        assert rule in got and got[rule]["author"] == "Daniil Yugoslavskiy, oscd.community", got
    finally:
        agent.stop()
