// The health report as a Prometheus textfile for node_exporter's textfile collector. Only what
// node_exporter lacks: verdicts, SMART readings, backup age, perf figures. Base units throughout.
import { CHECKS, overall, rank } from '../core/problems.ts'
import type { HealthReport } from '../health/health.ts'

type Labels = Record<string, string>
interface Family { name: string; help: string; type: 'gauge' | 'counter'; samples: { labels: Labels; value: number }[] }

/** Label values may hold anything but these three, which the text format escapes. */
const escape = (v: string) => v.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n')

function render(families: Family[]): string {
  const lines: string[] = []
  // A family without samples (no SMART reading yet, no fio run) is still declared: every file names every
  // metric citadel writes, so dashboards and alert rules can be checked against any one of them.
  for (const f of families) {
    lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`)
    for (const { labels, value } of f.samples) {
      const pairs = Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(',')
      lines.push(`${f.name}${pairs ? `{${pairs}}` : ''} ${Number.isFinite(value) ? value : 'NaN'}`)
    }
  }
  return lines.join('\n') + '\n'
}

const SMART_VERDICTS = ['healthy', 'warning', 'failing', 'unavailable'] as const
const LINK_VERDICTS = ['ok', 'missing', 'wrong-target', 'broken', 'not-a-link'] as const
const seconds = (iso: string) => Date.parse(iso) / 1000
type RestoreSummary = NonNullable<HealthReport['backups']['restores']['drill']>

export interface MonitorFigures { cycle_seconds: number; alerts_total: number; repairs_total: number }

export function metricsText(report: HealthReport, monitor?: MonitorFigures): string {
  const gauge = (name: string, help: string, samples: Family['samples']): Family => ({ name, help, type: 'gauge', samples })
  const { backups, backups_remote: remote } = report
  // No sample while BACKUP_REMOTE is unset, or for what a reading could not tell: unknown is not zero.
  const remoteSample = (value: (r: NonNullable<typeof remote>) => number | null | undefined) => {
    const v = remote ? value(remote) : null
    return v === null || v === undefined ? [] : [{ labels: {}, value: v }]
  }
  const smartNumber = (key: 'temperature_celsius' | 'power_on_hours' | 'nvme_percentage_used', scale: number) =>
    report.smart.filter((d) => d[key] !== null).map((d) => ({ labels: { device: d.device }, value: d[key]! * scale }))
  // None yet: no sample, so an alert on the drill's age fires on absent() rather than on a made-up zero.
  const restored = (r: RestoreSummary | null, value: (r: RestoreSummary) => number) => (r ? [{ labels: {}, value: value(r) }] : [])
  const { aliases, partials } = report.models
  // Per alias, only where there is a figure: an alias never verified has no sample, not a made-up zero.
  const perAlias = (value: (a: (typeof aliases)[number]) => number | null | undefined) =>
    aliases.flatMap((a) => { const v = value(a); return v === null || v === undefined ? [] : [{ labels: { alias: a.alias, dir: a.dir }, value: v }] })
  const oldestPartial = partials.reduce<number | null>((oldest, p) => Math.max(oldest ?? 0, p.age_seconds), null)
  const perf = report.perf.results.flatMap((r) => Object.entries(r.jobs).map(([job, j]) => ({ r, job, j })))
  const families: Family[] = [
    gauge('citadel_health_severity', 'Verdict of each check and overall: 0 ok, 1 warning, 2 critical', [
      { labels: { check: 'overall' }, value: rank(report.overall) },
      ...CHECKS.map((check) => ({ labels: { check }, value: rank(overall(report.problems.filter((p) => p.check === check))) })),
    ]),
    gauge('citadel_health_problems', 'Problems the last health check found, by severity', (['warning', 'critical'] as const).map((severity) => ({ labels: { severity }, value: report.problems.filter((p) => p.severity === severity).length }))),
    gauge('citadel_health_generated_timestamp_seconds', 'When the health report was made (Unix time)', [{ labels: {}, value: seconds(report.generated_at) }]),
    gauge('citadel_root_marked', 'Whether the disk root carries the mark citadel laid out on it: 0 means not mounted or another disk (critical)', report.roots.map((r) => ({ labels: { root: r.role, path: r.path }, value: r.verdict === 'ok' ? 1 : 0 }))),
    gauge('citadel_model_loadable', 'Whether a registered model\'s directory is there for vLLM to load (0 is a warning)', report.symlinks.filter((l) => l.model !== null).map((l) => ({ labels: { model: l.model!, path: l.expected }, value: l.target_kind === 'directory' ? 1 : 0 }))),
    gauge('citadel_model_last_verification_timestamp_seconds', 'When model verify last ran over the live directory of each alias (Unix time)', perAlias((a) => a.last_verification && seconds(a.last_verification.at))),
    gauge('citadel_model_last_verification_success', 'Whether the last model verify of the live directory of each alias passed (0 is critical: restore the file named by citadel health-check)', perAlias((a) => a.last_verification && (a.last_verification.ok ? 1 : 0))),
    gauge('citadel_model_files_failing', 'Files the last model verify of the live directory of each alias found wrong', perAlias((a) => a.last_verification && new Set(a.last_verification.problems.map((p) => p.path)).size)),
    gauge('citadel_model_version_age_seconds', 'How long the live version of each alias has served', perAlias((a) => a.live_since?.age_seconds)),
    gauge('citadel_model_downloads_partial', 'Unfinished downloads in downloads/ (model fetch resumes them)', [{ labels: {}, value: partials.length }]),
    gauge('citadel_model_downloads_partial_oldest_age_seconds', 'Time since the oldest unfinished download was last written to', oldestPartial === null ? [] : [{ labels: {}, value: oldestPartial }]),
    gauge('citadel_model_inactive_bytes', 'Bytes of the model directories in archive/ and in staging/ (STORAGE_MONITOR_ARCHIVE_WARNING bounds their share of the model disk)', [
      { labels: { place: 'archive' }, value: report.models.archive_bytes },
      { labels: { place: 'staging' }, value: report.models.staging_bytes },
    ]),
    gauge('citadel_filesystem_severity', 'Usage verdict per filesystem holding a citadel root: 0 ok, 1 warning, 2 critical', report.filesystems.map((f) => ({ labels: { mountpoint: f.mount, roots: f.roots.map((r) => r.name).join(',') }, value: rank(f.severity) }))),
    gauge('citadel_symlink_verdict', 'Verdict of each expected link: 1 for its current verdict', report.symlinks.flatMap((l) => LINK_VERDICTS.map((verdict) => ({ labels: { path: l.path, verdict }, value: l.verdict === verdict ? 1 : 0 })))),
    gauge('citadel_symlink_failing', 'Whether the link is a problem (a model not downloaded yet is not)', report.symlinks.map((l) => ({ labels: { path: l.path }, value: l.failing ? 1 : 0 }))),
    gauge('citadel_smart_verdict', 'SMART verdict of each disk: 1 for its current verdict', report.smart.flatMap((d) => SMART_VERDICTS.map((verdict) => ({ labels: { device: d.device, verdict }, value: d.verdict === verdict ? 1 : 0 })))),
    gauge('citadel_smart_temperature_celsius', 'Drive temperature as SMART reports it', smartNumber('temperature_celsius', 1)),
    gauge('citadel_smart_power_on_seconds', 'Power-on time as SMART reports it', smartNumber('power_on_hours', 3600)),
    gauge('citadel_smart_nvme_wear_ratio', 'NVMe percentage used (endurance consumed) as a ratio; 1 is the rated life', smartNumber('nvme_percentage_used', 0.01)),
    gauge('citadel_smart_read_timestamp_seconds', 'When the SMART data was read (Unix time)', [{ labels: {}, value: seconds(report.smart_read_at) }]),
    gauge('citadel_backup_complete', 'Complete backups in the store', [{ labels: {}, value: backups.complete }]),
    gauge('citadel_backup_newest_timestamp_seconds', 'Creation time of the newest complete backup (Unix time)', backups.newest ? [{ labels: {}, value: seconds(backups.newest.created) }] : []),
    gauge('citadel_backup_newest_age_seconds', 'Age of the newest complete backup', backups.newest ? [{ labels: {}, value: backups.newest.age_seconds }] : []),
    gauge('citadel_backup_last_verification_timestamp_seconds', 'Time of the most recent backup verification (Unix time)', backups.last_verification ? [{ labels: {}, value: seconds(backups.last_verification.at) }] : []),
    gauge('citadel_backup_last_verification_success', 'Whether the most recent backup verification passed', backups.last_verification ? [{ labels: {}, value: backups.last_verification.ok ? 1 : 0 }] : []),
    gauge('citadel_backup_last_drill_timestamp_seconds', 'When the last successful restore drill started (Unix time)', restored(backups.restores.drill, (r) => seconds(r.at))),
    gauge('citadel_backup_last_drill_duration_seconds', 'How long the last successful restore drill took', restored(backups.restores.drill, (r) => r.duration_ms / 1000)),
    gauge('citadel_backup_last_restore_timestamp_seconds', 'When the last successful restore (not a drill) started (Unix time)', restored(backups.restores.restore, (r) => seconds(r.at))),
    gauge('citadel_backup_last_restore_duration_seconds', 'How long the last successful restore (not a drill) took', restored(backups.restores.restore, (r) => r.duration_ms / 1000)),
    gauge('citadel_backup_remote_reachable', 'Whether the last reading reached the remote backup store (BACKUP_REMOTE) over ssh', remoteSample((r) => (r.reachable ? 1 : 0))),
    gauge('citadel_backup_remote_complete', 'Complete backups in the remote store', remoteSample((r) => r.complete)),
    gauge('citadel_backup_remote_newest_timestamp_seconds', 'Creation time of the newest complete remote backup (Unix time)', remoteSample((r) => r.newest && seconds(r.newest.created))),
    gauge('citadel_backup_remote_newest_age_seconds', 'Age of the newest complete remote backup', remoteSample((r) => r.newest?.age_seconds)),
    gauge('citadel_backup_remote_last_verification_timestamp_seconds', 'Time of the most recent remote backup verification (Unix time)', remoteSample((r) => r.last_verification && seconds(r.last_verification.at))),
    gauge('citadel_backup_remote_last_verification_success', 'Whether the most recent remote backup verification passed', remoteSample((r) => r.last_verification && (r.last_verification.ok ? 1 : 0))),
    gauge('citadel_backup_remote_free_bytes', "Free space on the remote store's disk", remoteSample((r) => r.free_bytes)),
    gauge('citadel_backup_remote_checked_timestamp_seconds', 'When the remote store was last read (Unix time); the monitor reads it every STORAGE_MONITOR_REMOTE_INTERVAL', remoteSample((r) => seconds(r.checked_at))),
    gauge('citadel_perf_throughput_bytes_per_second', 'Throughput of the last fio run per job', perf.map(({ r, job, j }) => ({ labels: { path: r.path, job }, value: j.mb_s * 1e6 }))),
    gauge('citadel_perf_iops', 'I/O operations per second of the last fio run per job', perf.map(({ r, job, j }) => ({ labels: { path: r.path, job }, value: j.iops }))),
    gauge('citadel_perf_p99_latency_seconds', '99th percentile completion latency of the last fio run per job', perf.filter(({ j }) => j.p99_latency_ms !== null).map(({ r, job, j }) => ({ labels: { path: r.path, job }, value: j.p99_latency_ms! / 1000 }))),
    gauge('citadel_perf_timestamp_seconds', 'When the last fio run per path finished (Unix time)', report.perf.results.map((r) => ({ labels: { path: r.path }, value: seconds(r.at) }))),
  ]
  if (monitor) {
    families.push(
      gauge('citadel_monitor_cycle_duration_seconds', 'How long the last monitor cycle took', [{ labels: {}, value: monitor.cycle_seconds }]),
      { name: 'citadel_monitor_alerts_total', help: 'Alerts the monitor raised since it started', type: 'counter', samples: [{ labels: {}, value: monitor.alerts_total }] },
      { name: 'citadel_monitor_repairs_total', help: 'Link repairs the monitor made since it started', type: 'counter', samples: [{ labels: {}, value: monitor.repairs_total }] },
    )
  }
  return render(families)
}
