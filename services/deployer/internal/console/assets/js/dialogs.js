// Modal dialogs on the native <dialog> element: it traps focus, closes on
// Escape, and marks the page behind it inert. Closing returns focus to
// the element that opened the dialog.

import { field, h, routingPolicies } from './dom.js';

// openDialog shows a modal with a title, body nodes and a form; submit is
// called with the form and may throw to keep the dialog open with the
// error shown. It resolves with submit's result, or null when cancelled.
function openDialog({ title, body, submitLabel, submitClass = 'btn-primary', submit, initialFocus, cancellable = true }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const titleId = `dlg-title-${Math.random().toString(36).slice(2, 8)}`;
    const error = h('p', { class: 'field-error form-error', role: 'alert' });
    const ok = h('button', { type: 'submit', class: `btn ${submitClass}` }, submitLabel);
    const cancel = h('button', { type: 'button', class: 'btn btn-secondary', value: 'cancel' }, 'Cancel');
    const form = h('form', { method: 'dialog', novalidate: true },
      h('h2', { id: titleId }, title),
      body,
      error,
      h('div', { class: 'actions' }, cancellable ? cancel : null, ok),
    );
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId }, form);
    let result = null;
    cancel.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(result);
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.textContent = '';
      ok.disabled = true;
      try {
        result = await submit(form);
        dlg.close();
      } catch (err) {
        error.textContent = err.message;
        ok.disabled = false;
        if (initialFocus) initialFocus.focus();
      }
    });
    document.body.append(dlg);
    dlg.showModal();
    if (initialFocus) {
      initialFocus.focus();
      if (initialFocus.select) initialFocus.select();
    }
  });
}

// confirmDialog asks to confirm an action and runs it; an error keeps the
// dialog open with the message. It resolves true when done, null when
// cancelled.
export function confirmDialog({ title, body, submitLabel, submitClass, submit }) {
  return openDialog({
    title, body, submitLabel, submitClass,
    submit: async (form) => {
      await submit(form);
      return true;
    },
  });
}

// scaleDialog asks for a new instance count and scales the service.
export function scaleDialog(api, store, svc) {
  const input = h('input', { type: 'number', min: '0', max: '64', step: '1', inputmode: 'numeric', required: true, value: String(svc.instances), name: 'instances' });
  const f = field({
    label: 'Instances',
    input,
    hint: `Now ${svc.ready_instances} of ${svc.instances} ready. 0 stops every instance but keeps the service and its name.`,
  });
  input.addEventListener('input', () => f.setError(instancesError(input.value)));
  return openDialog({
    title: `Scale ${svc.name}`,
    body: [h('p', {}, 'Set how many instances serve requests. The router spreads requests over the ready ones.'), f.wrap],
    submitLabel: 'Scale',
    initialFocus: input,
    submit: async () => {
      const msg = instancesError(input.value);
      if (msg) {
        f.setError(msg);
        throw new Error('Fix the instance count first.');
      }
      const updated = await api.control('POST', `/services/${encodeURIComponent(svc.id)}/scale`, { instances: Number(input.value) });
      store.put(updated);
      return updated;
    },
  });
}

// routingDialog asks how the router should pick the service's instance
// for each request, and sets it; the next request follows.
export function routingDialog(api, store, svc) {
  const radios = routingPolicies.map((p) => h('input', { type: 'radio', name: 'policy', id: `routing-${p.id}`, value: p.id, checked: p.id === svc.routing_policy }));
  const group = h('fieldset', { class: 'radio-group' },
    h('legend', {}, 'Routing policy'),
    routingPolicies.map((p, i) => h('div', { class: 'radio' },
      radios[i],
      h('label', { for: radios[i].id }, h('strong', {}, p.name), h('span', { class: 'hint' }, p.hint)),
    )),
  );
  return openDialog({
    title: `Routing for ${svc.name}`,
    body: [h('p', {}, 'Choose how requests are spread over the ready instances. The change applies from the next request.'), group],
    submitLabel: 'Save routing',
    initialFocus: radios.find((r) => r.checked) || radios[0],
    submit: async () => {
      const chosen = radios.find((r) => r.checked);
      const updated = await api.control('PUT', `/services/${encodeURIComponent(svc.id)}/routing`, { policy: chosen.value });
      store.put(updated);
      return updated;
    },
  });
}

function instancesError(v) {
  if (v.trim() === '') return 'Enter a number of instances.';
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 64) return 'Instances must be a whole number from 0 to 64.';
  return '';
}

// deleteDialog asks for the service's name, as the control API does, and
// deletes the service. The server checks the name: a wrong one is refused
// with its message and the dialog stays open.
export function deleteDialog(api, store, svc) {
  const input = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', required: true, name: 'confirm_name' });
  const f = field({ label: `Type the service name, ${svc.name}, to confirm`, input });
  return openDialog({
    title: `Delete ${svc.name}?`,
    body: [
      h('p', {}, 'Deleting stops every instance. Clients calling ', h('code', {}, svc.access_name), ' get 404 at once, and nothing more is billed. This cannot be undone.'),
      f.wrap,
    ],
    submitLabel: 'Delete',
    submitClass: 'btn-danger',
    initialFocus: input,
    submit: async () => {
      const updated = await api.control('DELETE', `/services/${encodeURIComponent(svc.id)}`, { confirm_name: input.value });
      store.put(updated);
      return updated;
    },
  });
}

// secretDialog shows a new key's secret once, with a copy button.
export function secretDialog(key) {
  const secret = h('code', { class: 'secret' }, key.key);
  const copy = h('button', { type: 'button', class: 'btn btn-secondary btn-small' }, 'Copy key');
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(key.key);
      copy.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(secret);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      copy.textContent = 'Selected: press Ctrl+C';
    }
  });
  return openDialog({
    title: `New API key ${key.name}`,
    body: [
      h('p', { class: 'notice notice-warn' }, 'Copy this key now: it is shown once. Only its hash is stored.'),
      h('div', { class: 'secret-row' }, secret, copy),
    ],
    submitLabel: 'Done',
    initialFocus: copy,
    cancellable: false,
    submit: async () => true,
  });
}

// closePeriodDialog asks an admin to confirm closing a billing period and
// closes it: its statements become final, and usage of it that arrives
// later is billed in the next open period.
export function closePeriodDialog(api, period) {
  return openDialog({
    title: `Close ${period}`,
    body: [
      h('p', {}, `The statements of ${period} are worked out from the usage billing has now and never change again.`),
      h('p', { class: 'hint' }, 'Usage of this month that arrives later is billed in the next open month, as adjustments.'),
    ],
    submitLabel: 'Close the period',
    submit: () => api.billing('POST', `/periods/${encodeURIComponent(period)}/close`),
  });
}
