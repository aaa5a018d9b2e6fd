// Upload one file to a tus 1.0 endpoint with tus-js-client (an independent client of reelflow's
// gateway, used by the tests). Prints exactly one JSON line on stdout and exits 0 on success:
//   {"ok": true, "url": "...", "bytes": N}
//   {"ok": false, "error": "...", "status": 409, "url": "..." | null, "bytes": N}
//
// node upload.mjs --endpoint URL --token T --file PATH [--meta key=value]...
//                 [--parallel N] [--chunk-size BYTES] [--upload-url URL] [--retries N]
//
// No retries by default: a test wants the first refusal, not a client that hides it.

import fs from 'node:fs'
import process from 'node:process'
import { Upload } from 'tus-js-client'

function parseArgs(argv) {
  const opts = { meta: {}, parallel: 1, chunkSize: Infinity, retries: 0 }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = argv[i + 1]
    if (value === undefined) throw new Error(`${flag} needs a value`)
    i++
    switch (flag) {
      case '--endpoint': opts.endpoint = value; break
      case '--token': opts.token = value; break
      case '--file': opts.file = value; break
      case '--upload-url': opts.uploadUrl = value; break
      case '--parallel': opts.parallel = Number.parseInt(value, 10); break
      case '--chunk-size': opts.chunkSize = Number.parseInt(value, 10); break
      case '--retries': opts.retries = Number.parseInt(value, 10); break
      case '--meta': {
        const eq = value.indexOf('=')
        if (eq <= 0) throw new Error(`--meta wants key=value, got ${value}`)
        opts.meta[value.slice(0, eq)] = value.slice(eq + 1)
        break
      }
      default: throw new Error(`unknown option ${flag}`)
    }
  }
  for (const required of ['endpoint', 'token', 'file']) {
    if (!opts[required]) throw new Error(`--${required} is required`)
  }
  return opts
}

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`)
}

function statusOf(error) {
  const res = error && error.originalResponse
  return res ? res.getStatus() : null
}

async function main() {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    emit({ ok: false, error: String(err.message || err), status: null, url: null, bytes: 0 })
    return 2
  }
  const size = fs.statSync(opts.file).size
  // A ReadStream with a path becomes tus-js-client's file source: it can slice, which
  // parallelUploads needs, and reads one chunk at a time.
  const source = fs.createReadStream(opts.file)
  let sent = 0
  return await new Promise((resolve) => {
    const upload = new Upload(source, {
      endpoint: opts.endpoint,
      uploadUrl: opts.uploadUrl || null,
      headers: { Authorization: `Bearer ${opts.token}` },
      metadata: opts.meta,
      chunkSize: opts.chunkSize,
      parallelUploads: opts.parallel,
      retryDelays: opts.retries > 0 ? Array(opts.retries).fill(200) : null,
      removeFingerprintOnSuccess: true,
      onProgress(bytesSent) {
        sent = Math.max(sent, bytesSent)
      },
      onError(error) {
        emit({
          ok: false,
          error: String(error.message || error).split('\n')[0],
          status: statusOf(error),
          url: upload.url,
          bytes: sent,
        })
        resolve(1)
      },
      onSuccess() {
        emit({ ok: true, url: upload.url, bytes: size })
        resolve(0)
      },
    })
    upload.start()
  })
}

process.exitCode = await main()
