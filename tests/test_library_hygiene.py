"""Importing the package changes nothing process-wide, and library code reports through
logging: only commands (and scripts run as processes) write to stdout."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_census"

# zarr turns blosc's threads off when it is imported; a user may turn them back on for their
# own main-thread work, and importing ssl-census afterwards must not undo that.
_SNAPSHOT = """
import json, warnings
import numcodecs.blosc as blosc
import zarr.codecs
blosc.use_threads = None
import ssl_census.cli, ssl_census.data.loader, ssl_census.data.readers
print(json.dumps({"blosc_before": None, "blosc_after": blosc.use_threads,
                  "filters": [str(f) for f in warnings.filters]}))
"""


def test_importing_the_package_leaves_blosc_threads_and_warning_filters_alone():
    """Blosc's threading is the process's setting, and a warning the loader silences is
    silenced where the loader makes a CSR tensor, not for everyone."""
    out = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True,
                         check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["blosc_after"] == seen["blosc_before"]
    assert not [f for f in seen["filters"] if "Sparse CSR" in f]


def _writes_to_stdout(tree: ast.AST) -> list[int]:
    """Lines that call print() or click.echo()."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and f.attr == "echo"
                    and isinstance(f.value, ast.Name) and f.value.id == "click"):
                lines.append(node.lineno)
    return lines


def _is_command(path: Path, source: str) -> bool:
    """A command module, the CLI, or a script run as its own process."""
    return (path.name in ("commands.py", "cli.py") or "@click.command" in source
            or 'if __name__ == "__main__"' in source)


def test_library_code_logs_instead_of_printing():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if _is_command(path, source):
            continue
        offenders += [f"{path.relative_to(PACKAGE)}:{n}"
                      for n in _writes_to_stdout(ast.parse(source))]
    assert offenders == []
