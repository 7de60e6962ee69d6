"""Make real installed-looking distributions with entry points, in a temp dir on sys.path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def install_fake_dist(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """Write ``modules`` (name -> source) and a ``<dist>.dist-info`` declaring ``entry_points``
    (name -> "module:attr" or "module") in group ``loopml.plugins``; put ``site`` on sys.path."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[loopml.plugins]\n{eps}\n")
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
