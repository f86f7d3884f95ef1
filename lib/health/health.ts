// The health report: every check in one document, the problems they found and the overall verdict.
// health-check prints it, the health-report task and the monitor write it to <app root>/state/health.json.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { z } from 'zod'
import { backupHealth, backupHealthSchema, readRemoteHealth, remoteHealthAt, remoteHealthSchema, remoteProblems, type RemoteHealth } from '../backup/health.ts'
import { remoteLabel } from '../backup/ssh-store.ts'
import { CHECKS, overall, problemSchema, severitySchema, type Condition, type Problem, type Severity } from '../core/problems.ts'
import type { Settings } from '../infra/config.ts'
import { atomicWriteFile } from '../infra/fsx.ts'
import { healthFile, perfHistoryFile } from '../infra/layout.ts'
import { inspectLinks, linkHealth, type LinkHealth } from '../links/links.ts'
import { inspectRoots, type RootRole, type RootVerdict } from '../core/marks.ts'
import { modelsHealth, modelsHealthSchema } from './models.ts'
import { lastPerfResults, perfResultSchema, type PerfResult } from './perf.ts'
import { smartHealth, smartProblems, type SmartReport } from './smart.ts'
import { filesystemUsage, type FilesystemUsage } from './usage.ts'

export interface SmartSnapshot { disks: SmartReport[]; notes: string[]; read_at: string }

const nullableNumber = z.number().nullable()

const rootHealthSchema = z.strictObject({
  role: z.enum(['models', 'backup']) satisfies z.ZodType<RootRole>,
  setting: z.string().describe('the setting that names the root'),
  path: z.string(),
  verdict: (z.enum(['ok', 'unmarked', 'foreign']) satisfies z.ZodType<RootVerdict>).describe("unmarked: no mark (the disk is not mounted?); foreign: another filesystem's, app root's or role's mark"),
  reason: z.string(),
  mark: z.string().nullable().describe("the mark's id"),
  fs_uuid: z.string().nullable(),
})
type RootHealth = z.infer<typeof rootHealthSchema>

const filesystemSchema = z.strictObject({
  mount: z.string(),
  source: z.string(),
  fstype: z.string(),
  roots: z.array(z.strictObject({ name: z.enum(['models', 'backup', 'app']), path: z.string() })),
  size_bytes: z.number(),
  used_bytes: z.number(),
  available_bytes: z.number().describe('what non-root users can still write'),
  used_ratio: z.number().describe("used / (used + available), as df computes it"),
  inodes_total: z.number(),
  inodes_used: z.number(),
  inodes_free: z.number(),
  inodes_used_ratio: nullableNumber.describe('null where the filesystem does not count inodes (btrfs)'),
  disk: severitySchema,
  inodes: severitySchema,
  severity: severitySchema,
  reasons: z.array(z.string()),
}) satisfies z.ZodType<FilesystemUsage>

const linkSchema = z.strictObject({
  path: z.string(),
  expected: z.string(),
  actual: z.string().nullable(),
  verdict: z.enum(['ok', 'missing', 'wrong-target', 'broken', 'not-a-link']),
  failing: z.boolean().describe('false for a link whose model is not downloaded yet'),
  reason: z.string(),
  model: z.string().nullable().describe('the MODEL_REGISTRY alias of a model link'),
  target_kind: z.enum(['directory', 'file', 'missing', 'other']),
}) satisfies z.ZodType<LinkHealth>

const smartReportShape = {
  device: z.string(), verdict: z.enum(['healthy', 'warning', 'failing', 'unavailable']), reasons: z.array(z.string()),
  model: z.string().nullable(), serial: z.string().nullable(), protocol: z.string().nullable(),
  temperature_celsius: nullableNumber, power_on_hours: nullableNumber, nvme_percentage_used: nullableNumber,
  counts: z.record(z.string(), z.number()).describe('the raw counts the verdict used, e.g. reallocated_sectors'),
  exit_status: nullableNumber.describe("smartctl's exit status"),
  roots: z.array(z.string()).describe('the citadel roots on this disk'),
}
/** A disk's SMART verdict as citadel stores it (the monitor keeps its last reading too). */
export const smartReportSchema = z.strictObject(smartReportShape) satisfies z.ZodType<SmartReport>

const conditionShape = { check: z.enum(CHECKS), severity: severitySchema, since: z.string(), message: z.string() }
export const conditionSchema = z.strictObject(conditionShape) satisfies z.ZodType<Condition>

