#!/usr/bin/env node
// Backup speed against the tools it replaces, measured side by side in one run on one machine:
//   verify --sample 1        vs  sha256sum -c SHA256SUMS        (and vs openssl speed: the hashing limit)
//   create --type full       vs  rsync -a (and rsync -a + sync: a backup is only done once it is on disk)
//   unchanged incremental    vs  the full: time, added disk use, bytes hashed
// on two trees: a few large files (model shards) and many small files.
// BENCH_DIR (default: a directory in the system temp dir), BENCH_LARGE_GIB (4), BENCH_SMALL_FILES (20000).
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const project = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const citadelBin = path.join(project, 'bin', 'citadel.js')
const base = process.env.BENCH_DIR ? path.resolve(process.env.BENCH_DIR) : mkdtempSync(path.join(os.tmpdir(), 'citadel-bench-'))
const largeGiB = Number(process.env.BENCH_LARGE_GIB ?? 4)
const smallFiles = Number(process.env.BENCH_SMALL_FILES ?? 20000)
const cores = os.availableParallelism()

const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9
function timed(command, args, options = {}) {
  // Every measurement starts with nothing waiting to be written back, so none pays for the one before.
  spawnSync('sync')
  const start = process.hrtime.bigint()
  const run = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 28, ...options })
  const s = seconds(start)
  if (run.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${run.status}:\n${run.stdout.slice(-2000)}\n${run.stderr.slice(-2000)}`)
  return { s, stdout: run.stdout }
}
const usedBytes = (dir) => { const st = statfsSync(dir); return (st.blocks - st.bfree) * st.bsize }
const fmt = (s) => `${s.toFixed(2)} s`
const gb = (bytes) => `${(bytes / 1e9).toFixed(2)} GB`

function makeLarge(dir) {
  const chunk = randomBytes(64 << 20)
  for (let i = 0; i < largeGiB; i++) {
    const file = path.join(dir, 'model', `model-0000${i + 1}-of-0000${largeGiB}.safetensors`)
    mkdirSync(path.dirname(file), { recursive: true })
    // Different bytes in every 64 MiB so nothing dedups or compresses.
    const parts = []
    for (let j = 0; j < 16; j++) parts.push(Buffer.concat([randomBytes(16), chunk.subarray(16)]))
    writeFileSync(file, Buffer.concat(parts))
  }
  for (const name of ['config.json', 'generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    writeFileSync(path.join(dir, 'model', name), JSON.stringify({ name, pad: randomBytes(512).toString('hex') }) + '\n')
  writeFileSync(path.join(dir, 'model', 'tokenizer.json'), randomBytes(2 << 20).toString('base64'))
}

function makeSmall(dir) {
  for (let i = 0; i < smallFiles; i++) {
    const sub = path.join(dir, 'many', `d${String(i % 100).padStart(3, '0')}`)
    if (i < 100) mkdirSync(sub, { recursive: true })
    writeFileSync(path.join(sub, `f${i}.bin`), randomBytes(4096))
  }
}

/** Openssl's own multi-core SHA-256 rate on 16 KiB blocks, in bytes per second. */
function opensslRate() {
  const out = execFileSync('openssl', ['speed', '-multi', String(cores), '-seconds', '3', '-evp', 'sha256'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const row = out.split('\n').filter((l) => /^sha256\s/.test(l)).at(-1)
  return Number(row.trim().split(/\s+/).at(-1).replace(/k$/, '')) * 1000
}

function bench(label, slug, make) {
  const dir = path.join(base, slug)
  const roots = { app: path.join(dir, 'app'), models: path.join(dir, 'models'), backup: path.join(dir, 'backup') }
  mkdirSync(path.join(roots.models, 'active'), { recursive: true })
  mkdirSync(roots.backup, { recursive: true })
  writeFileSync(path.join(dir, '.env'), '')
  make(path.join(roots.models, 'active'))
  const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? dir, CITADEL_ENV_FILE: path.join(dir, '.env'), CITADEL_APP_ROOT: roots.app, CITADEL_MODELS_ROOT: roots.models, CITADEL_BACKUP_ROOT: roots.backup, MODEL_REGISTRY: 'model=model' }
  const citadel = (...args) => timed(process.execPath, [citadelBin, ...args], { env, cwd: project })
  citadel('run', 'initial-setup')
  const active = path.join(roots.models, 'active')
  const store = path.join(roots.backup, 'models')
  const files = Number(execFileSync('find', [active, '-type', 'f', '-printf', '.'], { encoding: 'utf8' }).length)
  const bytes = Number(execFileSync('du', ['-sb', '--apparent-size', active], { encoding: 'utf8' }).split('\t')[0])
  console.log(`\n${label}: ${files} files, ${gb(bytes)}`)

  // The copy: plain rsync into the same disk, then citadel's full backup, then the plain copy again.
  const plain = []
  const plainSynced = []
  let fullS = 0
  for (let i = 0; i < 2; i++) {
    const dest = path.join(roots.backup, `rsync-${i}`)
    plain.push(timed('rsync', ['-a', active + '/', dest + '/']).s)
    rmSync(dest, { recursive: true })
    const synced = timed('sh', ['-c', 'rsync -a "$1/" "$2/" && sync -f "$2"', 'sh', active, dest]).s
    plainSynced.push(synced)
    rmSync(dest, { recursive: true })
    if (i === 0) fullS = citadel('backup', 'create', '--type', 'full').s
  }
  const rsyncS = Math.min(...plain)
  const rsyncSyncS = Math.min(...plainSynced)
  console.log(`  create --type full      ${fmt(fullS)}   rsync -a ${fmt(rsyncS)}: ${(fullS / rsyncS).toFixed(2)}x (target <= 1.25x)   rsync -a + sync ${fmt(rsyncSyncS)}: ${(fullS / rsyncSyncS).toFixed(2)}x`)

  const before = usedBytes(store)
  const incr = citadel('backup', 'create', '--type', 'incremental', '--json')
  const added = usedBytes(store) - before
  const incrDoc = JSON.parse(incr.stdout).tasks[0].data
  console.log(`  unchanged incremental   ${fmt(incr.s)} = ${((incr.s / fullS) * 100).toFixed(1)}% of the full (target <= 3%); disk +${(added / 1024).toFixed(0)} KiB (target <= 1024 KiB); hashed ${incrDoc.hashed_bytes} bytes (target 0)`)

  const full = readdirSync(store).find((n) => n.endsWith('_full'))
  const data = path.join(store, full, 'data')
  const sums = []
  const ours = []
  const inTask = []
  for (let i = 0; i < 3; i++) {
    sums.push(timed('sha256sum', ['-c', '--quiet', '../SHA256SUMS'], { cwd: data, env: { ...process.env, LC_ALL: 'C' } }).s)
    const run = citadel('backup', 'verify', full, '--sample', '1', '--json')
    ours.push(run.s)
    inTask.push(JSON.parse(run.stdout).tasks[0].duration_ms / 1000)
  }
  const sumS = Math.min(...sums)
  const oursS = Math.min(...ours)
  // Measured next to verify, best of two, so a passing load on the machine does not flatter the ratio.
  const hashLimit = Math.max(opensslRate(), opensslRate())
  const share = (seconds) => `${gb(bytes / seconds)}/s = ${((bytes / seconds / hashLimit) * 100).toFixed(0)}%`
  console.log(`  verify --sample 1       ${fmt(oursS)}   sha256sum -c ${fmt(sumS)}: ${(sumS / oursS).toFixed(2)}x faster (target >= 5x large, >= 1x small)`)
  console.log(`    throughput vs openssl speed -multi ${cores} (${gb(hashLimit)}/s, target > 70%): whole command ${share(oursS)}; the task itself (${fmt(Math.min(...inTask))}) ${share(Math.min(...inTask))}`)
  rmSync(dir, { recursive: true, force: true })
}

console.log(`citadel backup bench in ${base} (${cores} cores, ${os.cpus()[0]?.model ?? 'unknown cpu'}); best of 2-3 runs where repeated`)
try {
  bench(`large files (${largeGiB} x 1 GiB + 5 small)`, 'large', makeLarge)
  bench(`small files (${smallFiles} x 4 KiB)`, 'small', makeSmall)
} finally {
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
