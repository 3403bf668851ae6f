// Follows an analysis on the Socket.IO namespace /analysis with the real socket.io-client in
// its default configuration, as the analysis frontend would.
// Usage: node analysis.mjs <base url> <token> <another organization's token>
// It starts an analysis over HTTP (the test's AI stand-in stalls before answering, so the
// join comes before the AI step), joins its room, and collects every step until
// `analysis:completed`; then it saves an insight over HTTP and waits for it on the socket.
// Another organization may not join the room.
import { io } from 'socket.io-client';

const [base, token, strangerToken] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`analysis: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 60000).unref();

const post = async (path, body) => {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 202 && res.status !== 201) fail(`${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
};

const connect = (t) =>
  new Promise((resolve) => {
    const socket = io(`${base}/analysis`, { auth: { token: t }, reconnection: false });
    socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
    socket.on('connect', () => resolve(socket));
  });

const socket = await connect(token);
const steps = [];
let resolveUserInsight;
const userInsight = new Promise((resolve) => {
  resolveUserInsight = resolve;
});
const completed = new Promise((resolve) => {
  for (const name of ['analysis:started', 'analysis:progress', 'analysis:results', 'analysis:insight']) {
    socket.on(name, (e) => {
      steps.push({ event: name, analysis_id: e.analysis_id, source: e.source ?? null, done: e.done ?? null });
      if (name === 'analysis:insight' && e.source === 'user') resolveUserInsight(e);
    });
  }
  socket.on('analysis:completed', (e) => {
    steps.push({ event: 'analysis:completed', analysis_id: e.analysis_id });
    resolve(e);
  });
  socket.on('analysis:failed', (e) => fail(`analysis failed: ${JSON.stringify(e)}`));
});
const started = await post('/api/v1/analysis', {
  title: 'Live feedback',
  documents: [
    { name: 'a.txt', text: 'Checkout is slow. Checkout froze.' },
    { name: 'b.txt', text: 'Refunds doubled after checkout errors.' },
  ],
  questions: ['What hurts most?'],
});
const joined = await socket.emitWithAck('join_analysis', started.id);
if (!joined.ok) fail(`join refused: ${JSON.stringify(joined)}`);
const stranger = await connect(strangerToken);
const refused = await stranger.emitWithAck('join_analysis', started.id);
stranger.close();
const done = await completed;
await post(`/api/v1/analysis/${started.id}/insights`, { text: 'Seen live.' });
const mine = await userInsight;
socket.close();

console.log(JSON.stringify({ ok: true, id: started.id, joined, refused, steps, completed: done, user_insight: mine }));
