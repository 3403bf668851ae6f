// Helpers shared by the end-to-end scripts: a pusher-js client with only the host options
// changed, the pusher server library pointed at this server, and bounded waits.
import PusherJs from 'pusher-js';
import Pusher from 'pusher';

/** Fails the script with a message (exit code 1). */
export const fail = (msg) => {
  console.error(`pusher e2e: ${msg}`);
  process.exit(1);
};

/** Ends the script with `fail` if it has not finished within `ms`. */
export const deadline = (ms) => setTimeout(() => fail(`timed out after ${ms} ms`), ms).unref();

/** A pusher-js client of `base` (http://127.0.0.1:PORT) whose auth endpoint is `authBase`. */
export function client(base, key, token, authBase = base) {
  const url = new URL(base);
  return new PusherJs(key, {
    cluster: 'eu',
    wsHost: url.hostname,
    wsPort: Number(url.port),
    forceTLS: false,
    enabledTransports: ['ws'],
    channelAuthorization: {
      endpoint: `${authBase}/pusher/auth`,
      transport: 'ajax',
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    },
  });
}

/** The pusher server library, calling the HTTP API of `base`. */
export function server(base, appId, key, secret) {
  const url = new URL(base);
  return new Pusher({ appId, key, secret, host: url.hostname, port: url.port, useTLS: false });
}

/** Resolves with the (first argument of the) first emission of `event` on `emitter`. */
export const once = (emitter, event) =>
  new Promise((resolve) => {
    const handler = (data) => {
      emitter.unbind(event, handler);
      resolve(data);
    };
    emitter.bind(event, handler);
  });

/** Subscribes and waits for success; a subscription error fails the script. */
export async function subscribe(pusher, name) {
  const channel = pusher.subscribe(name);
  const result = await new Promise((resolve) => {
    channel.bind('pusher:subscription_succeeded', (data) => resolve({ ok: true, data }));
    channel.bind('pusher:subscription_error', (error) => resolve({ ok: false, error }));
  });
  if (!result.ok) fail(`subscribing to ${name} failed: ${JSON.stringify(result.error)}`);
  return channel;
}

/** Waits until the connection is `connected`. */
export async function connected(pusher) {
  if (pusher.connection.state === 'connected') return;
  await new Promise((resolve) =>
    pusher.connection.bind('state_change', ({ current }) => {
      if (current === 'connected') resolve();
      if (current === 'failed' || current === 'unavailable') fail(`connection ${current}`);
    }),
  );
}
