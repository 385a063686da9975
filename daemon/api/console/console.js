// The operator console: every figure comes from the daemon's API (schemas/openapi.yaml), read
// with the token the operator gives. Text from the CRMs is only ever set as text, never parsed
// as markup.
'use strict';

(() => {
  const REFRESH_MS = 5000;
  const STATUSES = ['in_sync', 'pending', 'mismatch', 'missing_in_target', 'missing_in_source',
    'duplicate', 'unverified'];
  const TOKEN_KEY = 'tandem.token';
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    // Each drawing has a number; only the newest one is shown.
    generation: 0,
  };

  // ------------------------------------------------------------------------------------------
  // DOM helpers: text only.

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function shown(value) {
    if (value === undefined || value === null) return '';
    if (typeof value === 'string') return value;
    return JSON.stringify(value);
  }

  function percent(parity) {
    return (parity * 100).toFixed(2) + '%';
  }

  function table(headers, rows, attributes) {
    return el('table', attributes || {},
      el('thead', {}, el('tr', {}, headers.map((header) => el('th', {}, header)))),
      el('tbody', {}, rows));
  }

  /// A table of names and values, one row each.
  function pairs(entries, attributes) {
    return el('table', attributes || {}, el('tbody', {}, entries.map(([name, value]) => el('tr', { 'data-fact': name },
      el('th', {}, name), cell(value)))));
  }

  function cell(value, attributes) {
    return el('td', attributes || {}, value instanceof Node ? value : shown(value));
  }

  /// Any JSON value as tables: an array of objects is a table of their members, an object a
  /// table of its members.
  function generic(value) {
    if (Array.isArray(value)) {
      if (value.length === 0) return el('p', { class: 'muted' }, 'none');
      if (value.every((item) => item && typeof item === 'object' && !Array.isArray(item))) {
        const columns = [...new Set(value.flatMap((item) => Object.keys(item)))];
        return table(columns, value.map((item) => el('tr', {},
          columns.map((column) => cell(el('pre', {}, shown(item[column])))))));
      }
      return el('pre', {}, JSON.stringify(value, null, 2));
    }
    if (value && typeof value === 'object') {
      if (Object.keys(value).length === 0) return el('p', { class: 'muted' }, 'none');
      return pairs(Object.entries(value).map(([name, item]) => [name, el('pre', {}, shown(item))]));
    }
    return el('span', {}, shown(value));
  }

  // ------------------------------------------------------------------------------------------
  // The API.

  class Refusal extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `the API answered ${status}`);
      this.status = status;
      this.hint = body && body.hint ? body.hint : '';
    }
  }

  async function api(path, options) {
    const settings = options || {};
    const headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let body;
    if (settings.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(settings.body);
    }
    const response = await fetch(path, {
      method: settings.method || 'GET', headers, body, cache: 'no-store',
    });
    const answer = await response.json().catch(() => null);
    if (response.status === 401) openTokenPanel();
    const accepted = settings.accept || [];
    if (!response.ok && !accepted.includes(response.status)) {
      throw new Refusal(response.status, answer);
    }
    return { status: response.status, body: answer };
  }

  function query(parameters) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(parameters)) {
      if (value !== undefined && value !== null && value !== '') search.set(name, value);
    }
    const text = search.toString();
    return text ? `?${text}` : '';
  }

  // ------------------------------------------------------------------------------------------
  // Views.

  async function overview() {
    const [report, history] = await Promise.all([
      api('/v1/report'),
      api('/v1/report/history?since=7d'),
    ]);
    const r = report.body;
    const view = el('div', { id: 'overview' });
    view.append(el('h2', {}, 'Parity'),
      el('div', { class: 'cards' },
        card('Records', r.totals.records, 'total-records'),
        card('Parity', percent(r.totals.parity), 'total-parity'),
        card('Divergent', r.totals.divergent, 'total-divergent'),
        card('Clock', shown(r.clock) || 'no event yet', 'clock')));

    const statuses = STATUSES;
    const rows = Object.entries(r.entities).map(([name, entity]) => el('tr', { 'data-entity': name },
      el('th', {}, name),
      cell(entity.records, { class: 'num', 'data-field': 'records' }),
      cell(percent(entity.parity), { class: 'num', 'data-field': 'parity' }),
      statuses.map((status) => {
        const count = entity.by_status[status] || 0;
        const shownCount = count && status !== 'in_sync'
          ? el('a', { href: `#/divergences${query({ entity: name, status })}` }, String(count))
          : String(count);
        return cell(shownCount, { class: 'num', 'data-status': status });
      }),
      cell(shown(entity.oldest_divergence_at), { 'data-field': 'oldest' }),
      cell(counts(entity.by_cause), { 'data-field': 'causes' }),
      cell(counts(entity.mismatched_fields), { 'data-field': 'fields' }),
      cell(trend(history.body.items, name))));
    view.append(table(['entity', 'records', 'parity', ...statuses, 'oldest divergence', 'causes',
      'mismatched fields', 'parity, 7 days'], rows, { id: 'entities' }));

    view.append(el('h3', {}, 'Suspected mapping errors'),
      generic(r.suspected_mapping_errors || []));
    view.append(ingestHealth(r));
    view.append(reevaluation(r));
    return view;
  }

  function card(label, value, id) {
    return el('div', { class: 'card' }, el('div', { class: 'muted' }, label),
      el('div', { class: 'value', id }, String(value)));
  }

  function counts(map) {
    return Object.entries(map || {}).map(([name, count]) => `${name}: ${count}`).join(', ');
  }

  /// Parity over the kept summaries, as a line from 0 to 1.
  function trend(items, entity) {
    const points = items
      .filter((item) => item.entities[entity])
      .map((item) => item.entities[entity].parity);
    const width = 160;
    const height = 32;
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'trend');
    svg.setAttribute('width', width);
    svg.setAttribute('height', height);
    svg.setAttribute('data-points', String(points.length));
    if (points.length > 0) {
      const step = points.length > 1 ? width / (points.length - 1) : 0;
      const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
      line.setAttribute('points', points
        .map((parity, index) => `${(index * step).toFixed(1)},${((1 - parity) * (height - 2) + 1).toFixed(1)}`)
        .join(' '));
      const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
      title.textContent = `${points.length} summaries, latest ${percent(points[points.length - 1])}`;
      svg.append(title, line);
    }
    return svg;
  }

  function ingestHealth(r) {
    const section = el('section', { id: 'ingest' }, el('h2', {}, 'Ingest'));
    const facts = [
      ['broker reachable', r.ingest.broker_reachable ? 'yes' : `no, since ${shown(r.ingest.broker_unreachable_since)}`],
      ['caught up', r.ingest.caught_up ? 'yes' : 'no'],
      ['stopped', r.ingest.stopped || ''],
      ['paused', r.ingest.paused || ''],
      ['dead-lettered', r.ingest.dead_lettered],
      ['re-reads outstanding', r.feed.rereads_outstanding],
      ['oldest re-read since', shown(r.feed.oldest_reread_since)],
    ];
    section.append(pairs(facts, { id: 'ingest-facts' }));
    const systems = ['source', 'target'];
    const counters = ['events_applied', 'duplicates_dropped', 'stale_versions', 'dead_lettered',
      'messages_skipped', 'lag', 'last_applied_at'];
    section.append(table(['system', ...counters], systems.map((system) => el('tr', { 'data-system': system },
      el('th', {}, `${r.ingest[system].label} (${system})`),
      counters.map((counter) => cell(r.ingest[system][counter], { 'data-field': counter })))),
    { id: 'ingest-systems' }));
    section.append(el('h3', {}, 'Dead letters by reason'), generic(r.ingest.dead_lettered_by_reason));
    for (const system of systems) {
      section.append(el('h3', {}, `Holes and lost offsets: ${system}`),
        generic([...r.feed[system].holes, ...r.feed[system].lost_offsets]));
    }
    if (r.ingest.stopped_partitions.length > 0) {
      section.append(el('h3', { class: 'bad' }, 'Stopped partitions'), generic(r.ingest.stopped_partitions));
    }
    return section;
  }

  function reevaluation(r) {
    const section = el('section', { id: 'reevaluation' }, el('h2', {}, 'Re-evaluation'));
    if (r.reevaluation) section.append(el('p', {}, 'Running: '), generic(r.reevaluation));
    else if (r.last_reevaluation) section.append(el('p', { class: 'muted' }, 'Last run:'), generic(r.last_reevaluation));
    const form = el('div', { class: 'step' });
    const reason = el('textarea', { id: 'reevaluate-reason', placeholder: 'Why (logged with your token)' });
    const preview = el('div', { id: 'reevaluate-preview' });
    const confirm = el('button', { type: 'button', id: 'reevaluate-confirm', disabled: true });
    confirm.textContent = 'Re-evaluate now';
    const show = el('button', { type: 'button', id: 'reevaluate-preview-button' }, 'Preview');
    show.addEventListener('click', () => {
      preview.replaceChildren(el('p', {},
        `Would evaluate all ${r.totals.records} stored records again with the configured rules. `
        + 'Consumption waits while it runs; the report stays readable.'));
      confirm.disabled = reason.value.trim() === '';
    });
    reason.addEventListener('input', () => { confirm.disabled = true; });
    confirm.addEventListener('click', async () => {
      // One click, one re-evaluation.
      confirm.disabled = true;
      try {
        await api('/v1/reevaluate', { method: 'POST', body: { reason: reason.value } });
        reason.value = '';
        preview.replaceChildren(el('p', { class: 'good', id: 'reevaluate-done' }, 'Started.'));
      } catch (error) {
        preview.replaceChildren(problemText(error));
        confirm.disabled = reason.value.trim() === '';
      }
    });
    form.append(el('p', {}, 'Needs the admin token and a reason.'), reason, el('div', {}, show, ' ', confirm), preview);
    section.append(form);
    return section;
  }

  async function divergences(parameters) {
    const filters = {
      entity: parameters.get('entity') || '',
      status: parameters.get('status') || '',
      field: parameters.get('field') || '',
      limit: parameters.get('limit') || '50',
      cursor: parameters.get('cursor') || '',
    };
    const [report, page] = await Promise.all([
      api('/v1/report'),
      api(`/v1/divergences${query(filters)}`),
    ]);
    const view = el('div', { id: 'divergences' }, el('h2', {}, 'Divergences'));
    const entity = el('select', { name: 'entity' }, el('option', { value: '' }, 'every entity'),
      Object.keys(report.body.entities).map((name) => el('option', { value: name, selected: name === filters.entity }, name)));
    const status = el('select', { name: 'status' }, el('option', { value: '' }, 'every divergent status'),
      STATUSES.filter((name) => name !== 'in_sync').map((name) => el('option', { value: name, selected: name === filters.status }, name)));
    const field = el('input', { name: 'field', value: filters.field, placeholder: 'a target field' });
    const limit = el('input', { name: 'limit', value: filters.limit, type: 'number', min: 1, max: 1000 });
    const form = el('form', { class: 'inline', id: 'divergence-filters' },
      el('label', {}, 'entity', entity), el('label', {}, 'status', status),
      el('label', {}, 'field', field), el('label', {}, 'per page', limit),
      el('button', { type: 'submit' }, 'Show'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      location.hash = `#/divergences${query({ entity: entity.value, status: status.value, field: field.value, limit: limit.value })}`;
    });
    const download = el('button', { type: 'button', id: 'csv-download' }, 'Download CSV (every page)');
    download.addEventListener('click', () => downloadCsv({ ...filters, cursor: '' }, download));
    view.append(form, download);

    const rows = page.body.items.map((item) => el('tr', { 'data-key': item.join_key },
      cell(item.entity),
      cell(el('a', { href: `#/record/${encodeURIComponent(item.entity)}/${encodeURIComponent(item.join_key)}` }, item.join_key)),
      cell(item.status, { 'data-field': 'status' }),
      cell(item.cause || ''),
      cell(item.fields.join(' '), { 'data-field': 'fields' }),
      cell(shown(item.since)),
      cell(item.source_ids.join(' ')),
      cell(item.target_ids.join(' ')),
      cell(Object.entries(item.values || {}).map(([name, values]) => `${name}: ${shown(values.source)} → ${shown(values.target)}`).join('; '))));
    view.append(table(['entity', 'join key', 'status', 'cause', 'fields', 'since', 'source ids',
      'target ids', 'values'], rows, { id: 'divergence-list' }));
    const paging = el('p', { id: 'paging' });
    if (filters.cursor) paging.append(el('a', { href: `#/divergences${query({ ...filters, cursor: '' })}` }, 'First page'), ' ');
    if (page.body.next_cursor) {
      paging.append(el('a', { id: 'next-page', href: `#/divergences${query({ ...filters, cursor: page.body.next_cursor })}` }, 'Next page'));
    } else {
      paging.append(el('span', { class: 'muted' }, 'Last page.'));
    }
    view.append(paging);
    return view;
  }

  /// A cell a spreadsheet shows as text: the rule of `tandem divergences --format csv`.
  function spreadsheetSafe(text) {
    // A number as Rust's f64 reads it (what the CLI's rule asks) stays a number.
    const number = /^[+-]?(inf|infinity|nan|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$/i;
    if (text.length > 1 && /^[=+\-@\t\r]/.test(text) && !number.test(text)) return `'${text}`;
    return text;
  }

  function csvRow(cells) {
    return cells.map((value) => {
      const text = spreadsheetSafe(shown(value));
      return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
    }).join(',');
  }

  async function downloadCsv(filters, button) {
    button.disabled = true;
    const lines = [csvRow(['entity', 'join_key', 'status', 'cause', 'fields', 'since', 'source_ids', 'target_ids'])];
    let cursor = '';
    try {
      do {
        const page = await api(`/v1/divergences${query({ ...filters, limit: 1000, cursor })}`);
        for (const item of page.body.items) {
          lines.push(csvRow([item.entity, item.join_key, item.status, item.cause || '', item.fields.join(' '),
            shown(item.since), item.source_ids.join(' '), item.target_ids.join(' ')]));
        }
        button.textContent = `Downloading… ${lines.length - 1} records`;
        cursor = page.body.next_cursor || '';
      } while (cursor);
      const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv' });
      const link = el('a', { href: URL.createObjectURL(blob), download: 'divergences.csv', id: 'csv-link' }, 'divergences.csv');
      button.replaceWith(link);
      link.click();
    } catch (error) {
      showProblem(error);
      button.disabled = false;
    }
  }

  async function record(entity, key) {
    const { body: view } = await api(`/v1/records/${encodeURIComponent(entity)}/${encodeURIComponent(key)}`);
    const page = el('div', { id: 'record' }, el('h2', {}, `${view.entity} ${view.join_key}`),
      el('p', {}, 'Status: ', el('strong', { id: 'record-status' }, shown(view.status)),
        view.since ? ` since ${view.since}` : '', view.pending_until ? `, pending until ${view.pending_until}` : ''));
    page.append(el('h3', {}, 'Field by field'), table(['field', 'source field', 'source', 'expected', 'target', 'equal', 'rule'],
      view.diff.map((diff) => el('tr', { 'data-field': diff.field, class: diff.equal ? '' : 'bad' },
        cell(diff.field), cell(diff.source_field), cell(el('pre', {}, shown(diff.source))),
        cell(el('pre', {}, shown(diff.expected))), cell(el('pre', {}, shown(diff.target))),
        cell(diff.equal ? 'equal' : 'differs', { 'data-field': 'equal' }),
        cell([diff.compare, diff.critical ? 'critical' : '', diff.lossy ? 'lossy' : ''].filter(Boolean).join(', ')))),
    { id: 'record-diff' }));
    for (const system of ['source', 'target']) {
      page.append(el('h3', {}, `${system}: ${view[system].length} native record(s)`));
      for (const side of view[system]) {
        const history = side.field_history || {};
        page.append(el('p', {}, `${side.native_id}`, side.deleted ? ' (deleted)' : '',
          ` last changed ${side.last_change_at}`, side.created_by ? `, created by ${side.created_by}` : '',
          side.unverified ? `, unverified: ${shown(side.unverified)}` : '',
          side.merged_into ? `, merged into ${side.merged_into}` : ''),
        table(['field', 'value', 'changed at', 'writer'], Object.entries(side.fields).map(([name, value]) => el('tr', { 'data-system': system, 'data-field': name },
          cell(name), cell(el('pre', {}, shown(value))),
          cell(shown(history[name] && history[name].changed_at)), cell(shown(history[name] && history[name].writer))))));
      }
      const events = view.history.filter((item) => item.system === system);
      page.append(el('h4', {}, `${system} timeline`), table(['time', 'op', 'writer', 'applied', 'event id', 'position'],
        events.map((item) => el('tr', { 'data-timeline': system },
          cell(item.occurred_at), cell(item.event.op), cell(actorOf(item.event.actor)),
          cell(item.applied ? 'applied' : 'no change'), cell(item.event.event_id),
          cell(`${item.topic}[${item.partition}]@${item.offset}`)))));
    }
    return page;
  }

  function actorOf(actor) {
    if (!actor) return '';
    return actor.id ? `${actor.kind}:${actor.id}` : actor.kind;
  }

  async function ownership() {
    const [owners, violations, writers] = await Promise.all([
      api('/v1/ownership'), api('/v1/violations'), api('/v1/writers'),
    ]);
    const view = el('div', { id: 'ownership' },
      el('h2', {}, 'Who owns live writes'),
      table(['entity', 'owner', 'epoch'], owners.body.entities.map((entity) => el('tr', { 'data-entity': entity.entity },
        cell(entity.entity), cell(entity.owner, { 'data-field': 'owner' }), cell(entity.epoch)))),
      el('h3', {}, 'Allowed writers'), generic(owners.body.allowed),
      el('h2', {}, 'Violations'), el('div', { id: 'violations' }, generic(violations.body.items)),
      violations.body.next_cursor ? el('p', { class: 'muted' }, 'More violations: tandem violations --all') : '');
    const writerRows = Object.entries(writers.body.systems).flatMap(([system, list]) => list.map((writer) => el('tr', { 'data-system': system, class: writer.into_fenced ? 'bad' : '' },
      cell(system), cell(writer.kind, { 'data-field': 'kind' }), cell(writer.id || ''),
      cell(writer.writes, { class: 'num', 'data-field': 'writes' }), cell(writer.violations, { class: 'num', 'data-field': 'violations' }),
      cell(counts(writer.entities)), cell(writer.into_fenced ? 'yes' : 'no'), cell(writer.last_seen))));
    view.append(el('h2', {}, 'Writers'), el('p', { class: 'muted' }, writers.body.since ? `since ${writers.body.since}` : 'since the store began'),
      table(['system', 'kind', 'id', 'writes', 'violations', 'per entity', 'into the fenced system', 'last seen'], writerRows, { id: 'writers' }));
    return view;
  }

  async function cutover() {
    const [status, readiness] = await Promise.all([api('/v1/cutover'), api('/v1/cutover/readiness')]);
    const s = status.body;
    const r = readiness.body;
    const view = el('div', { id: 'cutover' }, el('h2', {}, 'Second cutover'),
      el('div', { class: 'cards' },
        card('Phase', s.phase, 'phase'),
        card('Since', shown(s.since) || '-', 'phase-since'),
        card('Verdict', r.verdict, 'verdict'),
        card('Commit days left', shown(r.commit_days_left) || '-', 'commit-days')));
    view.append(el('h3', {}, 'Readiness'), table(['gate', 'entity', 'passed', 'measured', 'threshold', 'since'],
      r.gates.map((gate) => el('tr', { 'data-gate': `${gate.gate}:${gate.entity || ''}` },
        cell(gate.gate), cell(gate.entity || ''),
        cell(gate.passed ? 'passed' : 'not passed', { class: gate.passed ? 'good' : 'bad', 'data-field': 'passed' }),
        cell(gate.measured, { 'data-field': 'measured' }), cell(gate.threshold, { 'data-field': 'threshold' }),
        cell(shown(gate.since), { 'data-field': 'since' }))), { id: 'gates' }));
    view.append(el('h3', {}, 'Rollback triggers firing'), generic(s.triggers_fired));
    view.append(el('h3', {}, 'Steps'));
    if (s.allowed.length === 0) view.append(el('p', { class: 'muted' }, 'No step is allowed from this phase.'));
    for (const step of s.allowed) view.append(stepForm(step));
    view.append(el('h3', {}, 'History'), generic(s.history.map((item) => ({
      transition: item.transition, from: item.from, to: item.to, reason: item.reason, at: item.at,
      by: item.by, token: item.caller ? item.caller.token : '', epoch: item.epoch,
    }))));
    return view;
  }

  /// A cutover step: the reason first, the dry run shown, and only then the step.
  function stepForm(step) {
    const reason = el('textarea', { id: `reason-${step}`, placeholder: 'Why (logged with your token)' });
    const preview = el('div', { id: `preview-${step}` });
    const take = el('button', { type: 'button', id: `take-${step}`, disabled: true }, `Take ${step}`);
    const dry = el('button', { type: 'button', id: `dry-run-${step}` }, `Dry run of ${step}`);
    // The reason the last dry run allowed the step with; the step is taken only with it.
    let previewed = '';
    const takeable = () => previewed !== '' && reason.value === previewed;
    reason.addEventListener('input', () => { take.disabled = !takeable(); });
    dry.addEventListener('click', async () => {
      const sent = reason.value;
      previewed = '';
      take.disabled = true;
      try {
        const answer = await api(`/v1/cutover/${step}?dry_run=true`, {
          method: 'POST', body: { reason: sent, dry_run: true }, accept: [409],
        });
        const p = answer.body;
        preview.replaceChildren(el('div', { class: p.allowed ? 'good' : 'bad', id: `preview-verdict-${step}` },
          p.allowed ? `Allowed: ${p.from} → ${p.to}` : `Refused: ${p.refusal}`),
        p.ownership_after ? generic(p.ownership_after) : '',
        p.readiness ? el('p', {}, `Readiness: ${p.readiness.verdict}`) : '');
        previewed = p.allowed && sent.trim() !== '' ? sent : '';
        take.disabled = !takeable();
      } catch (error) {
        preview.replaceChildren(problemText(error));
      }
    });
    take.addEventListener('click', async () => {
      const sent = previewed;
      take.disabled = true;
      previewed = '';
      try {
        const answer = await api(`/v1/cutover/${step}`, { method: 'POST', body: { reason: sent }, accept: [409] });
        if (answer.status === 200) reason.value = '';
        preview.replaceChildren(answer.status === 200
          ? el('p', { class: 'good', id: `taken-${step}` }, `Taken: ${answer.body.from} → ${answer.body.to}`)
          : el('p', { class: 'bad' }, `Refused: ${answer.body.refusal}`));
      } catch (error) {
        preview.replaceChildren(problemText(error));
      }
    });
    return el('div', { class: 'step', 'data-step': step }, el('strong', {}, step),
      el('p', {}, 'Needs the admin token and a reason. The dry run shows what would happen; the step can be taken once it says the step is allowed.'),
      reason, el('div', {}, dry, ' ', take), preview);
  }

  // ------------------------------------------------------------------------------------------
  // Routing, refresh, problems, the token.

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, search] = hash.split('?');
    const parameters = new URLSearchParams(search || '');
    const parts = path.split('/').filter(Boolean);
    switch (parts[0]) {
      case undefined: return ['overview', () => overview()];
      case 'divergences': return ['divergences', () => divergences(parameters)];
      case 'record': return ['divergences', () => record(decodeURIComponent(parts[1] || ''), decodeURIComponent(parts.slice(2).join('/')))];
      case 'ownership': return ['ownership', () => ownership()];
      case 'cutover': return ['cutover', () => cutover()];
      default: return ['overview', () => Promise.resolve(el('p', {}, `No page ${path}.`))];
    }
  }

  /// Draws the page of the address. A drawing started by the clock is dropped if a newer
  /// one started meanwhile, or if the operator began preparing a change while it loaded.
  async function render(byClock) {
    state.generation += 1;
    const generation = state.generation;
    const [name, build] = route();
    for (const link of document.querySelectorAll('header nav a')) {
      link.classList.toggle('current', link.dataset.view === name);
    }
    try {
      const view = await build();
      if (generation !== state.generation || (byClock && editing())) return;
      document.getElementById('view').replaceChildren(view);
      hideProblem();
      document.getElementById('freshness').textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
    } catch (error) {
      if (generation === state.generation) showProblem(error);
    }
  }

  function problemText(error) {
    return el('div', { class: 'problem' }, el('strong', {}, error.message),
      error.hint ? el('div', {}, error.hint) : '');
  }

  function showProblem(error) {
    const problem = document.getElementById('problem');
    problem.replaceChildren(problemText(error));
    problem.hidden = false;
  }

  function hideProblem() {
    document.getElementById('problem').hidden = true;
  }

  function openTokenPanel() {
    document.getElementById('token-panel').hidden = false;
  }

  /// Whether the operator is preparing something on the page: a field has the focus, or a
  /// reason is written. The clock does not redraw the page then.
  function editing() {
    const view = document.getElementById('view');
    const active = document.activeElement;
    const focused = active && view.contains(active) && ['INPUT', 'TEXTAREA', 'SELECT'].includes(active.tagName);
    const written = [...view.querySelectorAll('textarea')].some((area) => area.value.trim() !== '');
    return focused || written;
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('token-button').addEventListener('click', openTokenPanel);
    document.getElementById('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      state.token = document.getElementById('token-input').value.trim();
      document.getElementById('token-input').value = '';
      sessionStorage.setItem(TOKEN_KEY, state.token);
      document.getElementById('token-panel').hidden = true;
      render();
    });
    document.getElementById('token-clear').addEventListener('click', () => {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      render();
    });
    window.addEventListener('hashchange', () => render());
    setInterval(() => {
      if (document.hidden) return;
      if (editing()) {
        document.getElementById('freshness').textContent = 'paused while you prepare a change';
        return;
      }
      render(true);
    }, REFRESH_MS);
    render();
  });
})();
