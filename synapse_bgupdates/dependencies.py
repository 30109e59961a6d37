"""Choosing the next update to run from the queue."""

from collections.abc import Collection, Sequence

import attr

from synapse_bgupdates.store import FAILED, QUEUED, QueuedUpdate


@attr.s(frozen=True, auto_attribs=True)
class QueueDecision:
    """The update to run next, or why none can run."""

    update: QueuedUpdate | None
    """The first queued update that can run now, None if there is none."""

    blocked: dict[str, str] = attr.Factory(dict)
    """For each queued update that cannot run, the reason."""


def choose_next_update(
    queue: Sequence[QueuedUpdate], registered: Collection[str]
) -> QueueDecision:
    """Pick the oldest queued update whose dependency has finished.

    An update waits while the update it depends on is still in the queue,
    failed or not, whatever the order in which the two were queued.

    Args:
        queue: the queue rows, oldest first.
        registered: names of the updates that have a handler in this process.
    """
    in_queue = {row.update_name: row for row in queue}
    blocked: dict[str, str] = {}
    for row in queue:
        if row.state != QUEUED:
            continue
        reason = _blocking_reason(row, in_queue, registered)
        if reason is None:
            return QueueDecision(row, blocked)
        blocked[row.update_name] = reason
    return QueueDecision(None, blocked)


def _blocking_reason(
    row: QueuedUpdate,
    in_queue: dict[str, QueuedUpdate],
    registered: Collection[str],
) -> str | None:
    if row.update_name not in registered:
        return "no handler is registered for this update"

    dependency = in_queue.get(row.depends_on) if row.depends_on else None
    if dependency is None:
        return None

    cycle = find_cycle(row.update_name, in_queue)
    if cycle:
        return "dependency cycle: " + " -> ".join(cycle)
    if dependency.state == FAILED:
        return f"depends on {dependency.update_name}, which failed"
    return f"waiting for {dependency.update_name}"


def find_cycle(start: str, in_queue: dict[str, QueuedUpdate]) -> list[str]:
    """Return the cycle that ``start`` belongs to, first name repeated at the end.

    Returns an empty list when following ``depends_on`` from ``start`` leaves
    the queue or reaches a cycle that ``start`` is not part of.
    """
    path = [start]
    current = in_queue[start].depends_on
    while current is not None and current in in_queue:
        if current == start:
            return [*path, start]
        if current in path:
            return []
        path.append(current)
        current = in_queue[current].depends_on
    return []
