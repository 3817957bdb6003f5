"""Build failure summaries: the first real error of a kbuild log, not make's trailing line.

kbuild stops with `make[2]: *** [scripts/Makefile.build:250: x.o] Error 1` lines after the error
that matters; those only say which target failed. What names the failure, in the order met:
  a Makefile `$(error ...)`   `path/Makefile:12: *** message.  Stop.`  -> `path/Makefile:12: message`
  make itself stopping         `make: *** No rule to make target 'x', needed by 'y'.  Stop.`
  a compiler error             `file:line:col: error: ...` / `fatal error:` (as parse_diagnostics gives it)
  modpost                      `ERROR: modpost: "sym" [x.ko] undefined!`
  the linker                   `ld: x.o:(.data+0x0): multiple definition of 'y'; ...`
"""

from __future__ import annotations

import re

_MAKEFILE_ERROR = re.compile(r"^(?P<loc>\S+:\d+): \*\*\* (?P<msg>.*?)\.?\s+Stop\.$")
_MAKE_STOP = re.compile(r"^(?P<make>\S*make(?:\[\d+\])?): \*\*\* (?P<msg>(?!\[).*?)\.?\s+Stop\.$")
_MAKE_TRAILER = re.compile(r"^\S*make(?:\[\d+\])?: \*\*\* \[.*\] Error \d+$")
_COMPILER = re.compile(r"^\S+?:\d+(?::\d+)?: (?:fatal )?error: ")
_MODPOST = re.compile(r"^(?:ERROR|FATAL): (?:modpost: )?.+")
_LD = re.compile(r"^(?:\S*/)?(?:[\w.-]+-)?ld(?:\.bfd|\.gold|\.lld)?: (?P<msg>.+)$")


def first_errors(output: str, compiler_errors: list[str], limit: int = 10) -> list[str]:
    """The errors of a failed build, the first real one first; `compiler_errors` are the compiler's
    own error lines already normalised (build.parse_diagnostics), put where the first one was met."""
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
