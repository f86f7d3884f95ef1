#!/usr/bin/env node
// Restore speed against the tools an operator would otherwise use, measured side by side in one run, median of
// BENCH_ROUNDS, every measurement starting after a `sync` (and, in the cold pass, with an empty page cache):
//   a whole-tree restore into an empty active dir, verified   vs  rsync -a from the backup + sync, restic restore --verify
//   the restore after one shard was corrupted                 vs  the whole-tree restore: bytes copied, time
//   the restore of a model that already matches                vs  sha256sum of the tree: bytes copied (0), hashed once
// on a model of BENCH_SHARDS (4) shards of BENCH_SHARD_MIB (1024) MiB plus small files (config, tokenizer, 200 x 4 KiB).
// BENCH_DIR (default: a directory in the system temp dir), BENCH_ROUNDS (3), BENCH_CACHE (cold,warm: each pass
// in turn; cold, which empties the page cache before every measurement, needs root). restic is skipped when not
// installed.
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { benchDir, citadelBin, cores, dropCaches, fmt, gb, installed, median, project, rounds as roundsOf, seconds, timed } from './lib.js'

const base = benchDir('restore')
const shards = Number(process.env.BENCH_SHARDS ?? 4)
const shardMiB = Number(process.env.BENCH_SHARD_MIB ?? 1024)
const rounds = roundsOf(3)
const BENCH_CACHE = (process.env.BENCH_CACHE ?? 'cold,warm').split(',')

