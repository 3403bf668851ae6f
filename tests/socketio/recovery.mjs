// Connection state recovery on `/messaging` with the real socket.io-client (default
// settings): Bob's connection drops, Ann posts twice meanwhile, Bob's client reconnects by
// itself and must report `recovered` and receive both messages. Cy presenting Bob's private
// id gets a connection of her own.
// Usage: node recovery.mjs <base> <Ann's token> <Bob's token> <Cy's token> <channel id>
import { io } from 'socket.io-client';

const [base, annToken, bobToken, cyToken, channel] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`recovery: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();

const post = async (text) => {
  const res = await fetch(`${base}/api/v1/channels/${channel}/messages`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${annToken}`,
      'x-frontend-source': 'fluxstudio',
    },
    body: JSON.stringify({ text }),
  });
  if (res.status !== 201) fail(`post: ${res.status} ${await res.text()}`);
};

const bob = io(`${base}/messaging`, { auth: { token: bobToken } });
const texts = [];
bob.on('message:new', (m) => texts.push(m.text));
await new Promise((resolve) => bob.once('connect', resolve));
const firstPid = bob._pid;
const joined = await bob.emitWithAck('channel:join', channel);
if (!joined.ok) fail(`join: ${JSON.stringify(joined)}`);

await post('before the drop');
while (texts.length < 1) await new Promise((r) => setTimeout(r, 20));

// The connection drops (as a network failure would); the client reconnects by itself.
const dropped = new Promise((resolve) => bob.once('disconnect', resolve));
bob.io.engine.close();
const reason = await dropped;
await post('missed one');
await post('missed two');
await new Promise((resolve) => bob.once('connect', resolve));
const recovered = bob.recovered;
while (texts.length < 3) await new Promise((r) => setTimeout(r, 20));

// Another user cannot take over Bob's connection state.
const cy = io(`${base}/messaging`, {
  auth: { token: cyToken, pid: firstPid, offset: '0' },
  reconnection: false,
});
await new Promise((resolve) => cy.once('connect', resolve));
const cyPid = cy._pid;
cy.close();
bob.close();
console.log(JSON.stringify({ ok: true, reason, recovered, texts, same_pid: bob._pid === firstPid, cy_got_bobs_pid: cyPid === firstPid }));
