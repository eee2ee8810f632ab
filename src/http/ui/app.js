// The msgbus dashboard. Plain JavaScript, no dependencies, no inline code
// (the page is served with `Content-Security-Policy: default-src 'self'`).
// Event content is written by untrusted agents: it only ever reaches the
// page as text (textContent, text nodes), never parsed as markup.
'use strict';

const TOKEN_KEY = 'msgbus.token';
const STATS_EVERY_MS = 1000;
const SLOW_EVERY_MS = 5000;
const WINDOW_MS = 10 * 60 * 1000;
const MIN_SPAN_MS = 60 * 1000;
const STALL_MS = 60 * 1000;
const TAIL_ROWS = 200;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  needToken: false,
  admin: null, // null: unknown; true or false once /alerts answered
  prev: null, // the previous /stats sample
  samples: [], // {t, rate, per, lat, queue}
  consumers: new Map(), // name -> {cursor, lag, movedAt, grew}
  pages: [], // the `after` of each page shown before the current one
  page: null, // {after, next}
  tail: { ctrl: null, paused: false, last: null, retry: null },
};

class Refused extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
  }
}

/** An element with text children (strings become text nodes, never HTML). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function headers(extra) {
  const h = new Headers(extra || {});
  if (state.token) h.set('Authorization', 'Bearer ' + state.token);
  return h;
}

/** GET or POST `path` as JSON; 401 asks for a token, other errors throw. */
async function api(path, init) {
  const res = await fetch(path, { cache: 'no-store', ...init, headers: headers(init && init.headers) });
  let body = null;
  const type = res.headers.get('content-type') || '';
  if (type.includes('json')) body = await res.json().catch(() => null);
  if (res.status === 401) askForToken(state.token ? 'This token was refused: enter another.' : 'This server needs an access token.');
  if (!res.ok && !(path === '/health' && res.status === 503)) throw new Refused(res.status, body);
  return body;
}

function askForToken(why) {
  state.needToken = true;
  $('token-form').classList.add('needed');
  notice(why);
}

function notice(text) {
  const n = $('notice');
  n.textContent = text || '';
  n.classList.toggle('hidden', !text);
}

// ---- formatting ------------------------------------------------------------

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (Math.abs(n) >= 100 || Number.isInteger(n)) return Math.round(n).toLocaleString('en-US');
  return n.toFixed(n < 10 ? 2 : 1);
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function fmtDuration(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function ago(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso || '–';
  return fmtDuration(Math.max(0, (Date.now() - t) / 1000)) + ' ago';
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el('tr', {}, ...cells)));
}

// ---- health strip ----------------------------------------------------------

function pill(label, value, kind, title) {
  const li = el('li', { class: 'pill' + (kind ? ' ' + kind : '') }, label + ': ', el('b', {}, value));
  if (title) li.title = title;
  return li;
}

let lastHealth = null;

async function refreshHealth() {
  try {
    lastHealth = await api('/health');
  } catch (e) {
    lastHealth = { status: 'unreachable', reasons: [e.message] };
  }
}

function renderHealth(stats) {
  const h = lastHealth || { status: '…', reasons: [] };
  const items = [];
  const ready = h.status === 'ready';
  items.push(pill('Ready', ready ? 'ready' : `not ready${h.reasons && h.reasons.length ? ': ' + h.reasons.join('; ') : ''}`, ready ? 'good' : 'bad'));
  if (stats) {
    const i = stats.integrity;
    const ok = i.status === 'ok' || i.status === 'repaired';
    items.push(pill('Integrity', i.status, ok ? 'good' : i.status === 'unchecked' ? '' : 'bad',
      i.open_findings && i.open_findings.length ? i.open_findings.join('; ') : undefined));
    items.push(pill('Last check', i.last_check ? ago(i.last_check) : 'none yet'));
    if (i.read_only) items.push(pill('Read-only', i.read_only, 'bad'));
    if (i.low_disk) items.push(pill('Low disk', i.low_disk, 'bad'));
    if (stats.writer.poisoned) items.push(pill('Writes refused', stats.writer.poisoned, 'bad'));
    items.push(pill('Uptime', fmtDuration(stats.uptime_seconds)));
    items.push(pill('Version', stats.version || '?'));
    items.push(pill('Store', `${fmtBytes(stats.store.bytes)} in ${stats.store.segments} segment${stats.store.segments === 1 ? '' : 's'}`));
    $('version').textContent = stats.version || '';
  }
  $('health').replaceChildren(...items);
}

// ---- throughput ------------------------------------------------------------

