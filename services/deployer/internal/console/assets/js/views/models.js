// Models: what the caller can deploy (the operator's catalog, public
// models and its own), a form that registers a model of its own and
// checks it as the user types with the control API's rules, and a
// model's details with what the deployer read in its files. The server's
// answer has the last word.

import { clear, field, h, taskName, uid, when } from '../dom.js';
import { confirmDialog } from '../dialogs.js';

const TASKS = ['text-generation', 'image-understanding', 'image-generation'];
const ENGINES = ['ollama', 'llama.cpp', 'vllm', 'sglang', 'simulator'];
const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
// What each engine serves and loads, as the registry checks it.
const ENGINE_TASKS = {
  vllm: ['text-generation', 'image-understanding'],
  sglang: ['text-generation', 'image-understanding'],
  'llama.cpp': ['text-generation'],
  ollama: ['text-generation', 'image-understanding'],
  simulator: TASKS,
};
const FORMAT_ENGINES = {
  gguf: ['ollama', 'llama.cpp', 'simulator'],
  safetensors: ['vllm', 'sglang', 'simulator'],
  ollama: ['ollama', 'simulator'],
};

// ownerLabel says whose a model is, from the caller's point of view.
export function ownerLabel(m, me) {
  if (m.owner === 'catalog') return 'Catalog';
  if (m.owner === 'public') return 'Public';
  if (me && m.owner === me.owner_id) return 'Yours';
  return `Owner ${m.owner}`;
}

export function bytes(n) {
  if (!n) return '—';
  const units = [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]];
  for (const [u, v] of units) if (n >= v) return `${(n / v).toFixed(1)} ${u}`;
  return `${n} B`;
}

function params(n) {
  if (!n) return '—';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} billion`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} million`;
  return n.toLocaleString('en');
}

function tokens(n) {
  return n ? `${n.toLocaleString('en')} tokens` : 'The engine\'s default';
}

// need is what the scaler reserves for an instance, in words.
export function need(m) {
  if (m.memory_bytes) return `${bytes(m.memory_bytes)} of memory`;
  if (m.gpu_memory_bytes) return `${bytes(m.gpu_memory_bytes)} of GPU memory`;
  return 'Not known: not checked at placement';
}

// sourceInfo checks a source URI as the registry does and says what it
// holds: { error } or { format } (format '' when only the files tell).
export function sourceInfo(v) {
  if (v === '') return { error: 'Enter where the weights are.' };
  const m = v.match(/^([A-Za-z][A-Za-z0-9+.-]*):/);
  if (!m) {
    if (v.startsWith('/')) return { error: `Add the scheme: file://${v}` };
    if (/^[^/\s]+\/[^/\s]+$/.test(v)) return { error: `Add the scheme: hf://${v}` };
    return { error: 'Start with file://, hf://, ollama:// or s3://.' };
  }
  const scheme = m[1].toLowerCase();
  if (!['file', 'hf', 'ollama', 's3'].includes(scheme)) return { error: `Unknown scheme ${m[1]}: use file://, hf://, ollama:// or s3://.` };
  const rest = v.slice(m[0].length);
  if (!rest.startsWith('//')) return { error: `Write ${scheme}://…` };
  const r = rest.slice(2);
  const gguf = /\.gguf$/i;
  switch (scheme) {
    case 'file':
      if (!r.startsWith('/')) return { error: 'The path must be absolute: file:///path/on/the/model/store (three slashes).' };
      if (/\/\/|(^|\/)\.\.?(\/|$)/.test(r.replace(/\/$/, ''))) return { error: 'Use a clean path: no ".", ".." or "//".' };
      return { format: gguf.test(r) ? 'gguf' : '' };
    case 'hf': {
      const hf = r.match(/^([A-Za-z0-9][A-Za-z0-9._-]*)\/([A-Za-z0-9][A-Za-z0-9._-]*)(@[A-Za-z0-9][A-Za-z0-9._-]*)?(\/.+)?$/);
      if (!hf) return { error: 'Write hf://org/repo, hf://org/repo@revision or hf://org/repo/file.gguf.' };
      if (hf[4] && !gguf.test(hf[4])) return { error: 'A file in the repository must be a .gguf file.' };
      return { format: hf[4] || /-gguf$/i.test(hf[2]) ? 'gguf' : 'safetensors', pinned: Boolean(hf[3] || hf[4]) };
    }
    case 'ollama':
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*){0,2}(:[A-Za-z0-9][A-Za-z0-9._-]*)?$/.test(r)) return { error: 'Write ollama://name:tag, such as ollama://llama3.2:1b.' };
      return { format: 'ollama' };
    default:
      if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/.+/.test(r)) return { error: 'Write s3://bucket/key.' };
      return { format: gguf.test(r) ? 'gguf' : 'safetensors', s3: true };
  }
}

