"""Live tags (seed 001) and follow-ups at broadcast end (seed 000), through the engine."""

from __future__ import annotations

from test_viewers import DAY, HOUR, MIN, T0, TAGS, S, Show

from stream.core.models import FollowUp, TagChange
from stream.engine.rules import Bucket, HighPotential, TagFile
from stream.engine.tags import TagPlan, conversion_node, followup_segment
from stream.engine.timeline import RoomTimeline


def ops(effects: list[object], tag: str | None = None) -> list[tuple[str, str, str]]:
    return [(e.op, e.tag, e.value) for e in effects
            if isinstance(e, TagChange) and (tag is None or e.tag == tag)]


# --- watch depth --------------------------------------------------------------------------

def test_watch_depth_moves_bucket_by_bucket_at_the_exact_boundaries() -> None:
    show = Show()
    assert ops(show.join(0), "watch_depth") == [("add", "watch_depth", "<5min")]
    assert ops(show.send("viewer.heartbeat", 5 * MIN - 1), "watch_depth") == []
    assert ops(show.send("viewer.heartbeat", 5 * MIN), "watch_depth") == [
        ("remove", "watch_depth", "<5min"), ("add", "watch_depth", "5-15min")]
    show.send("viewer.left", 10 * MIN)
    show.join(HOUR)  # the time away does not count
    assert ops(show.send("viewer.heartbeat", HOUR + 5 * MIN - 1), "watch_depth") == []
    effects = show.send("viewer.heartbeat", HOUR + 5 * MIN)
    assert ops(effects, "watch_depth")[-1] == ("add", "watch_depth", ">15min")
    assert [e.ts for e in effects if isinstance(e, TagChange)][-1] == T0 + HOUR + 5 * MIN
    assert show.engine.tags_of("r1", "v1")["watch_depth"] == [">15min"]


def test_watch_time_is_proven_by_heartbeats_not_assumed_until_the_end() -> None:
    show = Show()
    show.join(0)
    show.send("viewer.heartbeat", 4 * MIN)  # then the app died: no viewer.left
    show.end(HOUR)
    assert show.engine.tags_of("r1", "v1")["watch_depth"] == ["<5min"]


def test_a_second_join_without_a_leave_closes_the_visit_at_its_last_proof() -> None:
    show = Show()
    show.join(0)
    show.send("viewer.heartbeat", 4 * MIN)
    show.join(HOUR)  # the app restarted an hour later
    show.send("viewer.heartbeat", HOUR + 2 * MIN)
    assert show.engine.tags_of("r1", "v1")["watch_depth"] == ["5-15min"]


# --- interactions, keywords ---------------------------------------------------------------

def test_each_interaction_tags_once() -> None:
    show = Show()
    show.join(0)
    for kind, fields in [("interaction.like", {"count": 3}),
                         ("interaction.comment", {"text": "好"}), ("interaction.share", {}),
                         ("cart.clicked", {"sku": "rice"}), ("fan.joined", {})]:
        show.send(kind, S, **fields)
        assert show.send(kind, 2 * S, **fields) == []  # held already: no change, no record
    assert ops(show.out, "interaction") == [
        ("add", "interaction", v) for v in ("liked", "commented", "shared", "cart_clicked",
                                            "fan_club")]


def test_comment_keywords_become_tags() -> None:
    show = Show()
    show.join(0)
    effects = show.send("interaction.comment", S, text="这个米宝宝能吃吗？有没有小包装")
    assert ops(effects, "household") == [("add", "household", "young_child"),
                                         ("add", "household", "small")]
    assert ops(show.send("interaction.comment", 2 * S, text="做辅食"), "household") == []


# --- conversion node, drop-off ------------------------------------------------------------

def test_conversion_node_is_the_segment_and_pinned_product_when_ordering() -> None:
    show = Show()
    show.join(0)
    assert ops(show.place(S, "rice", order="o0"), "conversion_node") == [
        ("add", "conversion_node", "none:-")]
    show.room.segments = [(T0 + MIN, "demo", "rice"), (T0 + 10 * MIN, "promo", "rice")]
    show.room.pins = [(T0 + MIN, "rice")]
    show.place(10 * MIN, "rice", order="o1")
    show.place(11 * MIN, "rice", order="o2")  # same node: no change
    assert ops(show.out, "conversion_node") == [("add", "conversion_node", "none:-"),
                                                ("add", "conversion_node", "promo:rice")]


def test_drop_off_cart_unpaid_at_the_end_and_payment_failed_both_cleared_by_paying() -> None:
    show = Show()
    show.join(0)
    show.send("cart.added", S, sku="rice", qty=1)
    show.place(2 * S, "rice")
    assert ops(show.send("order.payment_failed", 3 * S, order_id="o1", reason="card_declined"),
               "drop_off") == [("add", "drop_off", "payment_failed")]
    end = show.end(HOUR)
    assert ops(end, "drop_off") == [("add", "drop_off", "cart_unpaid")]
    assert {e.ts for e in end if isinstance(e, TagChange)} == {T0 + HOUR}
    paid = show.send("order.paid", HOUR + MIN, order_id="o1")  # paid after the show
    assert ops(paid) == [("remove", "drop_off", "cart_unpaid"),
                         ("remove", "drop_off", "payment_failed")]
    assert "drop_off" not in show.engine.tags_of("r1", "v1")


def test_no_drop_off_for_a_viewer_who_paid() -> None:
    show = Show()
    show.join(0)
    show.send("cart.added", S, sku="rice", qty=1)
    show.send("cart.added", S, sku="oil", qty=1)
    show.place(2 * S, "rice")
    show.send("order.paid", 3 * S, order_id="o1")
    show.end(HOUR)
    assert ops(show.out, "drop_off") == []


