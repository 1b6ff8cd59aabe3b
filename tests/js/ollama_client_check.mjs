#!/usr/bin/env node
// Drive sovmeshd's Ollama-compatible front door with the real ollama npm
// client (ollama-js), as an application would, and report what came back.
//
//   node ollama_client_check.mjs BASE_URL MODEL [TAG] [--steps=a,b,...]
//
// Steps: chat (stream: false), chat_stream, generate, list, embed, and
// missing_model (chat with a model nobody has: must fail as Ollama does,
// with a ResponseError). --steps runs only the named ones, in this order.
// Prints one JSON line per step ({"step", "ok", ...what was received}) and
// exits 1 if any step failed, 2 on bad arguments. TAG (default "sovmesh")
// goes into every prompt so the caller can tell the answers are to these
// requests. Node 18 or later; nothing beyond what Node 18 has.

import { Ollama } from 'ollama';

const STEP_TIMEOUT_MS = 60000;
const STEP_NAMES = ['chat', 'chat_stream', 'generate', 'list', 'embed', 'missing_model'];

function usage(msg) {
	process.stderr.write(`ollama_client_check: ${msg}\n` +
		'usage: node ollama_client_check.mjs BASE_URL MODEL [TAG] [--steps=a,b,...]\n');
	process.exit(2);
}

let only = STEP_NAMES;
const positional = [];
for (const arg of process.argv.slice(2)) {
	if (arg.startsWith('--steps=')) {
		only = arg.slice(8).split(',').filter((x) => x);
		const bad = only.filter((x) => !STEP_NAMES.includes(x));
		if (bad.length || !only.length)
			usage(`--steps wants some of ${STEP_NAMES.join(',')}; got ${JSON.stringify(arg.slice(8))}`);
	} else if (arg.startsWith('--')) {
		usage(`unknown option ${arg}`);
	} else {
		positional.push(arg);
	}
}
if (positional.length < 2 || positional.length > 3)
	usage('BASE_URL and MODEL are required');
const [host, model, tag = 'sovmesh'] = positional;
if (!/^https?:\/\/[^/]+/.test(host))
	usage(`BASE_URL must be http://HOST:PORT, got ${JSON.stringify(host)}`);

// The library hides response headers; a fetch wrapper notes where each
// answer came from (X-Sovmesh-Source / X-Sovmesh-Peer).
let last = null;
async function recordingFetch(url, opts) {
	const res = await fetch(url, opts);
	last = {
		status: res.status,
		source: res.headers.get('x-sovmesh-source'),
		peer: res.headers.get('x-sovmesh-peer'),
	};
	return res;
}

const ollama = new Ollama({ host, fetch: recordingFetch });

function check(cond, what) {
	if (!cond)
		throw new Error(`unexpected answer: ${what}`);
}

function withTimeout(promise, ms) {
	let timer;
	const t = new Promise((_, reject) => {
		timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
	});
	return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

const steps = [
	['chat', async () => {
		const sent = `Why is the sky blue, ${tag}?`;
		const r = await ollama.chat({
			model, stream: false,
			messages: [{ role: 'user', content: sent }],
		});
		check(r && r.message && typeof r.message.content === 'string', 'no message.content');
		check(r.done === true, `done is ${r.done}`);
		return {
			sent, model: r.model, role: r.message.role, content: r.message.content,
			done: r.done, done_reason: r.done_reason, eval_count: r.eval_count,
		};
	}],
	['chat_stream', async () => {
		const sent = `Tell me a story about the ${tag} mesh`;
		const stream = await ollama.chat({
			model, stream: true,
			messages: [
				{ role: 'system', content: 'You are terse.' },
				{ role: 'user', content: 'an earlier question' },
				{ role: 'assistant', content: 'an earlier answer' },
				{ role: 'user', content: sent },
			],
		});
		let content = '', chunks = 0, final = null;
		for await (const part of stream) {
			chunks++;
			check(part.message && typeof part.message.content === 'string',
			      `chunk ${chunks} has no message.content`);
			content += part.message.content;
			if (part.done)
				final = part;
		}
		check(final !== null, 'stream ended without "done": true');
		return {
			sent, chunks, content, model: final.model, done: final.done,
			done_reason: final.done_reason, eval_count: final.eval_count,
		};
	}],
	['generate', async () => {
		const sent = `Say hello to ${tag}`;
		const r = await ollama.generate({ model, prompt: sent, stream: false });
		check(typeof r.response === 'string', 'no response');
		check(r.done === true, `done is ${r.done}`);
		return {
			sent, model: r.model, response: r.response, done: r.done,
			done_reason: r.done_reason,
		};
	}],
	['list', async () => {
		const r = await ollama.list();
		check(Array.isArray(r.models), 'no models array');
		return { models: r.models.map((m) => m.name) };
	}],
	['embed', async () => {
		const sent = [`first ${tag} text`, `second ${tag} text`];
		const r = await ollama.embed({ model, input: sent });
		check(Array.isArray(r.embeddings), 'no embeddings array');
		for (const v of r.embeddings)
			check(Array.isArray(v) && v.every((x) => typeof x === 'number'),
			      'an embedding is not an array of numbers');
		return {
			sent, model: r.model, count: r.embeddings.length,
			dims: r.embeddings.map((v) => v.length),
			norms: r.embeddings.map((v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0))),
			// Where the first few non-zero components are, and their values.
			sample: r.embeddings.map((v) => v.flatMap((x, i) => (x !== 0 ? [[i, x]] : []))
				.slice(0, 4)),
		};
	}],
	['missing_model', async () => {
		// Errors must reach the client as Ollama's do: a ResponseError
		// carrying the HTTP status and the server's "error" text.
		const missing = `no-such-model-${tag}`;
		try {
			await ollama.chat({ model: missing, stream: false,
			                    messages: [{ role: 'user', content: 'hi' }] });
		} catch (e) {
			check(e && e.name === 'ResponseError', `threw ${e && e.name}: ${e && e.message}`);
			return { model: missing, status_code: e.status_code, error: e.message };
		}
		throw new Error(`chat with the missing model ${missing} did not fail`);
	}],
];

let failed = 0;
for (const [step, run] of steps) {
	if (!only.includes(step))
		continue;
	last = null;
	let line;
	try {
		const got = await withTimeout(run(), STEP_TIMEOUT_MS);
		line = { step, ok: true, ...got, http: last };
	} catch (e) {
		failed++;
		// fetch() says only "fetch failed"; the reason is in e.cause.
		let error = String(e && e.message || e);
		if (e && e.cause)
			error += `: ${e.cause.message || e.cause}`;
		line = { step, ok: false, error, http: last };
		if (e && e.status_code !== undefined)
			line.status_code = e.status_code;
	}
	process.stdout.write(JSON.stringify(line) + '\n');
}
// A timed-out request may still hold a socket open: exit, don't wait.
process.exit(failed ? 1 : 0);
