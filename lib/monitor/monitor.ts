// The monitor: a foreground loop (systemd keeps it running) that checks usage, links and backups every
// interval, SMART every SMART interval and the remote store every remote interval, repairs a broken link once, and alerts only when a condition
// changes and has held for STORAGE_MONITOR_CONSECUTIVE samples. Each cycle rewrites health.json and the
// Prometheus textfile. What it has alerted on survives a restart, so a restart never repeats an alert.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Shell } from 'zx/core'
import { PLUGIN_EXIT } from '../core/exit.ts'
import { z } from 'zod'
import { rank, type Condition, type Problem, type Severity } from '../core/problems.ts'
import { parseFile } from '../infra/schemas.ts'
import type { Settings } from '../infra/config.ts'
import { collectHealth, conditionSchema, publish, readRemoteSnapshot, readSmartSnapshot, remoteHealthSchema, remoteReadingFresh, smartReportSchema, writeHealth, type HealthReport, type RemoteHealth, type SmartSnapshot } from '../health/health.ts'
import { readFileOrNull, removeTempSiblings } from '../infra/fsx.ts'
import { healthDir, healthFile, logsDir, monitorStateFile } from '../infra/layout.ts'
import { inspectLinks } from '../links/links.ts'
import { Lock, LockHeldError } from '../core/lock.ts'
import { RunLog } from '../core/log.ts'
import { metricsText } from './metrics.ts'
import { makeShell } from '../infra/shell.ts'

export const MONITOR_LOCK = 'monitor.lock'

/** state/monitor.json: written by the monitor alone, every cycle. */
export const monitorStateSchema = z.strictObject({
  pid: z.number(),
  started_at: z.string(),
  interval_seconds: z.number(),
  last_cycle_at: z.string(),
  /** What the monitor confirmed as not ok: a restart must not alert on it again. */
  conditions: z.record(z.string(), conditionSchema),
  /** The last SMART reading: status reuses it while the monitor runs and it is fresh, so no disk is woken twice. */
  smart: z.object({ disks: z.array(smartReportSchema), notes: z.array(z.string()), read_at: z.string() }),
  /**
   * The last reading of the remote store (null while BACKUP_REMOTE is unset): a restarted monitor and status
   * reuse it while it is fresh, so the host is reached over ssh once per STORAGE_MONITOR_REMOTE_INTERVAL.
   * Absent in a state written before the monitor read the remote store.
   */
  remote: remoteHealthSchema.nullable().optional(),
})
export type MonitorState = z.infer<typeof monitorStateSchema>

/** The running (or last) monitor's state, or null when no monitor wrote one; throws one line naming the file when it is not one. */
export async function readMonitorState(settings: Settings): Promise<MonitorState | null> {
  const file = monitorStateFile(settings)
  const text = await readFileOrNull(file).catch((err: Error) => {
    throw new Error(`cannot read ${file}: ${err.message}`)
  })
  return text === null ? null : parseFile(monitorStateSchema, file, text, "a monitor's state citadel wrote")
}

export interface Alert {
  at: string
  host: string
  /** problem: ok → warning/critical; worse: warning → critical; better: critical → warning; recovery: → ok. */
  kind: 'problem' | 'worse' | 'better' | 'recovery'
  check: Problem['check']
  key: string
  severity: Severity
  previous: Severity
  message: string
}

interface Tracked extends Condition { candidate: Severity; streak: number }

/** Follows every problem key from sample to sample; a change counts once it held `consecutive` samples. */
export class Tracker {
  private readonly tracked = new Map<string, Tracked>()

  constructor(private readonly consecutive: number, restored: Record<string, Condition> = {}) {
    for (const [key, c] of Object.entries(restored)) this.tracked.set(key, { ...c, candidate: c.severity, streak: 0 })
  }

  /** What is confirmed now, by key: usage verdicts clear with hysteresis against it. */
  held(): Map<string, Severity> {
    return new Map([...this.tracked].map(([key, t]) => [key, t.severity]))
  }

  conditions(): Record<string, Condition> {
    const out: Record<string, Condition> = {}
    for (const [key, t] of this.tracked) if (t.severity !== 'ok') out[key] = { check: t.check, severity: t.severity, since: t.since, message: t.message }
    return out
  }

