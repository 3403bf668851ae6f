// Holds a Socket.IO connection (default transports: polling, then the upgrade) in a room,
// prints `ready`, and succeeds once the server disconnects it (rights revoked).
// Usage: node revocation.mjs <base url> <access token> <building id>
import { io } from 'socket.io-client';

const [base, token, building] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`revocation: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();

const socket = io(`${base}/citypulse`, { auth: { token } });
socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
await new Promise((resolve) => socket.on('connect', resolve));
const joined = await socket.emitWithAck('join_building', building);
if (!joined.ok) fail(`join_building failed: ${JSON.stringify(joined)}`);
socket.on('disconnect', (reason) => {
  if (reason !== 'io server disconnect') fail(`disconnected for another reason: ${reason}`);
  console.log(JSON.stringify({ ok: true, reason, transport: socket.io.engine?.transport?.name }));
  process.exit(0);
});
console.log('ready');
