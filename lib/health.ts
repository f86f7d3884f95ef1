// The health report: every check in one document, the problems they found and the overall verdict.
// health-check prints it, the health-report task and the monitor write it to <app root>/state/health.json.
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { backupHealth, type BackupHealth } from './backup-status.ts'
import { overall, type Problem, type Severity } from './checks.ts'
import type { Settings } from './config.ts'
import { atomicWriteFile } from './fsx.ts'
import { healthFile, perfHistoryFile } from './layout.ts'
import { inspectLinks, linkHealth, type LinkHealth } from './links.ts'
import type { Condition } from './monitor.ts'
import { lastPerfResults, type PerfResult } from './perf.ts'
import { smartHealth, smartProblems, type SmartReport } from './smart.ts'
import { filesystemUsage, type FilesystemUsage } from './usage.ts'

export interface SmartSnapshot { disks: SmartReport[]; notes: string[]; read_at: string }

export interface HealthReport {
  generated_at: string
  host: string
  overall: Severity
  filesystems: FilesystemUsage[]
  symlinks: LinkHealth[]
  smart: SmartReport[]
  /** When the SMART data was read: the monitor reads disks every STORAGE_MONITOR_SMART_INTERVAL only. */
  smart_read_at: string
  backups: BackupHealth
  perf: { results: PerfResult[] }
  /** Facts worth a line that are not problems: a root on tmpfs has no SMART data, say. */
  notes: string[]
  problems: Problem[]
}

/** Exit status as monitoring plugins give it (Nagios, Icinga, monit `check program`). */
export const PLUGIN_EXIT: Record<Severity | 'unknown', number> = { ok: 0, warning: 1, critical: 2, unknown: 3 }

export const linkProblems = (links: LinkHealth[]): Problem[] =>
  links.filter((l) => l.failing).map((l) => ({ check: 'symlinks', severity: 'critical', key: `symlinks:${l.path}`, message: `${l.path}: ${l.verdict} (${l.reason})` }))

export async function readSmartSnapshot($: Shell, settings: Settings, signal?: AbortSignal): Promise<SmartSnapshot> {
  return { ...(await smartHealth($, settings, signal)), read_at: new Date().toISOString() }
}

export interface CollectOptions {
  settings: Settings
  $: Shell
  signal?: AbortSignal
  /** Reuse these SMART readings instead of reading the disks now. */
  smart?: SmartSnapshot
  /** Severities the monitor currently holds, by problem key: usage verdicts clear with hysteresis. */
  held?: ReadonlyMap<string, Severity>
}

/** Runs every check (perf only from its stored history) and puts the results in one report. */
export async function collectHealth(opts: CollectOptions): Promise<HealthReport> {
  const { settings } = opts
  const [usage, links, smart, backups, perf] = await Promise.all([
    filesystemUsage(settings, opts.held),
    inspectLinks(settings).then(linkHealth),
    opts.smart ?? readSmartSnapshot(opts.$, settings, opts.signal),
    backupHealth(settings),
    lastPerfResults(perfHistoryFile(settings)),
  ])
  const problems = [...usage.problems, ...linkProblems(links), ...smartProblems(smart.disks), ...backups.problems]
  return {
    generated_at: new Date().toISOString(),
    host: os.hostname(),
    overall: overall(problems),
    filesystems: usage.filesystems,
    symlinks: links,
    smart: smart.disks,
    smart_read_at: smart.read_at,
    backups,
    perf: { results: perf },
    notes: smart.notes,
    problems,
  }
}

/** Replaces `file` atomically with `content`, creating its directory first: a reader sees the old or the new. */
export async function publish(file: string, content: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true })
  await atomicWriteFile(file, content)
}

/** health.json as its last writer left it; a monitor adds its own section. */
export interface StoredHealth extends Partial<HealthReport> { monitor?: { pid: number; conditions?: Record<string, Condition> } }

/** The stored report, or null when there is none or it cannot be read. */
export function readStoredHealth(settings: Settings): StoredHealth | null {
  try {
    return JSON.parse(readFileSync(healthFile(settings), 'utf8')) as StoredHealth
  } catch {
    return null
  }
}

export const writeHealth = (settings: Settings, report: object) => publish(healthFile(settings), JSON.stringify(report, null, 2) + '\n')
