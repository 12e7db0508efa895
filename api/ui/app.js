// Sagaflow web console: a hash-routed single page over the JSON API (same origin, no build step).
'use strict';

// ---------- small helpers ----------
const main = document.getElementById('main');
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Escapes any value for insertion into HTML text or a quoted attribute. */
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ESC[c]);
const enc = encodeURIComponent;
const $ = (sel, root = document) => root.querySelector(sel);
const SAGA_STATUSES = ['RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED'];
const PAGE_SIZES = ['10', '25', '50', '100', '250', '500'];
const ACTOR_KEY = 'sagaflow.actor';
const TOKEN_KEY = 'sagaflow.token'; // a bearer token, when the engine authenticates requests
let flash = ''; // one-shot success notice shown by the next saga page render

const pad = (n) => String(n).padStart(2, '0');
/** A timestamp in local time, compact, with the full ISO string in the title. */
function fmtDate(iso) {
  if (!iso) return '<span class="muted">—</span>';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return esc(iso);
  const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${s}</time>`;
}
/** RFC 3339 (UTC) -> value of a datetime-local input (local time). */
function toLocalInput(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
/** datetime-local value (local time) -> RFC 3339 UTC, or '' when empty/invalid. */
function fromLocalInput(v) {
  const d = v ? new Date(v) : null;
  return d && !Number.isNaN(d.getTime()) ? d.toISOString() : '';
}
const shortId = (id) => (String(id).length > 13 ? `${String(id).slice(0, 8)}…` : String(id));
const badge = (status) =>
  `<span class="badge status-${esc(String(status).toLowerCase().replace(/[^a-z_]/g, ''))}">${esc(status)}</span>`;
const card = (html, cls = '') => `<section class="card ${cls}">${html}</section>`;
const loadingHtml = '<div class="loading" role="status"><span class="spinner"></span>Loading…</div>';
/** RFC 4122 v4 id; crypto.randomUUID only exists in secure contexts, so fall back to getRandomValues. */
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
const store = {
  get: (k) => { try { return localStorage.getItem(k) || ''; } catch { return ''; } },
  set: (k, v) => { try { localStorage.setItem(k, v); } catch { /* storage disabled */ } },
};

// ---------- API access: JSON in, problem+json errors out ----------
/** The Authorization header for the token given in the top bar (kept for this tab only). */
function auth() {
  let token = '';
  try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch { /* storage disabled */ }
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Loads the timeline picture with the same credentials as the API calls. */
async function loadTimeline(img, sagaId) {
  try {
    const res = await fetch(`/sagas/${enc(sagaId)}/timeline.svg`, { headers: auth() });
    if (res.ok) img.src = URL.createObjectURL(await res.blob());
  } catch { /* the rest of the page stands without it */ }
}

class ApiError extends Error {
  constructor(p) { super(p.title); Object.assign(this, p); }
}
async function api(path, { method = 'GET', body, headers = {} } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: { Accept: 'application/json', ...(body !== undefined && { 'Content-Type': 'application/json' }), ...auth(), ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError({ title: 'Network error', detail: `Could not reach the server (${e.message}).` });
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const p = data && typeof data === 'object' ? data : {};
    throw new ApiError({
      status: res.status, type: p.type,
      title: p.title || `HTTP ${res.status} ${res.statusText}`,
      detail: p.detail || (data === null ? text.slice(0, 500) : ''),
      errors: Array.isArray(p.errors) ? p.errors : [],
    });
  }
  return { data, headers: res.headers };
}
/** The visible error box: problem title, detail and field errors. */
function errorHtml(e) {
  const errs = (e.errors || [])
    .map((x) => `<li>${x.field ? `<code>${esc(x.field)}</code>: ` : ''}${esc(x.message)}</li>`).join('');
  return `<div class="error-box" role="alert"><strong>${esc(e.title || e.message || 'Error')}</strong>` +
    `${e.status ? ` <span class="muted">(HTTP ${esc(e.status)})</span>` : ''}` +
    `${e.detail ? `<p>${esc(e.detail)}</p>` : ''}${errs ? `<ul>${errs}</ul>` : ''}</div>`;
}

// ---------- router ----------
let renderSeq = 0; // bumps on every render so late responses of an old page are dropped
const current = (token) => token === renderSeq;

function parseHash() {
  const h = location.hash.replace(/^#/, '') || '/sagas';
  const i = h.indexOf('?');
  const path = i < 0 ? h : h.slice(0, i);
  const dec = (s) => { try { return decodeURIComponent(s); } catch { return s; } };
  return { parts: path.split('/').filter(Boolean).map(dec), query: new URLSearchParams(i < 0 ? '' : h.slice(i + 1)) };
}
/** Navigates to a hash; re-renders even when the hash is unchanged. */
function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}
/** Runs one page render with the shared loading state and error box. */
async function render(page, { loading = true } = {}) {
  const token = ++renderSeq;
  if (loading) main.innerHTML = loadingHtml;
  try {
    await page(token);
  } catch (e) {
    if (current(token)) main.innerHTML = card(errorHtml(e));
  }
}
function route() {
  const { parts, query } = parseHash();
  for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === parts[0]);
  const [section, arg, ...rest] = parts;
  if (section === 'sagas' && !arg) return render((t) => sagaList(query, t));
  if (section === 'sagas' && !rest.length) return render((t) => sagaPage(arg, t));
  if (section === 'definitions' && !arg) return render((t) => definitionList(query, t));
  if (section === 'definitions' && !rest.length) return render((t) => definitionPage(arg, t));
  return render(async () => {
    throw new ApiError({ title: 'Page not found', detail: `There is no page at #/${parts.join('/')}.` });
  });
}
window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', route);

