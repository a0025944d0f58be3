"""Reading what the hours after a show need: a broadcast's pick lists (its orders, as the
inventory's books hold them, and its viewers' leaders and regions, as presence keeps
them) and its follow-ups (kept by the engagement path's once-only claims)."""

from __future__ import annotations

import msgspec

from stream.core.models import FollowUp
from stream.hostview.picklist import DIRECT, By, PickList, Profile, build
from stream.hostview.reader import RoomReader
from stream.store import keys
from stream.store.connect import Client
from stream.store.orderbook import orders_of
from stream.store.replies import text

_followup = msgspec.json.Decoder(FollowUp)


class FollowUpRow(msgspec.Struct, frozen=True, kw_only=True):
    """One follow-up to import into the brand's SCRM (WeCom 群发): who, why, what, when."""

    viewer_id: str
    segment: str
    action: str
    due_at: int
    leader: str  # DIRECT for a viewer who came through no leader


class FollowUps(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/rooms/{room}/followups`: a broadcast's follow-ups, by viewer."""

    room_id: str
    broadcast_id: str | None
    followups: list[FollowUpRow]


FOLLOWUP_HEADER = ["viewer_id", "segment", "action", "due_at", "leader"]


def followup_rows(export: FollowUps) -> list[list[str]]:
    return [[f.viewer_id, f.segment, f.action, str(f.due_at), f.leader]
            for f in export.followups]


async def profiles(redis: Client, room_id: str, book: int) -> dict[str, Profile]:
    """viewer -> leader and region, from their first join of the broadcast (the presence
    script's `source|leader|layer|region`)."""
    out = {}
    for viewer, raw in (await redis.hgetall(keys.profiles(room_id, book))).items():
        _, leader, _, region = text(raw).split("|", 3)
        out[text(viewer)] = Profile(leader=leader, region=region)
    return out


class AfterShow:
    """Reads a room's broadcasts for their pick lists and follow-ups."""

    def __init__(self, redis: Client, *, reader: RoomReader | None = None) -> None:
        self._redis = redis
        self._reader = reader or RoomReader(redis)

    async def _book(self, room_id: str, broadcast: str | None) -> tuple[int, str | None]:
        """The broadcast's book and id (default: the one on air, or the latest); raises
        UnknownBroadcast for an id the room has none of."""
        book = await self._reader.book(room_id, broadcast)
        shows = (await self._reader.room(room_id)).broadcasts
        return book, shows[book].broadcast_id if book < len(shows) else None

    async def picklist(self, room_id: str, *, by: By, broadcast: str | None = None) -> PickList:
        book, broadcast_id = await self._book(room_id, broadcast)
        redis = self._redis
        skus = sorted(text(s) for s in await redis.smembers(keys.skus(room_id)))
        async with redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hmget(keys.stock_prefix(room_id) + sku, "name", "price")
            rows = await pipe.execute()
        names = {sku: (r[0] or sku.encode()).decode() for sku, r in zip(skus, rows, strict=True)}
        prices = {sku: float(r[1]) for sku, r in zip(skus, rows, strict=True) if r[1]}
        return build(await orders_of(redis, room_id, book), await profiles(redis, room_id, book),
                     by=by, room_id=room_id, broadcast_id=broadcast_id, names=names,
                     prices=prices)

    async def followups(self, room_id: str, *, broadcast: str | None = None) -> FollowUps:
        book, broadcast_id = await self._book(room_id, broadcast)
        kept = await self._redis.hgetall(keys.followups(room_id, book))
        leaders = await profiles(self._redis, room_id, book)
        rows = []
        for raw in kept.values():
            f = _followup.decode(raw)
            leader = leaders.get(f.viewer_id, Profile()).leader or DIRECT
            rows.append(FollowUpRow(viewer_id=f.viewer_id, segment=f.segment, action=f.action,
                                    due_at=f.due_at, leader=leader))
        rows.sort(key=lambda r: (r.viewer_id, r.due_at))
        return FollowUps(room_id=room_id, broadcast_id=broadcast_id, followups=rows)
