// The labelling page. Data from the API is only ever put in the page with textContent (never
// innerHTML), so a text holding markup shows as text; the server's CSP forbids inline script.
"use strict";

const KEY_STORE = "textloop-label-key";
let state = null;
let busy = false;
let keyMap = new Map();

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setStatus(message, isError) {
  const status = $("status");
  status.textContent = message;
  status.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY_STORE) || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit",
  });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    showLogin("That key was not accepted.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    throw new Error(message);
  }
  return data;
}

function showLogin(message) {
  sessionStorage.removeItem(KEY_STORE);
  $("work").hidden = true;
  $("finished").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key").focus();
}

function renderText(item) {
  $("text").replaceChildren(document.createTextNode(item.text));
  const meta = [`item ${item.index + 1}`, `id ${item.id}`];
  if (item.reason) meta.push(`chosen: ${item.reason}`);
  if (typeof item.score === "number") meta.push(`score ${item.score.toFixed(3)}`);
  $("meta").textContent = meta.join(" · ");
}

function renderHighlights(index, result) {
  if (!state || !state.item || state.item.index !== index) return;
  if (!result.segments) {
    $("legend").textContent = result.note || "";
    return;
  }
  const pieces = result.segments.map((seg) => {
    if (!seg.level) return document.createTextNode(seg.text);
    const level = Math.min(3, Math.abs(seg.level));
    return el("span", seg.text, (seg.level > 0 ? "pos" : "neg") + level);
  });
  $("text").replaceChildren(...pieces);
  $("legend").textContent = "green: words for the model's label, red: against it";
}

function render(next) {
  state = next;
  const p = state.progress;
  $("progress").textContent =
    `${p.labelled} of ${p.total} labelled · ${p.skipped} skipped`;
  $("who").textContent = `${state.user} → ${state.model}`;
  $("login").hidden = true;
  const item = state.item;
  document.body.dataset.index = item ? String(item.index) : "done";
  $("work").hidden = !item;
  $("finished").hidden = Boolean(item);
  keyMap = new Map();
  const suggested = item && item.suggestions.length ? item.suggestions[0].label : null;
  const buttons = state.shortcuts.map((s) => {
    const button = el("button", s.label);
    button.type = "button";
    button.dataset.label = s.label;
    if (s.label === suggested) button.classList.add("suggested");
    for (const key of s.keys) {
      button.append(el("kbd", key));
      keyMap.set(key, s.label);
    }
    button.addEventListener("click", () => sendLabel(s.label));
    return button;
  });
  $("labels").replaceChildren(...buttons);
  $("undo").disabled = !state.can_undo;
  $("undo-finished").disabled = !state.can_undo;
  if (!item) return;
  renderText(item);
  $("legend").textContent = state.highlights ? "word highlights loading…" : "";
  $("suggestions").replaceChildren(...item.suggestions.map((s) => {
    const li = el("li", s.label);
    if (typeof s.score === "number") {
      li.append(el("span", ` ${(100 * s.score).toFixed(1)}%`, "muted"));
      const bar = el("span", null, "bar");
      bar.style.width = `${Math.round(8 * s.score)}rem`;
      li.append(bar);
    }
    return li;
  }));
  if (state.highlights) {
    const index = item.index;
    api("GET", `/api/highlights/${index}`)
      .then((result) => renderHighlights(index, result))
      .catch(() => { $("legend").textContent = ""; });
  }
}

async function act(path, body, describe) {
  if (busy) return;
  busy = true;
  // a clicked button keeps the focus, and Space would then both skip and press it again
  if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
  document.body.dataset.busy = "1";
  try {
    const answer = await api("POST", path, body);
    render(answer.state);
    setStatus(describe(answer), false);
  } catch (err) {
    if (err.message === "unauthorized") return;
    setStatus(err.message, true);
    try { render(await api("GET", "/api/state")); } catch (e) { /* keep the message shown */ }
  } finally {
    busy = false;
    document.body.dataset.busy = "";
  }
}

function sendLabel(label) {
  if (!state || !state.item) return;
  const index = state.item.index;
  return act("/api/label", { index, label },
    (a) => `saved “${label}” for item ${index + 1} (row ${a.done})`);
}

function skip() {
  if (!state || !state.item) return;
  const index = state.item.index;
  return act("/api/skip", { index }, () => `skipped item ${index + 1}`);
}

function undo() {
  if (!state || !state.can_undo) return;
  return act("/api/undo", undefined, (a) => `undone: item ${a.done + 1} is back`);
}

async function load() {
  try {
    render(await api("GET", "/api/state"));
  } catch (err) {
    if (err.message !== "unauthorized") setStatus(err.message, true);
  }
}

function onKey(event) {
  const target = event.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || !state) return;
  if (event.key === "Backspace") { event.preventDefault(); undo(); return; }
  if (event.key === " ") { event.preventDefault(); skip(); return; }
  if (event.key === "/") { event.preventDefault(); $("new-label-text").focus(); return; }
  const label = keyMap.get(event.key.toLowerCase());
  if (label !== undefined) { event.preventDefault(); sendLabel(label); }
}

function start() {
  const match = /^#key=(.+)$/.exec(window.location.hash);
  if (match) {  // the one-time link the server printed: keep the key, drop it from the URL
    sessionStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    $("key").blur();  // the page's keys work on the page, not in the key field
    load();
  });
  $("new-label").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("new-label-text");
    const label = input.value.trim();
    if (!label) return;
    input.value = "";
    input.blur();
    sendLabel(label);
  });
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);
  document.addEventListener("keydown", onKey);
  if (sessionStorage.getItem(KEY_STORE)) load(); else showLogin("");
}

document.addEventListener("DOMContentLoaded", start);
