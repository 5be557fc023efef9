// Palisade web console: one ES module, no build step, no dependencies.
//
// Rules this file keeps (the server's CSP enforces the first):
// * no inline scripts or styles, no eval;
// * data is NEVER inserted as HTML: every value goes through textContent or
//   createTextNode (see `el`), so a prompt containing <script> shows as text;
// * every call goes to the same /api/v1 as any client, signed in with the
//   session cookie; unsafe methods send the session's CSRF token.

const app = document.getElementById("app");
const toasts = document.getElementById("toasts");
const SVGNS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f7fd8", "#1f8a53", "#b7791f", "#8a4fd8", "#c2413b", "#12889a", "#5d6b7e", "#d8672f"];

let session = null; // {name, role, csrf_token}
let pendingCount = null;

// === DOM helpers ===

/** Build an element. Strings and numbers become text nodes, never HTML. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "value") node.value = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function toast(message, bad) {
  const t = el("div", { class: bad ? "toast bad" : "toast" }, message);
  toasts.appendChild(t);
  setTimeout(() => t.remove(), 4000);
}

function empty(title, hint) {
  return el("div", { class: "empty" }, el("b", {}, title), hint || "");
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text || ""}` }, text ?? "-");
}

function fmtTime(v) {
  if (v === null || v === undefined || v === "") return "-";
  const d = typeof v === "number" ? new Date(v) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function shortTime(v) {
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return String(v ?? "-");
  return d.toLocaleString(undefined, { month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function ago(v) {
  if (!v) return "never";
  const s = Math.max(0, (Date.now() - new Date(v).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function money(v) {
  if (v === null || v === undefined) return "-";
  return `$${Number(v).toFixed(Number(v) < 1 ? 4 : 2)}`;
}

/** Whether the signed-in role may call `method path` (the server's matrix,
 * from /console/session). The server enforces it anyway; this hides what
 * cannot be used. */
function allowed(method, path) {
  if (!session || !Array.isArray(session.permissions)) return false;
  const segs = path.split("?")[0].split("/");
  return session.permissions.some((p) => {
    const [m, pat] = p.split(" ");
    const ps = pat.split("/");
    return m === method && ps.length === segs.length && ps.every((x, i) => x.startsWith("{") || x === segs[i]);
  });
}

// === API ===

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf_token;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (resp.status === 401) {
    session = null;
    renderLogin("Your session has ended. Sign in again.");
    throw new ApiError(401, "signed out");
  }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || `HTTP ${resp.status}`);
  return data;
}

/** Like api(), but a missing or refused endpoint gives null (page shows "not available"). */
async function optional(path) {
  try {
    return await api("GET", path);
  } catch (e) {
    if (e.status === 404 || e.status === 403 || e.status === 400 || e.status === 501) return null;
    throw e;
  }
}

// === sign-in ===

function renderLogin(message) {
  document.title = "Sign in · Palisade";
  const params = new URLSearchParams(location.search);
  const reason = {
    invalid_token: "That token is not valid (unknown or revoked). Check it and try again.",
    missing_token: "Paste an API token to sign in.",
    too_many_attempts: "Too many failed sign-ins from this address. Wait a minute and try again.",
  }[params.get("error")];
  const error = message || reason;
  clear(app).appendChild(
    el("div", { class: "login" },
      el("form", { class: "box", method: "post", action: "/console/login", id: "login-form" },
        el("h1", {}, el("img", { src: "/console/icon.svg", alt: "" }), "Palisade"),
        el("p", { class: "muted" }, "AI traffic governance console"),
        el("label", { for: "token" }, "API token"),
        el("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, placeholder: "pal_admin_…", autofocus: true }),
        el("button", { class: "primary", type: "submit", id: "sign-in" }, "Sign in"),
        error ? el("div", { class: "error", id: "login-error", role: "alert" }, error) : null,
        el("p", { class: "muted", style: null }, "palisade up prints a one-time admin token; admins create more with POST /api/v1/tokens."),
      ),
    ),
  );
}

async function signOut() {
  try {
    await api("POST", "/console/logout");
  } catch (_) {
    /* already signed out */
  }
  session = null;
  history.replaceState(null, "", "/");
  renderLogin("You are signed out.");
}

// === shell and routing ===

const PAGES = [
  { id: "overview", label: "Overview", render: overviewPage },
  { id: "approvals", label: "Approvals", render: approvalsPage },
  { id: "events", label: "Events", render: eventsPage },
  { id: "devices", label: "Devices", render: devicesPage },
  { id: "policy", label: "Policy", render: policyPage, needs: "/api/v1/policy" },
  { id: "audit", label: "Admin audit", render: auditPage, needs: "/api/v1/admin-audit" },
];

function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page: page || "overview", arg: rest.map(decodeURIComponent).join("/") || null };
}

function shell(active) {
  const nav = PAGES.filter((p) => !p.needs || allowed("GET", p.needs)).map((p) =>
    el("a", { href: `#/${p.id}`, class: p.id === active ? "active" : "", id: `nav-${p.id}` },
      p.label,
      p.id === "approvals" && pendingCount ? el("span", { class: "count", title: "pending" }, pendingCount) : null,
    ),
  );
  const main = el("main", { id: "main" });
  clear(app).appendChild(
    el("div", { class: "shell" },
      el("nav", { class: "side" },
        el("div", { class: "brand" }, el("img", { src: "/console/icon.svg", alt: "" }), "Palisade"),
        nav,
        el("div", { class: "spacer" }),
        el("div", { class: "who", id: "who" },
          el("b", {}, session.name), `role: ${session.role}`, el("br"),
          el("button", { class: "link", id: "sign-out", onclick: signOut }, "Sign out"),
        ),
      ),
      main,
    ),
  );
  return main;
}

