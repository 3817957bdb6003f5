"""Full-tree mode: base config + kconfig fragments, olddefconfig, modules_prepare into an
output directory cached by (base commit, config inputs); the module is then built against it.

A new revision of a series changes none of those inputs: its builds reuse the prepared tree
and recompile only the module (pipeline.buildmodule).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import sandbox
from .buildmodule import MODULE_SYMBOL, Target, hash_key, kernel_release_of
from .buildrun import Runner, check
from .config import KernelConfig, Settings
from .errors import BuildSetupError
from .kconfig import check_fragments, parse_config
from .results import atomic_write_text
from .toolchain import cc_identity, check_toolchain, make_cc, make_jobs
from .util import Progress, file_lock

_CONFIG_TARGET_RE = re.compile(r"[a-z0-9_.-]*config")


@dataclass
class Prepared:
    """The full-mode target and what configuring it said (not cached as prepared unless the symbol is m)."""

    target: Target
    config_warnings: list[str]
    module_symbol: str  # value of CONFIG_XEN_PCIDEV_BACKEND in .config
    reused: bool


def _fragments(settings: Settings, kcfg: KernelConfig) -> list[tuple[str, Path, str]]:
    out = []
    for frag in kcfg.build.fragments:
        path = settings.path(frag)
        if not path.is_file():
            raise BuildSetupError(f"{kcfg.name}: kconfig fragment {frag} not found ({path})")
        out.append((frag, path, path.read_text()))
    return out


def _base_config(settings: Settings, kcfg: KernelConfig) -> tuple[str, Path | None]:
    """("target", None) for a make target such as tinyconfig, ("file", path) for a config file."""
    base = kcfg.build.base_config
    path = settings.path(base)
    if path.is_file():
        return "file", path
    if _CONFIG_TARGET_RE.fullmatch(base):
        return "target", None
    raise BuildSetupError(f"{kcfg.name}: base_config {base!r} is neither a make *config target nor a file")


def full_target(
    settings: Settings, kcfg: KernelConfig, worktree: Path, base_commit: str, run: Runner, progress: Progress
) -> Prepared:
    """Configure and modules_prepare the tree into the cache, once per base commit and config inputs."""
    check_toolchain("full")
    cc = "gcc"
    frags = _fragments(settings, kcfg)
    kind, base_path = _base_config(settings, kcfg)
    base_desc = base_path.read_bytes() if base_path else kcfg.build.base_config.encode()
    # every input of the configured, prepared tree; a new series revision changes none of them
    key = hash_key(
        "full", base_commit, kind, base_desc, *(f"{n}\n{t}" for n, _, t in frags), make_cc(cc), cc_identity(cc)
    )
    key_dir = settings.path(settings.cache_dir) / "build" / f"full-{base_commit[:12]}-{key}"
    out = key_dir / "out"
    marker = key_dir / "prepared.json"
    target = Target("full", key_dir, out, worktree, cc, "")
    jobs = make_jobs()
    make = ["make", "-C", str(worktree), f"O={out}", f"CC={make_cc(cc)}"]
    with file_lock(key_dir / "prepare.lock"):
        if marker.exists():
            data = json.loads(marker.read_text())
            run.note(
                f"prepared tree reused: {out} (base {base_commit[:12]}, config key {key}); no config step, no modules_prepare"
            )
            progress(f"{kcfg.name}: build: prepared tree of {base_commit[:12]} reused")
            target.release = kernel_release_of(out)
            return Prepared(target, data["config_warnings"], data["module_symbol"], True)
        if out.exists():
            shutil.rmtree(out)  # a half-prepared tree from an interrupted run
        out.mkdir(parents=True)
        progress(f"{kcfg.name}: build: configuring ({kcfg.build.base_config} + {len(frags)} fragment(s))")
        if kind == "file":
            shutil.copyfile(base_path, out / ".config")
        else:
            check(
                run(
                    make + [kcfg.build.base_config],
                    worktree,
                    f"config: make {kcfg.build.base_config}",
                    ro=[worktree],
                    rw=[out],
                ),
                "base config",
            )
        merge = worktree / "scripts" / "kconfig" / "merge_config.sh"
        # copies inside the output directory: the sandbox needs no view of where the fragments live
        frag_dir = out / ".pv-fragments"
        frag_dir.mkdir()
        frag_copies = []
        for i, (_, _, text) in enumerate(frags):
            frag_copies.append(frag_dir / f"{i}.config")
            frag_copies[-1].write_text(text)
        check(
            run(
                ["sh", str(merge), "-m", "-O", str(out), str(out / ".config"), *(str(p) for p in frag_copies)],
                out,  # it makes its temporary files in the current directory
                "config: merge_config.sh -m",
                ro=[worktree],
                rw=[out],
            ),
            "merge_config.sh",
        )
        check(
            run(make + ["olddefconfig"], worktree, "config: make olddefconfig", ro=[worktree], rw=[out]), "olddefconfig"
        )
        config_text = sandbox.read_out(out / ".config", within=out).decode(errors="replace")
        issues = check_fragments([(n, t) for n, _, t in frags], config_text, worktree)
        config_warnings = [i.message() for i in issues]
        symbol = parse_config(config_text).get(MODULE_SYMBOL, "absent")
        if symbol != "m":
            # not cached as prepared: the fragments must change anyway
            return Prepared(target, config_warnings, symbol, False)
        progress(f"{kcfg.name}: build: make modules_prepare (once per base commit and config)")
        check(
            run(
                make + [f"-j{jobs}", "modules_prepare"],
                worktree,
                "prepare: make modules_prepare",
                ro=[worktree],
                rw=[out],
            ),
            "modules_prepare",
        )
        target.release = kernel_release_of(out)
        atomic_write_text(marker, json.dumps({"config_warnings": config_warnings, "module_symbol": symbol}) + "\n")
        return Prepared(target, config_warnings, symbol, False)
