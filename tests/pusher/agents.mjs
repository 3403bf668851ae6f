// An agent execution watched through pusher-js: the dashboard subscribes to the public
// `content-generation` channel and to its organization's private channel, starts an
// execution over HTTP, and sees generation-started, generation-progress, content-generated
// (and agent-status-update on the private channel). The socket may be on another server
// process than the one that runs the execution.
// Usage: node agents.mjs <json config> — {socketBase, authBase, apiBase, key, token, orgId}
import { client, subscribe, connected, fail, deadline } from './lib.mjs';

deadline(40000);
const cfg = JSON.parse(process.argv[2]);

const pusher = client(cfg.socketBase, cfg.key, cfg.token, cfg.authBase);
await connected(pusher);
const pub = await subscribe(pusher, 'content-generation');
const priv = await subscribe(pusher, `private-org-${cfg.orgId}`);

const seen = { public: [], private: [] };
let finish;
const finished = new Promise((resolve) => (finish = resolve));
const record = (list, name) => (data) => {
  list.push({ event: name, data });
  const publicDone = seen.public.some((e) => e.event === 'content-generated');
  const privateDone = seen.private.some(
    (e) => e.event === 'agent-status-update' && e.data.status === 'completed',
  );
  if (publicDone && privateDone && seen.private.some((e) => e.event === 'content-generated')) finish();
};
for (const name of ['generation-started', 'generation-progress', 'content-generated', 'generation-failed']) {
  pub.bind(name, record(seen.public, name));
  priv.bind(name, record(seen.private, name));
}
priv.bind('agent-status-update', record(seen.private, 'agent-status-update'));

const res = await fetch(`${cfg.apiBase}/api/v1/agents/execute`, {
  method: 'POST',
  headers: {
    Authorization: `Bearer ${cfg.token}`,
    'X-Frontend-Source': 'toolbox',
    'Content-Type': 'application/json',
  },
  body: JSON.stringify({
    agent_type: 'content_generator',
    task_type: 'generate_content',
    task_data: { subject: 'Mathematics', grade_level: 5, objectives: ['Learn fractions'] },
  }),
});
if (res.status !== 202) fail(`execute answered ${res.status}: ${await res.text()}`);
const accepted = await res.json();

await finished;
pusher.disconnect();
console.log(JSON.stringify({ ok: true, id: accepted.id, ...seen }));
process.exit(0);
