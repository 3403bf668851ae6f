// Drives Socket.IO `/messaging` with the real socket.io-client (default settings) across two
// server processes: Bob on one, Ann on the other.
// Usage: node messaging.mjs <base A> <base B> <Ann's token> <Bob's token> <Bob's user id>
import { io } from 'socket.io-client';

const [baseA, baseB, annToken, bobToken, bobId] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`messaging: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 30000).unref();

const res = await fetch(`${baseA}/api/v1/channels`, {
  method: 'POST',
  headers: {
    'content-type': 'application/json',
    authorization: `Bearer ${annToken}`,
    'x-frontend-source': 'fluxstudio',
  },
  body: JSON.stringify({ name: 'launch' }),
});
if (res.status !== 201) fail(`create channel: ${res.status} ${await res.text()}`);
const channel = (await res.json()).id;

const connect = (base, token) =>
  new Promise((resolve) => {
    const s = io(`${base}/messaging`, { auth: { token }, reconnection: false });
    s.on('connect_error', (err) => fail(`connect_error: ${err.message}`));
    s.on('connect', () => resolve(s));
  });
const waitFor = (socket, event, pred = () => true) =>
  new Promise((resolve) => {
    const on = (data) => {
      if (pred(data)) {
        socket.off(event, on);
        resolve(data);
      }
    };
    socket.on(event, on);
  });

const bob = await connect(baseB, bobToken);
const bobJoined = await bob.emitWithAck('channel:join', { channelId: channel });
if (!bobJoined.ok) fail(`bob join: ${JSON.stringify(bobJoined)}`);

const annOnline = waitFor(bob, 'user:online', (d) => d.user_id !== bobId);
const ann = await connect(baseA, annToken);
const online = await annOnline;
const annJoined = await ann.emitWithAck('channel:join', channel);
const presence = await bob.emitWithAck('presence:list', {});

const typing = waitFor(bob, 'typing:start');
await ann.emitWithAck('typing:start', { channel_id: channel });
const typed = await typing;
const throttled = await ann.emitWithAck('typing:start', { channel_id: channel });

const newMessage = waitFor(bob, 'message:new');
const notified = waitFor(bob, 'notification:new');
const sent = await ann.emitWithAck('message:send', {
  channel_id: channel,
  text: `Ship it <@${bobId}>?`,
  client_message_id: 'ann-tab-1',
});
if (!sent.ok) fail(`send: ${JSON.stringify(sent)}`);
const received = await newMessage;
const notification = await notified;
const resent = await ann.emitWithAck('message:send', {
  channel_id: channel,
  text: `Ship it <@${bobId}>?`,
  client_message_id: 'ann-tab-1',
});

const reactionSeen = waitFor(ann, 'reaction:updated');
const reacted = await bob.emitWithAck('message:react', { message_id: sent.message.id, emoji: '🚀' });
const reaction = await reactionSeen;
const foreign = await bob.emitWithAck('message:edit', { message_id: sent.message.id, text: 'mine now' });
const bad = await bob.emitWithAck('message:send', { channel_id: channel, text: '' });
// Malformed arguments are answered too, with the same error shape.
const notAnObject = await bob.emitWithAck('message:send', 42);
const missingFields = await bob.emitWithAck('message:send', {});
const wrongTypes = await bob.emitWithAck('message:send', { channel_id: 7, text: ['x'] });
const noArgument = await bob.emitWithAck('message:send');
const twoArguments = await bob.emitWithAck('message:send', { channel_id: channel }, 'extra');
const unknownEvent = await bob.emitWithAck('message:shout', { channel_id: channel });

const offline = waitFor(bob, 'user:offline', (d) => d.user_id === online.user_id);
// Ann typed less than the typing TTL ago: her leaving ends it at once.
const stoppedTyping = waitFor(bob, 'typing:stop');
ann.close();
const typingStopped = await stoppedTyping;
const gone = await offline;
bob.close();
console.log(
  JSON.stringify({
    ok: true,
    channel,
    bob_joined: bobJoined,
    ann_joined: annJoined,
    online,
    presence,
    typed,
    throttled,
    sent,
    received,
    notification,
    resent,
    reacted,
    reaction,
    foreign,
    bad,
    not_an_object: notAnObject,
    missing_fields: missingFields,
    wrong_types: wrongTypes,
    no_argument: noArgument,
    two_arguments: twoArguments,
    unknown_event: unknownEvent,
    typing_stopped: typingStopped,
    gone,
  }),
);
