// The official openai package, unchanged, against a running Modelport
// router. cmd/modelport's TestNodeClient starts the platform, deploys the
// four services and runs this file with the settings below; to run it by
// hand against a platform of your own, set them and run `npm test` here.
//
//   MODELPORT_BASE_URL      the OpenAI API, such as http://127.0.0.1:8080/v1
//   MODELPORT_API_KEY       an API key the router accepts
//   MODELPORT_TEXT_MODEL    access name of a text-generation service
//   MODELPORT_VISION_MODEL  access name of an image-understanding service
//   MODELPORT_IMAGE_MODEL   access name of an image-generation service
//   MODELPORT_EMBEDDING_MODEL  access name of an embedding service

import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync } from "node:zlib";
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
const textModel = setting("MODELPORT_TEXT_MODEL");
const visionModel = setting("MODELPORT_VISION_MODEL");
const imageModel = setting("MODELPORT_IMAGE_MODEL");
const embeddingModel = setting("MODELPORT_EMBEDDING_MODEL");

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

// CRC-32 as PNG chunks need it (ISO 3309, reflected, polynomial 0xEDB88320).
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const typeAndData = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const out = Buffer.alloc(8 + data.length + 4);
  out.writeUInt32BE(data.length, 0);
  typeAndData.copy(out, 4);
  out.writeUInt32BE(crc32(typeAndData), 8 + data.length);
  return out;
}

// solidPNG encodes a width×height 8-bit RGB PNG of one colour.
function solidPNG(width, height, [r, g, b]) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  // compression, filter and interlace methods stay 0
  const row = Buffer.alloc(1 + 3 * width); // filter byte 0, then pixels
  for (let x = 0; x < width; x++) row.set([r, g, b], 1 + 3 * x);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", deflateSync(raw)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

// pngSize reads the width and height from a PNG's IHDR chunk.
function pngSize(png) {
  assert.ok(png.length >= 24, `a PNG is at least 24 bytes, got ${png.length}`);
  assert.deepEqual(png.subarray(0, 8), PNG_SIGNATURE, "PNG signature");
  assert.equal(png.toString("latin1", 12, 16), "IHDR", "the first chunk is IHDR");
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}

test("chat completion", async () => {
  const r = await client.chat.completions.create({
    model: textModel,
    messages: [
      { role: "system", content: "You are terse." },
      { role: "user", content: "Say this is a test!" },
    ],
  });
  assert.match(r.id, /^cmp-/);
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, textModel);
  assert.equal(r.choices.length, 1);
  const msg = r.choices[0].message;
  assert.equal(msg.role, "assistant");
  assert.match(msg.content, /simulat/);
  assert.deepEqual(msg.tool_calls, []);
  assert.ok(r.usage.prompt_tokens > 0, `prompt_tokens ${r.usage.prompt_tokens}`);
  assert.ok(r.usage.completion_tokens > 0, `completion_tokens ${r.usage.completion_tokens}`);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

test("streamed chat completion with usage", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: textModel,
      messages: [{ role: "user", content: "Write a haiku about queues." }],
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  assert.ok(chunks.length >= 2, `${chunks.length} chunks`);
  const id = chunks[0].id;
  assert.match(id, /^cmp-/);
  for (const c of chunks) {
    assert.equal(c.id, id, "every chunk has the completion's id");
    assert.equal(c.object, "chat.completion.chunk");
    assert.equal(c.model, textModel);
  }
  const text = chunks.flatMap((c) => c.choices.map((ch) => ch.delta?.content ?? "")).join("");
  assert.ok(text.length > 0, "the streamed content is empty");

  const last = chunks.at(-1);
  assert.equal(last.choices.length, 0, "the last chunk carries only the usage");
  assert.ok(last.usage, "the last chunk has usage");
  assert.ok(last.usage.prompt_tokens > 0 && last.usage.completion_tokens > 0, JSON.stringify(last.usage));
  assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);

  const finished = chunks.filter((c) => c.choices.some((ch) => ch.finish_reason != null));
  assert.equal(finished.length, 1, "exactly one chunk has a finish_reason");
});

test("streamed chat completion without usage", async () => {
  const chunks = await collect(
    await client.chat.completions.create({
      model: textModel,
      messages: [{ role: "user", content: "hello!" }],
      stream: true,
    }),
  );
  assert.ok(chunks.length > 0);
  for (const c of chunks) {
    assert.ok(!("usage" in c), `a chunk has usage although the client did not ask for it: ${JSON.stringify(c)}`);
  }
});

