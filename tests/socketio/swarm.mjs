// Drives the Socket.IO namespaces /quantum and /velocity with the real socket.io-client in
// its default configuration, as the Quantum Swarm and Velocity Swarm frontends would.
// Usage: node swarm.mjs <base url> <token> <another organization's token>
// It starts a 20-dimensional rastrigin run over HTTP, joins the task's room at once (the
// task was just created: the join must see it) and collects `swarm:progress` until
// `swarm:completed`; another organization may not join that room. Then it starts a batch on
// /velocity and collects `swarm:subtask` chunks until `swarm:completed`.
import { io } from 'socket.io-client';

const [base, token, strangerToken] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`swarm: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 60000).unref();

const create = async (frontend, body) => {
  const res = await fetch(`${base}/api/v1/swarm/tasks`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${token}`,
      'x-frontend-source': frontend,
    },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 201) fail(`create answered ${res.status}: ${text}`);
  return JSON.parse(text);
};

const connect = (namespace, t) =>
  new Promise((resolve) => {
    const socket = io(`${base}${namespace}`, { auth: { token: t }, reconnection: false });
    socket.on('connect_error', (err) => fail(`connect_error on ${namespace}: ${err.message}`));
    socket.on('connect', () => resolve(socket));
  });

// Quantum: progress, then the result.
const quantum = await connect('/quantum', token);
const progress = [];
const completed = new Promise((resolve) => {
  quantum.on('swarm:progress', (e) => progress.push({ iteration: e.iteration, best_cost: e.best_cost, task_id: e.task_id }));
  quantum.on('swarm:completed', resolve);
  quantum.on('swarm:failed', (e) => fail(`run failed: ${JSON.stringify(e)}`));
});
const run = await create('quantum', {
  type: 'quantum',
  objective: 'rastrigin',
  config: { dimensions: 20, particles: 50, iterations: 8000, seed: 5 },
});
const joined = await quantum.emitWithAck('join_task', run.id);
if (!joined.ok) fail(`join refused: ${JSON.stringify(joined)}`);
const stranger = await connect('/quantum', strangerToken);
const refused = await stranger.emitWithAck('join_task', run.id);
stranger.close();
const done = await completed;
quantum.close();

// Velocity: subtask chunks, then the end.
const velocity = await connect('/velocity', token);
const chunks = [];
const batchDone = new Promise((resolve) => {
  velocity.on('swarm:subtask', (e) => chunks.push(e.outcomes.length));
  velocity.on('swarm:completed', resolve);
  velocity.on('swarm:failed', (e) => fail(`batch failed: ${JSON.stringify(e)}`));
});
const batch = await create('velocity', {
  type: 'velocity',
  objective: 'socket batch',
  config: {
    subtasks: [{ kind: 'optimize', objective: 'sphere', count: 40, config: { dimensions: 3, particles: 20, iterations: 300 } }],
    concurrency: 2,
  },
});
const batchJoined = await velocity.emitWithAck('join_task', batch.id);
if (!batchJoined.ok) fail(`batch join refused: ${JSON.stringify(batchJoined)}`);
const batchEnd = await batchDone;
velocity.close();

console.log(
  JSON.stringify({
    ok: true,
    task_id: run.id,
    joined,
    refused,
    progress,
    completed: done,
    batch_id: batch.id,
    chunks,
    batch_completed: batchEnd,
  }),
);
