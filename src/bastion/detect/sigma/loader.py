"""Sigma rule files in, pySigma rules with Bastion field names out.

Parsing is pySigma's (``SigmaCollection.from_yaml`` with ``collect_errors``);
field mapping and every "this cannot be expressed on Bastion events" decision
is a pySigma processing pipeline (:func:`bastion_pipeline`): a rule the
pipeline refuses raises ``SigmaTransformationError`` and is listed as
unsupported with that message, never half-applied.

Supported logsources (product ``linux``) and the name each maps to:

========================  ==================================================
``process_creation``      ``exec`` events
``file_event``            ``open`` with create/write intent, ``rename`` (new name)
``network_connection``    ``connect`` (Initiated true), ``accept`` (false)
``service: auditd``       audit records synthesised from events (EXECVE,
                          SYSCALL, PATH); see :mod:`bastion.detect.sigma.views`
========================  ==================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Mapping, Sequence

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation, SigmaTransformationError
from sigma.processing.conditions.base import (
    FieldNameProcessingCondition,
    RuleProcessingCondition,
)
from sigma.processing.conditions import (
    IncludeFieldCondition,
    LogsourceCondition,
    MatchStringCondition,
)
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations.base import DetectionItemTransformation
from sigma.processing.transformations import (
    FieldMappingTransformation,
    RuleFailureTransformation,
)
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaLogSource, SigmaRule

from bastion.errors import ConfigError, Location

# Sigma field name -> Bastion view field, per supported logsource.
PROCESS_FIELDS: Final[Mapping[str, str]] = {
    "Image": "exe",
    "CommandLine": "cmdline",
    "ParentImage": "parent_exe",
    "ParentCommandLine": "parent_cmdline",
    "User": "user",
    "CurrentDirectory": "cwd",
    "LogonId": "logon_id",
    "ProcessId": "pid",
    "ParentProcessId": "ppid",
}
FILE_FIELDS: Final[Mapping[str, str]] = {
    "TargetFilename": "path",
    "Image": "exe",
    "ProcessId": "pid",
    "User": "user",
}
NETWORK_FIELDS: Final[Mapping[str, str]] = {
    "DestinationIp": "daddr",
    "DestinationPort": "dport",
    "DestinationHostname": "dhost",
    "Initiated": "initiated",
    "Image": "exe",
    "SourceIp": "saddr",
    "SourcePort": "sport",
    "Protocol": "protocol",
    "ProcessId": "pid",
    "User": "user",
}
FIELD_MAPS: Final[Mapping[str, Mapping[str, str]]] = {
    "process_creation": PROCESS_FIELDS,
    "file_event": FILE_FIELDS,
    "network_connection": NETWORK_FIELDS,
}

# auditd: the record types and fields Bastion synthesises (see views.py).
AUDIT_RECORD_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "EXECVE": frozenset({"type", "argc"}),          # plus a0..aN
    "SYSCALL": frozenset({"type", "SYSCALL", "success", "exe", "comm", "pid", "ppid",
                          "uid", "euid", "gid"}),
    "PATH": frozenset({"type", "name", "nametype", "item"}),
}
AUDIT_SYSCALLS: Final[frozenset[str]] = frozenset({
    "execve", "openat", "unlinkat", "rename", "fchmodat", "fchownat", "memfd_create",
    "connect", "bind", "listen", "accept", "ptrace", "kill", "tkill", "tgkill", "bpf",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "capset",
})
AUDIT_ARG_RE: Final = r"a[0-9]+"
AUDIT_FIELDS: Final[frozenset[str]] = frozenset().union(*AUDIT_RECORD_FIELDS.values())

# Why a field cannot be mapped, when there is more to say than "no equivalent".
_FIELD_HINTS: Final[Mapping[str, str]] = {
    "key": "an audit rule key (auditctl -k); Bastion installs no audit rules",
    "auid": "the audit login uid is not in Bastion events",
    "ses": "the audit session id is not in Bastion events",
    "unit": "systemd unit names come from SERVICE_* records Bastion does not produce",
}

# logsources Bastion has no event source for, with the reason.
_NO_SOURCE: Final[Mapping[str, str]] = {
    "syslog": "syslog text", "sshd": "sshd log lines", "cron": "cron log lines",
    "clamav": "ClamAV log lines", "vsftpd": "vsftpd log lines",
    "guacamole": "Guacamole log lines",
}


class SigmaRuleError(ConfigError):
    """A Sigma rule file or directory that cannot be loaded (path + pySigma's error)."""


def logsource_key(ls: SigmaLogSource) -> str | None:
    """The Bastion logsource a rule belongs to, or None when unsupported."""
    if ls.product not in (None, "linux"):
        return None
    if ls.category in FIELD_MAPS and ls.service is None:
        return ls.category
    if ls.service == "auditd" and ls.category is None:
        return "auditd"
    return None


def logsource_label(ls: SigmaLogSource) -> str:
    """A short stable label: ``linux/process_creation``, ``linux/service:auditd``, ``linux``."""
    parts = [ls.product or "*"]
    if ls.category:
        parts.append(ls.category)
    if ls.service:
        parts.append(f"service:{ls.service}")
    return "/".join(parts)


@dataclass
class _ValueFailure(DetectionItemTransformation):
    """Refuse a detection item whose values Bastion never produces (names them)."""

    message: str

    def apply_detection_item(
        self, detection_item: SigmaDetectionItem
    ) -> SigmaDetection | SigmaDetectionItem | None:
        values = ", ".join(str(v) for v in detection_item.value)
        raise SigmaTransformationError(f"{self.message}: {detection_item.field} {values}",
                                       source=detection_item.source)


@dataclass
class _UnmappedFieldFailure(DetectionItemTransformation):
    """Refuse a detection item whose field has no Bastion equivalent (names the field)."""

    logsource: str

    def apply_detection_item(
        self, detection_item: SigmaDetectionItem
    ) -> SigmaDetection | SigmaDetectionItem | None:
        f = detection_item.field
        hint = _FIELD_HINTS.get(f or "", "no Bastion equivalent")
        raise SigmaTransformationError(
            f"field {f!r} of {self.logsource} is not available: {hint}",
            source=detection_item.source)


@dataclass
class _FieldNotIn(FieldNameProcessingCondition):
    """True for a named field outside ``names`` (and not matching ``extra``); keyword
    items (no field) never match.  pySigma's own field conditions use RE2, which
    has no negative lookahead, hence this small condition."""

    names: frozenset[str]
    extra: str = ""

    def match_field_name(self, field: str | None) -> bool:
        if field is None or field in self.names:
            return False
        return not (self.extra and re.fullmatch(self.extra, field))


def _not_in(names: Sequence[str], extra_re: str = "") -> list[FieldNameProcessingCondition]:
    return [_FieldNotIn(frozenset(names), extra_re)]


def _mapping(m: Mapping[str, str]) -> dict[str | None, str | list[str]]:
    return {k: v for k, v in m.items()}


def bastion_pipeline() -> ProcessingPipeline:
    """The processing pipeline mapping Sigma Linux rules onto Bastion events.

    Built fresh per load (pySigma pipelines carry per-rule state)."""
    items: list[ProcessingItem] = []
    for service, what in _NO_SOURCE.items():
        items.append(ProcessingItem(
            identifier=f"bastion_no_{service}",
            transformation=RuleFailureTransformation(
                f"Bastion produces no {what} (logsource service {service})"),
            rule_conditions=[LogsourceCondition(product="linux", service=service)],
        ))
    supported: list[RuleProcessingCondition] = [
        LogsourceCondition(category=c, product="linux") for c in FIELD_MAPS]
    supported.append(LogsourceCondition(product="linux", service="auditd"))
    items.append(ProcessingItem(
        identifier="bastion_unsupported_logsource",
        transformation=RuleFailureTransformation(
            "no Bastion event source for this logsource (Bastion feeds process_creation, "
            "file_event, network_connection and service auditd)"),
        rule_conditions=supported,
        rule_condition_linking=any,
        rule_condition_negation=True,
    ))
    for cat, mapping in FIELD_MAPS.items():
        items.append(ProcessingItem(
            identifier=f"bastion_unmapped_{cat}",
            transformation=_UnmappedFieldFailure(cat),
            rule_conditions=[LogsourceCondition(category=cat, product="linux")],
            field_name_conditions=_not_in(list(mapping)),
        ))
        items.append(ProcessingItem(
            identifier=f"bastion_map_{cat}",
            transformation=FieldMappingTransformation(_mapping(mapping)),
            rule_conditions=[LogsourceCondition(category=cat, product="linux")],
        ))
    items.append(ProcessingItem(
        identifier="bastion_unmapped_auditd",
        transformation=_UnmappedFieldFailure("auditd"),
        rule_conditions=[LogsourceCondition(product="linux", service="auditd")],
        field_name_conditions=_not_in(sorted(AUDIT_FIELDS), AUDIT_ARG_RE),
    ))
    types = "|".join(sorted(AUDIT_RECORD_FIELDS))
    items.append(ProcessingItem(
        identifier="bastion_audit_record_types",
        transformation=_ValueFailure(
            f"Bastion synthesises only {types.replace('|', ', ')} audit records, not"),
        rule_conditions=[LogsourceCondition(product="linux", service="auditd")],
        detection_item_conditions=[MatchStringCondition(cond="all", pattern=f"(?i)^(?:{types})$",
                                                        negate=True)],
        field_name_conditions=[IncludeFieldCondition(fields=["type"])],
    ))
    calls = "|".join(sorted(AUDIT_SYSCALLS))
    items.append(ProcessingItem(
        identifier="bastion_audit_syscalls",
        transformation=_ValueFailure("no Bastion event reports this system call"),
        rule_conditions=[LogsourceCondition(product="linux", service="auditd")],
        detection_item_conditions=[MatchStringCondition(cond="all", pattern=f"(?i)^(?:{calls})$",
                                                        negate=True)],
        field_name_conditions=[IncludeFieldCondition(fields=["SYSCALL"])],
    ))
    return ProcessingPipeline(items=items, name="bastion-linux")


@dataclass(frozen=True)
class ParsedRule:
    """A rule the pipeline accepted; its fields are Bastion view names."""

    rule: SigmaRule
    path: Path
    logsource: str          # process_creation, file_event, network_connection, auditd


@dataclass(frozen=True)
class Unsupported:
    """A well-formed rule Bastion cannot evaluate faithfully, and why."""

    path: Path
    rule_id: str
    title: str
    logsource: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "id": self.rule_id, "title": self.title,
                "logsource": self.logsource, "reason": self.reason}


