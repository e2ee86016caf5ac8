// Drover's debug page: served by a replica (or by `drover console`), talks only to it.
// Live data comes over one server-sent event stream (/debug/events): a coalesced snapshot every
// 250 ms at most, and the watched worker's or container's changes. The cluster table is read
// from /debug/cluster every CLUSTER_EVERY_MS. Every figure says where it came from.
'use strict';

const CLUSTER_EVERY_MS = 2000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const WORKER_STATES = ['pending', 'available', 'draining', 'disabled', 'lost'];
const CONTAINER_STATES = ['queued', 'placed', 'running', 'stopping', 'exited', 'released', 'failed', 'lost'];

const $ = (id) => document.getElementById(id);
const charts = { worker: null, container: null, watched: null };
let stream = null;
let watchTarget = null; // { kind, id }
let watchedMachine = null;
let lastSnapshot = null;
let mode = 'replica';

function text(value) {
  return document.createTextNode(value === null || value === undefined ? '-' : String(value));
}

function cell(row, value, asCode) {
  const td = document.createElement('td');
  if (value instanceof Node) td.appendChild(value);
  else if (asCode) {
    const code = document.createElement('code');
    code.appendChild(text(value));
    td.appendChild(code);
  } else td.appendChild(text(value));
  row.appendChild(td);
  return td;
}

function clear(element) {
  while (element.firstChild) element.removeChild(element.firstChild);
}

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false }) + '.' + String(ms % 1000).padStart(3, '0');
}

function ago(ms) {
  if (ms === null || ms === undefined) return '-';
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}

// --- charts -------------------------------------------------------------------------------

async function loadChart(container, machine) {
  const response = await fetch('/debug/charts/' + machine + '.svg');
  if (!response.ok) throw new Error('chart ' + machine + ': HTTP ' + response.status);
  const parsed = new DOMParser().parseFromString(await response.text(), 'image/svg+xml');
  const svg = document.importNode(parsed.documentElement, true);
  svg.removeAttribute('width');
  svg.removeAttribute('height');
  clear(container);
  container.appendChild(svg);
  return svg;
}

function stateGroup(svg, machine, state) {
  return svg.querySelector('[id="state:' + machine + '.' + state + '"]');
}

/** A count badge at the top-right corner of each state's box. */
function setCounts(svg, machine, counts) {
  if (svg === null) return;
  for (const [state, count] of Object.entries(counts)) {
    const group = stateGroup(svg, machine, state);
    if (group === null) continue;
    let badge = group.querySelector('g.badge');
    if (badge === null) {
      const shape = group.querySelector('path, polygon, ellipse');
      if (shape === null) continue;
      const box = shape.getBBox();
      badge = document.createElementNS(SVG_NS, 'g');
      badge.setAttribute('class', 'badge');
      const back = document.createElementNS(SVG_NS, 'rect');
      back.setAttribute('class', 'badge-back');
      back.setAttribute('rx', '7');
      back.setAttribute('height', '17');
      back.setAttribute('y', String(box.y - 11));
      const label = document.createElementNS(SVG_NS, 'text');
      label.setAttribute('class', 'badge-text');
      label.setAttribute('text-anchor', 'middle');
      label.setAttribute('y', String(box.y + 2.5));
      badge.appendChild(back);
      badge.appendChild(label);
      badge.dataset.right = String(box.x + box.width);
      group.appendChild(badge);
    }
    const label = badge.querySelector('text');
    const back = badge.querySelector('rect');
    const shown = String(count);
    if (label.textContent !== shown) {
      label.textContent = shown;
      const width = 12 + 8 * shown.length;
      const right = Number(badge.dataset.right);
      back.setAttribute('width', String(width));
      back.setAttribute('x', String(right - width + 6));
      label.setAttribute('x', String(right - width / 2 + 6));
    }
    back.classList.toggle('zero', count === 0);
  }
}

