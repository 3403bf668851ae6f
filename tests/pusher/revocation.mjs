// Holds a pusher-js connection subscribed to a public and a private channel, prints `ready`,
// and once the server cuts the private subscription (logout, removal from the organization)
// checks that the private channel gets nothing more while the public one still works.
// Usage: node revocation.mjs <json config> — {socketBase, authBase, apiBase, appId, key,
// secret, token, orgId}
import { client, server, subscribe, once, connected, fail, deadline } from './lib.mjs';

deadline(40000);
const cfg = JSON.parse(process.argv[2]);
const pusher = client(cfg.socketBase, cfg.key, cfg.token, cfg.authBase);
await connected(pusher);
const pub = await subscribe(pusher, 'content-generation');
const priv = await subscribe(pusher, `private-org-${cfg.orgId}`);

const cut = once(priv, 'pusher:subscription_error');
const connectionError = once(pusher.connection, 'error');
console.log('ready');
const error = await cut;
const unauthorized = (await connectionError).data;

const api = server(cfg.apiBase, cfg.appId, cfg.key, cfg.secret);
let leaked = false;
priv.bind('agent-status-update', () => (leaked = true));
const marker = once(pub, 'marker');
await api.trigger(`private-org-${cfg.orgId}`, 'agent-status-update', { after: 'revocation' });
await api.trigger('content-generation', 'marker', {});
await marker;
console.log(JSON.stringify({
  ok: true,
  subscription_error: error,
  connection_error: unauthorized,
  private_event_after_cut: leaked,
  state: pusher.connection.state,
}));
process.exit(0);
