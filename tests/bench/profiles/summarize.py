"""Summarizes py-spy raw (collapsed-stack) files: the top functions by self time per process and the share of
the process's samples in serialization, SQL, CEL, gRPC, numpy and the rest (Python logic).

    python tests/bench/profiles/summarize.py FOLDER [TOP]   # FOLDER holds the files BENCH_PROFILE_DIR wrote
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# A sample belongs to the first category whose pattern matches a frame, leaf first. Idle samples (an event loop
# waiting in select, an idle worker thread) are counted apart and left out of the shares.
IDLE = re.compile(r"^(EpollSelector\.select|_PollLikeSelector\.select|Thread\.run|wait) \((selectors|threading)\.py")
CATEGORIES = (
    ("serialization", re.compile(r"google/protobuf|json_format|_pb2|\(json/|struct_pb2|orjson")),
    ("SQL", re.compile(r"asyncpg|/postgres\w*\.py")),
    ("CEL", re.compile(r"celpy|/cel|cel\.|rules\.py")),
    ("gRPC", re.compile(r"grpc")),
    ("numpy", re.compile(r"numpy|scipy|implicit")),
)
# Our own functions whose self time is building or reading messages, dicts for the wire, or JSON.
OURS = re.compile(r"\((services|shared|gateway|decision|recommender|profile_graph|identity)/")
OUR_SERIALIZATION = re.compile(r"^(StructView|\w*to_proto|\w*_proto |\w*from_proto|to_profile_pb|_items |log_entry|"
                               r"item_rows|profile_view|context_view|struct_dict|_py |_qualification |"
                               r"\w+Servicer\.\w+ )")


def category(frames: list[str]) -> str:
    """The library a sample is in, walking up from the leaf to the first of our own functions; in our own code,
    serialization or Python logic by that function."""
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
        if OURS.search(frame):
            return "serialization" if OUR_SERIALIZATION.match(frame) else "Python logic"
    return "Python logic"


def summarize(path: Path, top: int) -> list[str]:
    self_time: Counter[str] = Counter()
    shares: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        n = int(count)
        leaf = re.sub(r":\d+\)$", ")", frames[-1]) if frames else "?"
        if IDLE.match(leaf):
            idle += n
            continue
        total += n
        self_time[leaf] += n
        shares[category(frames)] += n
    if not total:
        return [f"{path.name}: no busy samples"]
    out = [f"{path.name}: {total} busy samples ({idle} idle); "
           + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in shares.most_common())]
    out += [f"  {100 * n / total:5.1f}%  {name[:110]}" for name, n in self_time.most_common(top)]
    return out


def main() -> None:
    folder, top = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 8
    for path in sorted(folder.glob("services.*.txt")):
        print("\n".join(summarize(path, top)))


if __name__ == "__main__":
    main()