  observe(problems: Problem[], now: Date): Alert[] {
    const alerts: Alert[] = []
    const byKey = new Map(problems.map((p) => [p.key, p]))
    for (const key of new Set([...this.tracked.keys(), ...byKey.keys()])) {
      const problem = byKey.get(key)
      const level: Severity = problem?.severity ?? 'ok'
      const t = this.tracked.get(key) ?? { check: problem!.check, severity: 'ok', since: now.toISOString(), message: problem!.message, candidate: 'ok', streak: 0 }
      this.tracked.set(key, t)
      if (level === t.severity) {
        Object.assign(t, { candidate: level, streak: 0 }, problem && { message: problem.message })
      } else {
        t.streak = level === t.candidate ? t.streak + 1 : 1
        t.candidate = level
        if (t.streak >= this.consecutive) {
          const previous = t.severity
          const kind = level === 'ok' ? 'recovery' : previous === 'ok' ? 'problem' : rank(level) > rank(previous) ? 'worse' : 'better'
          const message = problem ? problem.message : `ok again after ${previous} since ${t.since}: ${t.message}`
          alerts.push({ at: now.toISOString(), host: os.hostname(), kind, check: t.check, key, severity: level, previous, message })
          Object.assign(t, { severity: level, since: now.toISOString(), message, streak: 0 })
        }
      }
      if (t.severity === 'ok' && t.candidate === 'ok') this.tracked.delete(key)
    }
    return alerts
  }
}

const say = (line: string) => process.stderr.write(`citadel monitor: ${line}\n`)

/** Log, stderr and the operator's command; a failing command is reported and never stops the loop. */
async function deliver(alert: Alert, settings: Settings, $: Shell, log: RunLog): Promise<void> {
  log.event('alert', { ...alert })
  say(`ALERT ${alert.kind} ${alert.severity} ${alert.key}: ${alert.message}`)
  const command = settings.monitor.alertCommand
  if (!command) return
  try {
    const result = await $({ nothrow: true, input: JSON.stringify(alert) + '\n', timeout: '30s' })`bash -c ${command}`
    if (result.exitCode === 0) return
    const why = result.signal ? `killed by ${result.signal} (30 s timeout)` : `exit ${result.exitCode}`
    const detail = result.stderr.trim().split('\n')[0] ?? ''
    log.event('alert-command-failed', { key: alert.key, why, stderr: result.stderr.slice(0, 2000) })
    say(`alert command failed (${why})${detail ? `: ${detail}` : ''}; going on`)
  } catch (err) {
    log.event('alert-command-failed', { key: alert.key, why: (err as Error).message })
    say(`alert command could not run: ${(err as Error).message}; going on`)
  }
}

/** Link verdicts the monitor mends on its own; a real file or directory in the way waits for an operator. */
const REPAIRABLE = new Set(['missing', 'wrong-target', 'broken'])

export interface MonitorOptions {
  settings: Settings
  intervalSeconds: number
  once: boolean
  /** Runs the repair-symlinks task; the command line hands it in, as the tasks sit above the monitor. */
  repair: (settings: Settings) => Promise<unknown>
}

