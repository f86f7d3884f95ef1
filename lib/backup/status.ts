// The state of the backup store as one plain object: every complete backup with its age, size, the bytes
// only it holds and its last verification, the space left on the backup disk, and what needs attention.
// `backup status` prints it; monitoring reads the same object.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import type { Settings } from '../infra/config.ts'
import { backupsDir, byClock, chainOf, DATA, isEmptyBackup, latestDamaged, scanStore, storeMissing, walkTree, type Backup, type BackupType, type Store } from './store.ts'
import { problemSchema, type Problem } from '../core/problems.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { bytes, count, duration, table } from '../infra/format.ts'

export const DAY_MS = 86_400_000
/** The weekly playbook makes a new backup every 7 days; one day of slack before the newest counts as overdue. */
const OVERDUE_DAYS = 8

export interface BackupSummary {
  name: string
  type: BackupType
  /** The directory backed up: each source is its own chain. */
  source: string
  created: string
  age: string
  age_seconds: number
  files: number
  bytes: number
  /**
   * Bytes of files no other backup shares through a hard link: what removing this backup alone frees.
   * null for a remote store, whose inodes citadel does not walk.
   */
  unique_bytes: number | null
  last_verification: { at: string; rate: number; ok: boolean; problems: number } | null
  latest: boolean
}

export interface BackupStatus {
  store: string
  /** Oldest first. */
  backups: BackupSummary[]
  /** bytes as the backups list them; bytes_on_disk counts each file shared through hard links once. */
  totals: { backups: number; bytes: number; bytes_on_disk: number }
  disk: Disk
  latest: string | null
  partials: string[]
  damaged: { name: string; reason: string }[]
  warnings: string[]
}

const nonNegative = z.number().int().nonnegative()
const backupType = z.enum(['full', 'incremental']) satisfies z.ZodType<BackupType>

const backupSummarySchema = z.strictObject({
  name: z.string(),
  type: backupType,
  source: z.string().describe('the directory backed up: each source is its own chain'),
  created: z.iso.datetime(),
  age: z.string().describe('for people: "4h 12m"'),
  age_seconds: z.number().int(),
  files: nonNegative,
  bytes: nonNegative,
  unique_bytes: nonNegative.nullable().describe('bytes no other backup shares through a hard link: what removing this backup alone frees; null for the remote store'),
  last_verification: z.strictObject({ at: z.iso.datetime(), rate: z.number(), ok: z.boolean(), problems: nonNegative }).nullable(),
  latest: z.boolean(),
}) satisfies z.ZodType<BackupSummary>

/** What backup status (local or --remote) reports as its task's data. */
export const backupStatusSchema = z.strictObject({
  store: z.string(),
  backups: z.array(backupSummarySchema).describe('complete backups, oldest first'),
  totals: z.strictObject({ backups: nonNegative, bytes: nonNegative, bytes_on_disk: nonNegative.describe('each file shared through hard links counted once') }),
  disk: z.strictObject({ free_bytes: nonNegative, total_bytes: nonNegative }),
  latest: z.string().nullable().describe('the backup the latest link points at'),
  partials: z.array(z.string()).describe('partial copies interrupted creates left; cleanup removes them'),
  damaged: z.array(z.strictObject({ name: z.string(), reason: z.string() })).describe('backups whose backup.json cannot be read: never counted, never removed'),
  warnings: z.array(z.string()),
}) satisfies z.ZodType<BackupStatus>

/**
 * Which backups hold each file of their data/. A file with a single link belongs to its backup alone, so
 * only its size is kept; files with more links are keyed by inode with the backups that reference them.
 */
export interface Sharing {
  sole: Map<string, number>
  linked: Map<string, { size: number; holders: Set<string> }>
}

