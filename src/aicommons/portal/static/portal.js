// aicommons portal: live fragments, confirmations that show the plan, jobs streamed as they run.
// Every change sends this page's CSRF token; nothing secret is kept in the page unless revealed.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]')?.content || "";

async function api(method, url, body) {
  const r = await fetch(url, {method, credentials: "same-origin",
    headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json", "Accept": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(data.error || (data.detail && JSON.stringify(data.detail)) || r.statusText);
  return data;
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// ---- live fragments: [data-fragment] is re-rendered by the server every data-every seconds
async function refresh(el) {
  const r = await fetch(el.dataset.fragment, {credentials: "same-origin"});
  if (r.ok) el.innerHTML = await r.text();
}
function refreshAll() { document.querySelectorAll("[data-fragment]").forEach(refresh); }
// read from another store (the gateway's usage): loaded after the page, never holding it up
document.querySelectorAll("[data-fragment][data-load]").forEach(refresh);
document.querySelectorAll("[data-fragment][data-every]").forEach(el => {
  const every = Math.max(2, Number(el.dataset.every) || 10) * 1000;
  setInterval(() => { if (!document.hidden) refresh(el); }, every);
});

// ---- confirmation with the plan it will carry out
function changesHtml(changes) {
  if (!changes.length) return "<p>Nothing to change.</p>";
  return '<ul class="changes">' + changes.map(c =>
    `<li><span class="act-${esc(c.action)}">${esc(c.action)}</span><span>${esc(c.address)}</span><small>${esc(c.reason)}</small></li>`
  ).join("") + "</ul>";
}
function confirmDialog(title, html, okLabel) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").innerHTML = html;
  document.getElementById("confirm-ok").textContent = okLabel || "Carry it out";
  d.returnValue = "";
  d.showModal();
  return new Promise(resolve => d.addEventListener("close", () => resolve(d.returnValue === "ok"), {once: true}));
}

// ---- jobs: progress streamed from /api/jobs/{id}/events
function watchJob(job) {
  const box = document.getElementById("job"), log = document.getElementById("job-log");
  const status = document.getElementById("job-status");
  document.getElementById("job-title").textContent = job.title;
  status.textContent = "running"; status.className = "pill slow";
  log.textContent = ""; box.hidden = false;
  const es = new EventSource(`/api/jobs/${job.id}/events`);
  es.onmessage = e => { log.textContent += JSON.parse(e.data).line + "\n"; log.scrollTop = log.scrollHeight; };
  es.addEventListener("end", e => {
    const st = JSON.parse(e.data).status;
    status.textContent = st; status.className = "pill " + (st === "ok" ? "ok" : "failed");
    box.dataset.done = st;
    es.close(); refreshAll();
  });
  box.dataset.done = "";
}
document.getElementById("job-close")?.addEventListener("click", () => { document.getElementById("job").hidden = true; });

function failed(err) {
  const box = document.getElementById("job");
  document.getElementById("job-title").textContent = "Not done";
  document.getElementById("job-status").textContent = "refused";
  document.getElementById("job-status").className = "pill failed";
  document.getElementById("job-log").textContent = err.message;
  box.hidden = false;
}

async function userAction(action, name, email) {
  try {
    const p = await api("POST", "/api/users/preview", {action, name, email: email || null});
    const verb = {add: "Add", remove: "Remove", suspend: "Suspend", resume: "Resume"}[action];
    const extra = action === "remove" ? "<p><b>Their data is archived first, then dropped.</b></p>" : "";
    if (!await confirmDialog(`${verb} ${name}?`, extra + `<p>This plan will be carried out:</p>` + changesHtml(p.changes), `${verb} ${name}`)) return;
    const url = action === "add" ? "/api/users" : `/api/users/${encodeURIComponent(name)}/${action}`;
    const body = action === "add" ? {name, email: email || null} : (action === "remove" ? {} : undefined);
    watchJob(await api("POST", url, body));
    if (action === "add") document.getElementById("add-form")?.reset();
  } catch (err) { failed(err); }
}

document.addEventListener("click", async ev => {
  const t = ev.target.closest("button");
  if (!t) return;
  if (t.dataset.userAction) { ev.preventDefault(); return userAction(t.dataset.userAction, t.dataset.name); }
  if (t.dataset.backupVerify) {
    try { watchJob(await api("POST", `/api/backups/${encodeURIComponent(t.dataset.backupVerify)}/verify`)); } catch (err) { failed(err); }
  }
  if (t.dataset.backupRestore) {
    const user = prompt(`Restore which user's data from ${t.dataset.backupRestore}? Their current data is replaced.`);
    if (!user) return;
    if (!await confirmDialog(`Restore ${user}?`, `<p>${esc(user)}'s databases, keys, collections and buckets are replaced with backup ${esc(t.dataset.backupRestore)}. Nobody else is touched.</p>`, "Restore")) return;
    try { watchJob(await api("POST", `/api/backups/${encodeURIComponent(t.dataset.backupRestore)}/restore`, {user})); } catch (err) { failed(err); }
  }
  if (t.id === "run-audit") { try { watchJob(await api("POST", "/api/audit")); } catch (err) { failed(err); } }
  if (t.id === "restart") {
    if (!await confirmDialog("Restart your workbench?", "<p>Every app of yours stops and starts again; unsaved work in them is lost.</p>", "Restart")) return;
    try { watchJob(await api("POST", t.dataset.url)); } catch (err) { failed(err); }
  }
  if (t.id === "reveal") {
    try {
      const c = await api("POST", t.dataset.url);
      const rows = [];
      const isMap = (v) => v && typeof v === "object" && !Array.isArray(v);
      // one <dt> per group; a group of groups (app_logins: n8n, flowise) gives one per inner group
      const group = (title, v) => {
        const flat = Object.entries(v).filter(([, vv]) => !isMap(vv));
        if (flat.length) rows.push(`<dt>${esc(title)}</dt>` + flat.map(([kk, vv]) => `<dd>${esc(kk)}: ${esc(Array.isArray(vv) ? vv.join(", ") : vv)}</dd>`).join(""));
        for (const [kk, vv] of Object.entries(v)) if (isMap(vv)) group(`${title} · ${kk}`, vv);
      };
      for (const [k, v] of Object.entries(c)) if (isMap(v)) group(k, v);
      document.getElementById("credentials").innerHTML = `<dl class="creds">${rows.join("")}</dl>`;
      t.hidden = true;
    } catch (err) { failed(err); }
  }
  if (t.id === "load-plan") {
    t.disabled = true;
    try {
      const p = await api("GET", "/api/plan");
      const counts = Object.entries(p.counts).filter(([a]) => a !== "no-op").map(([a, n]) => `${n} to ${a}`).join(", ");
      document.getElementById("plan-body").innerHTML = `<p>${esc(counts)}</p>` + changesHtml(p.changes.slice(0, 100)) +
        (p.changes.length ? '<p><button id="apply">Apply…</button></p>' : "");
    } catch (err) { failed(err); }
    t.disabled = false;
  }
  if (t.id === "apply") {
    if (!await confirmDialog("Apply the site?", "<p>Every pending change above is carried out, as `aicommons apply`.</p>", "Apply")) return;
    try { watchJob(await api("POST", "/api/apply")); } catch (err) { failed(err); }
  }
});

document.getElementById("add-form")?.addEventListener("submit", ev => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  userAction("add", f.get("name").trim(), f.get("email").trim());
});