function highlight(svg, machine, state) {
  if (svg === null) return;
  for (const group of svg.querySelectorAll('g.current')) group.classList.remove('current');
  if (state === null) return;
  const group = stateGroup(svg, machine, state);
  if (group !== null) group.classList.add('current');
}

// --- snapshot -----------------------------------------------------------------------------

function figure(container, label, value, bad) {
  const box = document.createElement('div');
  box.className = 'figure' + (bad ? ' bad' : '');
  const v = document.createElement('div');
  v.className = 'value';
  v.appendChild(text(value));
  const l = document.createElement('div');
  l.className = 'label';
  l.appendChild(text(label));
  box.appendChild(v);
  box.appendChild(l);
  container.appendChild(box);
}

function renderSnapshot(snapshot) {
  lastSnapshot = snapshot;
  const status = snapshot.status;
  $('served-by').textContent = 'served by ' + snapshot.source + ' at ' + time(snapshot.at);
  document.title = 'Drover debug: ' + snapshot.replicaId;
  const from = '(from ' + snapshot.source + ')';
  for (const id of ['replica-source', 'shards-source', 'refusals-source']) $(id).textContent = from;
  $('worker-chart-source').textContent = 'workers of the ' + snapshot.shards.length + ' shards ' + snapshot.source + ' owns';
  $('container-chart-source').textContent = 'queued: now, in this replica\'s backlog; other states: changes ' + snapshot.source + ' published since it started';

  const figures = $('figures');
  clear(figures);
  const links = status.links || {};
  figure(figures, 'shards held (of ' + snapshot.shardCount + ')', status.shards.length);
  figure(figures, 'workers', status.workers);
  figure(figures, 'members', (status.members || []).length);
  figure(figures, 'placements / s (last 5 s)', snapshot.placementsPerSecond);
  figure(figures, 'placed through this router', status.router.placed);
  figure(figures, 'backlog depth', snapshot.containerStates.queued);
  figure(figures, 'backlog unschedulable', snapshot.backlog.unschedulable);
  figure(figures, 'attempts in flight', snapshot.backlog.inFlight);
  figure(figures, 're-routes', status.router.reroutes);
  const fenceRefusals = status.owners.fenceRefusals + ((status.backlog && status.backlog.fenceRefusals) || 0);
  figure(figures, 'fence refusals (owners and backlog)', fenceRefusals, fenceRefusals > 0);
  figure(figures, 'version conflicts', status.owners.versionConflicts, status.owners.versionConflicts > 0);
  figure(figures, 'leases lost', status.leases.lost, status.leases.lost > 0);
  figure(figures, 'NATS link', links.nats ? (links.nats.cut ? 'cut' : 'up') : '-', links.nats && links.nats.cut);
  figure(figures, 'Redis link', links.redis ? (links.redis.cut ? 'cut' : 'up') : '-', links.redis && links.redis.cut);
  figure(figures, 'routing', status.routing ? 'yes' : 'no', !status.routing);
  figure(figures, 'uptime', ago(status.uptimeMs));

  setCounts(charts.worker, 'worker', snapshot.workerStates);
  const containerCounts = {};
  for (const state of CONTAINER_STATES) containerCounts[state] = state === 'queued' ? snapshot.containerStates.queued : (snapshot.containerStates.published[state] || 0);
  setCounts(charts.container, 'container', containerCounts);

  const shardRows = $('shards').tBodies[0];
  clear(shardRows);
  for (const shard of snapshot.shards) {
    const row = shardRows.insertRow();
    cell(row, shard.shard);
    cell(row, shard.epoch);
    cell(row, ago(shard.leaseExpiresInMs));
    const handOver = shard.lastHandOver;
    cell(row, handOver === null ? '-' : handOver.kind + ' at ' + time(handOver.at) + (handOver.durationMs !== undefined ? ' (' + handOver.durationMs + ' ms)' : ''));
    cell(row, WORKER_STATES.filter((s) => shard.workers[s]).map((s) => s + ' ' + shard.workers[s]).join(', ') || 'none');
    cell(row, shard.queued);
  }

  const refusalRows = $('refusals').tBodies[0];
  clear(refusalRows);
  if (snapshot.refusals.length === 0) {
    const row = refusalRows.insertRow();
    const td = cell(row, 'none since this replica started');
    td.colSpan = 5;
  }
  for (const refusal of snapshot.refusals) {
    const row = refusalRows.insertRow();
    cell(row, time(refusal.at));
    cell(row, refusal.kind);
    cell(row, refusal.shard);
    cell(row, refusal.workerId, true);
    cell(row, refusal.code, true);
  }
}

