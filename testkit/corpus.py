"""Legacy Mentorix data, written exactly the way Mentorix writes it.

Used by the benchmarks and the tests. Every write is
``Path.write_text(json.dumps(payload, indent=2), encoding="utf-8")``: not
atomic, no trailing newline, three hub files rewritten per learner signal.

    python -m testkit.corpus DIR [--learners N] [--episodes N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

HUBS = ("learner_preferences", "operating_context", "soft_identity")
CONCEPTS = ("quadratic_equations", "fractions", "linear_functions", "probability", "vectors")


def write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def hub_values(rng: random.Random, signal: int = 0) -> dict[str, dict]:
    score = round(rng.random(), 2)
    return {
        "learner_preferences": {
            "preferred_explanation_density": rng.choice(["high", "compact"]),
            "last_concept": rng.choice(CONCEPTS),
            "last_score": score,
        },
        "operating_context": {
            "recent_adaptation_score": rng.random(),
            "intervention_required": score < 0.2,
        },
        "soft_identity": {
            "confidence_band": rng.choice(["low", "improving", "steady"]),
            "engagement_hint": "encourage_with_examples",
            "signals": signal,
        },
    }


def episode(rng: random.Random, run_id: str, when: datetime) -> dict:
    nodes = [{"id": f"n{i}", "agent": rng.choice(["planner", "tutor", "critic"]),
              "status": "completed", "output_chars": rng.randint(10, 5000)} for i in range(rng.randint(3, 12))]
    return {
        "run_id": run_id,
        "query": f"Explain {rng.choice(CONCEPTS)} with an example",
        "status": "completed",
        "updated_at": when.replace(tzinfo=None).isoformat(),
        "nodes": nodes,
        "edges": [{"from": a["id"], "to": b["id"]} for a, b in zip(nodes, nodes[1:])],
    }


def run_context(rng: random.Random, run_id: str, when: datetime) -> dict:
    return {
        "run_id": run_id,
        "learner_id": _id(rng),
        "started_at": when.replace(tzinfo=None).isoformat(),
        "steps": [{"step": i, "tool": rng.choice(["retrieve", "explain", "quiz"]),
                   "tokens": rng.randint(50, 900)} for i in range(rng.randint(2, 10))],
        "context": {"chapter": rng.randint(1, 14), "mode": "adaptive"},
    }


class LegacyWriter:
    """The Mentorix write pattern, one call per API action."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.rng = random.Random(seed)
        self.hubs: dict[str, dict] = {}
        for hub in HUBS:
            path = self.root / "structured_hubs" / f"{hub}.json"
            self.hubs[hub] = json.loads(path.read_text()) if path.exists() else {}

    def start(self) -> None:
        """API start: hub files created as {} if missing."""
        for hub in HUBS:
            path = self.root / "structured_hubs" / f"{hub}.json"
            if not path.exists():
                write_json(path, {})

    def learner_signal(self, learner_id: str, signal: int = 0) -> None:
        """hubs.py: each update reads the whole file, sets one key, rewrites it."""
        for hub, value in hub_values(self.rng, signal).items():
            path = self.root / "structured_hubs" / f"{hub}.json"
            data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            data[learner_id] = value
            write_json(path, data)

    def save_episode(self, run_id: str | None = None) -> str:
        run_id = run_id or _id(self.rng)
        write_json(self.root / "episodes" / f"skeleton_{run_id}.json",
                   episode(self.rng, run_id, datetime.now(timezone.utc)))
        return run_id

    def save_run(self, run_id: str | None = None) -> str:
        run_id = run_id or _id(self.rng)
        write_json(self.root / "runs" / f"run_{run_id}.json",
                   run_context(self.rng, run_id, datetime.now(timezone.utc)))
        return run_id

    def save_jobs(self, count: int) -> None:
        write_json(self.root / "scheduled_jobs.json", [
            {"id": f"job-{i}", "kind": "reminder", "cron": "0 9 * * *", "enabled": i % 3 != 0}
            for i in range(count)])

    def save_snapshot(self, active: list[str] | None = None) -> None:
        write_json(self.root / "snapshot.json", {
            "timestamp": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(),
            "active_runs": active or []})


def generate(root: Path, learners: int = 10_000, episodes: int = 2_000, runs: int = 2_000,
             jobs: int = 50, seed: int = 0) -> dict[str, int]:
    """A corpus written in one go (each hub file once, not once per learner)."""
    rng = random.Random(seed)
    root = Path(root)
    hubs: dict[str, dict] = {hub: {} for hub in HUBS}
    for i in range(learners):
        learner = _id(rng)
        for hub, value in hub_values(rng, i).items():
            hubs[hub][learner] = value
    for hub, data in hubs.items():
        write_json(root / "structured_hubs" / f"{hub}.json", data)
    base = datetime(2026, 2, 1, tzinfo=timezone.utc)
    for i in range(episodes):
        run_id = _id(rng)
        write_json(root / "episodes" / f"skeleton_{run_id}.json", episode(rng, run_id, base + timedelta(minutes=i)))
    for i in range(runs):
        run_id = _id(rng)
        write_json(root / "runs" / f"run_{run_id}.json", run_context(rng, run_id, base + timedelta(minutes=i)))
    LegacyWriter(root, seed).save_jobs(jobs)
    write_json(root / "snapshot.json", {"timestamp": "2026-02-21T05:29:24.762951", "active_runs": []})
    return {"hub_entries": learners * len(HUBS), "episodes": episodes, "runs": runs, "files": 3 + episodes + runs + 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--learners", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(generate(a.dir, a.learners, a.episodes, a.runs, seed=a.seed)))


if __name__ == "__main__":
    main()
