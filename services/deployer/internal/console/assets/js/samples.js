// Code samples for a service, filled with its access name and the real
// base URL: curl, the openai Python library and the openai npm package;
// for services that generate text, with the Chat Completions API and with
// the Responses API.
// The key stays a placeholder: keys belong on servers, not in pages.

const KEY = '<Your API Key here>';

// samples returns [{id, label, code}] for the service's task.
export function samples(svc, base) {
  if (svc.task === 'image-generation') return imageGeneration(svc, base);
  if (svc.task === 'embedding') return embedding(svc, base);
  if (svc.task === 'image-understanding') return [...imageUnderstanding(svc, base), ...responses(svc, base, true)];
  return [...chat(svc, base), ...responses(svc, base, false)];
}

// responses are the Responses API samples; with an image for an
// image-understanding service.
function responses(svc, base, vision) {
  const curlInput = vision
    ? `[{"role": "user", "content": [
      {"type": "input_text", "text": "What is in this image?"},
      {"type": "input_image", "image_url": "data:image/png;base64,<base64 of the image>"}
    ]}]`
    : '"Say this is a test!"';
  const pyInput = vision
    ? `[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{image}"},
    ]}]`
    : '"Say this is a test!"';
  const nodeInput = vision
    ? `[{ role: 'user', content: [
      { type: 'input_text', text: 'What is in this image?' },
      { type: 'input_image', image_url: \`data:image/png;base64,\${image}\` },
    ] }]`
    : "'Say this is a test!'";
  return [
    {
      id: 'curl-responses', label: 'curl · Responses', code: `curl '${base}/responses' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '{
    "model": "${svc.access_name}",
    "instructions": "You are a helpful assistant.",
    "input": ${curlInput}
  }'`,
    },
    {
      id: 'python-responses', label: 'Python · Responses', code: `# The Responses API: openai Python library v1.66.0 and above
${vision ? 'import base64\n' : ''}from openai import OpenAI

client = OpenAI(
    base_url="${base}/",
    api_key="${KEY}"
)
${vision ? `
with open("photo.png", "rb") as f:
    image = base64.b64encode(f.read()).decode()
` : ''}
response = client.responses.create(
    model="${svc.access_name}",
    instructions="You are a helpful assistant.",
    input=${pyInput},
)
print(response.output_text)`,
    },
    {
      id: 'node-responses', label: 'Node.js · Responses', code: `${vision ? "const fs = require('fs');\n" : ''}const OpenAI = require('openai');

const openai = new OpenAI({
  baseURL: '${base}',
  apiKey: '${KEY}',
});

async function respond() {
${vision ? "  const image = fs.readFileSync('photo.png').toString('base64');\n" : ''}  const response = await openai.responses.create({
    model: '${svc.access_name}',
    instructions: 'You are a helpful assistant.',
    input: ${nodeInput},
  });
  console.log(response.output_text);
}

respond();`,
    },
  ];
}

function embedding(svc, base) {
  return [
    {
      id: 'curl', label: 'curl', code: `curl '${base}/embeddings' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '{
    "model": "${svc.access_name}",
    "input": ["The food was delicious.", "The waiter was kind."]
  }'`,
    },
    {
      id: 'python', label: 'Python', code: `# Compatible with OpenAI Python library v1.0.0 and above
from openai import OpenAI

client = OpenAI(
    base_url="${base}/",
    api_key="${KEY}"
)

result = client.embeddings.create(
    model="${svc.access_name}",
    input=["The food was delicious.", "The waiter was kind."],
)
for item in result.data:
    print(len(item.embedding), item.embedding[:4])`,
    },
    {
      id: 'node', label: 'Node.js', code: `const OpenAI = require('openai');

const openai = new OpenAI({
  baseURL: '${base}',
  apiKey: '${KEY}',
});

async function embed() {
  const result = await openai.embeddings.create({
    model: '${svc.access_name}',
    input: ['The food was delicious.', 'The waiter was kind.'],
  });
  for (const item of result.data) console.log(item.embedding.length, item.embedding.slice(0, 4));
}

embed();`,
    },
  ];
}

