"""Accuracy per subtask and BLINK's official total, the plain mean of subtask accuracies."""

from __future__ import annotations

from collections import defaultdict


def accuracy_table(predictions: list[dict]) -> dict:
    """predictions: dicts with `sub_task`, `answer`, `prediction` ("(A)"...) and `options` (count)."""
    per_task, chance = defaultdict(list), defaultdict(list)
    for p in predictions:
        per_task[p["sub_task"]].append(p["prediction"] == p["answer"])
        chance[p["sub_task"]].append(1 / p["options"])
    per_task = {task: sum(hits) / len(hits) for task, hits in sorted(per_task.items())}
    correct = sum(p["prediction"] == p["answer"] for p in predictions)
    return {
        "macro_accuracy": sum(per_task.values()) / len(per_task),
        "micro_accuracy": correct / len(predictions),
        "per_task": per_task,
        "chance": {task: sum(c) / len(c) for task, c in sorted(chance.items())},
        "questions": len(predictions),
    }