# --- high potential, source, leader, visitor ----------------------------------------------

def test_high_potential_by_long_watch_or_repeat_visits_until_an_order() -> None:
    long_watch = Show()
    long_watch.join(0)
    assert ops(long_watch.send("viewer.heartbeat", 15 * MIN), "high_potential") == [
        ("add", "high_potential", "true")]
    assert ops(long_watch.place(16 * MIN, "rice"), "high_potential") == [
        ("remove", "high_potential", "true")]
    long_watch.send("viewer.left", 20 * MIN)
    long_watch.join(30 * MIN)  # a second visit, but they ordered
    assert ops(long_watch.out, "high_potential") == [("add", "high_potential", "true"),
                                                     ("remove", "high_potential", "true")]

    revisit = Show()
    revisit.join(0)
    revisit.send("viewer.left", MIN)
    assert ops(revisit.join(2 * MIN), "high_potential") == [("add", "high_potential", "true")]


def test_source_leader_and_visitor() -> None:
    show = Show()
    effects = show.join(0, source="leader_share", leader_id="leader-wang", returning=True)
    assert ops(effects)[:3] == [("add", "source", "private"), ("add", "leader", "leader-wang"),
                                ("add", "visitor", "returning")]
    show.send("viewer.left", MIN)
    rejoin = show.join(2 * MIN, source="douyin", returning=True)
    assert ops(rejoin, "source") == [("remove", "source", "private"), ("add", "source", "public")]
    assert ops(rejoin, "leader") == ops(rejoin, "visitor") == []
    assert ops(Show().join(0, returning=False), "visitor") == [("add", "visitor", "new")]
    assert ops(Show().join(0), "visitor") == []  # not said: not guessed


# --- follow-ups ---------------------------------------------------------------------------

def test_follow_ups_at_the_end_one_per_viewer_by_segment() -> None:
    show = Show()
    for viewer in ("paid", "carted", "placed", "watched"):
        show.join(0, viewer=viewer)
    show.send("cart.added", S, viewer="carted", sku="rice", qty=1)
    show.place(S, "rice", viewer="placed", order="o-placed")
    show.place(S, "rice", viewer="paid", order="o-paid")
    show.send("order.paid", 2 * S, viewer="paid", order_id="o-paid")
    show.place(S, "oil", viewer="never-joined", order="o-x")  # orders only: not a viewer
    show.end(HOUR)
    assert sorted(show.followups(), key=lambda f: f.viewer_id) == [
        FollowUp(viewer_id="carted", room_id="r1", segment="cart_unpaid", action="coupon",
                 due_at=T0 + HOUR + DAY),
        FollowUp(viewer_id="paid", room_id="r1", segment="ordered", action="invite",
                 due_at=T0 + HOUR),
        FollowUp(viewer_id="placed", room_id="r1", segment="cart_unpaid", action="coupon",
                 due_at=T0 + HOUR + DAY),
        FollowUp(viewer_id="watched", room_id="r1", segment="watched_only", action="trial",
                 due_at=T0 + HOUR + 3 * DAY)]
    assert show.advance(2 * HOUR) == []  # once
    show.send("viewer.heartbeat", HOUR + 1, viewer="watched")
    assert show.followups()[-1].viewer_id == "watched" and len(show.followups()) == 4


def test_follow_ups_are_decided_as_of_the_end() -> None:
    """A payment after the show leaves the segment; drop_off shows it (check it at due_at)."""
    show = Show(grace_ms=5000)
    show.join(0)
    show.place(S, "rice")
    show.room.ended_at = T0 + HOUR
    show.send("order.paid", HOUR + 2 * S, order_id="o1")  # inside grace: before the end runs
    show.advance(HOUR + 10 * S)
    assert [f.segment for f in show.followups()] == ["cart_unpaid"]
    assert "drop_off" not in show.engine.tags_of("r1", "v1")


def test_a_viewer_first_seen_after_the_end_still_gets_a_follow_up() -> None:
    show = Show()
    show.join(0)
    show.end(HOUR)
    effects = show.join(HOUR - MIN, viewer="straggler")  # delivered late
    assert [(f.viewer_id, f.segment) for f in effects if isinstance(f, FollowUp)] == [
        ("straggler", "watched_only")]


# --- the pure parts -----------------------------------------------------------------------

def test_tag_plan() -> None:
    plan = TagPlan(TagFile(watch_depth=[Bucket(value="short", below_s=60), Bucket(value="long")],
                           high_potential=HighPotential(min_watch_s=600, min_visits=3),
                           private_sources=["wecom_group"], keyword=TAGS.keyword))
    assert [plan.watch_depth(ms) for ms in (0, 59_999, 60_000, 10**9)] == [
        "short", "short", "long", "long"]
    assert (plan.source("wecom_group"), plan.source("douyin")) == ("private", "public")
    assert plan.keyword_tags("宝宝能吃吗？做辅食") == [("household", "young_child")]
    assert plan.keyword_tags("主播好") == []
    assert plan.high_potential(600_000, 1, ordered=False)
    assert plan.high_potential(0, 3, ordered=False)
    assert not plan.high_potential(599_999, 2, ordered=False)
    assert not plan.high_potential(10**9, 9, ordered=True)


def test_conversion_node_and_follow_up_segment() -> None:
    room = RoomTimeline(room_id="r1", segments=[(10, "demo", "rice")], pins=[(20, "oil")])
    assert [conversion_node(room, t) for t in (9, 10, 20)] == ["none:-", "demo:-", "demo:oil"]
    assert followup_segment(carted=True, paid=True) == "ordered"
    assert followup_segment(carted=True, paid=False) == "cart_unpaid"
    assert followup_segment(carted=False, paid=False) == "watched_only"
