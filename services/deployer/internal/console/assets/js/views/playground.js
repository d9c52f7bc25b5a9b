// The playground: try a service from the browser through the router, with
// the same request an API client would send shown beside it.
//
//   text-generation       streamed chat with a system prompt, temperature and max tokens,
//                         through the Chat Completions or the Responses API
//   image-understanding   the same, with an image attached to a message
//   image-generation      a prompt, a size and a count; the images are shown
//   embedding             texts in, their vectors' length, first values and tokens out

import { readSSE } from '../api.js';
import { clear, codeBlock, engineBadge, field, h, num, statusBadge, taskName } from '../dom.js';
import { curlFor } from '../samples.js';

export function renderPlayground(main, ctx, id) {
  const { api, store } = ctx;
  const root = h('div', { class: 'playground' });
  main.append(root);
  let cleanup = () => {};
  const start = (svc) => {
    clear(root);
    cleanup = build(root, svc, api, store);
  };
  const svc = store.get(id);
  if (svc) start(svc);
  else {
    root.append(h('p', { class: 'loading' }, 'Loading the service…'));
    api.control('GET', `/services/${encodeURIComponent(id)}`).then(start).catch((err) => {
      clear(root).append(h('h1', {}, 'Service not found'), h('p', { class: 'notice notice-error', role: 'alert' }, err.message));
    });
  }
  return () => cleanup();
}

function build(root, svc, api, store) {
  document.title = `Playground: ${svc.name} · Modelport console`;
  const status = h('span', {}, statusBadge(svc.status));
  const engine = h('span', {}, engineBadge(svc.engine));
  const notReady = h('p', { class: 'notice notice-warn', hidden: svc.ready_instances > 0 }, 'No instance is ready yet: requests wait a few seconds for one, then fail. The status above changes when one is ready.');
  const simNotice = h('p', { class: 'notice notice-sim', hidden: svc.engine !== 'simulator' },
    h('strong', {}, 'Simulated output. '),
    svc.task === 'image-generation'
      ? 'The simulator engine draws these images from the prompt\'s hash, not the model. Sizes, token counts and billing are real.'
      : svc.task === 'embedding'
        ? 'The simulator engine draws these vectors from a hash of the model and the text, not the model. Lengths, token counts and billing are real.'
        : 'The simulator engine answers here, not the model: answers say so, and describe the request rather than respond to it. Streaming, token counts and billing are real.');
  const request = h('div', { class: 'request-slot' });
  const showRequest = (path, body) => {
    clear(request).append(codeBlock(curlFor(api.openAIBase, path, body), 'Copy the request'));
  };

  root.append(
    h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' },
      h('a', { href: '#/services' }, 'Services'), h('span', { 'aria-hidden': 'true' }, ' / '),
      h('a', { href: `#/services/${encodeURIComponent(svc.id)}` }, svc.name), h('span', { 'aria-hidden': 'true' }, ' / '),
      h('span', { 'aria-current': 'page' }, 'Playground')),
    h('div', { class: 'page-head' }, h('div', {},
      h('h1', {}, `Playground: ${svc.name} `, status),
      h('p', { class: 'lead' }, h('code', {}, svc.access_name), ' · ', taskName(svc.task), ' · ', svc.base_model, ' ', engine),
    )),
    simNotice,
    notReady,
  );
  const onChange = () => {
    const s = store.get(svc.id);
    if (!s) return;
    clear(status).append(statusBadge(s.status, s.status_reason));
    clear(engine).append(engineBadge(s.engine));
    simNotice.hidden = s.engine !== 'simulator';
    notReady.hidden = s.ready_instances > 0;
  };
  store.addEventListener('change', onChange);

  const [work, heading] = {
    'image-generation': () => [imagePlayground(svc, api, showRequest), 'Generate images'],
    embedding: () => [embeddingPlayground(svc, api, showRequest), 'Embed'],
  }[svc.task]?.() || [chatPlayground(svc, api, showRequest), 'Chat'];
  root.append(h('div', { class: 'pg-grid' },
    h('section', { class: 'card pg-main', 'aria-labelledby': 'pg-try' }, h('h2', { id: 'pg-try' }, heading), work.el),
    h('section', { class: 'card pg-request', 'aria-labelledby': 'pg-req' },
      h('h2', { id: 'pg-req' }, 'Equivalent API request'),
      h('p', { class: 'hint' }, 'What the playground sends, as curl. Put your own key in place of the placeholder.'),
      request),
  ));
  return () => {
    store.removeEventListener('change', onChange);
    work.stop();
  };
}

