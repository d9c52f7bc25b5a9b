// The web console in a real browser: Debian's Chromium driven by
// playwright-core, against a running Modelport platform.
// cmd/modelport's TestConsole starts the all-in-one platform and runs this
// file with the settings below; to run it by hand against a platform of
// your own, set them and run `npm test` here.
//
//   MODELPORT_CONSOLE_URL   the platform's address, such as http://127.0.0.1:8080
//   MODELPORT_API_KEY       an API key the control API accepts (the admin key)
//   MODELPORT_SCREENSHOTS   where screenshots go (default: build/screenshots, which git
//                           ignores; `make screenshots` copies them to docs/screenshots)
//   MODELPORT_CHROMIUM      the browser (default: /usr/bin/chromium)
//   MODELPORT_MODEL_FILE    the absolute path of a GGUF file on the platform's model store
//
// The tests run in order and share one browser page: sign in, deploy one
// service of each task through the form, then try each one, scale the
// text service and change its routing, delete them all, and read the
// month's statements.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

function setting(name, fallback) {
  const v = process.env[name] || fallback;
  if (!v) {
    throw new Error(`${name} is not set: this test runs against a Modelport platform (see the top of this file)`);
  }
  return v;
}

const base = new URL(setting('MODELPORT_CONSOLE_URL'));
const apiKey = setting('MODELPORT_API_KEY');
const here = path.dirname(fileURLToPath(import.meta.url));
const shots = setting('MODELPORT_SCREENSHOTS', path.join(here, '..', '..', 'build', 'screenshots'));
const fixture = path.join(here, 'fixtures', 'blue-48x32.png');
const modelFile = setting('MODELPORT_MODEL_FILE');
const WIDE = { width: 1280, height: 860 };
const NARROW = { width: 390, height: 844 };
const WAIT = 45_000; // the longest wait for the platform: instances starting, deletion draining

const services = {
  text: { name: 'chat-demo', task: 'text-generation', model: 'qwen2.5-7b-instruct' },
  image: { name: 'painter', task: 'image-generation', model: 'stable-diffusion-xl' },
  vision: { name: 'vision-demo', task: 'image-understanding', model: 'qwen2-vl-7b-instruct' },
};

let browser;
let page;
const external = []; // requests that left the platform's origin
const problems = []; // page errors and console errors (CSP violations among them)
const apiCalls = []; // control API requests, to check the list does not poll

