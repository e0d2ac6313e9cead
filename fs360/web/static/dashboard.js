// fs360's dashboard: polls /api/status and draws it. Every request sends the page's token as a
// bearer header; every text goes in through textContent (names come from users' files).
"use strict";
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const POLL_MS = 2000;
const FILES_SHOWN = 200;
const NEEDS_YOU = ["rejected", "held", "interrupted", "lost"];
const PRIORITY = {uploading: 0, failed: 1, rejected: 2, held: 2, interrupted: 2, lost: 2};
let paused = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${Math.round(n)} B`;
}

function duration(s) {
  if (!s) return "";
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
}

function bar(done, total) {
  const fraction = total > 0 ? Math.min(1, done / total) : 0;
  const inner = el("div");
  inner.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el("div", {class: fraction >= 1 ? "bar done" : "bar", title: `${(fraction * 100).toFixed(0)}%`}, inner);
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({headers: {Authorization: `Bearer ${TOKEN}`,
                                                              "Content-Type": "application/json"}}, options));
  const body = await response.json();
  if (!response.ok && !body.error) body.error = `HTTP ${response.status}`;
  return body;
}

function fileRow(file, mountPaused) {
  let state = file.local_only ? "local only" : file.state;
  if (mountPaused && (state === "uploading" || state === "pending")) state = "paused";
  let why = file.error || "";
  if (file.next_attempt_in !== null && file.next_attempt_in !== undefined) why = `retry in ${Math.round(file.next_attempt_in)}s: ${why}`;
  const name = file.server_name && file.server_name !== file.name ? `${file.name} → ${file.server_name}` : file.name;
  return el("tr", {},
    el("td", {class: "name", title: name}, name), el("td", {class: `state-${state}`}, state),
    el("td", {}, bar(file.sent, file.size)), el("td", {class: "num"}, `${bytes(file.sent)} / ${bytes(file.size)}`),
    el("td", {class: "num"}, file.rate ? `${bytes(file.rate)}/s` : ""), el("td", {class: "num"}, duration(file.eta_seconds)),
    el("td", {class: "why"}, why));
}

function projectLine(project) {
  if (!project) return el("div", {class: "project"}, el("span", {}, "project"), el("span", {class: "more"}, "drop a .create to make the project"), "");
  if (project.cancelled) return el("div", {class: "project"}, el("span", {}, "project cancelled"), el("span", {class: "more"}, project.cancelled), "");
  if (project.refused) return el("div", {class: "project"}, el("span", {}, ".create refused"), el("span", {class: "state-rejected"}, project.refused), "");
  if (project.state === "failed") return el("div", {class: "project"}, el("span", {}, "project failed"), el("span", {class: "state-rejected"}, project.error || ""), "");
  if (project.state === "waiting") return el("div", {class: "project"}, el("span", {}, "project requested"), el("span", {class: "more"}, project.waiting_for || "creating"), "");
  const link = project.url ? el("a", {href: project.url, target: "_blank", rel: "noreferrer noopener"}, "open the project page") : "";
  return el("div", {class: "project"}, el("span", {}, `project ${project.status >= 100 ? "ready" : "processing"} ${project.status}%`),
            bar(project.status, 100), link);
}

function sessionBox(session, mountPaused) {
  const totals = session.totals;
  const head = el("h2", {}, session.session,
    el("small", {}, `${totals.complete}/${totals.files} files · ${bytes(totals.sent)} / ${bytes(totals.bytes)}` +
       (totals.rate ? ` · ${bytes(totals.rate)}/s` : "") + (totals.eta_seconds ? ` · eta ${duration(totals.eta_seconds)}` : "")));
  const files = session.files.map((f, i) => [f, i]);
  files.sort((a, b) => ((PRIORITY[a[0].state] ?? 3) - (PRIORITY[b[0].state] ?? 3)) || a[1] - b[1]);
  const shown = files.slice(0, FILES_SHOWN).sort((a, b) => a[1] - b[1]).map(([f]) => fileRow(f, mountPaused));
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["File", "State", "Progress", "Sent", "Rate", "ETA", "Why"].map(h => el("th", {}, h)))),
                   el("tbody", {}, ...shown));
  const more = files.length > FILES_SHOWN ? el("p", {class: "more"}, `… and ${files.length - FILES_SHOWN} more files`) : null;
  return el("section", {class: "session", "data-session": session.session}, head, bar(totals.sent, totals.bytes),
            projectLine(session.project), table, more);
}

function needsYou(doc) {
  const items = [];
  for (const s of doc.sessions) {
    if (s.project && s.project.refused) items.push(el("li", {}, el("b", {}, `${s.session}/.create`), `: ${s.project.refused}`));
    for (const f of s.files) {
      if (NEEDS_YOU.includes(f.state)) items.push(el("li", {}, el("b", {}, `${s.session}/${f.name}`), ` ${f.state}: ${f.error || "see the log"}`));
    }
  }
  return items;
}

function plot(points) {
  const svg = document.getElementById("plot");
  const max = Math.max(1, ...points.map(p => p.rate));
  const step = 600 / Math.max(points.length - 1, 1);
  const coords = points.map((p, i) => `${(i * step).toFixed(1)},${(158 - p.rate / max * 150).toFixed(1)}`);
  const ns = "http://www.w3.org/2000/svg";
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", `0,160 ${coords.join(" ")} 600,160`);
  area.setAttribute("fill", "#bae6fd");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", coords.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#0e7490");
  line.setAttribute("stroke-width", "2");
  svg.replaceChildren(area, line);
  const peak = Math.max(0, ...points.map(p => p.rate));
  document.getElementById("plot-max").textContent = peak ? `peak ${bytes(peak)}/s` : "nothing sent in the last hour";
}

function draw(doc) {
  paused = doc.paused;
  const t = doc.totals;
  document.getElementById("summary").textContent =
    `${paused ? "paused" : (t.by_state.uploading ? "uploading" : "idle")} · ${doc.sessions.length} session(s) · ` +
    `${t.complete}/${t.files} files · ${bytes(t.sent)} / ${bytes(t.bytes)}` + (t.rate ? ` · ${bytes(t.rate)}/s` : "") +
    (t.eta_seconds ? ` · eta ${duration(t.eta_seconds)}` : "") + ` · bwlimit ${doc.bwlimit}`;
  document.getElementById("pause").textContent = paused ? "Resume" : "Pause";
  const bwlimit = document.getElementById("bwlimit");
  if (document.activeElement !== bwlimit) bwlimit.value = doc.bwlimit;
  const items = needsYou(doc);
  document.getElementById("needs-you").hidden = items.length === 0;
  document.getElementById("needs-you-list").replaceChildren(...items);
  plot(doc.rate_history || []);
  const sessions = doc.sessions.map(s => sessionBox(s, paused));
  document.getElementById("sessions").replaceChildren(...(sessions.length ? sessions : [el("p", {class: "more"}, "no sessions: make a folder in the mount and copy files into it")]));
  document.body.dataset.rendered = "yes";
}

async function refresh() {
  try {
    const doc = await api("/api/status");
    if (doc.error) throw new Error(doc.error);
    draw(doc);
  } catch (error) {
    document.getElementById("summary").textContent = `cannot reach the mount's daemon (${error.message}): is it still mounted?`;
  }
}

async function change(path, body) {
  const answer = await api(path, {method: "POST", body: JSON.stringify(body || {})});
  document.getElementById("control-message").textContent = answer.ok ? "" : answer.error;
  refresh();
}

document.getElementById("pause").addEventListener("click", () => change(paused ? "/api/resume" : "/api/pause"));
document.getElementById("set-bwlimit").addEventListener("click",
  () => change("/api/bwlimit", {bwlimit: document.getElementById("bwlimit").value}));
refresh();
setInterval(refresh, POLL_MS);
