// The health report: every check in one document, the problems they found and the overall verdict.
// health-check prints it, the health-report task and the monitor write it to <app root>/state/health.json.
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { backupHealth, type BackupHealth } from '../backup/health.ts'
import { z } from 'zod'
import { CHECKS, overall, type Condition, type Problem, type Severity } from '../core/problems.ts'
import type { Settings } from '../infra/config.ts'
import { atomicWriteFile } from '../infra/fsx.ts'
import { healthFile, perfHistoryFile } from '../infra/layout.ts'
import { inspectLinks, linkHealth, type LinkHealth } from '../links/links.ts'
import { inspectRoots, type RootRole, type RootVerdict } from '../core/marks.ts'
import { parseFile } from '../infra/schemas.ts'
import { lastPerfResults, type PerfResult } from './perf.ts'
import { smartHealth, smartProblems, type SmartReport } from './smart.ts'
import { filesystemUsage, type FilesystemUsage } from './usage.ts'

export interface SmartSnapshot { disks: SmartReport[]; notes: string[]; read_at: string }

export interface HealthReport {
  generated_at: string
  host: string
  overall: Severity
  /** Whether each disk root carries the mark citadel laid out: an unmounted or swapped disk is critical. */
  roots: RootHealth[]
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

export interface RootHealth { role: RootRole; setting: string; path: string; verdict: RootVerdict; reason: string; mark: string | null; fs_uuid: string | null }

/** Exit status as monitoring plugins give it (Nagios, Icinga, monit `check program`). */

export const linkProblems = (links: LinkHealth[]): Problem[] =>
  links.filter((l) => l.failing).map((l) => ({ check: 'symlinks', severity: 'critical', key: `symlinks:${l.path}`, message: `${l.path}: ${l.verdict} (${l.reason})` }))

/** A registered model vLLM cannot load: its directory is missing or is not a directory. */
export const modelProblems = (links: LinkHealth[]): Problem[] =>
  links.filter((l) => l.model !== null && l.target_kind !== 'directory').map((l) => ({
    check: 'models', severity: 'warning', key: `models:${l.model}`,
    message: `vLLM cannot load ${l.model}: ${l.expected} ${l.target_kind === 'missing' ? 'is missing' : l.target_kind === 'file' ? 'is a file' : 'is not a directory'}`,
  }))

/** The marks of the disk roots; a record of them that cannot be read is itself a critical problem. */
async function rootHealth($: Shell, settings: Settings): Promise<{ roots: RootHealth[]; problems: Problem[] }> {
  try {
    const roots = (await inspectRoots($, settings)).map((r) => ({ role: r.role, setting: r.setting, path: r.path, verdict: r.verdict, reason: r.reason, mark: r.mark?.id ?? null, fs_uuid: r.fs_uuid }))
    return { roots, problems: roots.filter((r) => r.verdict !== 'ok').map((r) => ({ check: 'roots', severity: 'critical', key: `roots:${r.role}`, message: r.reason })) }
  } catch (err) {
    return { roots: [], problems: [{ check: 'roots', severity: 'critical', key: 'roots:record', message: (err as Error).message }] }
  }
}

/** The last perf figures; a history that cannot be read is a warning, not a reason to give no report. */
async function perfHealth(settings: Settings): Promise<{ results: PerfResult[]; problems: Problem[] }> {
  try {
    return { results: await lastPerfResults(perfHistoryFile(settings)), problems: [] }
  } catch (err) {
    return { results: [], problems: [{ check: 'perf', severity: 'warning', key: 'perf:history', message: `${(err as Error).message}; move it aside and the next citadel perf starts a new history` }] }
  }
}

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
  const [roots, usage, links, smart, backups, perf] = await Promise.all([
    rootHealth(opts.$, settings),
    filesystemUsage(settings, opts.held),
    inspectLinks(settings).then(linkHealth),
    opts.smart ?? readSmartSnapshot(opts.$, settings, opts.signal),
    backupHealth(settings),
    perfHealth(settings),
  ])
  const problems = [...roots.problems, ...usage.problems, ...linkProblems(links), ...modelProblems(links), ...smartProblems(smart.disks), ...backups.problems, ...perf.problems]
  return {
    generated_at: new Date().toISOString(),
    host: os.hostname(),
    overall: overall(problems),
    roots: roots.roots,
    filesystems: usage.filesystems,
    symlinks: links,
    smart: smart.disks,
    smart_read_at: smart.read_at,
    backups,
    perf: { results: perf.results },
    notes: smart.notes,
    problems,
  }
}

/** Replaces `file` atomically with `content`, creating its directory first: a reader sees the old or the new. */
export async function publish(file: string, content: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true })
  await atomicWriteFile(file, content)
}

const severity = z.enum(['ok', 'warning', 'critical'])
const nullableNumber = z.number().nullable()
const smartReport = z.object({
  device: z.string(), verdict: z.enum(['healthy', 'warning', 'failing', 'unavailable']), reasons: z.array(z.string()),
  model: z.string().nullable(), serial: z.string().nullable(), protocol: z.string().nullable(),
  temperature_celsius: nullableNumber, power_on_hours: nullableNumber, nvme_percentage_used: nullableNumber,
  counts: z.record(z.string(), z.number()), exit_status: nullableNumber, roots: z.array(z.string()),
})
const condition = z.object({ check: z.enum(CHECKS), severity, since: z.string(), message: z.string() }) satisfies z.ZodType<Condition>
/** The parts of health.json that are read back: status reuses the monitor's SMART reading, a monitor its conditions. */
const storedHealth = z.looseObject({
  generated_at: z.string().optional(),
  smart: z.array(smartReport).optional(),
  smart_read_at: z.string().optional(),
  notes: z.array(z.string()).optional(),
  monitor: z.looseObject({ pid: z.number(), conditions: z.record(z.string(), condition).optional() }).optional(),
})
/** health.json as its last writer left it; a monitor adds its own section. */
export type StoredHealth = z.infer<typeof storedHealth>

/** The stored report, or null when there is none; throws one line naming the file when it is not one. */
export function readStoredHealth(settings: Settings): StoredHealth | null {
  const file = healthFile(settings)
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw new Error(`cannot read ${file}: ${(err as Error).message}`)
  }
  return parseFile(storedHealth, file, text, 'a health report citadel wrote')
}

export const writeHealth = (settings: Settings, report: object) => publish(healthFile(settings), JSON.stringify(report, null, 2) + '\n')