def _location(path: Path, exc: BaseException) -> Location:
    src = getattr(exc, "source", None)
    line = src.line if isinstance(src, SigmaRuleLocation) else None
    return Location(str(path), line if isinstance(line, int) and line > 0 else None)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    # pySigma appends " in <location>"; the path is already in our Location
    src = getattr(exc, "source", None)
    if src is not None and msg.endswith(f" in {src}"):
        msg = msg[: -len(f" in {src}")]
    return msg


def rule_id(rule: SigmaRule, path: Path) -> str:
    return str(rule.id) if rule.id is not None else path.stem


def iter_rule_files(dirs: Sequence[Path]) -> list[Path]:
    """Every ``*.yml``/``*.yaml`` under the given directories (or files), sorted."""
    out: list[Path] = []
    for d in dirs:
        if d.is_file():
            out.append(d)
        elif d.is_dir():
            out.extend(sorted(p for p in d.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file()))
        else:
            raise SigmaRuleError("no such Sigma rule directory", location=Location(str(d)))
    return out


def parse_file(
    path: Path, pipeline: ProcessingPipeline
) -> tuple[list[ParsedRule], list[Unsupported], list[SigmaRuleError]]:
    """Parse one rule file with pySigma and run the pipeline on each rule in it."""
    ok: list[ParsedRule] = []
    unsupported: list[Unsupported] = []
    errors: list[SigmaRuleError] = []
    try:
        text = path.read_text(encoding="utf-8")
        collection = SigmaCollection.from_yaml(text, collect_errors=True,
                                               source=SigmaRuleLocation(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, SigmaError) as exc:
        err = SigmaRuleError(f"cannot load Sigma rule: {first_line(exc)}",
                             location=_location(path, exc))
        err.__cause__ = exc
        return ok, unsupported, [err]
    except (AttributeError, TypeError) as exc:
        # pySigma takes every YAML document for a mapping: a file holding a list or a
        # scalar raised out of `bastion sigma check` as a traceback (s22)
        err = SigmaRuleError("cannot load Sigma rule: a YAML document here is not a mapping "
                             f"(pySigma: {first_line(exc)})", location=Location(str(path)))
        err.__cause__ = exc
        return ok, unsupported, [err]
    if len(collection) == 0:
        return ok, unsupported, [SigmaRuleError("no Sigma rule in this file",
                                                location=Location(str(path)))]
    for r in collection:
        if r.errors:
            exc0 = r.errors[0]
            err = SigmaRuleError(
                "invalid Sigma rule: " + "; ".join(first_line(e) for e in r.errors),
                location=_location(path, exc0))
            err.__cause__ = exc0
            errors.append(err)
            continue
        if isinstance(r, SigmaCorrelationRule) or not isinstance(r, SigmaRule):
            unsupported.append(Unsupported(path, str(r.id or path.stem), r.title, "correlation",
                                           "correlation rules are not evaluated"))
            continue
        label = logsource_label(r.logsource)
        try:
            pipeline.apply(r)
        except SigmaTransformationError as exc:
            reason = first_line(exc)
            if r.logsource.category is None and r.logsource.service is None:
                reason = ("product-only logsource: keyword search over system log text, "
                          "which Bastion does not produce")
            unsupported.append(Unsupported(path, rule_id(r, path), r.title, label, reason))
            continue
        except SigmaError as exc:
            err = SigmaRuleError(f"invalid Sigma rule: {first_line(exc)}",
                                 location=_location(path, exc))
            err.__cause__ = exc
            errors.append(err)
            continue
        key = logsource_key(r.logsource)
        if key is None:  # the pipeline refuses these; keep the invariant explicit
            unsupported.append(Unsupported(path, rule_id(r, path), r.title, label,
                                           "no Bastion event source for this logsource"))
            continue
        ok.append(ParsedRule(r, path, key))
    return ok, unsupported, errors
