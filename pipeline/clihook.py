"""One-line errors for config files Invoke itself cannot parse (invalid YAML/JSON).

Invoke reads its config files before any task runs, and a file that does not
parse escapes `Program.run` as a traceback. `install()` sets a `sys.excepthook`
that turns exactly that case (an exception raised while invoke.config loads a
file) into `error: FILE: invalid YAML ...` on stderr and exit code 31
(errors.ConfigSyntaxError); everything else goes to the previous hook.

- `invoke -f FILE`, INVOKE_RUNTIME_CONFIG and the project's invoke.yaml are read
  after tasks.py is imported: tasks.py calls `install()`.
- ~/.invoke.yaml and /etc/invoke.yaml are read before tasks.py is imported: a
  `.pth` file in the venv runs this file at interpreter start
  (`python -m pipeline.clihook --install`, done by ./pv).

This file is self-contained (no imports of the pipeline package) so that the
`.pth` hook can run it by path.
"""

from __future__ import annotations

import os
import sys

EXIT_CODE = 31  # == pipeline.errors.ConfigSyntaxError.exit_code
MERGE_EXIT_CODE = 3  # == pipeline.errors.ConfigError.exit_code: a value of the wrong type
PTH_NAME = "pciback_verify_clihook.pth"


def _config_file(tb) -> str | None:
    """The file invoke.config was loading when the exception was raised, if it was."""
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        if code.co_name == "_load_file" and code.co_filename.replace(os.sep, "/").endswith("invoke/config.py"):
            path = frame.f_locals.get("filepath")
            return str(path) if path else None
        tb = tb.tb_next
    return None


def describe(path: str, exc: BaseException) -> str:
    """`FILE: invalid YAML at line L, column C: problem` (one line)."""
    kind = "JSON" if path.endswith(".json") else "YAML"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = ""
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    elif hasattr(exc, "lineno") and hasattr(exc, "colno"):  # json.JSONDecodeError
        where = f" at line {exc.lineno}, column {exc.colno}"
    problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc)
    problem = " ".join(str(problem).split())
    return f"{path}: invalid {kind}{where}: {problem}"


def _is_parse_error(exc: BaseException) -> bool:
    parts = (type(exc).__module__ or "").split(".")
    return "yaml" in parts or type(exc).__name__ == "JSONDecodeError"  # invoke vendors yaml: invoke.vendor.yaml


def _merge_conflict(tb) -> str | None:
    """For invoke's AmbiguousMergeError (a mapping in one file, a list or scalar in another): which key, which files."""
    keys, config = [], None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.replace(os.sep, "/").endswith("invoke/config.py"):
            if frame.f_code.co_name == "merge_dicts" and "key" in frame.f_locals:
                keys.append(str(frame.f_locals["key"]))
            if config is None and hasattr(frame.f_locals.get("self"), "_project_path"):
                config = frame.f_locals["self"]
        tb = tb.tb_next
    if not keys:
        return None
    keypath = ".".join(keys)
    where = []
    for layer in ("runtime", "env", "user", "project", "system"):
        data = getattr(config, f"_{layer}", None) if config is not None else None
        for k in keys:
            data = data.get(k) if isinstance(data, dict) else None
        if data is not None:
            kind = "a mapping" if isinstance(data, dict) else ("a list" if isinstance(data, list) else "a scalar")
            src = getattr(config, f"_{layer}_path", None) or ("environment" if layer == "env" else layer)
            where.append(f"{kind} in {src}")
    return f"key {keypath}: {' but '.join(where) or 'conflicting types in the config files'}"


def install() -> None:
    """Set the hook once per process (idempotent)."""
    if getattr(sys.excepthook, "_pv_clihook", False):
        return
    previous = sys.excepthook

    def hook(tp, exc, tb):
        path = _config_file(tb) if exc is not None and _is_parse_error(exc) else None
        if path is not None:
            _exit(f"error: {describe(path, exc)}", EXIT_CODE)
        if type(exc).__name__ == "AmbiguousMergeError" and (msg := _merge_conflict(tb)):
            _exit(f"error: {msg}", MERGE_EXIT_CODE)
        return previous(tp, exc, tb)

    def _exit(line: str, code: int) -> None:
        try:
            sys.stdout.flush()
        except Exception:  # noqa: S110 - exiting anyway
            pass
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        os._exit(code)  # an excepthook cannot choose the exit status otherwise

    hook._pv_clihook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def install_pth(site_dir: str | None = None) -> str:
    """Write the `.pth` that runs `install()` at the start of every interpreter of this environment."""
    import site
    import sysconfig

    site_dir = site_dir or sysconfig.get_paths()["purelib"] or site.getsitepackages()[0]
    here = os.path.abspath(__file__)
    line = (
        f"import os, runpy; p = {here!r}; "
        "os.path.exists(p) and os.environ.get('PV_NO_CLIHOOK') is None and runpy.run_path(p)['install']()\n"
    )
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(line)
    return path


if __name__ == "__main__":
    if sys.argv[1:] == ["--install"]:
        print(install_pth())
    else:
        print(f"usage: {sys.executable} -m pipeline.clihook --install", file=sys.stderr)
        sys.exit(2)