// --- one watched worker or container -----------------------------------------------------

async function renderWatch(watch) {
  const panel = $('watch-panel');
  const message = $('watch-message');
  if (watch === null) {
    panel.hidden = true;
    return;
  }
  if (!watch.found) {
    panel.hidden = true;
    message.textContent = watch.message || (watch.kind + ' ' + watch.id + ' was not found');
    return;
  }
  message.textContent = '';
  panel.hidden = false;
  if (watchedMachine !== watch.kind) {
    watchedMachine = watch.kind;
    charts.watched = await loadChart($('watch-chart'), watch.kind);
  }
  $('watch-title').textContent = watch.kind + ' ' + watch.id;
  $('watch-state').textContent = watch.state;
  $('watch-source').textContent = '(from ' + (lastSnapshot ? lastSnapshot.source : 'this replica') + (watch.shard !== null ? ', shard ' + watch.shard : '') + ')';
  highlight(charts.watched, watch.kind, watch.state);

  const context = $('watch-context');
  clear(context);
  for (const [key, value] of Object.entries(watch.context || {})) {
    const row = context.insertRow();
    cell(row, key);
    cell(row, typeof value === 'object' && value !== null ? JSON.stringify(value) : value, typeof value === 'object');
  }
  const events = $('watch-events').tBodies[0];
  clear(events);
  if (watch.events.length === 0) {
    const td = cell(events.insertRow(), 'no event since the watch began');
    td.colSpan = 4;
  }
  for (const event of watch.events) {
    const row = events.insertRow();
    cell(row, time(event.at));
    cell(row, event.type, true);
    cell(row, JSON.stringify(event.detail), true);
    cell(row, event.state);
  }
}

// --- the stream ---------------------------------------------------------------------------

function connect() {
  if (stream !== null) stream.close();
  const query = watchTarget === null ? '' : '?watch=' + encodeURIComponent(watchTarget.kind + ':' + watchTarget.id);
  stream = new EventSource('/debug/events' + query);
  stream.addEventListener('open', () => {
    $('connection').textContent = 'live';
    $('connection').classList.add('live');
  });
  stream.addEventListener('error', () => {
    $('connection').textContent = 'reconnecting';
    $('connection').classList.remove('live');
  });
  stream.addEventListener('snapshot', (event) => renderSnapshot(JSON.parse(event.data)));
  stream.addEventListener('watch', (event) => void renderWatch(JSON.parse(event.data)));
}

// --- the cluster --------------------------------------------------------------------------