async function render() {
  if (!session) {
    try {
      const resp = await fetch("/console/session", { credentials: "same-origin" });
      if (resp.status !== 200) return renderLogin();
      session = await resp.json();
      if (location.search) history.replaceState(null, "", "/" + location.hash);
    } catch (_) {
      return renderLogin("The server cannot be reached.");
    }
  }
  const { page, arg } = route();
  const def = PAGES.find((p) => p.id === page && (!p.needs || allowed("GET", p.needs))) || PAGES[0];
  document.title = `${def.label} · Palisade`;
  const main = shell(def.id);
  try {
    await def.render(main, arg);
  } catch (e) {
    if (e.status === 401) return;
    main.appendChild(el("div", { class: "error" }, `Could not load this page: ${e.message}`));
  }
  refreshPending();
}

async function refreshPending() {
  const o = await optional("/api/v1/overview").catch(() => null);
  if (!o) return;
  pendingCount = o.pending_approvals;
  const link = document.getElementById("nav-approvals");
  if (!link) return;
  const old = link.querySelector(".count");
  if (old) old.remove();
  if (pendingCount) link.appendChild(el("span", { class: "count" }, pendingCount));
}

window.addEventListener("hashchange", render);

// === charts (SVG built node by node) ===

/** A round axis top above `peak` (1, 2 or 5 times a power of ten, times 4 ticks). */
function niceMax(peak, integer) {
  if (!(peak > 0)) return integer ? 4 : 1;
  const raw = peak / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return (integer ? Math.max(1, Math.ceil(step)) : step) * 4;
}

/** Colour per series key, by rank, shared by a chart and its breakdown bars. */
function colourMap(ranked) {
  const shown = ranked.slice(0, 6);
  return { shown, colour: (k) => PALETTE[shown.includes(k) ? shown.indexOf(k) : 6] };
}

/**
 * Stacked bars: one column per UTC day of the last `days` days, one colour
 * per series key. `series`: [{day: "YYYY-MM-DD", key, value}].
 */
function stackedDays(series, days, opts) {
  const fmt = opts.fmt || ((v) => String(v));
  const totals = new Map();
  for (const r of series) totals.set(r.key, (totals.get(r.key) || 0) + r.value);
  const ranked = [...totals].sort((a, b) => b[1] - a[1]).map(([k]) => k);
  const { shown, colour } = opts.colours || colourMap(ranked);
  const keys = [];
  for (let i = days - 1; i >= 0; i--) keys.push(new Date(Date.now() - i * 86400e3).toISOString().slice(0, 10));
  const perDay = new Map(keys.map((k) => [k, new Map()]));
  for (const r of series) {
    const k = shown.includes(r.key) ? r.key : "other";
    const day = perDay.get(String(r.day).slice(0, 10));
    if (day) day.set(k, (day.get(k) || 0) + r.value);
  }
  const W = 620, H = 220, L = 52, R = 8, T = 10, B = 26;
  const peak = Math.max(0, ...[...perDay.values()].map((d) => [...d.values()].reduce((s, v) => s + v, 0)));
  const max = niceMax(peak, opts.integer);
  const bw = (W - L - R) / keys.length;
  const ys = (v) => T + (H - T - B) * (1 - v / max);
  const node = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label });
  for (let g = 0; g <= 4; g++) {
    const v = (max * g) / 4;
    node.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: ys(v), y2: ys(v) }));
    node.appendChild(svg("text", { x: L - 6, y: ys(v) + 4, "text-anchor": "end" }, fmt(v)));
  }
  keys.forEach((k, i) => {
    let base = 0;
    const x = L + i * bw + bw * 0.15;
    for (const [m, n] of perDay.get(k)) {
      if (!(n > 0)) continue;
      node.appendChild(svg("rect", { x, width: bw * 0.7, y: ys(base + n), height: Math.max(1, ys(base) - ys(base + n)), fill: m === "other" ? PALETTE[6] : colour(m), rx: 2 },
        svg("title", {}, `${k} · ${m}: ${fmt(n)}`)));
      base += n;
    }
    if ((keys.length - 1 - i) % 2 === 0) node.appendChild(svg("text", { x: L + i * bw + bw / 2, y: H - 8, "text-anchor": "middle" }, k.slice(5)));
  });
  if (opts.noLegend) return [node];
  const legend = el("div", { class: "legend" }, [...shown, ...(ranked.length > shown.length ? ["other"] : [])].map((m) => {
    const sw = el("i", {});
    sw.style.background = m === "other" ? PALETTE[6] : colour(m);
    return el("span", {}, sw, m);
  }));
  return [node, legend];
}

function bars(rows, fmt) {
  // rows: [{name, value}]
  if (!rows.length) return empty("No data yet", "Nothing recorded in this window.");
  const max = Math.max(...rows.map((r) => r.value), 1);
  return el("div", { class: "bars" },
    rows.map((r, i) =>
      el("div", { class: "row" },
        el("span", { class: "name", title: r.name }, r.name),
        el("span", { class: "track" }, el("span", { class: "fill", style: null, "data-w": "" })),
        el("span", { class: "num" }, fmt ? fmt(r.value) : r.value),
      ),
    ),
  );
}

