/* Sabot dashboard. Plain JavaScript, no build step, no library: it reads the
 * coordinator's JSON API (the API is the contract) and polls it once a second.
 * Everything user-provided (job and operator names, errors) is set as text, never
 * as HTML. */
'use strict';

(() => {
  const POLL_MS = 1000;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
    '#bcbd22', '#17becf'];
  const TABS = [['graph', 'Overview'], ['checkpoints', 'Checkpoints'], ['exceptions', 'Exceptions'],
    ['rescales', 'Rescales'], ['keygroups', 'Key groups']];

  const state = { view: null, timer: null, paused: false, busy: false, again: false };

  // -- small helpers ----------------------------------------------------------------------

  const $ = (selector, root) => (root || document).querySelector(selector);

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key === 'class') node.setAttribute('class', value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    return node;
  }

  function el(tag, attrs, ...kids) {
    const node = setAttrs(document.createElement(tag), attrs);
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) node.append(kid);
    return node;
  }

  function sv(tag, attrs, ...kids) {
    const node = setAttrs(document.createElementNS(SVGNS, tag), attrs);
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) node.append(kid);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  const fmtInt = (x) => (x === null || x === undefined ? '–' : Math.round(x).toLocaleString('en-US'));

  function fmtRate(x) {
    if (x === null || x === undefined) return '–';
    const a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toFixed(1) + 'G';
    if (a >= 1e6) return (x / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return (x / 1e3).toFixed(0) + 'k';
    if (a >= 1e3) return (x / 1e3).toFixed(1) + 'k';
    return a >= 10 ? x.toFixed(0) : x.toFixed(1);
  }

  function fmtBytes(x) {
    if (x === null || x === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
    return (i === 0 ? x.toFixed(0) : x.toFixed(1)) + ' ' + units[i];
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1) return ms.toFixed(2) + ' ms';
    if (ms < 1000) return ms.toFixed(0) + ' ms';
    return fmtSeconds(ms / 1000);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + Math.floor(s % 60) + ' s';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }

  function fmtTime(epochSeconds) {
    if (!epochSeconds) return '–';
    const d = new Date(epochSeconds * 1000);
    return d.toLocaleTimeString('en-GB', { hour12: false });
  }

  function fmtDateTime(epochSeconds) {
    if (!epochSeconds) return '–';
    const d = new Date(epochSeconds * 1000);
    return d.toLocaleDateString('en-CA') + ' ' + d.toLocaleTimeString('en-GB', { hour12: false });
  }

  const pct = (x) => (x === null || x === undefined ? '–' : Math.round(x * 100) + '%');
  const badge = (s) => el('span', { class: 'badge ' + (s || ''), text: s || '–' });
  const terminal = (s) => s === 'FINISHED' || s === 'FAILED' || s === 'CANCELED';

  function shareBar(busy, bp, idle) {
    const bar = el('span', { class: 'bar', 'aria-hidden': 'true' });
    [['b', busy], ['p', bp], ['i', idle]].forEach(([cls, v]) => {
      const part = el('span', { class: cls });
      part.style.width = ((v || 0) * 100).toFixed(1) + '%';
      bar.append(part);
    });
    return bar;
  }

  // -- the API ----------------------------------------------------------------------------

  async function api(method, path, body) {
    const options = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      options.headers['X-Sabot-Dashboard'] = '1'; // the session cookie alone may not change anything
      if (body !== undefined) {
        options.headers['Content-Type'] = 'application/json';
        options.body = JSON.stringify(body);
      }
    }
    const response = await fetch(path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (response.status === 401 && document.body.dataset.login === 'true') {
      window.location.assign('/login'); // the session ended
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || (response.status + ' ' + response.statusText));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const jobPath = (jobId, rest) => '/jobs/' + encodeURIComponent(jobId) + (rest || '');

  // -- notices and confirmation --------------------------------------------------------------

  function notify(message, isError) {
    const box = $('#notice');
    $('#notice-text').textContent = message;
    box.classList.toggle('error', Boolean(isError));
    box.hidden = false;
  }

  function confirmAction(title, text, okLabel, danger) {
    const dialog = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    const ok = $('#confirm-ok');
    ok.textContent = okLabel || 'Confirm';
    ok.className = danger ? 'primary danger' : 'primary';
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.showModal();
      ok.focus();
    });
  }

  /** Ask, then call the API; show what it answered (its error if it refused). */
  async function act(title, text, okLabel, call, done, danger) {
    if (!(await confirmAction(title, text, okLabel, danger))) return null;
    try {
      const result = await call();
      notify(done(result), false);
      refreshSoon();
      return result;
    } catch (e) {
      notify('Refused' + (e.status ? ' (HTTP ' + e.status + ')' : '') + ': ' + e.message, true);
      return null;
    }
  }

  // -- tables that keep their rows (and the focus) between updates ----------------------------

  function cellSignature(value) {
    if (value === null || value === undefined) return 's:–';
    if (typeof value !== 'object') return 's:' + value;
    return 'o:' + JSON.stringify(value);
  }

  function fillCell(td, value) {
    clear(td);
    if (value === null || value === undefined) { td.textContent = '–'; return; }
    if (typeof value !== 'object') { td.textContent = String(value); return; }
    if (value.href) td.append(el('a', { href: value.href, text: value.text }));
    else if (value.badge !== undefined) td.append(badge(value.badge));
    else if (value.shares) {
      td.append(shareBar(value.shares[0], value.shares[1], value.shares[2]), el('span', { text: value.text }));
    } else if (value.code) td.append(el('code', { text: value.code }));
    else if (value.head !== undefined) {
      td.append(el('span', { class: 'cause', text: value.head }));
      if (value.tail) td.append(el('details', {}, el('summary', { text: 'traceback' }), el('pre', { class: 'trace', text: value.tail })));
    } else if (value.pre) {
      td.append(el('details', {}, el('summary', { text: value.text }), el('pre', { class: 'trace', text: value.pre })));
    } else td.textContent = value.text;
  }

  /** Make ``tbody`` show ``items`` (one row each, keyed), updating only cells that changed. */
  function syncRows(tbody, items, keyOf, columns, emptyText) {
    if (!items.length) {
      if (!(tbody.rows.length === 1 && tbody.rows[0].classList.contains('empty'))) {
        clear(tbody).append(el('tr', { class: 'empty' }, el('td', { colspan: columns.length, text: emptyText })));
      }
      return;
    }
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) {
      if (tr.classList.contains('empty')) tr.remove();
      else existing.set(tr.dataset.key, tr);
    }
    let previous = null;
    const seen = new Set();
    for (const item of items) {
      const key = String(keyOf(item));
      let tr = existing.get(key);
      if (!tr) {
        tr = el('tr', { dataset: { key } });
        const ids = (tbody.dataset.cols || '').split(',');
        const classes = (tbody.dataset.classes || '').split(',');
        columns.forEach((c, i) => tr.append(el('td', { class: c.cls || classes[i] || null,
          dataset: { col: c.id || ids[i] || String(i) } })));
      }
      columns.forEach((c, i) => {
        const value = c.value(item);
        const sig = cellSignature(value);
        if (tr.cells[i].dataset.sig !== sig) {
          fillCell(tr.cells[i], value);
          tr.cells[i].dataset.sig = sig;
        }
      });
      const next = previous ? previous.nextSibling : tbody.firstChild;
      if (next !== tr) tbody.insertBefore(tr, next);
      previous = tr;
      seen.add(key);
    }
    for (const [key, tr] of existing) if (!seen.has(key)) tr.remove();
  }

  function table(columns, caption) {
    const head = el('tr', {}, columns.map((c) => el('th', { class: c.cls || null, scope: 'col', text: c.title })));
    const tbody = el('tbody', { dataset: { cols: columns.map((c) => c.id).join(','),
      classes: columns.map((c) => c.cls || '').join(',') } });
    const t = el('table', {}, caption ? el('caption', { text: caption }) : null, el('thead', {}, head), tbody);
    return { node: el('div', { class: 'table-wrap' }, t), tbody, table: t };
  }

  function card(label, value, sub, id) {
    return el('div', { class: 'card', id }, el('div', { class: 'label', text: label }),
      el('div', { class: 'value', text: value }), el('div', { class: 'sub', text: sub || '' }));
  }

  function setCards(container, cards) {
    clear(container).append(...cards);
  }

  // -- polling ----------------------------------------------------------------------------

  function setStatus(text, stale) {
    const status = $('#status');
    status.textContent = text;
    status.classList.toggle('stale', Boolean(stale));
  }

  async function tick() {
    clearTimeout(state.timer);
    if (state.busy) { state.again = true; return; }
    const view = state.view;
    if (view && !state.paused) {
      state.busy = true;
      try {
        await view.update();
        if (view === state.view) setStatus('updated ' + fmtTime(Date.now() / 1000));
      } catch (e) {
        if (view === state.view) setStatus('update failed: ' + e.message, true);
      } finally {
        state.busy = false;
      }
    }
    if (state.again) { state.again = false; setTimeout(tick, 0); return; }
    state.timer = setTimeout(tick, POLL_MS);
  }

  function refreshSoon() {
    setTimeout(tick, 50);
  }

  // -- routing ----------------------------------------------------------------------------

  function parseRoute() {
    const hash = window.location.hash.replace(/^#/, '') || '/';
    const match = hash.match(/^\/jobs\/([^/]+)(?:\/([a-z]+))?$/);
    if (match) {
      const tab = TABS.some(([id]) => id === match[2]) ? match[2] : 'graph';
      return { page: 'job', jobId: decodeURIComponent(match[1]), tab };
    }
    return { page: 'overview' };
  }

  function route() {
    const r = parseRoute();
    if (r.page === 'job' && state.view && state.view.jobId === r.jobId) {
      state.view.showTab(r.tab);
      refreshSoon();
      return;
    }
    if (state.view && state.view.destroy) state.view.destroy();
    $('#notice').hidden = true; // it answered an action on the page we leave
    const main = clear($('#main'));
    state.view = r.page === 'job' ? new JobView(main, r.jobId, r.tab) : new OverviewView(main);
    setCrumbs(r);
    refreshSoon();
  }

  function setCrumbs(r, name) {
    const crumbs = clear($('#crumbs'));
    crumbs.append(el('a', { href: '#/', text: 'Overview' }));
    if (r.page === 'job') crumbs.append(el('span', { text: '›' }), el('span', { id: 'crumb-job', text: name || r.jobId }));
  }

  // -- the overview -------------------------------------------------------------------------

  class OverviewView {
    constructor(main) {
      this.cards = el('div', { class: 'cards', id: 'cluster-cards' });
      this.jobs = table([
        { id: 'name', title: 'Job' }, { id: 'state', title: 'State' }, { id: 'started', title: 'Submitted' },
        { id: 'duration', title: 'Duration', cls: 'num' }, { id: 'rate', title: 'Rows/s in', cls: 'num' },
        { id: 'tasks', title: 'Tasks', cls: 'num' }, { id: 'id', title: 'Job id' },
      ]);
      this.jobs.table.id = 'jobs-table';
      this.workers = table([
        { id: 'node', title: 'Worker' }, { id: 'state', title: 'State' }, { id: 'slots', title: 'Slots', cls: 'num' },
        { id: 'free', title: 'Free slots', cls: 'num' }, { id: 'tasks', title: 'Tasks', cls: 'num' },
        { id: 'pid', title: 'PID', cls: 'num' }, { id: 'beat', title: 'Last heartbeat', cls: 'num' },
        { id: 'data', title: 'Data address' },
      ]);
      this.workers.table.id = 'workers-table';
      main.append(el('h1', { text: 'Cluster' }), this.cards,
        el('section', { class: 'panel', 'aria-labelledby': 'jobs-h' }, el('h2', { id: 'jobs-h', text: 'Jobs' }),
          this.jobs.node),
        el('section', { class: 'panel', 'aria-labelledby': 'workers-h' },
          el('h2', { id: 'workers-h', text: 'Workers' }), this.workers.node));
      document.title = 'Sabot · cluster';
    }

    async update() {
      const [overview, jobs, nodes] = await Promise.all([api('GET', '/overview'), api('GET', '/jobs'),
        api('GET', '/nodes')]);
      const used = overview.total_slots - overview.free_slots;
      const running = overview.jobs.RUNNING || 0;
      const total = Object.values(overview.jobs).reduce((a, b) => a + b, 0);
      setCards(this.cards, [
        card('Workers', String(overview.workers), overview.lost_workers ? overview.lost_workers + ' lost' : 'all live',
          'card-workers'),
        card('Slots used', used + ' / ' + overview.total_slots, overview.free_slots + ' free', 'card-slots'),
        card('Uptime', fmtSeconds(overview.uptime_seconds), '', 'card-uptime'),
        card('Running tasks', String(overview.running_tasks), '', 'card-tasks'),
        card('Jobs running', String(running), total + ' in total' + (overview.pending_jobs ? ', ' +
          overview.pending_jobs + ' waiting for slots' : ''), 'card-jobs'),
      ]);
      const order = (j) => (terminal(j.state) ? 1 : 0);
      const list = jobs.jobs.slice().sort((a, b) => order(a) - order(b) || b.submitted_at - a.submitted_at);
      syncRows(this.jobs.tbody, list, (j) => j.job_id, [
        { value: (j) => ({ href: '#/jobs/' + encodeURIComponent(j.job_id), text: j.job_name }) },
        { value: (j) => ({ badge: j.state }) },
        { value: (j) => fmtDateTime(j.submitted_at) },
        { value: (j) => fmtSeconds(j.duration_seconds) },
        { value: (j) => (j.rows_per_second === null ? '–' : fmtRate(j.rows_per_second)) },
        { value: (j) => j.num_tasks },
        { value: (j) => ({ code: j.job_id }) },
      ], 'No jobs yet: submit one with `sabot submit` or POST /jobs/submit.');
      const workers = nodes.nodes.concat(nodes.lost);
      syncRows(this.workers.tbody, workers, (n) => n.node_id, [
        { value: (n) => ({ code: n.node_id }) },
        { value: (n) => ({ badge: n.state }) },
        { value: (n) => n.num_slots },
        { value: (n) => (n.free_slots === undefined ? '–' : n.free_slots) },
        { value: (n) => (n.running_tasks === undefined ? '–' : n.running_tasks) },
        { value: (n) => n.pid || '–' },
        { value: (n) => fmtSeconds(n.seconds_since_heartbeat) + ' ago' },
        { value: (n) => n.data_address },
      ], 'No worker has registered.');
    }
  }

  // -- the job page ------------------------------------------------------------------------

  class JobView {
    constructor(main, jobId, tab) {
      this.jobId = jobId;
      this.tab = tab;
      this.ticks = 0;
      this.dagSignature = null;
      this.selectedOp = null;
      this.detail = null;
      this.plan = null;
      this.kgOp = null;
      this.autoDirty = false;

      this.title = el('h1', { id: 'job-title', text: jobId });
      this.stateBadge = el('span', { id: 'job-state' });
      this.facts = el('div', { class: 'facts', id: 'job-facts' });
      this.checkpointButton = el('button', { type: 'button', id: 'action-checkpoint', text: 'Trigger checkpoint…',
        onclick: () => this.triggerCheckpoint() });
      this.cancelButton = el('button', { type: 'button', id: 'action-cancel', class: 'danger', text: 'Cancel job…',
        onclick: () => this.cancelJob() });
      const tablist = el('div', { role: 'tablist', 'aria-label': 'Job views', onkeydown: (e) => this.tabKey(e) });
      this.tabButtons = {};
      this.panels = {};
      for (const [id, label] of TABS) {
        const button = el('button', { type: 'button', role: 'tab', id: 'tab-' + id, 'aria-controls': 'panel-' + id,
          text: label, onclick: () => { window.location.hash = '#/jobs/' + encodeURIComponent(jobId) + '/' + id; } });
        this.tabButtons[id] = button;
        tablist.append(button);
        this.panels[id] = el('section', { role: 'tabpanel', id: 'panel-' + id, 'aria-labelledby': 'tab-' + id });
      }
      main.append(
        el('div', { class: 'job-head' }, this.title, this.stateBadge),
        this.facts,
        el('div', { class: 'actions' }, this.checkpointButton, this.cancelButton),
        tablist, ...Object.values(this.panels));
      this.buildGraphPanel();
      this.buildCheckpointsPanel();
      this.buildExceptionsPanel();
      this.buildRescalesPanel();
      this.buildKeyGroupsPanel();
      this.showTab(tab);
    }

    tabKey(event) {
      const ids = TABS.map(([id]) => id);
      const i = ids.indexOf(this.tab);
      let next = null;
      if (event.key === 'ArrowRight') next = ids[(i + 1) % ids.length];
      else if (event.key === 'ArrowLeft') next = ids[(i + ids.length - 1) % ids.length];
      else if (event.key === 'Home') next = ids[0];
      else if (event.key === 'End') next = ids[ids.length - 1];
      if (next) {
        event.preventDefault();
        window.location.hash = '#/jobs/' + encodeURIComponent(this.jobId) + '/' + next;
        this.tabButtons[next].focus();
      }
    }

    showTab(tab) {
      this.tab = tab;
      for (const [id] of TABS) {
        const selected = id === tab;
        this.tabButtons[id].setAttribute('aria-selected', String(selected));
        this.tabButtons[id].tabIndex = selected ? 0 : -1;
        this.panels[id].hidden = !selected;
      }
    }

    // ---- building the panels

    buildGraphPanel() {
      this.dagWrap = el('div', { class: 'dag-wrap', id: 'dag' });
      const legend = el('div', { class: 'legend' },
        el('span', {}, el('span', { class: 'swatch sw-busy' }), 'busy'),
        el('span', {}, el('span', { class: 'swatch sw-bp' }), 'back-pressured'),
        el('span', {}, el('span', { class: 'swatch sw-idle' }), 'idle'),
        el('span', { text: 'Node colour: its busiest subtask (blue idle → red busy; purple back-pressured). ' +
          'Select a node for its subtasks.' }));
      this.chart = el('div', { id: 'throughput' });
      this.chartLegend = el('div', { class: 'legend', id: 'throughput-legend' });
      this.rescaleSelect = el('select', { id: 'rescale-operator', required: true,
        onchange: () => this.updateRescaleInfo() });
      this.rescaleInput = el('input', { id: 'rescale-parallelism', type: 'number', min: 1, required: true });
      this.rescaleInfo = el('p', { id: 'rescale-info', class: 'muted small' });
      const form = el('form', { id: 'rescale-form', onsubmit: (e) => { e.preventDefault(); this.rescale(); } },
        el('div', { class: 'field' }, el('label', { for: 'rescale-operator', text: 'Operator' }), this.rescaleSelect),
        el('div', { class: 'field' }, el('label', { for: 'rescale-parallelism', text: 'New parallelism' }),
          this.rescaleInput),
        el('button', { type: 'submit', class: 'primary', id: 'rescale-submit', text: 'Rescale…' }),
        this.rescaleInfo);
      this.subtasks = el('div', { id: 'subtasks' });
      this.panels.graph.append(
        el('div', { class: 'panel' }, el('h2', { text: 'Job graph' }), this.dagWrap, legend),
        el('div', { class: 'row' },
          el('div', { class: 'panel grow' }, el('h2', { text: 'Throughput (rows per second)' }), this.chart,
            this.chartLegend),
          el('div', { class: 'panel' }, el('h2', { text: 'Rescale an operator live' }), form,
            el('p', { class: 'muted small', text: 'New tasks get slots, keyed state moves to them by key group; ' +
              'the rest of the job keeps running.' }))),
        el('div', { class: 'panel' }, el('h2', { text: 'Subtasks' }), this.subtasks));
    }

    buildCheckpointsPanel() {
      this.cpFacts = el('div', { class: 'cards', id: 'checkpoint-cards' });
      this.cpChart = el('div', { id: 'checkpoint-chart' });
      this.cpTable = table([
        { id: 'id', title: 'ID', cls: 'num' }, { id: 'state', title: 'State' }, { id: 'trigger', title: 'Triggered' },
        { id: 'duration', title: 'Duration', cls: 'num' }, { id: 'size', title: 'Size', cls: 'num' },
        { id: 'acks', title: 'Acks', cls: 'num' }, { id: 'align', title: 'Alignment', cls: 'num' },
        { id: 'ops', title: 'State per operator' }, { id: 'reason', title: 'Failure' },
      ]);
      this.cpTable.table.id = 'checkpoint-history';
      this.panels.checkpoints.append(this.cpFacts,
        el('div', { class: 'panel' }, el('h2', { text: 'Duration of recent checkpoints' }), this.cpChart),
        el('div', { class: 'panel' }, el('h2', { text: 'History' }), this.cpTable.node));
    }

    buildExceptionsPanel() {
      this.rootCause = el('div', { id: 'root-cause' });
      this.restarts = table([
        { id: 'time', title: 'Time' }, { id: 'restart', title: 'Restart', cls: 'num' },
        { id: 'task', title: 'Failing task' }, { id: 'cause', title: 'Root cause' },
        { id: 'checkpoint', title: 'Restored checkpoint', cls: 'num' }, { id: 'tasks', title: 'Tasks restarted',
          cls: 'num' }, { id: 'took', title: 'Restart took', cls: 'num' },
      ]);
      this.restarts.table.id = 'restart-history';
      this.panels.exceptions.append(
        el('div', { class: 'panel' }, el('h2', { text: 'Root cause' }), this.rootCause),
        el('div', { class: 'panel' }, el('h2', { text: 'Restart history' }), this.restarts.node));
    }

    buildRescalesPanel() {
      this.autoEnabled = el('input', { type: 'checkbox', id: 'auto-enabled', onchange: () => { this.autoDirty = true; } });
      this.autoInterval = el('input', { type: 'number', id: 'auto-interval', min: 0.1, step: 'any', value: 60,
        oninput: () => { this.autoDirty = true; } });
      this.autoThreshold = el('input', { type: 'number', id: 'auto-threshold', min: 0.01, step: 'any', value: 0.3,
        oninput: () => { this.autoDirty = true; } });
      this.autoStatus = el('p', { id: 'auto-status', class: 'muted small' });
      const form = el('form', { id: 'auto-form', onsubmit: (e) => { e.preventDefault(); this.applyAutoRebalance(); } },
        el('label', { class: 'inline-check', for: 'auto-enabled' }, this.autoEnabled, 'Auto-rebalance key groups'),
        el('div', { class: 'field' }, el('label', { for: 'auto-interval', text: 'Check every (s)' }), this.autoInterval),
        el('div', { class: 'field' }, el('label', { for: 'auto-threshold', text: 'Imbalance threshold' }),
          this.autoThreshold),
        el('button', { type: 'submit', id: 'auto-apply', text: 'Apply…' }), this.autoStatus);
      this.rescaleList = el('div', { id: 'rescale-list' });
      this.panels.rescales.append(
        el('div', { class: 'panel' }, el('h2', { text: 'Auto-rebalance' }), form),
        el('div', { class: 'panel' }, el('h2', { text: 'Live rescales and rebalances' }), this.rescaleList));
    }

    buildKeyGroupsPanel() {
      this.kgSelect = el('select', { id: 'kg-operator', onchange: () => { this.kgOp = this.kgSelect.value; refreshSoon(); } });
      this.kgBody = el('div', { id: 'kg-body' });
      this.panels.keygroups.append(el('div', { class: 'panel' },
        el('h2', { text: 'Key groups of keyed operators' }),
        el('p', { class: 'muted small', text: 'Each cell is one key group (key hash mod max parallelism), coloured ' +
          'by the rows per second routed to it; the strip below it shows the subtask that owns it.' }),
        el('div', { class: 'field' }, el('label', { for: 'kg-operator', text: 'Operator' }), this.kgSelect),
        this.kgBody));
    }

    // ---- updating

    async update() {
      const id = this.jobId;
      this.ticks += 1;
      const wants = [api('GET', jobPath(id)), api('GET', jobPath(id, '/plan')), api('GET', jobPath(id, '/subtasks')),
        api('GET', '/overview')];
      const tabCall = {
        graph: () => api('GET', jobPath(id, '/throughput')),
        checkpoints: () => api('GET', jobPath(id, '/checkpoints')),
        exceptions: () => api('GET', jobPath(id, '/exceptions')),
        keygroups: () => api('GET', jobPath(id, '/key-groups')),
      }[this.tab];
      wants.push(tabCall ? tabCall() : Promise.resolve(null));
      const [detail, plan, subtasks, overview, extra] = await Promise.all(wants);
      this.detail = detail;
      this.plan = plan;
      this.overview = overview;
      this.renderHead(detail);
      if (this.tab === 'graph') {
        this.renderDag(plan, subtasks);
        this.renderSubtasks(plan, subtasks);
        this.renderRescaleForm(plan, overview, detail);
        this.renderThroughput(plan, extra);
      } else if (this.tab === 'checkpoints') this.renderCheckpoints(extra, plan);
      else if (this.tab === 'exceptions') this.renderExceptions(extra);
      else if (this.tab === 'rescales') this.renderRescales(detail);
      else if (this.tab === 'keygroups') this.renderKeyGroups(extra);
    }

    renderHead(d) {
      this.title.textContent = d.job_name;
      document.title = 'Sabot · ' + d.job_name;
      const crumb = $('#crumb-job');
      if (crumb) crumb.textContent = d.job_name;
      clear(this.stateBadge).append(badge(d.state));
      const facts = [['Job id', d.job_id], ['Submitted', fmtDateTime(d.submitted_at)],
        ['Duration', fmtSeconds(d.duration_seconds)], ['Rows/s in', fmtRate(d.rows_per_second)],
        ['Tasks', String(d.num_tasks)], ['Restarts', String(d.restarts)]];
      clear(this.facts).append(...facts.map(([k, v]) => el('span', {}, k + ': ', el('b', { text: v }))));
      const ended = terminal(d.state);
      this.checkpointButton.disabled = ended;
      this.cancelButton.disabled = ended || d.state === 'CANCELING';
    }

    // ---- the DAG

    renderDag(plan, subtasks) {
      const signature = JSON.stringify([plan.operators.map((o) => [o.operator_id, o.parallelism]),
        plan.edges.map((e) => [e.upstream_operator_id, e.downstream_operator_id, e.partitioning])]);
      if (signature !== this.dagSignature) {
        this.dagSignature = signature;
        this.buildDag(plan);
      }
      const rates = new Map(subtasks.operators.map((o) => [o.operator_id, o]));
      for (const op of plan.operators) {
        const node = this.dagNodes.get(op.operator_id);
        const r = rates.get(op.operator_id) || {};
        const busy = r.max_busy;
        const bp = r.max_backpressured;
        node.box.setAttribute('fill', nodeColour(busy, bp));
        const source = op.operator_type === 'source';
        node.rates.textContent = source ? 'out ' + fmtRate(r.rows_out_per_second) + '/s'
          : 'in ' + fmtRate(r.rows_in_per_second) + '/s · out ' + fmtRate(r.rows_out_per_second) + '/s';
        node.shares.textContent = r.busy === null || r.busy === undefined ? 'no rates yet'
          : 'busy ' + pct(r.busy) + ' · bp ' + pct(r.backpressured) + ' · idle ' + pct(r.idle);
        [[node.barB, r.busy], [node.barP, r.backpressured], [node.barI, r.idle]].reduce((x, [rect, v]) => {
          const w = (v || 0) * (NODE_W - 20);
          rect.setAttribute('x', x);
          rect.setAttribute('width', w.toFixed(1));
          return x + w;
        }, 10);
        const label = op.name + ': ' + op.operator_type + ', parallelism ' + op.parallelism + ', ' +
          node.rates.textContent + ', ' + node.shares.textContent;
        node.g.setAttribute('aria-label', label);
        node.title.textContent = label;
        node.g.classList.toggle('selected', this.selectedOp === op.operator_id);
      }
    }

    buildDag(plan) {
      const layout = layoutDag(plan);
      const svg = sv('svg', { class: 'dag', viewBox: '0 0 ' + layout.width + ' ' + layout.height,
        width: layout.width, height: layout.height, role: 'group', 'aria-label': 'Job graph' });
      svg.append(sv('defs', {}, sv('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: 'auto-start-reverse' }, sv('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#6b7583' }))));
      for (const e of plan.edges) {
        const a = layout.pos.get(e.upstream_operator_id);
        const b = layout.pos.get(e.downstream_operator_id);
        const x1 = a.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const x2 = b.x - 2;
        const y2 = b.y + NODE_H / 2;
        const mid = (x1 + x2) / 2;
        const label = e.partitioning.toUpperCase() + (e.key_by ? ' [' + e.key_by.join(', ') + ']' : '');
        const width = label.length * 7 + 8;
        svg.append(sv('g', { class: 'edge', dataset: { from: e.upstream_operator_id, to: e.downstream_operator_id,
          partitioning: e.partitioning.toUpperCase() } },
          sv('path', { d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }),
          sv('rect', { x: mid - width / 2, y: (y1 + y2) / 2 - 9, width, height: 16, rx: 3 }),
          sv('text', { x: mid, y: (y1 + y2) / 2 + 3, 'text-anchor': 'middle', text: label })));
      }
      this.dagNodes = new Map();
      for (const op of plan.operators) {
        const p = layout.pos.get(op.operator_id);
        const title = sv('title');
        const box = sv('rect', { class: 'box', width: NODE_W, height: NODE_H, rx: 6, fill: '#e9edf2' });
        const name = sv('text', { class: 'name', x: 10, y: 18, text: truncate(op.name, 28) });
        const par = sv('text', { class: 'parallelism', x: 10, y: 35,
          text: op.operator_type + (op.keyed ? ', keyed' : '') + ' · parallelism ' + op.parallelism });
        const rates = sv('text', { class: 'rates', x: 10, y: 51 });
        const shares = sv('text', { class: 'shares', x: 10, y: 67 });
        const barB = sv('rect', { y: NODE_H - 9, height: 5, fill: '#d6453d' });
        const barP = sv('rect', { y: NODE_H - 9, height: 5, fill: '#6b4fa0' });
        const barI = sv('rect', { y: NODE_H - 9, height: 5, fill: '#4a8fd9' });
        const g = sv('g', { class: 'node', transform: `translate(${p.x},${p.y})`, tabindex: 0, role: 'button',
          dataset: { operatorId: op.operator_id, parallelism: String(op.parallelism), name: op.name } },
          title, box, name, par, rates, shares, barB, barP, barI);
        const select = () => this.selectOperator(op.operator_id);
        g.addEventListener('click', select);
        g.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(); } });
        svg.append(g);
        this.dagNodes.set(op.operator_id, { g, box, rates, shares, title, barB, barP, barI });
      }
      clear(this.dagWrap).append(svg);
    }

    selectOperator(opId) {
      this.selectedOp = opId;
      for (const [id, node] of this.dagNodes) node.g.classList.toggle('selected', id === opId);
      if ([...this.rescaleSelect.options].some((o) => o.value === opId)) {
        this.rescaleSelect.value = opId;
        this.updateRescaleInfo();
      }
      const section = document.getElementById('subtasks-' + opId);
      if (section) {
        section.open = true;
        section.scrollIntoView({ block: 'nearest' });
      }
    }

    // ---- subtasks

    renderSubtasks(plan, subtasks) {
      const present = new Set();
      for (const op of subtasks.operators) {
        const sectionId = 'subtasks-' + op.operator_id;
        present.add(sectionId);
        let section = document.getElementById(sectionId);
        if (!section) {
          const t = table([
            { id: 'subtask', title: 'Subtask', cls: 'num' }, { id: 'worker', title: 'Worker' },
            { id: 'slot', title: 'Slot' }, { id: 'state', title: 'State' },
            { id: 'rows_in', title: 'Rows in', cls: 'num' }, { id: 'rows_out', title: 'Rows out', cls: 'num' },
            { id: 'in_rate', title: 'In/s', cls: 'num' }, { id: 'out_rate', title: 'Out/s', cls: 'num' },
            { id: 'busy', title: 'Busy / back-pressured / idle' }, { id: 'watermark', title: 'Watermark',
              cls: 'num' },
          ]);
          t.table.classList.add('subtask-table');
          t.table.dataset.operatorId = op.operator_id;
          section = el('details', { id: sectionId, open: true, dataset: { operatorId: op.operator_id } },
            el('summary', {}, el('h3', { class: 'inline' })), t.node);
          section.tbody = t.tbody;
          this.subtasks.append(section);
        }
        $('summary h3', section).textContent = op.name + ' · parallelism ' + op.parallelism + ' · in ' +
          fmtRate(op.rows_in_per_second) + '/s · out ' + fmtRate(op.rows_out_per_second) + '/s';
        syncRows(section.tbody, op.subtasks, (s) => s.task_id, [
          { value: (s) => s.subtask_index },
          { value: (s) => ({ code: s.node_id || '–' }) },
          { value: (s) => ({ code: s.slot_id || '–' }) },
          { value: (s) => ({ badge: s.state }) },
          { value: (s) => fmtInt(s.rows_in) },
          { value: (s) => fmtInt(s.rows_out) },
          { value: (s) => fmtRate(s.rows_in_per_second) },
          { value: (s) => fmtRate(s.rows_out_per_second) },
          { value: (s) => (s.busy === null ? '–' : { shares: [s.busy, s.backpressured, s.idle],
            text: pct(s.busy) + ' / ' + pct(s.backpressured) + ' / ' + pct(s.idle) }) },
          { value: (s) => (s.watermark === null || s.watermark === undefined ? '–' : String(s.watermark)) },
        ], 'No subtasks.');
      }
      for (const section of Array.from(this.subtasks.children)) if (!present.has(section.id)) section.remove();
    }

    // ---- rescale form

    renderRescaleForm(plan, overview, detail) {
      const candidates = plan.operators.filter((o) => o.operator_type !== 'sink');
      const signature = candidates.map((o) => o.operator_id + ':' + o.name).join('|');
      if (this.rescaleSelect.dataset.sig !== signature) {
        const keep = this.rescaleSelect.value;
        clear(this.rescaleSelect).append(...candidates.map((o) => el('option', { value: o.operator_id, text: o.name })));
        this.rescaleSelect.dataset.sig = signature;
        const preferred = keep || (candidates.find((o) => o.keyed) || candidates[0] || {}).operator_id;
        if (preferred) this.rescaleSelect.value = preferred;
      }
      const running = detail.state === 'RUNNING';
      $('#rescale-submit').disabled = !running;
      this.updateRescaleInfo();
    }

    updateRescaleInfo() {
      if (!this.plan || !this.overview) return;
      const op = this.plan.operators.find((o) => o.operator_id === this.rescaleSelect.value);
      if (!op) { this.rescaleInfo.textContent = ''; return; }
      this.rescaleInput.max = op.max_parallelism;
      if (!this.rescaleInput.value || this.rescaleInput.dataset.for !== op.operator_id) {
        if (document.activeElement !== this.rescaleInput) {
          this.rescaleInput.value = op.parallelism;
          this.rescaleInput.dataset.for = op.operator_id;
        }
      }
      this.rescaleInfo.textContent = 'Now ' + op.parallelism + ' subtask(s), at most ' + op.max_parallelism +
        '. Free slots in the cluster: ' + this.overview.free_slots + ' of ' + this.overview.total_slots + '.' +
        (this.detail && this.detail.state !== 'RUNNING' ? ' Only a RUNNING job can be rescaled.' : '');
    }

    rescale() {
      const op = this.plan && this.plan.operators.find((o) => o.operator_id === this.rescaleSelect.value);
      const target = Number(this.rescaleInput.value);
      if (!op || !Number.isInteger(target)) { notify('Choose an operator and a whole number of subtasks.', true); return; }
      act('Rescale ' + op.name + '?',
        'Rescale "' + op.name + '" from ' + op.parallelism + ' to ' + target + ' subtask(s) while the job runs. ' +
        (op.keyed ? 'Its keyed state moves to the new subtasks by key group.' : ''), 'Rescale',
        () => api('POST', jobPath(this.jobId, '/rescale'), { operator_id: op.operator_id, new_parallelism: target }),
        (r) => r.rescale_id + ' started: ' + op.name + ' ' + r.old_parallelism + ' → ' + r.new_parallelism +
          ' (see the Rescales tab for its timeline).');
    }

    triggerCheckpoint() {
      act('Trigger a checkpoint?', 'Take a checkpoint of this job now (it completes asynchronously).', 'Trigger',
        () => api('POST', jobPath(this.jobId, '/checkpoints')),
        (r) => 'Checkpoint ' + r.checkpoint_id + ' triggered (see the Checkpoints tab).');
    }

    cancelJob() {
      act('Cancel this job?', 'Cancel "' + (this.detail ? this.detail.job_name : this.jobId) + '": its tasks stop ' +
        'and its slots are freed. This cannot be undone (a canceled job can be restored from its last checkpoint).',
      'Cancel job', () => api('POST', jobPath(this.jobId, '/cancel')), (r) => 'Job ' + r.job_id + ' is ' + r.state + '.',
      true);
    }

    applyAutoRebalance() {
      const enabled = this.autoEnabled.checked;
      const body = enabled ? { interval_seconds: Number(this.autoInterval.value),
        imbalance_threshold: Number(this.autoThreshold.value) } : { enabled: false };
      act(enabled ? 'Enable auto-rebalance?' : 'Disable auto-rebalance?', enabled
        ? 'Every ' + body.interval_seconds + ' s, key groups of keyed operators whose imbalance exceeds ' +
          body.imbalance_threshold + ' move between subtasks (live, like a rescale).'
        : 'Key groups stay where they are.', enabled ? 'Enable' : 'Disable',
      () => api('POST', jobPath(this.jobId, '/auto-rebalance'), body),
      (r) => { this.autoDirty = false; return r.enabled ? 'Auto-rebalance enabled.' : 'Auto-rebalance disabled.'; });
    }

    // ---- throughput chart

    renderThroughput(plan, history) {
      if (!history) return;
      const ops = plan.operators.filter((o) => o.operator_type !== 'sink' || plan.operators.length <= 6);
      const series = ops.map((op, i) => ({
        name: op.name + (op.operator_type === 'source' ? ' (out)' : ' (in)'),
        colour: PALETTE[i % PALETTE.length],
        points: history.samples.map((s) => [s.time, (op.operator_type === 'source' ? s.rows_out_per_second
          : s.rows_in_per_second)[op.operator_id]]).filter((p) => p[1] !== undefined && p[1] !== null),
      }));
      clear(this.chart).append(lineChart(series, history.interval_seconds * history.capacity, this.chart.clientWidth));
      const legendSig = series.map((s) => s.name).join('|');
      if (this.chartLegend.dataset.sig !== legendSig) {
        this.chartLegend.dataset.sig = legendSig;
        clear(this.chartLegend).append(...series.map((s) => {
          const swatch = el('span', { class: 'swatch' });
          swatch.style.background = s.colour;
          return el('span', {}, swatch, s.name);
        }));
      }
    }

    // ---- checkpoints

    renderCheckpoints(view, plan) {
      const names = new Map(plan.operators.map((o) => [o.operator_id, o.name]));
      const counts = view.counts || {};
      const latest = view.latest_completed;
      const restored = view.restored_from;
      setCards(this.cpFacts, [
        card('Interval', view.interval_ms ? fmtMs(view.interval_ms) : 'off', view.interval_ms ? 'periodic'
          : 'on demand only', 'cp-interval'),
        card('Completed', fmtInt(counts.completed || 0), (counts.failed || 0) + ' failed, ' +
          (counts.in_progress || 0) + ' in progress', 'cp-counts'),
        card('Latest completed', latest ? '#' + latest.checkpoint_id : '–', latest ? fmtBytes(latest.size_bytes) + ' · ' +
          fmtTime(latest.timestamp) : 'none yet', 'cp-latest'),
        card('Restored from', restored ? '#' + restored.checkpoint_id : '–', restored ? (restored.job_id || '') +
          ' ' + fmtTime(restored.at) : 'started fresh', 'cp-restored'),
        card('Timeout', view.timeout_s ? fmtSeconds(view.timeout_s) : '–', view.storage || '', 'cp-timeout'),
      ]);
      const history = (view.history || []).slice().reverse();
      clear(this.cpChart).append(barChart(history.slice(0, 40).reverse(), this.cpChart.clientWidth));
      syncRows(this.cpTable.tbody, history, (c) => c.id, [
        { value: (c) => c.id },
        { value: (c) => ({ badge: c.state }) },
        { value: (c) => fmtTime(c.trigger_time) },
        { value: (c) => fmtMs(c.duration_ms) },
        { value: (c) => fmtBytes(c.size_bytes) },
        { value: (c) => c.num_acks + ' / ' + c.expected },
        { value: (c) => fmtMs(c.alignment_ms) },
        { value: (c) => Object.entries(c.operator_sizes || {}).map(([op, size]) => (names.get(op) || op) + ': ' +
          fmtBytes(size)).join(', ') || '–' },
        { value: (c) => c.failure_reason || '' },
      ], 'No checkpoint yet.');
    }

    // ---- exceptions

    renderExceptions(view) {
      const failure = view.failure || view.last_failure;
      const sig = JSON.stringify(failure);
      if (this.rootCause.dataset.sig !== sig) {
        this.rootCause.dataset.sig = sig;
        clear(this.rootCause);
        if (!failure) {
          this.rootCause.append(el('p', { class: 'muted', text: 'No failure: the job has not failed or restarted.' }));
        } else {
          const task = failure.task || {};
          this.rootCause.append(
            el('p', {}, el('b', { text: view.failure ? 'The job failed: ' : 'Last failure (the job restarted): ' }),
              el('span', { class: 'cause', text: splitCause(failure.error).head })),
            el('p', { class: 'small' }, 'Failing task: ', el('b', { text: taskName(task) }),
              failure.time ? ' · at ' + fmtDateTime(failure.time) : '', failure.type ? ' · ' + failure.type : ''),
            failure.traceback || splitCause(failure.error).tail ? el('details', {}, el('summary', { text: 'Traceback' }),
              el('pre', { class: 'trace', text: failure.traceback || splitCause(failure.error).tail })) : null);
        }
      }
      syncRows(this.restarts.tbody, view.history, (h) => h.restart + ':' + h.time, [
        { value: (h) => fmtTime(h.time) },
        { value: (h) => h.restart },
        { value: (h) => taskName(h.task) },
        { value: (h) => splitCause(h.cause) },
        { value: (h) => (h.checkpoint_id === null ? 'none (from the start)' : '#' + h.checkpoint_id) },
        { value: (h) => h.tasks_restarted },
        { value: (h) => (h.restart_seconds === null ? 'in progress' : fmtSeconds(h.restart_seconds)) },
      ], 'No restarts.');
    }

    // ---- rescales

    renderRescales(detail) {
      const auto = detail.auto_rebalance || { enabled: false };
      if (!this.autoDirty && !this.panels.rescales.contains(document.activeElement)) {
        this.autoEnabled.checked = Boolean(auto.enabled);
        if (auto.enabled) {
          this.autoInterval.value = auto.interval_seconds;
          this.autoThreshold.value = auto.imbalance_threshold;
        }
      }
      this.autoStatus.textContent = auto.enabled ? 'Enabled: ' + auto.checks + ' check(s) so far; measured imbalance: ' +
        (Object.entries(auto.imbalance || {}).map(([k, v]) => k + ' ' + v).join(', ') || 'not yet')
        : 'Disabled.';
      $('#auto-apply').disabled = terminal(detail.state);
      const records = (detail.rescales || []).slice().reverse();
      if (!records.length) {
        if (!this.rescaleList.querySelector('.empty-note')) {
          clear(this.rescaleList).append(el('p', { class: 'muted empty-note', text: 'No rescale yet: use "Rescale an ' +
            'operator live" on the Overview tab, or enable auto-rebalance.' }));
        }
        return;
      }
      const note = this.rescaleList.querySelector('.empty-note');
      if (note) note.remove();
      let previous = null;
      for (const r of records) {
        let node = this.rescaleList.querySelector('[data-rescale-id="' + CSS.escape(r.rescale_id) + '"]');
        const sig = JSON.stringify(r);
        if (!node || node.dataset.sig !== sig) {
          const fresh = rescaleCard(r, this.rescaleList.clientWidth);
          fresh.dataset.sig = sig;
          if (node) node.replaceWith(fresh);
          node = fresh;
        }
        const next = previous ? previous.nextSibling : this.rescaleList.firstChild;
        if (next !== node) this.rescaleList.insertBefore(node, next);
        previous = node;
      }
    }

    // ---- key groups

    renderKeyGroups(view) {
      const ops = view.operators;
      const sig = ops.map((o) => o.operator_id + ':' + o.name).join('|');
      if (this.kgSelect.dataset.sig !== sig) {
        this.kgSelect.dataset.sig = sig;
        clear(this.kgSelect).append(...ops.map((o) => el('option', { value: o.operator_id, text: o.name })));
      }
      this.kgSelect.disabled = ops.length < 2;
      if (!ops.length) {
        clear(this.kgBody).append(el('p', { class: 'muted', text: 'This job has no keyed operator.' }));
        return;
      }
      if (!ops.some((o) => o.operator_id === this.kgOp)) this.kgOp = ops[0].operator_id;
      this.kgSelect.value = this.kgOp;
      const op = ops.find((o) => o.operator_id === this.kgOp);
      const bodySig = JSON.stringify(op);
      if (this.kgBody.dataset.sig === bodySig) return;
      this.kgBody.dataset.sig = bodySig;
      clear(this.kgBody).append(keyGroupsSection(op));
    }
  }

  // -- drawing ----------------------------------------------------------------------------

  const NODE_W = 230;
  const NODE_H = 80;
  const GAP_X = 96;
  const GAP_Y = 28;
  const PAD = 12;

  function truncate(text, n) {
    return text.length > n ? text.slice(0, n - 1) + '…' : text;
  }

  /** An error message without the traceback some carry after '--- original traceback ---', and that traceback. */
  function splitCause(message) {
    const text = message || '';
    const at = text.indexOf('--- original traceback ---');
    return at < 0 ? { head: text, tail: '' } : { head: text.slice(0, at).trim(), tail: text.slice(at).trim() };
  }

  function taskName(task) {
    if (!task || !task.task_id) return '–';
    if (task.operator_name === undefined) return task.task_id;
    return task.operator_name + ' #' + task.subtask_index + ' (' + task.task_id + ')';
  }

  /** Layered layout: each operator one layer right of its furthest input; a layer's
   * operators ordered by the mean position of their inputs (fewer crossings). */
  function layoutDag(plan) {
    const ups = new Map(plan.operators.map((o) => [o.operator_id, []]));
    for (const e of plan.edges) if (ups.has(e.downstream_operator_id)) ups.get(e.downstream_operator_id).push(e.upstream_operator_id);
    const layer = new Map();
    for (const op of plan.operators) { // already in topological order
      const inputs = ups.get(op.operator_id).filter((u) => layer.has(u));
      layer.set(op.operator_id, inputs.length ? Math.max(...inputs.map((u) => layer.get(u))) + 1 : 0);
    }
    const layers = [];
    for (const op of plan.operators) {
      const l = layer.get(op.operator_id);
      (layers[l] = layers[l] || []).push(op.operator_id);
    }
    const index = new Map();
    layers.forEach((ids, l) => {
      if (l > 0) {
        const centre = (id) => {
          const u = ups.get(id).filter((x) => index.has(x));
          return u.length ? u.reduce((s, x) => s + index.get(x), 0) / u.length : 0;
        };
        ids.sort((a, b) => centre(a) - centre(b));
      }
      ids.forEach((id, i) => index.set(id, i + (Math.max(...layers.map((x) => x.length)) - ids.length) / 2));
    });
    const rows = Math.max(1, ...layers.map((x) => x.length));
    const pos = new Map();
    for (const [id, i] of index) pos.set(id, { x: PAD + layer.get(id) * (NODE_W + GAP_X), y: PAD + i * (NODE_H + GAP_Y) });
    return { pos, width: PAD * 2 + layers.length * NODE_W + (layers.length - 1) * GAP_X,
      height: PAD * 2 + rows * NODE_H + (rows - 1) * GAP_Y };
  }

  /** Blue when idle, towards red the busier the busiest subtask; purple when back-pressured. */
  function nodeColour(busy, bp) {
    if (busy === null || busy === undefined) return '#e9edf2';
    if ((bp || 0) > 0.3 && bp >= busy) return 'hsl(265, 40%, ' + (88 - 28 * bp).toFixed(0) + '%)';
    return 'hsl(' + (210 - 210 * busy).toFixed(0) + ', 75%, ' + (90 - 30 * busy).toFixed(0) + '%)';
  }

  function niceMax(x) {
    if (!(x > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  function lineChart(series, windowSeconds, width) {
    const W = Math.max(320, width || 640);
    const H = 210;
    const L = 52;
    const R = 10;
    const T = 10;
    const B = 24;
    const all = series.flatMap((s) => s.points);
    const svg = sv('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': 'Rows per second of each operator over the last ' + fmtSeconds(windowSeconds) });
    if (!all.length) {
      svg.append(sv('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', text: 'No samples yet (the job is not running).' }));
      return svg;
    }
    const t1 = Math.max(...all.map((p) => p[0]));
    const t0 = Math.min(Math.min(...all.map((p) => p[0])), t1 - 60);
    const top = niceMax(Math.max(...all.map((p) => p[1])));
    const x = (t) => L + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      svg.append(sv('g', { class: 'grid' }, sv('line', { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) })),
        sv('text', { x: L - 6, y: y(top * f) + 4, 'text-anchor': 'end', text: fmtRate(top * f) }));
    }
    svg.append(sv('text', { x: L, y: H - 6, text: '−' + fmtSeconds(t1 - t0) }),
      sv('text', { x: W - R, y: H - 6, 'text-anchor': 'end', text: 'now' }));
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => (i ? 'L' : 'M') + x(p[0]).toFixed(1) + ' ' + y(p[1]).toFixed(1)).join(' ');
      svg.append(sv('path', { class: 'series', d, stroke: s.colour }, sv('title', { text: s.name })));
    }
    return svg;
  }

  function barChart(checkpoints, width) {
    const W = Math.max(320, width || 640);
    const H = 150;
    const L = 52;
    const B = 20;
    const T = 8;
    const svg = sv('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': 'Duration of the last ' + checkpoints.length + ' checkpoints' });
    if (!checkpoints.length) {
      svg.append(sv('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', text: 'No checkpoint yet.' }));
      return svg;
    }
    const top = niceMax(Math.max(...checkpoints.map((c) => c.duration_ms || 0)));
    const step = Math.min(44, (W - L - 8) / Math.max(checkpoints.length, 10));
    for (const f of [0, 0.5, 1]) {
      const yy = T + (1 - f) * (H - T - B);
      svg.append(sv('g', { class: 'grid' }, sv('line', { x1: L, x2: W - 8, y1: yy, y2: yy })),
        sv('text', { x: L - 6, y: yy + 4, 'text-anchor': 'end', text: fmtMs(top * f) }));
    }
    checkpoints.forEach((c, i) => {
      const h = ((c.duration_ms || 0) / top) * (H - T - B);
      const colour = c.state === 'COMPLETED' ? '#2e8b57' : c.state === 'FAILED' ? '#c0392b' : '#d4a017';
      svg.append(sv('rect', { x: L + i * step + 2, y: T + (H - T - B) - h, width: Math.max(2, step - 4), height: h,
        fill: colour }, sv('title', { text: '#' + c.id + ' ' + c.state + ' ' + fmtMs(c.duration_ms) })));
      if (checkpoints.length <= 20 || i % 5 === 0) {
        svg.append(sv('text', { x: L + i * step + step / 2, y: H - 6, 'text-anchor': 'middle', text: '#' + c.id }));
      }
    });
    return svg;
  }

  const STEP_NAMES = { requested: 'requested', deployed: 'new tasks deployed', switched: 'routing switched',
    state_moved: 'state moved', resumed: 'new tasks resumed', completed: 'completed' };

  function rescaleCard(r, width) {
    const facts = [['Total', fmtMs(r.total_ms)], ['Pause of the operator', fmtMs(r.pause_ms)],
      ['State rows moved', fmtInt(r.state_rows_moved)], ['Old tasks finished', r.old_tasks_finished + ' / ' +
        r.old_task_ids.length]];
    if (r.moved_key_groups !== null) facts.push(['Key groups moved', String(r.moved_key_groups)]);
    if (r.imbalance_before !== null) {
      facts.push(['Imbalance', r.imbalance_before + ' → ' + (r.imbalance_after === null ? '?' : r.imbalance_after) +
        ' (predicted ' + r.imbalance_predicted + ')']);
    }
    if (r.source_paused_ms !== null) facts.push(['Source paused', fmtMs(r.source_paused_ms)]);
    const steps = el('ol', { class: 'steps' }, (r.timeline || []).map((s) => {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = stepColour(s.step);
      return el('li', { dataset: { step: s.step } }, swatch, el('b', { text: STEP_NAMES[s.step] || s.step }), ' ',
        s.offset_ms === null ? 'not yet' : '+' + fmtMs(s.offset_ms));
    }));
    return el('div', { class: 'rescale', dataset: { rescaleId: r.rescale_id, state: r.state } },
      el('h3', {}, r.rescale_id + ' · ' + r.kind + ' of ' + r.operator_name + ': ' + r.old_parallelism + ' → ' +
        r.new_parallelism + ' ', badge(r.state), ' ', el('span', { class: 'muted small', text: fmtDateTime(r.requested_at) })),
      el('div', { class: 'facts' }, facts.map(([k, v]) => el('span', {}, k + ': ', el('b', { text: v })))),
      timelineSvg(r.timeline || [], width), steps,
      r.error ? el('p', { class: 'login-error', text: r.error }) : null);
  }

  /** The steps of a rescale on one time axis: a marker per step, each phase coloured like the step ending it. */
  function timelineSvg(timeline, width) {
    const W = Math.max(320, Math.min(width || 640, 1000));
    const H = 22;
    const L = 8;
    const R = 8;
    const reached = timeline.filter((s) => s.offset_ms !== null);
    const end = Math.max(1, ...reached.map((s) => s.offset_ms));
    const x = (ms) => L + (ms / end) * (W - L - R);
    const svg = sv('svg', { class: 'chart timeline', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
      'aria-label': 'Timeline: ' + reached.map((s) => (STEP_NAMES[s.step] || s.step) + ' +' + fmtMs(s.offset_ms)).join(', ') });
    svg.append(sv('line', { class: 'track', x1: L, x2: W - R, y1: H / 2, y2: H / 2 }));
    const ordered = reached.slice().sort((a, b) => a.offset_ms - b.offset_ms);
    ordered.forEach((s, i) => {
      if (i === 0) return;
      svg.append(sv('line', { x1: x(ordered[i - 1].offset_ms), x2: x(s.offset_ms), y1: H / 2, y2: H / 2,
        stroke: stepColour(s.step), 'stroke-width': 6 }));
    });
    for (const s of ordered) {
      svg.append(sv('circle', { cx: x(s.offset_ms), cy: H / 2, r: 6, fill: stepColour(s.step) },
        sv('title', { text: (STEP_NAMES[s.step] || s.step) + ' +' + fmtMs(s.offset_ms) })));
    }
    return svg;
  }

  const stepColour = (step) => PALETTE[Math.max(0, TIMELINE_ORDER.indexOf(step)) % PALETTE.length];

  const TIMELINE_ORDER = ['requested', 'deployed', 'switched', 'state_moved', 'resumed', 'completed'];

  function heatColour(t) {
    if (!(t > 0)) return '#f1f3f5';
    return 'hsl(' + (45 - 45 * t).toFixed(0) + ', 90%, ' + (88 - 48 * t).toFixed(0) + '%)';
  }

  function keyGroupGrid(values, assignment, label, moved) {
    const n = assignment.length;
    const cols = Math.min(32, n);
    const rows = Math.ceil(n / cols);
    const C = values ? 18 : 13;
    const G = values ? 3 : 2;
    const L = 40;
    const W = L + cols * (C + G);
    const H = rows * (C + 8 + G) + 4;
    const labelY = Math.round(C * 0.72);
    const max = values ? Math.max(...values) : 0;
    const svg = sv('svg', { class: 'heat', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': label });
    for (let r = 0; r < rows; r += 1) {
      svg.append(sv('text', { x: L - 6, y: r * (C + 8 + G) + labelY, 'text-anchor': 'end', text: String(r * cols) }));
    }
    for (let kg = 0; kg < n; kg += 1) {
      const cx = L + (kg % cols) * (C + G);
      const cy = Math.floor(kg / cols) * (C + 8 + G);
      const subtask = assignment[kg];
      const value = values ? values[kg] : null;
      const fill = values ? heatColour(max > 0 ? value / max : 0) : PALETTE[subtask % PALETTE.length];
      const cell = sv('rect', { x: cx, y: cy, width: C, height: C, rx: 2, fill,
        stroke: moved && moved.has(kg) ? '#111' : 'none', 'stroke-width': 2, dataset: { keyGroup: kg, subtask } },
      sv('title', { text: 'key group ' + kg + ' → subtask ' + subtask + (values ? ': ' + fmtRate(value) : '') +
        (moved && moved.has(kg) ? ' (moved)' : '') }));
      svg.append(cell, sv('rect', { x: cx, y: cy + C + 2, width: C, height: 4, fill: PALETTE[subtask % PALETTE.length] }));
    }
    return svg;
  }

  function keyGroupsSection(op) {
    const rates = op.rows_per_second && op.rows_per_second.some((v) => v > 0) ? op.rows_per_second : null;
    const values = rates || op.rows_total;
    const unit = rates ? 'rows per second' : 'rows in total';
    const parts = [];
    parts.push(el('div', { class: 'facts' },
      el('span', {}, 'Parallelism: ', el('b', { text: String(op.parallelism) })),
      el('span', {}, 'Key groups: ', el('b', { text: String(op.max_parallelism) })),
      el('span', {}, 'Imbalance: ', el('b', { text: op.imbalance === null ? '–' : String(op.imbalance) })),
      el('span', {}, 'Table: ', el('b', { text: op.custom_assignment ? 'rebalanced (explicit)' : 'contiguous ranges' }))));
    const heat = el('div', {}, el('h3', { text: 'Load per key group (' + (values ? unit : 'not measured yet') + ')' }),
      keyGroupGrid(values, op.assignment, 'Load per key group of ' + op.name, null));
    const legend = el('div', { class: 'legend' });
    for (let s = 0; s < op.parallelism; s += 1) {
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = PALETTE[s % PALETTE.length];
      legend.append(el('span', {}, swatch, 'subtask ' + s));
    }
    heat.append(legend);
    const counts = new Array(op.parallelism).fill(0);
    op.assignment.forEach((s) => { counts[s] += 1; });
    const perSubtask = op.subtask_rows_per_second || [];
    const totals = op.subtask_rows_total || [];
    const sum = perSubtask.reduce((a, b) => a + b, 0);
    const t = table([{ id: 's', title: 'Subtask', cls: 'num' }, { id: 'kg', title: 'Key groups', cls: 'num' },
      { id: 'rate', title: 'Rows/s', cls: 'num' }, { id: 'share', title: 'Share', cls: 'num' },
      { id: 'total', title: 'Rows in total', cls: 'num' }], 'Load per subtask');
    t.table.id = 'kg-subtasks';
    t.table.classList.add('compact');
    syncRows(t.tbody, counts.map((c, s) => s), (s) => s, [
      { value: (s) => s }, { value: (s) => counts[s] }, { value: (s) => fmtRate(perSubtask[s]) },
      { value: (s) => (sum > 0 ? pct(perSubtask[s] / sum) : '–') }, { value: (s) => fmtInt(totals[s]) },
    ], '');
    parts.push(el('div', { class: 'row' }, heat, el('div', {}, t.node)));
    const last = op.rescales[op.rescales.length - 1];
    if (last) {
      const moved = new Set();
      last.assignment_after.forEach((s, kg) => { if (last.assignment_before[kg] !== s) moved.add(kg); });
      parts.push(el('h3', { text: 'Key-group table around ' + last.rescale_id + ' (' + last.kind + ', ' +
        last.state.toLowerCase() + ')' }),
      el('p', { class: 'small muted', text: 'Before: ' + last.old_parallelism + ' subtask(s). After: ' +
        last.new_parallelism + ' subtask(s); ' + moved.size + ' key group(s) changed owner (outlined).' }),
      el('div', { class: 'row' },
        el('div', { class: 'kg-before' }, el('div', { class: 'small', text: 'before' }),
          keyGroupGrid(null, last.assignment_before, 'Key-group table before ' + last.rescale_id, null)),
        el('div', { class: 'kg-after' }, el('div', { class: 'small', text: 'after' }),
          keyGroupGrid(null, last.assignment_after, 'Key-group table after ' + last.rescale_id, moved))));
    } else {
      parts.push(el('p', { class: 'muted small', text: 'No rescale or rebalance of this operator yet: the table is ' +
        'the default contiguous ranges.' }));
    }
    return el('div', { dataset: { operatorId: op.operator_id } }, parts);
  }

  // -- start ------------------------------------------------------------------------------

  function start() {
    $('#notice-close').addEventListener('click', () => { $('#notice').hidden = true; });
    const pause = $('#pause');
    pause.addEventListener('click', () => {
      state.paused = !state.paused;
      pause.setAttribute('aria-pressed', String(state.paused));
      pause.textContent = state.paused ? 'Resume updates' : 'Pause updates';
      setStatus(state.paused ? 'updates paused' : 'resuming…');
      if (!state.paused) refreshSoon();
    });
    if (document.body.dataset.login === 'true') $('#logout').hidden = false;
    window.addEventListener('hashchange', route);
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