export function sharing(backups: Backup[]): Sharing {
  const result: Sharing = { sole: new Map(), linked: new Map() }
  for (const backup of backups) {
    let sole = 0
    for (const file of walkTree(path.join(backup.dir, DATA)).files) {
      if (file.nlink === 1) {
        sole += file.size
        continue
      }
      const key = `${file.dev}:${file.ino}`
      const entry = result.linked.get(key) ?? { size: file.size, holders: new Set<string>() }
      entry.holders.add(backup.name)
      result.linked.set(key, entry)
    }
    result.sole.set(backup.name, sole)
  }
  return result
}

/** Bytes that removing the backups `names` gives back: files none of the other backups holds, each once. */
export function bytesHeldOnlyBy(shared: Sharing, names: string[]): number {
  const removed = new Set(names)
  let total = names.reduce((sum, name) => sum + (shared.sole.get(name) ?? 0), 0)
  for (const { size, holders } of shared.linked.values()) if ([...holders].every((h) => removed.has(h))) total += size
  return total
}

/**
 * Why the backups count as overdue, or null while the newest is recent enough. One dated in the future
 * (made while the clock was ahead) is never the recent one: it would hide that no backup was made since.
 */
function overdue(complete: Backup[], now: Date): string | null {
  const { dated, ahead } = byClock(complete, now)
  const future = ahead.length ? `; ${ahead.map((b) => b.name).join(', ')} ${ahead.length === 1 ? 'is' : 'are'} dated in the future (the clock was ahead?) and not counted` : ''
  const newest = dated.at(-1)
  if (!newest) return ahead.length ? `no backup is dated before now${future}` : null
  const age = now.getTime() - newest.created.getTime()
  return age > OVERDUE_DAYS * DAY_MS ? `the newest backup, ${newest.name}, is ${duration(age)} old (more than ${OVERDUE_DAYS} days)${future}` : null
}

/**
 * How far the newest backup of a chain can be trusted, in the one wording backup status, health-check and
 * status share. Its own last verification decides. A newest never verified (the daily incrementals between
 * two weekly verifies, a first backup) is fine while the chain's last verification passed, or it has had
 * none yet, less than OVERDUE_DAYS ago; a failed one is never forgotten. An empty backup vouches for nothing.
 */
export interface VerificationState {
  backup: string
  /** For a status line: "verified ok 2h ago", "not verified yet; NAME verified ok 2d ago", ... */
  text: string
  /** The warning, or null while the chain is verified recently enough. */
  problem: string | null
}

const recheck = (b: Backup) => ` (citadel backup verify ${b.name} --sample 1 names them)`

export function verificationState(chain: Backup[], now: Date): VerificationState | null {
  const newest = chain.at(-1)
  if (!newest) return null
  const ago = (ms: number) => `${duration(now.getTime() - ms)} ago`
  const state = (text: string, problem: string | null) => ({ backup: newest.name, text, problem })
  const own = newest.meta.verifications.at(-1)
  if (own?.ok) return state(`verified ok ${ago(Date.parse(own.at))}`, null)
  if (own) {
    const found = count(own.problems.length, 'problem')
    return state(`last verification FAILED ${ago(Date.parse(own.at))}: ${found}`, `the last verification of the newest backup, ${newest.name}, failed at ${own.at}: ${found}${recheck(newest)}`)
  }
  const earlier = chain.findLast((b) => b.meta.verifications.length > 0 && !isEmptyBackup(b))
  const last = earlier?.meta.verifications.at(-1)
  if (earlier && last && !last.ok) {
    const why = `the last verification, of ${earlier.name} at ${last.at}, failed: ${count(last.problems.length, 'problem')}`
    return state(`never verified; ${why}`, `the newest backup, ${newest.name}, was never verified; ${why}${recheck(earlier)}`)
  }
  const since = last ? Date.parse(last.at) : chain[0]!.created.getTime()
  if (now.getTime() - since <= OVERDUE_DAYS * DAY_MS) return state(`not verified yet${earlier ? `; ${earlier.name} verified ok ${ago(since)}` : ''}`, null)
  const why = earlier ? `; the last verification, of ${earlier.name}, passed ${ago(since)}` : `, nor any backup of ${newest.meta.source} since ${chain[0]!.name}, made ${ago(since)}`
  return state(`never verified${why} (more than ${OVERDUE_DAYS} days)`, `the newest backup, ${newest.name}, was never verified${why} (more than ${OVERDUE_DAYS} days)`)
}