/** Set bar widths after building (CSP forbids inline style attributes, CSSOM is fine). */
function sizeBars(container, rows) {
  const max = Math.max(...rows.map((r) => r.value), 1);
  container.querySelectorAll(".fill").forEach((f, i) => {
    f.style.width = `${Math.max(2, (100 * rows[i].value) / max)}%`;
    f.style.background = rows[i].colour || PALETTE[i % PALETTE.length];
  });
}

/** Normalise a /api/v1/usage answer into [{key, requests, cost}], tolerating shapes. */
function usageRows(data, groupBy) {
  if (!data) return null;
  const list = [data.rows, data.groups, data.usage, data.items, data.buckets, data.results].find(Array.isArray)
    || (Array.isArray(data) ? data : null);
  if (!list) return null;
  return list.map((r) => ({
    key: String(r.key ?? r.group ?? r[groupBy] ?? r.day ?? r.date ?? r.name ?? "(none)"),
    requests: Number(r.requests ?? r.count ?? r.interactions ?? r.events ?? 0),
    cost: r.cost_usd ?? r.cost ?? null,
  }));
}

// === pages ===

async function overviewPage(main) {
  main.append(el("h1", {}, "Overview"), el("p", { class: "sub" }, "AI traffic across the fleet: volume, cost, apps and what needs attention."));
  const o = await api("GET", "/api/v1/overview");
  pendingCount = o.pending_approvals;
  const cards = el("div", { class: "cards", id: "overview-cards" },
    card("Pending approvals", o.pending_approvals, "apps and MCP servers", o.pending_approvals > 0, "#/approvals", "card-pending"),
    card("Devices online", `${o.devices.online} / ${o.devices.total}`, `seen in the last ${Math.round(o.devices.online_window_secs / 60)} min`, false, "#/devices", "card-online"),
    card("On an old policy", o.devices.on_old_policy, `current policy v${o.current_policy_version}`, o.devices.on_old_policy > 0, "#/devices", "card-old-policy"),
  );
  main.appendChild(cards);

  const since = new Date(Date.now() - 14 * 86400e3).toISOString();
  const q = `since=${encodeURIComponent(since)}`;
  const [byDay, byModel, byUser, byApp] = await Promise.all(
    ["day", "model", "user", "app"].map((g) => optional(`/api/v1/usage?group_by=${g}&${q}`).then((d) => usageRows(d, g)).catch(() => null)),
  );
  const na = (what) => el("div", { class: "na" }, `${what}: not available from this server (no usage API yet).`);

  // Requests per day, stacked by model (from the overview, always there).
  const series = o.requests_by_day || [];
  const total = series.reduce((s, r) => s + r.requests, 0);
  const reqPanel = el("div", { class: "panel", id: "requests-chart" }, el("h2", {}, `Requests per day by model · ${total} in ${Math.round(o.top_apps_window_secs / 86400)} days`));
  const windowDays = Math.round(o.top_apps_window_secs / 86400);
  const modelTotals = new Map();
  for (const r of series) modelTotals.set(r.model || "(unknown)", (modelTotals.get(r.model || "(unknown)") || 0) + r.requests);
  const modelColours = colourMap([...modelTotals].sort((a, b) => b[1] - a[1]).map(([m]) => m));
  if (!total) reqPanel.appendChild(empty("No requests yet", "Traffic appears once agents upload records."));
  else reqPanel.append(...stackedDays(series.map((r) => ({ day: r.day, key: r.model || "(unknown)", value: r.requests })), windowDays,
    { label: "requests per day by model", integer: true, colours: modelColours }));

  const costPanel = el("div", { class: "panel", id: "cost-chart" });
  if (byDay) {
    const days = byDay.slice().sort((a, b) => (a.key < b.key ? -1 : 1));
    const costKnown = days.some((d) => d.cost !== null);
    const costTotal = days.reduce((s, d) => s + (Number(d.cost) || 0), 0);
    costPanel.append(el("h2", {}, `Cost per day · ${costKnown ? `${money(costTotal)} in ${windowDays} days` : "no priced usage"}`),
      ...(costKnown ? stackedDays(days.map((d) => ({ day: d.key, key: "cost", value: Number(d.cost || 0) })), windowDays,
        { label: "cost per day", noLegend: true, colours: { shown: ["cost"], colour: () => PALETTE[1] }, fmt: (v) => `$${v < 1 ? v.toFixed(v === 0 ? 0 : 3) : v.toFixed(v < 10 ? 2 : 0)}` })
        : [empty("No priced usage yet", "Costs appear for models the price table knows.")]));
  } else {
    costPanel.append(el("h2", {}, "Cost per day"), na("Cost over time"));
  }
  main.appendChild(el("div", { class: "grid2" }, reqPanel, costPanel));

  // Breakdowns: the usage API when present; models and apps from the overview otherwise.
  const models = new Map();
  for (const r of series) models.set(r.model || "(unknown)", (models.get(r.model || "(unknown)") || 0) + r.requests);
  const fallback = {
    model: [...models].map(([key, requests]) => ({ key, requests, cost: null })),
    app: (o.top_apps || []).map((a) => ({ key: a.app, requests: a.requests, cost: null })),
  };
  const breakdown = el("div", { class: "grid2" });
  for (const [title, rows, fb] of [["By model", byModel, fallback.model], ["By user", byUser, null]]) {
    const panel = el("div", { class: "panel" }, el("h2", {}, `${title} · requests${rows ? " (cost)" : ""}`));
    const use = rows || fb;
    if (!use) panel.appendChild(na(title));
    else {
      const top = use.slice().sort((a, b) => b.requests - a.requests).slice(0, 8).map((r) => ({ name: r.key, value: r.requests, cost: r.cost }));
      const b = bars(top, (v) => v);
      if (title === "By model") top.forEach((r) => (r.colour = modelColours.colour(r.name)));
      top.forEach((r, i) => {
        const num = b.querySelectorAll(".num")[i];
        if (num && r.cost !== null && r.cost !== undefined) num.textContent = `${r.value} (${money(r.cost)})`;
      });
      panel.appendChild(b);
      if (top.length) sizeBars(b, top);
    }
    breakdown.appendChild(panel);
  }
  main.appendChild(breakdown);

  const apps = (byApp || fallback.app).slice().sort((a, b) => b.requests - a.requests).slice(0, 10).map((a) => ({ name: a.key, value: a.requests }));
  const appsPanel = el("div", { class: "panel", id: "top-apps" }, el("h2", {}, `Top apps · last ${Math.round(o.top_apps_window_secs / 86400)} days · requests`));
  const appBars = bars(apps);
  appsPanel.appendChild(appBars);
  if (apps.length) sizeBars(appBars, apps);
  const pendingPanel = el("div", { class: "panel" }, el("h2", {}, "Waiting for a decision"));
  const pend = await optional("/api/v1/approvals?status=pending&limit=5");
  if (!pend || !pend.items.length) pendingPanel.appendChild(empty("Nothing pending", "New apps and MCP servers appear here when devices report them."));
  else {
    pendingPanel.appendChild(el("table", {}, el("tbody", {}, pend.items.map((i) =>
      el("tr", {}, el("td", {}, badge(i.kind === "mcp" ? "MCP" : "app", "")), el("td", {}, i.name), el("td", { class: "num muted" }, `${i.device_count} device(s)`))))));
    pendingPanel.appendChild(el("p", {}, el("a", { href: "#/approvals" }, "Open the approvals queue →")));
  }
  main.appendChild(el("div", { class: "grid2" }, appsPanel, pendingPanel));
}