async function refreshCluster() {
  try {
    const response = await fetch('/debug/cluster');
    if (!response.ok) throw new Error('HTTP ' + response.status);
    const cluster = await response.json();
    $('cluster-source').textContent = '(' + cluster.source + ' at ' + time(cluster.at) + '; ' + cluster.replicas.length + ' replica(s) answered)';
    const rows = $('replicas').tBodies[0];
    clear(rows);
    const owners = new Map();
    cluster.replicas.forEach((replica, index) => owners.set(replica.replicaId, index));
    const shardCount = lastSnapshot ? lastSnapshot.shardCount : Math.max(0, ...cluster.replicas.flatMap((r) => r.shards).map((s) => s + 1));
    const ownerOf = new Array(shardCount).fill(null);
    for (const replica of cluster.replicas) {
      for (const shard of replica.shards) ownerOf[shard] = replica.replicaId;
      const row = rows.insertRow();
      cell(row, replica.replicaId, true);
      cell(row, replica.shards.length);
      cell(row, replica.workers);
      cell(row, (replica.members || []).join(', ') || 'none', true);
      const links = replica.links ? ['nats', 'redis'].map((l) => l + (replica.links[l].cut ? ' cut' : ' up')).join(', ') : '-';
      cell(row, links);
      cell(row, replica.router ? replica.router.placed : '-');
      cell(row, replica.backlog ? replica.backlog.queued : '-');
      if (replica.http && replica.http.url) {
        const link = document.createElement('a');
        link.href = replica.http.url;
        link.textContent = replica.http.url;
        cell(row, link);
      } else cell(row, 'no HTTP');
    }
    const grid = $('ownership');
    clear(grid);
    ownerOf.forEach((owner, shard) => {
      const box = document.createElement('div');
      box.className = owner === null ? 'onone' : 'o' + (owners.get(owner) % 8);
      box.title = 'shard ' + shard + ': ' + (owner === null ? 'no replica answered for it' : owner);
      box.textContent = String(shard);
      grid.appendChild(box);
    });
    const legend = $('ownership-legend');
    clear(legend);
    for (const [replicaId, index] of owners) {
      const entry = document.createElement('span');
      entry.className = 'o' + (index % 8);
      entry.style.background = 'none';
      entry.textContent = replicaId;
      legend.appendChild(entry);
    }
  } catch (error) {
    $('cluster-source').textContent = '(cluster status unavailable: ' + error.message + ')';
  }
}

// --- start --------------------------------------------------------------------------------

function watchFromForm(event) {
  event.preventDefault();
  const id = $('watch-id').value.trim();
  if (id === '') return;
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(id)) {
    $('watch-message').textContent = 'an id is letters, digits, "_" and "-" (at most 128)';
    return;
  }
  watchTarget = { kind: $('watch-kind').value, id };
  history.replaceState(null, '', '?watch=' + encodeURIComponent(watchTarget.kind + ':' + id));
  $('watch-message').textContent = 'watching ' + watchTarget.kind + ' ' + id + '…';
  connect();
}

async function main() {
  const first = await (await fetch('/debug/snapshot')).json();
  mode = first.mode;
  $('watch-form').addEventListener('submit', watchFromForm);
  $('watch-clear').addEventListener('click', () => {
    watchTarget = null;
    history.replaceState(null, '', location.pathname);
    $('watch-panel').hidden = true;
    $('watch-message').textContent = '';
    connect();
  });
  if (mode === 'console') {
    $('mode').textContent = 'console';
    $('served-by').textContent = 'served by ' + first.source + ' (no replica of its own: every figure below is collected over NATS)';
    for (const id of ['replica-section', 'charts-section', 'inspect-section', 'shards-section', 'refusals-section']) $(id).hidden = true;
    $('connection').textContent = 'polling';
    $('connection').classList.add('live');
  } else {
    [charts.worker, charts.container] = await Promise.all([loadChart($('worker-chart'), 'worker'), loadChart($('container-chart'), 'container')]);
    renderSnapshot(first);
    const wanted = new URLSearchParams(location.search).get('watch');
    if (wanted !== null && /^(worker|container):/.test(wanted)) {
      const [kind, ...rest] = wanted.split(':');
      watchTarget = { kind, id: rest.join(':') };
      $('watch-kind').value = kind;
      $('watch-id').value = watchTarget.id;
    }
    connect();
  }
  await refreshCluster();
  setInterval(refreshCluster, CLUSTER_EVERY_MS);
}

main().catch((error) => {
  $('served-by').textContent = 'failed to load: ' + error.message;
});