/** Cursor stack for "Previous page": remembers earlier pages' cursors per filter set. */
function makePager() {
  const p = { key: null, stack: [] };
  p.sync = (key, cursor) => {
    if (p.key !== key) { p.key = key; p.stack = []; }
    const i = p.stack.indexOf(cursor); // back on an earlier page (browser Back or "Previous")
    if (i >= 0) p.stack = p.stack.slice(0, i);
    else if (!cursor) p.stack = [];
  };
  return p;
}
const pagerHtml = (hasPrev, hasNext, atFirst) => `<div class="pager">
  <button type="button" data-page="first" ${atFirst ? 'disabled' : ''}>First page</button>
  <button type="button" data-page="prev" ${hasPrev ? '' : 'disabled'}>Previous page</button>
  <button type="button" data-page="next" ${hasNext ? '' : 'disabled'}>Next page</button></div>`;
/** Wires the pager buttons; `to(cursor)` builds the hash of the page starting at that cursor. */
function wirePager(root, pager, cursor, next, to) {
  root.addEventListener('click', (ev) => {
    const which = ev.target.closest('[data-page]')?.dataset.page;
    if (which === 'first') go(to(''));
    if (which === 'prev') go(to(pager.stack[pager.stack.length - 1] ?? ''));
    if (which === 'next' && next) { pager.stack.push(cursor); go(to(next)); }
  });
}

// ---------- page: saga list ----------
const sagaPager = makePager();
const FILTERS = ['status', 'definition', 'stuck', 'started_from', 'started_to', 'order', 'limit'];

