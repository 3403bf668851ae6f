// Helpers of the collaboration end-to-end scripts: real Yjs documents behind real
// y-websocket providers over `ws`, as FluxStudio's frontend opens them.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

export { Y, WebSocket }

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
export { sleep }

// Waits until `check()` holds, at most `ms`; throws `what` otherwise.
export async function until (check, what, ms = 15000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return
    await sleep(20)
  }
  throw new Error(`timed out waiting for ${what}`)
}

// A client: a Y.Doc with a Y.Text `content` behind a WebsocketProvider in its default
// settings, except `disableBc` (several clients share one Node process here; the
// BroadcastChannel would otherwise sync them without the server).
export function client (base, documentId, token, extra = {}) {
  const doc = new Y.Doc()
  const text = doc.getText('content')
  const serverUrl = base.replace(/^http/, 'ws') + '/collab'
  const denied = []
  const closes = []
  const provider = new WebsocketProvider(serverUrl, documentId, doc, {
    params: token ? { token } : {},
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...extra
  })
  provider.on('connection-close', (event) => {
    closes.push({ code: event?.code, reason: event?.reason?.toString() })
  })
  return { doc, text, provider, denied, closes }
}

// y-websocket reports `[2,0,reason]` with console.warn("Permission denied to access <url>.\n<reason>").
const clientsByUrl = []
const warn = console.warn
console.warn = (...args) => {
  const line = args.join(' ')
  if (line.startsWith('Permission denied to access')) {
    for (const c of clientsByUrl) {
      if (line.includes(c.provider.url.split('?')[0])) c.denied.push(line.split('\n').slice(1).join('\n'))
    }
    return
  }
  warn(...args)
}

export function watched (c) {
  clientsByUrl.push(c)
  return c
}

export async function synced (c, what = 'sync') {
  await until(() => c.provider.synced, what)
}

// Types `s` one character at a time at the end of the text, `gap` ms apart.
export async function type (c, s, gap = 5) {
  for (const ch of s) {
    c.text.insert(c.text.length, ch)
    if (gap) await sleep(gap)
  }
}

export async function api (base, token, method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      'x-frontend-source': 'fluxstudio',
      'content-type': 'application/json'
    },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  let json = null
  try { json = JSON.parse(text) } catch {}
  return { status: res.status, json, text }
}

export function done (report) {
  process.stdout.write(JSON.stringify(report) + '\n')
  process.exit(0)
}
