"""What a build's output says: the compiler's warnings and errors, the warnings a series adds
to its baseline's, and the first real error of a failed build.

Diagnostics are `file:line:col: kind: message [-Wflag]` with paths relative to the kernel
tree (the module's copy in the build cache is named as drivers/xen/xen-pciback); a warning
matches its baseline's without its line and column, so code a patch moved is not new.

A failure summary names the first real error of a kbuild log, not make's trailing line.
kbuild stops with `make[2]: *** [scripts/Makefile.build:250: x.o] Error 1` lines after the error
that matters; those only say which target failed. What names the failure, in the order met:
  a Makefile `$(error ...)`   `path/Makefile:12: *** message.  Stop.`  -> `path/Makefile:12: message`
  make itself stopping         `make: *** No rule to make target 'x', needed by 'y'.  Stop.`
  a compiler error             `file:line:col: error: ...` / `fatal error:` (as parse_diagnostics gives it)
  modpost                      `ERROR: modpost: "sym" [x.ko] undefined!`
  the linker                   `ld: x.o:(.data+0x0): multiple definition of 'y'; ...`
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

MAX_ERROR_LINES = 10

_DIAG_RE = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>warning|error|fatal error): (?P<msg>.*)$"
)
_LINECOL_RE = re.compile(r":\d+:(?:\d+:)? ")
_CC_RE = re.compile(r"^\s+CC \[M\]\s+(\S+\.o)\s*$")
_MAKEFILE_ERROR = re.compile(r"^(?P<loc>\S+:\d+): \*\*\* (?P<msg>.*?)\.?\s+Stop\.$")
_MAKE_STOP = re.compile(r"^(?P<make>\S*make(?:\[\d+\])?): \*\*\* (?P<msg>(?!\[).*?)\.?\s+Stop\.$")
_MAKE_TRAILER = re.compile(r"^\S*make(?:\[\d+\])?: \*\*\* \[.*\] Error \d+$")
_COMPILER = re.compile(r"^\S+?:\d+(?::\d+)?: (?:fatal )?error: ")
_MODPOST = re.compile(r"^(?:ERROR|FATAL): (?:modpost: )?.+")
_LD = re.compile(r"^(?:\S*/)?(?:[\w.-]+-)?ld(?:\.bfd|\.gold|\.lld)?: (?P<msg>.+)$")


def _normalise_path(path: str, roots: list[tuple[Path, str]], cwd: Path | None) -> str:
    # relative paths are relative to make's directory (ccache's base_dir makes them so)
    p = os.path.normpath(os.path.join(cwd, path) if cwd and not os.path.isabs(path) else path)
    for root, label in roots:
        for r in {os.path.normpath(root), os.path.realpath(root)}:
            if p == r or p.startswith(r + "/"):
                rel = os.path.relpath(p, r)
                return f"{label}/{rel}" if label else rel
    return p


def parse_diagnostics(
    output: str, roots: list[tuple[Path, str]], cwd: Path | None = None
) -> tuple[list[str], list[str]]:
    """Compiler warnings and errors as `file:line:col: kind: message [-Wflag]`, paths relative to the tree."""
    warnings: list[str] = []
    errors: list[str] = []
    for line in output.splitlines():
        # kbuild unexports LC_ALL, so gcc may still quote in UTF-8
        m = _DIAG_RE.match(line.rstrip().replace("\u2018", "'").replace("\u2019", "'"))
        if not m:
            continue
        file = _normalise_path(m.group("file"), roots, cwd)
        col = f"{m.group('col')}:" if m.group("col") else ""
        text = f"{file}:{m.group('line')}:{col} {m.group('kind')}: {m.group('msg')}"
        target = warnings if m.group("kind") == "warning" else errors
        if text not in target:  # a header's warning repeats once per file including it
            target.append(text)
    return warnings, errors


def warning_key(warning: str) -> str:
    """A warning without its line and column: code moved by a patch still matches its baseline."""
    return _LINECOL_RE.sub(": ", warning, count=1)


def new_warnings(series: list[str], baseline: list[str]) -> list[str]:
    """Warnings of the series build beyond those of the baseline (counted per normalised text)."""
    left = Counter(warning_key(w) for w in baseline)
    added = []
    for w in series:
        k = warning_key(w)
        if left[k] > 0:
            left[k] -= 1
        else:
            added.append(w)
    return added


def diagnostics_by_object(output: str, roots: list[tuple[Path, str]], cwd: Path | None) -> dict[str, list[str]]:
    """Warnings per compiled object; make -Otarget keeps each object's output in one block."""
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in output.splitlines():
        if m := _CC_RE.match(line):
            current = os.path.basename(m.group(1))
            blocks[current] = []
        elif current:
            blocks[current].append(line)
    return {obj: parse_diagnostics("\n".join(lines), roots, cwd)[0] for obj, lines in blocks.items()}


def first_errors(output: str, compiler_errors: list[str], limit: int = MAX_ERROR_LINES) -> list[str]:
    """The errors of a failed build, the first real one first; `compiler_errors` are the compiler's
    own error lines already normalised (parse_diagnostics), put where the first one was met."""
    found: list[str] = []
    cc_done = False
    for raw in output.splitlines():
        line = raw.rstrip().replace("\u2018", "'").replace("\u2019", "'")
        if _MAKE_TRAILER.match(line):
            continue
        if _COMPILER.match(line):
            if not cc_done:
                found += compiler_errors or [line]
                cc_done = True
            continue
        if m := _MAKEFILE_ERROR.match(line):
            text = f"{m.group('loc')}: {m.group('msg')}"
        elif m := _MAKE_STOP.match(line):
            text = f"{m.group('make')}: {m.group('msg')}"
        elif _MODPOST.match(line):
            text = line
        elif (m := _LD.match(line)) and not line.startswith("ld: warning"):
            text = line
        else:
            continue
        if text not in found:
            found.append(text)
    if not cc_done and compiler_errors:
        found = compiler_errors + found
    if found:
        return found[:limit]
    # nothing known: lines that say error, then make's own trailer, then the end of the log
    lines = [ln for ln in output.splitlines() if "error" in ln.lower()]
    return (lines or output.splitlines()[-limit:])[:limit]
