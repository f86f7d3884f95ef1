// The health report: every check in one document, the problems they found and the overall verdict.
// health-check prints it, the health-report task and the monitor write it to <app root>/state/health.json.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { backupHealth, type BackupHealth } from './backup-status.ts'
import { overall, type Problem, type Severity } from './checks.ts'
import type { Settings } from './config.ts'
import { atomicWriteFile } from './fsx.ts'
import { healthFile, perfHistoryFile } from './layout.ts'
import { inspectLinks, type LinkState } from './links.ts'
import { lastPerfResults, type PerfResult } from './perf.ts'
import { smartHealth, smartProblems, type SmartReport } from './smart.ts'
import { filesystemUsage, type FilesystemUsage } from './usage.ts'

export interface LinkHealth { path: string; expected: string; actual: string | null; verdict: LinkState['verdict']; failing: boolean; reason: string; model: string | null }

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

export const linkHealth = (states: LinkState[]): LinkHealth[] =>
  states.map((s) => ({ path: s.path, expected: s.target, actual: s.actual, verdict: s.verdict, failing: s.failing, reason: s.reason, model: s.model ?? null }))

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

export const writeHealth = (settings: Settings, report: object) => publish(healthFile(settings), JSON.stringify(report, null, 2) + '\n')
