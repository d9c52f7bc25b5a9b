// The deploy form: a task, a base model that supports it (the catalog's,
// the public ones and the caller's own), a name, an instance count and a
// billing method, checked as the user types with the control API's own
// rules; the server's answer has the last word.

import { billingName, clear, field, h, taskName } from '../dom.js';
import { need, ownerLabel } from './models.js';

const TASKS = ['text-generation', 'image-understanding', 'image-generation'];
const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function renderDeploy(main, { api, store, navigate }, { model: wanted = '' } = {}) {
  document.title = 'Deploy a model · Modelport console';
  let catalog = [];

  const task = h('select', { name: 'task' }, TASKS.map((t) => h('option', { value: t }, taskName(t))));
  const taskF = field({ label: 'Task', input: task, hint: 'What the service does. The model list shows the models that can do it.' });

  const model = h('select', { name: 'base_model', required: true });
  const modelF = field({ label: 'Base model', input: model });
  const modelInfo = h('div', { class: 'model-info', 'aria-live': 'polite' });

  const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', spellcheck: 'false', required: true, maxlength: '63', placeholder: 'my-service' });
  const nameF = field({ label: 'Service name', input: name, hint: 'Lowercase letters, digits and hyphens. Clients call the service as u-<owner>/<name>.' });
  const preview = h('p', { class: 'hint access-preview', 'aria-live': 'polite' });
  nameF.wrap.append(preview);
  let me = null;
  const showPreview = () => {
    preview.textContent = me && name.value && NAME.test(name.value) ? `Access name: u-${me.owner_id}/${name.value}` : '';
  };
  api.me().then((m) => {
    me = m;
    showPreview();
  });

  const instances = h('input', { type: 'number', name: 'instances', min: '1', max: '64', step: '1', value: '1', inputmode: 'numeric', required: true });
  const instF = field({ label: 'Instances', input: instances, hint: '1 to 64. You can scale later.' });

  const billing = h('fieldset', { class: 'radio-group' },
    h('legend', {}, 'Billing method'),
    ['per-token', 'per-instance-hour'].map((m, i) => {
      const id = `billing-${m}`;
      return h('div', { class: 'radio' },
        h('input', { type: 'radio', name: 'billing_method', id, value: m, checked: i === 0 }),
        h('label', { for: id }, h('strong', {}, billingName(m)), h('span', { class: 'hint' }, m === 'per-token' ? 'Pay for the tokens requests use.' : 'Pay for each instance for each hour it runs.')),
      );
    }),
  );

  const formError = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Deploy');
  const form = h('form', { class: 'card form', novalidate: true },
    taskF.wrap, modelF.wrap, modelInfo, nameF.wrap, instF.wrap, billing, formError,
    h('div', { class: 'actions' }, h('a', { class: 'btn btn-secondary', href: '#/services' }, 'Cancel'), submit),
  );
  main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/services' }, 'Services'), h('span', { 'aria-hidden': 'true' }, ' / '), h('span', { 'aria-current': 'page' }, 'Deploy')),
    h('div', { class: 'page-head' }, h('div', {},
      h('h1', {}, 'Deploy a model'),
      h('p', { class: 'lead' }, 'Pick a base model: Modelport starts its instances and gives it an OpenAI-compatible access name.'),
    )),
    form,
  );

  const touched = new Set();
  const checks = {
    name: () => {
      const v = name.value;
      if (v === '') return 'Enter a name for the service.';
      if (v.length > 63) return 'At most 63 characters.';
      if (/[A-Z]/.test(v)) return 'Use lowercase letters only.';
      if (!NAME.test(v)) return 'Use lowercase letters, digits and hyphens, starting and ending with a letter or digit.';
      if (me && store.list().some((s) => s.owner_id === me.owner_id && s.name === v)) return `You already have a service named ${v}.`;
      return '';
    },
    instances: () => {
      const v = instances.value.trim();
      const n = Number(v);
      if (v === '' || !Number.isInteger(n) || n < 1 || n > 64) return 'Instances must be a whole number from 1 to 64.';
      return '';
    },
    base_model: () => (model.value ? '' : 'Pick a base model.'),
  };
  const setters = { name: nameF.setError, instances: instF.setError, base_model: modelF.setError, task: taskF.setError };
  const validate = (key, force) => {
    if (!force && !touched.has(key)) return '';
    const msg = checks[key]();
    setters[key](msg);
    return msg;
  };
  name.addEventListener('input', () => {
    touched.add('name');
    validate('name');
    showPreview();
  });
  instances.addEventListener('input', () => { touched.add('instances'); validate('instances'); });

  const fillModels = () => {
    const t = task.value;
    const prev = model.value;
    const fits = catalog.filter((m) => m.tasks.includes(t));
    clear(model);
    if (fits.length === 0) model.append(h('option', { value: '' }, 'No model can do this'));
    // The caller's own models first, then the public ones, then the catalog.
    for (const [label, pick] of [
      ['Your models', (m) => me && m.owner === me.owner_id],
      ['Public models', (m) => m.owner === 'public'],
      ['Catalog', (m) => m.owner === 'catalog' || m.owner === undefined],
      ['Other owners\' models', (m) => m.owner && m.owner !== 'catalog' && m.owner !== 'public' && !(me && m.owner === me.owner_id)],
    ]) {
      const group = fits.filter(pick);
      if (group.length) model.append(h('optgroup', { label }, group.map((m) => h('option', { value: m.name }, `${m.display_name || m.name} (${m.name})`))));
    }
    if (fits.some((m) => m.name === prev)) model.value = prev;
    showModel();
  };
  const showModel = () => {
    clear(modelInfo);
    const m = catalog.find((x) => x.name === model.value);
    if (!m) return;
    const rows = [
      ['Owner', ownerLabel(m, me)],
      ['Engine', m.engine],
      ['Tasks', m.tasks.map(taskName).join(', ')],
      ['Context length', m.context_length ? `${m.context_length.toLocaleString('en')} tokens` : '—'],
      ['GPUs per instance', String(m.gpus ?? 0)],
      ['Weights', m.source || '—'],
    ];
    if (m.base) rows.push(['Fine-tuned from', `${m.base} (LoRA adapter)`]);
    if (m.memory_bytes || m.gpu_memory_bytes) rows.push(['Per instance', need(m)]);
    modelInfo.append(h('dl', { class: 'facts compact' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
    modelInfo.append(h('p', { class: 'hint' }, 'Where no worker may run its engine, or has the GPUs it needs, an instance runs on the built-in simulator engine, and the service says so.'));
  };
  task.addEventListener('change', fillModels);
  model.addEventListener('change', () => { showModel(); validate('base_model'); });

  Promise.all([api.control('GET', '/catalog'), api.me()]).then(([list, who]) => {
    catalog = list || [];
    me = who;
    const pre = catalog.find((m) => m.name === wanted);
    if (pre && !pre.tasks.includes(task.value)) task.value = pre.tasks[0];
    fillModels();
    if (pre) {
      model.value = pre.name;
      showModel();
    }
  }).catch((err) => {
    formError.hidden = false;
    formError.textContent = `Cannot load the catalog: ${err.message}`;
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formError.hidden = true;
    let first = null;
    for (const key of ['base_model', 'name', 'instances']) {
      touched.add(key);
      if (validate(key, true) && !first) first = { base_model: model, name, instances }[key];
    }
    if (first) {
      first.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Deploying…';
    try {
      const svc = await api.control('POST', '/services', {
        name: name.value,
        base_model: model.value,
        task: task.value,
        instances: Number(instances.value),
        billing_method: form.querySelector('input[name="billing_method"]:checked').value,
      });
      store.put(svc);
      navigate(`#/services/${encodeURIComponent(svc.id)}`);
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Deploy';
      const setter = setters[err.param];
      if (setter) {
        setter(err.message);
        const input = { name, instances, base_model: model, task }[err.param];
        if (input) input.focus();
      } else {
        formError.hidden = false;
        formError.textContent = err.message;
      }
    }
  });
}