function card(label, value, hint, attention, href, id) {
  return el("a", { class: attention ? "card attention" : "card", href, id },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "hint" }, hint));
}

let approvalsTab = "pending";

async function approvalsPage(main) {
  main.append(el("h1", {}, "Approvals"), el("p", { class: "sub" }, "AI apps and MCP servers seen on devices. A decision publishes a new policy to every agent."));
  const tabs = el("div", { class: "tabs" }, ["pending", "approved", "denied", "all"].map((t) =>
    el("button", { class: t === approvalsTab ? "on" : "", id: `tab-${t}`, onclick: () => { approvalsTab = t; render(); } }, t[0].toUpperCase() + t.slice(1))));
  main.appendChild(tabs);
  const q = approvalsTab === "all" ? "" : `?status=${approvalsTab}`;
  const data = await api("GET", `/api/v1/approvals${q}`);
  const panel = el("div", { class: "panel" });
  main.appendChild(panel);
  if (!data.items.length) {
    panel.appendChild(empty(approvalsTab === "pending" ? "Nothing waiting" : "No items", "Items appear once a device reports an AI app or MCP server."));
    return;
  }
  const decide = async (item, verb, row) => {
    row.querySelectorAll("button").forEach((b) => (b.disabled = true));
    try {
      const r = await api("POST", `/api/v1/approvals/${item.kind}/${encodeURIComponent(item.id)}/${verb}`, {});
      toast(`${item.name}: ${r.status}${r.published ? ` · policy v${r.policy_version} published` : ""}`);
      render();
    } catch (e) {
      if (e.status !== 401) toast(`Could not ${verb} ${item.name}: ${e.message}`, true);
      row.querySelectorAll("button").forEach((b) => (b.disabled = false));
    }
  };
  const tbody = el("tbody", {});
  for (const item of data.items) {
    const row = el("tr", { "data-id": item.id, class: "approval-row" });
    append(row, [
      el("td", {}, badge(item.kind === "mcp" ? "MCP server" : "App", "")),
      el("td", {}, el("b", {}, item.name), el("div", { class: "muted mono clip", title: item.id }, item.id)),
      el("td", { class: "num" }, item.device_count),
      el("td", {}, ago(item.first_seen)),
      el("td", {}, ago(item.last_seen)),
      el("td", {}, badge(item.status), item.decided_by ? el("div", { class: "muted" }, `by ${item.decided_by}`) : null),
      el("td", {}, allowed("POST", `/api/v1/approvals/${item.kind}/x/approve`)
        ? el("div", { class: "actions" },
          item.status !== "approved" ? el("button", { class: "approve", onclick: () => decide(item, "approve", row) }, "Approve") : null,
          item.status !== "denied" ? el("button", { class: "deny", onclick: () => decide(item, "deny", row) }, "Deny") : null)
        : el("span", { class: "muted" }, "view only")),
    ]);
    tbody.appendChild(row);
  }
  panel.appendChild(el("table", { id: "approvals-table" },
    el("thead", {}, el("tr", {}, ["Kind", "Name", "Devices", "First seen", "Last seen", "Status", ""].map((h, i) => el("th", { class: i === 2 ? "num" : "" }, h)))),
    tbody));
}