before(async () => {
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: setting('MODELPORT_CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: WIDE, reducedMotion: 'reduce', colorScheme: 'light' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base.origin });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol === 'data:' || u.protocol === 'blob:') return;
    if (u.origin !== base.origin) external.push(r.url());
    if (u.pathname.startsWith('/api/v1/services')) apiCalls.push(`${r.method()} ${u.pathname}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    // A 4xx answer the console shows the user is expected; the browser
    // logs it all the same.
    if (msg.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(msg.text())) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
});

after(async () => {
  if (browser) await browser.close();
});

async function shot(name, { size = WIDE, fullPage = false } = {}) {
  const prev = page.viewportSize();
  if (prev.width !== size.width) await page.setViewportSize(size);
  if (size.width === NARROW.width) await assertNoSideways();
  assert.doesNotMatch(await page.locator('main').innerText(), /\b(null|undefined|NaN)\b|\[object \w+\]/, `the ${name} page shows a value the code failed to format`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(shots, `${name}-${size.width}.png`), fullPage, animations: 'disabled', caret: 'hide' });
  if (prev.width !== size.width) await page.setViewportSize(prev);
}

// assertFormatted checks that the page shows no value the code failed to
// format.
async function assertFormatted(name) {
  assert.doesNotMatch(await page.locator('main').innerText(), /\b(null|undefined|NaN|\[object Object\])\b/, `the ${name} page shows a value the code failed to format`);
}

// shotless checks a page in another window size as shot does, without a
// screenshot: nothing sticks out sideways and every value is formatted.
async function shotless(name, size) {
  const prev = page.viewportSize();
  await page.setViewportSize(size);
  if (size.width === NARROW.width) await assertNoSideways();
  await assertFormatted(name);
  await page.setViewportSize(prev);
}

// assertNoSideways checks that nothing sticks out of a narrow window.
async function assertNoSideways() {
  const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
  assert.ok(scroll <= width, `the page is ${scroll}px wide in a ${width}px window: it scrolls sideways`);
}

function row(name) {
  return page.locator(`table.services tbody tr[data-name="${name}"]`);
}

async function openList() {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Services' }).click();
  await page.getByRole('heading', { level: 1, name: 'Model services' }).waitFor();
}

async function openDetail(name) {
  await openList();
  await row(name).getByRole('link', { name }).click();
  await page.locator('dd[data-field="name"]', { hasText: name }).waitFor();
}

test('signing in: a wrong key is refused, the admin key opens the service list', async () => {
  await page.goto(base.href);
  assert.equal(new URL(page.url()).pathname, '/console/', 'the platform\'s root sends the browser to the console');
  await page.getByRole('heading', { name: 'Sign in to Modelport' }).waitFor();
  await shot('signin');

  await page.getByLabel('API key').fill('mp-not-a-real-key-000000000000');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('This key is not valid').waitFor();

  await page.getByLabel('API key').fill(apiKey);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Model services' }).waitFor();
  await page.getByRole('status').filter({ hasText: 'Live' }).waitFor();
  await assertText(page.locator('.key-prefix'), new RegExp(`^${apiKey.slice(0, 9)}… \\(admin\\)$`));
});

test('deploy form: validates as you type, then deploys a service of each task', async () => {
  await page.getByRole('link', { name: 'Deploy a model' }).first().click();
  await page.getByRole('heading', { level: 1, name: 'Deploy a model' }).waitFor();
  await deployFormLoaded();
  const nameError = page.locator('.field', { has: page.getByLabel('Service name') }).locator('.field-error');

  // The catalog filtered by task: image generation offers only image models.
  await page.getByLabel('Task').selectOption('image-generation');
  const imageModels = await page.getByLabel('Base model').locator('option').allTextContents();
  assert.ok(imageModels.length >= 1 && imageModels.every((t) => /diffusion/i.test(t)), `image-generation models: ${imageModels}`);
  await page.getByLabel('Task').selectOption('text-generation');
  const textModels = await page.getByLabel('Base model').locator('option').allTextContents();
  assert.ok(textModels.some((t) => t.includes(services.text.model)) && !textModels.some((t) => /diffusion/i.test(t)), `text-generation models: ${textModels}`);

  await page.getByLabel('Service name').pressSequentially('Chat Demo');
  await assertText(nameError, /lowercase/);
  assert.equal(await page.getByLabel('Service name').getAttribute('aria-invalid'), 'true');
  await page.getByLabel('Service name').fill('-chat');
  await page.getByLabel('Service name').dispatchEvent('input');
  await assertText(nameError, /starting and ending with a letter or digit/);
  await page.getByLabel('Instances').fill('65');
  await page.getByLabel('Instances').dispatchEvent('input');
  await assertText(page.locator('.field', { has: page.getByLabel('Instances') }).locator('.field-error'), /1 to 64/);
  await page.getByLabel('Instances').fill('1');
  await page.getByLabel('Instances').dispatchEvent('input');
  await page.getByLabel('Service name').fill(services.text.name);
  await page.getByLabel('Service name').dispatchEvent('input');
  await assertText(nameError, /^$/);
  await page.getByLabel('Base model').selectOption(services.text.model);
  await page.getByText('Per token').click();
  await shot('deploy');
  await shot('deploy', { size: NARROW, fullPage: true });
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.locator('dd[data-field="name"]', { hasText: services.text.name }).waitFor();

  for (const key of ['image', 'vision']) {
    const s = services[key];
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Deploy' }).click();
    await page.getByLabel('Task').selectOption(s.task);
    await page.getByLabel('Base model').selectOption(s.model);
    await page.getByLabel('Service name').fill(services.text.name);
    await assertText(nameError, /already have a service named chat-demo/);
    await page.getByLabel('Service name').fill(s.name);
    await assertText(nameError, /^$/);
    await assertText(page.locator('.access-preview'), new RegExp(`^Access name: u-[0-9a-f]+/${s.name}$`));
    await page.getByRole('button', { name: 'Deploy', exact: true }).click();
    await page.locator('dd[data-field="name"]', { hasText: s.name }).waitFor();
  }

  // The list follows the services to running over the live stream,
  // without reloading or polling.
  await openList();
  const listCalls = apiCalls.length;
  for (const s of Object.values(services)) {
    await row(s.name).and(page.locator('[data-status="running"]')).waitFor();
  }
  const polled = apiCalls.slice(listCalls).filter((c) => c === 'GET /api/v1/services');
  assert.deepEqual(polled, [], 'the list must follow the watch stream, not poll');
  assert.equal(await row(services.text.name).locator('td.instances').textContent(), '1 / 1');
  assert.equal(await row(services.vision.name).locator('td', { hasText: 'Image understanding' }).count(), 1);
  await shot('list', { fullPage: true });
  await shot('list', { size: NARROW, fullPage: true });
});

test('models: the register form validates as you type, shows what the file says, deploys, and deletes once unused', async () => {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Models' }).click();
  await page.getByRole('heading', { level: 1, name: 'Models' }).waitFor();
  const catalogRow = page.locator('table.models tbody tr[data-name="qwen2.5-7b-instruct"]');
  await catalogRow.waitFor();
  assert.equal((await catalogRow.locator('td[data-label="Owner"]').textContent()).trim(), 'Catalog');
  await assertFormatted('models');

  await page.getByRole('link', { name: 'Register a model' }).click();
  await page.getByRole('heading', { level: 1, name: 'Register a model' }).waitFor();
  const fieldError = (label) => page.locator('.field', { has: page.getByLabel(label, { exact: true }) }).locator('.field-error');
  const name = page.getByLabel('Name', { exact: true });
  const source = page.getByLabel('Source', { exact: true });
  await name.pressSequentially('Tiny');
  await assertText(fieldError('Name'), /lowercase/);
  await name.fill('qwen2.5-7b-instruct');
  await name.dispatchEvent('input');
  await assertText(fieldError('Name'), /lowercase|catalog has/);
  await name.fill('tiny');
  await name.dispatchEvent('input');
  await assertText(fieldError('Name'), /^$/);
  for (const [value, want] of [
    [modelFile, new RegExp(`Add the scheme: file://${modelFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)],
    ['ftp://example.com/m.gguf', /Unknown scheme ftp/],
    ['file://models/m.gguf', /must be absolute/],
    ['hf://org/repo@v2', /by name only/],
  ]) {
    await source.fill(value);
    await source.dispatchEvent('input');
    await assertText(fieldError('Source'), want);
    assert.equal(await source.getAttribute('aria-invalid'), 'true');
  }
  await source.fill(`file://${modelFile}`);
  await source.dispatchEvent('input');
  await assertText(fieldError('Source'), /^$/);
  await assertText(page.locator('.engine-guess'), /From the source: ollama/);
  // A task the engine cannot serve.
  await page.getByLabel('Engine').selectOption('llama.cpp');
  await page.getByLabel('Image understanding').check();
  await assertText(page.locator('.checks .field-error'), /llama\.cpp cannot serve image understanding/);
  await page.getByLabel('Image understanding').uncheck();
  await page.getByLabel('Engine').selectOption('');
  await assertText(page.locator('.checks .field-error'), /^$/);

  // The server has the last word: a file outside the model store.
  await source.fill('file:///etc/hostname');
  await source.dispatchEvent('input');
  await assertText(fieldError('Source'), /^$/);
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await assertText(fieldError('Source'), /outside the model store/);
  await shotless('register', NARROW);

  await source.fill(`file://${modelFile}`);
  await source.dispatchEvent('input');
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: /^tiny/ }).waitFor();
  const fact = (f) => page.locator(`dd[data-field="${f}"]`);
  await assertText(fact('owner'), /^Yours$/);
  await assertText(fact('engine'), /^ollama$/);
  await assertText(fact('architecture'), /^llama$/);
  await assertText(fact('quantization'), /^F16$/);
  await assertText(fact('parameters'), /^164,160$/);
  await assertText(fact('trained_context'), /^2,048 tokens$/);
  await assertText(fact('estimate'), /MiB on CPUs, .* MiB on GPUs, at 2,048 tokens/);
  await assertFormatted('model');
  await shotless('model', NARROW);

  // Deploy it: the deploy form offers it among the caller's models.
  await page.getByRole('link', { name: 'Deploy this model' }).click();
  await page.getByRole('heading', { level: 1, name: 'Deploy a model' }).waitFor();
  await deployFormLoaded();
  assert.equal(await page.getByLabel('Base model').inputValue(), 'tiny');
  assert.deepEqual(await page.getByLabel('Base model').locator('optgroup[label="Your models"] option').allTextContents(), ['Tiny Llama (tiny)']);
  await page.getByLabel('Service name').fill('tiny-chat');
  await page.getByLabel('Service name').dispatchEvent('input');
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.locator('dd[data-field="base_model"]', { hasText: 'tiny' }).waitFor();
  await openList();
  await row('tiny-chat').and(page.locator('[data-status="running"]')).waitFor();

  // Deleting it is refused while the service uses it, then done.
  const deleteModel = async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Models' }).click();
    await page.locator('table.models tbody tr[data-name="tiny"]').getByRole('link', { name: 'tiny' }).click();
    await page.getByRole('heading', { level: 1, name: /^tiny/ }).waitFor();
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete the model tiny?' });
    await dialog.getByRole('button', { name: 'Delete' }).click();
    return dialog;
  };
  const refused = await deleteModel();
  await assertText(refused.locator('.form-error'), /in use by service u-[0-9a-f]+\/tiny-chat/);
  await refused.getByRole('button', { name: 'Cancel' }).click();
  await deleteThroughDialog('tiny-chat');
  const dialog = await deleteModel();
  await dialog.waitFor({ state: 'detached' });
  await page.getByRole('heading', { level: 1, name: 'Models' }).waitFor();
  await page.locator('table.models tbody tr').first().waitFor();
  assert.equal(await page.locator('table.models tbody tr[data-name="tiny"]').count(), 0, 'the deleted model is listed');
});

