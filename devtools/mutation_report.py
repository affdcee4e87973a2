"""``python -m devtools.mutation_report``: the score of the last mutmut run, per module.

Reads the results mutmut 3 leaves in ``mutants/<module>.py.meta`` (``scripts/mutation``
runs it) and prints, for each mutated module and overall, how many mutants were killed,
survived, timed out, were suspicious or had no test; then every survivor by name
(``mutmut show NAME`` prints its diff; ``--diffs`` prints them all). Stdlib only.

The score is killed / total; a timeout (the mutant made a test hang) is shown apart, and
``--min-score`` judges the killed share alone. Exit status 1 when it is below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kafka_log_middleware"

# mutmut 3's exit code → status (mutmut/stats.py); anything else is "suspicious".
_STATUS = {
    1: "killed",
    3: "killed",  # pytest's internal error: the mutant broke it
    0: "survived",
    5: "no tests",
    33: "no tests",
    2: "interrupted",
    None: "not checked",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    37: "type check",
    -11: "segfault",
    -9: "segfault",
}
COLUMNS = ("killed", "survived", "timeout", "suspicious", "no tests", "not checked")


@dataclass
class Module:
    name: str
    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def score(self) -> float:
        return 100.0 * self.counts["killed"] / self.total if self.total else 100.0


def load(mutants: Path, modules: list[str]) -> list[Module]:
    """The results of ``modules`` (``nginx_vars``, …) from ``mutants/``."""
    out = []
    for name in modules:
        meta = mutants / PACKAGE / f"{name}.py.meta"
        if not meta.exists():
            raise SystemExit(f"mutation_report: {meta} not found: run scripts/mutation first")
        results: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        module = Module(name)
        for mutant, code in sorted(results.items(), key=lambda item: _sort_key(item[0])):
            status = _STATUS.get(code, "suspicious")
            module.counts[status] += 1
            if status != "killed":
                module.survivors.append(f"{mutant}  [{status}]" if status != "survived" else mutant)
        out.append(module)
    return out


def _sort_key(mutant: str) -> tuple[str, int]:
    function, _, number = mutant.rpartition("__mutmut_")
    return function, int(number) if number.isdigit() else 0


def table(modules: list[Module]) -> str:
    overall = Module("overall")
    for module in modules:
        overall.counts.update(module.counts)
    width = max(len(m.name) for m in [*modules, overall])
    head = f"{'module':<{width}}  {'total':>5}  " + "  ".join(f"{c:>8}" for c in COLUMNS)
    lines = [head + "     score", "-" * (len(head) + 10)]
    for module in [*modules, overall]:
        if module is overall:
            lines.append("-" * (len(head) + 10))
        cells = "  ".join(f"{module.counts[c]:>8}" for c in COLUMNS)
        lines.append(f"{module.name:<{width}}  {module.total:>5}  {cells}  {module.score():7.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", help="module names, e.g. nginx_vars config")
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    parser.add_argument("--min-score", type=float, default=90.0)
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--quiet", action="store_true", help="the table only")
    args = parser.parse_args(argv)

    modules = load(args.mutants, args.modules)
    if not args.quiet:
        for module in modules:
            if not module.survivors:
                continue
            print(f"\n== {module.name}: {len(module.survivors)} not killed")
            for mutant in module.survivors:
                print(f"  {mutant}")
                if args.diffs:
                    name = mutant.split()[0]
                    shown = subprocess.run(
                        [sys.executable, "-m", "mutmut", "show", name],
                        cwd=args.mutants.parent,
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    print("    " + shown.stdout.strip().replace("\n", "\n    "))
    print()
    print(table(modules))
    killed = sum(m.counts["killed"] for m in modules)
    total = sum(m.total for m in modules)
    score = 100.0 * killed / total if total else 100.0
    if score < args.min_score:
        print(f"\nkilled {score:.1f}% of the mutants, below --min-score {args.min_score:g}%")
        return 1
    print(f"\nkilled {score:.1f}% of the mutants (--min-score {args.min_score:g}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
