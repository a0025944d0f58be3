// Unit tests of the browser client with fake sockets and timers (node --test).
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffMs, connect } from "../../stream/gateway/static/client/livecommerce.js";

class FakeWebSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.closed = false;
    FakeWebSocket.made.push(this);
  }
  close() {
    this.closed = true;
  }
  send(data) {
    (this.sent ??= []).push(data);
  }
  // What the gateway does:
  deliver(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop() {
    this.onerror?.({});
    this.onclose?.({});
  }
}

class FakeEventSource {
  static made = [];
  constructor(url) {
    this.url = url;
    this.closed = false;
    this.listeners = {};
    FakeEventSource.made.push(this);
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  close() {
    this.closed = true;
  }
  deliver(type, data) {
    for (const fn of this.listeners[type] ?? []) fn({ data: JSON.stringify(data) });
  }
}

function fakeTimers() {
  const pending = new Map();
  let next = 1;
  return {
    waits: [],
    setTimeout(fn, ms) {
      this.waits.push(ms);
      const id = next++;
      pending.set(id, fn);
      return id;
    },
    clearTimeout(id) {
      pending.delete(id);
    },
    runAll() {
      const fns = [...pending.values()];
      pending.clear();
      for (const fn of fns) fn();
    },
    get count() {
      return pending.size;
    },
  };
}

function setup(extra = {}) {
  FakeWebSocket.made = [];
  FakeEventSource.made = [];
  const timers = fakeTimers();
  const live = connect({
    gateway: "http://gw.example:8080/", room: "room 1", viewer: "v1", token: "t0k",
    WebSocket: FakeWebSocket, EventSource: FakeEventSource,
    setTimeout: timers.setTimeout.bind(timers), clearTimeout: timers.clearTimeout.bind(timers),
    random: () => 0.5, ...extra,
  });
  const got = { stock: [], nudges: [], status: [] };
  live.onStock((sku, level) => got.stock.push([sku, level.available, level.version]));
  live.onNudge((n) => got.nudges.push(n.id));
  live.onStatus((s) => got.status.push(s));
  return { live, timers, got };
}

const snap = (...skus) => ({
  type: "snapshot", room_id: "room 1",
  skus: skus.map(([sku, available, version]) => ({ sku, available, reserved: 0, sold: 0,
                                                  version })),
});
const stock = (sku, available, version) => ({
  type: "stock", room_id: "room 1", sku, available, reserved: 0, sold: 0, version, ts: 1,
});

test("with a viewer token it opens the room's WebSocket, escaped", () => {
  const { live } = setup();
  assert.equal(FakeWebSocket.made.length, 1);
  assert.equal(FakeWebSocket.made[0].url,
               "ws://gw.example:8080/v1/rooms/room%201/ws?viewer=v1&token=t0k");
  live.close();
});

test("a snapshot, then only increasing versions per SKU", () => {
  const { live, got } = setup();
  const ws = FakeWebSocket.made[0];
  ws.deliver(snap(["rice", 10, 5], ["oil", 3, 2]));
  ws.deliver(stock("rice", 9, 6));
  ws.deliver(stock("rice", 10, 5)); // stale: another worker's older message
  ws.deliver(stock("oil", 2, 3));
  ws.deliver(stock("rice", 8, 6)); // same version again
  assert.deepEqual(got.stock, [["rice", 10, 5], ["oil", 3, 2], ["rice", 9, 6], ["oil", 2, 3]]);
  assert.deepEqual(got.status, ["connected"]);
  assert.deepEqual(live.levels().get("rice"), { available: 9, reserved: 0, sold: 0,
                                                version: 6 });
  live.close();
});

test("each nudge once, only the viewer's own", () => {
  const { live, got } = setup();
  const ws = FakeWebSocket.made[0];
  ws.deliver(snap());
  const n = { type: "nudge", id: "dwell|1", viewer_id: "v1", message: "hi" };
  ws.deliver(n);
  ws.deliver(n);
  ws.deliver({ ...n, id: "other|2", viewer_id: "v2" });
  ws.deliver({ ...n, id: "cart|3" });
  assert.deepEqual(got.nudges, ["dwell|1", "cart|3"]);
  live.close();
});

test("reconnects with capped, jittered backoff and resumes from a fresh snapshot", () => {
  const { live, timers, got } = setup();
  FakeWebSocket.made[0].deliver(snap(["rice", 10, 5]));
  const n = { type: "nudge", id: "dwell|1", viewer_id: "v1", message: "hi" };
  FakeWebSocket.made[0].deliver(n);
  for (let i = 0; i < 8; i++) {
    FakeWebSocket.made.at(-1).drop();
    timers.runAll();
  }
  assert.equal(FakeWebSocket.made.length, 9);
  assert.ok(FakeWebSocket.made.slice(0, -1).every((ws) => ws.closed));
  // random() = 0.5: three quarters of 0.5 s doubling, capped at 15 s.
  assert.deepEqual(timers.waits, [375, 750, 1500, 3000, 6000, 11250, 11250, 11250]);
  assert.deepEqual(got.status, ["connected", "reconnecting"]);

  const ws = FakeWebSocket.made.at(-1);
  ws.deliver(snap(["rice", 4, 9], ["oil", 1, 1]));
  ws.deliver(n); // the same nudge again after a reconnect: not shown twice
  assert.deepEqual(got.stock, [["rice", 10, 5], ["rice", 4, 9], ["oil", 1, 1]]);
  assert.deepEqual(got.nudges, ["dwell|1"]);
  assert.deepEqual(got.status, ["connected", "reconnecting", "connected"]);
  // A healthy connection resets the backoff.
  ws.drop();
  assert.equal(timers.waits.at(-1), 375);
  live.close();
});

test("the jitter spreads waits over the upper half, never above the cap", () => {
  const opts = { minBackoffMs: 500, maxBackoffMs: 15000 };
  for (const attempt of [0, 3, 30]) {
    const ceiling = Math.min(15000, 500 * 2 ** attempt);
    assert.equal(backoffMs(attempt, { ...opts, random: () => 0 }), ceiling / 2);
    assert.equal(backoffMs(attempt, { ...opts, random: () => 0.999999 }) <= ceiling, true);
  }
});

test("a late event of an old socket changes nothing", () => {
  const { live, timers, got } = setup();
  const old = FakeWebSocket.made[0];
  old.deliver(snap(["rice", 10, 5]));
  old.drop();
  timers.runAll();
  old.deliver(stock("rice", 1, 99));
  old.drop();
  assert.deepEqual(got.stock, [["rice", 10, 5]]);
  assert.equal(timers.count, 0);
  assert.equal(FakeWebSocket.made.length, 2);
  live.close();
});

test("close stops reconnecting and closes the socket", () => {
  const { live, timers } = setup();
  FakeWebSocket.made[0].drop();
  assert.equal(timers.count, 1);
  live.close();
  assert.equal(timers.count, 0);
  timers.runAll();
  assert.equal(FakeWebSocket.made.length, 1);
  const again = setup();
  again.live.close();
  assert.equal(FakeWebSocket.made[0].closed, true);
});

test("without a token: the SSE stock stream, reconnected by us", () => {
  const { live, timers, got } = setup({ viewer: undefined, token: undefined });
  assert.equal(FakeWebSocket.made.length, 0);
  const es = FakeEventSource.made[0];
  assert.equal(es.url, "http://gw.example:8080/v1/rooms/room%201/stock/stream");
  es.deliver("snapshot", { room_id: "room 1", skus: [{ sku: "rice", available: 3,
                                                        reserved: 0, sold: 0, version: 1 }] });
  es.deliver("stock", { room_id: "room 1", sku: "rice", available: 2, reserved: 1, sold: 0,
                        version: 2, ts: 1 });
  es.onerror({});
  assert.equal(es.closed, true);
  timers.runAll();
  assert.equal(FakeEventSource.made.length, 2);
  assert.deepEqual(got.stock, [["rice", 3, 1], ["rice", 2, 2]]);
  assert.deepEqual(got.status, ["connected", "reconnecting"]);
  live.close();
});

test("a handler added late learns the present; a throwing one stops nothing", () => {
  const { live } = setup();
  const ws = FakeWebSocket.made[0];
  live.onStock(() => {
    throw new Error("page bug");
  });
  const seen = [];
  const errors = console.error;
  console.error = () => {};
  try {
    ws.deliver(snap(["rice", 10, 5]));
    live.onStock((sku, level) => seen.push([sku, level.available]));
    ws.deliver(stock("rice", 9, 6));
  } finally {
    console.error = errors;
  }
  assert.deepEqual(seen, [["rice", 10], ["rice", 9]]);
  const statuses = [];
  live.onStatus((s) => statuses.push(s));
  assert.deepEqual(statuses, ["connected"]);
  live.close();
});

test("bad options are refused with the option's name", () => {
  assert.throws(() => connect({ gateway: "http://x" }), /room/);
  assert.throws(() => connect({ room: "r", token: "t", WebSocket: FakeWebSocket }), /viewer/);
});

test("products: names and prices by SKU, an HTTP error named", async () => {
  const asked = [];
  const fetch = async (url) => {
    asked.push(url);
    return { ok: true, json: async () => ({ room_id: "room 1", products: [
      { sku: "rice", name: "有机胚芽米", price: 39.9 }, { sku: "oil", name: null, price: null }] }) };
  };
  const { live } = setup({ fetch });
  assert.deepEqual(await live.products(), { rice: { name: "有机胚芽米", price: 39.9 },
                                            oil: { name: null, price: null } });
  assert.deepEqual(asked, ["http://gw.example:8080/v1/rooms/room%201/products"]);
  live.close();
  const failing = setup({ fetch: async () => ({ ok: false, status: 503 }) });
  await assert.rejects(failing.live.products(), /products: HTTP 503/);
  failing.live.close();
});