// Events: filters, cursor paging, detail view.
const eventState = { filters: {}, cursors: [], cursor: null, cache: new Map(), localSearch: false };
const EVENT_FILTERS = [
  ["q", "Search", "search", "text in prompts, responses, models…"],
  ["user", "User", "text", "email or OS user"],
  ["app", "App", "text", ""],
  ["model", "Model", "text", ""],
  ["provider", "Provider", "text", ""],
  ["detector", "Finding", "text", "detector, e.g. email"],
  ["decision", "Decision", "select", ["", "allow", "redact", "block"]],
  ["window", "Time", "select", ["", "1h", "24h", "7d", "30d"]],
];
const WINDOW_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

/** The form's filters as API query parameters (`window` becomes `since`). */
function apiFilters(f) {
  const out = { ...f };
  delete out.window;
  if (WINDOW_MS[f.window]) out.since = new Date(Date.now() - WINDOW_MS[f.window]).toISOString();
  return out;
}

async function eventsPage(main, arg) {
  if (arg) return eventDetail(main, arg);
  main.append(el("h1", {}, "Events"), el("p", { class: "sub" }, "Every recorded AI interaction and discovery, newest data as agents upload it."));
  const form = el("form", { class: "filters", id: "event-filters" });
  for (const [key, label, type, extra] of EVENT_FILTERS) {
    // Viewers may not read prompt text, so the server refuses their text search.
    if (key === "q" && session.role === "viewer") continue;
    const input = type === "select"
      ? el("select", { name: key, id: `f-${key}` }, extra.map((o) => el("option", { value: o }, o ? (key === "window" ? `last ${o}` : o) : "any")))
      : el("input", { name: key, id: `f-${key}`, type, placeholder: extra, value: eventState.filters[key] || "" });
    if (type === "select") input.value = eventState.filters[key] || "";
    form.appendChild(el("label", {}, label, input));
  }
  form.appendChild(el("button", { class: "primary", type: "submit", id: "search" }, "Search"));
  if (allowed("GET", "/api/v1/export")) {
    // A plain download over the session cookie (a GET: no CSRF token needed); audited as an export.
    const qs = new URLSearchParams({ ...apiFilters(eventState.filters), format: "jsonl" });
    form.appendChild(el("a", { class: "btn", id: "export", href: `/api/v1/export?${qs}`, download: "palisade-events.jsonl" }, "Export JSONL"));
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    eventState.filters = Object.fromEntries([...fd.entries()].filter(([, v]) => String(v).trim() !== "").map(([k, v]) => [k, String(v).trim()]));
    eventState.cursors = [];
    eventState.cursor = null;
    render();
  });
  main.appendChild(form);
  const panel = el("div", { class: "panel", id: "events-panel" });
  main.appendChild(panel);
  const page = await loadEvents();
  if (page.notice) panel.appendChild(el("div", { class: "notice" }, page.notice));
  if (!page.events.length) {
    panel.appendChild(empty("No events match", Object.keys(eventState.filters).length ? "Try fewer filters." : "Records appear once agents upload them."));
  } else {
    const tbody = el("tbody", {});
    for (const e of page.events) {
      eventState.cache.set(String(e.id), e);
      const prompt = e.request && typeof e.request.prompt === "string" ? e.request.prompt : null;
      tbody.appendChild(el("tr", { class: "clickable event-row", "data-id": e.id, onclick: () => (location.hash = `#/events/${encodeURIComponent(e.id)}`) },
        el("td", { class: "muted nowrap" }, shortTime(e.time)),
        el("td", {}, e.kind),
        el("td", {}, (e.user && (e.user.email || e.user.os_user)) || "-"),
        el("td", {}, (e.app && (e.app.name || e.app.id || e.app.exe)) || "-"),
        el("td", {}, e.model || e.provider || "-"),
        el("td", { class: "clip" }, prompt === null ? el("span", { class: "muted" }, e.request && "prompt" in e.request ? "(hidden)" : "-") : prompt),
        el("td", {}, e.policy ? badge(e.policy.decision) : "-"),
        el("td", { class: "num" }, money(e.cost_usd)),
      ));
    }
    panel.appendChild(el("table", { id: "events-table" },
      el("thead", {}, el("tr", {}, ["Time", "Kind", "User", "App", "Model", "Prompt", "Decision", "Cost"].map((h) => el("th", { class: h === "Cost" ? "num" : "" }, h)))),
      tbody));
  }
  const pager = el("div", { class: "pager" },
    el("button", { id: "newer", disabled: !eventState.cursors.length, onclick: () => { eventState.cursor = eventState.cursors.pop() ?? null; render(); } }, "← Previous"),
    el("button", { id: "older", disabled: !page.next, onclick: () => { eventState.cursors.push(eventState.cursor); eventState.cursor = page.next; render(); } }, "Next →"));
  panel.appendChild(pager);
}

/** One page of events. Uses the server's search when it has it; an older
 * server that refuses a filter gets the filter applied to the loaded page
 * instead, with a visible notice. */
