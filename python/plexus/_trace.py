"""`plexus trace DIR`: reads every rank's flight-recorder dump (JSON, written on a timeout or a
peer error, on SIGUSR1 with PLEXUS_TRACE_SIGNAL=1, or by plexus.debug_dump) and says, per
communicator, where each rank is, which rank is behind, and which calls the ranks disagree on,
as torch's flight-recorder analyzer does for NCCL."""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Tuple


def load(folder: str) -> List[dict]:
    """The dumps in `folder` (one per rank and process), oldest first."""
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a flight-recorder dump ({e})") from None
        if doc.get("tool") != "plexus flight recorder":
            continue
        doc["path"] = path
        docs.append(doc)
    return sorted(docs, key=lambda d: d.get("time", 0))


def _where(entries: List[dict]) -> Tuple[int, List[dict]]:
    """(last sequence number done, the calls not done: queued, running or failed)."""
    done = max((e["seq"] for e in entries if e["state"] == "done"), default=0)
    return done, [e for e in entries if e["state"] != "done"]


def report(folder: str) -> List[str]:
    docs = load(folder)
    if not docs:
        return [f"plexus trace: no flight-recorder dumps in {folder}"]
    lines = [f"plexus trace: {len(docs)} dump(s) in {folder}: "
             + ", ".join(f"rank {d['rank']} (pid {d['pid']} on {d['host']})" for d in docs)]
    comms: Dict[str, Dict[int, dict]] = {}  # communicator id -> group rank -> its record (latest dump wins)
    for d in docs:
        for c in d["communicators"]:
            comms.setdefault(c["id"], {})[c["rank"]] = c
    for cid, by_rank in comms.items():
        any_c = next(iter(by_rank.values()))
        names = any_c["global_ranks"]
        name = lambda r: f"rank {names[r] if r < len(names) else r}"  # noqa: E731
        lines.append("")
        lines.append(f"communicator {cid}: {any_c['size']} ranks (global ranks {names})")
        missing = [r for r in range(any_c["size"]) if r not in by_rank]
        at = {}  # rank -> the last call it got to (submitted)
        for r in sorted(by_rank):
            entries = by_rank[r]["entries"]
            done, open_calls = _where(entries)
            at[r] = max((e["seq"] for e in entries), default=0)
            text = f"  {name(r)}: last done #{done}"
            for e in open_calls[:3]:
                text += f"; #{e['seq']} {e['signature']} {e['state']}"
                if e["error"]:
                    text += f" ({e['error'][:160]})"
            lines.append(text)
        if missing:
            lines.append(f"  no dump from {', '.join(name(r) for r in missing)}: dead, or never got to write one")
        if at and min(at.values()) < max(at.values()):
            low = min(at.values())
            behind = [name(r) for r, v in at.items() if v == low]
            lines.append(f"  behind: {', '.join(behind)} (got to call #{low}; others to #{max(at.values())})")
        for seq, calls in sorted(_disagreements(by_rank).items()):
            who = "; ".join(f"{', '.join(name(r) for r in ranks)} called {sig}" for sig, ranks in calls.items())
            lines.append(f"  disagree at #{seq}: {who}")
    return lines


def _disagreements(by_rank: Dict[int, dict]) -> Dict[int, Dict[str, List[int]]]:
    """Sequence number -> {signature: ranks} where the ranks' calls differ."""
    seen: Dict[int, Dict[str, List[int]]] = {}
    for r, c in sorted(by_rank.items()):
        for e in c["entries"]:
            seen.setdefault(e["seq"], {}).setdefault(e["signature"], []).append(r)
    return {seq: calls for seq, calls in seen.items() if len(calls) > 1}