export async function runMonitor({ settings, intervalSeconds, once, repair }: MonitorOptions): Promise<number> {
  const log = new RunLog(logsDir(settings), `monitor-${process.pid}`, true)
  const $ = makeShell((fields) => log.event('command', fields))
  let lock: Lock
  try {
    await fs.mkdir(healthDir(settings), { recursive: true })
    lock = await Lock.acquire(healthDir(settings), `citadel monitor (pid ${process.pid})`, (h) => say(`took over the lock of a monitor that is gone (pid ${h.pid})`), MONITOR_LOCK)
    // A monitor killed in the middle of a write leaves its temporary file, which only a monitor writes.
    // (health.json is also written by the health-report task, whose temporary file may be in use now.)
    await removeTempSiblings(settings.monitor.prometheusFile, 'write')
    await removeTempSiblings(monitorStateFile(settings), 'write')
  } catch (err) {
    say(err instanceof LockHeldError ? `a monitor is already running: pid ${err.holder.pid}, started ${err.holder.started}; its report is ${healthFile(settings)}` : `cannot start: ${(err as Error).message}`)
    return PLUGIN_EXIT.unknown
  }
  const stop = new AbortController()
  const onSignal = (signal: string) => {
    if (!stop.signal.aborted) say(`${signal}: finishing this cycle, then exiting`)
    stop.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  // What the last monitor confirmed: a restart must not alert on it again.
  let restored: Record<string, Condition> | undefined
  let remote: RemoteHealth | null | undefined
  try {
    const last = await readMonitorState(settings)
    restored = last?.conditions
    remote = last?.remote
  } catch (err) {
    say(`${(err as Error).message}; starting without the conditions it held`)
  }
  const tracker = new Tracker(settings.monitor.consecutive, restored)
  const repaired = new Map<string, number>()
  const started = new Date().toISOString()
  let smart: SmartSnapshot | undefined
  let alertsTotal = 0
  let repairsTotal = 0
  let exit: number = PLUGIN_EXIT.ok
  const remoteInterval = settings.monitor.remoteInterval
  log.event('monitor-start', { interval: intervalSeconds, smart_interval: settings.monitor.smartInterval, remote_interval: settings.backup.remote ? remoteInterval : null, once, restored: Object.keys(tracker.conditions()) })
  if (!once) say(`checking every ${intervalSeconds} s (SMART every ${settings.monitor.smartInterval} s${settings.backup.remote ? `, the remote store every ${remoteInterval} s` : ''}); report ${healthFile(settings)}, metrics ${settings.monitor.prometheusFile}`)
  try {
    do {
      const t0 = Date.now()
      try {
        if (!smart || t0 - Date.parse(smart.read_at) >= settings.monitor.smartInterval * 1000) smart = await readSmartSnapshot($, settings)
        // An ssh round trip, not a stat: an unreachable host is read again only after the interval too.
        if (!remoteReadingFresh(remote, settings, remoteInterval, t0)) remote = await readRemoteSnapshot($, settings)
        const reuse = { smart, ...(remote && { remote }) }
        let report = await collectHealth({ settings, $, ...reuse, held: tracker.held() })
        const fixes = await repairLinks(settings, repair, report, repaired, log)
        repairsTotal += fixes
        if (fixes) report = await collectHealth({ settings, $, ...reuse, held: tracker.held() })
        const alerts = tracker.observe(report.problems, new Date())
        for (const alert of alerts) await deliver(alert, settings, $, log)
        alertsTotal += alerts.length
        await writeHealth(settings, report)
        const state: MonitorState = { pid: process.pid, started_at: started, interval_seconds: intervalSeconds, last_cycle_at: new Date().toISOString(), conditions: tracker.conditions(), smart, remote: remote ?? null }
        await publish(monitorStateFile(settings), JSON.stringify(state, null, 2) + '\n')
        await publish(settings.monitor.prometheusFile, metricsText(report, { cycle_seconds: (Date.now() - t0) / 1000, alerts_total: alertsTotal, repairs_total: repairsTotal }))
        exit = PLUGIN_EXIT[report.overall]
        if (once) process.stdout.write(`${report.overall.toUpperCase()}: ${report.problems.length ? report.problems.map((p) => `${p.severity} ${p.message}`).join('; ') : 'no problems'}\n`)
      } catch (err) {
        exit = PLUGIN_EXIT.unknown
        log.event('cycle-failed', { error: (err as Error).message })
        say(`this cycle failed: ${(err as Error).message}; trying again in ${intervalSeconds} s`)
      }
      if (once) break
      await sleep(Math.max(0, t0 + intervalSeconds * 1000 - Date.now()), undefined, { signal: stop.signal }).catch(() => {})
    } while (!stop.signal.aborted)
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    log.event('monitor-stop', { alerts: alertsTotal, repairs: repairsTotal })
    await lock.release()
  }
  return once ? exit : PLUGIN_EXIT.ok
}

/**
 * Repairs links that went missing, wrong or broken, once per breakage: a link repaired before is left to
 * the alerts until it has been ok for `consecutive` samples, so a repair that does not hold never loops.
 * Returns how many links the repair fixed.
 */
async function repairLinks(settings: Settings, repair: MonitorOptions['repair'], report: HealthReport, repaired: Map<string, number>, log: RunLog): Promise<number> {
  for (const link of report.symlinks) {
    if (link.failing || !repaired.has(link.path)) continue
    const okStreak = repaired.get(link.path)! + 1
    if (okStreak >= settings.monitor.consecutive) repaired.delete(link.path)
    else repaired.set(link.path, okStreak)
  }
  const due = report.symlinks.filter((l) => l.failing && REPAIRABLE.has(l.verdict) && !repaired.has(l.path))
  if (due.length === 0) return 0
  // Every link leads into the models root: toward an unmounted or swapped disk, the roots alert is the
  // news, and a repair (which the runner would refuse) is not tried, so it cannot count as one that failed.
  if (report.problems.some((p) => p.check === 'roots' && p.key !== 'roots:backup')) {
    log.event('repair-withheld', { paths: due.map((l) => l.path), reason: 'models root not marked' })
    return 0
  }
  try {
    await repair({ ...settings, symlinkForceRecreate: false })
  } catch (err) {
    if (!(err instanceof LockHeldError)) throw err
    say(`repair of ${due.map((l) => l.path).join(', ')} waits: another citadel run holds the lock (pid ${err.holder.pid})`)
    return 0
  }
  const after = new Map((await inspectLinks(settings)).map((s) => [s.path, s]))
  let fixed = 0
  for (const link of due) {
    repaired.set(link.path, 0)
    const now = after.get(link.path)
    const held = now !== undefined && !now.failing
    if (held) fixed++
    log.event('repair', { path: link.path, was: link.verdict, reason: link.reason, ok: held, now: now?.verdict })
    say(held ? `repaired ${link.path} (was ${link.verdict}: ${link.reason})` : `repair of ${link.path} did not hold (${now?.verdict}: ${now?.reason}); alerting instead`)
  }
  return fixed
}