const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`

function makeModel(dir) {
  mkdirSync(dir, { recursive: true })
  const chunk = randomBytes(64 << 20)
  for (let i = 1; i <= shards; i++) {
    // Different bytes in every MiB so nothing dedups or compresses; written a piece at a time to keep memory flat.
    const fd = openSync(path.join(dir, `model-0000${i}-of-0000${shards}.safetensors`), 'w')
    for (let written = 0; written < shardMiB; written += Math.min(64, shardMiB - written)) {
      const piece = chunk.subarray(0, Math.min(64, shardMiB - written) << 20)
      for (let off = 0; off < piece.length; off += 1 << 20) randomBytes(16).copy(piece, off)
      writeSync(fd, piece)
    }
    closeSync(fd)
  }
  for (const name of ['config.json', 'generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    writeFileSync(path.join(dir, name), JSON.stringify({ name, pad: randomBytes(512).toString('hex') }) + '\n')
  writeFileSync(path.join(dir, 'tokenizer.json'), randomBytes(2 << 20).toString('base64'))
  mkdirSync(path.join(dir, 'extra'))
  for (let i = 0; i < 200; i++) writeFileSync(path.join(dir, 'extra', `f${i}.bin`), randomBytes(4096))
}

/** Flips one byte in the middle of `file` in place: same size, same mtime, only a hash can tell. */
function corrupt(file) {
  const { size, mtime } = statSync(file)
  const fd = openSync(file, 'r+')
  writeSync(fd, randomBytes(1), 0, 1, Math.floor(size / 2))
  closeSync(fd)
  execFileSync('touch', ['-d', mtime.toISOString(), file])
}

const dir = path.join(base, 'restore')
const roots = { app: path.join(dir, 'app'), models: path.join(dir, 'models'), backup: path.join(dir, 'backup') }
const active = path.join(roots.models, 'active')
const model = path.join(active, 'model')
const archive = path.join(roots.models, 'archive')
const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? dir, CITADEL_ENV_FILE: path.join(dir, '.env'), CITADEL_APP_ROOT: roots.app, CITADEL_MODELS_ROOT: roots.models, CITADEL_BACKUP_ROOT: roots.backup, MODEL_REGISTRY: 'model=model' }
// Whether each measurement starts with an empty page cache (see dropCaches), set per pass of the bench.
let cold = false
const citadel = (...args) => timed(process.execPath, [citadelBin, ...args], { env, cwd: project, cold })
/** A restore of the active models with its report: what it copied, and what its plan found already right. */
function restore() {
  const run = citadel('backup', 'restore', '--json')
  const task = JSON.parse(run.stdout).tasks[0]
  const units = task.data.units
  return { s: run.s, msg: task.msg, copied: task.data.record?.bytes_copied ?? 0, toCopy: units.reduce((n, u) => n + u.bytes_to_copy, 0), good: units.reduce((n, u) => n + u.bytes_good, 0), verified: task.data.record?.files_verified ?? 0 }
}
const emptyArchive = () => { for (const name of readdirSync(archive)) rmSync(path.join(archive, name), { recursive: true }) }

function setUp() {
  mkdirSync(roots.backup, { recursive: true })
  writeFileSync(env.CITADEL_ENV_FILE, '')
  makeModel(model)
  citadel('run', 'initial-setup')
  citadel('backup', 'create', '--type', 'full')
  const store = path.join(roots.backup, 'models')
  const data = path.join(store, readdirSync(store).find((n) => n.endsWith('_full')), 'data')
  const files = execFileSync('find', [model, '-type', 'f', '-printf', '.'], { encoding: 'utf8' }).length
  const bytes = execFileSync('find', [model, '-type', 'f', '-printf', '%s\n'], { encoding: 'utf8' }).trim().split('\n').reduce((n, size) => n + Number(size), 0)
  console.log(`model: ${files} files, ${gb(bytes)} (${shards} x ${shardMiB} MiB + small files); ${rounds} rounds`)

  const peerEnv = { ...process.env, RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache') }
  const resticRepo = path.join(roots.backup, 'restic')
  const restic = installed('restic')
  if (restic) {
    timed('restic', ['init', '--quiet', '--repo', resticRepo], { env: peerEnv })
    timed('restic', ['backup', '--quiet', '--repo', resticRepo, '.'], { env: peerEnv, cwd: model })
  }
  return { data, files, bytes, peerEnv, resticRepo, restic }
}

function bench({ data, bytes, peerEnv, resticRepo, restic }) {
  // (a) The whole tree into an empty active dir, in turns with the peers, each into the model disk.
  const whole = { citadel: [], 'rsync -a + sync': [], 'restic restore --verify': [] }
  let last
  for (let i = 0; i < rounds; i++) {
    rmSync(model, { recursive: true })
    last = restore()
    if (last.copied !== bytes) throw new Error(`the restore into an empty active dir copied ${last.copied} bytes of ${bytes}: ${last.msg}`)
    whole.citadel.push(last.s)
    const plain = path.join(roots.models, 'staging', 'bench-rsync')
    whole['rsync -a + sync'].push(timed('sh', ['-c', 'rsync -a "$1/" "$2/" && sync -f "$2"', 'sh', data, plain], { cold }).s)
    rmSync(plain, { recursive: true })
    if (restic) {
      const target = path.join(roots.models, 'staging', 'bench-restic')
      whole['restic restore --verify'].push(timed('restic', ['restore', '--quiet', '--repo', resticRepo, 'latest', '--target', target, '--verify'], { env: peerEnv, cold }).s)
      rmSync(target, { recursive: true })
    }
  }
  const wholeS = median(whole.citadel)
  console.log(`\n(a) whole tree into an empty active dir, median of ${rounds}: citadel ${fmt(wholeS)} (${mb(last.copied)} copied, ${last.verified} files verified)`)
  for (const [name, times] of Object.entries(whole)) if (name !== 'citadel' && times.length) console.log(`    ${name.padEnd(24)} ${fmt(median(times))}: citadel takes ${(wholeS / median(times)).toFixed(2)}x`)
  if (!restic) console.log('    skipped restic (not installed: apt-get install restic)')

  // (b) One shard corrupted in place: only it is copied again.
  const shard = path.join(model, `model-00001-of-0000${shards}.safetensors`)
  if (statSync(shard).nlink !== 1) throw new Error(`${shard} shares its inode with another name: corrupting it would corrupt that too`)
  const oneBad = []
  for (let i = 0; i < rounds; i++) {
    corrupt(shard)
    oneBad.push(restore())
    emptyArchive()
  }
  const bad = oneBad.at(-1)
  const badS = median(oneBad.map((r) => r.s))
  console.log(`(b) one ${shardMiB} MiB shard corrupted, median of ${rounds}: ${fmt(badS)} = ${((badS / wholeS) * 100).toFixed(0)}% of the whole-tree restore; copied ${mb(bad.copied)} (${((bad.copied / bytes) * 100).toFixed(1)}% of the tree), linked ${mb(bad.good)} already right`)

  // (c) Nothing to do: every byte hashed once, none copied. sha256sum of the same files is the floor for one pass.
  const same = []
  const sums = []
  for (let i = 0; i < rounds; i++) {
    same.push(restore())
    sums.push(timed('sh', ['-c', 'find . -type f -print0 | xargs -0 sha256sum > /dev/null'], { cwd: model, cold }).s)
  }
  const noop = same.at(-1)
  const sameS = median(same.map((r) => r.s))
  console.log(`(c) already matching, median of ${rounds}: ${fmt(sameS)}, copied ${noop.toCopy} bytes (target 0); ${noop.msg}`)
  console.log(`    sha256sum of the tree (one pass, one core): ${fmt(median(sums))}: citadel takes ${(sameS / median(sums)).toFixed(2)}x`)
}

console.log(`citadel restore bench in ${base} (${cores} cores, ${os.cpus()[0]?.model ?? 'unknown cpu'}; load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')})`)
try {
  const made = setUp()
  // Cold first: what a restore meets at 3 a.m., the backup on its disk and not in memory. Warm after: every
  // file in the page cache, which leaves the CPU to measure (hashing, copying) and not the disks.
  const canDrop = dropCaches()
  for (const pass of BENCH_CACHE) {
    if (pass === 'cold' && !canDrop) {
      console.log('\ncold page cache: skipped (emptying it needs root)')
      continue
    }
    cold = pass === 'cold'
    console.log(`\n${cold ? 'cold page cache: every measurement starts with none of the files in memory' : 'warm page cache: the files are in memory, as the bench just wrote or read them'}`)
    bench(made)
  }
  rmSync(made.resticRepo, { recursive: true, force: true })
} finally {
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
