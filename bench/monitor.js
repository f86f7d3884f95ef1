#!/usr/bin/env node
// The monitor's running cost: CPU share of one core and resident memory of `citadel monitor` on a small
// set-up server, read from /proc over a window, against a bare idle Node process as the anchor.
// Targets: at most 0.5% of a core and 100 MiB resident. The window (BENCH_SECONDS, 300) spans several cycles at
// the default interval (BENCH_INTERVAL, 60), so the share includes the cycles themselves, not only the sleep.
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

const project = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const seconds = Number(process.env.BENCH_SECONDS ?? 300)
const interval = Number(process.env.BENCH_INTERVAL ?? 60)
const base = mkdtempSync(path.join(os.tmpdir(), 'citadel-bench-monitor-'))
const roots = { app: path.join(base, 'app'), models: path.join(base, 'models'), backup: path.join(base, 'backup') }
for (const dir of [roots.models, roots.backup]) mkdirSync(dir)
mkdirSync(path.join(roots.models, 'active', 'mixtral-8x7b-instruct'), { recursive: true })
writeFileSync(path.join(roots.models, 'active', 'mixtral-8x7b-instruct', 'config.json'), '{}\n')
writeFileSync(path.join(base, '.env'), `CITADEL_APP_ROOT=${roots.app}\nCITADEL_MODELS_ROOT=${roots.models}\nCITADEL_BACKUP_ROOT=${roots.backup}\n`)
const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? base, CITADEL_ENV_FILE: path.join(base, '.env') }
const citadel = [path.join(project, 'bin', 'citadel.js')]
for (const args of [['run', 'initial-setup'], ['backup', 'create']]) {
  const run = spawnSync(process.execPath, [...citadel, ...args], { env, stdio: 'ignore' })
  if (run.status !== 0) throw new Error(`citadel ${args.join(' ')} exited ${run.status}`)
}

const TICK = 100 // USER_HZ on Linux
const cpuSeconds = (pid) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).reduce((a, b) => a + Number(b), 0) / TICK
const rssKiB = (pid, field = 'VmRSS') => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1])

async function measure(command, args, warmup, seconds) {
  const child = spawn(command, args, { env, stdio: 'ignore' })
  await sleep(warmup * 1000)
  const cpu0 = cpuSeconds(child.pid)
  let peak = 0
  const t0 = Date.now()
  while (Date.now() - t0 < seconds * 1000) {
    await sleep(1000)
    peak = Math.max(peak, rssKiB(child.pid))
  }
  const share = (cpuSeconds(child.pid) - cpu0) / ((Date.now() - t0) / 1000)
  const hwm = rssKiB(child.pid, 'VmHWM')
  child.kill('SIGTERM')
  await new Promise((resolve) => child.on('exit', resolve))
  return { share, peak, hwm }
}

console.log(`monitor --interval ${interval} over ${seconds} s (${Math.floor(seconds / interval)} cycles, after a ${interval + 2} s warm-up), then a bare idle node for ${Math.min(seconds, 30)} s`)
const monitor = await measure(process.execPath, [...citadel, 'monitor', '--interval', String(interval)], interval + 2, seconds)
const bare = await measure(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], 2, Math.min(seconds, 30))
rmSync(base, { recursive: true, force: true })
const mib = (kib) => `${(kib / 1024).toFixed(1)} MiB`
const pct = (share) => `${(share * 100).toFixed(3)}%`
console.log(`citadel monitor: CPU ${pct(monitor.share)} of a core (target ≤ 0.5%), RSS ${mib(monitor.peak)} (peak ${mib(monitor.hwm)}; target ≤ 100 MiB)`)
console.log(`bare idle node:  CPU ${pct(bare.share)} of a core, RSS ${mib(bare.peak)}`)
console.log(`ratio: RSS ${(monitor.peak / bare.peak).toFixed(2)}× a bare node; CPU ${((monitor.share - bare.share) * 100).toFixed(3)} points above it`)
