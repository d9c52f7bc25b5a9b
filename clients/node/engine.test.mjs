// The official openai package, unchanged, against a Modelport service run
// by a real engine (Ollama serving a tiny random-weights model). Greedy
// decoding (temperature 0) makes answers repeatable, so a streamed answer
// must equal the whole one and a conversation must answer the same alone
// and side by side with another. cmd/modelport's TestOllamaEndToEnd starts
// the platform, deploys the service and runs this file with the settings
// below, then checks every answer recorded in MODELPORT_RESULTS against
// the engine's own counts and against billing.
//
//   MODELPORT_BASE_URL    the OpenAI API, such as http://127.0.0.1:8080/v1
//   MODELPORT_API_KEY     an API key the router accepts
//   MODELPORT_TEXT_MODEL  access name of a text-generation service on a real engine
//   MODELPORT_RESULTS     a file to write the answers to, as JSON

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { after, test } from "node:test";
import OpenAI from "openai";

function setting(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: this test runs against a Modelport platform (see the top of this file)`);
  }
  return v;
}

const baseURL = setting("MODELPORT_BASE_URL");
const apiKey = setting("MODELPORT_API_KEY");
const model = setting("MODELPORT_TEXT_MODEL");
const resultsFile = setting("MODELPORT_RESULTS");

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

// Every answer, for the Go side to check against the engine and billing.
const results = [];
after(() => writeFileSync(resultsFile, JSON.stringify(results, null, 2)));

function record(name, request, content, finishReason, usage) {
  results.push({
    name,
    request: { messages: request.messages, max_tokens: request.max_tokens, temperature: request.temperature, stop: request.stop ?? null },
    content,
    finish_reason: finishReason,
    usage: { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens, total_tokens: usage.total_tokens },
  });
}

async function whole(name, request) {
  const r = await client.chat.completions.create({ model, ...request });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, model);
  assert.match(r.id, /^cmp-/);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, "assistant");
  assert.doesNotMatch(r.choices[0].message.content, /simulat/i, "a real engine answers, not the simulator");
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  record(name, request, r.choices[0].message.content, r.choices[0].finish_reason, r.usage);
  return { content: r.choices[0].message.content, finish: r.choices[0].finish_reason, usage: r.usage };
}

async function streamed(name, request) {
  const stream = await client.chat.completions.create({ model, ...request, stream: true, stream_options: { include_usage: true } });
  let content = "";
  let finish = null;
  let usage = null;
  let chunks = 0;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    assert.equal(chunk.model, model);
    if (chunk.usage) {
      assert.equal(chunk.choices.length, 0, "usage comes in a chunk of its own");
      usage = chunk.usage;
    }
    for (const c of chunk.choices) {
      if (c.delta?.content) {
        content += c.delta.content;
        chunks++;
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(ids.size, 1, "one id for the whole stream");
  assert.ok(usage, "include_usage: a final chunk with the usage");
  assert.ok(chunks >= 2, `a stream in pieces, got ${chunks}`);
  record(name, request, content, finish, usage);
  return { content, finish, usage };
}

const hello = { messages: [{ role: "user", content: "Say this is a test!" }], max_tokens: 12, temperature: 0 };

test("a real engine answers, streams, stops and counts", async () => {
  const w = await whole("whole", hello);
  assert.equal(w.finish, "length");
  assert.equal(w.usage.completion_tokens, 12);
  assert.ok(w.content.length > 0);

  const s = await streamed("streamed", hello);
  assert.deepEqual(s, w, "the streamed answer is the whole one");

  assert.ok(w.content.length >= 6, `answer ${JSON.stringify(w.content)} too short to cut`);
  const stop = w.content.slice(3, 5);
  const cut = await whole("stop", { ...hello, stop: [stop] });
  assert.equal(cut.finish, "stop");
  assert.equal(cut.content, w.content.slice(0, w.content.indexOf(stop)));

  const short = await whole("max_tokens", { ...hello, max_tokens: 3 });
  assert.equal(short.finish, "length");
  assert.equal(short.usage.completion_tokens, 3);
  assert.ok(w.content.startsWith(short.content));
});

test("two conversations at once answer as they do alone", async () => {
  const a = { messages: [{ role: "user", content: "Tell me about the sea." }], max_tokens: 10, temperature: 0 };
  const b = {
    messages: [
      { role: "system", content: "You are terse." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "And now?" },
    ],
    max_tokens: 8,
    temperature: 0,
  };
  const aloneA = await whole("alone a", a);
  const aloneB = await streamed("alone b", b);
  const [togetherA, togetherB] = await Promise.all([whole("together a", a), streamed("together b", b)]);
  assert.deepEqual(togetherA, aloneA);
  assert.deepEqual(togetherB, aloneB);
  assert.notEqual(aloneA.usage.prompt_tokens, aloneB.usage.prompt_tokens);
});
