"""Kconfig fragments: parse them and check each symbol against the merged `.config`.

merge_config.sh and olddefconfig drop a requested value silently when the
symbol does not exist or its dependencies are not met; this module finds those.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_DEF_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.M)


@dataclass
class ConfigIssue:
    symbol: str
    wanted: str
    got: str  # "" when the symbol is absent from .config
    fragment: str
    unknown: bool  # not defined by any Kconfig file of the tree

    def message(self) -> str:
        if self.unknown:
            return f"{self.symbol}: no such Kconfig symbol in this tree (fragment {self.fragment} wants {self.wanted})"
        got = f"={self.got}" if self.got else " absent (unmet dependencies)"
        return f"{self.symbol}: fragment {self.fragment} wants ={self.wanted}, .config has{got}"


def parse_config(text: str) -> dict[str, str]:
    """Symbol -> value; `# CONFIG_X is not set` reads as "n". Later lines win, as in kconfig."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET_RE.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _UNSET_RE.match(line):
            values[m.group(1)] = "n"
    return values


def kconfig_symbols(srctree: Path) -> set[str]:
    """Every symbol some Kconfig file of the tree defines (all architectures)."""
    symbols: set[str] = set()
    for root, dirs, files in os.walk(srctree):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("Kconfig"):
                try:
                    text = Path(root, name).read_text(errors="replace")
                except OSError:
                    continue
                symbols.update("CONFIG_" + s for s in _DEF_RE.findall(text))
    return symbols


def check_fragments(
    fragments: list[tuple[str, str]], config_text: str, srctree: Path | None = None
) -> list[ConfigIssue]:
    """Fragment symbols whose value did not make it into .config.

    `fragments` are (name, text) pairs; the tree's Kconfig files are only
    scanned when something did not take, to tell "unknown" from "not taken".
    """
    config = parse_config(config_text)
    issues: list[ConfigIssue] = []
    for name, text in fragments:
        for sym, wanted in parse_config(text).items():
            got = config.get(sym, "")
            if got == wanted or (wanted == "n" and got == ""):
                continue
            issues.append(ConfigIssue(sym, wanted, got, name, unknown=False))
    if issues and srctree is not None:
        known = kconfig_symbols(srctree)
        for issue in issues:
            issue.unknown = issue.got == "" and issue.symbol not in known
    return issues
