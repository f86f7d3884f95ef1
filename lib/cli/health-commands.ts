// `citadel health-check` (one document and a monitoring-plugin exit status) and `citadel status` (the
// morning glance). Both only look: no lock, nothing written, so they run beside a backup or the monitor.
import { PLUGIN_EXIT, START_EXIT } from '../core/exit.ts'
import path from 'node:path'
import { backupLine, remoteLine, restoreLine } from '../backup/health.ts'
import type { Settings } from '../infra/config.ts'
import { collectHealth, remoteReadingFresh, type HealthReport, type RemoteHealth, type SmartSnapshot } from '../health/health.ts'
import { healthDir } from '../infra/layout.ts'
import { liveHolder } from '../core/lock.ts'
import { MONITOR_LOCK, readMonitorState, type MonitorState } from '../monitor/monitor.ts'
import { makeShell } from '../infra/shell.ts'
import { MONITOR_UNIT, servicesState, type ServicesState } from '../systemd/units.ts'
import { bytes, count, duration, percent, table } from '../infra/format.ts'

const quietShell = () => makeShell(() => {})
const ago = (iso: string) => `${duration(Date.now() - Date.parse(iso))} ago`

/** First line as monitoring plugins print it, then one line per problem. */
function pluginText(report: HealthReport): string {
  const { problems } = report
  const head = `CITADEL ${report.overall.toUpperCase()} - ${problems.length ? count(problems.length, 'problem') : 'all checks ok'}`
  return [head, ...problems.map((p) => `${p.severity.padEnd(8)} ${p.check.padEnd(11)} ${p.message}`), ...report.notes.map((n) => `note     ${n}`)].join('\n') + '\n'
}

export async function healthCheck(settings: Settings, json: boolean): Promise<number> {
  let report: HealthReport
  try {
    report = await collectHealth({ settings, $: quietShell() })
  } catch (err) {
    // A check that cannot run is no verdict: monitoring systems read exit 3 as UNKNOWN.
    process.stdout.write(`CITADEL UNKNOWN - the checks could not run: ${(err as Error).message}\n`)
    return PLUGIN_EXIT.unknown
  }
  process.stdout.write(json ? JSON.stringify(report, null, 2) + '\n' : pluginText(report))
  return PLUGIN_EXIT[report.overall]
}

/** 20 cells of bar: what share of the filesystem is used, at a glance. */
const bar = (ratio: number) => {
  const full = Math.min(20, Math.round(ratio * 20))
  return `[${'#'.repeat(full)}${'.'.repeat(20 - full)}]`
}

export async function status(settings: Settings, json: boolean): Promise<number> {
  let stored: MonitorState | null = null
  try {
    stored = await readMonitorState(settings)
  } catch (err) {
    process.stderr.write(`citadel: warning: ${(err as Error).message}; status reads the disks itself\n`)
  }
  const holder = liveHolder(path.join(healthDir(settings), MONITOR_LOCK))
  // SMART as the running monitor last read it, while that reading is fresh; otherwise read the disks now
  // (smartctl -n standby never spins a sleeping disk up).
  const fresh = stored && Date.now() - Date.parse(stored.smart.read_at) < (settings.monitor.smartInterval + settings.monitor.checkInterval) * 1000
  const smart: SmartSnapshot | undefined = holder && fresh ? stored!.smart : undefined
  // The remote store likewise: the running monitor's last reading spares an ssh round trip while it is fresh.
  const kept = holder ? stored?.remote : undefined
  const remote: RemoteHealth | undefined = remoteReadingFresh(kept, settings, settings.monitor.remoteInterval + settings.monitor.checkInterval) ? kept : undefined
  const $ = quietShell()
  const [report, services] = await Promise.all([collectHealth({ settings, $, ...(smart && { smart }), ...(remote && { remote }) }), servicesState(settings, $)])
  const monitor = { running: holder !== null, pid: holder?.pid ?? null, last_cycle_at: holder ? (stored?.last_cycle_at ?? null) : null }
  if (json) {
    process.stdout.write(JSON.stringify({ ...report, monitor, services }, null, 2) + '\n')
    return 0
  }
  const out = [`citadel on ${report.host}: overall ${report.overall.toUpperCase()}${report.problems.length ? ` (${count(report.problems.length, 'problem')})` : ''}`, '']
  out.push(...table([
    ['FILESYSTEM', 'ROOTS', 'USAGE', '', 'SIZE', 'FREE', 'INODES', 'VERDICT'],
    ...report.filesystems.map((f) => [f.mount, f.roots.map((r) => r.name).join(','), bar(f.used_ratio), percent(f.used_ratio), bytes(f.size_bytes), bytes(f.available_bytes), percent(f.inodes_used_ratio), f.severity]),
  ]))
  out.push('', `roots    ${report.roots.length ? report.roots.map((r) => `${r.role} ${r.verdict === 'ok' ? 'marked' : r.verdict.toUpperCase()}`).join(', ') : 'UNKNOWN'}`)
  const failing = report.symlinks.filter((l) => l.failing)
  const waiting = report.symlinks.filter((l) => !l.failing && l.verdict !== 'ok')
  out.push(`links    ${report.symlinks.length - failing.length - waiting.length} ok${waiting.length ? `, ${waiting.length} without their model directory` : ''}${failing.length ? `, ${failing.length} FAILING` : ''}`)
  for (const l of failing) out.push(`         ${l.path}: ${l.verdict} (${l.reason})`)
  out.push(`backup   ${backupLine(report.backups)}`)
  out.push(`restore  ${restoreLine(report.backups)}`)
  if (report.backups_remote) out.push(`remote   ${remoteLine(report.backups_remote)}${remote ? ` (monitor, ${ago(remote.checked_at)})` : ''}`)
  const models = report.models.aliases.map(modelLine)
  out.push(`models   ${models[0] ?? 'no alias in MODEL_REGISTRY'}`, ...models.slice(1).map((line) => `         ${line}`))
  const disks = report.smart.map((d) => `${d.device} ${d.verdict}${d.temperature_celsius !== null ? ` ${d.temperature_celsius}°C` : ''}${d.verdict === 'healthy' ? '' : ` (${d.reasons[0] ?? ''})`}`)
  out.push(`smart    ${disks.length ? disks.join(', ') : 'no disk to read'}${smart ? ` (monitor, ${ago(smart.read_at)})` : ''}`)
  for (const note of report.notes) out.push(`         ${note}`)
  out.push(`monitor  ${holder ? `running, pid ${holder.pid}${monitor.last_cycle_at ? `, last cycle ${ago(monitor.last_cycle_at)}` : ''}` : 'not running'}`)
  out.push(`services ${servicesLine(services)}`)
  if (report.problems.length) out.push('', 'problems:', ...report.problems.map((p) => `  ${p.severity.padEnd(8)} ${p.message}`))
  process.stdout.write(out.join('\n') + '\n')
  return 0
}