function chat(svc, base) {
  return [
    {
      id: 'curl', label: 'curl', code: `curl '${base}/chat/completions' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '{
    "model": "${svc.access_name}",
    "messages": [{"role": "user", "content": "Say this is a test!"}],
    "temperature": 0.7
  }'`,
    },
    {
      id: 'python', label: 'Python', code: `# Compatible with OpenAI Python library v1.0.0 and above
from openai import OpenAI

client = OpenAI(
    base_url="${base}/",
    api_key="${KEY}"
)

messages = [
    {"role": "user", "content": "hello!"},
    {"role": "user", "content": "Say this is a test?"}
]

response = client.chat.completions.create(
    model="${svc.access_name}",
    messages=messages
)

content = response.choices[0].message.content
print(content)`,
    },
    {
      id: 'node', label: 'Node.js', code: `const OpenAI = require('openai');

const openai = new OpenAI({
  baseURL: '${base}',
  apiKey: '${KEY}',
});

async function getData() {
  try {
    const chatCompletion = await openai.chat.completions.create({
      model: '${svc.access_name}',
      messages: [
        { role: 'user', content: 'hello!' },
        { role: 'user', content: 'how are you?' },
      ],
    });
    console.log(chatCompletion.choices[0].message.content);
  } catch (error) {
    if (error instanceof OpenAI.APIError) {
      console.error('API Error:', error.status, error.message);
      console.error('Error details:', error.error);
    } else {
      console.error('Unexpected error:', error);
    }
  }
}

getData();`,
    },
  ];
}

function imageUnderstanding(svc, base) {
  return [
    {
      id: 'curl', label: 'curl', code: `curl '${base}/chat/completions' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '{
    "model": "${svc.access_name}",
    "messages": [{"role": "user", "content": [
      {"type": "text", "text": "What is in this image?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,<base64 of the image>"}}
    ]}]
  }'`,
    },
    {
      id: 'python', label: 'Python', code: `# Compatible with OpenAI Python library v1.0.0 and above
import base64
from openai import OpenAI

client = OpenAI(
    base_url="${base}/",
    api_key="${KEY}"
)

with open("photo.png", "rb") as f:
    image = base64.b64encode(f.read()).decode()

response = client.chat.completions.create(
    model="${svc.access_name}",
    messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]}],
)
print(response.choices[0].message.content)`,
    },
    {
      id: 'node', label: 'Node.js', code: `const fs = require('fs');
const OpenAI = require('openai');

const openai = new OpenAI({
  baseURL: '${base}',
  apiKey: '${KEY}',
});

async function describe() {
  const image = fs.readFileSync('photo.png').toString('base64');
  const completion = await openai.chat.completions.create({
    model: '${svc.access_name}',
    messages: [{ role: 'user', content: [
      { type: 'text', text: 'What is in this image?' },
      { type: 'image_url', image_url: { url: \`data:image/png;base64,\${image}\` } },
    ] }],
  });
  console.log(completion.choices[0].message.content);
}

describe();`,
    },
  ];
}

function imageGeneration(svc, base) {
  return [
    {
      id: 'curl', label: 'curl', code: `curl '${base}/images/generations' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '{
    "model": "${svc.access_name}",
    "prompt": "A lighthouse on a cliff at dawn",
    "size": "512x512",
    "n": 1
  }'`,
    },
    {
      id: 'python', label: 'Python', code: `# Compatible with OpenAI Python library v1.0.0 and above
from openai import OpenAI

client = OpenAI(
    base_url="${base}/",
    api_key="${KEY}"
)

result = client.images.generate(
    model="${svc.access_name}",
    prompt="A lighthouse on a cliff at dawn",
    size="512x512",
    n=1,
)
print(result.data[0].url)`,
    },
    {
      id: 'node', label: 'Node.js', code: `const OpenAI = require('openai');

const openai = new OpenAI({
  baseURL: '${base}',
  apiKey: '${KEY}',
});

async function draw() {
  const result = await openai.images.generate({
    model: '${svc.access_name}',
    prompt: 'A lighthouse on a cliff at dawn',
    size: '512x512',
    n: 1,
  });
  console.log(result.data[0].url);
}

draw();`,
    },
  ];
}

// curlFor is the curl command for one request body, as the playground
// shows it beside its answer. Long strings (images) are shortened.
export function curlFor(base, path, body) {
  const json = JSON.stringify(body, (k, v) => (typeof v === 'string' && v.startsWith('data:') && v.length > 80
    ? `${v.slice(0, 48)}…(${Math.round((v.length * 3) / 4 / 1024)} KiB of base64)`
    : v), 2);
  return `curl '${base}${path}' \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer ${KEY}" \\
  -d '${json.replace(/'/g, "'\\''").replace(/\n/g, '\n  ')}'`;
}