export function renderModels(main, { api }) {
  document.title = 'Models · Modelport console';
  const tbody = h('tbody');
  const table = h('table', { class: 'models', hidden: true },
    h('caption', { class: 'visually-hidden' }, 'Models you can deploy'),
    h('thead', {}, h('tr', {},
      ['Name', 'Owner', 'Engine', 'Tasks', 'Context', 'Memory per instance', 'Source'].map((c) => h('th', { scope: 'col' }, c)),
    )),
    tbody,
  );
  const status = h('p', { class: 'loading' }, 'Loading models…');
  main.append(
    h('div', { class: 'page-head' },
      h('div', {},
        h('h1', {}, 'Models'),
        h('p', { class: 'lead' }, 'The operator\'s catalog, the models shared with everyone, and your own. Register weights of your own, an open model or a fine-tune, then deploy it like any other.'),
      ),
      h('a', { class: 'btn btn-primary', href: '#/models/new' }, 'Register a model'),
    ),
    status,
    h('div', { class: 'table-wrap' }, table),
  );
  Promise.all([api.control('GET', '/models'), api.me()]).then(([list, me]) => {
    status.hidden = true;
    table.hidden = false;
    for (const m of list || []) {
      tbody.append(h('tr', { dataset: { name: m.name, owner: m.owner } },
        h('th', { scope: 'row', dataset: { label: 'Name' } },
          h('a', { href: `#/models/${encodeURIComponent(m.name)}` }, m.name),
          m.display_name && m.display_name !== m.name ? h('span', { class: 'hint' }, m.display_name) : null),
        h('td', { dataset: { label: 'Owner' } }, h('span', { class: `badge owner-${m.owner === 'catalog' || m.owner === 'public' ? m.owner : 'own'}` }, ownerLabel(m, me))),
        h('td', { dataset: { label: 'Engine' } }, m.engine),
        h('td', { dataset: { label: 'Tasks' } }, m.tasks.map(taskName).join(', ')),
        h('td', { dataset: { label: 'Context' } }, m.context_length ? m.context_length.toLocaleString('en') : 'default'),
        h('td', { dataset: { label: 'Memory' } }, m.memory_bytes || m.gpu_memory_bytes ? bytes(m.memory_bytes || m.gpu_memory_bytes) + (m.gpu_memory_bytes ? ' GPU' : '') : '—'),
        h('td', { dataset: { label: 'Source' } }, h('code', {}, m.base ? `${m.base} + ${m.adapter}` : m.source)),
      ));
    }
  }).catch((err) => {
    status.className = 'notice notice-error';
    status.setAttribute('role', 'alert');
    status.textContent = `Cannot load the models: ${err.message}`;
  });
}

