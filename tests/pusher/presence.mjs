// Presence is counted per user: an observer sees a user's first socket join and its last
// leave, not the sockets in between; the two sockets of that user may be on different
// processes. Usage: node presence.mjs <json config> — {baseA, baseB, appId, key, secret,
// observerToken, userToken, userId, orgId}
import { client, server, subscribe, once, connected, fail, deadline } from './lib.mjs';

deadline(40000);
const cfg = JSON.parse(process.argv[2]);
const name = `presence-org-${cfg.orgId}`;
const api = server(cfg.baseA, cfg.appId, cfg.key, cfg.secret);
const added = [];
const removed = [];

const observer = client(cfg.baseA, cfg.key, cfg.observerToken);
const channel = await subscribe(observer, name);
channel.bind('pusher:member_added', (m) => added.push(m.id));
channel.bind('pusher:member_removed', (m) => removed.push(m.id));

// Everything published before a marker has been delivered when the marker arrives.
let markers = 0;
async function marker() {
  const seen = once(channel, 'marker');
  await api.trigger(name, 'marker', { n: ++markers });
  await seen;
}

async function subscriptions() {
  const res = await api.get({ path: `/channels/${name}`, params: { info: 'subscription_count,user_count' } });
  return res.json();
}

/** Waits (bounded) until the channel has `n` subscriptions. */
async function untilSubscriptions(n) {
  for (let i = 0; i < 200; i++) {
    const info = await subscriptions();
    if (info.subscription_count === n) return info;
    await new Promise((r) => setTimeout(r, 50));
  }
  fail(`the channel never had ${n} subscriptions`);
}

const tab1 = client(cfg.baseA, cfg.key, cfg.userToken);
const t1 = await subscribe(tab1, name);
const countTab1 = t1.members.count;
await marker();
const afterFirst = [...added];

const tab2 = client(cfg.baseB, cfg.key, cfg.userToken, cfg.baseA);
const t2 = await subscribe(tab2, name);
const countTab2 = t2.members.count;
await marker();
const afterSecond = [...added];
const both = await subscriptions();
const usersRes = await api.get({ path: `/channels/${name}/users` });
const users = (await usersRes.json()).users.map((u) => u.id).sort();

tab1.disconnect();
await untilSubscriptions(2);
await marker();
const removedAfterFirstTab = [...removed];

tab2.disconnect();
const gone = await new Promise((resolve) => {
  if (removed.length > 0) resolve(removed[0]);
  channel.bind('pusher:member_removed', (m) => resolve(m.id));
});

console.log(JSON.stringify({
  ok: true,
  added_after_first_tab: afterFirst,
  added_after_second_tab: afterSecond,
  tab_counts: [countTab1, countTab2],
  observer_count_with_both: both,
  users,
  removed_after_first_tab_left: removedAfterFirstTab,
  removed_when_last_left: gone,
  observer_members_at_end: channel.members.count,
}));
observer.disconnect();
process.exit(0);
