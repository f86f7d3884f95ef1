#!/usr/bin/env node
// Startup of the citadel command, against the anchor of a bare `node -e 0` on the same machine.
// Prints medians in ms and their ratio to the anchor. Usage: node bench/startup.js [runs]
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const project = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const citadel = path.join(project, 'bin', 'citadel.js')
const runs = Number(process.argv[2] ?? 21)
const base = mkdtempSync(path.join(os.tmpdir(), 'citadel-bench-'))
for (const d of ['models', 'backup']) mkdirSync(path.join(base, d))
writeFileSync(path.join(base, '.env'), '')
const env = {
  PATH: process.env.PATH,
  HOME: process.env.HOME,
  CITADEL_ENV_FILE: path.join(base, '.env'),
  CITADEL_APP_ROOT: path.join(base, 'app'),
  CITADEL_MODELS_ROOT: path.join(base, 'models'),
  CITADEL_BACKUP_ROOT: path.join(base, 'backup'),
}

function median(args, before = () => {}) {
  const times = []
  for (let i = 0; i < runs; i++) {
    before()
    const t0 = process.hrtime.bigint()
    const r = spawnSync(process.execPath, args, { env, stdio: 'ignore' })
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
    if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}`)
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)]
}

spawnSync(process.execPath, [citadel, 'run', 'initial-setup'], { env, stdio: 'ignore' })
// Touching a task file's mtime is what an edit looks like to the launcher: the next start rebuilds.
const edited = path.join(project, 'tasks', 'verify-symlinks.ts')
const touch = () => {
  const now = new Date()
  utimesSync(edited, now, now)
}
const rows = [
  ['node -e 0 (anchor)', median(['-e', '0'])],
  ['citadel list', median([citadel, 'list'])],
  ['citadel list, first run after a task edit', median([citadel, 'list'], touch)],
  ['citadel task verify-symlinks', median([citadel, 'task', 'verify-symlinks'])],
  ['citadel run initial-setup (no changes)', median([citadel, 'run', 'initial-setup'])],
]
rmSync(base, { recursive: true, force: true })
const anchor = rows[0][1]
console.log(`median of ${runs} runs, ${os.cpus().length} cores`)
for (const [name, ms] of rows) console.log(`${name.padEnd(44)} ${ms.toFixed(0).padStart(5)} ms  ${(ms / anchor).toFixed(2)}x`)
