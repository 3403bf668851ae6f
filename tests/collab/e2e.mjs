// End-to-end scenarios of the y-websocket gateway with the real `yjs` and `y-websocket`
// clients over `ws`. Usage: node e2e.mjs <mode> '<json config>'; prints one JSON report.
// The config names the server processes (`bases`), the document, and the tokens.
import { Y, WebSocket, client, watched, synced, type, until, api, done, sleep } from './lib.mjs'

const [mode, rawConfig] = process.argv.slice(2)
const cfg = JSON.parse(rawConfig)
const doc = cfg.doc

// The stored text of the document (GET /api/v1/documents/{id}) on process `base`.
async function stored (base = cfg.bases[0], token = cfg.tokens.editor) {
  const res = await api(base, token, 'GET', `/api/v1/documents/${doc}`)
  return res.json?.text?.content ?? ''
}

async function converge () {
  const a = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  const b = watched(client(cfg.bases[1], doc, cfg.tokens.editor2))
  await synced(a, 'a sync')
  await synced(b, 'b sync')
  // Awareness (a cursor's owner) crosses processes without being stored.
  a.provider.awareness.setLocalStateField('user', { name: 'Ann' })
  await until(() => [...b.provider.awareness.getStates().values()].some((s) => s.user?.name === 'Ann'),
    'b sees a\'s awareness')
  await Promise.all([type(a, 'A'.repeat(40), 3), type(b, 'B'.repeat(40), 3)])
  await until(() => a.text.toString() === b.text.toString() && a.text.length === 80, 'convergence')
  const text = a.text.toString()
  await until(async () => (await stored(cfg.bases[1])) === text, 'the stored text')
  const other = await stored(cfg.bases[0])
  a.provider.destroy(); b.provider.destroy()
  done({ ok: true, awareness_across: true, text_a: text, text_b: b.text.toString(), stored_second: text, stored_first: other })
}

async function offline () {
  const a = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  const b = watched(client(cfg.bases[1], doc, cfg.tokens.editor2))
  await synced(a); await synced(b)
  await type(a, 'base.')
  await until(() => b.text.toString() === 'base.', 'b sees the base')
  a.provider.disconnect()
  await type(a, ' offline-A')
  await type(b, ' online-B')
  await sleep(50)
  const whileAway = a.text.toString()
  a.provider.connect()
  await synced(a, 'a resync')
  await until(() => a.text.toString() === b.text.toString() &&
    a.text.toString().includes('offline-A') && a.text.toString().includes('online-B'), 'merge after reconnect')
  const text = a.text.toString()
  await until(async () => (await stored()) === text, 'the stored text')
  a.provider.destroy(); b.provider.destroy()
  done({ ok: true, while_away: whileAway, text, b_text: b.text.toString() })
}

async function viewer () {
  const e = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  const v = watched(client(cfg.bases[0], doc, cfg.tokens.viewer))
  await synced(e); await synced(v)
  await type(v, 'viewer-text')
  await until(() => v.denied.length > 0, 'the read-only notice')
  await type(e, 'editor-text')
  await until(() => v.text.toString().includes('editor-text'), 'the viewer receives edits')
  await until(async () => (await stored()).includes('editor-text'), 'the stored edit')
  const storedText = await stored()
  const access = (await api(cfg.bases[0], cfg.tokens.viewer, 'GET', `/api/v1/documents/${doc}`)).json?.access
  // Anyone else: [2,0,"permission denied"] and a close.
  const o = watched(client(cfg.bases[0], doc, cfg.tokens.outsider))
  await until(() => o.denied.length > 0 && o.closes.length > 0, 'the outsider refused')
  o.provider.destroy()
  const report = {
    ok: true,
    viewer_notice: v.denied[0],
    viewer_access: access,
    editor_text: e.text.toString(),
    stored: storedText,
    viewer_closed: v.closes.length,
    outsider_denied: o.denied[0],
    outsider_close: o.closes[0]
  }
  e.provider.destroy(); v.provider.destroy()
  done(report)
}

