"""The crash-safe scoring loop of `sdmvae evaluate`: every file in a worker process, every row
journalled as it arrives.

Why: a library that kills its process (the pesq C code) must cost one file, not the evaluation
(:mod:`sdmvae_cli.core.pool`); and an evaluation of hours interrupted by Ctrl-C or kill -9 must
continue where it stopped. Rows are appended to ``per_file.partial.jsonl`` in the output folder
(one JSON line each, flushed: in the OS's hands when written); its first line holds the identity
of the evaluation (checkpoint, data, settings, version), so a journal of another evaluation is
discarded, never mixed in. The metric libraries (pesq, pystoi) are imported by
:mod:`sdmvae_cli.evaluation.metrics` before the workers fork, so each inherits them loaded.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from pathlib import Path
from typing import Callable

from sdmvae_cli.core.errors import Interrupted
from sdmvae_cli.core.pool import Failure, imap_unordered

JOURNAL = "per_file.partial.jsonl"
log = logging.getLogger("sdmvae")


def _item_row(item) -> dict:
    """The identifying columns of a row, for a file whose worker died or raised: a checkpoint
    evaluation's items are manifest entries, a folder evaluation's (id, reference, estimate)."""
    if isinstance(item, dict):
        return {"id": item["id"], "speaker": item.get("speaker", ""), "path": item["path"]}
    rel, _, est_path = item
    return {"id": rel, "path": est_path}


def _failure_text(f: Failure) -> str:
    return f.reason.replace("the worker process died", "the scoring process died").replace("on this item", "on this file")


def read_journal(path: Path, identity: dict) -> dict[str, dict]:
    """Rows of an interrupted run with the same identity (a torn last line is ignored)."""
    if not path.exists():
        return {}
    rows: dict[str, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        try:
            head = json.loads(fh.readline())
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or head.get("identity") != identity:
            log.warning("%s belongs to another evaluation (checkpoint, data or settings differ); starting afresh", path)
            return {}
        for line in fh:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by kill -9
            if isinstance(r, dict) and "id" in r:
                rows[r["id"]] = r
    return rows


def run_pool(
    fn: Callable,
    items: list,
    jobs: int,
    init=None,
    initargs=(),
    progress: Callable[[], None] | None = None,
    journal: Path | None = None,
    identity: dict | None = None,
) -> list[dict]:
    """Score ``items`` in ``jobs`` worker processes (at least one: crash isolation); rows in
    item order. With ``journal``, rows already there (same ``identity``) are reused and every
    new row is appended as it arrives, so an interruption loses nothing finished."""
    ident = identity or {}
    done = read_journal(journal, ident) if journal is not None else {}
    rows: dict[int, dict] = {}
    pending = deque()
    for i, it in enumerate(items):
        prev = done.get(_item_row(it)["id"])
        if prev is not None:
            rows[i] = prev
            if progress:
                progress()
        else:
            pending.append((i, it))
    jfh = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        fresh = not done
        jfh = open(journal, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            jfh.write(json.dumps({"journal": "sdmvae-evaluate", "identity": ident}) + "\n")
            for r in rows.values():
                jfh.write(json.dumps(r) + "\n")
            jfh.flush()

    def record(i: int, row: dict) -> None:
        rows[i] = row
        if jfh is not None:
            jfh.write(json.dumps(row) + "\n")
            jfh.flush()  # in the OS's hands: survives kill -9 of this process
        if progress:
            progress()

    try:
        if pending:
            for i, row in imap_unordered(fn, pending, jobs, init, initargs):
                record(i, row if not isinstance(row, Failure) else {**_item_row(items[i]), "error": _failure_text(row)})
    except KeyboardInterrupt:
        where = (
            f"; the {len(rows)} file(s) scored so far are kept in {journal}: run the same command again to continue"
            if journal
            else ""
        )
        raise Interrupted(f"interrupted after {len(rows)} of {len(items)} file(s){where}") from None
    finally:
        if jfh is not None:
            jfh.close()
    return [rows[i] for i in range(len(items))]
