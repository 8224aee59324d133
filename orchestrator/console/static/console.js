// The runner orchestrator's web console: vanilla JavaScript, no framework, no build step. It reads the JSON API
// with the browser's session cookie; every change (approve, reject, cancel, sign out) carries the session's CSRF
// token in X-CSRF-Token. All DOM is built with createElement and textContent: nothing the API returns is ever
// parsed as HTML, and the page's CSP allows no inline script or style.
"use strict";

(function () {
  const STATES = ["awaiting_approval", "queued", "starting", "running", "succeeded", "failed", "timed_out",
    "cancelled", "error", "rejected"];
  const FINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "error", "rejected"]);
  const LOGIN_ERRORS = {
    state_mismatch: "The sign-in could not be matched to this browser (expired or already used). Try again.",
    provider_refused: "The identity provider refused the sign-in.",
    provider_unavailable: "The identity provider cannot be reached right now.",
    code_refused: "The identity provider did not accept the sign-in code. Try again.",
    token_refused: "The sign-in was refused.",
    rate_limited: "Too many failed sign-ins from this address; wait a minute.",
    cross_origin: "A sign-in must come from this console's own page.",
  };

  const app = document.getElementById("app");
  const nav = document.getElementById("nav");
  const state = { session: null, sso: false, timers: [], source: null, view: 0 };

  // -- DOM helpers -------------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(...nodes) {
    clear(app);
    app.append(...nodes.filter((node) => node instanceof Node));
  }

  function enc(text) {
    return encodeURIComponent(text);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function duration(start, end) {
    if (!start || !end) return "";
    const s = Math.max(0, Math.round(end - start));
    return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
  }

  function badge(status) {
    return el("span", { class: `badge status-${status}`, text: status.replace(/_/g, " ") });
  }

  function message(kind, text) {
    return el("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status", text });
  }

  function table(headers, rows, attrs, numeric) {
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: (numeric || []).includes(i) ? "num" : "",
        text: h })))),
      el("tbody", {}, rows));
  }

  function cell(content, attrs) {
    return el("td", attrs || {}, content);
  }

  // -- the API -------------------------------------------------------------------------------------------------

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const type = resp.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await resp.json() : await resp.text();
    if (resp.status === 401 && state.session && path !== "/console/logout") {
      state.session = null;
      location.hash = "#/login?error=expired";
    }
    return { status: resp.status, ok: resp.ok, data };
  }

  function errorText(result) {
    if (result.data && typeof result.data === "object" && result.data.error) return result.data.error;
    return `HTTP ${result.status}`;
  }

  // -- views' housekeeping -----------------------------------------------------------------------------------

  function every(ms, fn) {
    state.timers.push(setInterval(fn, ms));
  }

  function leaveView() {
    state.view += 1;
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  function current(view) {
    return view === state.view;
  }

  function renderNav() {
    clear(nav);
    if (!state.session) return;
    const s = state.session;
    nav.append(...[
      el("a", { href: "#/pools", id: "nav-pools", text: "Pools" }),
      el("a", { href: "#/jobs", id: "nav-jobs", text: "Jobs" }),
      s.holds.auditor ? el("a", { href: "#/audit", id: "nav-audit", text: "Audit" }) : null,
      el("span", { class: "who", id: "who", title: s.grants.map((g) => g.role).join(", ") || "no grant" },
        `${s.name} (${s.kind === "oidc" ? "SSO" : "token"})`),
      el("button", { type: "button", id: "sign-out", class: "secondary", onclick: signOut, text: "Sign out" }),
    ].filter((node) => node instanceof Node));
  }

  async function signOut() {
    await call("POST", "/console/logout");
    state.session = null;
    renderNav();
    location.hash = "#/login";
  }

  // -- login ------------------------------------------------------------------------------------------------

  function viewLogin(params) {
    const code = params.get("error");
    const notice = code === "expired" ? message("info", "Your session has ended; sign in again.")
      : code ? message("error", LOGIN_ERRORS[code] || "The sign-in failed.") : null;
    const feedback = el("div", { id: "login-feedback" });
    const tokenInput = el("input", { type: "password", name: "token", id: "token", autocomplete: "off",
      required: true, spellcheck: "false", "aria-label": "API token" });
    const tokenForm = el("form", { method: "post", action: "/console/login/token", id: "token-form" },
      el("label", { for: "token", text: "API token" }), tokenInput,
      el("button", { type: "submit", id: "token-submit", text: "Sign in with token" }));
    tokenForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      clear(feedback);
      const body = new URLSearchParams({ token: tokenInput.value });
      tokenInput.value = "";  // the token lives nowhere in the page once sent
      const resp = await fetch("/console/login/token", {
        method: "POST", body, credentials: "same-origin", headers: { Accept: "application/json" },
      });
      const data = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        feedback.append(message("error", data.error || `HTTP ${resp.status}`));
        return;
      }
      await start("#/pools");
    });
    const sso = state.sso ? el("section", { class: "card" },
      el("h2", { text: "Single sign-on" }),
      el("form", { method: "get", action: "/console/login/sso", id: "sso-form" },
        el("label", { for: "login_hint", text: "User name (optional)" }),
        el("input", { type: "text", name: "login_hint", id: "login_hint", autocomplete: "username" }),
        el("button", { type: "submit", id: "sso-button", text: "Sign in with SSO" }))) : null;
    show(
      el("h1", { text: "Sign in" }), notice, feedback,
      el("div", { class: "login" }, sso,
        el("section", { class: "card" }, el("h2", { text: "API token" }),
          el("p", { class: "muted", text: "A token of [[api.tokens]] or a JWT of the identity provider." }),
          tokenForm)),
    );
    (state.sso ? document.getElementById("login_hint") : tokenInput).focus();
  }

  // -- pools ------------------------------------------------------------------------------------------------

  async function viewPools(view) {
    const holder = el("div", { id: "pools" });
    show(el("h1", { text: "Pools" }), holder);
    async function refresh() {
      const result = await call("GET", "/api/v1/pools");
      if (!current(view)) return;
      clear(holder);
      if (!result.ok) {
        holder.append(message("error", errorText(result)));
        return;
      }
      const rows = result.data.pools.map((p) => el("tr", { "data-pool": p.name },
        cell(el("a", { href: `#/jobs?pool=${enc(p.name)}`, text: p.name })),
        cell(String(p.queued), { class: "num pool-queued" }),
        cell(String(p.running), { class: "num pool-running" }),
        cell(`${p.warm} / ${p.warm_target}`, { class: "num pool-warm" }),
        cell(String(p.max_concurrent), { class: "num" }),
        cell(p.runner ? "forge runners" : "jobs")));
      holder.append(rows.length ? table(["Pool", "Queued", "Running", "Warm (ready / target)", "Max concurrent",
        "Serves"], rows, { id: "pools-table" }, [1, 2, 3, 4]) : message("info", "No pool you may see."));
      const waiting = await call("GET", "/api/v1/jobs?status=awaiting_approval&limit=1000");
      if (!current(view) || !waiting.ok || !waiting.data.jobs.length) return;
      const n = waiting.data.jobs.length;
      holder.append(el("p", { class: "message info", id: "awaiting" },
        el("a", { href: "#/jobs?status=awaiting_approval", text: `${n} job${n === 1 ? "" : "s"} awaiting approval` }),
        state.session.holds.approver ? " — yours to decide if the job is in your scope." : ""));
    }
    await refresh();
    every(5000, refresh);
  }

  // -- jobs -------------------------------------------------------------------------------------------------

  async function viewJobs(view, params) {
    const status = params.get("status") || "";
    const pool = params.get("pool") || "";
    const limit = params.get("limit") || "100";
    const statusSelect = el("select", { id: "filter-status", name: "status" },
      el("option", { value: "", text: "any status" }),
      STATES.map((s) => el("option", { value: s, selected: s === status, text: s.replace(/_/g, " ") })));
    const poolSelect = el("select", { id: "filter-pool", name: "pool" }, el("option", { value: "", text: "any pool" }));
    const limitSelect = el("select", { id: "filter-limit", name: "limit" },
      ["20", "100", "500"].map((n) => el("option", { value: n, selected: n === limit, text: `${n} newest` })));
    const filters = el("form", { class: "filters", id: "job-filters" }, statusSelect, poolSelect, limitSelect);
    filters.addEventListener("change", () => {
      const q = new URLSearchParams();
      if (statusSelect.value) q.set("status", statusSelect.value);
      if (poolSelect.value) q.set("pool", poolSelect.value);
      if (limitSelect.value !== "100") q.set("limit", limitSelect.value);
      location.hash = `#/jobs?${q}`;
    });
    filters.addEventListener("submit", (event) => event.preventDefault());
    const holder = el("div", { id: "jobs" });
    show(el("h1", { text: "Jobs" }), filters, holder);
    call("GET", "/api/v1/pools").then((result) => {
      if (!result.ok || !current(view)) return;
      for (const p of result.data.pools) {
        poolSelect.append(el("option", { value: p.name, selected: p.name === pool, text: p.name }));
      }
    });
    async function refresh() {
      const q = new URLSearchParams({ limit });
      if (status) q.set("status", status);
      if (pool) q.set("pool", pool);
      const result = await call("GET", `/api/v1/jobs?${q}`);
      if (!current(view)) return;
      clear(holder);
      if (!result.ok) {
        holder.append(message("error", errorText(result)));
        return;
      }
      const rows = result.data.jobs.map((j) => el("tr", { "data-job": j.job_id },
        cell(el("a", { href: `#/jobs/${enc(j.job_id)}`, class: "mono", text: j.job_id })),
        cell(badge(j.status)),
        cell(j.pool),
        cell(j.repository),
        cell(j.ref, { class: "mono" }),
        cell(j.sender || "—"),
        cell(when(j.created_at)),
        cell(duration(j.started_at, j.finished_at))));
      holder.append(rows.length ? table(["Job", "Status", "Pool", "Repository", "Ref", "Sender", "Created",
        "Ran for"], rows, { id: "jobs-table" }) : message("info", "No job matches."));
    }
    await refresh();
    every(5000, refresh);
  }

  // -- one job ----------------------------------------------------------------------------------------------

  function timeline(job) {
    const steps = [el("li", {}, el("strong", { text: "received" }), ` ${when(job.created_at)}`,
      el("span", { class: "muted", text: ` from ${job.source}${job.sender ? `, sent by ${job.sender}` : ""}` }))];
    const a = job.approval;
    if (a || job.status === "awaiting_approval") {
      steps.push(el("li", { class: a ? "" : "now" }, el("strong", { text: "awaiting approval" }),
        a ? "" : " (now)"));
    }
    if (a) {
      const verb = a.decision === "expired" ? "expired: nobody decided in time" : `${a.decision} by ${a.by}`;
      steps.push(el("li", { class: `decision-${a.decision}`, id: "approval-step" },
        el("strong", { text: verb }), ` ${when(a.at)}`,
        a.comment ? el("blockquote", { class: "comment", text: a.comment }) : null));
    }
    if (job.status === "queued" && !job.started_at) {
      steps.push(el("li", { class: "now" }, el("strong", { text: "queued" }), " (now)"));
    }
    if (job.started_at) {
      steps.push(el("li", {}, el("strong", { text: "started" }), ` ${when(job.started_at)}`));
    }
    if (!FINAL.has(job.status) && job.started_at) {
      steps.push(el("li", { class: "now" }, el("strong", { text: job.status }), " (now)"));
    }
    if (job.finished_at || FINAL.has(job.status)) {
      const exit = job.exit_code === null || job.exit_code === undefined ? "" : `, exit code ${job.exit_code}`;
      steps.push(el("li", { class: `final status-${job.status}` }, el("strong", { text: job.status.replace(/_/g, " ") }),
        ` ${when(job.finished_at)}${exit}`, job.reason ? el("div", { class: "muted", text: job.reason }) : null));
    }
    return el("ol", { class: "timeline", id: "timeline" }, steps);
  }

  function details(job) {
    const rows = [
      ["Pool", job.pool], ["Repository", job.repository], ["Ref", job.ref], ["Commit", job.sha],
      ["Sender", job.sender || "—"], ["Attempt", String(job.attempt)], ["Timeout", `${job.timeout_s} s`],
      ["Exit code", job.exit_code === null ? "—" : String(job.exit_code)], ["Reason", job.reason || "—"],
      ["Secrets", job.secrets.length ? job.secrets.map((s) => s.name || s.path).join(", ") : "none"],
      ["Controller", job.controller_id],
    ];
    return el("dl", { class: "details", id: "job-details" },
      rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { class: k === "Commit" ? "mono" : "", text: v })]),
      el("dt", { text: "Commands" }),
      el("dd", {}, el("pre", { class: "commands", text: job.commands.join("\n") })));
  }

  function actions(job, refresh) {
    const s = state.session;
    const box = el("section", { class: "card actions", id: "job-actions" });
    const feedback = el("div", { id: "action-feedback" });
    if (job.status === "awaiting_approval" && s.holds.approver) {
      const comment = el("textarea", { id: "approval-comment", rows: "2", maxlength: "2000",
        placeholder: "comment (optional)", "aria-label": "comment" });
      const decide = async (verb) => {
        clear(feedback);
        const result = await call("POST", `/api/v1/jobs/${enc(job.job_id)}/${verb}`, { comment: comment.value });
        if (!result.ok) {
          feedback.append(message("error", errorText(result)));
          return;
        }
        feedback.append(message("info", verb === "approve" ? "Approved." : "Rejected."));
        await refresh();
      };
      box.append(el("h2", { text: "Approval" }),
        el("p", { text: job.reason || "This job waits for an approver." }), comment,
        el("div", { class: "buttons" },
          el("button", { type: "button", id: "approve", onclick: () => decide("approve"), text: "Approve" }),
          el("button", { type: "button", id: "reject", class: "danger", onclick: () => decide("reject"),
            text: "Reject" })));
    } else if (job.status === "awaiting_approval") {
      box.append(el("h2", { text: "Approval" }), el("p", { text: "Waiting for a person with an approver grant." }));
    }
    if (!FINAL.has(job.status) && s.holds.operator) {
      box.append(el("div", { class: "buttons" }, el("button", {
        type: "button", id: "cancel", class: "secondary", text: "Cancel job",
        onclick: async () => {
          clear(feedback);
          const result = await call("POST", `/api/v1/jobs/${enc(job.job_id)}/cancel`);
          feedback.append(result.ok ? message("info", "Cancel requested.") : message("error", errorText(result)));
          await refresh();
        },
      })));
    }
    box.append(feedback);
    return box.childElementCount > 1 ? box : el("div", { id: "job-actions" });
  }

  function followLog(view, jobId, pre, status) {
    const source = new EventSource(`/api/v1/jobs/${enc(jobId)}/logs?format=sse`);
    state.source = source;
    status.textContent = "following live…";
    source.addEventListener("log", (event) => {
      if (!current(view)) return;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      // Colour and cursor escapes are shown as nothing rather than as garbage.
      pre.append(document.createTextNode(event.data.replace(/\u001b\[[0-9;?]*[A-Za-z]/g, "")));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      status.textContent = "following live…";
    });
    source.addEventListener("end", (event) => {
      source.close();
      status.textContent = `log complete (${event.data})`;
      status.classList.add("done");
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) status.textContent = "reconnecting…";
    });
  }

  async function artifacts(jobId, holder) {
    const result = await call("GET", `/api/v1/jobs/${enc(jobId)}/artifacts`);
    clear(holder);
    if (result.status === 404) {
      holder.append(el("p", { class: "muted", text: "No artifacts (none declared, not produced yet, or expired)." }));
      return;
    }
    if (!result.ok) {
      holder.append(message("error", errorText(result)));
      return;
    }
    const m = result.data;
    const rows = m.files.map((f) => el("tr", {},
      cell(el("a", { href: `/api/v1/jobs/${enc(jobId)}/artifacts/${f.name.split("/").map(enc).join("/")}`,
        download: f.name.split("/").pop(), text: f.name })),
      cell(String(f.size), { class: "num" }),
      cell(f.sha256, { class: "mono hash" })));
    holder.append(table(["Name", "Bytes", "SHA-256"], rows, { id: "artifacts-table" }, [1]));
    if (m.junit) {
      holder.append(el("p", { text: `Tests: ${m.junit.tests} run, ${m.junit.passed} passed, ${m.junit.failed} ` +
        `failed, ${m.junit.skipped} skipped (${m.junit.name})` }));
    }
    if (m.sbom) holder.append(el("p", { text: `SBOM: ${m.sbom.name} (${m.sbom.format} ${m.sbom.spec_version})` }));
    for (const r of m.refused.concat(m.problems)) holder.append(message("error", r));
  }

  async function verdict(jobId, holder) {
    const result = await call("GET", `/console/api/jobs/${enc(jobId)}/verdict`);
    clear(holder);
    if (!result.ok) {
      holder.append(message("error", errorText(result)));
      return;
    }
    const v = result.data;
    const links = el("p", { class: "muted" },
      el("a", { href: `/api/v1/jobs/${enc(jobId)}/attestation`, text: "envelope (DSSE)" }), " · ",
      el("a", { href: "/api/v1/attestation-key", text: "public key" }));
    if (v.verdict === "verified") {
      const subjects = v.subjects.map((s) => el("li", { class: "mono" }, s.name || "",
        el("span", { class: "muted", text: " " + Object.entries(s.digest || {}).map(([k, d]) => `${k}:${d}`).join(" ") })));
      holder.append(
        el("p", { class: "verdict verified", id: "verdict-text",
          text: `Verified: signed by the controller's key ${v.key_id}` }),
        el("p", { text: `Attests: ${v.state}${v.exit_code === null ? "" : `, exit code ${v.exit_code}`}` +
          (v.approval ? `; ${v.approval.decision} by ${v.approval.by}` : "") }),
        el("ul", { class: "subjects" }, subjects), links);
    } else if (v.verdict === "pending") {
      holder.append(el("p", { class: "verdict pending", id: "verdict-text", text: `Not signed yet: ${v.message}.` }));
    } else {
      holder.append(el("p", { class: `verdict ${v.verdict}`, id: "verdict-text",
        text: `${v.verdict === "invalid" ? "INVALID" : "Missing"}: ${v.message}` }), links);
    }
  }

  async function viewJob(view, jobId) {
    const head = el("div", { class: "job-head" });
    const actionsHolder = el("div");
    const timelineHolder = el("div");
    const detailsHolder = el("div");
    const logStatus = el("span", { class: "muted", id: "log-status" });
    const pre = el("pre", { class: "log", id: "log", tabindex: "0" });
    const artifactsHolder = el("div", { id: "artifacts" });
    const verdictHolder = el("div", { id: "verdict" });
    show(head, actionsHolder,
      el("div", { class: "columns" },
        el("section", { class: "card" }, el("h2", { text: "Timeline" }), timelineHolder),
        el("section", { class: "card" }, el("h2", { text: "Details" }), detailsHolder)),
      el("section", { class: "card" }, el("h2", {}, "Log ", logStatus), pre),
      el("div", { class: "columns" },
        el("section", { class: "card" }, el("h2", { text: "Artifacts" }), artifactsHolder),
        el("section", { class: "card" }, el("h2", { text: "Attestation" }), verdictHolder)));
    let lastStatus = null;
    let following = false;
    async function refresh() {
      const result = await call("GET", `/api/v1/jobs/${enc(jobId)}`);
      if (!current(view)) return;
      if (!result.ok) {
        show(el("h1", { text: "Job" }), message("error", errorText(result)), el("a", { href: "#/jobs", text: "All jobs" }));
        leaveView();
        return;
      }
      const job = result.data;
      clear(head);
      head.append(el("h1", {}, "Job ", el("span", { class: "mono", text: job.job_id }), " ",
        el("span", { id: "job-status" }, badge(job.status))));
      clear(timelineHolder);
      timelineHolder.append(timeline(job));
      clear(detailsHolder);
      detailsHolder.append(details(job));
      if (job.status !== lastStatus) {  // not on every poll: a comment being typed must survive
        clear(actionsHolder);
        actionsHolder.append(actions(job, refresh));
        if (lastStatus !== null && FINAL.has(job.status)) {
          artifacts(jobId, artifactsHolder);
          verdict(jobId, verdictHolder);
        }
        lastStatus = job.status;
      }
      if (!following) {
        following = true;
        followLog(view, jobId, pre, logStatus);
        artifacts(jobId, artifactsHolder);
        verdict(jobId, verdictHolder);
      }
    }
    await refresh();
    every(2000, () => {
      if (lastStatus === null || !FINAL.has(lastStatus)) refresh();
    });
  }

  // -- the audit trail ---------------------------------------------------------------------------------------

  function actorOf(actor) {
    if (!actor) return "—";
    if (actor.type === "webhook") return `webhook ${actor.source || ""}`;
    if (actor.type === "controller") return "controller";
    const who = actor.name || actor.token_name || "anonymous";
    return actor.role ? `${who} (${actor.role})` : who;
  }

  function viewAudit(view, params) {
    const fields = [["actor", "actor"], ["job", "job id"], ["action", "action, e.g. api.*"],
      ["outcome", "outcome"], ["since", "since (RFC 3339 or date)"], ["until", "until"]];
    const inputs = {};
    const form = el("form", { class: "filters", id: "audit-form" },
      fields.map(([name, label]) => {
        inputs[name] = el("input", { type: "text", name, id: `audit-${name}`, placeholder: label,
          value: params.get(name) || "", "aria-label": label });
        return inputs[name];
      }),
      el("button", { type: "submit", id: "audit-search", text: "Search" }));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const q = new URLSearchParams();
      for (const [name] of fields) if (inputs[name].value.trim()) q.set(name, inputs[name].value.trim());
      const target = `#/audit?${q}`;
      if (location.hash === target) route(); else location.hash = target;
    });
    const body = el("tbody", { id: "audit-rows" });
    const holder = el("div", { id: "audit" });
    const more = el("button", { type: "button", id: "audit-more", class: "secondary", hidden: true, text: "More" });
    show(el("h1", { text: "Audit trail" }), form, holder, more);
    const limit = params.get("limit") || "50";
    let cursor = null;
    async function page(after) {
      const q = new URLSearchParams({ limit });
      for (const [name] of fields) if (params.get(name)) q.set(name, params.get(name));
      if (after !== null) q.set("after", String(after));
      const result = await call("GET", `/api/v1/audit?${q}`);
      if (!current(view)) return;
      if (!result.ok) {
        clear(holder);
        holder.append(message("error", errorText(result)));
        more.hidden = true;
        return;
      }
      for (const hit of result.data.records) {
        const r = hit.record;
        body.append(el("tr", { "data-seq": String(hit.seq) },
          cell(String(hit.seq), { class: "num" }),
          cell(r.time || ""),
          cell(actorOf(r.actor), { class: "audit-actor" }),
          cell(r.action, { class: "mono audit-action" }),
          cell(r.target || "—", { class: "mono" }),
          cell(r.outcome),
          cell(hit.hash.slice(0, 16) + "…", { class: "mono hash", title: hit.hash })));
      }
      if (!holder.firstChild) {
        const headers = ["Seq", "Time", "Actor", "Action", "Target", "Outcome", "Hash"];
        holder.append(el("table", { id: "audit-table" },
          el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))), body));
      }
      if (!body.firstChild) holder.append(message("info", "No record matches."));
      cursor = result.data.next_cursor;
      more.hidden = cursor === null || cursor === undefined;
    }
    more.addEventListener("click", () => page(cursor));
    page(null);
  }

  // -- routing ----------------------------------------------------------------------------------------------

  function route() {
    leaveView();
    const view = state.view;
    const hash = location.hash || "#/pools";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean);
    if (!state.session || parts[0] === "login") {
      if (state.session) {
        location.hash = "#/pools";
        return;
      }
      renderNav();
      viewLogin(params);
      return;
    }
    renderNav();
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0]}`);
    if (parts[0] === "jobs" && parts[1]) viewJob(view, decodeURIComponent(parts[1]));
    else if (parts[0] === "jobs") viewJobs(view, params);
    else if (parts[0] === "audit") viewAudit(view, params);
    else viewPools(view);
  }

  async function start(target) {
    const resp = await fetch("/console/session", { credentials: "same-origin", cache: "no-store",
      headers: { Accept: "application/json" } });
    const data = await resp.json().catch(() => ({}));
    state.sso = Boolean(data.sso);
    state.session = resp.ok ? data : null;
    if (target && location.hash !== target) {
      location.hash = target;  // hashchange routes
      return;
    }
    route();
  }

  window.addEventListener("hashchange", route);
  start(null);
})();
