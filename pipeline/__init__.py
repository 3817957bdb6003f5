"""pciback-verify: verify a xen-pciback patch series across kernels on real Xen hosts."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