export function renderRegister(main, { api, navigate }) {
  document.title = 'Register a model · Modelport console';
  let models = [];
  let me = null;

  const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', spellcheck: 'false', required: true, maxlength: '63', placeholder: 'my-model' });
  const nameF = field({ label: 'Name', input: name, hint: 'Lowercase letters, digits and hyphens. Services name it as their base model.' });
  const display = h('input', { type: 'text', name: 'display_name', autocomplete: 'off', maxlength: '128', placeholder: 'From the files' });
  const displayF = field({ label: 'Display name', input: display, hint: 'Optional, for people.' });

  const kinds = h('fieldset', { class: 'radio-group' },
    h('legend', {}, 'What to register'),
    [['weights', 'Model weights', 'A file or folder on the model store, a Hugging Face repository, an Ollama model or weights in S3.'],
      ['finetune', 'Fine-tune', 'A LoRA adapter on a model you can already deploy.']].map(([v, label, hint], i) => {
      const id = `kind-${v}`;
      return h('div', { class: 'radio' },
        h('input', { type: 'radio', name: 'kind', id, value: v, checked: i === 0 }),
        h('label', { for: id }, h('strong', {}, label), h('span', { class: 'hint' }, hint)));
    }),
  );

  const source = h('input', { type: 'text', name: 'source', autocomplete: 'off', spellcheck: 'false', placeholder: 'file:///models/my-model-Q4_K_M.gguf' });
  const sourceF = field({ label: 'Source', input: source, hint: 'file:///abs/path on the model store, hf://org/repo, ollama://name:tag or s3://bucket/key.' });
  const base = h('select', { name: 'base' });
  const baseF = field({ label: 'Base model', input: base, hint: 'The model the adapter was trained on; the weights, engine and settings come from it.' });
  const adapter = h('input', { type: 'text', name: 'adapter', autocomplete: 'off', spellcheck: 'false', placeholder: 'file:///models/adapters/my-lora' });
  const adapterF = field({ label: 'Adapter', input: adapter, hint: 'The LoRA adapter\'s source: a GGUF adapter or a PEFT folder on the model store, or hf://org/repo.' });

  const engine = h('select', { name: 'engine' }, h('option', { value: '' }, 'Automatic, from the weights'), ENGINES.map((e) => h('option', { value: e }, e)));
  const engineF = field({ label: 'Engine', input: engine });
  const engineHint = h('p', { class: 'hint engine-guess', 'aria-live': 'polite' });
  engineF.wrap.append(engineHint);

  const taskBoxes = TASKS.map((t) => h('input', { type: 'checkbox', name: 'tasks', value: t, id: `task-${t}`, checked: t === 'text-generation' }));
  const tasksErr = h('p', { class: 'field-error', id: uid('tasks-err'), 'aria-live': 'polite' });
  const tasks = h('fieldset', { class: 'checks', 'aria-describedby': tasksErr.id },
    h('legend', {}, 'Tasks'),
    taskBoxes.map((b) => h('div', { class: 'check' }, b, h('label', { for: b.id }, taskName(b.value)))),
    tasksErr,
  );

  const number = (n, placeholder) => h('input', { type: 'number', name: n, min: '0', step: '1', inputmode: 'numeric', placeholder });
  const gpus = number('gpus', 'Default');
  const gpusF = field({ label: 'GPUs per instance', input: gpus, hint: '0 runs on CPUs. Default: 0 for GGUF and Ollama models, 1 for safetensors.' });
  const ctxLen = number('context_length', 'Default');
  const ctxF = field({ label: 'Context length', input: ctxLen, hint: 'In tokens. Default: what the model was trained for, at most 8192.' });
  const mem = number('memory_gib', 'Estimated');
  const memF = field({ label: 'Memory per instance (GiB)', input: mem, hint: 'Only when you know better than the estimate from the files.' });
  const isPublic = h('input', { type: 'checkbox', name: 'public', id: uid('public') });
  const publicRow = h('div', { class: 'check', hidden: true }, isPublic, h('label', { for: isPublic.id }, 'Public: every owner can deploy it (admins only)'));

  const formError = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Register');
  const weightsPart = h('div', {}, sourceF.wrap);
  const tunePart = h('div', { hidden: true }, baseF.wrap, adapterF.wrap);
  const form = h('form', { class: 'card form', novalidate: true },
    nameF.wrap, kinds, weightsPart, tunePart, engineF.wrap, tasks,
    h('div', { class: 'row' }, gpusF.wrap, ctxF.wrap), memF.wrap, displayF.wrap, publicRow, formError,
    h('div', { class: 'actions' }, h('a', { class: 'btn btn-secondary', href: '#/models' }, 'Cancel'), submit),
  );
  main.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/models' }, 'Models'), h('span', { 'aria-hidden': 'true' }, ' / '), h('span', { 'aria-current': 'page' }, 'Register')),
    h('div', { class: 'page-head' }, h('div', {},
      h('h1', {}, 'Register a model'),
      h('p', { class: 'lead' }, 'Files on the model store are read first: the page then shows their architecture, size and the memory an instance needs.'),
    )),
    form,
  );

  const fineTune = () => form.querySelector('input[name="kind"]:checked').value === 'finetune';
  const chosenTasks = () => taskBoxes.filter((b) => b.checked).map((b) => b.value);
  const baseModel = () => models.find((m) => m.name === base.value);
  // engineNow is the engine the model will get: the one chosen, or the
  // default for what the source holds; '' when only the files can tell.
  const engineNow = () => {
    if (fineTune()) return baseModel() ? baseModel().engine : '';
    if (engine.value) return engine.value;
    const info = sourceInfo(source.value.trim());
    return info.format && !info.s3 ? FORMAT_ENGINES[info.format][0] : (info.s3 && info.format === 'safetensors' ? 'vllm' : '');
  };
  const touched = new Set();
  const checks = {
    name: () => {
      const v = name.value;
      if (v === '') return 'Enter a name for the model.';
      if (/[A-Z]/.test(v)) return 'Use lowercase letters only.';
      if (!NAME.test(v)) return 'Use lowercase letters, digits and hyphens, starting and ending with a letter or digit, at most 63.';
      const taken = models.find((m) => m.name === v);
      if (taken) return taken.owner === 'catalog' ? `The catalog has a model named ${v}.` : `A model named ${v} exists already.`;
      return '';
    },
    source: () => {
      if (fineTune()) return '';
      const v = source.value.trim();
      const info = sourceInfo(v);
      if (info.error) return info.error;
      if (engine.value && info.format && !FORMAT_ENGINES[info.format].includes(engine.value)) return `${engine.value} cannot load ${info.format} weights: use ${FORMAT_ENGINES[info.format].join(' or ')}.`;
      if (info.s3 && info.format === 'gguf' && engine.value !== 'simulator') return 'No engine reads a GGUF file from S3: copy it to the model store.';
      if (info.pinned && engine.value !== 'simulator') return 'The engines take a Hugging Face repository by name only: download the file or revision to the model store.';
      return '';
    },
    base: () => (fineTune() && !base.value ? 'Pick the model the adapter was trained on.' : ''),
    adapter: () => {
      if (!fineTune()) return '';
      const v = adapter.value.trim();
      if (v === '') return 'Enter the adapter\'s source.';
      return sourceInfo(v).error || '';
    },
    tasks: () => {
      const list = chosenTasks();
      if (list.length === 0) return 'Pick at least one task.';
      const e = engineNow();
      const bad = e && list.find((t) => !ENGINE_TASKS[e].includes(t));
      if (bad) return `${e} cannot serve ${taskName(bad).toLowerCase()} (it serves ${ENGINE_TASKS[e].map((t) => taskName(t).toLowerCase()).join(', ')}).`;
      const b = fineTune() && baseModel();
      const notBase = b && list.find((t) => !b.tasks.includes(t));
      if (notBase) return `${b.name} does not serve ${taskName(notBase).toLowerCase()}.`;
      return '';
    },
    gpus: () => (gpus.value !== '' && !(Number.isInteger(Number(gpus.value)) && Number(gpus.value) >= 0 && Number(gpus.value) <= 16) ? 'GPUs must be a whole number from 0 to 16.' : ''),
    context_length: () => (ctxLen.value !== '' && !(Number.isInteger(Number(ctxLen.value)) && Number(ctxLen.value) >= 0 && Number(ctxLen.value) <= 2097152) ? 'The context length must be a whole number of tokens, at most 2097152.' : ''),
    memory_gib: () => (mem.value !== '' && !(Number.isInteger(Number(mem.value)) && Number(mem.value) >= 0 && Number(mem.value) <= 16384) ? 'Memory must be a whole number of GiB, at most 16384.' : ''),
  };
  const setters = {
    name: nameF.setError, source: sourceF.setError, base: baseF.setError, adapter: adapterF.setError, engine: engineF.setError,
    tasks: (msg) => { tasksErr.textContent = msg || ''; },
    gpus: gpusF.setError, context_length: ctxF.setError, memory_gib: memF.setError, display_name: displayF.setError,
  };
  const inputs = { name, source, base, adapter, engine, tasks: taskBoxes[0], gpus, context_length: ctxLen, memory_gib: mem, display_name: display };
  const validate = (key, force) => {
    if (!force && !touched.has(key)) return '';
    const msg = checks[key] ? checks[key]() : '';
    setters[key](msg);
    return msg;
  };
  const revalidate = () => { for (const k of Object.keys(checks)) validate(k); };
  const showEngine = () => {
    const e = engineNow();
    if (engine.value || fineTune()) engineHint.textContent = fineTune() && e ? `A fine-tune runs on its base's engine, ${e}.` : '';
    else engineHint.textContent = e ? `From the source: ${e}.` : 'From the files, once they are read.';
  };
  const watch = (el, key, event = 'input') => el.addEventListener(event, () => {
    touched.add(key);
    revalidate();
    showEngine();
  });
  watch(name, 'name');
  watch(source, 'source');
  watch(adapter, 'adapter');
  watch(base, 'base', 'change');
  watch(engine, 'source', 'change');
  engine.addEventListener('change', () => { touched.add('tasks'); revalidate(); });
  for (const b of taskBoxes) watch(b, 'tasks', 'change');
  watch(gpus, 'gpus');
  watch(ctxLen, 'context_length');
  watch(mem, 'memory_gib');
  kinds.addEventListener('change', () => {
    weightsPart.hidden = fineTune();
    tunePart.hidden = !fineTune();
    engine.disabled = fineTune();
    revalidate();
    showEngine();
  });
  showEngine();

  Promise.all([api.control('GET', '/models'), api.me()]).then(([list, who]) => {
    models = list || [];
    me = who;
    publicRow.hidden = !(me && me.admin);
    clear(base).append(h('option', { value: '' }, 'Pick a model'));
    for (const m of models.filter((x) => !x.base)) {
      base.append(h('option', { value: m.name }, `${m.display_name || m.name} (${m.name}, ${ownerLabel(m, me).toLowerCase()})`));
    }
    revalidate();
  }).catch((err) => {
    formError.hidden = false;
    formError.textContent = `Cannot load the models: ${err.message}`;
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formError.hidden = true;
    let first = null;
    for (const key of Object.keys(checks)) {
      touched.add(key);
      if (validate(key, true) && !first) first = inputs[key];
    }
    if (first) {
      first.focus();
      return;
    }
    const body = { name: name.value, tasks: chosenTasks() };
    if (display.value.trim()) body.display_name = display.value.trim();
    if (fineTune()) {
      body.base = base.value;
      body.adapter = adapter.value.trim();
    } else {
      body.source = source.value.trim();
      if (engine.value) body.engine = engine.value;
    }
    if (gpus.value !== '') body.gpus = Number(gpus.value);
    if (ctxLen.value !== '') body.context_length = Number(ctxLen.value);
    if (mem.value !== '') body.memory_gib = Number(mem.value);
    if (isPublic.checked) body.public = true;
    submit.disabled = true;
    submit.textContent = 'Reading the files…';
    try {
      const m = await api.control('POST', '/models', body);
      navigate(`#/models/${encodeURIComponent(m.name)}`);
    } catch (err) {
      submit.disabled = false;
      submit.textContent = 'Register';
      const setter = setters[err.param];
      if (setter) {
        setter(err.message);
        if (inputs[err.param]) inputs[err.param].focus();
      } else {
        formError.hidden = false;
        formError.textContent = err.message;
      }
    }
  });
}

