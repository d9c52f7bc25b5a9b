// The console's API client: where each API lives, the signed-in key, JSON
// requests with OpenAI-style errors, and server-sent event streams read
// with fetch (EventSource cannot send an Authorization header).

const KEY = 'modelport.apiKey';

// APIError is a failed API call: the HTTP status and the error object's
// message, type and param.
export class APIError extends Error {
  constructor(status, message, type, param) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
  }
}

export class API {
  // config is /console/config.json: router_url and billing_url, empty for
  // this origin.
  constructor(config) {
    this.routerBase = (config.router_url || window.location.origin).replace(/\/$/, '');
    this.billingBase = (config.billing_url || '').replace(/\/$/, '');
    this.onUnauthorized = () => {};
    this.mePromise = null;
  }

  // me resolves to who the key acts for (GET /api/v1/me: owner_id,
  // admin), or null where the control API cannot say.
  me() {
    if (!this.mePromise) {
      this.mePromise = this.control('GET', '/me').catch(() => null);
    }
    return this.mePromise;
  }

  // openAIBase is the base URL clients use, as code samples show it.
  get openAIBase() {
    return `${this.routerBase}/v1`;
  }

  get key() {
    return sessionStorage.getItem(KEY) || '';
  }

  set key(v) {
    this.mePromise = null;
    if (v) sessionStorage.setItem(KEY, v);
    else sessionStorage.removeItem(KEY);
  }

  // keyPrefix is what the console shows of the key: the same prefix the
  // control API lists.
  get keyPrefix() {
    return this.key.slice(0, 9);
  }

  // request sends a JSON request and returns the decoded answer, or throws
  // an APIError. A 401 signs the console out.
  async request(method, url, body, { key = this.key, signal } = {}) {
    const headers = { Authorization: `Bearer ${key}` };
    const init = { method, headers, signal };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new APIError(0, `Cannot reach ${new URL(url, window.location.href).host}: ${err.message}`, 'network_error');
    }
    return this.decode(resp, key);
  }

  async decode(resp, key = this.key) {
    if (resp.status === 204) return null;
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!resp.ok) {
      const e = data && data.error ? data.error : {};
      if (resp.status === 401 && key === this.key) this.onUnauthorized();
      throw new APIError(resp.status, e.message || `${resp.status} ${resp.statusText}`, e.type, e.param);
    }
    return data;
  }

  control(method, path, body, opts) {
    return this.request(method, `/api/v1${path}`, body, opts);
  }

  openai(method, path, body, opts) {
    return this.request(method, `${this.routerBase}/v1${path}`, body, opts);
  }

  usage(params, opts) {
    return this.request('GET', `${this.billingBase}/api/v1/usage?${new URLSearchParams(params)}`, undefined, opts);
  }

  // billing calls billing's API (statements, periods) on its base.
  billing(method, path, body, opts) {
    return this.request(method, `${this.billingBase}/api/v1${path}`, body, opts);
  }

  // download fetches a file from billing's API with the key (a plain link
  // cannot send it) and returns it as a Blob, or throws an APIError.
  async download(path) {
    let resp;
    try {
      resp = await fetch(`${this.billingBase}/api/v1${path}`, { headers: { Authorization: `Bearer ${this.key}` }, cache: 'no-store' });
    } catch (err) {
      throw new APIError(0, `Cannot reach the server: ${err.message}`, 'network_error');
    }
    if (!resp.ok) await this.decode(resp);
    return resp.blob();
  }

  // stream POSTs body and returns the response for readSSE; errors before
  // the stream starts throw an APIError.
  async stream(url, body, signal) {
    let resp;
    try {
      resp = await fetch(url, {
        method: body === undefined ? 'GET' : 'POST',
        headers: {
          Authorization: `Bearer ${this.key}`,
          Accept: 'text/event-stream',
          ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
      });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new APIError(0, `Cannot reach the server: ${err.message}`, 'network_error');
    }
    if (!resp.ok) await this.decode(resp);
    return resp;
  }
}

// readSSE yields the events of a text/event-stream response as
// {event, data}; comment lines (heartbeats) yield {comment}.
export async function* readSSE(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = '';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) yield { event: event || 'message', data: data.join('\n') };
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) {
          yield { comment: line.slice(1).trim() };
          continue;
        }
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (name === 'event') event = v;
        else if (name === 'data') data.push(v);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