async function loadEvents() {
  const f = apiFilters(eventState.filters);
  const params = new URLSearchParams({ ...f, limit: "50" });
  if (eventState.cursor !== null) params.set(typeof eventState.cursor === "number" ? "after" : "cursor", String(eventState.cursor));
  try {
    const data = await api("GET", `/api/v1/events?${params}`);
    return { events: data.events || [], next: data.next_cursor ?? (data.events && data.events.length === 50 ? data.next_after : null) };
  } catch (e) {
    if (e.status !== 400 || !/unknown field/.test(e.message)) throw e;
  }
  // Fallback: only the filters this server knows, the rest matched here.
  const known = ["provider", "model", "since"];
  const p2 = new URLSearchParams({ limit: "200" });
  for (const k of known) if (f[k]) p2.set(k, f[k]);
  if (typeof eventState.cursor === "number") p2.set("after", String(eventState.cursor));
  const data = await api("GET", `/api/v1/events?${p2}`);
  const needle = (f.q || "").toLowerCase();
  const events = (data.events || []).filter((e) => {
    const text = JSON.stringify(e).toLowerCase();
    if (needle && !text.includes(needle)) return false;
    if (f.user && !JSON.stringify(e.user || {}).toLowerCase().includes(f.user.toLowerCase())) return false;
    if (f.app && !JSON.stringify(e.app || {}).toLowerCase().includes(f.app.toLowerCase())) return false;
    if (f.decision && !(e.policy && e.policy.decision === f.decision)) return false;
    return true;
  });
  return {
    events,
    next: data.events && data.events.length === 200 ? data.next_after : null,
    notice: "This server has no server-side search yet: filters are applied to the loaded page only.",
  };
}

async function eventDetail(main, id) {
  main.appendChild(el("p", {}, el("a", { href: "#/events", id: "back" }, "← All events")));
  let e = eventState.cache.get(id) || null;
  if (!e) {
    e = await optional(`/api/v1/events/${encodeURIComponent(id)}`);
    if (e && e.event) e = e.event;
  }
  if (!e) {
    main.appendChild(el("div", { class: "panel" }, empty("Event not available", "Open it from the events list (this server has no single-event endpoint).")));
    return;
  }
  const who = (e.user && (e.user.email || e.user.os_user)) || "-";
  const app = (e.app && (e.app.name || e.app.id || e.app.exe)) || "-";
  main.append(
    el("div", { class: "head" },
      el("div", {}, el("h1", {}, `${e.kind}${e.model ? ` · ${e.model}` : ""}`), el("p", { class: "sub mono" }, e.id)),
      e.policy ? badge(e.policy.decision) : null),
  );
  const facts = el("dl", { class: "kv", id: "event-facts" });
  const fact = (k, v) => append(facts, [el("dt", {}, k), el("dd", {}, v ?? "-")]);
  fact("Time", fmtTime(e.time));
  fact("User", who);
  fact("Device", e.device ? `${e.device.hostname || ""} (${e.device.os || ""}) ${e.device.id || ""}` : "-");
  fact("App", app);
  if (e.provider) fact("Provider", `${e.provider} · ${e.host || ""} · ${e.endpoint || ""}`);
  if (e.usage) fact("Tokens", `${e.usage.input_tokens ?? "?"} in · ${e.usage.output_tokens ?? "?"} out`);
  if ("cost_usd" in e) fact("Cost", money(e.cost_usd));
  if (e.policy) fact("Policy", `${e.policy.decision}${e.policy.rule ? ` (${e.policy.rule})` : ""} · v${e.policy.version}`);
  if (e.timing) fact("Timing", `${e.timing.duration_ms ?? "?"} ms total · ${e.timing.ttfb_ms ?? "?"} ms to first byte`);
  if (e.error) fact("Error", e.error);
  main.appendChild(el("div", { class: "panel" }, el("h2", {}, "Interaction"), facts));

  const texts = el("div", { class: "grid2" });
  const prompt = e.request ? e.request.prompt : undefined;
  const answer = e.response ? e.response.text : undefined;
  for (const [title, v, id] of [["Prompt", prompt, "event-prompt"], ["Response", answer, "event-response"]]) {
    texts.appendChild(el("div", { class: "panel" }, el("h2", {}, title),
      v === null ? el("div", { class: "muted", id }, "Hidden for your role.")
        : v === undefined ? el("div", { class: "muted", id }, "Not captured.")
          : el("div", { class: "prompt", id }, typeof v === "string" ? v : JSON.stringify(v, null, 2))));
  }
  main.appendChild(texts);

  const findings = el("div", { class: "panel", id: "event-findings" }, el("h2", {}, "Findings"));
  if (!e.findings || !e.findings.length) findings.appendChild(empty("No findings", "No detector matched this interaction."));
  else findings.appendChild(el("table", {},
    el("thead", {}, el("tr", {}, ["Detector", "Action", "Location", "Count"].map((h) => el("th", {}, h)))),
    el("tbody", {}, e.findings.map((f) => el("tr", {}, el("td", {}, f.detector), el("td", {}, badge(f.action)), el("td", {}, `${f.location}${f.path ? ` ${f.path}` : ""}`), el("td", {}, f.count))))));
  main.appendChild(findings);
  main.appendChild(el("div", { class: "panel" }, el("h2", {}, "Whole record"), el("pre", { class: "json", id: "event-json" }, JSON.stringify(e, null, 2))));
}

