"""Peak memory of an audit: runs `splitaudit run ARGS...` and samples the process tree.

    python benchmarks/memory.py configs/utkface.yaml --out /tmp/utk_mem --threads 1

Every 0.5 s it reads /proc/<pid>/status of the driver and all its descendants
(worker processes) and keeps the peaks of the tree's summed RSS, anonymous
memory (RssAnon: what the process really holds) and file-backed memory
(RssFile: pages of memory-mapped feature files and libraries, which the
kernel can drop and re-read; counted in RSS while resident). At the end it
prints one JSON line with those peaks (MiB), the driver's own high-water mark
(VmHWM, the kernel's exact peak RSS of that one process), the largest
ru_maxrss of any finished process of the tree, the wall time and the exit code.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

KB = 1024


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])  # kB
    except OSError:
        pass
    return out


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [root], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "audit", "run", *argv]
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    peaks = {"rss": 0, "anon": 0, "file": 0, "driver_hwm": 0, "processes": 1}
    while proc.poll() is None:
        stats = [_status(p) for p in _tree(proc.pid)]
        peaks["rss"] = max(peaks["rss"], sum(s.get("VmRSS", 0) for s in stats))
        peaks["anon"] = max(peaks["anon"], sum(s.get("RssAnon", 0) for s in stats))
        peaks["file"] = max(peaks["file"], sum(s.get("RssFile", 0) for s in stats))
        peaks["processes"] = max(peaks["processes"], len(stats))
        peaks["driver_hwm"] = max(peaks["driver_hwm"], _status(proc.pid).get("VmHWM", 0))
        time.sleep(0.5)
    wall = time.monotonic() - start
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux
    print(json.dumps({
        "command": " ".join(cmd[2:]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
        "peak_tree_rss_mib": round(peaks["rss"] / KB), "peak_tree_anon_mib": round(peaks["anon"] / KB),
        "peak_tree_file_mib": round(peaks["file"] / KB), "driver_vmhwm_mib": round(peaks["driver_hwm"] / KB),
        "max_ru_maxrss_mib": round(maxrss / KB), "max_processes": peaks["processes"],
    }), flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
