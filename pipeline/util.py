"""Small helpers several modules share: the progress callback type and its no-op, the Jinja2
environment for pipeline/templates, the host's state directory, XML-safe text."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2

from . import TEMPLATES

# on a host: the deploy marker, staging, lock and test guests of this pipeline (tmpfs: a reboot clears it)
STATE_DIR = "/run/pciback-verify"

# a stage's progress messages: one line each, for the terminal
Progress = Callable[[str], None]


def noprogress(msg: str) -> None:
    """The progress callback of a caller that wants no messages."""


def templates(folder: str = "", autoescape: Any = False) -> jinja2.Environment:
    """The environment for pipeline/templates/<folder>: undefined names fail, block tags take their line."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES / folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=autoescape,  # off by default: shell scripts, xl configs, mails, Markdown
    )


def render(folder: str, template: str, **ctx: Any) -> str:
    return templates(folder).get_template(template).render(**ctx)


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def xmlsafe(value: Any) -> str:
    """The text without the control characters XML 1.0 cannot carry (junit.xml, KCIDB log excerpts)."""
    return _CTRL.sub("", str(value))
