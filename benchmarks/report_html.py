"""Time to write report.html (+ figures/) from an existing report.json, and the page's size.

    python benchmarks/report_html.py OUT/report.json [--repeat 3]

Renders into a temporary copy of the report's folder (grids resolve as in the original).
Prints wall and CPU seconds per render (CPU time is the figure to compare on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from audit.html import write_html_report

    report = json.loads(args.report.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        artifacts = args.report.parent / "artifacts"
        if artifacts.is_dir():
            shutil.copytree(artifacts, out / "artifacts")
        out.mkdir(exist_ok=True)
        for i in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            path = write_html_report(out, report)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            figures = len(json.loads((out / "figures" / "figures.json").read_text()))
            print(f"run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU; {len(report['results'])} records, "
                  f"{figures} figures, report.html {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