// The APIs a text service answers in the playground: the same
// conversation as a chat completion or as a response.
const APIS = [
  { id: 'chat', label: 'Chat Completions', path: '/chat/completions' },
  { id: 'responses', label: 'Responses', path: '/responses' },
];

// inputItem is a chat message as a Responses input item.
function inputItem(m) {
  if (typeof m.content === 'string') return { role: m.role, content: m.content };
  return {
    role: m.role,
    content: m.content.map((p) => (p.type === 'image_url'
      ? { type: 'input_image', image_url: p.image_url.url }
      : { type: m.role === 'assistant' ? 'output_text' : 'input_text', text: p.text })),
  };
}

// chatPlayground streams chat completions, or responses. An
// image-understanding service also takes an image, sent inline as a data
// URL.
function chatPlayground(svc, api, showRequest) {
  const vision = svc.task === 'image-understanding';
  const history = []; // {role, content} sent so far, without the system prompt
  let ctrl = null;
  let image = null; // {dataURL, name, width, height}

  const system = h('textarea', { rows: '2', name: 'system', placeholder: 'You are a helpful assistant.' });
  const systemF = field({ label: 'System prompt', input: system, hint: 'Optional. Sent first: a system message, or the Responses API\'s instructions.' });
  const temp = h('input', { type: 'range', min: '0', max: '2', step: '0.1', value: '0.7', name: 'temperature' });
  const tempF = field({ label: 'Temperature', input: temp, hint: 'Higher is more varied, lower more stable.' });
  const tempOut = h('output', { for: temp.id }, '0.7');
  tempF.wrap.querySelector('label').append(' ', tempOut);
  const maxTokens = h('input', { type: 'number', min: '1', max: '8192', step: '1', value: '256', name: 'max_tokens', inputmode: 'numeric' });
  const maxF = field({ label: 'Max tokens', input: maxTokens, hint: 'At most this many tokens in the answer.' });
  const apiSelect = h('select', { name: 'api' }, APIS.map((a) => h('option', { value: a.id }, a.label)));
  const apiF = field({ label: 'API', input: apiSelect, hint: 'The same conversation through POST /v1/chat/completions or POST /v1/responses.' });
  const chosen = () => APIS.find((a) => a.id === apiSelect.value) || APIS[0];

  const log = h('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation' },
    h('p', { class: 'muted chat-empty' }, 'Send a message to start.'));
  const input = h('textarea', { rows: '3', name: 'message', placeholder: vision ? 'Ask about the image…' : 'Type a message…', required: true });
  const inputF = field({ label: 'Message', input, hint: 'Enter sends; Shift+Enter starts a new line.' });
  const send = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Send');
  const stop = h('button', { type: 'button', class: 'btn btn-secondary', hidden: true }, 'Stop');
  const reset = h('button', { type: 'button', class: 'btn btn-ghost' }, 'Clear chat');
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const usage = h('p', { class: 'hint usage-line', 'aria-live': 'polite' });

  let imageF = null;
  let fileInput = null;
  const preview = h('div', { class: 'image-preview' });
  if (vision) {
    fileInput = h('input', { type: 'file', accept: 'image/png,image/jpeg,image/gif', name: 'image' });
    imageF = field({ label: 'Image', input: fileInput, hint: 'PNG, JPEG or GIF. It is sent inline, as a data URL, with your next message.' });
    fileInput.addEventListener('change', async () => {
      clear(preview);
      image = null;
      imageF.setError('');
      const file = fileInput.files[0];
      if (!file) return;
      if (file.size > 20 * 1024 * 1024) {
        imageF.setError('The image is larger than 20 MiB.');
        return;
      }
      const dataURL = await new Promise((resolve, reject) => {
        const r = new FileReader();
        r.onload = () => resolve(r.result);
        r.onerror = () => reject(r.error);
        r.readAsDataURL(file);
      });
      const img = h('img', { src: dataURL, alt: `Attached: ${file.name}` });
      await img.decode().catch(() => {});
      image = { dataURL, name: file.name, width: img.naturalWidth, height: img.naturalHeight };
      const remove = h('button', { type: 'button', class: 'btn btn-ghost btn-small' }, 'Remove image');
      remove.addEventListener('click', () => {
        image = null;
        fileInput.value = '';
        clear(preview);
        fileInput.focus();
        update();
      });
      preview.append(img, h('span', { class: 'hint' }, `${file.name}, ${image.width}×${image.height}`), remove);
      update();
    });
  }

  const body = (text) => {
    const messages = [];
    if (system.value.trim()) messages.push({ role: 'system', content: system.value.trim() });
    messages.push(...history);
    if (text !== undefined) {
      messages.push({
        role: 'user',
        content: vision && image
          ? [{ type: 'text', text }, { type: 'image_url', image_url: { url: image.dataURL } }]
          : text,
      });
    }
    const n = Number(maxTokens.value);
    const limit = Number.isInteger(n) && n > 0 ? n : undefined;
    if (chosen().id === 'responses') {
      const b = { model: svc.access_name, input: messages.filter((m) => m.role !== 'system').map(inputItem), temperature: Number(temp.value), stream: true };
      if (system.value.trim()) b.instructions = system.value.trim();
      if (limit) b.max_output_tokens = limit;
      return b;
    }
    const b = {
      model: svc.access_name, messages, temperature: Number(temp.value), stream: true, stream_options: { include_usage: true },
    };
    if (limit) b.max_tokens = limit;
    return b;
  };
  // lastMessage is the message a request body just added to the
  // conversation, as the chat history keeps it.
  const lastMessage = (req) => (req.messages ? req.messages[req.messages.length - 1] : null);
  const update = () => showRequest(chosen().path, body(input.value || 'Hello!'));
  apiSelect.addEventListener('change', update);
  temp.addEventListener('input', () => {
    tempOut.textContent = temp.value;
    update();
  });
  for (const el of [system, maxTokens, input]) el.addEventListener('input', update);
  maxTokens.addEventListener('input', () => {
    const n = Number(maxTokens.value);
    maxF.setError(maxTokens.value === '' || (Number.isInteger(n) && n >= 1 && n <= 8192) ? '' : 'Max tokens must be a whole number from 1 to 8192.');
  });
  update();

  const bubble = (role, content, extra) => {
    const empty = log.querySelector('.chat-empty');
    if (empty) empty.remove();
    const text = h('div', { class: 'bubble-text' }, content);
    const el = h('div', { class: `bubble bubble-${role}`, dataset: { role } }, h('span', { class: 'bubble-role' }, role === 'assistant' ? 'Assistant' : 'You'), extra, text);
    log.append(el);
    log.scrollTop = log.scrollHeight;
    return { el, text };
  };

  const form = h('form', { class: 'chat-form', novalidate: true }, vision ? [imageF.wrap, preview] : null, inputF.wrap, error,
    h('div', { class: 'actions' }, reset, stop, send), usage);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener('click', () => ctrl && ctrl.abort());
  reset.addEventListener('click', () => {
    if (ctrl) ctrl.abort();
    history.length = 0;
    clear(log).append(h('p', { class: 'muted chat-empty' }, 'Send a message to start.'));
    usage.textContent = '';
    update();
    input.focus();
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) {
      inputF.setError('Type a message first.');
      input.focus();
      return;
    }
    if (maxF.wrap.querySelector('[aria-invalid]')) {
      maxTokens.focus();
      return;
    }
    inputF.setError('');
    error.hidden = true;
    const req = body(text);
    const { path } = chosen();
    showRequest(path, req);
    const sentImage = vision && image ? h('img', { src: image.dataURL, alt: `Sent image ${image.name}`, class: 'bubble-image' }) : null;
    bubble('user', text, sentImage);
    history.push(lastMessage(req) || {
      role: 'user',
      content: vision && image ? [{ type: 'text', text }, { type: 'image_url', image_url: { url: image.dataURL } }] : text,
    });
    input.value = '';
    if (vision && image) {
      image = null;
      fileInput.value = '';
      clear(preview);
    }
    const answer = bubble('assistant', '');
    answer.el.classList.add('streaming');
    answer.el.setAttribute('aria-busy', 'true');
    send.disabled = true;
    stop.hidden = false;
    ctrl = new AbortController();
    let content = '';
    let chunks = 0;
    try {
      const resp = await api.stream(`${api.openAIBase}${path}`, req, ctrl.signal);
      for await (const ev of readSSE(resp)) {
        if (ev.comment !== undefined) continue;
        if (ev.data === '[DONE]') break;
        const chunk = JSON.parse(ev.data);
        if (chunk.error) throw new Error(chunk.error.message || 'the stream failed');
        // A chat chunk's delta, or a Responses text delta event.
        const delta = chunk.type === 'response.output_text.delta'
          ? chunk.delta
          : chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (delta) {
          content += delta;
          chunks += 1;
          answer.text.textContent = content;
          answer.el.dataset.chunks = String(chunks);
          log.scrollTop = log.scrollHeight;
        }
        if (chunk.usage) {
          usage.textContent = `${num(chunk.usage.prompt_tokens)} prompt + ${num(chunk.usage.completion_tokens)} completion = ${num(chunk.usage.total_tokens)} tokens`;
        }
        if (chunk.response && chunk.response.usage) {
          const u = chunk.response.usage;
          usage.textContent = `${num(u.input_tokens)} input + ${num(u.output_tokens)} output = ${num(u.total_tokens)} tokens`;
        }
      }
      history.push({ role: 'assistant', content });
    } catch (err) {
      if (err.name === 'AbortError') {
        answer.el.append(h('p', { class: 'hint' }, 'Stopped.'));
        if (content) history.push({ role: 'assistant', content });
      } else {
        error.hidden = false;
        error.textContent = err.message;
        history.pop();
        answer.el.remove();
      }
    } finally {
      answer.el.classList.remove('streaming');
      answer.el.removeAttribute('aria-busy');
      answer.el.dataset.done = 'true';
      send.disabled = false;
      stop.hidden = true;
      ctrl = null;
      input.focus();
    }
  });

  // Open where there is room; folded on a phone, where it would push the
  // conversation off the screen.
  const settings = h('details', { class: 'settings', open: window.matchMedia('(min-width: 761px)').matches }, h('summary', {}, 'Settings'),
    h('div', { class: 'settings-grid' }, apiF.wrap, systemF.wrap, tempF.wrap, maxF.wrap));
  return {
    el: h('div', { class: 'chat' }, settings, log, form),
    stop: () => ctrl && ctrl.abort(),
  };
}