function sample(stats) {
  const now = Date.now();
  const w = stats.writer;
  const cur = { t: now, written: w.events_written, fsyncs: w.fsyncs, latTotal: w.fsync_latency_us.avg * w.fsyncs };
  const prev = state.prev;
  state.prev = cur;
  if (!prev || cur.written < prev.written) return; // first sample, or a restart
  const dt = (cur.t - prev.t) / 1000;
  const syncs = cur.fsyncs - prev.fsyncs;
  const events = cur.written - prev.written;
  state.samples.push({
    t: now,
    rate: dt > 0 ? events / dt : 0,
    per: syncs > 0 ? events / syncs : null,
    lat: syncs > 0 ? (cur.latTotal - prev.latTotal) / syncs / 1000 : null,
    queue: w.queue_depth,
  });
  while (state.samples.length && state.samples[0].t < now - WINDOW_MS) state.samples.shift();
}

/** The chart's time span: what has been sampled, at least a minute, at
 * most WINDOW_MS (the page keeps ten minutes of samples from when it
 * opened). */
function span(now) {
  const first = state.samples.length ? state.samples[0].t : now;
  return Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function chart(svg, key) {
  const now = Date.now();
  const width = span(now);
  const pts = state.samples.filter((s) => s[key] !== null);
  const nice = niceCeil(Math.max(...pts.map((s) => s[key]), 0));
  const line = svgEl('polyline', {
    points: pts.map((s) => {
      const x = 300 - ((now - s.t) / width) * 300;
      const y = 78 - (s[key] / nice) * 66;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(' '),
  });
  svg.replaceChildren(
    svgEl('line', { x1: 0, x2: 300, y1: 12, y2: 12, class: 'grid' }),
    svgEl('line', { x1: 0, x2: 300, y1: 45, y2: 45, class: 'grid' }),
    line,
    svgEl('text', { x: 2, y: 10 }, fmtNum(nice)),
    svgEl('text', { x: 298, y: 10, 'text-anchor': 'end' }, `last ${fmtDuration(width / 1000)}`),
  );
  return pts.length ? pts[pts.length - 1][key] : null;
}

/** The smallest of 1, 2, 5 times a power of ten at or above `v` (1 at least). */
function niceCeil(v) {
  if (!(v > 1)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function renderThroughput(stats) {
  $('now-rate').textContent = fmtNum(chart($('chart-rate'), 'rate'));
  $('now-per').textContent = fmtNum(chart($('chart-per'), 'per'));
  $('now-lat').textContent = fmtNum(chart($('chart-lat'), 'lat'));
  chart($('chart-queue'), 'queue');
  $('now-queue').textContent = `${stats.writer.queue_depth} / ${stats.writer.queue_capacity}`;
}

// ---- totals ----------------------------------------------------------------

function renderTotals(stats) {
  const e = stats.events;
  $('ev-total').textContent = fmtNum(e.total);
  $('ev-range').textContent = e.total ? `${e.first_seq}–${e.last_seq}` : 'none';
  for (const [id, map] of [['by-type', e.by_type], ['by-source', e.by_source]]) {
    const rows = Object.entries(map)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .map(([k, n]) => [el('td', {}, k), el('td', { class: 'num' }, fmtNum(n))]);
    replaceRows($(id).tBodies[0], rows);
  }
}

function renderRetention(stats) {
  const r = stats.retention;
  const rows = [
    ['Oldest retained seq', fmtNum(r.oldest_seq)],
    ['Max events', r.max_events === null ? 'unlimited' : fmtNum(r.max_events)],
    ['Max age', r.max_age_seconds === null ? 'unlimited' : fmtDuration(r.max_age_seconds)],
    ['Max bytes', r.max_bytes === null ? 'unlimited' : fmtBytes(r.max_bytes)],
    ['Deleted since start', `${fmtNum(r.events_deleted)} events, ${r.segments_deleted} segments, ${fmtBytes(r.bytes_reclaimed)}`],
    ['Backups', `${stats.integrity.backups.count}, newest verified ${stats.integrity.backups.newest_verified ? ago(stats.integrity.backups.newest_verified) : 'none'}`],
  ];
  $('retention').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

async function refreshStats() {
  if (state.needToken) return;
  let stats;
  try {
    stats = await api('/stats');
  } catch (e) {
    if (e.status !== 401) notice(`Cannot read /stats: ${e.message}`);
    renderHealth(null);
    return;
  }
  if (!state.needToken) notice('');
  sample(stats);
  renderHealth(stats);
  renderThroughput(stats);
  renderTotals(stats);
  renderRetention(stats);
}

// ---- consumers -------------------------------------------------------------

async function refreshConsumers() {
  if (state.needToken) return;
  let list;
  try {
    list = (await api('/consumers')).consumers;
  } catch (e) {
    return;
  }
  const now = Date.now();
  const seen = new Map();
  const rows = list.map((c) => {
    const old = state.consumers.get(c.name);
    const updated = Date.parse(c.updated_at);
    const moved = !old || old.cursor !== c.cursor;
    const s = {
      cursor: c.cursor,
      lag: c.lag,
      movedAt: moved ? (Number.isNaN(updated) ? now : Math.max(updated, old ? now : 0)) : old.movedAt,
      grew: moved ? false : old.grew || c.lag > old.lag,
    };
    seen.set(c.name, s);
    // Stalled: events keep arriving (the lag grew) while the cursor has
    // not moved for STALL_MS.
    let st = ['ok', 'state-ok'];
    if (c.lag > 0 && s.grew && now - s.movedAt >= STALL_MS) st = ['stalled', 'state-stalled'];
    else if (c.lag > 0) st = ['behind', 'state-behind'];
    return [
      el('td', {}, c.name),
      el('td', {}, c.mode),
      el('td', { class: 'num' }, fmtNum(c.cursor)),
      el('td', { class: 'num lag' }, fmtNum(c.lag)),
      el('td', {}, ago(new Date(s.movedAt).toISOString())),
      el('td', { class: st[1] }, st[0]),
    ];
  });
  state.consumers = seen;
  replaceRows($('consumers').tBodies[0], rows);
  $('consumers-empty').classList.toggle('hidden', list.length > 0);
}

// ---- event rows ------------------------------------------------------------

function eventRow(item) {
  const ev = item.event || {};
  const summary = el('summary', {},
    el('span', { class: 'seq' }, '#' + item.seq),
    el('span', { class: 'type' }, ev.type),
    el('span', { class: 'source' }, ev.source),
    ev.subject ? el('span', { class: 'subject' }, ev.subject) : null,
    el('span', { class: 'muted' }, ev.time || ''));
  const details = el('details', {}, summary);
  // The JSON is built only when opened: a long tail stays cheap.
  details.addEventListener('toggle', () => {
    if (details.open && details.children.length === 1) details.append(el('pre', {}, JSON.stringify(ev, null, 2)));
  });
  return el('li', { 'data-seq': String(item.seq) }, details);
}

// ---- browser ---------------------------------------------------------------

async function browse(after) {
  const form = $('browse');
  const q = new URLSearchParams();
  for (const name of ['type', 'type_prefix', 'source', 'subject']) {
    const v = form.elements[name].value.trim();
    if (v) q.set(name, v);
  }
  q.set('after', String(after));
  q.set('limit', form.elements.limit.value);
  const info = $('page-info');
  try {
    const page = await api('/events?' + q.toString());
    state.page = { after, next: page.next_after };
    $('results').replaceChildren(...page.events.map(eventRow));
    info.textContent = page.events.length
      ? `seq ${page.events[0].seq}–${page.events[page.events.length - 1].seq} of ${page.last_seq}`
      : `no events after ${after}`;
    $('next').disabled = page.next_after >= page.last_seq || page.events.length === 0;
    $('prev').disabled = state.pages.length === 0;
  } catch (e) {
    info.textContent = e.message;
  }
}

function startBrowse(e) {
  if (e) e.preventDefault();
  const raw = $('browse').elements.after.value.trim();
  const after = /^[0-9]+$/.test(raw) ? Number(raw) : 0;
  state.pages = [];
  browse(after);
}

// ---- live tail -------------------------------------------------------------

function tailState(text) {
  $('tail-state').textContent = text;
}

async function startTail() {
  if (state.tail.ctrl || state.tail.paused || state.needToken) return;
  const ctrl = new AbortController();
  state.tail.ctrl = ctrl;
  const after = state.tail.last === null ? 'latest' : String(state.tail.last);
  try {
    const res = await fetch('/events/stream?after=' + after, {
      headers: headers({ Accept: 'text/event-stream' }),
      cache: 'no-store',
      signal: ctrl.signal,
    });
    if (res.status === 401) {
      askForToken('This server needs an access token.');
      throw new Refused(401);
    }
    if (!res.ok) throw new Refused(res.status, await res.json().catch(() => null));
    tailState('live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        onTailMessage(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
    throw new Error('the stream ended');
  } catch (e) {
    if (state.tail.ctrl === ctrl) {
      state.tail.ctrl = null;
      if (!state.tail.paused && !state.needToken) {
        tailState(`disconnected (${e.message}); retrying…`);
        clearTimeout(state.tail.retry);
        state.tail.retry = setTimeout(startTail, 2000);
      }
    }
  }
}

function onTailMessage(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    else if (line.startsWith('event:')) event = line.slice(6).trim();
  }
  if (!data.length) return;
  if (event !== 'message') {
    tailState(`stream ${event}: ${data.join('\n')}`);
    return;
  }
  let item;
  try {
    item = JSON.parse(data.join('\n'));
  } catch (e) {
    return;
  }
  state.tail.last = item.seq;
  const list = $('tail');
  list.prepend(eventRow(item));
  while (list.children.length > TAIL_ROWS) list.lastElementChild.remove();
}

function toggleTail() {
  const t = state.tail;
  const button = $('tail-toggle');
  if (t.paused) {
    t.paused = false;
    button.textContent = 'Pause';
    button.setAttribute('aria-pressed', 'false');
    tailState('connecting…');
    startTail();
  } else {
    t.paused = true;
    button.textContent = 'Resume';
    button.setAttribute('aria-pressed', 'true');
    clearTimeout(t.retry);
    if (t.ctrl) { const c = t.ctrl; t.ctrl = null; c.abort(); }
    tailState(`paused after seq ${t.last === null ? '–' : t.last}; resume continues from there`);
  }
}

// ---- alerts and backups (admin) --------------------------------------------

function setAdmin(admin, why) {
  state.admin = admin;
  for (const e of document.querySelectorAll('.admin-only')) e.classList.toggle('hidden', !admin);
  for (const id of ['alerts-note', 'backups-note']) {
    $(id).textContent = admin ? '' : why;
    $(id).classList.toggle('hidden', admin || !why);
  }
}

async function refreshAdmin() {
  if (state.needToken) return;
  let alerts, backups;
  try {
    alerts = await api('/alerts');
    backups = await api('/admin/backups');
  } catch (e) {
    if (e.status === 403) setAdmin(false, 'Alerts and backups need an admin token.');
    return;
  }
  setAdmin(true, '');
  const items = alerts.alerts.slice().reverse().map((a) => el('li', { class: a.resolved ? 'resolved' : '' },
    el('span', { class: 'sev-' + a.severity }, a.severity), ' ',
    el('b', {}, a.kind), ' ', el('span', { class: 'muted' }, ago(a.time)),
    a.resolved ? ' (resolved)' : '', el('br'), a.file ? a.file + ': ' : '', a.detail));
  $('alerts').replaceChildren(...items);
  if (!items.length) $('alerts').replaceChildren(el('li', { class: 'muted' }, 'No alerts since start.'));
  const rows = backups.backups.slice().reverse().map((b) => [
    el('td', {}, b.created_at),
    el('td', { class: 'num' }, `${b.first_seq}–${b.last_seq}`),
    el('td', { class: 'num' }, fmtBytes(b.bytes)),
    el('td', { class: b.verified ? 'state-ok' : 'state-stalled' }, b.verified ? 'yes' : 'no' + (b.error ? ': ' + b.error : '')),
  ]);
  replaceRows($('backups').tBodies[0], rows);
}

async function adminAction(button, path, done) {
  const out = $('admin-result');
  button.disabled = true;
  out.textContent = 'working…';
  try {
    const r = await api(path, { method: 'POST' });
    out.textContent = done(r);
  } catch (e) {
    out.textContent = `refused: ${e.message}`;
  } finally {
    button.disabled = false;
    refreshAdmin();
  }
}

// ---- start -----------------------------------------------------------------

function refreshAll() {
  refreshStats();
  refreshConsumers();
  refreshAdmin();
}

function useToken(e) {
  e.preventDefault();
  const input = $('token');
  state.token = input.value.trim();
  input.value = '';
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  state.needToken = false;
  state.admin = null;
  $('token-form').classList.remove('needed');
  notice('');
  if (state.tail.ctrl) { const c = state.tail.ctrl; state.tail.ctrl = null; c.abort(); }
  refreshAll();
  startTail();
  startBrowse();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  location.reload();
}

function main() {
  $('token-form').addEventListener('submit', useToken);
  $('token-forget').addEventListener('click', forgetToken);
  $('browse').addEventListener('submit', startBrowse);
  $('next').addEventListener('click', () => {
    if (!state.page) return;
    state.pages.push(state.page.after);
    browse(state.page.next);
  });
  $('prev').addEventListener('click', () => {
    if (state.pages.length) browse(state.pages.pop());
  });
  $('tail-toggle').addEventListener('click', toggleTail);
  $('backup-now').addEventListener('click', (e) => adminAction(e.currentTarget, '/admin/backups',
    (b) => `backup ${b.name} taken (seq ${b.first_seq}–${b.last_seq}, verified)`));
  $('verify-now').addEventListener('click', (e) => adminAction(e.currentTarget, '/admin/verify',
    (r) => r.status
      ? `check ${r.run}: ${r.status}, ${r.findings.length} findings, ${r.repairs.length} repairs, ${r.backup_files_verified} backup files verified`
      : `check ${r.run} ${r.state}: still running`));
  setAdmin(false, '');
  refreshHealth().then(refreshAll);
  startTail();
  startBrowse();
  setInterval(refreshStats, STATS_EVERY_MS);
  setInterval(refreshConsumers, 2000);
  setInterval(() => { refreshHealth(); refreshAdmin(); }, SLOW_EVERY_MS);
}

main();
