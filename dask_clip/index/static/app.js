// dask-clip serve: every value from the index is shown with textContent, never parsed as HTML.
// What the page shows lives in its URL (?q=TEXT | ?like=ID | ?seed=N, and &k=K): a page can be
// bookmarked, shared and reloaded, and back/forward walk through the searches.
"use strict";

const MAX_K = 200;
const state = { info: null, view: null, items: [], total: null, request: 0, current: -1 };
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function clampK(value) {
  const k = parseInt(value, 10);
  return Number.isFinite(k) ? Math.min(Math.max(k, 1), MAX_K) : 24;
}

function formatValue(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
  return String(value);
}

function rowsLabel() {
  const info = state.info;
  return info ? info.vectors + (info.images ? " images" : " rows") : "";
}

// -- the URL is the state -------------------------------------------------------------------

function viewFromUrl() {
  const params = new URL(window.location.href).searchParams;
  const view = { k: clampK(params.get("k")) };
  const seed = parseInt(params.get("seed"), 10);
  if (params.get("q")) view.q = params.get("q");
  else if (params.get("like")) view.like = params.get("like");
  else view.seed = Number.isFinite(seed) && seed >= 0 ? seed : null;
  return view;
}

function urlOf(view) {
  const params = new URLSearchParams();
  if (view.q) params.set("q", view.q);
  else if (view.like) params.set("like", view.like);
  else params.set("seed", String(view.seed));
  params.set("k", String(view.k));
  return "/?" + params.toString();
}

function go(view) {
  window.history.pushState(null, "", urlOf(view));
  show(view);
}

function show(view) {
  if (!view.q && !view.like && view.seed === null) {
    view.seed = Math.floor(Math.random() * 1e9); // a fresh sample, kept in the URL for reloads
    window.history.replaceState(null, "", urlOf(view));
  }
  state.view = view;
  $("query").value = view.q || "";
  $("k").value = String(view.k);
  closeDetail();
  const enc = encodeURIComponent;
  if (view.q) return run("/api/search?q=" + enc(view.q) + "&k=" + view.k);
  if (view.like) return run("/api/like?id=" + enc(view.like) + "&k=" + view.k);
  return run("/api/sample?seed=" + view.seed + "&offset=0&k=" + view.k);
}

// -- cards ----------------------------------------------------------------------------------

function card(item, position) {
  const figure = document.createElement("figure");
  figure.className = "card";
  figure.tabIndex = 0;
  figure.dataset.id = item.id;
  figure.dataset.rank = String(item.rank);
  figure.dataset.position = String(position);
  if (state.info && state.info.images) {
    const img = document.createElement("img");
    img.alt = item.name ? String(item.name) : item.caption ? String(item.caption) : "result " + item.rank;
    img.loading = "lazy";
    img.src = "/thumb/" + encodeURIComponent(item.id);
    figure.appendChild(img);
  } else {
    const none = document.createElement("div");
    none.className = "noimg";
    none.textContent = "no image kept";
    figure.appendChild(none);
  }
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more";
  more.textContent = "more like this";
  more.tabIndex = -1; // the card takes the focus; "m" does the same from the keyboard
  more.addEventListener("click", (event) => {
    event.stopPropagation();
    moreLike(item.id);
  });
  figure.appendChild(more);
  const caption = document.createElement("figcaption");
  if (item.name !== null && item.name !== undefined) {
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = String(item.name);
    caption.appendChild(name);
  }
  if (item.caption !== null && item.caption !== undefined) {
    const text = document.createElement("div");
    text.className = "caption";
    text.textContent = String(item.caption);
    caption.appendChild(text);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const parts = ["#" + item.rank];
  if (item.similarity !== null && item.similarity !== undefined) parts.push("similarity " + item.similarity.toFixed(3));
  // the key, unless the name already says it (a folder's file path ends with the file name)
  if (item.key !== null && item.key !== undefined && !(item.name && String(item.key).endsWith(String(item.name)))) {
    parts.push("key " + String(item.key));
  }
  for (const [name, value] of Object.entries(item.labels || {})) {
    if (value !== null) parts.push(name + " " + String(value));
  }
  for (const [name, value] of Object.entries(item.scores || {})) {
    if (value !== null) parts.push(name + " " + formatValue(value));
  }
  meta.textContent = parts.join(" · ");
  meta.classList.add("similarity");
  caption.appendChild(meta);
  figure.appendChild(caption);
  figure.addEventListener("click", () => openDetail(position));
  figure.addEventListener("keydown", (event) => cardKey(event, position));
  return figure;
}

function moreLike(id) {
  go({ like: String(id), k: state.view ? state.view.k : clampK($("k").value) });
}

function columns() {
  const template = window.getComputedStyle($("grid")).gridTemplateColumns;
  return Math.max(1, template.split(" ").filter(Boolean).length);
}

function focusCard(position) {
  const cards = $("grid").querySelectorAll(".card");
  if (!cards.length) return;
  const target = cards[Math.min(Math.max(position, 0), cards.length - 1)];
  target.focus();
  target.scrollIntoView({ block: "nearest" });
}

function cardKey(event, position) {
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
  if (event.key in moves) {
    event.preventDefault();
    focusCard(position + moves[event.key]);
  } else if (event.key === "Enter") {
    event.preventDefault();
    openDetail(position);
  } else if (event.key === "m") {
    moreLike(state.items[position].id);
  }
}

// -- searches -------------------------------------------------------------------------------

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || "request failed (" + response.status + ")");
  return body;
}