const SIZES = ['256x256', '512x512', '1024x1024'];

// imagePlayground generates images and shows them with their revised
// prompts.
function imagePlayground(svc, api, showRequest) {
  const prompt = h('textarea', { rows: '3', name: 'prompt', required: true, placeholder: 'A lighthouse on a cliff at dawn' });
  const promptF = field({ label: 'Prompt', input: prompt, hint: 'Describe the image.' });
  const size = h('select', { name: 'size' }, SIZES.map((s) => h('option', { value: s, selected: s === '512x512' }, s.replace('x', ' × '))));
  const sizeF = field({ label: 'Size', input: size });
  const n = h('input', { type: 'number', min: '1', max: '4', step: '1', value: '1', name: 'n', inputmode: 'numeric' });
  const nF = field({ label: 'Images', input: n, hint: '1 to 4.' });
  const go = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Generate');
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const results = h('div', { class: 'image-results', 'aria-live': 'polite', 'aria-label': 'Generated images' });
  const usage = h('p', { class: 'hint usage-line' });
  let ctrl = null;

  const body = () => ({ model: svc.access_name, prompt: prompt.value || 'A lighthouse on a cliff at dawn', size: size.value, n: Number(n.value) || 1 });
  const update = () => showRequest('/images/generations', body());
  for (const el of [prompt, size, n]) el.addEventListener('input', update);
  n.addEventListener('input', () => {
    const v = Number(n.value);
    nF.setError(Number.isInteger(v) && v >= 1 && v <= 4 ? '' : 'Images must be a whole number from 1 to 4.');
  });
  update();

  const form = h('form', { class: 'image-form', novalidate: true },
    promptF.wrap, h('div', { class: 'row' }, sizeF.wrap, nF.wrap), error, h('div', { class: 'actions' }, go));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!prompt.value.trim()) {
      promptF.setError('Describe the image first.');
      prompt.focus();
      return;
    }
    promptF.setError('');
    if (nF.wrap.querySelector('[aria-invalid]')) {
      n.focus();
      return;
    }
    error.hidden = true;
    go.disabled = true;
    go.textContent = 'Generating…';
    const req = body();
    showRequest('/images/generations', req);
    clear(results).append(h('p', { class: 'loading' }, 'Generating…'));
    ctrl = new AbortController();
    try {
      const out = await api.openai('POST', '/images/generations', req, { signal: ctrl.signal });
      clear(results);
      (out.data || []).forEach((img, i) => {
        const src = img.url || `data:image/png;base64,${img.b64_json}`;
        const alt = `Generated image ${i + 1} for “${req.prompt}”`;
        results.append(h('figure', { class: 'generated' },
          h('img', { src, alt, width: req.size.split('x')[0], height: req.size.split('x')[1] }),
          h('figcaption', {}, img.revised_prompt || req.prompt, img.url ? [' · ', h('a', { href: img.url, download: `image-${i + 1}.png` }, 'Download')] : null)));
      });
      if (out.usage) usage.textContent = `${num(out.usage.total_tokens)} tokens`;
    } catch (err) {
      clear(results);
      if (err.name !== 'AbortError') {
        error.hidden = false;
        error.textContent = err.message;
      }
    } finally {
      go.disabled = false;
      go.textContent = 'Generate';
      ctrl = null;
    }
  });
  return {
    el: h('div', { class: 'image-gen' }, form, usage, results),
    stop: () => ctrl && ctrl.abort(),
  };
}

