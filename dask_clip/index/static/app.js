// dask-clip serve: every value from the index is shown with textContent, never parsed as HTML.
"use strict";

const state = { info: null };
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isFinite(value) ? Math.min(Math.max(value, 1), 200) : 24;
}

function formatValue(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
  return String(value);
}

function card(item) {
  const figure = document.createElement("figure");
  figure.className = "card";
  figure.tabIndex = 0;
  figure.dataset.id = item.id;
  figure.dataset.rank = String(item.rank);
  figure.title = "more like this";
  if (state.info && state.info.images) {
    const img = document.createElement("img");
    img.alt = item.caption ? String(item.caption) : "result " + item.rank;
    img.loading = "lazy";
    img.src = "/thumb/" + encodeURIComponent(item.id);
    figure.appendChild(img);
  } else {
    const none = document.createElement("div");
    none.className = "noimg";
    none.textContent = "no image kept";
    figure.appendChild(none);
  }
  const caption = document.createElement("figcaption");
  if (item.caption !== null && item.caption !== undefined) {
    const text = document.createElement("div");
    text.className = "caption";
    text.textContent = String(item.caption);
    caption.appendChild(text);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const parts = ["#" + item.rank, "similarity " + item.similarity.toFixed(3)];
  if (item.key !== null && item.key !== undefined) parts.push("key " + String(item.key));
  for (const [name, value] of Object.entries(item.scores || {})) {
    if (value !== null) parts.push(name + " " + formatValue(value));
  }
  meta.textContent = parts.join(" · ");
  meta.classList.add("similarity");
  caption.appendChild(meta);
  figure.appendChild(caption);
  const more = () => run("/api/like?id=" + encodeURIComponent(item.id) + "&k=" + k());
  figure.addEventListener("click", more);
  figure.addEventListener("keydown", (event) => {
    if (event.key === "Enter") more();
  });
  return figure;
}

async function run(url, options) {
  setStatus("Searching…");
  const grid = $("grid");
  let response, body;
  try {
    response = await fetch(url, options);
    body = await response.json();
  } catch (err) {
    setStatus("Search failed: " + err, true);
    return;
  }
  if (!response.ok) {
    setStatus(body.error || "Search failed (" + response.status + ")", true);
    return;
  }
  grid.replaceChildren(...body.results.map(card));
  grid.dataset.query = body.query;
  setStatus(body.results.length + " results for " + body.query + " in " + body.took_ms + " ms");
}

async function start() {
  try {
    const response = await fetch("/api/info");
    state.info = await response.json();
  } catch (err) {
    setStatus("Cannot reach the index: " + err, true);
    return;
  }
  const info = state.info;
  setStatus(info.vectors + " vectors (" + info.index_key + ", " + info.dim + " dims)" +
    (info.text ? "" : " · text search unavailable: the index records no model"));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query").value.trim();
    if (text) run("/api/search?q=" + encodeURIComponent(text) + "&k=" + k());
  });
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    if (file.size > info.max_upload_bytes) {
      setStatus("That file is larger than " + info.max_upload_bytes + " bytes", true);
      return;
    }
    run("/api/image?k=" + k(), { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  });
}

document.addEventListener("DOMContentLoaded", start);