/** What health-check --json prints and the health-report task writes to <app root>/state/health.json. */
export const healthReportSchema = z.strictObject({
  generated_at: z.iso.datetime(),
  host: z.string(),
  overall: severitySchema.describe('the worst severity among problems'),
  roots: z.array(rootHealthSchema).describe('whether each disk root carries the mark citadel laid out'),
  filesystems: z.array(filesystemSchema).describe('one per filesystem holding a root (two roots on one filesystem: one entry listing both)'),
  symlinks: z.array(linkSchema).describe('every expected link with its verdict'),
  smart: z.array(smartReportSchema).describe('one per physical disk under the model and backup roots'),
  smart_read_at: z.iso.datetime().describe('when SMART was read: the monitor reads it every STORAGE_MONITOR_SMART_INTERVAL only'),
  backups: backupHealthSchema,
  backups_remote: remoteHealthSchema.nullable().describe('the remote store BACKUP_REMOTE names, read over ssh (by the monitor every STORAGE_MONITOR_REMOTE_INTERVAL); null when BACKUP_REMOTE is unset'),
  perf: z.strictObject({ results: z.array(perfResultSchema).describe('the last citadel perf result per path') }),
  models: modelsHealthSchema.describe('each alias with its live version and last model verify, unfinished downloads, and what archive/ and staging/ take of the model disk'),
  notes: z.array(z.string()).describe('facts that are not problems, e.g. a root on tmpfs has no SMART data'),
  problems: z.array(problemSchema),
})

export type HealthReport = z.infer<typeof healthReportSchema>

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

export type { RemoteHealth } from '../backup/health.ts'
export { remoteHealthSchema } from '../backup/health.ts'

/** A reading of BACKUP_REMOTE now, or null when it is unset. */
export const readRemoteSnapshot = ($: Shell, settings: Settings): Promise<RemoteHealth | null> =>
  settings.backup.remote ? readRemoteHealth($, settings, settings.backup.remote) : Promise.resolve(null)

/** Whether a reading kept from before is of the store BACKUP_REMOTE names now, and younger than `maxAgeS`. */
export const remoteReadingFresh = (reading: RemoteHealth | null | undefined, settings: Settings, maxAgeS: number, now = Date.now()): reading is RemoteHealth =>
  !!reading && !!settings.backup.remote && reading.store === remoteLabel(settings.backup.remote) && now - Date.parse(reading.checked_at) < maxAgeS * 1000

export interface CollectOptions {
  settings: Settings
  $: Shell
  signal?: AbortSignal
  /** Reuse these SMART readings instead of reading the disks now. */
  smart?: SmartSnapshot
  /** Reuse this reading of the remote store instead of reading it now (ssh). */
  remote?: RemoteHealth
  /** Severities the monitor currently holds, by problem key: usage verdicts clear with hysteresis. */
  held?: ReadonlyMap<string, Severity>
}

/** Runs every check (perf only from its stored history) and puts the results in one report. */
export async function collectHealth(opts: CollectOptions): Promise<HealthReport> {
  const { settings } = opts
  const [roots, usage, links, smart, backups, remote, perf, models] = await Promise.all([
    rootHealth(opts.$, settings),
    filesystemUsage(settings, opts.held),
    inspectLinks(settings).then(linkHealth),
    opts.smart ?? readSmartSnapshot(opts.$, settings, opts.signal),
    backupHealth(settings),
    opts.remote ?? readRemoteSnapshot(opts.$, settings),
    perfHealth(settings),
    modelsHealth(settings),
  ])
  const now = new Date()
  const remoteNow = remote && remoteHealthAt(remote, now)
  const problems = [...roots.problems, ...usage.problems, ...linkProblems(links), ...modelProblems(links), ...smartProblems(smart.disks), ...backups.problems, ...(remoteNow ? remoteProblems(remoteNow, settings) : []), ...perf.problems, ...models.problems]
  return {
    generated_at: now.toISOString(),
    host: os.hostname(),
    overall: overall(problems),
    roots: roots.roots,
    filesystems: usage.filesystems,
    symlinks: links,
    smart: smart.disks,
    smart_read_at: smart.read_at,
    backups,
    backups_remote: remoteNow,
    perf: { results: perf.results },
    models,
    notes: smart.notes,
    problems,
  }
}

/** Replaces `file` atomically with `content`, creating its directory first: a reader sees the old or the new. */
export async function publish(file: string, content: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true })
  await atomicWriteFile(file, content)
}

/** The one writer of health.json: the health-report task and the monitor both publish through it, the same report. */
export const writeHealth = (settings: Settings, report: HealthReport) => publish(healthFile(settings), JSON.stringify(report, null, 2) + '\n')