async function revoke () {
  // Clients on the second process; the revocations go through the first.
  const base = cfg.bases[1]
  const who = {
    logout: watched(client(base, doc, cfg.tokens.logout)),
    grant: watched(client(base, doc, cfg.tokens.grantee)),
    project: watched(client(base, doc, cfg.tokens.removed))
  }
  for (const c of Object.values(who)) await synced(c)
  const first = cfg.bases[0]
  const out = await api(first, cfg.tokens.logout, 'POST', '/api/v1/auth/logout', {})
  const rg = await api(first, cfg.tokens.editor, 'DELETE', `/api/v1/documents/${doc}/grants/${cfg.grantee_id}`)
  const rp = await api(first, cfg.tokens.editor, 'DELETE', `/api/v1/projects/${cfg.project}/members/${cfg.removed_id}`)
  const report = { ok: true, statuses: [out.status, rg.status, rp.status] }
  for (const [name, c] of Object.entries(who)) {
    await until(() => c.closes.length > 0, `${name} closed`)
    report[name] = { close: c.closes[0], denied: c.denied[0] ?? null }
    c.provider.destroy()
  }
  done(report)
}

async function timetravel () {
  const e = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  await synced(e)
  await type(e, 'hello')
  await until(async () => (await stored()) === 'hello', 'hello stored')
  const first = (await api(cfg.bases[0], cfg.tokens.editor, 'GET', `/api/v1/documents/${doc}`)).json.version
  await type(e, ' world')
  await until(async () => (await stored()) === 'hello world', 'hello world stored')
  const then = await api(cfg.bases[0], cfg.tokens.editor, 'GET', `/api/v1/documents/${doc}?version=${first}`)
  const bytes = await fetch(`${cfg.bases[0]}/api/v1/documents/${doc}?version=${first}`, {
    headers: { authorization: `Bearer ${cfg.tokens.editor}`, 'x-frontend-source': 'fluxstudio', accept: 'application/octet-stream' }
  })
  const rebuilt = new Y.Doc()
  Y.applyUpdate(rebuilt, new Uint8Array(await bytes.arrayBuffer()))
  const versions = await api(cfg.bases[0], cfg.tokens.editor, 'GET', `/api/v1/documents/${doc}/versions`)
  const restored = await api(cfg.bases[0], cfg.tokens.editor, 'POST', `/api/v1/documents/${doc}/restore`, { version: first })
  await until(() => e.text.toString() === 'hello', 'the restore reaches the client')
  const after = await api(cfg.bases[0], cfg.tokens.editor, 'GET', `/api/v1/documents/${doc}/versions`)
  e.provider.destroy()
  done({
    ok: true,
    first_version: first,
    text_then: then.json?.text?.content,
    bytes_type: bytes.headers.get('content-type'),
    rebuilt: rebuilt.getText('content').toString(),
    versions: versions.json.items,
    restore_status: restored.status,
    client_after_restore: e.text.toString(),
    last_version: after.json.items[after.json.items.length - 1],
    stored_after_restore: await stored()
  })
}

// A raw socket: resolves with the close code once the server closes it.
function raw (payload) {
  return new Promise((resolve, reject) => {
    const url = cfg.bases[0].replace(/^http/, 'ws') + `/collab/${doc}?token=${cfg.tokens.editor}`
    const ws = new WebSocket(url)
    const timer = setTimeout(() => reject(new Error('no close')), 15000)
    ws.on('open', () => ws.send(payload))
    ws.on('error', () => {})
    ws.on('close', (code, reason) => { clearTimeout(timer); resolve({ code, reason: reason.toString() }) })
  })
}