const LIVE_SOURCE = { 'models.json': 'since its promote', link: 'by its link' } as const

/** One alias in status: its directory, how long it has been live, and its last model verify. */
function modelLine(a: HealthReport['models']['aliases'][number]): string {
  if (!a.present) return `${a.alias}: ${a.dir} not in active/ yet`
  const live = a.live_since ? `live ${duration(a.live_since.age_seconds * 1000)} (${LIVE_SOURCE[a.live_since.source]})` : 'live since unknown'
  const v = a.last_verification
  const verified = v ? `verified ${ago(v.at)} (${v.sample ? 'sample' : 'full'}): ${v.ok ? 'ok' : `FAILED, ${v.problems[0] ? `${v.problems[0].path} ${v.problems[0].detail}` : 'no detail kept'}`}` : 'never verified (citadel model verify)'
  return `${a.alias}: ${a.dir}, ${live}, ${verified}`
}

/** The systemd part of status in one line: the monitor service and when the timers fire next, or why not. */
function servicesLine(sv: ServicesState): string {
  const install = 'citadel run install-services installs them'
  if (sv.systemd === 'not running') return `systemd is not running; units ${sv.missing.length ? `not installed (${install})` : `installed in ${sv.dir}, not enabled`}`
  if (!sv.installed.includes(MONITOR_UNIT)) return `units not installed in ${sv.dir} (${install})`
  if (!sv.monitor) return sv.note ?? 'unknown'
  const next = (iso: string | null) => (iso ? `next in ${duration(Date.parse(iso) - Date.now())} (${iso.slice(0, 16).replace('T', ' ')} UTC)` : 'no next run')
  const timers = sv.timers.map((t) => `${t.unit.replace(/^citadel-|\.timer$/g, '')} ${t.active_state === 'active' ? next(t.next_elapse) : (t.active_state ?? 'unknown')}`)
  return [`${MONITOR_UNIT} ${sv.monitor.active_state ?? 'unknown'} (${sv.monitor.unit_file_state ?? 'unknown'})`, ...timers, ...(sv.note ? [sv.note] : [])].join('; ')
}

/** Exit codes of start-monitor; 2 and 3 keep their meaning from the rest of citadel. */

/**
 * `citadel start-monitor`: starts citadel-monitor.service where systemd runs and the unit is installed;
 * otherwise starts nothing and says how to run the monitor in the foreground.
 */
export async function startMonitor(settings: Settings): Promise<number> {
  const $ = quietShell()
  const holder = liveHolder(path.join(healthDir(settings), MONITOR_LOCK))
  const services = await servicesState(settings, $)
  if (services.systemd === 'running' && services.installed.includes(MONITOR_UNIT)) {
    if (holder && services.monitor?.main_pid === holder.pid) {
      process.stdout.write(`${MONITOR_UNIT} is already running: pid ${holder.pid}, since ${holder.started}\n`)
      return START_EXIT.started
    }
    if (holder) {
      // The service would only find the monitor lock taken, exit 3 and be restarted every 10 s.
      process.stderr.write(`citadel: a monitor started outside systemd already runs (pid ${holder.pid}, since ${holder.started}); stop it, then run citadel start-monitor again\n`)
      return START_EXIT.otherMonitor
    }
    const out = await $({ nothrow: true })`systemctl start ${MONITOR_UNIT}`
    if (out.exitCode !== 0) {
      process.stderr.write(`citadel: systemctl start ${MONITOR_UNIT} failed (exit ${out.exitCode}): ${out.stderr.trim() || 'no message'}; see journalctl -u ${MONITOR_UNIT}\n`)
      return START_EXIT.failed
    }
    process.stdout.write(`started ${MONITOR_UNIT}; follow it with journalctl -u ${MONITOR_UNIT} -f, or citadel status\n`)
    return START_EXIT.started
  }
  if (holder) {
    process.stdout.write(`a monitor already runs: pid ${holder.pid}, since ${holder.started}\n`)
    return START_EXIT.started
  }
  const why = services.systemd === 'running' ? `${MONITOR_UNIT} is not installed in ${services.dir}` : 'systemd is not running here'
  process.stdout.write(`${why}: nothing started. Run the monitor in the foreground with \`citadel monitor\` (in tmux, or under your\n` +
    `container's supervisor); where systemd runs, \`citadel run install-services\` installs and starts it as a service.\n`)
  return START_EXIT.notStarted
}
