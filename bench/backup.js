#!/usr/bin/env node
// Backup speed against the tools it replaces, measured side by side in one run on one machine:
//   verify --sample 1        vs  sha256sum -c SHA256SUMS        (and vs openssl speed: the hashing limit)
//   create --type full       vs  rsync -a (and rsync -a + sync: a backup is only done once it is on disk)
//   unchanged incremental    vs  the full: time, added disk use, bytes hashed
//   unchanged incremental    vs  cp -al, rsync --link-dest, borg create, restic backup (each peer's repository
//                                already holding the tree; borg and restic only when installed), median of rounds
// on two trees: a few large files (model shards) and many small files.
// BENCH_DIR (default: a directory in the system temp dir), BENCH_LARGE_GIB (4), BENCH_SMALL_FILES (20000),
// BENCH_ROUNDS (5).
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { benchDir, citadelBin, cores, fmt, gb, installed, median, opensslRate, project, rounds as roundsOf, seconds, timed } from './lib.js'

const base = benchDir('backup')
const largeGiB = Number(process.env.BENCH_LARGE_GIB ?? 4)
const smallFiles = Number(process.env.BENCH_SMALL_FILES ?? 20000)
const rounds = roundsOf(5)

const usedBytes = (dir) => { const st = statfsSync(dir); return (st.blocks - st.bfree) * st.bsize }

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
  comparePeers(dir, roots.backup, active, data, () => citadel('backup', 'create', '--type', 'incremental').s)
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

/**
 * An unchanged incremental next to what else makes one of the same tree, in turns, each round once: cp -al of
 * the full backup's data (the floor: one hard link per file, and nothing read), rsync --link-dest against it,
 * and borg and restic with their repositories on the same disk already holding the tree. cp -al copies the
 * backup, not the source: linking the source's files would change their ctime, which the next incremental
 * (like borg and restic) takes for a change and reads the file to check.
 */
function comparePeers(dir, backupDisk, active, fullData, incremental) {
  const peerEnv = {
    ...process.env, BORG_BASE_DIR: path.join(dir, 'borg-home'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
    RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache'),
  }
  const borgRepo = path.join(backupDisk, 'borg')
  const resticRepo = path.join(backupDisk, 'restic')
  const run = (command, args) => timed(command, args, { env: peerEnv }).s
  const runs = { citadel: [], 'cp -al': [], 'rsync --link-dest': [], borg: [], restic: [] }
  const skipped = []
  const peers = { borg: installed('borg'), restic: installed('restic') }
  if (peers.borg) {
    run('borg', ['init', '--encryption', 'none', borgRepo])
    run('borg', ['create', `${borgRepo}::base`, active])
  } else skipped.push('borg (not installed: apt-get install borgbackup)')
  if (peers.restic) {
    run('restic', ['init', '--quiet', '--repo', resticRepo])
    run('restic', ['backup', '--quiet', '--repo', resticRepo, active])
  } else skipped.push('restic (not installed: apt-get install restic)')
  for (let i = 0; i < rounds; i++) {
    runs.citadel.push(incremental())
    const linked = path.join(backupDisk, `cp-al-${i}`)
    runs['cp -al'].push(run('cp', ['-al', fullData, linked]))
    rmSync(linked, { recursive: true })
    const synced = path.join(backupDisk, `rsync-link-dest-${i}`)
    runs['rsync --link-dest'].push(run('rsync', ['-a', `--link-dest=${fullData}`, active + '/', synced + '/']))
    rmSync(synced, { recursive: true })
    if (peers.borg) runs.borg.push(run('borg', ['create', `${borgRepo}::run-${i}`, active]))
    if (peers.restic) runs.restic.push(run('restic', ['backup', '--quiet', '--repo', resticRepo, active]))
  }
  const ours = median(runs.citadel)
  const against = Object.entries(runs).filter(([name, times]) => name !== 'citadel' && times.length)
  console.log(`  unchanged incremental side by side, median of ${rounds}: citadel ${fmt(ours)}`)
  for (const [name, times] of against) console.log(`    ${name.padEnd(18)} ${fmt(median(times))}: citadel takes ${(ours / median(times)).toFixed(2)}x`)
  const slower = against.filter(([name, times]) => (name === 'borg' || name === 'restic') && ours >= median(times)).map(([name]) => name)
  if (peers.borg || peers.restic) console.log(`    target: faster than borg and restic: ${slower.length ? `missed (not faster than ${slower.join(', ')})` : 'met'}`)
  for (const note of skipped) console.log(`    skipped ${note}`)
  rmSync(borgRepo, { recursive: true, force: true })
  rmSync(resticRepo, { recursive: true, force: true })
}

console.log(`citadel backup bench in ${base} (${cores} cores, ${os.cpus()[0]?.model ?? 'unknown cpu'}); best of 2-3 runs where repeated`)
try {
  bench(`large files (${largeGiB} x 1 GiB + 5 small)`, 'large', makeLarge)
  bench(`small files (${smallFiles} x 4 KiB)`, 'small', makeSmall)
} finally {
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
