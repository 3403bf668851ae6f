// Drives the Socket.IO gateway with the real socket.io-client, as a frontend would.
// Usage: node e2e.mjs <base url> <access token> <building id> <sensor id>
import { io } from 'socket.io-client';

const [base, token, building, sensor] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`e2e: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 20000).unref();
const options = (auth) => ({ auth, transports: ['websocket'], reconnection: false });

// A bad token is refused with connect_error.
await new Promise((resolve) => {
  const bad = io(`${base}/citypulse`, options({ token: 'not-a-token' }));
  bad.on('connect', () => fail('connected with a bad token'));
  bad.on('connect_error', (err) => {
    if (!/not valid/.test(err.message)) fail(`unexpected connect_error: ${err.message}`);
    bad.close();
    resolve();
  });
});

const socket = io(`${base}/citypulse`, options({ token }));
socket.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
await new Promise((resolve) => socket.on('connect', resolve));

const joined = await socket.emitWithAck('join_building', building);
if (!joined.ok) fail(`join_building failed: ${JSON.stringify(joined)}`);
const stranger = await socket.emitWithAck('join_building', '00000000-0000-4000-8000-000000000000');
if (stranger.ok) fail('joined a building that is not ours');

const update = new Promise((resolve) => socket.on('energy:update', resolve));
const res = await fetch(`${base}/api/v1/citypulse/buildings/${building}/readings`, {
  method: 'POST',
  headers: {
    'content-type': 'application/json',
    authorization: `Bearer ${token}`,
    'x-frontend-source': 'citypulse',
  },
  body: JSON.stringify({ readings: [{ sensor_id: sensor, value: 42.5 }] }),
});
if (res.status !== 201) fail(`POST readings answered ${res.status}`);
const posted = await res.json();
const data = await update;
if (data.building_id !== building) fail(`wrong building: ${JSON.stringify(data)}`);
if (data.position !== posted.position) fail(`wrong position: ${JSON.stringify(data)}`);
const reading = data.readings && data.readings[0];
if (!reading || reading.value !== 42.5 || reading.sensor_id !== sensor || reading.unit !== 'kWh') {
  fail(`wrong payload: ${JSON.stringify(data)}`);
}
console.log(JSON.stringify({ ok: true, received: data }));
socket.close();
process.exit(0);
