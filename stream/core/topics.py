"""Topic names, which events go where, and the partitioner both sides agree on."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from stream.core.models import Event, HostEvent, Role, ViewerEvent


@dataclass(frozen=True, slots=True)
class Topics:
    """All topic names under one prefix (`lc.` by default)."""

    prefix: str = "lc."

    @property
    def viewer_events(self) -> str:
        return self.prefix + "viewer-events"

    @property
    def order_events(self) -> str:
        return self.prefix + "order-events"

    @property
    def host_events(self) -> str:
        return self.prefix + "host-events"

    @property
    def stock_updates(self) -> str:
        return self.prefix + "stock-updates"

    @property
    def order_results(self) -> str:
        return self.prefix + "order-results"

    @property
    def nudges(self) -> str:
        return self.prefix + "nudges"

    @property
    def tags(self) -> str:
        return self.prefix + "tags"

    @property
    def followups(self) -> str:
        return self.prefix + "followups"

    @property
    def dead_letters(self) -> str:
        return self.prefix + "dead-letters"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.viewer_events, self.order_events, self.host_events)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.stock_updates, self.order_results, self.nudges, self.tags,
                self.followups, self.dead_letters)

    def for_role(self, role: Role) -> str:
        """Each token role writes exactly one input topic."""
        return {"platform": self.viewer_events, "commerce": self.order_events,
                "host": self.host_events}[role]


def key_of(event: Event) -> str:
    """Viewer and order events are keyed by viewer, host events by room (SPEC)."""
    if isinstance(event, ViewerEvent):
        return event.viewer_id
    assert isinstance(event, HostEvent)
    return event.room_id


def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, positive, modulo), as the Java client does.

    Records sent with a plain key by any standard client land where our envelopes do.
    """
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions
