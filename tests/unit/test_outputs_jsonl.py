"""JSON lines output: file (append, 0640, size rotation), stdout, OCSF format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bastion.errors import BastionError
from bastion.outputs.formats import make_formatter
from bastion.outputs.jsonl import JsonlOutput
from support.samples import sample_alert, sample_events


def test_file_gets_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "bastion.jsonl"
    out = JsonlOutput("f", path)
    evs = sample_events()
    out.write([("event", e) for e in evs] + [("alert", sample_alert())])
    out.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(evs) + 1
    assert rows[0] == {"kind": "event", **evs[0]}
    assert rows[-1]["kind"] == "alert" and rows[-1]["attack"] == ["T1055", "T1055.008", "TA0004"]
    assert os.stat(path).st_mode & 0o777 == 0o640
    out2 = JsonlOutput("f", path)          # appends, never truncates
    out2.write([("alert", sample_alert())])
    out2.close()
    assert len(path.read_text().splitlines()) == len(evs) + 2


def test_rotation_by_size_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    out = JsonlOutput("f", path, max_bytes=4096, backups=2)
    ev = sample_events()[0]
    for _ in range(60):
        out.write([("event", ev)] * 5)
    out.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["e.jsonl", "e.jsonl.1", "e.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 4096
        for line in p.read_text().splitlines():
            assert json.loads(line)["type"] == "exec"


def test_stdout_and_ocsf(capsys: pytest.CaptureFixture[str]) -> None:
    out = JsonlOutput("o", None, fmt=make_formatter("ocsf", hostname="h", product_version="1"))
    out.write([("alert", sample_alert())])
    out.close()
    obj = json.loads(capsys.readouterr().out)
    assert obj["class_uid"] == 2004
    assert obj["finding_info"]["attacks"][0]["technique"]["uid"] == "T1055"


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack is on root's open")
@pytest.mark.parametrize("plant", ["symlink", "fifo", "user_file", "hardlink"])
def test_a_file_planted_at_the_output_path_is_never_written(tmp_path: Path, plant: str) -> None:
    """s24: the output was opened by path with O_CREAT and no O_NOFOLLOW, as root.  With the
    path in a directory a user can write (/tmp, a service's log dir), the user planted a
    symlink there: root appended the JSON lines -- whose strings the attacker chooses -- to
    any file (``/root/.bashrc``: bash expands ``$(...)`` inside the JSON's double quotes);
    a FIFO blocked the output for good; a file of the user's own let it edit or forge
    the records; a hard link made root append to the linked file."""
    import stat as st_

    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)                                  # like /tmp
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    path = d / "alerts.jsonl"
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "fifo":
        os.mkfifo(path)
    elif plant == "user_file":
        path.write_text("")
        os.chown(path, 65534, 65534)
    else:
        os.link(victim, path)
    out = JsonlOutput("f", path)
    with pytest.raises(OSError if plant in ("symlink", "fifo") else BastionError):
        out.write([("alert", sample_alert(title="$(id > /tmp/pwned)"))])
    out.close()
    assert victim.read_text() == "root's file\n"
    assert not st_.S_ISREG(os.lstat(path).st_mode) or os.stat(path).st_size == 0 \
        or plant == "hardlink"


def test_its_own_file_is_written_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    for _ in range(2):
        out = JsonlOutput("f", path)
        out.write([("alert", sample_alert())])
        out.close()
    assert len(path.read_text().splitlines()) == 2
