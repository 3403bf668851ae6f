// An imported FluxStudio user on Socket.IO `/messaging` with the real socket.io-client
// (default settings): joins an imported channel and posts in its imported thread.
// Usage: node imported.mjs <base> <token> <channel id> <parent message id>
import { io } from 'socket.io-client';

const [base, token, channel, parent] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`imported: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 20000).unref();

const socket = io(`${base}/messaging`, { auth: { token }, reconnection: false });
socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
await new Promise((resolve) => socket.on('connect', resolve));
const joined = await socket.emitWithAck('channel:join', { channelId: channel });
const echoed = new Promise((resolve) => socket.on('message:new', resolve));
const sent = await socket.emitWithAck('message:send', {
  channel_id: channel,
  text: 'Back on the new backend',
  parent_id: parent,
});
const message = await echoed;
socket.close();
console.log(JSON.stringify({ joined, sent, message }));
