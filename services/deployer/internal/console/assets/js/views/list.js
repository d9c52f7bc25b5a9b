// The service list: every service the key may see, updated live from the
// store. Rows are updated in place, so an open menu or the keyboard focus
// survives an update.

import { ago, clear, h, statusBadge, taskName } from '../dom.js';
import { deleteDialog, scaleDialog } from '../dialogs.js';

export function renderList(main, ctx) {
  const { store } = ctx;
  document.title = 'Services · Modelport console';
  const tbody = h('tbody');
  const table = h('table', { class: 'services' },
    h('caption', { class: 'visually-hidden' }, 'Model services, updated live'),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Name'),
      h('th', { scope: 'col' }, 'Access name'),
      h('th', { scope: 'col' }, 'Base model'),
      h('th', { scope: 'col' }, 'Task'),
      h('th', { scope: 'col' }, h('abbr', { title: 'ready / desired' }, 'Instances')),
      h('th', { scope: 'col' }, 'Status'),
      h('th', { scope: 'col' }, 'Updated'),
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')),
    )),
    tbody,
  );
  const empty = h('div', { class: 'empty', hidden: true },
    h('h2', {}, 'No model services yet'),
    h('p', {}, 'Deploy a base model from the catalog: it becomes an OpenAI-compatible service with its own access name.'),
    h('a', { class: 'btn btn-primary', href: '#/deploy' }, 'Deploy a model'),
  );
  const loading = h('p', { class: 'loading' }, 'Loading services…');
  main.append(
    h('div', { class: 'page-head' },
      h('div', {},
        h('h1', {}, 'Model services'),
        h('p', { class: 'lead' }, 'Each service is a base model deployed behind the OpenAI API. Click a name for its details, keys and code samples.'),
      ),
      h('a', { class: 'btn btn-primary', href: '#/deploy' }, 'Deploy a model'),
    ),
    loading,
    h('div', { class: 'table-wrap' }, table),
    empty,
  );

  const rows = new Map();
  const update = () => {
    if (!store.loaded) return;
    loading.hidden = true;
    const list = store.list();
    empty.hidden = list.length > 0;
    table.hidden = list.length === 0;
    const seen = new Set();
    let prev = null;
    for (const svc of list) {
      seen.add(svc.id);
      let row = rows.get(svc.id);
      if (!row) {
        row = makeRow(svc, ctx);
        rows.set(svc.id, row);
      }
      row.set(svc);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== row.tr) tbody.insertBefore(row.tr, want);
      prev = row.tr;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
  };
  store.addEventListener('change', update);
  update();
  const tick = setInterval(() => {
    for (const row of rows.values()) row.tick();
  }, 15000);
  return () => {
    store.removeEventListener('change', update);
    clearInterval(tick);
  };
}

function makeRow(initial, ctx) {
  let svc = initial;
  const link = h('a', { href: `#/services/${encodeURIComponent(svc.id)}`, class: 'svc-name' });
  const access = h('code', {});
  const model = h('td', { dataset: { label: 'Base model' } });
  const task = h('td', { dataset: { label: 'Task' } });
  const inst = h('td', { dataset: { label: 'Instances' }, class: 'instances' });
  const status = h('td', { dataset: { label: 'Status' } });
  const updated = h('td', { dataset: { label: 'Updated' }, class: 'muted' });
  const menu = actionMenu(() => svc, ctx);
  const tr = h('tr', { dataset: { id: svc.id } },
    h('th', { scope: 'row', dataset: { label: 'Name' } }, link),
    h('td', { dataset: { label: 'Access name' } }, access),
    model, task, inst, status, updated,
    h('td', { class: 'row-actions' }, menu),
  );
  return {
    tr,
    set(next) {
      svc = next;
      tr.dataset.status = svc.status;
      tr.dataset.name = svc.name;
      link.textContent = svc.name;
      access.textContent = svc.access_name;
      model.textContent = svc.base_model;
      task.textContent = taskName(svc.task);
      inst.textContent = `${svc.ready_instances} / ${svc.instances}`;
      inst.setAttribute('aria-label', `${svc.ready_instances} of ${svc.instances} instances ready`);
      clear(status).append(statusBadge(svc.status, svc.status_reason));
      this.tick();
    },
    tick() {
      updated.textContent = ago(svc.updated_at);
      updated.title = new Date(svc.updated_at).toLocaleString();
    },
  };
}

// actionMenu is the ┇ button with Open, Playground, Scale and Delete:
// arrow keys move between items, Escape closes and returns focus.
function actionMenu(getSvc, { api, store, navigate }) {
  const button = h('button', {
    type: 'button', class: 'btn btn-ghost btn-icon menu-button', 'aria-haspopup': 'menu', 'aria-expanded': 'false',
  }, h('span', { 'aria-hidden': 'true' }, '⋮'));
  const items = [
    ['Details', () => navigate(`#/services/${encodeURIComponent(getSvc().id)}`)],
    ['Playground', () => navigate(`#/services/${encodeURIComponent(getSvc().id)}/playground`)],
    ['Scale', () => scaleDialog(api, store, getSvc())],
    ['Delete', () => deleteDialog(api, store, getSvc())],
  ].map(([label, run]) => h('button', { type: 'button', role: 'menuitem', tabindex: '-1', class: label === 'Delete' ? 'danger' : '', onclick: () => { close(true); run(); } }, label));
  const menu = h('div', { class: 'menu', role: 'menu', hidden: true }, items);
  const wrap = h('div', { class: 'menu-wrap' }, button, menu);

  const onOutside = (e) => {
    if (!wrap.contains(e.target)) close(false);
  };
  function open() {
    button.setAttribute('aria-label', `Actions for ${getSvc().name}`);
    menu.hidden = false;
    button.setAttribute('aria-expanded', 'true');
    items[0].focus();
    document.addEventListener('pointerdown', onOutside);
  }
  function close(refocus) {
    if (menu.hidden) return;
    menu.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    document.removeEventListener('pointerdown', onOutside);
    if (refocus) button.focus();
  }
  button.setAttribute('aria-label', `Actions for ${getSvc().name}`);
  button.addEventListener('click', () => (menu.hidden ? open() : close(true)));
  button.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown') {
      e.preventDefault();
      open();
    }
  });
  menu.addEventListener('keydown', (e) => {
    const i = items.indexOf(document.activeElement);
    if (e.key === 'Escape') {
      e.preventDefault();
      close(true);
    } else if (e.key === 'ArrowDown') {
      e.preventDefault();
      items[(i + 1) % items.length].focus();
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      items[(i - 1 + items.length) % items.length].focus();
    } else if (e.key === 'Home') {
      e.preventDefault();
      items[0].focus();
    } else if (e.key === 'End') {
      e.preventDefault();
      items[items.length - 1].focus();
    } else if (e.key === 'Tab') {
      close(false);
    }
  });
  return wrap;
}
