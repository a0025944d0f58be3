// livecommerce browser client: live stock and the viewer's own nudges, no build step.
//
//   import { connect } from "https://GATEWAY/client/livecommerce.js";
//   const live = connect({ gateway, room, viewer, token });  // viewer, token: optional
//   live.onStock((sku, level) => …);  // level: {available, reserved, sold, version}
//   live.onNudge((nudge) => …);       // {id, rule_id, sku, message, channel, …}, each once
//   live.onStatus((status) => …);     // "connected" | "reconnecting"
//   live.close();
//   await live.products();            // {sku: {name, price}}
//
// With a viewer token it opens the room's WebSocket (stock and that viewer's nudges),
// without one the SSE stock stream. Every (re)connect starts with a snapshot of the whole
// room; a level reaches `onStock` only if its version is higher than the last one seen
// for that SKU, so a stale message or an older snapshot never moves a count backwards.
// A dropped connection is retried with capped, jittered exponential backoff (0.5 s
// doubling to 15 s, each wait drawn from its upper half so tabs do not return in step).

const DEFAULTS = { minBackoffMs: 500, maxBackoffMs: 15000 };

function httpBase(gateway) {
  const base = gateway ?? (globalThis.location ? globalThis.location.origin : "");
  return String(base).replace(/\/+$/, "");
}

/** The wait before reconnect attempt `attempt` (0, 1, …): capped, jittered. */
export function backoffMs(attempt, { minBackoffMs, maxBackoffMs, random = Math.random }) {
  const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(attempt, 20));
  return ceiling / 2 + (random() * ceiling) / 2;
}

export function connect(options) {
  const opts = { ...DEFAULTS, ...options };
  const { room, viewer, token } = opts;
  if (!room) throw new Error("connect: `room` is required");
  if (token && !viewer) throw new Error("connect: a `token` needs its `viewer`");
  const WS = opts.WebSocket ?? globalThis.WebSocket;
  const ES = opts.EventSource ?? globalThis.EventSource;
  const random = opts.random ?? Math.random;
  const schedule = opts.setTimeout ?? globalThis.setTimeout.bind(globalThis);
  const unschedule = opts.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
  const base = httpBase(opts.gateway);
  const path = `/v1/rooms/${encodeURIComponent(room)}`;
  const useWs = Boolean(token) || !ES;

  const handlers = { stock: new Set(), nudge: new Set(), status: new Set() };
  const levels = new Map(); // sku -> {available, reserved, sold, version}
  const shown = new Set(); // nudge ids handed to onNudge
  let status = null;
  let socket = null;
  let timer = null;
  let attempt = 0;
  let closed = false;

  function emit(kind, ...args) {
    for (const fn of handlers[kind]) {
      try {
        fn(...args);
      } catch (err) {
        // One page handler throwing must not stop the others or the connection.
        console.error(`livecommerce: an on${kind} handler threw`, err);
      }
    }
  }

  function setStatus(next) {
    if (next !== status && !closed) {
      status = next;
      emit("status", next);
    }
  }

  function stock(u) {
    if (!u || typeof u.sku !== "string" || typeof u.version !== "number") return;
    const held = levels.get(u.sku);
    if (held && held.version >= u.version) return;
    const level = { available: u.available, reserved: u.reserved, sold: u.sold,
                    version: u.version };
    levels.set(u.sku, level);
    emit("stock", u.sku, level);
  }

  function nudge(n) {
    if (!n || typeof n.id !== "string" || shown.has(n.id)) return;
    if (viewer && n.viewer_id && n.viewer_id !== viewer) return;
    shown.add(n.id);
    const { type, ...fields } = n;
    emit("nudge", fields);
  }

  function snapshot(s) {
    for (const u of s.skus ?? []) stock(u);
    attempt = 0; // a connection that got this far was healthy: start over at 0.5 s
    setStatus("connected");
  }

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null; // not ours: the gateway only sends JSON
    }
  }

  function onMessage(msg) {
    if (!msg) return;
    if (msg.type === "snapshot") snapshot(msg);
    else if (msg.type === "stock") stock(msg);
    else if (msg.type === "nudge") nudge(msg);
  }

  function drop(current) {
    if (current !== socket) return; // an old socket's late event
    socket = null;
    try {
      current.close();
    } catch {
      // already closed
    }
    if (closed) return;
    setStatus("reconnecting");
    const wait = backoffMs(attempt, { ...opts, random });
    attempt += 1;
    timer = schedule(() => {
      timer = null;
      open();
    }, wait);
  }

  function open() {
    if (closed) return;
    if (useWs) {
      const query = new URLSearchParams();
      if (viewer) query.set("viewer", viewer);
      if (token) query.set("token", token);
      const url = `${base.replace(/^http/, "ws")}${path}/ws?${query}`;
      const ws = new WS(url);
      socket = ws;
      ws.onmessage = (ev) => current(ws) && onMessage(parse(ev.data));
      ws.onclose = () => drop(ws);
      ws.onerror = () => drop(ws);
    } else {
      const es = new ES(`${base}${path}/stock/stream`);
      socket = es;
      // EventSource would retry by itself, at its own pace and without a fresh start:
      // any error closes it and our backoff opens a new one.
      for (const type of ["snapshot", "stock"]) {
        es.addEventListener(type, (ev) => current(es) && onMessage(
          { ...parse(ev.data), type }));
      }
      es.onerror = () => drop(es);
    }
  }

  function current(s) {
    return s === socket && !closed;
  }

  function subscribe(kind, fn) {
    if (typeof fn !== "function") throw new TypeError(`on${kind}: expected a function`);
    handlers[kind].add(fn);
    // A handler added late still learns the present: the levels so far, the status.
    if (kind === "stock") for (const [sku, level] of levels) fn(sku, level);
    if (kind === "status" && status !== null) fn(status);
    return () => handlers[kind].delete(fn);
  }

  // A phone that comes back online has usually lost its socket without a close event.
  const online = () => {
    if (!closed && status !== "connected" && timer !== null) {
      unschedule(timer);
      timer = null;
      open();
    }
  };
  globalThis.addEventListener?.("online", online);

  open();

  return {
    onStock: (fn) => subscribe("stock", fn),
    onNudge: (fn) => subscribe("nudge", fn),
    onStatus: (fn) => subscribe("status", fn),
    /** The room's product names and prices: {sku: {name, price}} (names are public). */
    async products() {
      const fetcher = opts.fetch ?? globalThis.fetch;
      const resp = await fetcher(`${base}${path}/products`);
      if (!resp.ok) throw new Error(`products: HTTP ${resp.status}`);
      const body = await resp.json();
      return Object.fromEntries(body.products.map((p) => [p.sku, { name: p.name,
                                                                 price: p.price }]));
    },
    /** The last level seen per SKU (a copy). */
    levels: () => new Map([...levels].map(([sku, l]) => [sku, { ...l }])),
    close() {
      closed = true;
      globalThis.removeEventListener?.("online", online);
      if (timer !== null) unschedule(timer);
      timer = null;
      const s = socket;
      socket = null;
      if (s) s.close();
    },
  };
}
