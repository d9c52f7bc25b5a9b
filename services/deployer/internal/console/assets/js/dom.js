// Small DOM helpers: an element builder, formatters, copy to clipboard and
// toasts. No framework: views build elements with h() and update them in
// place.

// h builds an element. attrs: "class", "text", "on<event>" handlers,
// "dataset" (an object), boolean attributes as true/false, anything else
// as an attribute. Children are nodes, strings, or arrays of them; null
// and false are skipped.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

// s builds an SVG element.
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === 'text') el.textContent = v;
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// clear removes every child of el.
export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// uid returns a page-unique ID for label/aria wiring.
let counter = 0;
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${counter}`;
}

const numberFormat = new Intl.NumberFormat('en');
export function num(n) {
  return numberFormat.format(Number(n) || 0);
}

// when formats a timestamp as a short local date and time.
export function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime()) || d.getFullYear() < 2000) return '—';
  return d.toLocaleString('en', { dateStyle: 'medium', timeStyle: 'medium' });
}

// ago formats a timestamp relative to now: "12s ago", "5 min ago".
export function ago(iso) {
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return '—';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const taskNames = {
  'text-generation': 'Text generation',
  'image-understanding': 'Image understanding',
  'image-generation': 'Image generation',
};
export function taskName(task) {
  return taskNames[task] || task;
}

const billingNames = {
  'per-token': 'Per token',
  'per-instance-hour': 'Per instance-hour',
};
export function billingName(m) {
  return billingNames[m] || m;
}

// routingPolicies are the ways the router can pick a service's instance
// for a request, in the order the control API lists them, with what each
// does.
export const routingPolicies = [
  { id: 'least-outstanding', name: 'Least outstanding', hint: 'Each request goes to the instance with the fewest requests in flight.' },
  { id: 'prefix-affinity', name: 'Prefix affinity', hint: 'A chat conversation stays on the instance whose prefix cache holds its earlier turns, while that instance is not much busier than the others: its answers start sooner.' },
  { id: 'round-robin', name: 'Round robin', hint: 'The instances take requests in turn, however busy they are.' },
];
export function routingName(p) {
  const r = routingPolicies.find((x) => x.id === p);
  return r ? r.name : p;
}

// statusBadge is a service status as a coloured badge with its text;
// reason, when the control API gives one, says why.
export function statusBadge(status, reason) {
  return h('span', { class: `badge status status-${status}`, dataset: { status }, title: reason || null }, status);
}

// engineBadge marks the simulator honestly: its answers are not a model's.
export function engineBadge(engine) {
  if (engine === 'simulator') {
    return h('span', { class: 'badge engine-sim', title: 'The built-in simulator engine answers; its output is not real model output.' }, 'Simulator engine');
  }
  return h('span', { class: 'badge engine' }, engine || 'engine pending');
}

// money formats a cost in millionths of the currency's unit, signed.
export function money(micros, currency) {
  const amount = micros / 1e6;
  try {
    if (currency) return new Intl.NumberFormat('en', { style: 'currency', currency, minimumFractionDigits: 2, maximumFractionDigits: 6 }).format(amount);
  } catch {
    // An unknown currency code: the number alone.
  }
  return amount.toFixed(6);
}

// toast shows a short message in the polite live region.
export function toast(message, kind = 'info') {
  const region = document.querySelector('.toasts');
  if (!region) return;
  const t = h('div', { class: `toast toast-${kind}` }, message);
  region.append(t);
  setTimeout(() => t.remove(), 4000);
}

// copyText copies text and says so; without clipboard access it selects
// the text in fallback (an element) so the user can copy it.
export async function copyText(text, fallback) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied to the clipboard');
    return true;
  } catch {
    if (fallback) {
      const range = document.createRange();
      range.selectNodeContents(fallback);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
    toast('Press Ctrl+C to copy the selected text', 'warn');
    return false;
  }
}

// copyButton returns a button that copies what text() returns.
export function copyButton(label, text, fallback) {
  return h('button', {
    type: 'button', class: 'btn btn-ghost btn-small copy', 'aria-label': label,
    onclick: () => copyText(typeof text === 'function' ? text() : text, typeof fallback === 'function' ? fallback() : fallback),
  }, 'Copy');
}

// codeBlock is preformatted code with a copy button.
export function codeBlock(code, label = 'Copy code') {
  const pre = h('pre', { class: 'code', tabindex: '0' }, h('code', {}, code));
  return h('div', { class: 'code-wrap' }, copyButton(label, () => pre.textContent, pre), pre);
}

// field wraps an input with its label, hint and validation message, wired
// with aria-describedby. It returns the wrapper and a setError function.
export function field({ label, input, hint }) {
  const id = input.id || uid('f');
  input.id = id;
  const hintEl = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  const err = h('p', { class: 'field-error', id: `${id}-err`, 'aria-live': 'polite' });
  input.setAttribute('aria-describedby', [hintEl && hintEl.id, err.id].filter(Boolean).join(' '));
  const wrap = h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl, err);
  const setError = (msg) => {
    err.textContent = msg || '';
    if (msg) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  };
  return { wrap, setError };
}