function confirmDialog(title, text, verb) {
  return new Promise((resolve) => {
    const done = (v) => { bg.remove(); resolve(v); };
    const bg = el("div", { class: "modal-bg", id: "confirm" },
      el("div", { class: "modal", role: "dialog", "aria-modal": "true" },
        el("h2", {}, title), el("p", {}, text),
        el("div", { class: "actions" },
          el("button", { onclick: () => done(false), id: "confirm-cancel" }, "Cancel"),
          el("button", { class: "danger", onclick: () => done(true), id: "confirm-ok" }, verb))));
    document.body.appendChild(bg);
  });
}

async function devicesPage(main) {
  main.append(el("h1", {}, "Devices"), el("p", { class: "sub" }, "Enrolled laptops, when they were last seen and which policy they run."));
  const [data, o] = await Promise.all([api("GET", "/api/v1/devices"), optional("/api/v1/overview")]);
  const current = o ? o.current_policy_version : null;
  const windowMs = (o ? o.devices.online_window_secs : 300) * 1000;
  const panel = el("div", { class: "panel" });
  main.appendChild(panel);
  if (!data.devices.length) {
    panel.appendChild(empty("No devices yet", "Create an enrollment token (POST /api/v1/enrollment-tokens) and start an agent with it."));
    return;
  }
  const tbody = el("tbody", {});
  for (const d of data.devices) {
    const online = d.last_seen && Date.now() - new Date(d.last_seen).getTime() < windowMs && !d.revoked;
    const old = current !== null && (d.applied_policy_version ?? 0) < current;
    tbody.appendChild(el("tr", { class: "device-row", "data-id": d.id },
      el("td", {}, el("span", { class: online ? "dot on" : "dot" }), el("b", {}, d.hostname), el("div", { class: "muted mono" }, d.id)),
      el("td", {}, d.os),
      el("td", {}, d.owner_email || "-"),
      el("td", {}, d.agent_version),
      el("td", {}, ago(d.last_seen)),
      el("td", {}, d.applied_policy_version ? `v${d.applied_policy_version}` : "none", old && !d.revoked ? [" ", badge("old", "warn")] : null),
      el("td", {}, d.revoked ? badge("revoked") : badge("active", "ok")),
      el("td", {}, allowed("POST", "/api/v1/devices/x/revoke") && !d.revoked ? el("button", { class: "danger", onclick: async () => {
        if (!(await confirmDialog("Revoke device?", `${d.hostname} will lose access to the control plane at once. Its agent must enroll again.`, "Revoke"))) return;
        try {
          await api("POST", `/api/v1/devices/${encodeURIComponent(d.id)}/revoke`);
          toast(`${d.hostname} revoked`);
          render();
        } catch (e) {
          if (e.status !== 401) toast(`Could not revoke: ${e.message}`, true);
        }
      } }, "Revoke") : null),
    ));
  }
  panel.appendChild(el("table", { id: "devices-table" },
    el("thead", {}, el("tr", {}, ["Device", "OS", "Owner", "Agent", "Last seen", "Policy", "Status", ""].map((h) => el("th", {}, h)))),
    tbody));
}

function diffView(d) {
  const box = el("div", {});
  const changes = [
    ...(d.changed || []).map((c) => ["changed", c.path, JSON.stringify(c.old), JSON.stringify(c.new)]),
    ...(d.added || []).map((c) => ["added", c.path, "", JSON.stringify(c.value)]),
    ...(d.removed || []).map((c) => ["removed", c.path, JSON.stringify(c.value), ""]),
  ];
  if (!changes.length) return append(box, [el("div", { class: "okbox" }, "No changes.")]);
  box.appendChild(el("table", { class: "changes" },
    el("thead", {}, el("tr", {}, ["", "Path", "Old", "New"].map((h) => el("th", {}, h)))),
    el("tbody", {}, changes.map(([k, p, a, b]) => el("tr", {},
      el("td", {}, badge(k, k === "added" ? "ok" : k === "removed" ? "bad" : "warn")),
      el("td", { class: "mono" }, p), el("td", { class: "mono clip", title: a }, a), el("td", { class: "mono clip", title: b }, b))))));
  if (d.unified) {
    const lines = el("div", { class: "diff", id: "unified-diff" });
    for (const line of d.unified.split("\n")) {
      const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
      lines.appendChild(el("div", { class: cls }, line || " "));
    }
    box.append(el("h2", { style: null }, "Text diff"), lines);
  }
  return box;
}

