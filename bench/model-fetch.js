#!/usr/bin/env node
// model fetch speed against its targets, measured in one run on one machine:
//   hf: fetch from the Hugging Face cache on the model disk's filesystem: hard links, target ≤ 0.2 s for
//       4 x 1 GiB (the link phase; the blob hashes, which start with it and outlast it, are shown apart)
//   hf: fetch from a cache on another filesystem (HF_HUB_CACHE in /dev/shm), copy and check with the blob
//       hashes overlapped  vs  rsync -a --copy-links of the same snapshot, target ≤ 1.2 x rsync
// Usage: node bench/model-fetch.js [MIB_PER_SHARD]   (default 1024: 4 x 1 GiB; the machine may be shared)
// BENCH_DIR (default: a directory in the system temp dir), BENCH_OTHER_FS (default /dev/shm), BENCH_ROUNDS (3):
// each figure is the median of that many rounds.
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { benchDir, citadelBin, cores, median, project, rounds as roundsOf, timed } from './lib.js'

const mibPerShard = Number(process.argv[2] ?? 1024)
if (!Number.isInteger(mibPerShard) || mibPerShard < 1) {
  console.error(`MIB_PER_SHARD ${JSON.stringify(process.argv[2])} is not valid: expected a whole number of MiB of at least 1, e.g. 256`)
  process.exit(4)
}
const SHARDS = 4
const base = benchDir('fetch')
const otherFs = mkdtempSync(path.join(process.env.BENCH_OTHER_FS ?? '/dev/shm', 'citadel-bench-fetch-'))

const fmt = (s) => `${s.toFixed(3)} s`
const rounds = roundsOf(3)

/** An `hf download` of org/bench into `hub`: blobs named by their sha256, a snapshot of relative links. */
/** `data` as one U8 tensor of a real safetensors file: the fetch checks the headers as model verify does. */
function safetensors(data) {
  let json = JSON.stringify({ weights: { dtype: 'U8', shape: [data.length], data_offsets: [0, data.length] } })
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const length = Buffer.alloc(8)
  length.writeBigUInt64LE(BigInt(json.length))
  return Buffer.concat([length, Buffer.from(json), data])
}

function hfCache(hub) {
  const repo = path.join(hub, 'models--org--bench')
  const commit = 'b'.repeat(40)
  const snapshot = path.join(repo, 'snapshots', commit)
  mkdirSync(path.join(repo, 'blobs'), { recursive: true })
  mkdirSync(path.join(repo, 'refs'), { recursive: true })
  mkdirSync(snapshot, { recursive: true })
  writeFileSync(path.join(repo, 'refs', 'main'), commit)
  const chunk = randomBytes(64 << 20)
  const put = (name, content) => {
    const blob = path.join(repo, 'blobs', createHash('sha256').update(content).digest('hex'))
    writeFileSync(blob, content)
    symlinkSync(path.join('..', '..', 'blobs', path.basename(blob)), path.join(snapshot, name))
  }
  for (let i = 0; i < SHARDS; i++) {
    // Different bytes in every MiB so nothing dedups or compresses.
    const parts = []
    for (let j = 0; j < mibPerShard; j++) parts.push(Buffer.concat([randomBytes(16), chunk.subarray((j % 64) << 20, ((j % 64) << 20) + (1 << 20) - 16)]))
    put(`model-0000${i + 1}-of-0000${SHARDS}.safetensors`, safetensors(Buffer.concat(parts)))
  }
  put('config.json', JSON.stringify({ model_type: 'llama', pad: randomBytes(512).toString('hex') }) + '\n')
  return snapshot
}

function roots(slug, extraEnv = {}) {
  const dir = path.join(base, slug)
  const r = { app: path.join(dir, 'app'), models: path.join(dir, 'models'), backup: path.join(dir, 'backup') }
  mkdirSync(r.models, { recursive: true })
  mkdirSync(r.backup, { recursive: true })
  writeFileSync(path.join(dir, '.env'), 'MODEL_AUTO_BACKUP=false\n')
  const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? dir, CITADEL_ENV_FILE: path.join(dir, '.env'), CITADEL_APP_ROOT: r.app, CITADEL_MODELS_ROOT: r.models, CITADEL_BACKUP_ROOT: r.backup, CITADEL_SYSTEMD_DIR: path.join(dir, 'systemd'), ...extraEnv }
  timed(process.execPath, [citadelBin, 'run', 'initial-setup'], { env, cwd: project })
  return { ...r, env }
}

function fetch(r, name) {
  const run = timed(process.execPath, [citadelBin, 'task', 'model-fetch', 'hf:org/bench', '--name', name, '--json'], { env: r.env, cwd: project })
  return { wall: run.s, data: JSON.parse(run.stdout).tasks[0].data }
}

try {
  console.log(`model fetch: ${SHARDS} x ${mibPerShard} MiB shards, ${cores} cores`)

  const same = roots('same-fs')
  hfCache(path.join(same.models, 'cache', 'huggingface', 'hub'))
  const linked = Array.from({ length: rounds }, (_, i) => fetch(same, `bench-${i}`))
  if (!linked.every((f) => f.data.hard_linked)) throw new Error('the same-filesystem fetch did not hard-link')
  const link = median(linked.map((f) => f.data.copy_seconds))
  console.log(`same filesystem (hard links): link phase ${fmt(link)} (target ≤ 0.200 s) ${link <= 0.2 ? 'MET' : 'MISSED'}; blob hashes done after it in ${fmt(median(linked.map((f) => f.data.verify_seconds)))}; whole command with Node start ${fmt(median(linked.map((f) => f.wall)))}`)

  const hub = path.join(otherFs, 'hub')
  const snapshot = hfCache(hub)
  const cross = roots('cross-fs', { HF_HUB_CACHE: hub })
  if (statSync(hub).dev === statSync(cross.models).dev) throw new Error(`${otherFs} is on the same filesystem as ${base}: set BENCH_OTHER_FS to another one`)
  const copies = []
  const rsyncs = []
  // Interleaved, so that neither side always runs on a warmer or busier machine.
  for (let i = 0; i < rounds; i++) {
    copies.push(fetch(cross, `bench-${i}`))
    rsyncs.push(timed('rsync', ['-a', '--copy-links', '--', snapshot + '/', path.join(base, `rsync-copy-${i}`) + '/']).s)
    rmSync(path.join(base, `rsync-copy-${i}`), { recursive: true })
    rmSync(path.join(cross.models, 'staging', `bench-${i}`), { recursive: true })
  }
  const done = median(copies.map((f) => f.data.copy_seconds + f.data.verify_seconds))
  const ratio = done / median(rsyncs)
  console.log(`other filesystem (copy): copy and check ${fmt(done)} (of which after the copy ${fmt(median(copies.map((f) => f.data.verify_seconds)))}) vs rsync -a --copy-links ${fmt(median(rsyncs))} = ${ratio.toFixed(2)}x (target ≤ 1.2x) ${ratio <= 1.2 ? 'MET' : 'MISSED'}; whole command ${fmt(median(copies.map((f) => f.wall)))}`)
} finally {
  rmSync(otherFs, { recursive: true, force: true })
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
