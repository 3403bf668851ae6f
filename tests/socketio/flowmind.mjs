// Drives the Socket.IO namespace /flowmind with the real socket.io-client in its default
// configuration, as the FlowMind frontend would.
// Usage: node flowmind.mjs <base url> <owner's token> <another member's token>
// It creates a chat session, joins its room, posts a message over HTTP and collects the
// reply's events; then it starts a slow reply and re-joins mid-reply with a second socket,
// which must get the text so far in the join ack and the rest as deltas. The other member
// must not be able to join the owner's session.
import { io } from 'socket.io-client';

const [base, token, otherToken] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`flowmind: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();

const api = async (method, path, body) => {
  const res = await fetch(`${base}/api/v1/ai${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${token}`,
      'x-frontend-source': 'flowmind',
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 300) fail(`${method} ${path} answered ${res.status}: ${text}`);
  return JSON.parse(text);
};

const connect = (t) =>
  new Promise((resolve) => {
    const socket = io(`${base}/flowmind`, { auth: { token: t }, reconnection: false });
    socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
    socket.on('connect', () => resolve(socket));
  });

const socket = await connect(token);
const { id: session } = await api('POST', '/sessions', { title: 'Socket chat' });
const joined = await socket.emitWithAck('join_session', session);
if (!joined.ok) fail(`join refused: ${JSON.stringify(joined)}`);

// Another member of the organization may not join the owner's session.
const other = await connect(otherToken);
const refused = await other.emitWithAck('join_session', session);
other.close();

// One whole reply, event by event.
const seen = [];
let text = '';
const done = new Promise((resolve) => {
  socket.on('message:created', (e) => seen.push(['message:created', e.content]));
  socket.on('ai:reply:started', (e) => seen.push(['ai:reply:started', e.reply_id]));
  socket.on('ai:reply:delta', (e) => {
    if (e.offset !== [...text].length) fail(`delta at ${e.offset} after ${[...text].length} characters`);
    text += e.text;
    seen.push(['ai:reply:delta', e.offset]);
  });
  socket.on('ai:reply:completed', (e) => {
    seen.push(['ai:reply:completed', e.finish_reason]);
    resolve(e);
  });
  socket.on('ai:reply:failed', (e) => fail(`reply failed: ${JSON.stringify(e)}`));
});
const posted = await api('POST', `/sessions/${session}/messages`, { content: 'Hello there' });
const completed = await done;
const firstReply = [...seen];
socket.removeAllListeners('ai:reply:delta');
socket.removeAllListeners('ai:reply:completed');

// A slow second reply (the test scripted the provider): a fresh socket joins mid-reply.
const second = await api('POST', `/sessions/${session}/messages`, { content: 'Go on' });
await new Promise((resolve) => socket.on('ai:reply:delta', () => resolve()));
const late = await connect(token);
let lateText = null;
let lateChars = 0;
const lateDone = new Promise((resolve) => {
  late.on('ai:reply:delta', (e) => {
    if (lateText === null) return;
    if (e.offset + [...e.text].length <= lateChars) return; // already in the join ack
    const skip = Math.max(0, lateChars - e.offset);
    lateText += [...e.text].slice(skip).join('');
    lateChars = [...lateText].length;
  });
  late.on('ai:reply:completed', resolve);
});
const rejoined = await late.emitWithAck('join_session', session);
if (!rejoined.ok) fail(`re-join refused: ${JSON.stringify(rejoined)}`);
lateText = rejoined.streaming ? rejoined.streaming.text : '';
lateChars = rejoined.streaming ? rejoined.streaming.chars : 0;
const ackChars = lateChars;
await lateDone;

socket.close();
late.close();
console.log(
  JSON.stringify({
    ok: true,
    joined,
    refused,
    seen: firstReply,
    text,
    completed,
    reply_id: posted.reply_id,
    second_reply_id: second.reply_id,
    streaming_in_ack: rejoined.streaming,
    ack_chars: ackChars,
    late_text: lateText,
  }),
);