/** Why the store has no backup of the active models: none at all, or only of other sources. */
const noBackup = (root: string, store: Store, active: string) => store.complete.length ? `no complete backup of ${active} in ${root}` : `no complete backup in ${root}`

function storeWarnings(root: string, store: Store, now: Date, active: string): string[] {
  const warnings: string[] = []
  const chain = chainOf(store, active)
  const newest = chain.at(-1)
  if (!newest) warnings.push(noBackup(root, store, active))
  else {
    const late = overdue(chain, now)
    if (late) warnings.push(late)
    const verification = verificationState(chain, now)?.problem
    if (verification) warnings.push(verification)
    if (store.latest === null) warnings.push(`latest is missing or not a link; it should point at ${newest.name}`)
  }
  if (store.latest !== null && store.latest !== newest?.name)
    warnings.push(`latest points at ${store.latest}, ${newest ? `not at the newest complete backup ${newest.name}` : 'which is not a complete backup'}`)
  if (store.partials.length)
    warnings.push(`partial backups left by interrupted creates: ${store.partials.map((p) => path.basename(p)).join(', ')}; backup cleanup removes them`)
  for (const d of store.damaged) warnings.push(`${d.name} is damaged (${d.reason}): never counted, never removed`)
  return warnings
}

export interface Disk { free_bytes: number; total_bytes: number }

/**
 * The status of a store that has been read: `shared` tells the bytes each backup holds alone (null when
 * unknown), `bytesOnDisk` what all of them take with shared files counted once. `active` is the source whose
 * chain `latest` follows and the warnings judge: the active models.
 */
export function summarizeStore(root: string, store: Store, now: Date, disk: Disk, shared: Sharing | null, bytesOnDisk: number, active: string): BackupStatus {
  const backups = store.complete.map((b): BackupSummary => {
    const ageMs = now.getTime() - b.created.getTime()
    const last = b.meta.verifications.at(-1)
    return {
      name: b.name,
      type: b.type,
      source: b.meta.source,
      created: b.created.toISOString(),
      age: duration(ageMs),
      age_seconds: Math.floor(ageMs / 1000),
      files: b.meta.files,
      bytes: b.meta.bytes,
      unique_bytes: shared && bytesHeldOnlyBy(shared, [b.name]),
      last_verification: last ? { at: last.at, rate: last.rate, ok: last.ok, problems: last.problems.length } : null,
      latest: b.name === store.latest,
    }
  })
  return {
    store: root,
    backups,
    totals: { backups: backups.length, bytes: backups.reduce((sum, b) => sum + b.bytes, 0), bytes_on_disk: bytesOnDisk },
    disk,
    latest: store.latest,
    partials: store.partials.map((p) => path.basename(p)),
    damaged: store.damaged,
    warnings: storeWarnings(root, store, now, active),
  }
}

/** Reads the store and the backup disk; throws when the store cannot be read. Changes nothing. */
export async function backupStatus(settings: Settings, now = new Date()): Promise<BackupStatus> {
  const root = backupsDir(settings)
  const missing = await storeMissing(settings)
  if (missing) throw new Error(missing)
  const store = await scanStore(settings)
  const shared = sharing(store.complete)
  const { bavail, blocks, bsize } = await fs.statfs(root)
  const onDisk = bytesHeldOnlyBy(shared, store.complete.map((b) => b.name))
  return summarizeStore(root, store, now, { free_bytes: bavail * bsize, total_bytes: blocks * bsize }, shared, onDisk, settings.modelsActive)
}

export interface Retention { days: number; keepMin: number; now: Date }

/**
 * Each complete backup (oldest first) with the first rule that keeps it, or 'remove': of each source (each
 * is its own chain) the newest keepMin and the newest whose last verification passed (a copy known to be
 * good), the one `latest` points at, and those younger than `days` stay. An empty backup is a copy of
 * nothing: it never counts as one of the newest nor as the verified one, so it cannot push out a real one.
 */