test('text service: the playground streams an answer, scaling to 2 shows 2 ready, deleting needs the name', async () => {
  const s = services.text;
  await openDetail(s.name);
  await page.getByRole('link', { name: 'Open playground' }).click();
  await page.getByRole('heading', { level: 1, name: /Playground: chat-demo/ }).waitFor();
  await page.locator('.notice-sim').waitFor(); // the simulator says so

  await page.getByLabel('System prompt').fill('You are a terse assistant.');
  await page.getByLabel('Temperature').evaluate((el) => {
    el.value = '0.3';
    el.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await page.getByLabel('Max tokens').fill('48');
  await page.getByLabel('Max tokens').dispatchEvent('input');
  await page.getByLabel('Message').fill('Say this is a test!');
  const request = await page.locator('.pg-request pre').textContent();
  for (const want of [`"model": "${(await accessName(s.name))}"`, '"temperature": 0.3', '"max_tokens": 48', '"role": "system"', '"stream": true', `${base.origin}/v1/chat/completions`]) {
    assert.ok(request.includes(want), `the equivalent request lacks ${want}:\n${request}`);
  }

  // Watch the answer grow: a streamed answer is seen at several lengths.
  await page.evaluate(() => {
    window.lengthsSeen = new Set();
    const log = document.querySelector('.chat-log');
    new MutationObserver(() => {
      const a = log.querySelector('.bubble-assistant .bubble-text');
      if (a && a.textContent) window.lengthsSeen.add(a.textContent.length);
    }).observe(log, { subtree: true, childList: true, characterData: true });
  });
  await page.getByRole('button', { name: 'Send' }).click();
  const answer = page.locator('.bubble-assistant[data-done="true"]');
  await answer.waitFor();
  const text = await answer.locator('.bubble-text').textContent();
  assert.match(text, /simulated/i, 'the simulator says its answer is simulated');
  const seen = await page.evaluate(() => window.lengthsSeen.size);
  assert.ok(seen >= 3, `the answer appeared at ${seen} lengths: it was not streamed`);
  assert.ok(Number(await answer.getAttribute('data-chunks')) > 1);
  await assertText(page.locator('.usage-line'), /prompt \+ \d+ completion = \d+ tokens/);
  await shot('playground-chat');
  await shot('playground-chat', { size: NARROW, fullPage: true });

  // Scale to 2 from the detail page, with the keyboard.
  await openDetail(s.name);
  const scale = page.getByRole('button', { name: 'Scale', exact: true });
  await scale.focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: `Scale ${s.name}` });
  await dialog.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.name), 'instances', 'the dialog focuses its input');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached' });
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Scale', 'closing returns focus to the button');
  await scale.click();
  await dialog.getByLabel('Instances').fill('2');
  await dialog.getByRole('button', { name: 'Scale' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.locator('dd[data-field="instances"][data-ready="2"][data-desired="2"]').waitFor();
  await page.locator('dd[data-field="status"] [data-status="running"]').waitFor();
  await assertText(page.locator('dd[data-field="instances"]'), /^2 ready of 2$/);

  // Routing: a text service is routed by prefix affinity; change it to
  // least outstanding with the keyboard, and the control API says so.
  const routing = page.locator('dd[data-field="routing_policy"]');
  assert.equal(await routing.getAttribute('data-policy'), 'prefix-affinity');
  await assertText(routing, /^Prefix affinity: /);
  await page.getByRole('button', { name: 'Change routing' }).click();
  const routingDialog = page.getByRole('dialog', { name: `Routing for ${s.name}` });
  await routingDialog.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.value), 'prefix-affinity', 'the dialog focuses the current policy');
  await page.keyboard.press('ArrowUp'); // radios move with the arrows: up from prefix-affinity is least-outstanding
  assert.equal(await routingDialog.getByLabel(/Least outstanding/).isChecked(), true);
  await routingDialog.getByRole('button', { name: 'Save routing' }).click();
  await routingDialog.waitFor({ state: 'detached' });
  await page.locator('dd[data-field="routing_policy"][data-policy="least-outstanding"]').waitFor();
  await assertText(routing, /^Least outstanding: /);
  const stored = await (await fetch(new URL('/api/v1/services', base), { headers: { Authorization: `Bearer ${apiKey}` } })).json();
  assert.equal(stored.find((x) => x.name === s.name).routing_policy, 'least-outstanding');

  // Every field of the basic information, and code samples with the
  // real access name and base URL.
  for (const f of ['name', 'access_name', 'id', 'base_model', 'instances', 'status', 'billing_method', 'routing_policy']) {
    assert.ok((await page.locator(`dd[data-field="${f}"]`).textContent()).trim() !== '', `${f} is empty`);
  }
  const samples = await page.locator('[role="tabpanel"]:not([hidden]) pre').textContent();
  assert.ok(samples.includes(`${base.origin}/v1/chat/completions`) && samples.includes(await accessName(s.name)), samples);
  await page.getByRole('tab', { name: 'curl' }).focus();
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.getByRole('tab', { name: 'Python' }).getAttribute('aria-selected'), 'true');
  assert.match(await page.locator('[role="tabpanel"]:not([hidden]) pre').textContent(), /from openai import OpenAI/);

  // The API key section: the session's prefix, and a new key shown once.
  await page.getByRole('button', { name: 'View my API key' }).click();
  await page.locator('.keys-panel table').waitFor();
  await page.getByRole('button', { name: 'Create a new key' }).click();
  const secret = page.getByRole('dialog').locator('code.secret');
  await secret.waitFor();
  assert.match(await secret.textContent(), /^mp-/);
  await page.getByRole('button', { name: 'Copy key' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Done' }).click();
  await page.locator('.keys-panel td', { hasText: `only ${s.name}` }).first().waitFor();

  // Usage from billing, and the events that led here.
  await waitForUsage();
  await page.locator('.events li[data-type="deploy.service.scaled.v1"]').first().waitFor();
  await page.getByRole('button', { name: 'View my API key' }).click(); // fold the keys away for the picture
  await shot('detail', { fullPage: true });
  await shot('detail', { size: NARROW, fullPage: true });

  await deleteThroughDialog(s.name);
});

