// Holds a Socket.IO connection to `/messaging` (default transports: polling, then the
// upgrade) joined to one channel, prints `ready`, then prints each file announcement
// (`file:uploaded`, `file:updated`, `file:deleted`) and each `message:new` it receives as
// one JSON line `{"event": name, "data": ...}`, until the test ends it.
// Usage: node files.mjs <base url> <access token> <channel id>
import { io } from 'socket.io-client';

const [base, token, channel] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`files: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 120000).unref();

const socket = io(`${base}/messaging`, { auth: { token }, reconnection: false });
socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
await new Promise((resolve) => socket.on('connect', resolve));
const joined = await socket.emitWithAck('channel:join', { channel_id: channel });
if (!joined.ok) fail(`channel:join failed: ${JSON.stringify(joined)}`);
for (const event of ['file:uploaded', 'file:updated', 'file:deleted', 'message:new']) {
  socket.on(event, (data) => console.log(JSON.stringify({ event, data })));
}
socket.on('disconnect', (reason) => fail(`disconnected: ${reason}`));
console.log('ready');