export function retentionVerdicts(complete: Backup[], latest: string | null, rule: Retention): { backup: Backup; verdict: string }[] {
  const newest = new Set<string>()
  const lastVerified = new Set<string>()
  for (const source of new Set(complete.map((b) => b.meta.source))) {
    const chain = complete.filter((b) => b.meta.source === source && !isEmptyBackup(b))
    for (const b of chain.slice(Math.max(0, chain.length - rule.keepMin))) newest.add(b.name)
    const verified = chain.findLast((b) => b.meta.verifications.at(-1)?.ok === true)
    if (verified) lastVerified.add(verified.name)
  }
  const cutoff = rule.now.getTime() - rule.days * DAY_MS
  return complete.map((backup) => ({
    backup,
    verdict:
      newest.has(backup.name) ? `keep: newest ${rule.keepMin}`
      : lastVerified.has(backup.name) ? 'keep: last verified'
      : backup.name === latest ? 'keep: latest'
      : backup.created.getTime() >= cutoff ? 'keep: within retention'
      : 'remove',
  }))
}

/** What monitoring needs of the store, read from the backups' metadata alone (no walk of their data). */
export interface BackupHealth {
  store: string
  complete: number
  newest: { name: string; type: BackupType; created: string; age: string; age_seconds: number } | null
  /** The most recent verification of any complete backup: incrementals between two weekly verifies have none. */
  last_verification: { backup: string; at: string; age_seconds: number; ok: boolean; problems: number } | null
  latest: string | null
  /** The newest backup of the active models and how far it can be trusted (see verificationState). */
  verification: VerificationState | null
  problems: Problem[]
}

const verificationStateSchema = z.strictObject({
  backup: z.string(),
  text: z.string().describe('for a status line: "verified ok 2h ago", "not verified yet; NAME verified ok 2d ago", ...'),
  problem: z.string().nullable().describe('the warning, or null while the chain is verified recently enough'),
}) satisfies z.ZodType<VerificationState>

export const backupHealthSchema = z.strictObject({
  store: z.string(),
  complete: nonNegative.describe('complete backups in the store'),
  newest: z.strictObject({ name: z.string(), type: backupType, created: z.iso.datetime(), age: z.string(), age_seconds: z.number().int() }).nullable(),
  last_verification: z.strictObject({ backup: z.string(), at: z.iso.datetime(), age_seconds: z.number().int(), ok: z.boolean(), problems: nonNegative }).nullable()
    .describe('the most recent verification of any complete backup'),
  latest: z.string().nullable(),
  verification: verificationStateSchema.nullable().describe('the newest backup of the active models and how far it can be trusted'),
  problems: z.array(problemSchema),
}) satisfies z.ZodType<BackupHealth>

/** The backup line of `status`, in the words of verificationState. */
export const backupLine = (h: BackupHealth) => h.newest && h.verification ? `${h.newest.name}, ${h.newest.age} old; ${h.verification.text}` : 'no complete backup'

