"""The README's module map, drawn from the tree: each package with the first sentence of its
docstring, then each of its modules with the first sentence of its own.

`python scripts/module_map.py` prints it; `--write` puts it into README.md between its markers;
`--check` fails when README.md's copy differs from the tree (a test runs that).
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optishear", "workers", "service")
BEGIN = "<!-- module map: drawn by scripts/module_map.py; do not edit by hand -->"
END = "<!-- end of the module map -->"
WIDTH = 100


def _first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") if first else "(no docstring)"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3].rsplit(" ", 1)[0] + "..."


def module_map() -> str:
    """Each package, its docstring's first sentence wrapped, then each module on one line."""
    out = ["```text"]
    for top in PACKAGES:
        for pkg in sorted(p.parent for p in (ROOT / top).rglob("__init__.py")):
            rel = pkg.relative_to(ROOT).as_posix() + "/"
            about = textwrap.wrap(_first_line(pkg / "__init__.py"), WIDTH - 31)
            out.append(f"{rel:<30} {about[0]}")
            out.extend(f"{'':<30} {line}" for line in about[1:])
            for mod in sorted(pkg.glob("*.py")):
                if mod.name not in ("__init__.py", "__main__.py"):
                    out.append(f"    {mod.stem:<18} {_clip(_first_line(mod), WIDTH - 23)}")
    out.append("```")
    return "\n".join(out)


def _readme_copy(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md")
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args(argv)
    drawn = module_map()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if args.check:
        if BEGIN not in text or _readme_copy(text) != drawn:
            sys.stderr.write(
                "README.md's module map is stale: python scripts/module_map.py --write\n"
            )
            return 1
        return 0
    if args.write:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        readme.write_text(f"{head}{BEGIN}\n{drawn}\n{END}{tail}")
        return 0
    sys.stdout.write(drawn + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