async function sagaList(q, token) {
  const f = Object.fromEntries(FILTERS.map((k) => [k, q.get(k) || '']));
  const cursor = q.get('cursor') || '';
  const filterQs = new URLSearchParams(FILTERS.filter((k) => f[k]).map((k) => [k, f[k]])).toString();
  sagaPager.sync(filterQs, cursor);
  // API query: empty filters omitted, defaults made explicit.
  const params = new URLSearchParams();
  for (const k of ['status', 'definition', 'started_from', 'started_to']) if (f[k]) params.set(k, f[k]);
  if (f.stuck === 'true') params.set('stuck', 'true');
  params.set('order', f.order === 'asc' ? 'asc' : 'desc');
  params.set('limit', f.limit || '25');
  if (cursor) params.set('cursor', cursor);
  const { data, headers } = await api(`/sagas?${params}`);
  if (!current(token)) return;

  const lag = headers.get('Sagaflow-Index-Lag');
  const sizes = PAGE_SIZES.includes(params.get('limit')) ? PAGE_SIZES : [...PAGE_SIZES, params.get('limit')];
  const sagas = data?.sagas || [];
  const rows = sagas.map((s) => `<tr data-saga-id="${esc(s.saga_id)}" data-status="${esc(s.status)}">
      <td><a class="saga-link mono" href="#/sagas/${esc(enc(s.saga_id))}" title="${esc(s.saga_id)}">${esc(shortId(s.saga_id))}</a></td>
      <td>${esc(s.definition?.name)} v${esc(s.definition?.version)}</td>
      <td>${badge(s.status)}</td>
      <td>${s.current_step ? `<code>${esc(s.current_step)}</code>` : '<span class="muted">—</span>'}</td>
      <td>${fmtDate(s.started_at)}</td><td>${fmtDate(s.last_progress_at)}</td><td>${fmtDate(s.finished_at)}</td>
      <td>${s.stuck ? '<span class="badge stuck" title="no progress for too long">stuck</span>' : ''}</td></tr>`).join('');

  main.innerHTML = card(`<div class="card-head"><h1>Sagas</h1>
      ${lag !== null ? `<small class="muted index-lag" title="events not yet in the list index">index lag: ${esc(lag)} event${lag === '1' ? '' : 's'}</small>` : ''}</div>
    <form id="saga-filters" class="filters">
      <label>Status <select name="status"><option value="">any</option>
        ${SAGA_STATUSES.map((s) => `<option ${s === f.status ? 'selected' : ''}>${s}</option>`).join('')}</select></label>
      <label>Definition <input name="definition" value="${esc(f.definition)}" placeholder="e.g. order-fulfilment"></label>
      <label>Started from <input type="datetime-local" name="started_from" value="${esc(toLocalInput(f.started_from))}"></label>
      <label>Started to <input type="datetime-local" name="started_to" value="${esc(toLocalInput(f.started_to))}"></label>
      <label>Order <select name="order"><option value="desc">newest first</option>
        <option value="asc" ${f.order === 'asc' ? 'selected' : ''}>oldest first</option></select></label>
      <label>Page size <select name="limit">
        ${sizes.map((n) => `<option ${n === params.get('limit') ? 'selected' : ''}>${esc(n)}</option>`).join('')}</select></label>
      <label class="check"><input type="checkbox" name="stuck" ${f.stuck === 'true' ? 'checked' : ''}> stuck only</label>
      <div class="buttons"><button type="submit" class="primary">Apply filters</button>
        <button type="button" id="clear-filters">Clear</button></div>
    </form>`) +
    card(`<div class="table-wrap"><table class="data"><thead><tr><th>Saga</th><th>Definition</th><th>Status</th>
      <th>Current step</th><th>Started</th><th>Last progress</th><th>Finished</th><th>Stuck</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="8" class="empty">No sagas match these filters.</td></tr>'}</tbody></table></div>
      ${pagerHtml(sagaPager.stack.length > 0, !!data?.next_cursor, !cursor)}`, 'list');

  const form = $('#saga-filters');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    const out = new URLSearchParams();
    for (const k of ['status', 'definition']) { const v = String(fd.get(k) || '').trim(); if (v) out.set(k, v); }
    if (fd.get('stuck')) out.set('stuck', 'true');
    for (const k of ['started_from', 'started_to']) { const v = fromLocalInput(fd.get(k)); if (v) out.set(k, v); }
    if (fd.get('order') === 'asc') out.set('order', 'asc');
    out.set('limit', fd.get('limit') || '25');
    go(`#/sagas?${out}`);
  });
  $('#clear-filters').addEventListener('click', () => go('#/sagas'));
  const to = (c) => `#/sagas?${new URLSearchParams([...new URLSearchParams(filterQs), ...(c ? [['cursor', c]] : [])])}`;
  wirePager($('.list'), sagaPager, cursor, data?.next_cursor, to);
}

