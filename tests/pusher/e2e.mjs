// pusher-js subscribes to a public, a private and a presence channel, and receives events
// published with the pusher server library through the HTTP API. The socket may be on another
// server process than the one that signs subscriptions and the one that publishes.
// Usage: node e2e.mjs <json config> — {socketBase, authBase, apiBase, appId, key, secret,
// token, orgId, userId, otherToken}
import { client, server, subscribe, once, connected, fail, deadline } from './lib.mjs';

deadline(40000);
const cfg = JSON.parse(process.argv[2]);
const report = {};

const pusher = client(cfg.socketBase, cfg.key, cfg.token, cfg.authBase);
await connected(pusher);
report.socket_id = pusher.connection.socket_id;

const pub = await subscribe(pusher, 'content-generation');
const priv = await subscribe(pusher, `private-org-${cfg.orgId}`);
const presence = await subscribe(pusher, `presence-org-${cfg.orgId}`);
report.presence_me = presence.members.me?.id;
report.presence_count = presence.members.count;
report.presence_name = presence.members.me?.info?.name ?? null;

const api = server(cfg.apiBase, cfg.appId, cfg.key, cfg.secret);

// One event per channel, each awaited by its binding.
const started = once(pub, 'generation-started');
await api.trigger('content-generation', 'generation-started', { task_id: 't1', progress: 0 });
report.public = await started;

const status = once(priv, 'agent-status-update');
await api.trigger(`private-org-${cfg.orgId}`, 'agent-status-update', { agent: 'content_generator', status: 'busy' });
report.private = await status;

const hello = once(presence, 'hello');
await api.trigger(`presence-org-${cfg.orgId}`, 'hello', { text: 'hi' });
report.presence = await hello;

// A batch, and an event whose data is too large for one NOTIFY (stored, then fetched).
const progress = once(pub, 'generation-progress');
const generated = once(pub, 'content-generated');
await api.triggerBatch([
  { channel: 'content-generation', name: 'generation-progress', data: { task_id: 't1', progress: 50 } },
  { channel: 'content-generation', name: 'content-generated', data: { task_id: 't1', content: 'x'.repeat(9000) } },
]);
report.progress = await progress;
report.generated_length = (await generated).content.length;

// The publisher's own socket is left out when it names itself.
let skippedSeen = false;
pub.bind('generation-progress', () => (skippedSeen = true));
const failed = once(pub, 'generation-failed');
await api.trigger('content-generation', 'generation-progress', { skipped: true }, { socket_id: pusher.connection.socket_id });
await api.trigger('content-generation', 'generation-failed', { task_id: 't1' });
report.failed = await failed;
report.excluded_socket_skipped = !skippedSeen;

// The channels API sees the subscriptions.
const res = await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } });
report.channels = (await res.json()).channels;

// A wrong secret is refused with 401.
const forged = server(cfg.apiBase, cfg.appId, cfg.key, 'not-the-secret');
try {
  await forged.trigger('content-generation', 'generation-started', {});
  report.bad_signature_status = 200;
} catch (e) {
  report.bad_signature_status = e.status;
}

// Channels of another organization or another user are refused by the auth endpoint.
const other = pusher.subscribe('private-org-00000000-0000-4000-8000-000000000000');
const refused = await new Promise((resolve) => {
  other.bind('pusher:subscription_succeeded', () => resolve({ subscribed: true }));
  other.bind('pusher:subscription_error', (e) => resolve(e));
});
report.other_org = refused;

// Client events: another member's socket on the same private channel receives them.
const peer = client(cfg.socketBase, cfg.key, cfg.otherToken, cfg.authBase);
const peerPriv = await subscribe(peer, `private-org-${cfg.orgId}`);
const typing = once(peerPriv, 'client-typing');
priv.trigger('client-typing', { who: cfg.userId });
report.client_event = await typing;
// ... and not on public channels: the server answers with pusher:error.
const refusedClient = once(pusher.connection, 'error');
pub.trigger('client-nope', {});
report.public_client_event = (await refusedClient).data;

pusher.disconnect();
peer.disconnect();
console.log(JSON.stringify({ ok: true, ...report }));
process.exit(0);