export async function backupHealth(settings: Settings, now = new Date()): Promise<BackupHealth> {
  const root = backupsDir(settings)
  const problem = (severity: Problem['severity'], what: string, message: string): Problem => ({ check: 'backups', severity, key: `backups:${what}`, message })
  const missing = await storeMissing(settings)
  if (missing) return { store: root, complete: 0, newest: null, last_verification: null, latest: null, verification: null, problems: [problem('critical', 'none', missing)] }
  const store = await scanStore(settings)
  const chain = chainOf(store, settings.modelsActive)
  const newest = chain.at(-1)
  const verification = verificationState(chain, now)
  const verifications = store.complete.flatMap((b) => b.meta.verifications.map((v) => ({ backup: b.name, v }))).sort((a, b) => a.v.at.localeCompare(b.v.at))
  const last = verifications.at(-1)
  const problems: Problem[] = []
  if (!newest) problems.push(problem('critical', 'none', `${noBackup(root, store, settings.modelsActive)}: run citadel backup create`))
  const broken = latestDamaged(store)
  if (broken) problems.push(problem('critical', 'latest', `latest points at ${broken.name}, which is damaged (${broken.reason}): restore that file or make a new backup`))
  const ageMs = newest ? now.getTime() - newest.created.getTime() : 0
  const late = newest && overdue(chain, now)
  if (late) problems.push(problem('warning', 'overdue', late))
  if (verification?.problem) problems.push(problem('warning', 'verification', verification.problem))
  return {
    store: root,
    complete: store.complete.length,
    newest: newest ? { name: newest.name, type: newest.type, created: newest.created.toISOString(), age: duration(ageMs), age_seconds: Math.floor(ageMs / 1000) } : null,
    last_verification: last ? { backup: last.backup, at: last.v.at, age_seconds: Math.floor((now.getTime() - Date.parse(last.v.at)) / 1000), ok: last.v.ok, problems: last.v.problems.length } : null,
    latest: store.latest,
    verification,
    problems,
  }
}

function verified(b: BackupSummary, now: Date): string {
  const v = b.last_verification
  return v ? `${v.ok ? 'ok' : 'FAILED'} ${duration(now.getTime() - Date.parse(v.at))} ago` : 'never'
}

/** The backup-status report of a store, local or remote: the table, totals, warnings and the headline. */
export function showStatus(ctx: TaskContext, status: BackupStatus, now: Date, diskName: string): TaskResult {
  for (const w of status.warnings) ctx.warn(w)
  const { backups, totals, disk } = status
  if (backups.length)
    ctx.detail(...table([
      ['NAME', 'TYPE', 'AGE', 'FILES', 'SIZE', 'UNIQUE', 'VERIFIED', 'LATEST', 'SOURCE'],
      ...backups.map((b) => [b.name, b.type, b.age, String(b.files), bytes(b.bytes), b.unique_bytes === null ? '-' : bytes(b.unique_bytes), verified(b, now), b.latest ? 'yes' : '', b.source]),
    ]))
  const space = `${bytes(disk.free_bytes)} free of ${bytes(disk.total_bytes)}`
  ctx.detail(`total: ${count(totals.backups, 'backup')}, ${bytes(totals.bytes)} (${bytes(totals.bytes_on_disk)} on disk); ${diskName}: ${space}`)
  const newest = backups.at(-1)
  const headline = newest ? `${count(backups.length, 'backup')}, newest ${newest.age} old` : 'no complete backup'
  const warned = status.warnings.length ? `; ${count(status.warnings.length, 'warning')}` : ''
  return ctx.finish(`${headline}; ${diskName}: ${space}${warned}`, { ...status })
}

export interface RetentionPlan {
  /** Every complete backup, oldest first, with its age and the rule that keeps it, or 'remove'. */
  backups: { name: string; age: string; verdict: string }[]
  /** The backups to remove, each with how the change record describes it. */
  doomed: { backup: Backup; before: string }[]
}

/** Cleanup's plan for a store, local or remote, shown as a table under the task. */
export function planRetention(ctx: TaskContext, complete: Backup[], latest: string | null, days: number, now: Date): RetentionPlan {
  const verdicts = retentionVerdicts(complete, latest, { days, keepMin: ctx.settings.backup.keepMin, now })
  const ageOf = (b: Backup) => duration(now.getTime() - b.created.getTime())
  if (verdicts.length) ctx.detail(...table([['BACKUP', 'AGE', 'VERDICT'], ...verdicts.map((v) => [v.backup.name, ageOf(v.backup), v.verdict])]))
  return {
    backups: verdicts.map((v) => ({ name: v.backup.name, age: ageOf(v.backup), verdict: v.verdict })),
    doomed: verdicts.filter((v) => v.verdict === 'remove').map(({ backup: b }) => ({ backup: b, before: `${b.type} backup, ${ageOf(b)} old, ${count(b.meta.files, 'file')}, ${bytes(b.meta.bytes)}` })),
  }
}