// ---------- page: one saga ----------
async function sagaPage(id, token) {
  const [{ data: saga }, { data: events }] =
    await Promise.all([api(`/sagas/${enc(id)}`), api(`/sagas/${enc(id)}/events`)]);
  if (!current(token)) return;
  const notice = flash; flash = '';
  const st = saga.status;
  const can = { retry: st === 'FAILED', abort: st === 'RUNNING', resolve: st === 'RUNNING' || st === 'FAILED' };
  const steps = saga.steps || [];
  const pick = steps.find((s) => ['FAILED', 'TIMED_OUT', 'RUNNING', 'WAITING_TO_RETRY', 'COMPENSATION_FAILED'].includes(s.status));
  const stepRows = steps.map((s) => `<tr data-step="${esc(s.name)}" data-status="${esc(s.status)}"><td><code>${esc(s.name)}</code></td>
      <td>${badge(s.status)}</td><td class="num">${esc(s.attempts)}</td><td class="num">${esc(s.compensation_attempts)}</td></tr>`).join('');
  const eventRows = [...(events || [])].sort((a, b) => a.version - b.version).map((e) => {
    const compact = JSON.stringify(e.data ?? null);
    return `<tr><td class="num">${esc(e.version)}</td><td><code>${esc(e.type)}</code></td><td>${fmtDate(e.recorded_at)}</td>
      <td><details><summary class="mono">${esc(compact.length > 60 ? `${compact.slice(0, 60)}…` : compact)}</summary>
      <pre class="json">${esc(compact)}</pre></details></td></tr>`;
  }).join('');
  const dis = (k) => (can[k] ? '' : 'disabled');

  main.innerHTML = `<div id="saga-page" data-status="${esc(st)}">
    ${notice ? `<div class="notice" role="status">${esc(notice)}</div>` : ''}
    ${card(`<p class="crumbs"><a href="#/sagas">← Sagas</a></p>
      <div class="card-head"><h1>Saga <span class="mono saga-id">${esc(saga.saga_id)}</span></h1>${badge(st)}</div>
      <dl class="meta">
        <div><dt>Definition</dt><dd><a href="#/definitions/${esc(enc(saga.definition?.name ?? ''))}">${esc(saga.definition?.name)}</a> v${esc(saga.definition?.version)}</dd></div>
        <div><dt>Version</dt><dd class="mono">${esc(saga.version)}</dd></div>
        ${saga.reason ? `<div class="wide"><dt>Reason</dt><dd class="reason">${esc(saga.reason)}</dd></div>` : ''}
      </dl>`)}
    ${card(`<h2>Timeline</h2><div class="timeline-wrap">
      <img class="timeline" alt="Timeline of saga ${esc(saga.saga_id)}"></div>`)}
    ${card(`<h2>Steps</h2><div class="table-wrap"><table class="data"><thead><tr><th>Name</th><th>Status</th>
      <th class="num">Attempts</th><th class="num">Compensation attempts</th></tr></thead>
      <tbody>${stepRows || '<tr><td colspan="4" class="empty">No steps.</td></tr>'}</tbody></table></div>`)}
    ${card(`<h2>Operator actions</h2><div id="action-error"></div>
      <form id="action-form" class="actions" novalidate>
        <label>Acting as <input id="actor" required maxlength="200" placeholder="you@example.com" value="${esc(store.get(ACTOR_KEY))}"></label>
        <label>Reason <textarea id="reason" required maxlength="2000" rows="2" placeholder="why you act (recorded in the saga's history)"></textarea></label>
        <div class="buttons">
          <button type="button" id="btn-retry" data-action="retry" class="primary" ${dis('retry')}>Retry</button>
          <button type="button" id="btn-abort" data-action="abort" class="danger" ${dis('abort')}>Abort</button>
          <span class="muted hint">Retry needs FAILED, abort needs RUNNING, resolve needs RUNNING or FAILED.</span>
        </div>
        <fieldset class="resolve"><legend>Resolve a step by hand</legend>
          <label>Step <select id="resolve-step">${steps.map((s) =>
            `<option value="${esc(s.name)}" ${s === pick ? 'selected' : ''}>${esc(s.name)} (${esc(s.status)})</option>`).join('')}</select></label>
          <label>Outcome <select id="resolve-outcome"><option value="succeeded">succeeded</option><option value="compensated">compensated</option></select></label>
          <label id="output-label" class="wide">Output JSON (optional, merged into the context)
            <textarea id="resolve-output" class="mono" rows="3" placeholder='{"key": "value"}'></textarea></label>
          <div class="buttons"><button type="button" id="btn-resolve" data-action="resolve" ${steps.length ? dis('resolve') : 'disabled'}>Resolve step…</button></div>
        </fieldset>
      </form>`)}
    ${card(`<h2>Context</h2><pre class="json">${esc(JSON.stringify(saga.context ?? null, null, 2))}</pre>`)}
    ${card(`<h2>Events</h2><div class="table-wrap"><table class="data events"><thead><tr><th class="num">Version</th><th>Type</th>
      <th>Recorded</th><th>Data</th></tr></thead><tbody>${eventRows || '<tr><td colspan="4" class="empty">No events.</td></tr>'}</tbody></table></div>`)}
  </div>`;

  loadTimeline($('img.timeline'), saga.saga_id);
  $('#actor').addEventListener('change', (ev) => store.set(ACTOR_KEY, ev.target.value.trim()));
  const outcome = $('#resolve-outcome');
  outcome.addEventListener('change', () => { $('#output-label').hidden = outcome.value !== 'succeeded'; });
  $('#action-form').addEventListener('click', (ev) => {
    const kind = ev.target.closest('[data-action]')?.dataset.action;
    if (kind && can[kind]) act(saga, kind, can);
  });
}

