// The state of a backup store as one plain object: every complete backup with its age, size, the bytes
// only it holds and its last verification, the space left on the store's disk, the last restore and drill,
// and what needs attention; and how far the newest backup of a chain can be trusted and whether it has been
// drilled recently enough, in the words status and monitoring share.
import path from 'node:path'
import { z } from 'zod'
import { byClock, chainOf, isEmptyBackup, type Backup, type BackupStore, type BackupType, type Disk, type StoreContents } from './store.ts'
import { bytes, count, DAY_MS, duration, summarize } from '../infra/format.ts'

// The retention rule lives in retention.ts and the day in format.ts; the backup tests read both from here.
export { retentionVerdicts } from './retention.ts'
export { DAY_MS } from '../infra/format.ts'
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

/** A successful restore or drill as status and monitoring show it, with the backup it came from. */
export interface RestoreSummary {
  backup: string
  at: string
  age: string
  age_seconds: number
  what: string[]
  to: string
  bytes_copied: number
  bytes_reused: number
  files_verified: number
  duration_ms: number
}

/** The last successful restore into place (or --to) and the last successful drill, each null until there is one. */
export interface LastRestores { restore: RestoreSummary | null; drill: RestoreSummary | null }

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
  restores: LastRestores
  warnings: string[]
}

const nonNegative = z.number().int().nonnegative()
export const backupTypeSchema = z.enum(['full', 'incremental']) satisfies z.ZodType<BackupType>