async function run(url, options, append) {
  const request = ++state.request;
  const waiting = state.info && ["idle", "loading"].includes(state.info.text_state) && url.startsWith("/api/search");
  setStatus(waiting ? "Searching… (the text model is still loading)" : append ? "Loading more…" : "Searching…");
  let body;
  try {
    body = await fetchJson(url, options);
  } catch (err) {
    if (request === state.request) setStatus("Search failed: " + err.message, true);
    return;
  }
  if (request !== state.request) return; // a later search has started: this answer is stale
  const grid = $("grid");
  const start = append ? state.items.length : 0;
  const cards = body.results.map((item, i) => card(item, start + i));
  if (append) {
    state.items.push(...body.results);
    grid.append(...cards);
  } else {
    state.items = body.results.slice();
    grid.replaceChildren(...cards);
  }
  grid.dataset.query = body.query;
  state.total = body.total === undefined ? null : body.total;
  const more = $("more");
  if (state.total !== null) {
    setStatus("A random sample: " + state.items.length + " of " + rowsLabel() + " (seed " + body.seed + ")");
    more.hidden = state.items.length >= state.total;
  } else {
    setStatus(body.results.length + " results for " + body.query + " in " + body.took_ms + " ms · " + rowsLabel());
    more.hidden = !state.view || state.view.upload || state.view.k >= MAX_K || body.results.length < state.view.k;
  }
}

function loadMore() {
  const view = state.view;
  if (!view) return;
  if (view.q || view.like) {
    go({ ...view, k: Math.min(MAX_K, view.k * 2) });
  } else if (!view.upload) {
    run("/api/sample?seed=" + view.seed + "&offset=" + state.items.length + "&k=" + view.k, undefined, true);
  }
}

// -- the full image with its row --------------------------------------------------------------

function openDetail(position) {
  const item = state.items[position];
  if (!item) return;
  state.current = position;
  const dialog = $("detail");
  const image = $("detail-image");
  image.hidden = !(state.info && state.info.images);
  image.removeAttribute("src");
  if (!image.hidden) image.src = "/image/" + encodeURIComponent(item.id);
  image.alt = item.name ? String(item.name) : "row " + item.id;
  $("detail-name").textContent = item.name ? String(item.name) : "row " + item.id;
  const body = $("detail-row").tBodies[0];
  body.replaceChildren();
  if (!dialog.open) dialog.showModal();
  fetchJson("/api/row/" + encodeURIComponent(item.id))
    .then((answer) => {
      if (state.current !== position) return;
      const rows = Object.entries(answer.row).map(([name, value]) => {
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.textContent = name;
        const td = document.createElement("td");
        td.textContent = value === null ? "—" : typeof value === "object" ? JSON.stringify(value) : formatValue(value);
        tr.append(th, td);
        return tr;
      });
      body.replaceChildren(...rows);
    })
    .catch((err) => {
      $("detail-name").textContent += " (" + err.message + ")";
    });
}

function closeDetail() {
  const dialog = $("detail");
  if (dialog.open) dialog.close();
}

function stepDetail(delta) {
  const next = state.current + delta;
  if (next >= 0 && next < state.items.length) openDetail(next);
}

// -- start ----------------------------------------------------------------------------------

function showTextState() {
  const info = state.info;
  const line = $("text-state");
  if (info.text_state === "idle" || info.text_state === "loading") {
    line.textContent = "Loading the text model… text searches wait for it.";
  } else if (!info.text) {
    line.textContent = "Text search unavailable: " + (info.text_error || "the index records no model");
  } else if (info.text_state === "failed") {
    line.textContent = "Text search unavailable: " + info.text_error;
  } else {
    line.textContent = "";
  }
}

async function pollTextState() {
  while (state.info && ["idle", "loading"].includes(state.info.text_state)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    try {
      state.info = await fetchJson("/api/info");
    } catch (err) {
      return;
    }
    showTextState();
  }
}

async function start() {
  try {
    state.info = await fetchJson("/api/info");
  } catch (err) {
    setStatus("Cannot reach the index: " + err.message, true);
    return;
  }
  showTextState();
  pollTextState();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) go({ q: text, k: clampK($("k").value) });
  });
  $("shuffle").addEventListener("click", () => go({ seed: Math.floor(Math.random() * 1e9), k: clampK($("k").value) }));
  $("home").addEventListener("click", (event) => {
    event.preventDefault();
    go({ seed: null, k: clampK($("k").value) });
  });
  $("more").addEventListener("click", loadMore);
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (file.size > state.info.max_upload_bytes) {
      setStatus("That file is larger than " + state.info.max_upload_bytes + " bytes", true);
      return;
    }
    const k = clampK($("k").value);
    state.view = { upload: true, k: k };
    run("/api/image?k=" + k, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-prev").addEventListener("click", () => stepDetail(-1));
  $("detail-next").addEventListener("click", () => stepDetail(1));
  $("detail-like").addEventListener("click", () => {
    const item = state.items[state.current];
    if (item) moreLike(item.id);
  });
  $("detail").addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") stepDetail(1);
    else if (event.key === "ArrowLeft") stepDetail(-1);
    else if (event.key === "m") $("detail-like").click();
  });
  $("detail").addEventListener("close", () => focusCard(state.current));
  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement;
    if (event.key === "/" && !typing && !$("detail").open) {
      event.preventDefault();
      $("query").focus();
    } else if (event.key === "ArrowDown" && event.target === $("query")) {
      event.preventDefault();
      focusCard(0);
    }
  });
  window.addEventListener("popstate", () => show(viewFromUrl()));
  show(viewFromUrl());
}

document.addEventListener("DOMContentLoaded", start);
