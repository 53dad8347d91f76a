"""Time `make test` on fresh clones of two commits, one after the other, in the same run.

Each commit is cloned from this repository into a new folder next to it (so that
``../shared`` resolves as in the working copy), and ``make test`` runs there from scratch:
a new ``.venv``, the install, then the whole suite. The machine is shared and noisy, so
the baseline is measured in the same run, right before the candidate. Prints, and writes to
``--out`` (JSON), the wall time of each ``make test``, pytest's own summary line (tests
passed and failed, suite seconds) and the exit code. The clones are removed afterwards
unless ``--keep``.

``--command`` times another command instead (the test suite's smoke run times one small
pytest file), and ``--parent`` puts the clones elsewhere.

Usage:
    python benchmarks/bench_make_test.py [--baseline 6112ba8] [--candidate HEAD]
        [--out benchmarks/out/make_test.json] [--keep] [--command "make test"] [--parent DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"=+ (.*(?:passed|failed).* in ([\d.]+)s.*) =+")


def rev(commit: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def time_make_test(commit: str, keep: bool, command: str = "make test",
                   parent: Path = ROOT.parent) -> dict:
    """Clone ``commit`` into ``parent`` (default: next to the repository) and time
    ``command`` (default ``make test``) there."""
    clone = Path(tempfile.mkdtemp(prefix=f"bench-make-test-{commit}-", dir=parent))
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        start = time.perf_counter()
        proc = subprocess.run(shlex.split(command), cwd=clone, env=env, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - start
        log = proc.stdout + proc.stderr
        (clone / "make-test.log").write_text(log)
        found = SUMMARY.findall(log)
        return {"commit": commit, "exit_code": proc.returncode, "make_test_s": round(seconds, 1),
                "pytest_summary": found[-1][0] if found else None,
                "suite_s": float(found[-1][1]) if found else None,
                "failed_tests": re.findall(r"^FAILED (\S+)", log, re.MULTILINE),
                "clone": str(clone) if keep else None}
    finally:
        if not keep:
            shutil.rmtree(clone, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="6112ba8", help="default: main before issue #14")
    p.add_argument("--candidate", default="HEAD")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "make_test.json")
    p.add_argument("--keep", action="store_true", help="keep the clones and their logs")
    p.add_argument("--command", default="make test", help="what to time in each clone")
    p.add_argument("--parent", type=Path, default=ROOT.parent,
                   help="folder of the clones (default: beside the repository, so that "
                        "../shared resolves)")
    args = p.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                          "python": sys.version.split()[0]},
              "date": time.strftime("%Y-%m-%d %H:%M"), "runs": []}
    for commit in (rev(args.baseline), rev(args.candidate)):
        print(f"{args.command} at {commit} ...", flush=True)
        run = time_make_test(commit, args.keep, args.command, args.parent)
        result["runs"].append(run)
        print(json.dumps(run, indent=2), flush=True)
    base, cand = result["runs"]
    if base["suite_s"] and cand["suite_s"]:
        result["ratio_make_test"] = round(cand["make_test_s"] / base["make_test_s"], 3)
        result["ratio_suite"] = round(cand["suite_s"] / base["suite_s"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    print(f"{args.command}: {base['commit']} {base['make_test_s']} s ({base['pytest_summary']}); "
          f"{cand['commit']} {cand['make_test_s']} s ({cand['pytest_summary']})")
    return result


if __name__ == "__main__":
    main()