test('image generation: the playground shows the generated image', async () => {
  const s = services.image;
  await openDetail(s.name);
  await page.getByRole('link', { name: 'Open playground' }).click();
  await page.getByLabel('Prompt', { exact: true }).fill('A lighthouse on a cliff at dawn');
  await page.getByLabel('Size').selectOption('256x256');
  await page.getByRole('button', { name: 'Generate' }).click();
  const img = page.locator('.image-results figure.generated img');
  await img.waitFor();
  await page.waitForFunction(() => {
    const el = document.querySelector('.image-results img');
    return el && el.complete && el.naturalWidth > 0;
  });
  const size = await img.evaluate((el) => [el.naturalWidth, el.naturalHeight]);
  assert.deepEqual(size, [256, 256], 'the image has the size asked for');
  const request = await page.locator('.pg-request pre').textContent();
  assert.ok(request.includes('/v1/images/generations') && request.includes('"size": "256x256"'), request);
  await shot('image-generation', { fullPage: true });
  await deleteThroughDialog(s.name);
});

test('image understanding: an uploaded image is described by size and colour', async () => {
  const s = services.vision;
  await openDetail(s.name);
  await page.getByRole('link', { name: 'Open playground' }).click();
  await page.getByLabel('Image', { exact: true }).setInputFiles(fixture);
  await page.locator('.image-preview', { hasText: '48×32' }).waitFor();
  await page.getByLabel('Message').fill('What is in this image?');
  const request = await page.locator('.pg-request pre').textContent();
  assert.ok(request.includes('"image_url"') && request.includes('data:image/png;base64,'), request);
  await page.getByRole('button', { name: 'Send' }).click();
  const answer = page.locator('.bubble-assistant[data-done="true"]');
  await answer.waitFor();
  const text = await answer.locator('.bubble-text').textContent();
  assert.match(text, /48x32 png/, `the answer names the image's size: ${text}`);
  assert.match(text, /#2288dd/, `the answer names the image's colour: ${text}`);
  await shot('image-understanding', { fullPage: true });
  await deleteThroughDialog(s.name);
});

test('statements: this month per service with its lines and a CSV, and an admin closes last month', async () => {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Statements' }).click();
  await page.getByRole('heading', { level: 1, name: 'Statements' }).waitFor();
  const now = new Date();
  const month = now.toISOString().slice(0, 7);
  assert.equal(await page.getByLabel('Month').inputValue(), month, 'the statements open on this month');
  await page.locator('.period-status[data-status="open"]').waitFor();

  // The text service was used in the playground: it has a statement, even
  // deleted, with its token usage as a line.
  const chat = page.locator(`table.statements tbody tr[data-name="${services.text.name}"]`);
  await chat.waitFor();
  assert.match(await chat.locator('[data-field="total"]').textContent(), /^\$\d/);
  await chat.locator('summary').click();
  const usageLine = chat.locator('.line-items tr[data-kind="usage"]').first();
  await usageLine.waitFor();
  assert.match(await usageLine.textContent(), /\d+ requests?, \d+ tokens/);

  // The CSV has the same services, one row per line.
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download CSV' }).click()]);
  assert.equal(download.suggestedFilename(), `statements-${month}.csv`);
  const csv = readFileSync(await download.path(), 'utf8');
  const [header, ...rows] = csv.trim().split('\n');
  assert.match(header, /^period,status,service_id,owner_id,service_name,billing_method,kind,for_period,part,/);
  assert.ok(rows.some((r) => r.includes(`,${services.text.name},`)), `the CSV has no line of ${services.text.name}:\n${csv}`);
  await shot('statements', { fullPage: true });
  await shot('statements', { size: NARROW, fullPage: true });

  // Last month has ended: the admin closes it, and its statements are final.
  const last = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)).toISOString().slice(0, 7);
  await page.getByLabel('Month').selectOption(last);
  const close = page.getByRole('button', { name: `Close ${last}` });
  await close.waitFor();
  await close.click();
  const dialog = page.getByRole('dialog', { name: `Close ${last}` });
  await dialog.getByRole('button', { name: 'Close the period' }).click();
  await dialog.waitFor({ state: 'detached' });
  await page.locator('.period-status[data-status="closed"]').waitFor();
  assert.equal(await close.isVisible(), false, 'a closed month offers no close');
});

