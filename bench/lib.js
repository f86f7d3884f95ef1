// What the bench scripts share: where citadel is, a scratch directory, timing a command after a sync, and
// the machine's hashing limit.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const project = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
export const citadelBin = path.join(project, 'bin', 'citadel.js')
export const cores = os.availableParallelism()
export const rounds = (fallback) => Number(process.env.BENCH_ROUNDS ?? fallback)

/** BENCH_DIR, or a new directory in the system temp dir named after the bench. */
export const benchDir = (name) => (process.env.BENCH_DIR ? path.resolve(process.env.BENCH_DIR) : mkdtempSync(path.join(os.tmpdir(), `citadel-bench-${name}-`)))

export const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9

/**
 * Empties the page cache, as root: a measurement then reads from the disks, as at 3 a.m. or after a reboot,
 * not from the memory a bench that just wrote the files has them in. False where this user may not.
 */
export function dropCaches() {
  spawnSync('sync')
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3')
    return true
  } catch {
    return false
  }
}

/** Runs a command to completion and times it; throws with its output when it fails. `cold`: see dropCaches. */
export function timed(command, args, { cold = false, ...options } = {}) {
  // Every measurement starts with nothing waiting to be written back, so none pays for the one before.
  spawnSync('sync')
  if (cold) dropCaches()
  const start = process.hrtime.bigint()
  const run = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 28, ...options })
  const s = seconds(start)
  if (run.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${run.status}:\n${run.stdout.slice(-2000)}\n${run.stderr.slice(-2000)}`)
  return { s, stdout: run.stdout }
}

export const fmt = (s) => `${s.toFixed(2)} s`
export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
export const installed = (command) => (process.env.PATH ?? '').split(':').some((dir) => dir && spawnSync('test', ['-x', path.join(dir, command)]).status === 0)
export const gb = (bytes) => `${(bytes / 1e9).toFixed(2)} GB`

/** Bytes per second `openssl speed -multi <cores> -evp sha256` reaches with its largest block: what hashing can do here. */
export function opensslRate(secondsEach = 3) {
  const out = execFileSync('openssl', ['speed', '-multi', String(cores), '-seconds', String(secondsEach), '-evp', 'sha256'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  const row = out.split('\n').filter((l) => /^sha256\s/.test(l)).at(-1)
  return Number(row.trim().split(/\s+/).at(-1).replace(/k$/, '')) * 1000
}