test("models", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  for (const want of [textModel, visionModel, imageModel]) {
    assert.ok(ids.includes(want), `models.list() = ${JSON.stringify(ids)}, missing ${want}`);
  }
  const m = await client.models.retrieve(textModel);
  assert.equal(m.id, textModel);
});

test("image understanding", async () => {
  const png = solidPNG(3, 2, [255, 0, 0]);
  assert.deepEqual(pngSize(png), { width: 3, height: 2 });
  const r = await client.chat.completions.create({
    model: visionModel,
    messages: [
      {
        role: "user",
        content: [
          { type: "text", text: "What is in this image?" },
          { type: "image_url", image_url: { url: `data:image/png;base64,${png.toString("base64")}` } },
        ],
      },
    ],
  });
  assert.equal(r.model, visionModel);
  assert.match(r.choices[0].message.content, /3x2/);
  assert.ok(r.usage.prompt_tokens > 0);
});

test("image generation as base64", async () => {
  const r = await client.images.generate({
    model: imageModel,
    prompt: "a red square",
    size: "64x64",
    response_format: "b64_json",
  });
  assert.equal(r.data.length, 1);
  const png = Buffer.from(r.data[0].b64_json, "base64");
  assert.deepEqual(pngSize(png), { width: 64, height: 64 });
});

test("image generation as a URL", async () => {
  const r = await client.images.generate({
    model: imageModel,
    prompt: "a red square",
    size: "64x64",
    response_format: "url",
  });
  assert.equal(r.data.length, 1);
  const url = r.data[0].url;
  const origin = new URL(baseURL).origin;
  assert.ok(url.startsWith(origin + "/"), `url ${url} is not under ${origin}`);
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "image/png");
  assert.deepEqual(pngSize(Buffer.from(await res.arrayBuffer())), { width: 64, height: 64 });
});

test("legacy completion", async () => {
  const r = await client.completions.create({ model: textModel, prompt: "Say this is a test", max_tokens: 24 });
  assert.match(r.id, /^cmp-/);
  assert.equal(r.object, "text_completion");
  assert.equal(r.model, textModel);
  assert.equal(r.choices.length, 1);
  assert.match(r.choices[0].text, /simulat/);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test("streamed legacy completion with usage", async () => {
  const chunks = await collect(
    await client.completions.create({
      model: textModel,
      prompt: "Say this is a test",
      max_tokens: 24,
      stream: true,
      stream_options: { include_usage: true },
    }),
  );
  const text = chunks.flatMap((c) => c.choices.map((ch) => ch.text)).join("");
  assert.match(text, /simulat/);
  const withUsage = chunks.filter((c) => c.usage);
  assert.equal(withUsage.length, 1, "one chunk carries the usage");
  const u = withUsage[0].usage;
  assert.ok(u.completion_tokens > 0);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  for (const c of chunks) assert.equal(c.model, textModel);
});

function unitNorm(v) {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}

test("embeddings, as the client asks for them by default (base64)", async () => {
  const r = await client.embeddings.create({ model: embeddingModel, input: ["The food was delicious.", "The waiter was kind."] });
  assert.equal(r.object, "list");
  assert.equal(r.model, embeddingModel);
  assert.equal(r.data.length, 2);
  for (const [i, d] of r.data.entries()) {
    assert.equal(d.index, i);
    assert.equal(d.embedding.length, 768, "the catalog model's dimensions");
    assert.ok(Math.abs(unitNorm(d.embedding) - 1) < 1e-4, `norm ${unitNorm(d.embedding)}`);
  }
  assert.ok(r.usage.prompt_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens);

  const floats = await client.embeddings.create({ model: embeddingModel, input: "The food was delicious.", encoding_format: "float" });
  assert.deepEqual(
    floats.data[0].embedding.map((x) => Math.fround(x)),
    r.data[0].embedding.map((x) => Math.fround(x)),
    "float and base64 answers hold the same vector",
  );
});

test("embeddings with dimensions", async () => {
  const r = await client.embeddings.create({ model: embeddingModel, input: "short", dimensions: 64, encoding_format: "float" });
  assert.equal(r.data[0].embedding.length, 64);
  assert.ok(Math.abs(unitNorm(r.data[0].embedding) - 1) < 1e-4);
});

test("responses", async () => {
  const r = await client.responses.create({
    model: textModel,
    instructions: "You are terse.",
    input: "Say this is a test!",
    max_output_tokens: 200,
  });
  assert.match(r.id, /^resp_/);
  assert.equal(r.object, "response");
  assert.equal(r.status, "completed");
  assert.equal(r.model, textModel);
  assert.match(r.output_text, /simulat/, "the client assembles output_text from the output items");
  assert.ok(r.usage.output_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
});

test("responses with a function call", async () => {
  const tools = [{ type: "function", name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } }, strict: false }];
  const input = [{ role: "user", content: "What's the weather in Paris?" }];
  const r = await client.responses.create({ model: textModel, input, tools, tool_choice: "required" });
  assert.equal(r.output.length, 1);
  const call = r.output[0];
  assert.equal(call.type, "function_call");
  assert.equal(call.name, "get_weather");
  assert.ok(call.call_id);
  const next = await client.responses.create({
    model: textModel,
    tools,
    input: [...input, call, { type: "function_call_output", call_id: call.call_id, output: '{"sky":"clear"}' }],
  });
  assert.equal(next.status, "completed");
  assert.match(next.output_text, /simulat/);
});

test("streamed responses", async () => {
  const stream = await client.responses.create({ model: textModel, input: "Stream me a few words.", max_output_tokens: 40, stream: true });
  const types = [];
  let deltas = "";
  let final;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
    if (event.type === "response.completed" || event.type === "response.incomplete") final = event.response;
  }
  assert.equal(types[0], "response.created");
  assert.ok(final, `a final event among ${types}`);
  assert.match(final.id, /^resp_/);
  assert.match(deltas, /simulat/);
  assert.equal(final.output[0].content[0].text, deltas);
  assert.ok(final.usage.output_tokens > 0);

  // The client's own assembly of the events (responses.stream) agrees.
  const assembled = await client.responses.stream({ model: textModel, input: "Stream me a few words.", max_output_tokens: 40 }).finalResponse();
  assert.equal(assembled.output_text, deltas);
  assert.deepEqual(assembled.usage, final.usage);
});

