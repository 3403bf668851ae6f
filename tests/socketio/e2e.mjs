// Drives the Socket.IO gateway with the real socket.io-client, as a frontend would.
// Usage: node e2e.mjs <base url> <access token> <default|websocket|polling>
//   default:   the client's default configuration (HTTP long-polling, then the upgrade);
//   websocket: `transports: ['websocket']`; polling: `transports: ['polling']`.
// It creates a building and a sensor itself and joins the room right away, so a join must
// see the caller's own write.
import { io } from 'socket.io-client';

const [base, token, mode] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`e2e: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();
const options = (auth) =>
  mode === 'default' ? { auth, reconnection: false } : { auth, transports: [mode], reconnection: false };

const api = async (path, body) => {
  const res = await fetch(`${base}/api/v1/citypulse${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${token}`,
      'x-frontend-source': 'citypulse',
    },
    body: JSON.stringify(body),
  });
  if (res.status !== 201) fail(`POST ${path} answered ${res.status}: ${await res.text()}`);
  return res.json();
};

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
// The transport the connection opened with, and whether it upgraded since.
let firstTransport;
let upgradedEvent = false;
const upgradedNow = new Promise((resolve) => {
  socket.io.on('open', () => {
    firstTransport = socket.io.engine.transport.name;
    socket.io.engine.once('upgrade', () => {
      upgradedEvent = true;
      resolve();
    });
  });
});
await new Promise((resolve) => socket.on('connect', resolve));

const { id: building } = await api('/buildings', { name: 'Fresh Hall' });
const joined = await socket.emitWithAck('join_building', building);
if (!joined.ok) fail(`join_building right after creating the building failed: ${JSON.stringify(joined)}`);
const stranger = await socket.emitWithAck('join_building', '00000000-0000-4000-8000-000000000000');
if (stranger.ok) fail('joined a building that is not ours');
const { sensor_id: sensor } = await api(`/buildings/${building}/sensors`, { kind: 'electricity', unit: 'kWh' });

const receive = async (value) => {
  const update = new Promise((resolve) => {
    const on = (data) => {
      if (data.readings?.[0]?.value === value) {
        socket.off('energy:update', on);
        resolve(data);
      }
    };
    socket.on('energy:update', on);
  });
  const posted = await api(`/buildings/${building}/readings`, { readings: [{ sensor_id: sensor, value }] });
  const data = await update;
  if (data.building_id !== building) fail(`wrong building: ${JSON.stringify(data)}`);
  if (data.position !== posted.position) fail(`wrong position: ${JSON.stringify(data)}`);
  const reading = data.readings[0];
  if (reading.sensor_id !== sensor || reading.unit !== 'kWh') fail(`wrong payload: ${JSON.stringify(data)}`);
  return data;
};

const first = await receive(42.5);
let upgraded = false;
if (mode === 'default') {
  // The client upgrades to WebSocket by itself; events keep coming after the switch.
  await upgradedNow;
  upgraded = upgradedEvent;
  await receive(43.5);
}
console.log(JSON.stringify({ ok: true, first_transport: firstTransport, upgraded, transport: socket.io.engine.transport.name, received: first }));
socket.close();
process.exit(0);
