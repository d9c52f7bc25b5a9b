// ServiceStore keeps the signed-in caller's services current from one
// server-sent event stream, GET /api/v1/services/watch: a snapshot, then
// each change. Views subscribe to it instead of polling. When the stream
// drops it reconnects with a growing delay and starts from a fresh
// snapshot.

import { readSSE } from './api.js';

export class ServiceStore extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.services = new Map();
    this.gone = new Set(); // IDs of services deleted while the console watched
    this.loaded = false; // a snapshot has arrived
    this.state = 'connecting'; // connecting, live, reconnecting
    this.controller = null;
  }

  // list returns the services, oldest first, as the control API lists them.
  list() {
    return [...this.services.values()].sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id.localeCompare(b.id)));
  }

  get(id) {
    return this.services.get(id);
  }

  // put records a service the console changed itself, so views show the
  // answer at once. The stream may have reported a later state already
  // (an instance ready before the scale request's answer arrived): the
  // newer record wins, and a service the stream removed stays removed.
  put(s) {
    const have = this.services.get(s.id);
    if (this.gone.has(s.id) || (have && newer(have.updated_at, s.updated_at) >= 0)) return;
    if (s.status === 'deleted') this.remove(s.id);
    else this.services.set(s.id, s);
    this.emit();
  }

  remove(id) {
    this.services.delete(id);
    this.gone.add(id);
  }

  start() {
    this.stop();
    this.controller = new AbortController();
    this.run(this.controller.signal);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  emit() {
    this.dispatchEvent(new Event('change'));
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new Event('state'));
  }

  async run(signal) {
    let delay = 500;
    while (!signal.aborted) {
      const started = Date.now();
      let failed = true;
      try {
        const resp = await this.api.stream('/api/v1/services/watch', undefined, signal);
        for await (const ev of readSSE(resp)) {
          if (signal.aborted) return;
          if (ev.comment !== undefined) continue;
          const data = JSON.parse(ev.data);
          if (ev.event === 'snapshot') {
            this.services = new Map(data.map((s) => [s.id, s]));
            this.loaded = true;
            delay = 500;
            this.setState('live');
          } else if (ev.event === 'service') {
            if (data.status === 'deleted') this.remove(data.id);
            else this.services.set(data.id, data);
          } else if (ev.event === 'removed') {
            this.remove(data.id);
          } else {
            continue;
          }
          this.emit();
        }
        // The server ends a stream after a while, so the key is checked
        // again: reconnect at once, unless it ended suspiciously soon.
        failed = Date.now() - started < 5000;
      } catch (err) {
        if (signal.aborted || err.name === 'AbortError') return;
        if (err.status === 401) return; // signed out
      }
      if (signal.aborted) return;
      if (failed) {
        this.setState('reconnecting');
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }
  }
}

// newer compares two RFC 3339 UTC timestamps with their nanoseconds, which
// Date would round to milliseconds: > 0 when a is later than b.
export function newer(a, b) {
  const norm = (t) => {
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(t || '');
    return m ? m[1] + (m[2] || '').padEnd(9, '0') : '';
  };
  const x = norm(a);
  const y = norm(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