test("errors are the client's typed errors", async (t) => {
  const hi = [{ role: "user", content: "hi" }];

  await t.test("a bad key is an AuthenticationError", async () => {
    const bad = new OpenAI({ baseURL, apiKey: "mp-not-a-real-key-000000000000", maxRetries: 0 });
    await assert.rejects(bad.chat.completions.create({ model: textModel, messages: hi }), (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 401);
      return true;
    });
  });

  await t.test("an unknown model is a NotFoundError", async () => {
    await assert.rejects(client.chat.completions.create({ model: "u-nobody/missing", messages: hi }), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 404);
      return true;
    });
  });

  await t.test("an image for a text model is a BadRequestError on messages", async () => {
    const png = solidPNG(3, 2, [255, 0, 0]);
    const messages = [
      {
        role: "user",
        content: [
          { type: "text", text: "What is in this image?" },
          { type: "image_url", image_url: { url: `data:image/png;base64,${png.toString("base64")}` } },
        ],
      },
    ];
    await assert.rejects(client.chat.completions.create({ model: textModel, messages }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, `${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 400);
      assert.match(err.param ?? "", /messages/);
      return true;
    });
  });

  await t.test("embeddings from a chat model are a BadRequestError on model", async () => {
    await assert.rejects(
      client.embeddings.create({ model: textModel, input: "hi" }),
      (err) => err instanceof OpenAI.BadRequestError && err.status === 400 && err.param === "model",
    );
  });

  await t.test("previous_response_id is a BadRequestError naming it", async () => {
    await assert.rejects(
      client.responses.create({ model: textModel, input: "hi", previous_response_id: "resp_0" }),
      (err) => err instanceof OpenAI.BadRequestError && err.param === "previous_response_id",
    );
  });

  await t.test("responses from an image-generation model are a BadRequestError on model", async () => {
    await assert.rejects(
      client.responses.create({ model: imageModel, input: "hi" }),
      (err) => err instanceof OpenAI.BadRequestError && err.param === "model",
    );
  });

  await t.test("empty messages are a BadRequestError", async () => {
    await assert.rejects(client.chat.completions.create({ model: textModel, messages: [] }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, `${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 400);
      return true;
    });
  });
});
