"""A run's metrics.jsonl: one JSON object per line, one line per epoch, only ever appended to.
Training writes it (fastrobust.train.metrics.MetricsWriter); evaluation's plots and the run
tools read it, without depending on training."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List


def read_metrics(path) -> List[Dict[str, Any]]:
    """The epoch records of a metrics.jsonl file, by epoch.

    The file is only appended to, so an epoch can have several lines: a run killed after
    writing an epoch's line but before its checkpoint re-runs that epoch when resumed (bit for
    bit, so the same numbers but the timings). The last line of an epoch is the one kept. An
    unreadable line (e.g. cut by a crash) is skipped; records without an epoch come last."""
    latest: Dict[int, Dict[str, Any]] = {}
    others = []
    if not os.path.exists(path):
        return []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            epoch = record.get("epoch")
            if isinstance(epoch, int) and not isinstance(epoch, bool):
                latest[epoch] = record
            else:
                others.append(record)
    return [latest[e] for e in sorted(latest)] + others
