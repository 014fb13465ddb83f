"""The contract: bpf/include/bastion.h, the BTF of the compiled objects and bastion.abi.

Needs only the objects (make bpf), not root.  ``abi.contract_problems`` checks both
ways — every struct, enum and ``#define`` of the header has a mirror and every mirror
a declaration; sizes, member offsets and sizes, enum values (from BTF) and
``#define`` values (from the header's expressions).  The fixture tests feed it a
header or a mirror with one deliberate fault each and expect that fault named.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bastion import abi
from bastion.errors import AbiMismatchError
from bastion.kernel import btf
from bastion.kernel._ffi import BTF_KIND_STRUCT

ROOT = Path(__file__).resolve().parents[2]
HEADER_PATH = ROOT / "bpf" / "include" / "bastion.h"
BPF_DIR = ROOT / "build" / "bpf"
EVENTS_OBJ = BPF_DIR / "tp_events.bpf.o"
END = "#endif /* BASTION_H */"


@pytest.fixture(scope="module")
def header_text() -> str:
    return HEADER_PATH.read_text()


@pytest.fixture(scope="module")
def events_btf() -> Iterator[btf.Btf]:
    with btf.Btf.parse(EVENTS_OBJ) as b:
        yield b


def _with(text: str, snippet: str) -> str:
    """The header with ``snippet`` added just before its closing include guard."""
    assert text.count(END) == 1
    return text.replace(END, snippet + "\n" + END)


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


class _Override:
    """The real BTF with some enums replaced (what a differently built object would show)."""

    def __init__(self, real: btf.Btf, enums: Mapping[str, dict[str, int]]) -> None:
        self.real, self.enums = real, enums

    def struct_layout(self, name: str) -> btf.StructLayout:
        return self.real.struct_layout(name)

    def enum_values(self, name: str) -> dict[str, int]:
        return self.enums[name] if name in self.enums else self.real.enum_values(name)


# ---- the real files ----------------------------------------------------------------------


def test_header_btf_and_mirror_agree_in_every_object(header_text: str) -> None:
    header = abi.parse_header(header_text, "bastion.h")
    checked = []
    for obj in sorted(BPF_DIR.glob("*.bpf.o")):
        with btf.Btf.parse(obj) as b:
            if b.find("bastion_abi_types", BTF_KIND_STRUCT) is None:
                continue  # objects that do not include bpf/lib/common.h
            problems = abi.contract_problems(header, b)
            assert not problems, f"{obj.name}:\n" + "\n".join(problems)
        checked.append(obj.name)
    assert "tp_events.bpf.o" in checked, checked


def test_header_declares_what_the_mirror_lists(header_text: str) -> None:
    header = abi.parse_header(header_text)
    assert set(header.structs) == set(abi.STRUCTS) | abi.ANCHORS - {"bastion_abi_types"}
    assert set(header.enums) == set(abi.ENUMS)
    assert set(header.defines) == set(abi.DEFINES)
    assert header.macros == {}
    # the tamper section is part of the checked contract, not a side table
    for name in ("bastion_tamper_record", "bastion_tamper_op", "bastion_tamper_verdict",
                 "bastion_tamper_role"):
        assert name in abi.ENUMS and name in abi.ENUM_PREFIXES


def test_every_record_type_has_a_struct() -> None:
    assert set(abi.RECORDS) == set(abi.EventType)


def test_abi_version_in_rodata_matches(header_text: str) -> None:
    with btf.Btf.parse(EVENTS_OBJ) as b:
        var = b.datasec_vars(".rodata")["bastion_abi_version"]
    assert var.size == 4
    defines = abi.parse_header(header_text).defines
    assert abi.eval_define(defines["BASTION_ABI_VERSION"][1], {
        "BASTION_ABI_MAJOR": abi.ABI_MAJOR, "BASTION_ABI_MINOR": abi.ABI_MINOR,
    }) == abi.ABI_VERSION == (3 << 16) | abi.ABI_MINOR


def test_other_major_refused() -> None:
    abi.check_abi_version(abi.ABI_VERSION, "x.o")
    abi.check_abi_version(abi.ABI_VERSION + 7, "x.o")  # newer minor decodes the prefix
    with pytest.raises(AbiMismatchError, match="x.o: BPF object speaks ABI 4.0"):
        abi.check_abi_version(4 << 16, "x.o")
    # ABI 2.x file records had no ctime_ns before their strings (s21): refused, never misread
    with pytest.raises(AbiMismatchError, match="x.o: BPF object speaks ABI 2.12, this Bastion speaks 3"):
        abi.check_abi_version((2 << 16) | 12, "x.o")
    # ABI 1.x wrote fixed-size file records (1,128 bytes): refused, never misread
    with pytest.raises(AbiMismatchError, match="x.o: BPF object speaks ABI 1.4, this Bastion speaks 3"):
        abi.check_abi_version((1 << 16) | 4, "x.o")


# ---- the checker finds each kind of drift ------------------------------------------------


def test_new_struct_without_mirror_is_named(header_text: str, events_btf: btf.Btf) -> None:
    text = _with(header_text, "struct bastion_new_thing {\n\t__u32 a;\n};")
    problems = abi.contract_problems(abi.parse_header(text, "bastion.h"), events_btf)
    line = _line_of(text, "struct bastion_new_thing {")
    assert problems == [f"bastion.h:{line}: struct bastion_new_thing has no mirror in abi.STRUCTS"]


def test_mirrored_struct_missing_from_btf_is_named(header_text: str, events_btf: btf.Btf) -> None:
    class NewThing(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32)]

    text = _with(header_text, "struct bastion_new_thing {\n\t__u32 a;\n};")
    problems = abi.contract_problems(abi.parse_header(text), events_btf,
                                     structs={**abi.STRUCTS, "bastion_new_thing": NewThing})
    assert len(problems) == 1
    assert "struct bastion_new_thing is not in the compiled BTF" in problems[0]
    assert "bastion_abi_types (bpf/lib/common.h)" in problems[0]


def test_mirror_without_declaration_is_named(header_text: str, events_btf: btf.Btf) -> None:
    problems = abi.contract_problems(abi.parse_header(header_text), events_btf,
                                     structs={**abi.STRUCTS, "bastion_ghost": abi.InodeKey})
    assert problems == ["abi.STRUCTS['bastion_ghost']: no struct bastion_ghost in bastion.h"]


def test_struct_layout_drift_is_named(header_text: str, events_btf: btf.Btf) -> None:
    class Swapped(ctypes.Structure):  # bastion_rule_val is {action, rule_id}
        _fields_ = [("rule_id", ctypes.c_uint32), ("action", ctypes.c_uint32)]

    class Renamed(ctypes.Structure):  # bastion_inode_rule is {rule_id, action}
        _fields_ = [("rule_id", ctypes.c_uint32), ("verdict", ctypes.c_uint64)]

    header = abi.parse_header(header_text)
    problems = abi.contract_problems(header, events_btf, structs={
        **abi.STRUCTS, "bastion_rule_val": Swapped, "bastion_inode_rule": Renamed})
    rv, ir = header.structs["bastion_rule_val"], header.structs["bastion_inode_rule"]
    assert sorted(problems) == sorted([
        f"bastion.h:{rv}: struct bastion_rule_val: member rule_id at 4 (4 bytes), "
        "Swapped.rule_id at 0 (4 bytes)",
        f"bastion.h:{rv}: struct bastion_rule_val: member action at 0 (4 bytes), "
        "Swapped.action at 4 (4 bytes)",
        f"bastion.h:{ir}: struct bastion_inode_rule: 8 bytes, Renamed has 16",
        f"bastion.h:{ir}: struct bastion_inode_rule: member action has no field in Renamed",
        f"bastion.h:{ir}: struct bastion_inode_rule: Renamed.verdict is not a member",
    ])


def test_new_enum_without_mirror_is_named(header_text: str, events_btf: btf.Btf) -> None:
    text = _with(header_text, "enum bastion_colour {\n\tBASTION_RED = 1,\n};")
    problems = abi.contract_problems(abi.parse_header(text), events_btf)
    assert problems == [f"bastion.h:{_line_of(text, 'enum bastion_colour')}: "
                        "enum bastion_colour has no mirror in abi.ENUMS"]


def test_new_enumerator_with_stale_objects_says_rebuild(
    header_text: str, events_btf: btf.Btf
) -> None:
    text = header_text.replace("BASTION_ROLE_GUARDIAN = 2,",
                               "BASTION_ROLE_GUARDIAN = 2,\n\tBASTION_ROLE_WATCHER = 3,")
    assert text != header_text
    problems = abi.contract_problems(abi.parse_header(text), events_btf)
    assert len(problems) == 1
    assert "enum bastion_tamper_role: the compiled BTF has" in problems[0]
    assert "BASTION_ROLE_WATCHER" in problems[0] and "rebuild the objects" in problems[0]


def test_tamper_enum_value_drift_is_named(header_text: str, events_btf: btf.Btf) -> None:
    class Role(enum.IntEnum):
        AGENT = 1
        GUARDIAN = 3
        WATCHER = 4

    header = abi.parse_header(header_text)
    problems = abi.contract_problems(header, events_btf,
                                     enums={**abi.ENUMS, "bastion_tamper_role": Role})
    where = f"bastion.h:{header.enums['bastion_tamper_role']}: enum bastion_tamper_role"
    assert problems == [
        f"{where}: Role.WATCHER is not an enumerator (BASTION_ROLE_WATCHER)",
        f"{where}: BASTION_ROLE_GUARDIAN = 2, Role.GUARDIAN = 3",
    ]


def test_enum_value_added_in_the_object_is_named(header_text: str, events_btf: btf.Btf) -> None:
    """A header + objects with one more op than the mirror (header text agreeing)."""
    values = {**events_btf.enum_values("bastion_tamper_op"), "BASTION_TAMPER_KEXEC": 99}
    text = header_text.replace("BASTION_TAMPER_VM_WRITE = 16,",
                               "BASTION_TAMPER_VM_WRITE = 16,\n\tBASTION_TAMPER_KEXEC = 99,")
    header = abi.parse_header(text)
    problems = abi.contract_problems(header, _Override(events_btf, {"bastion_tamper_op": values}))
    assert problems == [f"bastion.h:{header.enums['bastion_tamper_op']}: enum bastion_tamper_op: "
                        "BASTION_TAMPER_KEXEC = 99 has no member in TamperOp"]


def test_sentinel_must_follow_the_largest_value(header_text: str, events_btf: btf.Btf) -> None:
    largest = max(v for k, v in events_btf.enum_values("bastion_event_type").items()
                  if k != "BASTION_EV_MAX")
    values = {**events_btf.enum_values("bastion_event_type"), "BASTION_EV_MAX": largest}
    problems = abi.contract_problems(abi.parse_header(header_text),
                                     _Override(events_btf, {"bastion_event_type": values}))
    assert len(problems) == 1
    assert (f"sentinel BASTION_EV_MAX = {largest}, not one past the largest value {largest}"
            in problems[0])


def test_enum_without_prefix_is_named(header_text: str, events_btf: btf.Btf) -> None:
    prefixes = {k: v for k, v in abi.ENUM_PREFIXES.items() if k != "bastion_mechanism"}
    problems = abi.contract_problems(abi.parse_header(header_text), events_btf, prefixes=prefixes)
    assert len(problems) == 1 and "enum bastion_mechanism: abi.ENUM_PREFIXES" in problems[0]


def test_flag_value_drift_is_named(header_text: str, events_btf: btf.Btf) -> None:
    text = header_text.replace("#define BASTION_F_RELATIVE2   (1u << 4)",
                               "#define BASTION_F_RELATIVE2   (1u << 5)")
    assert text != header_text
    problems = abi.contract_problems(abi.parse_header(text), events_btf)
    line = _line_of(text, "#define BASTION_F_RELATIVE2")
    assert problems == [f"bastion.h:{line}: #define BASTION_F_RELATIVE2 is 32 ((1u << 5)), "
                        "abi.DEFINES has 16"]


def test_new_define_and_stale_mirror_define_are_named(
    header_text: str, events_btf: btf.Btf
) -> None:
    text = _with(header_text, "#define BASTION_F_NEW (BASTION_F_RELATIVE2 << 1) /* x */")
    problems = abi.contract_problems(abi.parse_header(text), events_btf,
                                     defines={**abi.DEFINES, "BASTION_GONE": 1})
    line = _line_of(text, "#define BASTION_F_NEW")
    assert problems == [
        f"bastion.h:{line}: #define BASTION_F_NEW has no mirror in abi.DEFINES",
        "abi.DEFINES['BASTION_GONE']: no #define BASTION_GONE in bastion.h",
    ]


def test_unmirrorable_defines_are_named(header_text: str, events_btf: btf.Btf) -> None:
    text = _with(header_text, "#define BASTION_SQUARE(x) ((x) * (x))\n"
                              "#define BASTION_MASK ((__u32)~0)")
    problems = abi.contract_problems(abi.parse_header(text), events_btf)
    assert problems == [
        f"bastion.h:{_line_of(text, '#define BASTION_SQUARE')}: function-like macro "
        "BASTION_SQUARE in the contract cannot be mirrored: move it to bpf/lib/",
        f"bastion.h:{_line_of(text, '#define BASTION_MASK')}: #define BASTION_MASK: "
        "'((__u32)~0)' is not an integer constant expression",
    ]


# ---- the parts -----------------------------------------------------------------------


def test_parse_header_ignores_comments_and_the_include_guard() -> None:
    text = (
        "#ifndef G_H\n#define G_H\n"
        "/* struct bastion_in_comment { */\n"
        "// enum bastion_in_line_comment {\n"
        "#define BASTION_X (1u << 3) /* trailing */\n"
        "#define BASTION_LONG (1 | \\\n    2)\n"
        "enum bastion_e {\n\tBASTION_E_A = 1, /* one */\n\tBASTION_E_B,\n};\n"
        "struct bastion_s { __u32 a; };\n#endif\n"
    )
    h = abi.parse_header(text, "g.h")
    assert h.structs == {"bastion_s": 12}
    assert h.enums == {"bastion_e": 8}
    assert h.enumerators == {"bastion_e": ("BASTION_E_A", "BASTION_E_B")}
    assert h.defines == {"BASTION_X": (5, "(1u << 3)"), "BASTION_LONG": (6, "(1 | 2)")}
    assert h.macros == {}


@pytest.mark.parametrize("body,value", [
    ("16", 16), ("0x10", 16), ("010", 8), ("(1u << 4)", 16), ("(16 * 1024 * 1024)", 1 << 24),
    ("((A << 16) | B)", (1 << 16) | 3), ("~0UL & 0xff", 0xFF), ("-1", -1), ("A ^ B", 2),
])
def test_eval_define(body: str, value: int) -> None:
    assert abi.eval_define(body, {"A": 1, "B": 3}) == value


@pytest.mark.parametrize("body,msg", [
    ("UNKNOWN", "'UNKNOWN' is not an integer constant expression"),
    ("(1 <<", "'\\(1 <<' is not an integer constant expression"),
    ("sizeof(int)", "'sizeof\\(int\\)' is not an integer constant expression"),
    ("1.5", "'1.5' is not an integer constant expression"),
    ("\"s\"", "is not an integer constant expression"),
    ("1 / 2", "'1 / 2' is not an integer constant expression"),
    ("08", "'08' is not an integer literal"),
    ("1 << 100000", "'1 << 100000' shifts by 100000"),
])
def test_eval_define_refuses(body: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        abi.eval_define(body, {})


def test_anonymous_declarations_are_named(header_text: str, events_btf: btf.Btf) -> None:
    text = _with(header_text, "enum {\n\tBASTION_LOOSE = 1,\n};\n"
                              "struct bastion_ok {\n\tunion { __u32 a; __u32 b; };\n};")
    header = abi.parse_header(text)
    problems = abi.contract_problems(header, events_btf)
    assert f"bastion.h:{_line_of(text, 'enum {')}: an anonymous enum, struct or union cannot " \
        "be mirrored or checked: name it" in problems
    assert header.anonymous == (_line_of(text, "enum {"),)  # the nested union is fine


def test_new_member_with_stale_objects_says_rebuild(header_text: str, events_btf: btf.Btf) -> None:
    class Rule(ctypes.Structure):
        _fields_ = [("rule_id", ctypes.c_uint32), ("action", ctypes.c_uint32),
                    ("hits", ctypes.c_uint64)]

    old = "\t__u32 rule_id;       /* index into the plan's rule table (1-based) */"
    text = header_text.replace(old, "\t__u32 rule_id;\n\t__u64 hits;")
    assert text != header_text
    header = abi.parse_header(text)
    problems = abi.contract_problems(header, events_btf,
                                     structs={**abi.STRUCTS, "bastion_rule_val": Rule})
    assert problems == [
        f"bastion.h:{header.structs['bastion_rule_val']}: struct bastion_rule_val: the compiled "
        "BTF has members ['action', 'rule_id'], the header ['action', 'hits', 'rule_id']: "
        "rebuild the objects (make bpf)"]


def test_parse_header_member_names() -> None:
    h = abi.parse_header("struct bastion_s {\n\tstruct bastion_event_hdr hdr;\n"
                         "\tchar name[BASTION_NAME_LEN]; /* c; */\n\t__u8 addr[4][4];\n"
                         "\t__u32 bits : 3;\n\tconst volatile __u64 v;\n};\n"
                         "struct bastion_n {\n\tunion { __u32 a; __u32 b; };\n};\n")
    assert h.members == {"bastion_s": ("hdr", "name", "addr", "bits", "v")}
    assert set(h.structs) == {"bastion_s", "bastion_n"}