/** Sends one operator action; on success re-renders the saga page, on error fills the error box. */
async function act(saga, kind, can) {
  const box = $('#action-error');
  box.innerHTML = '';
  const actor = $('#actor').value.trim();
  const reason = $('#reason').value.trim();
  const problems = [];
  if (!actor) problems.push({ field: 'Acting as', message: 'say who is acting' });
  if (!reason) problems.push({ field: 'Reason', message: 'a reason is required' });
  const id = enc(saga.saga_id);
  let path = `/sagas/${id}/${kind}`;
  let body = { reason, expected_version: saga.version };
  if (kind === 'resolve') {
    const step = $('#resolve-step').value;
    const outcome = $('#resolve-outcome').value;
    path = `/sagas/${id}/steps/${enc(step)}/resolve`;
    body = { outcome, reason, expected_version: saga.version };
    const raw = $('#resolve-output').value.trim();
    if (outcome === 'succeeded' && raw) {
      try { body.output = JSON.parse(raw); } catch (e) { problems.push({ field: 'Output JSON', message: e.message }); }
    }
  }
  if (problems.length) { box.innerHTML = errorHtml({ title: 'The action was not sent', errors: problems }); return; }
  store.set(ACTOR_KEY, actor);
  const buttons = [...document.querySelectorAll('#action-form [data-action]')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    // A fresh Idempotency-Key per click: a network-level retry of this request is applied once.
    await api(path, { method: 'POST', body, headers: { 'Sagaflow-Actor': actor, 'Idempotency-Key': uuid() } });
    flash = `${kind === 'resolve' ? 'Resolve' : kind[0].toUpperCase() + kind.slice(1)} applied.`;
    await render((t) => sagaPage(saga.saga_id, t), { loading: false });
  } catch (e) {
    box.innerHTML = errorHtml(e);
    buttons.forEach((b) => { b.disabled = !can[b.dataset.action]; });
    box.scrollIntoView({ block: 'nearest' });
  }
}

// ---------- page: definition list ----------
const defPager = makePager();

async function definitionList(q, token) {
  const after = q.get('after') || '';
  const limit = q.get('limit') || '25';
  defPager.sync(limit, after);
  const params = new URLSearchParams({ limit });
  if (after) params.set('after', after);
  const { data } = await api(`/saga-definitions?${params}`);
  if (!current(token)) return;
  const rows = (data?.definitions || []).map((d) => `<tr data-definition="${esc(d.name)}">
      <td><a class="definition-link" href="#/definitions/${esc(enc(d.name))}">${esc(d.name)}</a></td>
      <td class="num">v${esc(d.version)}</td><td class="num">${esc((d.steps || []).length)}</td>
      <td><a href="#/definitions/${esc(enc(d.name))}">Open →</a></td></tr>`).join('');
  main.innerHTML = card(`<div class="card-head"><h1>Saga definitions</h1></div>
    <div class="table-wrap"><table class="data"><thead><tr><th>Name</th><th class="num">Latest version</th>
      <th class="num">Steps</th><th></th></tr></thead>
      <tbody>${rows || '<tr><td colspan="4" class="empty">No definitions registered.</td></tr>'}</tbody></table></div>
    ${pagerHtml(defPager.stack.length > 0, !!data?.next_after, !after)}`, 'list');
  const to = (a) => `#/definitions?${new URLSearchParams({ limit, ...(a && { after: a }) })}`;
  wirePager($('.list'), defPager, after, data?.next_after, to);
}