async function policyPage(main) {
  main.append(el("h1", {}, "Policy"), el("p", { class: "sub" }, "What agents intercept, allow and block. Validate a draft, review the diff, then publish it to every device."));
  const [cur, hist] = await Promise.all([api("GET", "/api/v1/policy"), optional("/api/v1/policy/versions?limit=50")]);
  const editable = allowed("PUT", "/api/v1/policy") && allowed("POST", "/api/v1/policy/validate");
  const text = JSON.stringify(cur.document, null, 2);
  const area = el("textarea", { class: "code", id: "policy-text", spellcheck: "false", readonly: !editable }, text);
  const result = el("div", { id: "policy-result" });
  let validated = null;
  const save = el("button", { class: "primary", id: "policy-save", disabled: true, onclick: async () => {
    if (validated !== area.value) return;
    save.disabled = true;
    try {
      const r = await api("PUT", "/api/v1/policy", area.value);
      toast(`Policy version ${r.version} published`);
      render();
    } catch (e) {
      if (e.status !== 401) clear(result).appendChild(el("div", { class: "error" }, `Not saved: ${e.message}`));
    }
  } }, "Save and publish");
  const validate = el("button", { id: "policy-validate", onclick: async () => {
    const v = await api("POST", "/api/v1/policy/validate", area.value);
    clear(result);
    if (!v.valid) {
      validated = null;
      save.disabled = true;
      result.append(el("div", { class: "error" }, `${v.errors.length} problem(s): nothing can be saved until they are fixed.`),
        el("ul", { class: "errors", id: "policy-errors" }, v.errors.map((e) => el("li", {}, e))));
    } else {
      validated = area.value;
      save.disabled = false;
      result.append(el("div", { class: "okbox", id: "policy-valid" }, `Valid. Changes against the current version v${cur.version}:`));
    }
    if (v.diff) result.appendChild(diffView(v.diff));
  } }, "Validate");
  area.addEventListener("input", () => { if (area.value !== validated) save.disabled = true; });
  const editor = el("div", { class: "panel" },
    el("div", { class: "head" }, el("h2", {}, `Current: version ${cur.version}${cur.author ? ` by ${cur.author}` : ""}`),
      editable ? el("div", { class: "actions" }, validate, save) : el("span", { class: "muted" }, "read only for your role")),
    area, result);
  const history = el("div", { class: "panel", id: "policy-history" }, el("h2", {}, "History"));
  const diffBox = el("div", { id: "history-diff" });
  if (!hist) history.appendChild(el("div", { class: "na" }, "Version history not available."));
  else if (!hist.versions.length) history.appendChild(empty("No versions yet", "The built-in default applies until a policy is saved."));
  else {
    history.appendChild(el("table", {}, el("thead", {}, el("tr", {}, ["Version", "Author", "Time", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, hist.versions.map((v) => el("tr", {},
        el("td", {}, `v${v.version}`, v.version === hist.current ? [" ", badge("current", "ok")] : null),
        el("td", {}, v.author), el("td", {}, fmtTime(v.created_at)),
        el("td", {}, v.version > 1 ? el("button", { onclick: async () => {
          const d = await api("GET", `/api/v1/policy/diff?from=${v.version - 1}&to=${v.version}`);
          clear(diffBox).append(el("h2", {}, `Changes in v${v.version} (from v${v.version - 1})`), diffView(d));
        } }, "Diff") : null))))));
    history.appendChild(diffBox);
  }
  main.append(editor, history);
}

async function auditPage(main) {
  main.append(el("h1", {}, "Admin audit log"), el("p", { class: "sub" }, "Every change, decision, sign-in and refused call, hash-chained and signed."));
  const first = await api("GET", "/api/v1/admin-audit?limit=1");
  const head = first.head;
  const verify = allowed("GET", "/api/v1/admin-audit/verify") ? await optional("/api/v1/admin-audit/verify") : null;
  const status = el("div", { class: "panel", id: "audit-status" });
  if (verify && verify.ok !== undefined) {
    status.appendChild(verify.ok
      ? el("div", { class: "okbox", id: "audit-verified" }, `Chain verified: ${verify.entries} entries intact, signed with this server's key (head ${verify.head_seq ?? "-"}, ${String(verify.head_hash || "").slice(0, 16)}…).`)
      : el("div", { class: "error", id: "audit-broken" }, `Chain broken: ${verify.error || "verification failed"}. Export the log and run palisade audit verify.`));
  } else {
    status.appendChild(el("div", { class: "muted" }, head ? `Chain head: entry ${head.seq}, hash ${head.hash.slice(0, 16)}…. Verify it with palisade audit verify.` : "The log is empty."));
  }
  main.appendChild(status);
  const panel = el("div", { class: "panel" });
  main.appendChild(panel);
  if (!head) return panel.appendChild(empty("No entries yet", ""));
  const pageSize = 100;
  const after = Math.max(0, head.seq - pageSize);
  const data = await api("GET", `/api/v1/admin-audit?after_seq=${after}&limit=${pageSize}`);
  const rows = data.entries.slice().reverse();
  panel.appendChild(el("table", { id: "audit-table" },
    el("thead", {}, el("tr", {}, ["#", "Time", "Actor", "Action", "Target", "Outcome", "From", "Details"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((e) => el("tr", {},
      el("td", { class: "muted" }, e.seq),
      el("td", { class: "nowrap" }, shortTime(e.time)),
      el("td", {}, e.actor ? e.actor.id : "-"),
      el("td", {}, e.action),
      el("td", { class: "clip narrow", title: e.target ? e.target.id : "" }, e.target ? `${e.target.type} ${e.target.id}` : "-"),
      el("td", {}, badge(e.outcome)),
      el("td", { class: "muted" }, e.ip || "-"),
      el("td", { class: "mono clip narrow", title: JSON.stringify(e.details) }, JSON.stringify(e.details)))))));
  if (head.seq > pageSize) panel.appendChild(el("p", { class: "muted" }, `Showing the newest ${pageSize} of ${head.seq} entries. Export all with GET /api/v1/admin-audit/export.`));
}

render();