const backupSummarySchema = z.strictObject({
  name: z.string(),
  type: backupTypeSchema,
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

const restoreSummarySchema = z.strictObject({
  backup: z.string().describe('the backup restored from'),
  at: z.iso.datetime().describe('when the restore started'),
  age: z.string().describe('for people: "4h 12m"'),
  age_seconds: z.number().int(),
  what: z.array(z.string()).describe('the model directories restored, or the paths under data/ given with --path'),
  to: z.string().describe("the directory restored into (a drill's scratch directory is gone again)"),
  bytes_copied: nonNegative,
  bytes_reused: nonNegative.describe('bytes already right in place, hard-linked rather than copied'),
  files_verified: nonNegative,
  duration_ms: nonNegative,
}) satisfies z.ZodType<RestoreSummary>

export const lastRestoresSchema = z.strictObject({
  restore: restoreSummarySchema.nullable().describe('the last successful restore (not a drill) from any complete backup of the store'),
  drill: restoreSummarySchema.nullable().describe('the last successful restore drill (backup restore --drill) from any complete backup of the store'),
}) satisfies z.ZodType<LastRestores>

/** What backup status (local or --remote) reports as its task's data. */
export const backupStatusSchema = z.strictObject({
  store: z.string(),
  backups: z.array(backupSummarySchema).describe('complete backups, oldest first'),
  totals: z.strictObject({ backups: nonNegative, bytes: nonNegative, bytes_on_disk: nonNegative.describe('each file shared through hard links counted once') }),
  disk: z.strictObject({ free_bytes: nonNegative, total_bytes: nonNegative }),
  latest: z.string().nullable().describe('the backup the latest link points at'),
  partials: z.array(z.string()).describe('partial copies interrupted creates left; cleanup removes them'),
  damaged: z.array(z.strictObject({ name: z.string(), reason: z.string() })).describe('backups whose backup.json cannot be read: never counted, never removed'),
  restores: lastRestoresSchema,
  warnings: z.array(z.string()),
}) satisfies z.ZodType<BackupStatus>

/**
 * Why the backups count as overdue, or null while the newest is recent enough. One dated in the future
 * (made while the clock was ahead) is never the recent one: it would hide that no backup was made since.
 */
export function overdue(complete: Backup[], now: Date): string | null {
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

const successes = (backups: Backup[], drill: boolean) =>
  backups.flatMap((b) => (b.meta.restores ?? []).filter((r) => r.ok && r.drill === drill).map((r) => ({ backup: b, r })))
    .sort((x, y) => Date.parse(x.r.at) - Date.parse(y.r.at))

/** The last successful restore and drill recorded in any of `backups`. */
export function lastRestores(backups: Backup[], now: Date): LastRestores {
  const last = (drill: boolean): RestoreSummary | null => {
    const found = successes(backups, drill).at(-1)
    if (!found) return null
    const { backup, r } = found
    const ageMs = now.getTime() - Date.parse(r.at)
    return { backup: backup.name, at: r.at, age: duration(ageMs), age_seconds: Math.floor(ageMs / 1000), what: r.what, to: r.to, bytes_copied: r.bytes_copied, bytes_reused: r.bytes_reused, files_verified: r.files_verified, duration_ms: r.duration_ms }
  }
  return { restore: last(false), drill: last(true) }
}

/** One restore for a status line: "2d 3h ago from NAME: mixtral-8x7b-instruct into DIR, 86.9 GiB copied in 7m 41s". */
export function restoreText(r: RestoreSummary | null, drill: boolean): string {
  if (!r) return 'never'
  const into = drill ? '' : ` into ${r.to}`
  return `${r.age} ago from ${r.backup}: ${summarize(r.what)}${into}, ${bytes(r.bytes_copied)} copied${r.bytes_reused ? ` (${bytes(r.bytes_reused)} already good)` : ''} in ${duration(r.duration_ms, { seconds: true })}`
}

/**
 * Why the backups of a chain count as undrilled, or null: a successful drill of one of them within
 * `maxAgeDays`, or a chain younger than that, is enough; 0 days turns the judgement off. Only the chain's
 * own drills count: a drill of another source sharing the store proves nothing about these backups.
 */
export function drillProblem(chain: Backup[], now: Date, maxAgeDays: number): string | null {
  if (maxAgeDays === 0 || !chain.length) return null
  const last = successes(chain, true).at(-1)
  const since = last ? Date.parse(last.r.at) : chain[0]!.created.getTime()
  if (now.getTime() - since <= maxAgeDays * DAY_MS) return null
  const source = chain[0]!.meta.source
  const why = last ? `the last, from ${last.backup.name}, was ${duration(now.getTime() - since)} ago` : `none since ${chain[0]!.name}, made ${duration(now.getTime() - since)} ago`
  return `no restore drill of the backups of ${source} succeeded within BACKUP_DRILL_MAX_AGE_DAYS=${maxAgeDays} days (${why}): run citadel backup restore --drill`
}

/** Why the store has no backup of the active models: none at all, or only of other sources. */
export const noBackup = (root: string, store: StoreContents, active: string) => store.complete.length ? `no complete backup of ${active} in ${root}` : `no complete backup in ${root}`

function storeWarnings(root: string, store: StoreContents, now: Date, active: string): string[] {
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

/**
 * The status of a store that has been read: `heldOnlyBy` tells the bytes backups hold alone (null when
 * unknown), `bytesOnDisk` what all of them take with shared files counted once. `active` is the source whose
 * chain `latest` follows and the warnings judge: the active models.
 */
function summarizeStore(root: string, store: StoreContents, now: Date, disk: Disk, heldOnlyBy: ((names: string[]) => number) | null, bytesOnDisk: number, active: string): BackupStatus {
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
      unique_bytes: heldOnlyBy && heldOnlyBy([b.name]),
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
    restores: lastRestores(store.complete, now),
    warnings: storeWarnings(root, store, now, active),
  }
}

/** Reads the store and its disk; throws when the store cannot be read. Changes nothing. */
export async function storeStatus(store: BackupStore, now: Date, active: string): Promise<BackupStatus> {
  const missing = await store.missing()
  if (missing) throw new Error(missing)
  const contents = await store.scan()
  const heldOnlyBy = store.heldOnlyBy(contents.complete)
  const { used_bytes, ...disk } = await store.space()
  const onDisk = used_bytes ?? heldOnlyBy?.(contents.complete.map((b) => b.name)) ?? 0
  return summarizeStore(store.label, contents, now, disk, heldOnlyBy, onDisk, active)
}