// ---------- page: one definition (steps, versions, diff) ----------
async function definitionPage(name, token) {
  const base = `/saga-definitions/${enc(name)}`;
  const { data: latest } = await api(base);
  if (!current(token)) return;
  const versions = Array.from({ length: latest.version || 1 }, (_, i) => i + 1).reverse();
  const cache = new Map([[latest.version, latest]]); // version -> definition JSON
  const opts = (sel) => versions.map((v) => `<option value="${v}" ${v === sel ? 'selected' : ''}>v${v}${v === latest.version ? ' (latest)' : ''}</option>`).join('');
  const stepRows = (latest.steps || []).map((s) => `<tr><td><code>${esc(s.name)}</code></td><td>${esc(s.participant)}</td>
      <td><code>${esc(s.command)}</code></td>
      <td>${s.compensation ? `<code>${esc(s.compensation)}</code>` : '<span class="muted">— (pivot/forward-only)</span>'}</td>
      <td class="num">${esc(s.timeout_ms ?? '—')}</td><td class="num">${esc(s.retry?.max_attempts ?? '—')}</td></tr>`).join('');

  main.innerHTML = card(`<p class="crumbs"><a href="#/definitions">← Definitions</a></p>
      <div class="card-head"><h1>${esc(latest.name)}</h1><span class="badge">latest v${esc(latest.version)}</span></div>
      <div class="table-wrap"><table class="data"><thead><tr><th>Step</th><th>Participant</th><th>Command</th>
        <th>Compensation</th><th class="num">Timeout (ms)</th><th class="num">Retry max attempts</th></tr></thead>
        <tbody>${stepRows || '<tr><td colspan="6" class="empty">No steps.</td></tr>'}</tbody></table></div>`) +
    card(`<div class="card-head"><h2>Version</h2><select id="version-pick">${opts(latest.version)}</select></div>
      <div id="version-error"></div><pre class="json" id="version-json">${esc(JSON.stringify(latest, null, 2))}</pre>`) +
    card(`<h2>Compare versions</h2>
      <form id="compare-form" class="filters">
        <label>From <select name="from">${opts(Math.max(1, latest.version - 1))}</select></label>
        <label>To <select name="to">${opts(latest.version)}</select></label>
        <div class="buttons"><button type="submit" class="primary">Compare</button></div>
      </form><div id="diff-out"></div>`);

  // Version picker: fetch (once) and show the chosen version's JSON.
  $('#version-pick').addEventListener('change', async (ev) => {
    const v = Number(ev.target.value);
    const pre = $('#version-json');
    $('#version-error').innerHTML = '';
    try {
      if (!cache.has(v)) { pre.textContent = 'Loading…'; cache.set(v, (await api(`${base}/versions/${v}`)).data); }
      if (Number($('#version-pick')?.value) === v) pre.textContent = JSON.stringify(cache.get(v), null, 2);
    } catch (e) { $('#version-error').innerHTML = errorHtml(e); pre.textContent = ''; }
  });
  // Compare form: show added / removed / changed steps between two versions.
  $('#compare-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const fd = new FormData(ev.target);
    const out = $('#diff-out');
    out.innerHTML = loadingHtml;
    try {
      const { data } = await api(`${base}/diff?${new URLSearchParams({ from: fd.get('from'), to: fd.get('to') })}`);
      out.innerHTML = diffHtml(data || {}, fd.get('from'), fd.get('to'));
    } catch (e) { out.innerHTML = errorHtml(e); }
  });
  // With two versions or more, the latest change is shown at once.
  if (latest.version > 1) $('#compare-form').requestSubmit();
}

function diffHtml(d, from, to) {
  const added = d.added || [], removed = d.removed || [], changed = d.changed || [], fields = d.fields || [];
  const list = (xs, cls) => (xs.length
    ? `<ul class="diff ${cls}">${xs.map((x) => `<li><code>${esc(x)}</code></li>`).join('')}</ul>` : '<p class="muted">none</p>');
  const head = `<p class="muted">v${esc(from)} → v${esc(to)}</p>`;
  if (!added.length && !removed.length && !changed.length && !fields.length) return `${head}<p>No differences.</p>`;
  const rows = changed.map((c) => `<tr><td><code>${esc(c.step)}</code></td>
      <td>${(c.fields || []).map((f) => `<span class="chip">${esc(f)}</span>`).join(' ')}</td></tr>`).join('');
  return `${head}<div class="diff-grid">
    <div><h3>Added steps</h3>${list(added, 'added')}</div>
    <div><h3>Removed steps</h3>${list(removed, 'removed')}</div></div>
    ${fields.length ? `<h3>Changed definition fields</h3><p>${fields.map((f) => `<span class="chip">${esc(f)}</span>`).join(' ')}</p>` : ''}
    <h3>Changed steps</h3>${changed.length ? `<table class="data"><thead><tr><th>Step</th><th>Changed fields</th></tr></thead>
      <tbody>${rows}</tbody></table>` : '<p class="muted">none</p>'}`;
}

// ---------- the bearer token field in the top bar ----------
(() => {
  const field = document.getElementById('token');
  if (!field) return;
  try { field.value = sessionStorage.getItem(TOKEN_KEY) || ''; } catch { /* storage disabled */ }
  field.addEventListener('change', () => {
    try { sessionStorage.setItem(TOKEN_KEY, field.value.trim()); } catch { /* storage disabled */ }
    route();
  });
})();