// embeddingPlayground embeds one text per line and shows each vector's
// length and first values, and the tokens billed.
function embeddingPlayground(svc, api, showRequest) {
  const texts = h('textarea', { rows: '4', name: 'input', required: true, placeholder: 'The food was delicious.\nThe waiter was kind.' });
  const textsF = field({ label: 'Texts', input: texts, hint: 'One text per line; each gets its own vector.' });
  const dims = h('input', { type: 'number', min: '1', step: '1', name: 'dimensions', inputmode: 'numeric' });
  const dimsF = field({ label: 'Dimensions', input: dims, hint: 'Optional: shorter vectors, where the model can shorten them.' });
  const go = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Embed');
  const error = h('p', { class: 'notice notice-error', role: 'alert', hidden: true });
  const results = h('div', { class: 'embeddings', 'aria-live': 'polite', 'aria-label': 'Embeddings' });
  const usage = h('p', { class: 'hint usage-line' });
  let ctrl = null;

  const lines = () => texts.value.split('\n').map((t) => t.trim()).filter(Boolean);
  const body = () => {
    const input = lines();
    const b = { model: svc.access_name, input: input.length ? input : ['The food was delicious.'], encoding_format: 'float' };
    const d = Number(dims.value);
    if (dims.value !== '' && Number.isInteger(d) && d > 0) b.dimensions = d;
    return b;
  };
  const update = () => showRequest('/embeddings', body());
  for (const el of [texts, dims]) el.addEventListener('input', update);
  dims.addEventListener('input', () => {
    const d = Number(dims.value);
    dimsF.setError(dims.value === '' || (Number.isInteger(d) && d >= 1) ? '' : 'Dimensions must be a whole number of at least 1.');
  });
  update();

  const form = h('form', { class: 'embed-form', novalidate: true }, textsF.wrap, dimsF.wrap, error, h('div', { class: 'actions' }, go));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!lines().length) {
      textsF.setError('Type a text first.');
      texts.focus();
      return;
    }
    textsF.setError('');
    if (dimsF.wrap.querySelector('[aria-invalid]')) {
      dims.focus();
      return;
    }
    error.hidden = true;
    go.disabled = true;
    const req = body();
    showRequest('/embeddings', req);
    ctrl = new AbortController();
    try {
      const out = await api.openai('POST', '/embeddings', req, { signal: ctrl.signal });
      clear(results);
      const rows = (out.data || []).map((d) => h('tr', { dataset: { dimensions: String(d.embedding.length) } },
        h('td', {}, req.input[d.index]),
        h('td', { class: 'num' }, num(d.embedding.length)),
        h('td', {}, h('code', {}, `[${d.embedding.slice(0, 4).map((x) => x.toFixed(4)).join(', ')}, …]`))));
      results.append(h('table', { class: 'embedding-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Text'), h('th', { scope: 'col' }, 'Dimensions'), h('th', { scope: 'col' }, 'First values'))),
        h('tbody', {}, rows)));
      if (out.usage) usage.textContent = `${num(out.usage.prompt_tokens)} input tokens`;
    } catch (err) {
      clear(results);
      if (err.name !== 'AbortError') {
        error.hidden = false;
        error.textContent = err.message;
      }
    } finally {
      go.disabled = false;
      ctrl = null;
    }
  });
  return {
    el: h('div', { class: 'embed' }, form, usage, results),
    stop: () => ctrl && ctrl.abort(),
  };
}
