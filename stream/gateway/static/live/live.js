// The reference viewer page: uses nothing but the client library (/client/livecommerce.js).
// /live/ROOM#viewer=V&token=T (the fragment never reaches a server log); without a
// viewer token the page shows stock only.
import { connect } from "/client/livecommerce.js";

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const params = new URLSearchParams(location.hash.slice(1) || location.search.slice(1));
const viewer = params.get("viewer") || undefined;
const token = params.get("token") || undefined;
const STATUS = { connected: "已连接 live", reconnecting: "重连中 reconnecting" };

$("room").textContent = room;
const live = connect({ gateway: location.origin, room, viewer, token });
const cards = new Map(); // sku -> <li>
let names = {};

function card(sku) {
  let li = cards.get(sku);
  if (!li) {
    li = document.createElement("li");
    li.className = "product";
    li.dataset.sku = sku;
    li.innerHTML = '<span class="name"></span><span class="price"></span><span class="left"></span>';
    cards.set(sku, li);
    const list = $("products");
    list.querySelector(".empty")?.remove();
    const after = [...cards.keys()].sort().indexOf(sku);
    list.insertBefore(li, list.children[after] ?? null);
    label(sku);
  }
  return li;
}

function label(sku) {
  const li = cards.get(sku);
  const p = names[sku] ?? {};
  li.querySelector(".name").textContent = p.name || sku;
  li.querySelector(".price").textContent = p.price == null ? "" : `¥${p.price}`;
}

live.onStock((sku, level) => {
  const li = card(sku);
  li.dataset.available = String(level.available);
  li.dataset.version = String(level.version);
  const out = level.available <= 0;
  li.classList.toggle("sold-out", out);
  li.querySelector(".left").innerHTML = out
    ? "已售罄 sold out"
    : `剩余 <b>${level.available}</b> 件 · ${level.available} left`;
});

live.onStatus((status) => {
  document.body.dataset.status = status;
  $("status").textContent = STATUS[status] ?? status;
});

const shown = [];
live.onNudge((nudge) => {
  if (nudge.channel !== "live_popup") return;
  shown.push(nudge.id);
  document.body.dataset.nudges = shown.join(" ");
  $("popup-message").textContent = nudge.message;
  $("popup").dataset.id = nudge.id;
  $("popup").hidden = false;
});
$("popup-dismiss").addEventListener("click", () => {
  $("popup").hidden = true;
});

// Names and prices change rarely: read once, and again when a new SKU shows up.
async function loadNames() {
  try {
    names = await live.products();
    for (const sku of cards.keys()) label(sku);
  } catch {
    // Names are decoration; counts keep coming without them.
  }
}
let reload = null;
loadNames();
live.onStock((sku) => {
  if (!(sku in names) && reload === null) {
    // A snapshot brings every SKU at once: one read for all of them.
    reload = setTimeout(() => {
      reload = null;
      loadNames();
    }, 50);
  }
});