async function malformed () {
  const h = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  await synced(h)
  const truncated = await raw(Buffer.from([0, 2, 0xff]))
  const undecodable = await raw(Buffer.from([0, 2, 3, 0xff, 0xff, 0xff]))
  const oversized = await raw(Buffer.alloc(cfg.max_frame + 1, 0))
  await type(h, 'still-alive')
  await until(async () => (await stored()) === 'still-alive', 'the healthy client is stored')
  const report = { ok: true, truncated, undecodable, oversized, healthy_closes: h.closes.length, stored: await stored() }
  h.provider.destroy()
  done(report)
}

async function failedload () {
  const c = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  c.text.insert(0, 'local edits that must not be written over the real document')
  await until(() => c.denied.length > 0 && c.closes.length > 0, 'the refusal')
  c.provider.destroy()
  done({ ok: true, denied: c.denied[0], close: c.closes[0], synced: c.provider.synced })
}

async function kill () {
  // a on the process that is killed, b on the one that lives.
  const a = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  const b = watched(client(cfg.bases[1], doc, cfg.tokens.editor2))
  await synced(a); await synced(b)
  await type(a, 'one ')
  await until(() => b.text.toString() === 'one ', 'b sees the flushed edits')
  // Count the echoes of a's next updates: once all came back, the doomed process holds them
  // (applied, not yet flushed: its COLLAB_FLUSH_MS is long).
  let echoes = 0
  a.provider.ws.addEventListener('message', (m) => {
    const bytes = new Uint8Array(m.data)
    if (bytes[0] === 0 && bytes[1] === 2) echoes++
  })
  await type(a, 'two ', 0)
  await until(() => echoes >= 4, 'the echoes of the unflushed edits')
  process.kill(cfg.pid, 'SIGKILL')
  await until(() => a.closes.length > 0, 'a loses its server')
  const bSawTwo = b.text.toString().includes('two')
  await type(a, 'three ')
  await type(b, 'bee ')
  // The load balancer sends the reconnecting client to a live process.
  a.provider.serverUrl = cfg.bases[1].replace(/^http/, 'ws') + '/collab'
  await synced(a, 'a reconnects to the other process')
  await until(() => a.text.toString() === b.text.toString() &&
    ['one', 'two', 'three', 'bee'].every((w) => a.text.toString().includes(w)), 'convergence after the kill')
  const text = a.text.toString()
  await until(async () => (await stored(cfg.bases[1])) === text, 'the stored text after the kill')
  a.provider.destroy(); b.provider.destroy()
  done({ ok: true, b_saw_unflushed_before_kill: bSawTwo, text, stored: await stored(cfg.bases[1]) })
}

async function toolarge () {
  const e = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  await synced(e)
  e.text.insert(0, 'x'.repeat(1200))
  await until(async () => (await stored()).length === 1200, 'the first paste stored')
  e.text.insert(1200, 'y'.repeat(1200))
  await until(() => e.denied.length > 0, 'the size refusal')
  const storedLen = (await stored()).length
  e.provider.destroy()
  done({ ok: true, denied: e.denied[0], stored_len: storedLen })
}

// Interoperability with another implementation: write, then expect what it appended.
async function write () {
  const e = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  await synced(e)
  await type(e, cfg.text)
  await until(async () => (await stored()) === cfg.text, 'the text stored')
  e.provider.destroy()
  done({ ok: true })
}

async function expect () {
  const e = watched(client(cfg.bases[0], doc, cfg.tokens.editor))
  await synced(e)
  await until(() => e.text.toString() === cfg.text, 'the other implementation\'s text')
  e.provider.destroy()
  done({ ok: true, text: e.text.toString() })
}

const modes = { write, expect, toolarge, converge, offline, viewer, revoke, timetravel, malformed, failedload, kill }
if (!modes[mode]) throw new Error(`unknown mode ${mode}`)
const watchdog = setTimeout(() => { console.error('e2e timed out'); process.exit(2) }, 60000)
watchdog.unref()
modes[mode]().catch((e) => { console.error(e); process.exit(1) })
