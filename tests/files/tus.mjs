// Drives the server's tus 1.0.0 endpoint with the real tus-js-client (default settings, with
// the bearer token and X-Frontend-Source added as headers, as FluxStudio's frontend would).
//
//   node tus.mjs simple <base> <token> <size> [project]
//     uploads <size> bytes (byte i is i % 251) and prints {"fileId", "url"}.
//   node tus.mjs resume <baseA> <baseB> <token> <size> [project]
//     starts the upload on A in 4 MiB chunks and prints "HALF" once over half is sent; the
//     next request waits 3 s, in which the test kills A.
//     When tus-js-client gives up on A, the upload is resumed on B from its URL; prints
//     {"fileId", "url", "resumedAt"}.
import * as tus from 'tus-js-client';

const [mode, ...rest] = process.argv.slice(2);

function content(size) {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buf[i] = i % 251;
  return buf;
}

function options(token, project, extra) {
  const metadata = { filename: 'resumable.bin', filetype: 'application/octet-stream' };
  if (project) metadata.project = project;
  return {
    headers: { Authorization: `Bearer ${token}`, 'X-Frontend-Source': 'fluxstudio' },
    metadata,
    ...extra,
  };
}

function fileIdOf(payload) {
  return payload && payload.lastResponse ? payload.lastResponse.getHeader('X-File-Id') : null;
}

function finish(result) {
  console.log(JSON.stringify(result));
  process.exit(0);
}

function fail(what, err) {
  console.error(`${what}: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
}

const timer = setTimeout(() => fail('timeout', 'no result in 120 s'), 120_000);
timer.unref();

if (mode === 'simple') {
  const [base, token, size, project] = rest;
  const data = content(Number(size));
  const upload = new tus.Upload(data, options(token, project, {
    endpoint: `${base}/api/v1/uploads`,
    onError: (err) => fail('upload', err),
    onSuccess: (payload) => finish({ fileId: fileIdOf(payload), url: upload.url }),
  }));
  upload.start();
} else if (mode === 'resume') {
  const [baseA, baseB, token, size, project] = rest;
  const data = content(Number(size));
  let signalled = false;
  let held = false;
  const first = new tus.Upload(data, options(token, project, {
    endpoint: `${baseA}/api/v1/uploads`,
    // In chunks, so that A has stored part of the upload when it dies; the first request
    // after "HALF" waits until the test has killed A (a single request of the whole file
    // could otherwise finish on loopback before the kill lands).
    chunkSize: 4 * 1024 * 1024,
    onBeforeRequest: () => {
      if (signalled && !held) {
        held = true;
        return new Promise((resolve) => setTimeout(resolve, 3000));
      }
      return undefined;
    },
    onProgress: (sent, total) => {
      if (!signalled && sent > total / 2) {
        signalled = true;
        console.log('HALF');
      }
    },
    onSuccess: () => fail('first upload', 'finished although its server was killed'),
    onError: async () => {
      // A is gone: continue the same upload on B, from its URL.
      const path = new URL(first.url).pathname;
      const url = `${baseB}${path}`;
      const head = await fetch(url, {
        method: 'HEAD',
        headers: { ...options(token, project, {}).headers, 'Tus-Resumable': '1.0.0' },
      });
      const resumedAt = Number(head.headers.get('upload-offset'));
      const second = new tus.Upload(data, options(token, project, {
        uploadUrl: url,
        onError: (err) => fail('second upload', err),
        onSuccess: (payload) => finish({ fileId: fileIdOf(payload), url: second.url, resumedAt }),
      }));
      second.start();
    },
  }));
  first.start();
} else {
  fail('usage', `unknown mode ${mode}`);
}
