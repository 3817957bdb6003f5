"""The shape of pipeline/ (issue 12): no module over 600 lines (each reads at once), and every module
named in ARCHITECTURE.md."""

from __future__ import annotations

import re
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
MAX_LINES = 600

# being split by another change, not yet landed: remove an entry as its split lands (the test
# fails while an entry names a module that is gone or already small enough)
PENDING_SPLIT: dict[str, str] = {}


def too_long(root: Path = PIPELINE, limit: int = MAX_LINES) -> dict[str, int]:
    """Module path (relative to root) -> its line count, for every module over the limit."""
    counts = {p.relative_to(root).as_posix(): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    return {path: n for path, n in sorted(counts.items()) if n > limit}


def test_no_pipeline_module_over_600_lines():
    over = too_long()
    left = {path: n for path, n in over.items() if path not in PENDING_SPLIT}
    assert not left, "over 600 lines, split by concern: " + ", ".join(f"pipeline/{p} ({n})" for p, n in left.items())
    done = sorted(set(PENDING_SPLIT) - set(over))
    assert not done, f"split landed: remove {done} from PENDING_SPLIT in tests/test_structure.py"


def test_too_long_counts_lines_of_every_module(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n" * 5)
    (tmp_path / "sub" / "b.py").write_text("x = 1\n" * 3)
    (tmp_path / "c.txt").write_text("x\n" * 9)
    assert too_long(tmp_path, 4) == {"a.py": 5}
    assert too_long(tmp_path, 2) == {"a.py": 5, "sub/b.py": 3}


def unnamed_modules(root: Path = PIPELINE, doc: Path = PIPELINE.parent / "ARCHITECTURE.md") -> list[str]:
    """The modules directly under pipeline/ that ARCHITECTURE.md never names as `name.py` (in the data
    flow or the table; a package as `name/`)."""
    text = doc.read_text()
    mods = [p.name for p in root.glob("*.py") if p.name != "__init__.py"]
    pkgs = [p.name for p in root.iterdir() if (p / "__init__.py").is_file()]
    named = set(re.findall(r"(?<![\w/])(\w+\.py)\b", text)) | {f"{d}/" for d in re.findall(r"`(\w+)/`", text)}
    return sorted(n for n in mods + [f"{d}/" for d in pkgs] if n not in named)


def test_architecture_names_every_pipeline_module():
    """The newcomer's map is whole: a module added without its place in ARCHITECTURE.md fails here."""
    missing = unnamed_modules()
    assert not missing, "not named in ARCHITECTURE.md (data flow or table): " + ", ".join(missing)


def test_unnamed_modules_sees_modules_and_packages(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    for name in ("__init__.py", "a.py", "b.py"):
        (tmp_path / name).write_text("")
    doc = tmp_path / "ARCHITECTURE.md"
    doc.write_text("a.py ─► sub/b.py\n| x | `a.py` | pkg/ |\n")
    assert unnamed_modules(tmp_path, doc) == ["b.py", "pkg/"]
    doc.write_text("a.py ─► b.py\n| x | `pkg/` (package) |\n")
    assert unnamed_modules(tmp_path, doc) == []