test('the console made no request to another host and logged no error', async () => {
  assert.deepEqual(external, [], 'requests to other hosts');
  assert.deepEqual(problems, [], 'errors in the page');
  const watches = apiCalls.filter((c) => c === 'GET /api/v1/services/watch').length;
  assert.ok(watches >= 1 && watches <= 2, `the watch stream was opened ${watches} times: once, or twice after a reconnect`);
});

// deleteThroughDialog deletes a service from the list's action menu: a
// wrong name is refused and changes nothing, the right one deletes, and
// the row leaves the list.
async function deleteThroughDialog(name) {
  await openList();
  const menu = row(name).getByRole('button', { name: `Actions for ${name}` });
  await menu.focus();
  await page.keyboard.press('Enter');
  const items = row(name).getByRole('menuitem');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Details', 'the menu focuses its first item');
  await page.keyboard.press('ArrowUp');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Delete');
  await page.keyboard.press('Escape');
  assert.equal(await items.first().isVisible(), false);
  await menu.click();
  await row(name).getByRole('menuitem', { name: 'Delete' }).click();
  const dialog = page.getByRole('dialog', { name: `Delete ${name}?` });
  await dialog.waitFor();
  const confirm = dialog.getByLabel(/Type the service name/);
  await confirm.fill(`${name}-typo`);
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await assertText(dialog.locator('.form-error'), /confirm_name must be the service's name/);
  assert.notEqual(await row(name).getAttribute('data-status'), 'deleting', 'a wrong name changes nothing');
  await confirm.fill(name);
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await dialog.waitFor({ state: 'detached' });
  await row(name).waitFor({ state: 'detached' });
}

async function accessName(name) {
  const resp = await fetch(new URL('/api/v1/services', base), { headers: { Authorization: `Bearer ${apiKey}` } });
  const list = await resp.json();
  const s = list.find((x) => x.name === name);
  assert.ok(s, `no service ${name}`);
  return s.access_name;
}

// waitForUsage refreshes the usage section until billing has counted the
// playground's request.
async function waitForUsage() {
  const total = page.locator('.stat[data-stat="total_tokens"] dd');
  const deadline = Date.now() + WAIT;
  for (;;) {
    if (await total.count() && Number((await total.textContent()).replace(/,/g, '')) > 0) break;
    assert.ok(Date.now() < deadline, `usage did not show the playground's tokens: ${await page.locator('.usage').textContent()}`);
    await page.waitForTimeout(500);
    await page.locator('.usage').getByRole('button', { name: 'Refresh' }).click();
  }
  if (await page.locator('.usage svg.chart').count()) {
    assert.ok(await page.locator('.usage svg.chart rect.bar').count() > 0, 'the usage chart has bars');
  }
}

// deployFormLoaded waits until the deploy form has the models it offers:
// it asks for the catalog and the caller after it appears, then fills the
// model list and shows the chosen model's facts.
async function deployFormLoaded() {
  await page.locator('.model-info dl').waitFor();
}

async function assertText(locator, re) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const t = (await locator.textContent()) || '';
    if (re.test(t)) return;
    assert.ok(Date.now() < deadline, `"${t}" does not match ${re}`);
    await page.waitForTimeout(50);
  }
}
