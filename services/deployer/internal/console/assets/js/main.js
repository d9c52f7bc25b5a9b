// The console's entry point: configuration, sign-in, the live service
// store, and hash routes to the views.
//
//   #/services                    the service list
//   #/deploy[?model=<name>]       the deploy form
//   #/models                      the models the caller can deploy
//   #/models/new                  register a model
//   #/models/<name>               a model's details
//   #/services/<id>               a service's details
//   #/services/<id>/playground    try the service
//   #/statements[/<yyyy-mm>]       a month's statements

import { API } from './api.js';
import { clear, h } from './dom.js';
import { ServiceStore } from './store.js';
import { renderSignIn } from './views/signin.js';
import { renderList } from './views/list.js';
import { renderDeploy } from './views/deploy.js';
import { renderDetail } from './views/detail.js';
import { renderPlayground } from './views/playground.js';
import { renderModel, renderModels, renderRegister } from './views/models.js';
import { renderStatements } from './views/statements.js';

const main = document.getElementById('main');
const nav = document.querySelector('.topnav');
const session = document.querySelector('.session');
const liveText = document.querySelector('.live-text');
const live = document.querySelector('.live');

let api;
let store;
let cleanup = () => {};

async function boot() {
  let config = {};
  try {
    const resp = await fetch('/console/config.json', { cache: 'no-cache' });
    if (resp.ok) config = await resp.json();
  } catch {
    // Same-origin defaults.
  }
  api = new API(config);
  api.onUnauthorized = () => signOut('Your API key is no longer valid. Sign in again.');
  store = new ServiceStore(api);
  store.addEventListener('state', showLiveState);
  document.querySelector('[data-action="signout"]').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  if (api.key) startSession();
  route();
}

function startSession() {
  nav.hidden = false;
  session.hidden = false;
  const prefix = document.querySelector('.key-prefix');
  prefix.textContent = `${api.keyPrefix}…`;
  api.me().then((me) => {
    if (me && me.admin) prefix.textContent = `${api.keyPrefix}… (admin)`;
  });
  store.start();
  showLiveState();
}

function signOut(message) {
  api.key = '';
  store.stop();
  nav.hidden = true;
  session.hidden = true;
  sessionStorage.setItem('modelport.signinMessage', message || '');
  if (window.location.hash !== '#/signin') window.location.hash = '#/signin';
  else route();
}

function showLiveState() {
  const labels = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…' };
  liveText.textContent = labels[store.state] || store.state;
  live.dataset.state = store.state;
}

// navigate changes the route; views call it after an action.
function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

function route() {
  cleanup();
  cleanup = () => {};
  clear(main);
  const hash = window.location.hash.replace(/^#/, '') || '/services';
  const ctx = { api, store, navigate, main };
  for (const a of nav.querySelectorAll('a')) a.removeAttribute('aria-current');

  if (!api.key) {
    const message = sessionStorage.getItem('modelport.signinMessage') || '';
    sessionStorage.removeItem('modelport.signinMessage');
    document.title = 'Sign in · Modelport console';
    cleanup = renderSignIn(main, ctx, message, () => {
      startSession();
      navigate(hash === '/signin' ? '#/services' : `#${hash}`);
    }) || cleanup;
    return;
  }
  let m;
  let view;
  if (hash === '/services' || hash === '/signin' || hash === '/') {
    view = () => renderList(main, ctx);
    markNav('services');
  } else if (hash === '/deploy' || hash.startsWith('/deploy?')) {
    const params = new URLSearchParams(hash.slice('/deploy'.length + 1));
    view = () => renderDeploy(main, ctx, { model: params.get('model') || '' });
    markNav('deploy');
  } else if (hash === '/models') {
    view = () => renderModels(main, ctx);
    markNav('models');
  } else if (hash === '/models/new') {
    view = () => renderRegister(main, ctx);
    markNav('models');
  } else if ((m = hash.match(/^\/models\/([^/]+)$/))) {
    view = () => renderModel(main, ctx, decodeURIComponent(m[1]));
    markNav('models');
  } else if ((m = hash.match(/^\/services\/([^/]+)\/playground$/))) {
    view = () => renderPlayground(main, ctx, decodeURIComponent(m[1]));
    markNav('services');
  } else if ((m = hash.match(/^\/services\/([^/]+)$/))) {
    view = () => renderDetail(main, ctx, decodeURIComponent(m[1]));
    markNav('services');
  } else if ((m = hash.match(/^\/statements(?:\/(\d{4}-\d{2}))?$/))) {
    view = () => renderStatements(main, ctx, m[1]);
    markNav('statements');
  } else {
    main.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/services' }, 'Back to the services')));
    return;
  }
  cleanup = view() || cleanup;
  // Move focus to the new page's heading, so keyboard and screen reader
  // users start at the top of what changed.
  const heading = main.querySelector('h1');
  if (heading) {
    heading.setAttribute('tabindex', '-1');
    heading.focus({ preventScroll: true });
  }
  window.scrollTo(0, 0);
}

function markNav(name) {
  const a = nav.querySelector(`[data-nav="${name}"]`);
  if (a) a.setAttribute('aria-current', 'page');
}

boot();
