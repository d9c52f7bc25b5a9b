// Statements: each service's bill for a month, from billing's
// GET /api/v1/statements. A closed month's statements are final; an open
// one's are worked out now. Adjustments are late usage of earlier closed
// months. Admins can close a month that has ended.

import { billingName, clear, h, money, num, toast, uid, when } from '../dom.js';
import { closePeriodDialog } from '../dialogs.js';

// monthOf writes a date's UTC month like "2026-11".
function monthOf(d) {
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

// recentMonths lists the current UTC month and the eleven before it.
function recentMonths() {
  const now = new Date();
  const out = [];
  for (let i = 0; i < 12; i += 1) out.push(monthOf(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1))));
  return out;
}

const partNames = { tokens: 'Tokens', instance_time: 'Instance time' };

export function renderStatements(main, ctx, period) {
  const { api, store, navigate } = ctx;
  const months = recentMonths();
  if (!period || !/^\d{4}-\d{2}$/.test(period)) period = months[0];
  if (!months.includes(period)) months.push(period);
  document.title = `Statements ${period} · Modelport console`;

  const pickId = uid('period');
  const pick = h('select', { id: pickId }, months.map((m) => h('option', { value: m, selected: m === period }, m)));
  pick.addEventListener('change', () => navigate(`#/statements/${pick.value}`));
  const download = h('button', { type: 'button', class: 'btn btn-secondary' }, 'Download CSV');
  const closeBtn = h('button', { type: 'button', class: 'btn btn-primary', hidden: true }, `Close ${period}`);
  const status = h('p', { class: 'period-status', role: 'status' });
  const totals = h('dl', { class: 'totals', 'aria-live': 'polite' });
  const body = h('div', { class: 'statements-body' }, h('p', { class: 'loading' }, 'Loading statements…'));
  main.append(
    h('div', { class: 'page-head' },
      h('div', {},
        h('h1', {}, 'Statements'),
        h('p', { class: 'lead' }, 'What each service owes for a month: its own usage, priced at the prices in force at each hour, and late usage of earlier closed months as adjustments.'),
      ),
      h('div', { class: 'head-actions' },
        h('div', { class: 'inline-field' }, h('label', { for: pickId }, 'Month'), pick),
        download, closeBtn),
    ),
    status, totals, body,
  );

  let ctrl = null;
  const load = async () => {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    try {
      const st = await api.billing('GET', `/statements?period=${encodeURIComponent(period)}`, undefined, { signal: ctrl.signal });
      show(st);
    } catch (err) {
      if (err.name === 'AbortError') return;
      clear(totals);
      clear(body).append(h('p', { class: 'notice notice-warn' }, `Statements are not available right now: ${err.message}`));
    }
  };

  const show = async (st) => {
    status.dataset.status = st.status;
    clear(status).append(...(st.status === 'closed'
      ? [h('span', { class: 'badge status-closed' }, 'Closed'), `on ${when(st.closed_at)}: these statements are final.`]
      : [h('span', { class: 'badge status-open' }, 'Open'), 'The figures follow usage as it arrives, until the month is closed.']));
    let usage = 0;
    let adjustments = 0;
    for (const s of st.data) {
      usage += s.usage_cost_micros;
      adjustments += s.adjustments_cost_micros;
    }
    clear(totals).append(
      stat('Services', num(st.data.length), 'services'),
      stat('Usage', money(usage, st.currency), 'usage'),
      stat('Adjustments', money(adjustments, st.currency), 'adjustments'),
      stat('Total', money(st.cost_micros, st.currency), 'total'),
    );
    clear(body);
    if (!st.data.length) {
      body.append(h('div', { class: 'empty' }, h('h2', {}, 'Nothing billed'), h('p', {}, `No service the key may see used anything in ${st.period}.`)));
    } else {
      body.append(h('div', { class: 'table-wrap' }, statementsTable(st, store)));
    }
    const me = await api.me();
    const ended = new Date(`${period}-01T00:00:00Z`) < new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), 1));
    closeBtn.hidden = !(me && me.admin && st.status === 'open' && ended);
  };

  download.addEventListener('click', async () => {
    download.disabled = true;
    try {
      const blob = await api.download(`/statements/export.csv?period=${encodeURIComponent(period)}`);
      const a = h('a', { href: URL.createObjectURL(blob), download: `statements-${period}.csv`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (err) {
      toast(`Download failed: ${err.message}`, 'error');
    } finally {
      download.disabled = false;
    }
  });
  closeBtn.addEventListener('click', async () => {
    const closed = await closePeriodDialog(api, period);
    if (closed) {
      toast(`${period} is closed`);
      load();
    }
  });

  load();
  return () => ctrl && ctrl.abort();
}

function stat(label, value, key) {
  return h('div', { class: 'stat', dataset: { stat: key } }, h('dt', {}, label), h('dd', {}, value));
}

// statementsTable lists one row per service, its lines folded under it.
function statementsTable(st, store) {
  const tbody = h('tbody');
  for (const s of st.data) {
    const known = store && store.get(s.service_id);
    const name = s.service_name || (known && known.name) || s.service_id;
    const lines = h('details', { class: 'lines' },
      h('summary', {}, `${s.lines.length} line${s.lines.length === 1 ? '' : 's'}`),
      linesTable(s, st.currency));
    tbody.append(h('tr', { dataset: { service: s.service_id, name } },
      h('th', { scope: 'row' }, known ? h('a', { href: `#/services/${encodeURIComponent(s.service_id)}` }, name) : name, lines),
      h('td', { dataset: { label: 'Billing' } }, billingName(s.billing_method)),
      h('td', { class: 'money', dataset: { label: 'Usage', field: 'usage' } }, money(s.usage_cost_micros, st.currency)),
      h('td', { class: 'money', dataset: { label: 'Adjustments', field: 'adjustments' } }, money(s.adjustments_cost_micros, st.currency)),
      h('td', { class: 'money', dataset: { label: 'Total', field: 'total' } }, money(s.cost_micros, st.currency)),
    ));
  }
  return h('table', { class: 'services statements' },
    h('caption', { class: 'visually-hidden' }, `Statements for ${st.period}, one row per service`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Service'),
      h('th', { scope: 'col' }, 'Billing'),
      h('th', { scope: 'col', class: 'money' }, 'Usage'),
      h('th', { scope: 'col', class: 'money' }, 'Adjustments'),
      h('th', { scope: 'col', class: 'money' }, 'Total'),
    )),
    tbody,
  );
}

function linesTable(s, currency) {
  return h('table', { class: 'line-items' },
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Kind'),
      h('th', { scope: 'col' }, 'Month'),
      h('th', { scope: 'col' }, 'What'),
      h('th', { scope: 'col' }, 'Quantity'),
      h('th', { scope: 'col', class: 'money' }, 'Cost'),
    )),
    h('tbody', {}, s.lines.map((l) => h('tr', { dataset: { kind: l.kind } },
      h('td', {}, l.kind === 'adjustment' ? 'Adjustment' : 'Usage'),
      h('td', {}, l.for_period),
      h('td', {}, partNames[l.part] || l.part, l.part === 'tokens' ? h('span', { class: 'muted' }, ` · ${l.base_model} · key ${l.api_key_id ? l.api_key_id.slice(0, 8) : '—'}`) : null),
      h('td', {}, l.part === 'instance_time'
        ? `${num(Math.round(l.instance_seconds / 36) / 100)} h`
        : `${num(l.requests)} request${l.requests === 1 ? '' : 's'}, ${num(l.total_tokens)} tokens`),
      h('td', { class: 'money' }, money(l.cost_micros, currency)),
    ))),
  );
}
