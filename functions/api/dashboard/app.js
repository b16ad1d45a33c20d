/* Mars dashboard: one page, no build step, no dependencies.
 *
 * Every URL is relative to <base href> (the API's base path: "/" locally, "/dev/" on a stage), so the
 * same file works behind any stage. Data from the API (message ids, event names, meta) is user input:
 * it only ever reaches the page through textContent / setAttribute, never innerHTML.
 */
(function () {
  "use strict";

  const STATUSES = ["complete", "in_progress", "stuck", "unknown", "failed"];
  const STATUS_TEXT = { complete: "complete", in_progress: "in progress", stuck: "stuck", unknown: "unknown", failed: "failed" };
  const QUEUE_REFRESH_MS = 5000;
  const PING_MS = 5 * 60 * 1000;           // API Gateway closes sockets idle for 10 minutes
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const HIGHLIGHT_MS = 4000;
  const PAGE_SIZE = 50;
  const RECENT_MAX = 10;
  const KEY_STORAGE = "mars.apiKey";
  const RECENT_STORAGE = "mars.recentSearches";
  const RECENT_APPS_STORAGE = "mars.recentApps";
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---------------------------------------------------------------- DOM helpers (no innerHTML)

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    return appendKids(node, kids);
  }

  /** Appends nodes and strings (as text), skipping null/false, flattening arrays. */
  function appendKids(node, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : String(kid));
    }
    return node;
  }

  /** replaceChildren with el()'s rules for kids. */
  function fill(node, ...kids) {
    node.replaceChildren();
    return appendKids(node, kids);
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  const ICON_PATHS = {
    complete: [["circle", { cx: 8, cy: 8, r: 6.5 }], ["path", { d: "M5 8.3l2 2 4-4.3" }]],
    in_progress: [["circle", { cx: 8, cy: 8, r: 6.5 }], ["path", { d: "M8 4.5V8l2.4 1.6" }]],
    stuck: [["path", { d: "M8 1.8l6.6 12H1.4z" }], ["path", { d: "M8 6.2v3.6M8 11.6v.2" }]],
    unknown: [["circle", { cx: 8, cy: 8, r: 6.5 }], ["path", { d: "M6.2 6.3a1.9 1.9 0 1 1 2.6 1.7c-.6.3-.8.6-.8 1.3M8 11.3v.2" }]],
    failed: [["circle", { cx: 8, cy: 8, r: 6.5 }], ["path", { d: "M5.6 5.6l4.8 4.8M10.4 5.6l-4.8 4.8" }]],
    missing: [["circle", { cx: 8, cy: 8, r: 5.5, "stroke-dasharray": "2.2 1.6" }]],
    warning: [["path", { d: "M8 1.8l6.6 12H1.4z" }], ["path", { d: "M8 6.2v3.6M8 11.6v.2" }]],
    connected: [["circle", { cx: 8, cy: 8, r: 4.5, fill: "currentColor" }]],
    reconnecting: [["path", { d: "M13 8a5 5 0 1 1-1.5-3.6M13 2.5v2.5h-2.5" }]],
    offline: [["circle", { cx: 8, cy: 8, r: 5.5 }], ["path", { d: "M3.5 12.5l9-9" }]],
    connecting: [["circle", { cx: 8, cy: 8, r: 5.5, "stroke-dasharray": "3 2" }]],
  };

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 16 16");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon icon--" + name);
    for (const [tag, attrs] of ICON_PATHS[name] || []) {
      const shape = document.createElementNS(SVG_NS, tag);
      for (const [k, v] of Object.entries(attrs)) shape.setAttribute(k, String(v));
      svg.append(shape);
    }
    return svg;
  }

  function statusBadge(status) {
    const known = STATUSES.includes(status) ? status : "unknown";
    return el("span", { class: "badge badge--" + known, "data-testid": "status-badge", "data-status": known },
      icon(known), el("span", { class: "badge__text" }, STATUS_TEXT[known] || String(status)));
  }

  function tag(text, kind, testid) {
    return el("span", { class: "tag tag--" + kind, "data-testid": testid || null }, text);
  }

  // ---------------------------------------------------------------- time

  /** Milliseconds since the epoch from RFC 3339 (Mars writes microseconds; Date wants milliseconds). */
  function parseTs(value) {
    if (!value) return null;
    const m = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$/i.exec(String(value));
    if (!m) {
      const t = Date.parse(value);
      return Number.isNaN(t) ? null : t;
    }
    const frac = (m[3] || "0").padEnd(3, "0").slice(0, 3);
    let zone = (m[4] || "Z").toUpperCase();
    if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ":" + zone.slice(3);
    const t = Date.parse(`${m[1]}T${m[2]}.${frac}${zone}`);
    return Number.isNaN(t) ? null : t;
  }

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
  }

  function fmtDate(ms) {
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  }

  /** A <time> showing UTC date and time (or just the time), the full value in its title. */
  function timeEl(value, withDate) {
    const ms = parseTs(value);
    if (ms === null) return el("span", { class: "muted" }, value ? String(value) : "—");
    const text = withDate ? `${fmtDate(ms)} ${fmtClock(ms)}` : fmtClock(ms);
    return el("time", { datetime: new Date(ms).toISOString(), title: String(value) }, text);
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    const sign = ms < 0 ? "−" : "";
    const a = Math.abs(ms);
    if (a < 1000) return `${sign}${Math.round(a)} ms`;
    const s = a / 1000;
    if (s < 10) return `${sign}${s.toFixed(2)} s`;
    if (s < 60) return `${sign}${s.toFixed(1)} s`;
    const two = (big, bigUnit, small, smallUnit) => `${sign}${big} ${bigUnit}` + (small ? ` ${small} ${smallUnit}` : "");
    if (s < 3600) return two(Math.floor(s / 60), "min", Math.floor(s % 60), "s");
    if (s < 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
    return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
  }

  /** Whole seconds (an SLA, a queue's oldest age): "45 s", "5 min", "1 h 30 min". */
  function fmtSeconds(seconds) {
    const n = Math.round(Number(seconds) || 0);
    return n < 60 ? `${n} s` : fmtDuration(n * 1000);
  }

  // ---------------------------------------------------------------- storage

  const store = {
    get(key, fallback) {
      try {
        const raw = window.localStorage.getItem(key);
        return raw === null ? fallback : JSON.parse(raw);
      } catch (_) { return fallback; }
    },
    set(key, value) {
      try { window.localStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* private mode: not kept */ }
    },
    remove(key) { try { window.localStorage.removeItem(key); } catch (_) { /* ignore */ } },
  };

  function apiKey() { return store.get(KEY_STORAGE, "") || ""; }

  function rememberSearch(messageId, appId) {
    const list = store.get(RECENT_STORAGE, []).filter((s) => !(s && s.message_id === messageId && (s.app_id || "") === (appId || "")));
    list.unshift({ message_id: messageId, app_id: appId || "", at: new Date().toISOString() });
    store.set(RECENT_STORAGE, list.slice(0, RECENT_MAX));
    refreshDatalists();
  }

  function rememberApp(appId) {
    const list = store.get(RECENT_APPS_STORAGE, []).filter((a) => a !== appId);
    list.unshift(appId);
    store.set(RECENT_APPS_STORAGE, list.slice(0, RECENT_MAX));
    refreshDatalists();
  }

  function recentSearches() {
    return store.get(RECENT_STORAGE, []).filter((s) => s && typeof s.message_id === "string");
  }

  function recentApps() { return store.get(RECENT_APPS_STORAGE, []).filter((a) => typeof a === "string"); }

  function refreshDatalists() {
    const ids = document.getElementById("recent-message-ids");
    const apps = document.getElementById("recent-app-ids");
    if (ids) fill(ids, ...[...new Set(recentSearches().map((s) => s.message_id))].map((v) => el("option", { value: v })));
    if (apps) fill(apps, ...recentApps().map((v) => el("option", { value: v })));
  }

  // ---------------------------------------------------------------- URLs and navigation

  function basePath() {
    const path = new URL(document.baseURI).pathname;
    if (path.includes("{{") || path.includes("%7B%7B")) return "/";   // opened without the server's substitution
    return path.endsWith("/") ? path : path.replace(/[^/]*$/, "");
  }

  function abs(rel) { return new URL(rel, new URL(basePath(), location.origin)).href; }

  /** The current view's path relative to the base ("" for home, "search/event", "apps/shop"). */
  function relPath() {
    const base = basePath();
    const path = location.pathname;
    if (path.startsWith(base)) return path.slice(base.length);
    if (path + "/" === base) return "";
    return path.replace(/^\/+/, "");
  }

  function messageHref(messageId, appId) {
    let rel = "search/event?message_id=" + encodeURIComponent(messageId);
    if (appId) rel += "&app_id=" + encodeURIComponent(appId);
    return rel;
  }

  function appHref(appId, status, search) {
    const q = new URLSearchParams();
    if (status && status !== "all") q.set("status", status);
    for (const [k, v] of Object.entries(search || {})) q.set(k, v);
    const text = q.toString();
    return "apps/" + encodeURIComponent(appId) + (text ? "?" + text : "");
  }

  // The app view's search filters (docs/SEARCH.md): the page's query string holds them, so a reload or a
  // shared link keeps them; GET api/messages applies them on the server (with its cursor).
  const SEARCH_KEYS = ["from", "to", "event", "missing", "alert"];

  function searchOf(params) {
    const out = {};
    for (const k of SEARCH_KEYS) { const v = params.get(k); if (v) out[k] = v; }
    for (const [k, v] of params) if (k.startsWith("meta.") && k.length > 5 && v) out[k] = v;
    return out;
  }

  /** "carrier=dhl region=eu" (spaces or commas between pairs) → {"meta.carrier": "dhl", "meta.region": "eu"} */
  function parseMeta(text) {
    const out = {};
    for (const pair of text.split(/[\s,]+/)) {
      const at = pair.indexOf("=");
      if (at > 0 && at < pair.length - 1) out["meta." + pair.slice(0, at)] = pair.slice(at + 1);
    }
    return out;
  }

  function searchForm(search, onApply) {
    const metaText = Object.entries(search).filter(([k]) => k.startsWith("meta.")).map(([k, v]) => `${k.slice(5)}=${v}`).join(" ");
    const field = (name, label, attrs) => el("label", { class: "filter" }, el("span", { class: "small muted" }, label),
      el("input", Object.assign({ name, type: "text", value: search[name] || "", "data-testid": "filter-" + name, spellcheck: "false" }, attrs || {})));
    const form = el("form", { class: "filters", "data-testid": "search-filters", role: "search", "aria-label": "Search messages",
      onsubmit: (ev) => {
        ev.preventDefault();
        const next = {};
        for (const k of ["from", "to", "event", "missing"]) { const v = form.elements[k].value.trim(); if (v) next[k] = v; }
        if (form.elements.alert.checked) next.alert = "firing";
        Object.assign(next, parseMeta(form.elements.meta.value.trim()));
        onApply(next);
      } },
    field("from", "Updated from", { placeholder: "2026-11-30T00:00:00Z" }),
    field("to", "Updated to", { placeholder: "2026-11-30T23:59:59Z" }),
    field("event", "Has step", { placeholder: "PAID" }),
    field("missing", "Lacks step", { placeholder: "SHIPPED" }),
    el("label", { class: "filter" }, el("span", { class: "small muted" }, "Meta (key=value …)"),
      el("input", { name: "meta", type: "text", value: metaText, "data-testid": "filter-meta", placeholder: "carrier=dhl", spellcheck: "false" })),
    el("label", { class: "filter filter--check" },
      el("input", { name: "alert", type: "checkbox", "data-testid": "filter-alert", checked: search.alert === "firing" }), " Firing alert"),
    el("div", { class: "filter filter--buttons" },
      el("button", { type: "submit", class: "button", "data-testid": "filter-apply" }, "Search"),
      el("button", { type: "button", class: "button button--quiet", "data-testid": "filter-clear", onclick: () => onApply({}) }, "Clear")));
    return form;
  }

  function navLink(rel, attrs, ...kids) {
    return el("a", Object.assign({ href: abs(rel), "data-nav": true }, attrs || {}), ...kids);
  }

  function go(rel, replace) {
    const url = abs(rel);
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
    route(true);
  }

  // ---------------------------------------------------------------- HTTP API

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || [];
    }
  }

  async function api(rel, options) {
    const opts = Object.assign({ method: "GET" }, options || {});
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    const key = apiKey();
    if (key) headers["x-api-key"] = key;
    if (opts.body !== undefined && typeof opts.body !== "string") {
      opts.body = JSON.stringify(opts.body);
      headers["Content-Type"] = "application/json";
    }
    opts.headers = headers;
    let resp;
    try {
      resp = await fetch(abs(rel), opts);
    } catch (err) {
      throw new ApiError(0, "NETWORK", "Mars could not be reached (network error). Check the connection; the page retries by itself.");
    }
    let body = null;
    const text = await resp.text();
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = null; }
    }
    if (!resp.ok) {
      const e = (body && body.error) || {};
      let message = e.message || `HTTP ${resp.status} ${resp.statusText || ""}`.trim();
      if (resp.status === 401 || resp.status === 403) {
        message += apiKey() ? " — the API key in use may not cover this app." : " — this Mars needs an API key (API key button, top right).";
        if (state.config && state.config.auth_required && !state.keyPrompted) {
          state.keyPrompted = true;   // once: a refresh every 5 s must not keep stealing the focus
          showKeyForm(true);
        }
      }
      throw new ApiError(resp.status, e.code || "HTTP_" + resp.status, message, e.details);
    }
    return body;
  }

  const seg = encodeURIComponent;

  // ---------------------------------------------------------------- page state, notices, announcer

  const state = { config: null, cleanup: null, keyPrompted: false, lifecycles: new Map() };

  function announce(text) {
    const node = document.getElementById("announcer");
    if (!node) return;
    node.textContent = "";
    window.setTimeout(() => { node.textContent = text; }, 30);
  }

  /** One notice per key (a later one replaces it); kind: error | warning | info. */
  function notice(key, kind, text, actions) {
    const box = document.getElementById("notices");
    const old = box.querySelector(`[data-key="${CSS.escape(key)}"]`);
    const node = el("div", { class: "notice notice--" + kind, "data-key": key, role: kind === "error" ? "alert" : "status",
                             "data-testid": "notice" },
      icon(kind === "info" ? "unknown" : "warning"), el("span", { class: "notice__text" }, text), actions || null,
      el("button", { type: "button", class: "button button--quiet notice__close", "aria-label": "Dismiss",
                     onclick: () => node.remove() }, "×"));
    if (old) old.replaceWith(node); else box.append(node);
  }

  function clearNotice(key) {
    const node = document.getElementById("notices").querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (node) node.remove();
  }

  function errorBox(err, testid, extra) {
    const status = err && err.status;
    const title = status === 404 ? "Not found" : status === 0 ? "Network error" : status ? `Error ${status}` : "Error";
    return el("div", { class: "error-box", role: "alert", "data-testid": testid || "error" },
      icon("warning"),
      el("div", null, el("strong", null, title + ": "), el("span", null, (err && err.message) || String(err)), extra || null));
  }

  function highlight(node) {
    node.classList.remove("is-new");
    void node.offsetWidth;   // restart the animation
    node.classList.add("is-new");
    window.setTimeout(() => node.classList.remove("is-new"), HIGHLIGHT_MS);
  }

  function lifecycleOf(appId) {
    if (!state.lifecycles.has(appId)) {
      const promise = api(`api/apps/${seg(appId)}/lifecycle`).catch((err) => {
        state.lifecycles.delete(appId);   // ask again next time
        if (err.status === 404) return null;
        throw err;
      });
      state.lifecycles.set(appId, promise);
    }
    return state.lifecycles.get(appId);
  }

  // ---------------------------------------------------------------- live connection

  const live = {
    ws: null,
    state: "connecting",
    attempt: 0,
    retryAt: 0,
    retryTimer: null,
    tickTimer: null,
    pingTimer: null,
    stableTimer: null,
    subs: new Map(),    // key -> {app_id, message_id?, handlers: Set}
    reason: "",

    key(appId, messageId) { return JSON.stringify([appId, messageId || null]); },

    /** Calls handler(frame) for this app / message's frames; returns the unsubscribe function. */
    subscribe(appId, messageId, handler) {
      const key = this.key(appId, messageId);
      let sub = this.subs.get(key);
      if (!sub) {
        sub = { app_id: appId, message_id: messageId || null, handlers: new Set() };
        this.subs.set(key, sub);
        this.sendSub("subscribe", sub);
      }
      sub.handlers.add(handler);
      return () => {
        sub.handlers.delete(handler);
        if (!sub.handlers.size && this.subs.get(key) === sub) {
          this.subs.delete(key);
          this.sendSub("unsubscribe", sub);
        }
      };
    },

    sendSub(action, sub) {
      const frame = { action, app_id: sub.app_id };
      if (sub.message_id) frame.message_id = sub.message_id;
      this.send(frame);
    },

    send(frame) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(frame));
        return true;
      }
      return false;
    },

    url() {
      const cfg = state.config;
      if (!cfg || !cfg.websocket_url) return null;
      let url;
      try {
        url = new URL(cfg.websocket_url, location.href);
      } catch (_) { return null; }
      if (url.protocol === "http:") url.protocol = "ws:";
      if (url.protocol === "https:") url.protocol = "wss:";
      const key = apiKey();
      if (key) url.searchParams.set("api_key", key);
      return url.href;
    },

    async start() {
      window.clearTimeout(this.retryTimer);
      window.clearInterval(this.tickTimer);
      if (!navigator.onLine) { this.setState("offline", "the browser is offline"); return; }
      if (!state.config) {
        this.setState("connecting");
        try {
          state.config = await api("api/config");
          applyConfig();
        } catch (err) {
          this.reason = "configuration unavailable: " + err.message;
          this.scheduleRetry();
          return;
        }
      }
      const url = this.url();
      if (!url) { this.setState("offline", "this Mars has no websocket URL configured"); return; }
      this.connect(url);
    },

    connect(url) {
      this.setState(this.attempt ? "reconnecting" : "connecting");
      let ws;
      try {
        ws = new WebSocket(url);
      } catch (err) {
        this.reason = String(err && err.message || err);
        this.scheduleRetry();
        return;
      }
      this.ws = ws;
      ws.addEventListener("open", () => {
        if (this.ws !== ws) return;
        this.setState("connected");
        clearNotice("live");
        for (const sub of this.subs.values()) this.sendSub("subscribe", sub);
        window.clearInterval(this.pingTimer);
        this.pingTimer = window.setInterval(() => this.send({ action: "ping" }), PING_MS);
        // Only a connection that stays up resets the backoff (a server that accepts then drops must not spin).
        window.clearTimeout(this.stableTimer);
        this.stableTimer = window.setTimeout(() => { this.attempt = 0; }, 5000);
      });
      ws.addEventListener("message", (ev) => this.onFrame(ev.data));
      ws.addEventListener("close", (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        window.clearInterval(this.pingTimer);
        window.clearTimeout(this.stableTimer);
        this.reason = ev.code ? `closed (code ${ev.code}${ev.reason ? ": " + ev.reason : ""})` : "connection lost";
        if (!navigator.onLine) { this.setState("offline", "the browser is offline"); return; }
        this.scheduleRetry();
      });
      ws.addEventListener("error", () => { /* a close event follows */ });
    },

    scheduleRetry() {
      const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, this.attempt));
      const delay = Math.round(cap / 2 + Math.random() * cap / 2);   // "equal jitter": 0.5-1.0 x the cap
      this.attempt += 1;
      this.retryAt = Date.now() + delay;
      window.clearTimeout(this.retryTimer);
      window.clearInterval(this.tickTimer);
      this.retryTimer = window.setTimeout(() => this.start(), delay);
      this.tickTimer = window.setInterval(() => this.render(), 1000);
      this.setState("reconnecting");
    },

    retryNow() {
      if (this.state === "connected") return;
      this.attempt = Math.max(this.attempt, 1);
      this.start();
    },

    onFrame(data) {
      let frame;
      try { frame = JSON.parse(data); } catch (_) { return; }
      if (!frame || typeof frame !== "object") return;
      if (frame.type === "error") {
        notice("live-error", "error", `Live updates: ${frame.message || frame.code || "error"}` + (frame.code ? ` (${frame.code})` : ""));
        return;
      }
      if (frame.type === "pong" || !frame.app_id) return;
      const targets = [this.subs.get(this.key(frame.app_id, frame.message_id))];
      if (frame.message_id) targets.push(this.subs.get(this.key(frame.app_id, null)));
      if (frame.type === "subscribed" || frame.type === "unsubscribed") targets.length = 1;
      for (const sub of targets) {
        if (!sub) continue;
        for (const handler of [...sub.handlers]) {
          try { handler(frame); } catch (err) { console.error("live handler", err); }
        }
      }
    },

    setState(name, reason) {
      this.state = name;
      if (reason !== undefined) this.reason = reason;
      if (name !== "reconnecting") window.clearInterval(this.tickTimer);
      this.render();
    },

    render() {
      const node = document.querySelector('[data-testid="live-indicator"]');
      if (!node) return;
      let text;
      let title;
      if (this.state === "connected") {
        text = "Live · connected";
        title = "Connected: new events appear as they happen.";
      } else if (this.state === "reconnecting") {
        const secs = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
        text = secs > 0 ? `Reconnecting in ${secs} s` : "Reconnecting…";
        title = `Disconnected (${this.reason || "connection lost"}); retrying with backoff. Activate to retry now.`;
      } else if (this.state === "offline") {
        text = "Offline";
        title = `Live updates unavailable: ${this.reason || "offline"}. Activate to retry.`;
      } else {
        text = "Connecting…";
        title = "Connecting to live updates.";
      }
      node.dataset.state = this.state;
      node.title = title;
      node.querySelector(".live__text").textContent = text;
      const dot = node.querySelector(".live__dot");
      fill(dot, icon(this.state));
    },
  };

  // ---------------------------------------------------------------- home view

  function homeView(view) {
    document.title = "Mars — message lifecycle tracing";
    const recent = recentSearches();
    const apps = recentApps();
    const appForm = el("form", { class: "inline-form", "data-testid": "open-app-form",
      onsubmit: (ev) => {
        ev.preventDefault();
        const value = appForm.elements.app.value.trim();
        if (value) go(appHref(value));
      } },
    el("label", { for: "open-app" }, "Open an app's messages"),
    el("div", { class: "inline-form__row" },
      el("input", { id: "open-app", name: "app", type: "text", required: true, maxlength: 128, list: "recent-app-ids",
                    placeholder: "app id, e.g. shop", spellcheck: "false" }),
      el("button", { type: "submit", class: "button" }, "Open")));

    const recentList = recent.length
      ? el("ul", { class: "link-list", "data-testid": "recent-searches" },
        recent.map((s) => el("li", null, navLink(messageHref(s.message_id, s.app_id), { class: "mono" }, s.message_id),
          s.app_id ? el("span", { class: "muted" }, " in ", s.app_id) : null)))
      : el("p", { class: "muted", "data-testid": "recent-searches-empty" }, "No searches yet. Search for a message id above.");

    fill(view,
      el("section", { class: "card" },
        el("h1", { tabindex: "-1" }, "Trace a message"),
        el("p", null, "Search a message id to see its lifecycle: which steps happened, when, and which are missing or late. ",
          "Timelines update live."),
        appForm),
      el("section", { class: "card" },
        el("div", { class: "card__head" }, el("h2", null, "Recent searches"),
          recent.length ? el("button", { type: "button", class: "button button--quiet", "data-testid": "clear-recent",
            onclick: () => { store.remove(RECENT_STORAGE); refreshDatalists(); homeView(view); } }, "Clear") : null),
        recentList),
      apps.length ? el("section", { class: "card" }, el("h2", null, "Recent apps"),
        el("ul", { class: "link-list link-list--inline", "data-testid": "recent-apps" },
          apps.map((a) => el("li", null, navLink(appHref(a), { class: "mono" }, a))))) : null,
    );
    return null;
  }

  // ---------------------------------------------------------------- message view

  function eventMs(ev) { return parseTs(ev && ev.created_at); }

  function sortEvents(events) {
    return [...(events || [])].sort((a, b) => {
      const x = String(a.created_at || "");
      const y = String(b.created_at || "");
      if (x !== y) return x < y ? -1 : 1;
      const rx = String(a.received_at || "");
      const ry = String(b.received_at || "");
      if (rx !== ry) return rx < ry ? -1 : 1;
      return String(a.event_id) < String(b.event_id) ? -1 : 1;
    });
  }

  /** A long timeline (the API gave `event_count`): its events come in pages, its summary is whole. */
  function isPaged(timeline) { return timeline.event_count !== undefined && timeline.event_count !== null; }

  /** The stepper's model: expected steps in lifecycle order, plus the events outside it. A long
   * timeline's loaded events are a prefix of it: which steps were seen comes from the summary
   * (`missing`), a step's time from the loaded events when its first occurrence is among them. */
  function buildSteps(timeline, lifecycle) {
    const events = sortEvents(timeline.events);
    const paged = isPaged(timeline);
    const sla = lifecycle && lifecycle.sla_seconds > 0 ? lifecycle.sla_seconds * 1000 : null;
    const steps = [];
    const outside = [];
    if (!lifecycle || !lifecycle.events || !lifecycle.events.length) {
      const named = new Set();
      for (const ev of events) {
        if (paged && named.has(ev.event)) continue;   // thousands of events: one step per name
        named.add(ev.event);
        steps.push({ name: ev.event, event: ev, done: true });
      }
    } else {
      const expected = new Set(lifecycle.events);
      const first = new Map();
      const grouped = new Map();
      for (const ev of events) {
        const kind = !expected.has(ev.event) ? "unexpected" : first.has(ev.event) ? "repeat" : null;
        if (!kind) { first.set(ev.event, ev); continue; }
        const key = kind + "\u0000" + ev.event;
        if (paged && grouped.has(key)) { grouped.get(key).count += 1; continue; }   // one entry per name and kind
        const entry = { event: ev, kind, count: 1 };
        grouped.set(key, entry);
        outside.push(entry);
      }
      const missing = new Set(timeline.missing || []);
      for (const name of lifecycle.events) {
        const ev = first.get(name) || null;
        steps.push({ name, event: ev, done: paged ? !missing.has(name) : !!ev && !missing.has(name) });
      }
    }
    let prev = null;
    let firstMissing = true;
    for (const step of steps) {
      if (step.done && !step.event) {
        step.unloaded = true;   // seen (the summary says so) in a page not loaded yet
      } else if (step.done) {
        const t = eventMs(step.event);
        if (prev && t !== null && prev.t !== null) {
          step.delay = t - prev.t;
          step.after = prev.name;
          step.late = sla !== null && step.delay > sla;
          step.outOfOrder = step.delay < 0;
        }
        prev = { t, name: step.name };
      } else {
        step.overdue = firstMissing && timeline.status === "stuck";
        firstMissing = false;
      }
    }
    return { steps, outside, sla };
  }

  function stepperEl(timeline, lifecycle, freshIds) {
    const model = buildSteps(timeline, lifecycle);
    const list = el("ol", { class: "stepper", "data-testid": "stepper",
                            "aria-label": `Lifecycle of ${timeline.message_id} in ${timeline.app_id}` });
    for (const step of model.steps) {
      const stateName = step.done ? "done" : "missing";
      const classes = ["step", "step--" + stateName];
      if (step.late) classes.push("step--late");
      if (step.overdue) classes.push("step--overdue");
      const delay = step.done && step.delay !== undefined
        ? el("div", { class: "step__delay", "data-testid": "step-delay" },
          el("span", { title: `since ${step.after}` }, (step.delay >= 0 ? "+" : "") + fmtDuration(step.delay)),
          step.late ? tag("late", "late", "late-tag") : null,
          step.outOfOrder ? tag("out of order", "warn") : null)
        : el("div", { class: "step__delay", "aria-hidden": "true" }, step.done && !step.unloaded ? "start" : "\u00a0");
      const li = el("li", { class: classes.join(" "), "data-testid": "step", "data-step": step.name, "data-state": stateName,
                            "data-late": step.late ? "true" : null },
        delay,
        el("div", { class: "step__node", "aria-hidden": "true" }, icon(step.done ? "complete" : "missing")),
        el("div", { class: "step__name" }, step.name),
        step.unloaded
          ? el("div", { class: "step__time" }, tag("seen · later page", "info", "step-unloaded"))
          : step.done
          ? el("div", { class: "step__time" }, timeEl(step.event.created_at, false))
          : el("div", { class: "step__time" }, tag(step.overdue ? "missing · overdue" : "missing", "missing", "missing-tag")),
        el("span", { class: "visually-hidden" },
          step.done ? (step.late ? ", done, late" : ", done") : ", missing"));
      if (step.event && freshIds.has(step.event.event_id)) highlight(li);
      list.append(li);
    }
    const parts = [el("div", { class: "stepper-wrap" }, list)];
    if (model.outside.length) {
      parts.push(el("div", { class: "lane", "data-testid": "unexpected-lane" },
        el("h4", { class: "lane__title" }, "Outside the declared lifecycle" + (isPaged(timeline) ? " (in the events loaded)" : "")),
        el("ul", { class: "lane__items" }, model.outside.map((o) => {
          const item = el("li", { class: "lane__item lane__item--" + o.kind, "data-testid": "unexpected-event",
                                  "data-step": o.event.event },
            el("span", { class: "lane__name" }, o.event.event),
            tag(o.kind === "repeat" ? "repeated" : "unexpected", o.kind === "repeat" ? "info" : "warn"),
            o.count > 1 ? tag(`×${o.count}`, "info", "outside-count") : null,
            timeEl(o.event.created_at, false));
          if (freshIds.has(o.event.event_id)) highlight(item);
          return item;
        }))));
    }
    return parts;
  }

  function metaEl(meta) {
    const entries = meta && typeof meta === "object" ? Object.entries(meta) : [];
    if (!entries.length) return el("span", { class: "muted" }, "—");
    return el("ul", { class: "kv" }, entries.map(([k, v]) => el("li", null, el("span", { class: "kv__k" }, k), "=",
      el("span", { class: "kv__v" }, String(v)))));
  }

  function eventTable(timeline, freshIds) {
    const events = sortEvents(timeline.events);
    const head = ["Event", "Created (UTC)", "Received", "Δ previous", "Meta", "Event id"];
    const rows = [];
    let prev = null;
    for (const ev of events) {
      const t = eventMs(ev);
      const r = parseTs(ev.received_at);
      const lag = t !== null && r !== null ? r - t : null;
      const delta = prev !== null && t !== null ? t - prev : null;
      prev = t;
      const row = el("tr", { "data-testid": "event-row", "data-event": ev.event, "data-event-id": ev.event_id },
        el("td", { "data-label": head[0], class: "strong" }, ev.event),
        el("td", { "data-label": head[1] }, timeEl(ev.created_at, true)),
        el("td", { "data-label": head[2] }, el("span", null,
          ev.received_at ? timeEl(ev.received_at, false) : el("span", { class: "muted" }, "—"),
          lag !== null ? el("span", { class: "muted", title: "received after created" }, ` (+${fmtDuration(Math.max(0, lag))})`) : null)),
        el("td", { "data-label": head[3] }, delta === null ? el("span", { class: "muted" }, "—") : (delta >= 0 ? "+" : "") + fmtDuration(delta)),
        el("td", { "data-label": head[4] }, metaEl(ev.meta)),
        el("td", { "data-label": head[5], class: "mono small" }, ev.event_id || "—"));
      if (freshIds.has(ev.event_id)) highlight(row);
      rows.push(row);
    }
    return el("div", { class: "table-wrap" },
      el("table", { class: "table table--events", "data-testid": "event-table" },
        el("caption", { class: "visually-hidden" }, `Events of ${timeline.message_id} in ${timeline.app_id}`),
        el("thead", null, el("tr", null, head.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", null, rows.length ? rows : el("tr", null, el("td", { colspan: 6, class: "muted" }, "No events yet.")))));
  }

  function summaryEl(timeline, lifecycle) {
    const first = parseTs(timeline.first_seen);
    const last = parseTs(timeline.last_seen);
    const items = [
      ["First seen", timeEl(timeline.first_seen, true)],
      ["Last seen", timeEl(timeline.last_seen, true)],
      ["Duration", el("span", { "data-testid": "duration" }, first !== null && last !== null ? fmtDuration(last - first) : "—")],
      ["Events", el("span", { "data-testid": "event-count" }, isPaged(timeline) ? Number(timeline.event_count).toLocaleString("en") : String((timeline.events || []).length))],
    ];
    if (lifecycle) items.push(["SLA", fmtSeconds(lifecycle.sla_seconds || 0)]);
    if (timeline.missing && timeline.missing.length) items.push(["Missing", el("span", { "data-testid": "missing-list" }, timeline.missing.join(", "))]);
    return el("dl", { class: "facts" }, items.map(([k, v]) => el("div", { class: "facts__item" }, el("dt", null, k), el("dd", null, v))));
  }

  function renderTimelinePanel(panel, freshIds) {
    const tl = panel.timeline;
    const lc = panel.lifecycle;
    fill(panel.body,
      el("div", { class: "panel__head" },
        el("div", { class: "panel__title" },
          el("h2", { class: "mono", "data-testid": "message-id" }, tl.message_id),
          el("p", { class: "panel__app" }, "app ", navLink(appHref(tl.app_id), { class: "mono", "data-testid": "app-link" }, tl.app_id))),
        statusBadge(tl.status)),
      summaryEl(tl, lc),
      lc ? null : el("p", { class: "muted small", "data-testid": "no-lifecycle" },
        `App ${tl.app_id} declares no lifecycle, so nothing can be missing; events are shown in order. `,
        "Declare one with PUT api/apps/{app_id}/lifecycle."),
      panel.lifecycleError ? el("p", { class: "muted small" }, "Lifecycle unavailable: " + panel.lifecycleError) : null,
      el("h3", { class: "section-title" }, "Lifecycle"),
      stepperEl(tl, lc, freshIds),
      el("h3", { class: "section-title" }, "Events"),
      eventTable(tl, freshIds),
      isPaged(tl) ? pagerEl(panel) : null,
    );
    panel.root.dataset.status = tl.status || "unknown";
    panel.seen = new Set((tl.events || []).map((e) => e.event_id));
  }

  /** "N of M events" and "Load more" under a long timeline's table. */
  function pagerEl(panel) {
    const tl = panel.timeline;
    const loaded = (tl.events || []).length;
    const more = hasMore(panel);
    return el("div", { class: "pager", "data-testid": "event-pager" },
      el("p", { class: "muted small", "data-testid": "events-shown", role: "status" },
        `${loaded.toLocaleString("en")} of ${Number(tl.event_count).toLocaleString("en")} events`,
        panel.pageError ? el("span", { class: "pager__error" }, ` · could not load more: ${panel.pageError}`) : null),
      more ? el("button", { type: "button", class: "button", "data-testid": "load-more-events", disabled: panel.loading || null,
                            onclick: () => panel.loadMore() }, panel.loading ? "Loading…" : "Load more") : null);
  }

  /** A page after the loaded ones, or events a live frame could not carry (the count says so). */
  function hasMore(panel) {
    return !!panel.cursor || (panel.timeline.events || []).length < Number(panel.timeline.event_count || 0);
  }

  function eventKey(ev) { return String(ev.created_at || "") + "#" + String(ev.event_id || ""); }

  /** Events of `extra` not in `events` (by event_id), appended: a page read again, a frame seen twice. */
  function mergeEvents(events, extra) {
    const ids = new Set(events.map((e) => e.event_id));
    return events.concat(extra.filter((e) => !ids.has(e.event_id) && ids.add(e.event_id)));
  }

  function messageView(view, params) {
    const messageId = params.get("message_id") || "";
    const appId = (params.get("app_id") || "").trim();
    const input = document.getElementById("search-message");
    const appInput = document.getElementById("search-app");
    if (input && document.activeElement !== input) input.value = messageId;
    if (appInput && document.activeElement !== appInput) appInput.value = appId;
    if (!messageId) {
      fill(view, el("section", { class: "card" }, el("h1", { tabindex: "-1" }, "Search a message"),
        el("p", null, "Type a message id in the search box.")));
      return null;
    }
    document.title = `${messageId} — Mars`;
    rememberSearch(messageId, appId);

    let alive = true;
    const unsubs = [];
    const panels = new Map();  // app_id -> panel
    const container = el("div", { class: "panels", "data-testid": "timelines" });
    const heading = el("h1", { tabindex: "-1", class: "view-title" }, "Message ", el("span", { class: "mono" }, messageId),
      appId ? el("span", { class: "muted" }, " in ", appId) : null);
    const status = el("p", { class: "muted", "data-testid": "loading" }, "Loading…");
    fill(view, heading, status, container);

    function addPanel(timeline, lifecycle, lifecycleError) {
      const root = el("article", { class: "panel card", "data-testid": "timeline-panel", "data-app": timeline.app_id });
      const body = el("div");
      const liveNote = el("p", { class: "panel__live muted small", "data-testid": "panel-live" });
      root.append(body, liveNote);
      const panel = { root, body, liveNote, timeline, lifecycle, lifecycleError, seen: new Set(),
                      cursor: timeline.cursor || null, resume: null, loading: false, pageError: null };
      panel.loadMore = () => loadMore(panel);
      panels.set(timeline.app_id, panel);
      renderTimelinePanel(panel, new Set());
      container.append(root);
      unsubs.push(live.subscribe(timeline.app_id, messageId, (frame) => onFrame(panel, frame)));
      return panel;
    }

    async function refetch(panel) {
      try {
        const body = await api(`api/messages/${seg(messageId)}?app_id=${seg(panel.timeline.app_id)}`);
        const tl = (body.timelines || [])[0];
        if (!alive || !tl) return;
        if (isPaged(tl)) { panel.cursor = tl.cursor || null; panel.resume = null; }   // a first page, as at load
        applyTimeline(panel, tl);
      } catch (err) {
        if (alive) notice("refetch", "error", `Could not refresh ${messageId}: ${err.message}`);
      }
    }

    /** The next page of a long timeline, appended. Past the last page (live frames left events out),
     * the last page is read again from its own cursor: the events after it come with it. */
    async function loadMore(panel) {
      if (panel.loading) return;
      const appIdOf = panel.timeline.app_id;
      const from = panel.cursor || panel.resume;
      const hadFocus = document.activeElement && document.activeElement.closest && document.activeElement.closest('[data-testid="event-pager"]');
      panel.loading = true;
      panel.pageError = null;
      renderTimelinePanel(panel, new Set());
      try {
        const body = await api(`api/messages/${seg(messageId)}?app_id=${seg(appIdOf)}` + (from ? `&cursor=${seg(from)}` : ""));
        const tl = (body.timelines || [])[0];
        if (!alive || !tl) return;
        const before = (panel.timeline.events || []).length;
        const events = mergeEvents(panel.timeline.events || [], tl.events || []);
        const newer = !panel.timeline.updated_at || !tl.updated_at || String(tl.updated_at) >= String(panel.timeline.updated_at);
        panel.timeline = Object.assign({}, panel.timeline, newer ? tl : { event_count: Math.max(tl.event_count, panel.timeline.event_count) }, { events });
        panel.resume = from;      // where the last page read began: re-read to catch up later
        panel.cursor = tl.cursor || null;
        // Nothing new past the end: start over from the first page next time (events that arrived out
        // of order sort before the last page, where only a read from the start finds them).
        if (!panel.cursor && events.length === before) panel.resume = null;
        announce(`Loaded ${events.length - before} more events of ${messageId}: ${events.length} of ${panel.timeline.event_count}.`);
      } catch (err) {
        if (alive) panel.pageError = err.message;
      } finally {
        panel.loading = false;
        if (alive) {
          renderTimelinePanel(panel, new Set());
          const next = hadFocus && (panel.body.querySelector('[data-testid="load-more-events"]') || panel.body.querySelector('[data-testid="events-shown"]'));
          if (next) { if (!next.matches("button")) next.setAttribute("tabindex", "-1"); next.focus(); }
        }
      }
    }

    /** A live frame of a long timeline: its summary (whole) and the events its change added. An added
     * event joins the table when it sorts within what is loaded (or everything is loaded); one after
     * the loaded pages comes with "Load more", which the larger event_count offers. */
    function applyPagedFrame(panel, frame) {
      const cur = panel.timeline;
      if (cur.updated_at && frame.updated_at && String(frame.updated_at) < String(cur.updated_at)) return;   // stale frame
      const loaded = cur.events || [];
      const last = loaded.length ? eventKey(sortEvents(loaded)[loaded.length - 1]) : "";
      const added = (frame.events || []).filter((e) => !panel.seen.has(e.event_id) && (!panel.cursor || eventKey(e) <= last));
      const summary = Object.assign({}, frame);
      delete summary.type; delete summary.new_events; delete summary.truncated; delete summary.events; delete summary.alert;
      panel.timeline = Object.assign({}, cur, summary, { events: mergeEvents(loaded, added) });
      const fresh = new Set(added.map((e) => e.event_id));
      renderTimelinePanel(panel, fresh);
      const count = Math.max(0, Number(frame.event_count || 0) - Number(cur.event_count || 0));
      if (count) {
        const names = added.map((e) => e.event);
        announce(`${count === 1 ? "New event" : count + " new events"}${names.length ? " " + names.slice(0, 5).join(", ") : ""} on ${messageId}` +
          ` (${frame.app_id}); status ${STATUS_TEXT[frame.status] || frame.status}.`);
        panel.liveNote.textContent = `Updated live at ${fmtClock(Date.now())} UTC`;
      }
    }

    function applyTimeline(panel, tl) {
      const cur = panel.timeline;
      if (cur.updated_at && tl.updated_at && String(tl.updated_at) < String(cur.updated_at)) return;   // stale frame
      const fresh = new Set((tl.events || []).map((e) => e.event_id).filter((id) => !panel.seen.has(id)));
      panel.timeline = Object.assign({}, cur, tl);
      renderTimelinePanel(panel, fresh);
      if (fresh.size) {
        const names = (tl.events || []).filter((e) => fresh.has(e.event_id)).map((e) => e.event);
        announce(`${names.length === 1 ? "New event" : names.length + " new events"} ${names.join(", ")} on ${messageId}` +
          ` (${tl.app_id}); status ${STATUS_TEXT[tl.status] || tl.status}.`);
        panel.liveNote.textContent = `Updated live at ${fmtClock(Date.now())} UTC`;
      }
    }

    function onFrame(panel, frame) {
      if (!alive) return;
      if (frame.type === "subscribed") {
        panel.liveNote.textContent = "Watching live.";
        return;
      }
      if (frame.type !== "timeline") return;
      if (isPaged(frame)) {
        // a timeline that became long since it was loaded: its first page, as a fresh load would
        if (!isPaged(panel.timeline)) refetch(panel);
        else applyPagedFrame(panel, frame);
        return;
      }
      if (frame.truncated) { refetch(panel); return; }
      const tl = Object.assign({}, frame);
      delete tl.type; delete tl.new_events; delete tl.truncated;
      applyTimeline(panel, tl);
    }

    (async () => {
      let body;
      try {
        body = await api(`api/messages/${seg(messageId)}` + (appId ? `?app_id=${seg(appId)}` : ""));
      } catch (err) {
        if (!alive) return;
        status.remove();
        if (err.status === 404 && appId) {
          // Nothing yet: wait for the first event of this message live.
          const waiting = errorBox(err, "message-error", el("p", { class: "muted" }, "Waiting for its first event (live)…"));
          appendKids(view, [waiting]);
          unsubs.push(live.subscribe(appId, messageId, async (frame) => {
            if (!alive || frame.type !== "timeline" || panels.has(frame.app_id)) return;
            waiting.remove();
            let lc = null;
            let lcErr = null;
            try { lc = await lifecycleOf(frame.app_id); } catch (e) { lcErr = e.message; }
            if (!alive || panels.has(frame.app_id)) return;
            const panel = addPanel({ app_id: frame.app_id, message_id: messageId, events: [], missing: [], status: "unknown" }, lc, lcErr);
            onFrame(panel, frame);
          }));
        } else {
          appendKids(view, [errorBox(err, "message-error", err.status === 404
            ? el("p", { class: "muted" }, "Check the id, or wait until a producer reports an event for it. Adding the app narrows the search and waits live.")
            : null)]);
        }
        return;
      }
      const timelines = (body && body.timelines) || [];
      const lifecycles = await Promise.all(timelines.map((t) => lifecycleOf(t.app_id).then((lc) => [lc, null], (e) => [null, e.message])));
      if (!alive) return;
      status.remove();
      if (timelines.length > 1) {
        heading.after(el("p", { class: "muted", "data-testid": "apps-note" }, `This id is used by ${timelines.length} apps: one timeline each.`));
      }
      timelines.forEach((t, i) => addPanel(t, lifecycles[i][0], lifecycles[i][1]));
    })();

    return () => {
      alive = false;
      for (const u of unsubs) u();
    };
  }

  // ---------------------------------------------------------------- app view

  function appView(view, appId, params) {
    document.title = `${appId} — Mars`;
    rememberApp(appId);
    let alive = true;
    let items = [];
    let cursor = null;
    let loading = false;
    let subscribedOnce = false;
    let filter = STATUSES.includes(params.get("status")) ? params.get("status") : "all";
    let search = searchOf(params);
    const searching = () => Object.keys(search).length > 0;
    const fresh = new Set();

    const lifecycleLine = el("p", { class: "muted", "data-testid": "app-lifecycle" }, "Loading lifecycle…");
    const chips = el("div", { class: "chips", role: "group", "aria-label": "Filter by status", "data-testid": "status-chips" });
    const scope = el("p", { class: "muted small", "data-testid": "chip-scope" });
    const tbody = el("tbody");
    const table = el("div", { class: "table-wrap" }, el("table", { class: "table table--messages", "data-testid": "message-table" },
      el("caption", { class: "visually-hidden" }, `Recent messages of ${appId}, newest first`),
      el("thead", null, el("tr", null, ["Message", "Status", "Missing", "First seen", "Last seen"].map((h) => el("th", { scope: "col" }, h)))),
      tbody));
    const empty = el("p", { class: "muted", "data-testid": "empty", hidden: true });
    const errorSlot = el("div");
    const more = el("button", { type: "button", class: "button", "data-testid": "load-more", hidden: true, onclick: () => load(false) }, "Load more");
    const liveNote = el("p", { class: "muted small", "data-testid": "app-live" });
    const alerts = appAlerts(appId);
    const filtersSlot = el("div", { "data-testid": "filters-slot" });
    const funnel = appFunnel(appId);

    fill(view,
      el("section", { class: "card" },
        el("h1", { tabindex: "-1", class: "view-title" }, "App ", el("span", { class: "mono", "data-testid": "app-title" }, appId)),
        lifecycleLine,
        funnel.node,
        alerts.node,
        el("div", { class: "card__head" }, el("h2", null, "Recent messages"), liveNote),
        filtersSlot, chips, scope, errorSlot, table, empty, el("div", { class: "more" }, more)));

    function renderSearch() {
      fill(filtersSlot, searchForm(search, (next) => {
        search = next;
        history.replaceState(null, "", abs(appHref(appId, filter, search)));
        items = [];
        cursor = null;
        renderSearch();
        renderLiveNote();
        load(true);
      }));
    }

    function renderLiveNote() {
      if (subscribedOnce) liveNote.textContent = searching() ? "Live updates paused while searching (Clear to resume)." : "Live: new messages appear at the top.";
    }

    lifecycleOf(appId).then((lc) => {
      if (!alive) return;
      if (!lc) {
        lifecycleLine.textContent = "No lifecycle declared: every message's status is unknown. Declare one with PUT api/apps/" + appId + "/lifecycle.";
        return;
      }
      fill(lifecycleLine, "Lifecycle: ",
        el("span", { class: "lifecycle-steps" }, lc.events.map((e, i) => [i ? el("span", { "aria-hidden": "true", class: "arrow" }, " → ") : null, el("span", { class: "mono" }, e)])),
        ` · SLA ${fmtSeconds(lc.sla_seconds || 0)}`,
        (lc.optional || []).length ? ` · optional ${lc.optional.join(", ")}` : null,
        (lc.failure || []).length ? ` · failure ${lc.failure.join(", ")}` : null,
        (lc.deadlines || []).length ? " · deadlines " + lc.deadlines.map((d) => `${d.step} within ${fmtSeconds(d.within_seconds)} of ${d.after}`).join(", ") : null);
    }, (err) => { if (alive) lifecycleLine.textContent = "Lifecycle unavailable: " + err.message; });

    function counts() {
      const c = { all: items.length };
      for (const s of STATUSES) c[s] = 0;
      for (const it of items) c[STATUSES.includes(it.status) ? it.status : "unknown"] += 1;
      return c;
    }

    function renderChips() {
      const c = counts();
      fill(chips, ...["all", ...STATUSES].map((s) => el("button", {
        type: "button", class: "chip chip--" + s, "aria-pressed": String(filter === s), "data-testid": "chip-" + s,
        "data-count": c[s], onclick: () => setFilter(s),
      }, s === "all" ? null : icon(s), el("span", null, s === "all" ? "all" : STATUS_TEXT[s]), " ", el("span", { class: "chip__count" }, String(c[s])))));
      scope.textContent = items.length
        ? `Counts of the latest ${items.length} message${items.length === 1 ? "" : "s"}` + (cursor ? " loaded (more available)." : ".")
        : "";
    }

    function setFilter(s) {
      filter = s;
      history.replaceState(null, "", abs(appHref(appId, s, search)));
      renderChips();
      renderRows();
      const btn = chips.querySelector(`[data-testid="chip-${s}"]`);
      if (btn) btn.focus();
    }

    function row(it) {
      const href = messageHref(it.message_id, appId);
      const missing = it.missing || [];
      const tr = el("tr", { "data-testid": "message-row", "data-message-id": it.message_id, "data-status": it.status, class: "row-link",
        onclick: (ev) => {
          if (ev.target.closest("a, button") || (window.getSelection && String(window.getSelection()))) return;
          go(href);
        } },
      el("td", { "data-label": "Message" }, navLink(href, { class: "mono strong" }, it.message_id)),
      el("td", { "data-label": "Status" }, statusBadge(it.status)),
      el("td", { "data-label": "Missing" }, missing.length ? el("span", { class: "small" }, missing.join(", ")) : el("span", { class: "muted" }, "—")),
      el("td", { "data-label": "First seen" }, timeEl(it.first_seen, true)),
      el("td", { "data-label": "Last seen" }, timeEl(it.last_seen, true)));
      if (fresh.has(it.message_id)) { highlight(tr); fresh.delete(it.message_id); }
      return tr;
    }

    function renderRows() {
      const shown = items.filter((it) => filter === "all" || it.status === filter);
      fill(tbody, ...shown.map(row));
      table.hidden = !shown.length;
      empty.hidden = !!shown.length || loading;
      if (!items.length) empty.textContent = `No messages for ${appId} yet. They appear here live as events arrive.`;
      else empty.textContent = `No ${STATUS_TEXT[filter] || filter} messages among the latest ${items.length}.`;
      more.hidden = !cursor;
    }

    function strip(t) {
      const it = Object.assign({}, t);
      delete it.type; delete it.events; delete it.new_events; delete it.truncated;
      return it;
    }

    function upsertTop(it) {
      items = items.filter((x) => x.message_id !== it.message_id);
      items.unshift(it);
    }

    async function load(first) {
      if (loading) return;
      loading = true;
      more.disabled = true;
      more.textContent = "Loading…";
      try {
        let rel = `api/messages?app_id=${seg(appId)}&limit=${PAGE_SIZE}`;
        for (const [k, v] of Object.entries(search)) rel += `&${encodeURIComponent(k)}=${encodeURIComponent(v)}`;
        if (!first && cursor) rel += `&cursor=${seg(cursor)}`;
        const body = await api(rel);
        if (!alive) return;
        fill(errorSlot);
        const got = (body && body.items) || [];
        if (first) {
          const known = new Set(got.map((x) => x.message_id));
          // keep what arrived live or was paged in before, under the fresh first page
          items = got.concat(items.filter((x) => !known.has(x.message_id)));
          if (!items.length || items.length === got.length) cursor = body.cursor || null;
        } else {
          const known = new Set(items.map((x) => x.message_id));
          items = items.concat(got.filter((x) => !known.has(x.message_id)));
          cursor = body.cursor || null;
        }
      } catch (err) {
        if (alive) fill(errorSlot, errorBox(err, "app-error"));
      } finally {
        loading = false;
        more.disabled = false;
        more.textContent = "Load more";
        if (alive) { renderChips(); renderRows(); }
      }
    }

    const unsub = live.subscribe(appId, null, (frame) => {
      if (!alive) return;
      if (frame.type === "subscribed") {
        if (subscribedOnce) { load(true); alerts.load(); }   // a reconnect: catch up with what changed meanwhile
        subscribedOnce = true;
        renderLiveNote();
        return;
      }
      if (frame.type === "alert") { alerts.take(frame); return; }
      if (frame.type !== "timeline" || !frame.message_id) return;
      if (searching()) return;   // a frame cannot be checked against every filter here: the server's search decides
      upsertTop(strip(frame));
      fresh.add(frame.message_id);
      renderChips();
      renderRows();
      if (filter === "all" || frame.status === filter) {
        announce(`Message ${frame.message_id} updated: ${STATUS_TEXT[frame.status] || frame.status}.`);
      }
    });

    renderSearch();
    renderChips();
    load(true);
    alerts.load();
    return () => { alive = false; alerts.stop(); unsub(); };
  }

  /** The app's alerts (docs/ALERTS.md): a badge with the firing count and the latest alerts, newest
   *  first; GET api/alerts at load, then each `alert` frame updates its row (one row per alert_id). */
  /** The app's funnel (GET api/apps/{app}/funnel, the last 7 days): one bar per lifecycle step, its
   * width the share of the first step's messages, with conversion, p50/p90/p99 and stalls as text. */
  function appFunnel(appId) {
    const rows = el("ol", { class: "funnel", "data-testid": "funnel", "aria-label": `Funnel of ${appId}, last 7 days` });
    const note = el("p", { class: "muted small", "data-testid": "funnel-note" }, "Loading funnel…");
    const node = el("div", { class: "funnel-box" }, el("div", { class: "card__head" }, el("h2", null, "Funnel"),
      el("span", { class: "muted small" }, "last 7 days, by each message's first step")), note, rows);
    api(`api/apps/${seg(appId)}/funnel`).then((f) => {
      const top = Math.max(1, ...f.steps.map((r) => r.reached));
      const pct = (x) => (x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)} %`);
      const secs = (x) => (x === null || x === undefined ? "—" : fmtSeconds(Math.round(x)));
      const bar = (share) => { // the CSP forbids style attributes; the CSSOM is allowed
        const node = el("span", { class: "funnel__bar" });
        node.style.width = `${(100 * share).toFixed(1)}%`;
        return node;
      };
      note.textContent = f.steps.some((r) => r.reached) ? `Percentiles within ${(f.relative_error * 100).toFixed(0)} % (DDSketch).`
        : "No message reached a step in the last 7 days.";
      fill(rows, ...f.steps.map((r) => el("li", { class: "funnel__row", "data-testid": "funnel-step", "data-step": r.step,
        "data-reached": r.reached, "data-stalled": r.stalled_here },
        el("span", { class: "mono funnel__name" }, r.step),
        el("span", { class: "funnel__track" }, bar(r.reached / top)),
        el("span", { class: "funnel__nums" },
          el("strong", { "data-testid": "funnel-reached" }, String(r.reached)), " reached · ",
          r.after ? `${pct(r.conversion)} of ${r.after}` : "entry", " · ",
          r.after ? `p50 ${secs(r.p50_seconds)} · p90 ${secs(r.p90_seconds)} · p99 ${secs(r.p99_seconds)}` : "", r.after ? " · " : "",
          el("span", { "data-testid": "funnel-stalled" }, `${r.stalled_here} stalled here`),
          r.alerts ? [" ", el("span", { class: "tag tag--missing", "data-testid": "funnel-alerts" }, `${r.alerts} alert${r.alerts === 1 ? "" : "s"}`)] : null))));
    }, (err) => {
      note.textContent = err && err.status === 404 ? "No lifecycle: no funnel." : "Funnel unavailable: " + (err && err.message);
    });
    return { node };
  }

  function appAlerts(appId) {
    let alive = true;
    let rows = [];
    const fresh = new Set();   // rows to highlight once
    const arrived = new Set(); // alerts that came over the websocket
    const badge = el("span", { class: "badge badge--ok", "data-testid": "alert-badge", "data-firing": "0" }, "0 firing");
    const list = el("ul", { class: "alerts", "data-testid": "alert-list", "aria-label": `Alerts of ${appId}` });
    const note = el("p", { class: "muted small", "data-testid": "alerts-empty" }, "No alerts.");
    const node = el("div", { class: "alerts-box", "data-testid": "alerts" },
      el("div", { class: "card__head" }, el("h2", null, "Alerts"), badge), list, note);

    function describe(a) {
      const rule = a.rule || {};
      if (rule.kind === "deadline") return `${rule.step} not within its deadline after ${rule.after}`;
      if (rule.kind === "failure") return `failure step ${rule.step}`;
      if (rule.kind === "sla") return "no event for longer than the SLA";
      return String(rule.kind || "alert");
    }

    function render() {
      const firing = rows.filter((a) => a.state === "firing").length;
      badge.textContent = `${firing} firing`;
      badge.dataset.firing = String(firing);
      badge.className = "badge " + (firing ? "badge--stuck" : "badge--complete");
      note.hidden = !!rows.length;
      fill(list, ...rows.slice(0, 20).map((a) => {
        const li = el("li", { class: "alert alert--" + a.state, "data-testid": "alert-row", "data-alert-id": a.alert_id,
          "data-state": a.state, "data-kind": (a.rule || {}).kind },
        tag(a.state, a.state === "firing" ? "missing" : "info", "alert-state"), " ",
        navLink(messageHref(a.message_id, appId), { class: "mono strong" }, a.message_id), " ",
        el("span", null, describe(a)), " ",
        timeEl(a.state === "resolved" ? a.resolved_at : a.fired_at, true));
        if (fresh.has(a.alert_id)) { highlight(li); fresh.delete(a.alert_id); }
        return li;
      }));
    }

    function take(a) {
      if (!alive || !a.alert_id) return;
      rows = [a].concat(rows.filter((x) => x.alert_id !== a.alert_id));
      fresh.add(a.alert_id);
      arrived.add(a.alert_id);
      render();
      announce(`Alert ${a.state}: ${a.message_id}, ${describe(a)}.`);
    }

    async function load() {
      try {
        const body = await api(`api/alerts?app_id=${seg(appId)}&limit=20`);
        if (!alive) return;
        const known = new Set(((body && body.items) || []).map((x) => x.alert_id));
        // what arrived live stays above the first page (it is newer)
        rows = rows.filter((x) => arrived.has(x.alert_id) && !known.has(x.alert_id)).concat((body && body.items) || []);
        render();
      } catch (err) {
        if (alive) note.textContent = "Alerts unavailable: " + err.message;
      }
    }

    render();
    return { node, take, load, stop: () => { alive = false; } };
  }

  // ---------------------------------------------------------------- queue panel

  const queues = { timer: null, lastAlert: "" };

  function queueRows(list, dead) {
    return list.map((q) => {
      const depth = Number(q.visible) || 0;
      const flight = Number(q.in_flight) || 0;
      return el("tr", { "data-testid": dead ? "dlq-row" : "queue-row", class: dead && depth + flight ? "is-warning" : null },
        el("th", { scope: "row", class: "queue-name", title: q.name }, camelBreaks(shortQueueName(q.name))),
        el("td", { class: "num", "data-label": "Depth" }, String(depth)),
        el("td", { class: "num", "data-label": "In flight" }, String(flight)),
        el("td", { class: "num", "data-label": "Oldest" }, q.oldest_age_seconds === null || q.oldest_age_seconds === undefined ? "—" : fmtSeconds(Number(q.oldest_age_seconds))));
    });
  }

  /** "IngestDeadLetterQueue" with line-break opportunities between its words (<wbr>, not markup). */
  function camelBreaks(text) {
    const parts = String(text).split(/(?=[A-Z][a-z])/);
    return parts.flatMap((part, i) => (i ? [el("wbr"), part] : [part]));
  }

  function shortQueueName(name) {
    // "<stack>-EventsQueue3-ABC123.fifo" reads as "EventsQueue3"; keep anything else whole
    const m = /([A-Za-z]*Queue\d*)/.exec(String(name || ""));
    return m ? m[1] : String(name || "?");
  }

  async function refreshQueues() {
    window.clearTimeout(queues.timer);
    const bodyEl = document.getElementById("queue-body");
    if (document.hidden) { queues.timer = window.setTimeout(refreshQueues, QUEUE_REFRESH_MS); return; }
    try {
      const s = await api("api/q/stats");
      const qs = s.queues || [];
      const dead = s.dead_letter || [];
      const deadTotal = dead.reduce((n, q) => n + (Number(q.visible) || 0) + (Number(q.in_flight) || 0), 0);
      const totalDepth = qs.reduce((n, q) => n + (Number(q.visible) || 0), 0);
      const totalFlight = qs.reduce((n, q) => n + (Number(q.in_flight) || 0), 0);
      const head = el("thead", null, el("tr", null, ["Queue", "Depth", "In flight", "Oldest"].map((h, i) => el("th", { scope: "col", class: i ? "num" : null }, h))));
      const parts = [
        el("p", { class: "queues__total", "data-testid": "queue-total" },
          el("strong", null, String(totalDepth)), " waiting · ", el("strong", null, String(totalFlight)), ` in flight in ${qs.length} queues`),
      ];
      const alertText = deadTotal
        ? `${deadTotal} message${deadTotal === 1 ? "" : "s"} in dead-letter queues: ` +
          dead.filter((q) => (Number(q.visible) || 0) + (Number(q.in_flight) || 0)).map((q) => `${shortQueueName(q.name)} (${(Number(q.visible) || 0) + (Number(q.in_flight) || 0)})`).join(", ") +
          ". They will not be retried on their own: inspect them, fix the cause, then run `mars redrive`."
        : "";
      if (deadTotal) {
        parts.push(el("div", { class: "dlq-warning", role: queues.lastAlert === alertText ? null : "alert", "data-testid": "dlq-warning" },
          icon("warning"), el("span", null, alertText)));
      } else {
        parts.push(el("p", { class: "dlq-ok small", "data-testid": "dlq-ok" }, icon("complete"), " No dead letters."));
      }
      queues.lastAlert = alertText;
      parts.push(el("details", { class: "queues__details", open: window.matchMedia("(min-width: 1000px)").matches || null },
        el("summary", null, "Per queue"),
        el("table", { class: "table table--queues", "data-testid": "queue-table" }, head,
          el("tbody", null, queueRows(qs, false)),
          dead.length ? el("tbody", { class: "dlq" }, el("tr", null, el("th", { colspan: 4, scope: "rowgroup", class: "small" }, "Dead-letter queues")), queueRows(dead, true)) : null)));
      parts.push(el("p", { class: "muted small" }, `Updated ${fmtClock(Date.now())} UTC · every ${QUEUE_REFRESH_MS / 1000} s`));
      const openBefore = bodyEl.querySelector("details");
      if (openBefore) parts[parts.length - 2].open = openBefore.open;
      fill(bodyEl, ...parts);
    } catch (err) {
      fill(bodyEl, errorBox(err, "queue-error"));
    }
    queues.timer = window.setTimeout(refreshQueues, QUEUE_REFRESH_MS);
  }

  // ---------------------------------------------------------------- config, API key

  function showKeyForm(open) {
    const form = document.getElementById("api-key-form");
    const button = document.querySelector('[data-testid="api-key-button"]');
    form.hidden = !open;
    button.setAttribute("aria-expanded", String(open));
    if (open) document.getElementById("api-key-input").focus();
  }

  function applyConfig() {
    const cfg = state.config || {};
    const button = document.querySelector('[data-testid="api-key-button"]');
    button.hidden = !cfg.auth_required;
    button.textContent = apiKey() ? "API key ✓" : "API key";
    if (cfg.auth_required && !apiKey()) showKeyForm(true);
  }

  function setupKeyForm() {
    const form = document.getElementById("api-key-form");
    const button = document.querySelector('[data-testid="api-key-button"]');
    button.addEventListener("click", () => showKeyForm(form.hidden));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = document.getElementById("api-key-input").value.trim();
      if (!value) return;
      store.set(KEY_STORAGE, value);
      state.keyPrompted = false;
      document.getElementById("api-key-input").value = "";
      showKeyForm(false);
      applyConfig();
      reconnectAndReload();
    });
    document.querySelector('[data-testid="api-key-forget"]').addEventListener("click", () => {
      store.remove(KEY_STORAGE);
      applyConfig();
      reconnectAndReload();
    });
  }

  function reconnectAndReload() {
    state.lifecycles.clear();
    if (live.ws) { const ws = live.ws; live.ws = null; ws.close(); }
    live.attempt = 0;
    live.start();
    route(false);
    refreshQueues();
  }

  // ---------------------------------------------------------------- router

  function route(focus) {
    if (state.cleanup) { try { state.cleanup(); } catch (_) { /* ignore */ } state.cleanup = null; }
    state.lifecycles.clear();   // a lifecycle PUT since the last view shows on the next one
    const view = document.getElementById("view");
    const rel = relPath().replace(/\/+$/, "");
    const params = new URLSearchParams(location.search);
    let appMatch;
    if (rel === "" || rel === "index.html") {
      state.cleanup = homeView(view);
    } else if (rel === "search/event" || rel === "search") {
      state.cleanup = messageView(view, params);
    } else if ((appMatch = /^apps\/([^/]+)$/.exec(rel))) {
      let appId;
      try { appId = decodeURIComponent(appMatch[1]); } catch (_) { appId = appMatch[1]; }
      state.cleanup = appView(view, appId, params);
    } else {
      document.title = "Not found — Mars";
      fill(view, el("section", { class: "card" }, el("h1", { tabindex: "-1" }, "Page not found"),
        el("p", null, "Nothing lives at ", el("code", null, "/" + rel), ". "), navLink("", null, "Go to the search page")));
    }
    if (focus) {
      const h1 = view.querySelector("h1");
      if (h1) h1.focus({ preventScroll: false });
      window.scrollTo(0, 0);
    }
  }

  function setupSearch() {
    const form = document.querySelector('[data-testid="search-form"]');
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const messageId = form.elements.message_id.value.trim();
      const appId = form.elements.app_id.value.trim();
      if (!messageId) { form.elements.message_id.focus(); return; }
      go(messageHref(messageId, appId));
    });
  }

  function setupNav() {
    document.addEventListener("click", (ev) => {
      const a = ev.target.closest && ev.target.closest("a[data-nav]");
      if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
      const url = new URL(a.href);
      if (url.origin !== location.origin) return;
      ev.preventDefault();
      history.pushState(null, "", url.href);
      route(true);
    });
    window.addEventListener("popstate", () => route(true));
    document.querySelector('[data-testid="live-indicator"]').addEventListener("click", () => live.retryNow());
    window.addEventListener("online", () => { live.attempt = 0; live.start(); });
    window.addEventListener("offline", () => { if (live.ws) live.ws.close(); live.setState("offline", "the browser is offline"); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshQueues(); });
  }

  function main() {
    setupNav();
    setupSearch();
    setupKeyForm();
    refreshDatalists();
    live.render();
    route(false);
    refreshQueues();
    live.start();
  }

  // exposed for debugging in the console and for the tests' clock-free checks
  window.marsDashboard = { live, state, parseTs, fmtDuration, buildSteps };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
