"""`make bench`: run the benchmark sections and print their tables.

A section is a module next to this file that defines `TITLE`, `ORDER` (sections run in
ascending order) and `run(options) -> list[Table]`, where a Table is
`(title, column names, rows of cells)`; it may define `add_arguments(parser)` for options of
its own. Sections are found by name, so adding `bench/<name>.py` adds a section, and
`--only <name>` runs just that one. Progress goes to stderr, tables to stdout. A section that
raises `ToolMissing` (tests/registry/processes.py: something it needs is not installed or
built) is skipped with one line on stdout saying why; under CI=true that is a failure (the
other sections still run, and the exit status is 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry.processes import ToolMissing

HERE = Path(__file__).resolve().parent
Table = tuple[str, list[str], list[list[str]]]


def sections() -> dict[str, ModuleType]:
    """Every section module in this directory, by name, in their declared order."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    found: dict[str, ModuleType] = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem == "run" or path.stem.startswith("_"):
            continue
        module = importlib.import_module(path.stem)
        if callable(getattr(module, "run", None)) and hasattr(module, "TITLE"):
            found[path.stem] = module
    return dict(sorted(found.items(), key=lambda item: getattr(item[1], "ORDER", 100)))


def render(table: Table) -> str:
    title, columns, rows = table
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

    rule = "-" * len(line(columns))
    return "\n".join([title, rule, line(columns), rule, *(line(r) for r in rows), rule])


def main(argv: list[str] | None = None) -> int:
    available = sections()
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (a smoke test)")
    parser.add_argument("--only", action="append", choices=sorted(available), metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(available)}")
    for module in available.values():
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    options = parser.parse_args(argv)
    in_ci = os.environ.get("CI", "").lower() == "true"
    status = 0
    for name, module in available.items():
        if options.only and name not in options.only:
            continue
        print(f"== {name}: {module.TITLE}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            tables = module.run(options)
        except ToolMissing as missing:
            print(f"{name}: skipped: {missing}" + (" (CI=true: a missing tool is a failure)" if in_ci else ""),
                  flush=True)
            print()
            status = 1 if in_ci else status
            continue
        for table in tables:
            print(render(table), flush=True)
            print()
        print(f"== {name} took {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
