"""The must-stop object list's expansion, shared by both provenance gates: links a
user controls, inodes reached twice, and trees a user filled (issue 15, s14 review)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.enforce.muststop import GateObject, expand, redirected

NOBODY = 65534


def _user_link(link: Path, target: Path) -> None:
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    os.chown(h, NOBODY, NOBODY)
    return h


def test_a_link_a_user_placed_is_not_followed(tmp_path: Path, home: Path) -> None:
    """`ln -s ~/.bashrc ~/.zsh_history`: the profile would become a log object (appends
    allowed, new names allowed); `ln -s /etc/cron.d ~/.bash_history` the same for a
    persistence directory.  Before, os.stat followed the link and the last kind won."""
    if os.geteuid() != 0:
        pytest.skip("needs root (lchown)")
    profile = home / ".bashrc"
    profile.write_text("# profile\n")
    cron = tmp_path / "cron.d"
    cron.mkdir()
    _user_link(home / ".zsh_history", profile)
    _user_link(home / ".bash_history", cron)
    objs = [GateObject(str(profile), "persistence"), GateObject(str(cron), "persistence"),
            GateObject(str(home / ".zsh_history"), "log"),
            GateObject(str(home / ".bash_history"), "log")]
    entries, problems, over = expand(objs, max_dirs=100, per_object_dirs=50)
    assert {(e.path, e.kind) for e in entries} == {(str(profile), "persistence"),
                                                   (str(cron), "persistence")}
    assert sorted(problems) == sorted(
        f"{p}: {p} is a symbolic link a user controls: not entered"
        for p in (home / ".zsh_history", home / ".bash_history"))
    assert over == []
    # a link in the middle of the path is a link too
    _user_link(home / ".config", tmp_path)
    assert redirected(str(home / ".config" / "cron.d")) == \
        f"{home / '.config'} is a symbolic link a user controls"


def test_root_links_in_root_directories_are_followed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root-owned links")
    real = tmp_path / "usr" / "lib" / "systemd"
    real.mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")        # as merged /usr: root's, relative
    os.chown(tmp_path, 0, 0)
    assert redirected(str(tmp_path / "lib" / "systemd")) is None
    entries, problems, _ = expand([GateObject(str(tmp_path / "lib" / "systemd"), "persistence")],
                                  max_dirs=10, per_object_dirs=10)
    assert problems == [] and [e.kind for e in entries] == ["persistence"]


def test_an_inode_reached_twice_keeps_its_strictest_kind(tmp_path: Path) -> None:
    f = tmp_path / "shadow"
    f.write_text("x\n")
    os.link(f, tmp_path / "hist")                    # one inode, two objects
    for order in ([("log", "hist"), ("credential", "shadow")],
                  [("credential", "shadow"), ("log", "hist")]):
        entries, _, _ = expand([GateObject(str(tmp_path / n), k) for k, n in order],  # type: ignore[arg-type]
                               max_dirs=10, per_object_dirs=10)
        assert [e.kind for e in entries] == ["credential"], order


def test_a_tree_over_its_share_is_entered_breadth_first_and_named(tmp_path: Path) -> None:
    big = tmp_path / "big"
    deep = big / "a" / "b" / "c"
    deep.mkdir(parents=True)
    for i in range(30):
        (big / f"x{i:02d}").mkdir()
    small = tmp_path / "small"
    (small / "s").mkdir(parents=True)
    entries, problems, over = expand([GateObject(str(big), "credential"),
                                      GateObject(str(small), "persistence")],
                                     max_dirs=100, per_object_dirs=20)
    paths = {e.path for e in entries}
    assert str(big) in paths and str(big / "a") in paths and str(deep) not in paths
    assert {str(small), str(small / "s")} <= paths
    assert sum(1 for e in entries if e.kind == "credential") == 20
    assert over == [f"{big}: more than 20 directories: the 20 nearest its top are entered, "
                    f"files deeper are not refused (alerted after the act)"]
    assert problems == []


def test_objects_inside_another_root_are_walked_in_it(tmp_path: Path) -> None:
    """s18-gate (the bench's sandboxes): ``/proc/PID/root`` is a link whose text is
    ``/``, so a walk of ``/proc/PID/root/<overlay>/etc/cron.d`` went back to this
    namespace (ENOENT: the sandbox's objects were never marked).  Walked inside the
    given root now, its absolute links and ``..`` staying in it."""
    import subprocess
    import time

    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace)")
    sbx = tmp_path / "sbx"
    sbx.mkdir()
    ready = tmp_path / "ready"
    # the sandbox's own tmpfs at sbx, in a mount namespace of its own: not in this one
    setup = (f"mount -t tmpfs t {sbx} && mkdir -p {sbx}/etc/cron.d/sub {sbx}/run/creds "
             f"{sbx}/var && ln -s /run {sbx}/var/run && touch {ready} && sleep 20")
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", setup])
    try:
        end = time.monotonic() + 5
        while not ready.exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert ready.exists()
        root = f"/proc/{p.pid}/root{sbx}"
        assert not (sbx / "etc").exists()          # only the sandbox sees its tmpfs
        entries, problems, _ = expand(
            [GateObject("/etc/cron.d", "persistence"),
             GateObject("/var/run/creds", "credential"),       # an absolute link: in root
             GateObject("/../../etc/cron.d/sub", "persistence")],   # ".." stays in root
            max_dirs=100, per_object_dirs=50, root=root)
        assert problems == []
        got = sorted((e.path, e.kind) for e in entries)
        assert got == [(f"{root}/etc/cron.d", "persistence"),
                       (f"{root}/etc/cron.d/sub", "persistence"),
                       (f"{root}/run/creds", "credential")]
        for e in entries:      # the sandbox's inodes (its tmpfs), not this namespace's
            st = os.stat(e.path)
            assert e.key[1] == st.st_ino and os.path.isdir(e.path)
    finally:
        p.kill()
        p.wait()


def test_multiplexer_configs_are_must_stop_profile_objects(tmp_path: Path) -> None:
    """s18 review item 7: a tmux or screen config in a home directory (existing or not:
    the profile-dir names), /etc/tmux.conf, /etc/screenrc and ~/.config/tmux are gate
    objects of the persistence kind.  Before: none of them."""
    from bastion.enforce.muststop import default_names, default_objects
    (tmp_path / "root" / ".config" / "tmux").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "tmux.conf").write_text("")
    names = set(default_names(str(tmp_path)))
    for n in (".tmux.conf", ".screenrc"):
        assert (str(tmp_path / "root"), n, "persistence") in names
    assert (str(tmp_path / "etc"), "screenrc", "persistence") in names
    objs = {(o.path, o.kind) for o in default_objects(str(tmp_path))}
    assert (str(tmp_path / "etc" / "tmux.conf"), "persistence") in objs
    assert (str(tmp_path / "root" / ".config" / "tmux"), "persistence") in objs


def test_security_configs_and_mail_spools_are_must_stop_objects(tmp_path: Path) -> None:
    """s23-muststop (issue 15): the firewall's and the logging's configs are objects of
    the security-config kind on both tiers (the lsm tier also by name: a first
    /etc/nftables.conf, a rename over /etc/rsyslog.conf), the mail spools log objects.
    Before: none of them (T1562.004-16, T1562.006-2, T1070.002-19 not taken)."""
    from bastion.enforce.muststop import COMPAT_KINDS, KINDS, default_names, default_objects
    t = tmp_path
    for d in ("etc/default", "etc/ufw", "etc/iptables", "etc/rsyslog.d", "etc/audit/rules.d",
              "etc/systemd/journald.conf.d", "var/spool/mail", "var/mail"):
        (t / d).mkdir(parents=True)
    for f in ("etc/default/ufw", "etc/rsyslog.conf", "etc/audit/auditd.conf",
              "etc/systemd/journald.conf"):
        (t / f).write_text("")
    objs = {(o.path[len(str(t)):], o.kind) for o in default_objects(str(t), kinds=COMPAT_KINDS)}
    assert {("/etc/default/ufw", "security-config"), ("/etc/ufw", "security-config"),
            ("/etc/iptables", "security-config"), ("/etc/rsyslog.conf", "security-config"),
            ("/etc/rsyslog.d", "security-config"), ("/etc/audit", "security-config"),
            ("/etc/systemd/journald.conf", "security-config"),
            ("/etc/systemd/journald.conf.d", "security-config"),
            ("/var/spool/mail", "log"), ("/var/mail", "log")} <= objs, objs
    assert objs == {(o.path[len(str(t)):], o.kind) for o in default_objects(str(t), kinds=KINDS)}
    names = set(default_names(str(t)))
    for d, n in (("etc", "nftables.conf"), ("etc", "rsyslog.conf"), ("etc/default", "ufw"),
                 ("etc/systemd", "journald.conf")):
        assert (str(t / d), n, "security-config") in names, (d, n)
    # the audit tree is walked: rules.d is a directory entry of its own (its files and
    # auditd.conf are children of an entered directory)
    entries, problems, _over = expand([GateObject(str(t / "etc" / "audit"), "security-config")],
                                      max_dirs=100, per_object_dirs=100)
    assert problems == [] and {(e.path, e.is_dir, e.kind) for e in entries} == {
        (str(t / "etc" / "audit"), True, "security-config"),
        (str(t / "etc" / "audit" / "rules.d"), True, "security-config")}