export function renderModel(main, { api, navigate }, name) {
  document.title = `${name} · Modelport console`;
  const body = h('div', {}, h('p', { class: 'loading' }, 'Loading the model…'));
  main.append(body);
  Promise.all([api.control('GET', `/models/${encodeURIComponent(name)}`), api.me()]).then(([m, me]) => {
    clear(body);
    const facts = (rows) => h('dl', { class: 'facts' }, rows.filter(Boolean).map(([k, v, key]) => [h('dt', {}, k), h('dd', { dataset: { field: key || '' } }, v)]));
    const deletable = m.owner !== 'catalog' && (m.owner !== 'public' || (me && me.admin));
    const del = h('button', { type: 'button', class: 'btn btn-danger', hidden: !deletable }, 'Delete');
    del.addEventListener('click', async () => {
      const done = await confirmDialog({
        title: `Delete the model ${m.name}?`,
        body: [h('p', {}, 'Services can no longer be deployed from it. It cannot be deleted while a service or a fine-tuned model uses it.')],
        submitLabel: 'Delete',
        submitClass: 'btn-danger',
        submit: () => api.control('DELETE', `/models/${encodeURIComponent(m.name)}`),
      });
      if (done !== null) navigate('#/models');
    });
    const insp = m.inspection;
    body.append(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/models' }, 'Models'), h('span', { 'aria-hidden': 'true' }, ' / '), h('span', { 'aria-current': 'page' }, m.name)),
      h('div', { class: 'page-head' },
        h('div', {},
          h('h1', {}, m.name, ' ', h('span', { class: 'badge' }, ownerLabel(m, me))),
          h('p', { class: 'lead' }, m.display_name),
        ),
        h('div', { class: 'head-actions' },
          h('a', { class: 'btn btn-primary', href: `#/deploy?model=${encodeURIComponent(m.name)}` }, 'Deploy this model'),
          del,
        ),
      ),
      h('section', { class: 'card', 'aria-labelledby': 'model-h' },
        h('h2', { id: 'model-h' }, 'Model'),
        facts([
          ['Name', m.name, 'name'],
          ['Owner', ownerLabel(m, me), 'owner'],
          m.base ? ['Fine-tuned from', m.base, 'base'] : null,
          m.base ? ['LoRA adapter', h('code', {}, m.adapter), 'adapter'] : null,
          ['Weights', h('code', {}, m.source), 'source'],
          ['Format', m.format || 'Not known', 'format'],
          ['Engine', m.engine, 'engine'],
          ['Tasks', m.tasks.map(taskName).join(', '), 'tasks'],
          ['GPUs per instance', m.gpus ? String(m.gpus) : '0: runs on CPUs', 'gpus'],
          ['Context length', tokens(m.context_length), 'context_length'],
          ['Reserved per instance', need(m), 'need'],
          m.created_at ? ['Registered', when(m.created_at), 'created_at'] : null,
        ]),
      ),
      insp && insp.format ? h('section', { class: 'card inspection', 'aria-labelledby': 'insp-h' },
        h('h2', { id: 'insp-h' }, 'What the files say'),
        facts([
          ['Format', insp.format.toUpperCase(), 'insp-format'],
          ['Architecture', insp.architecture || '—', 'architecture'],
          insp.model_name ? ['Name in the files', insp.model_name, 'model_name'] : null,
          ['Parameters', params(insp.parameters), 'parameters'],
          ['Quantization', insp.quantization || '—', 'quantization'],
          ['Trained context', tokens(insp.context_length), 'trained_context'],
          ['Layers', String(insp.layers || '—'), 'layers'],
          ['Weights', bytes(insp.tensor_bytes), 'tensor_bytes'],
          ['Files', bytes(insp.file_bytes), 'file_bytes'],
          ['Estimated memory', `${bytes(insp.memory_bytes)} on CPUs, ${bytes(insp.gpu_memory_bytes)} on GPUs, at ${tokens(insp.estimated_context)}`, 'estimate'],
          insp.adapter ? ['Adapter weights', bytes(insp.adapter.tensor_bytes), 'adapter_bytes'] : null,
        ]),
      ) : h('p', { class: 'notice notice-warn' }, m.owner === 'catalog'
        ? 'A catalog model: the operator describes it in the catalog file.'
        : 'Not inspected: its files are not on the model store. Placement checks memory only when the model says what it needs (memory_gib).'),
    );
    document.title = `${m.name} · Modelport console`;
  }).catch((err) => {
    clear(body).append(h('h1', {}, 'Model not found'), h('p', { class: 'notice notice-error', role: 'alert' }, err.message), h('p', {}, h('a', { href: '#/models' }, 'Back to the models')));
  });
}
