// Sign in with an API key: the admin key printed at first start, or any
// key created in the console or with the control API. The key stays in
// this tab's sessionStorage and is sent only as a bearer token.

import { field, h } from '../dom.js';

export function renderSignIn(main, { api }, message, done) {
  const input = h('input', {
    type: 'password', name: 'api-key', autocomplete: 'off', spellcheck: 'false', required: true,
    placeholder: 'mp-…',
  });
  const f = field({
    label: 'API key',
    input,
    hint: ['On first start, ', h('code', {}, 'modelport up'), ' prints the admin key. Keys start with ', h('code', {}, 'mp-'), '.'],
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Sign in');
  const form = h('form', { class: 'card signin', novalidate: true },
    h('h1', {}, 'Sign in to Modelport'),
    h('p', { class: 'lead' }, 'Deploy models as OpenAI-compatible services, try them, and watch what they use.'),
    message ? h('p', { class: 'notice notice-warn', role: 'alert' }, message) : null,
    f.wrap,
    h('div', { class: 'actions' }, submit),
    h('p', { class: 'hint' }, 'The key is kept in this browser tab only, and sent to this server as Authorization: Bearer <key>.'),
  );
  input.addEventListener('input', () => f.setError(''));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) {
      f.setError('Enter your API key.');
      input.focus();
      return;
    }
    if (!key.startsWith('mp-')) {
      f.setError('Modelport API keys start with mp-.');
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      await api.request('GET', '/api/v1/services?limit=1', undefined, { key });
      api.key = key;
      done();
    } catch (err) {
      f.setError(err.status === 401 ? 'This key is not valid: check it and try again.' : err.message);
      submit.disabled = false;
      submit.textContent = 'Sign in';
      input.focus();
    }
  });
  main.append(h('div', { class: 'signin-wrap' }, form));
  input.focus();
}
