// What monitoring needs of the backup stores (health-check, status, the monitor), read from the backups'
// metadata alone, with no walk of their data: the local store, and BACKUP_REMOTE in one ssh round trip.
import type { Shell } from 'zx/core'
import { z } from 'zod'
import type { RemoteSettings, Settings } from '../infra/config.ts'
import { problemSchema, type Problem } from '../core/problems.ts'
import { bytes, count, DAY_MS, duration } from '../infra/format.ts'
import { backupsDir, scanStore, storeMissing } from './local-store.ts'
import { remoteLabel, RemoteUnreachableError, scanRemote, type RemoteContents } from './ssh-store.ts'
import { backupTypeSchema, drillProblem, lastRestores, lastRestoresSchema, noBackup, overdue, restoreText, verificationState, type LastRestores, type VerificationState } from './status.ts'
import { byClock, chainOf, latestDamaged, type Backup, type BackupType } from './store.ts'

export interface BackupHealth {
  store: string
  complete: number
  newest: { name: string; type: BackupType; created: string; age: string; age_seconds: number } | null
  /** The most recent verification of any complete backup: incrementals between two weekly verifies have none. */
  last_verification: { backup: string; at: string; age_seconds: number; ok: boolean; problems: number } | null
  latest: string | null
  /** The newest backup of the active models and how far it can be trusted (see verificationState). */
  verification: VerificationState | null
  /** The last successful restore and drill from any complete backup of the store. */
  restores: LastRestores
  problems: Problem[]
}

const nonNegative = z.number().int().nonnegative()

const verificationStateSchema = z.strictObject({
  backup: z.string(),
  text: z.string().describe('for a status line: "verified ok 2h ago", "not verified yet; NAME verified ok 2d ago", ...'),
  problem: z.string().nullable().describe('the warning, or null while the chain is verified recently enough'),
}) satisfies z.ZodType<VerificationState>

export const backupHealthSchema = z.strictObject({
  store: z.string(),
  complete: nonNegative.describe('complete backups in the store'),
  newest: z.strictObject({ name: z.string(), type: backupTypeSchema, created: z.iso.datetime(), age: z.string(), age_seconds: z.number().int() }).nullable(),
  last_verification: z.strictObject({ backup: z.string(), at: z.iso.datetime(), age_seconds: z.number().int(), ok: z.boolean(), problems: nonNegative }).nullable()
    .describe('the most recent verification of any complete backup'),
  latest: z.string().nullable(),
  verification: verificationStateSchema.nullable().describe('the newest backup of the active models and how far it can be trusted'),
  restores: lastRestoresSchema,
  problems: z.array(problemSchema),
}) satisfies z.ZodType<BackupHealth>

/** The backup line of `status`, in the words of verificationState. */
export const backupLine = (h: BackupHealth) => h.newest && h.verification ? `${h.newest.name}, ${h.newest.age} old; ${h.verification.text}` : 'no complete backup'

/** The restore line of `status`: the last drill, and the last restore. */
export const restoreLine = (h: BackupHealth) => `last drill ${restoreText(h.restores.drill, true)}; last restore ${restoreText(h.restores.restore, false)}`

const problem = (severity: Problem['severity'], what: string, message: string): Problem => ({ check: 'backups', severity, key: `backups:${what}`, message })

/** The most recent verification of any of these backups. */
function lastVerification(backups: Backup[], now: Date): BackupHealth['last_verification'] {
  const last = backups.flatMap((b) => b.meta.verifications.map((v) => ({ backup: b.name, v }))).sort((a, b) => a.v.at.localeCompare(b.v.at)).at(-1)
  return last ? { backup: last.backup, at: last.v.at, age_seconds: Math.floor((now.getTime() - Date.parse(last.v.at)) / 1000), ok: last.v.ok, problems: last.v.problems.length } : null
}

export async function backupHealth(settings: Settings, now = new Date()): Promise<BackupHealth> {
  const root = backupsDir(settings)
  const missing = await storeMissing(settings)
  if (missing) return { store: root, complete: 0, newest: null, last_verification: null, latest: null, verification: null, restores: { restore: null, drill: null }, problems: [problem('critical', 'none', missing)] }
  const store = await scanStore(settings)
  const chain = chainOf(store, settings.modelsActive)
  const newest = chain.at(-1)
  const verification = verificationState(chain, now)
  const problems: Problem[] = []
  if (!newest) problems.push(problem('critical', 'none', `${noBackup(root, store, settings.modelsActive)}: run citadel backup create`))
  const broken = latestDamaged(store)
  if (broken) problems.push(problem('critical', 'latest', `latest points at ${broken.name}, which is damaged (${broken.reason}): restore that file or make a new backup`))
  const ageMs = newest ? now.getTime() - newest.created.getTime() : 0
  const late = newest && overdue(chain, now)
  if (late) problems.push(problem('warning', 'overdue', late))
  if (verification?.problem) problems.push(problem('warning', 'verification', verification.problem))
  const undrilled = drillProblem(chain, now, settings.backup.drillMaxAgeDays)
  if (undrilled) problems.push(problem('warning', 'drill', undrilled))
  return {
    store: root,
    complete: store.complete.length,
    newest: newest ? { name: newest.name, type: newest.type, created: newest.created.toISOString(), age: duration(ageMs), age_seconds: Math.floor(ageMs / 1000) } : null,
    last_verification: lastVerification(store.complete, now),
    latest: store.latest,
    verification,
    restores: lastRestores(store.complete, now),
    problems,
  }
}

/**
 * The remote store (BACKUP_REMOTE) as one ssh round trip saw it at checked_at. The monitor keeps a reading
 * for STORAGE_MONITOR_REMOTE_INTERVAL; remoteHealthAt brings its ages up to the time of a report.
 */
export interface RemoteHealth {
  store: string
  checked_at: string
  /** false when ssh could not connect or log in, or the host gave no answer in time. */
  reachable: boolean
  /** Why the store could not be read: ssh's own complaint, or the remote script's. */
  error: string | null
  /** The counts and the disk are null when the store could not be read: unknown, not zero. */
  complete: number | null
  newest: { name: string; created: string; age: string; age_seconds: number } | null
  last_verification: BackupHealth['last_verification']
  free_bytes: number | null
  total_bytes: number | null
}

const nullableBytes = nonNegative.nullable()

export const remoteHealthSchema = z.strictObject({
  store: z.string().describe('user@host:/dir/models'),
  checked_at: z.iso.datetime().describe('when the store was read: the monitor reads it every STORAGE_MONITOR_REMOTE_INTERVAL only'),
  reachable: z.boolean().describe('false when ssh could not connect or log in, or the host gave no answer in time'),
  error: z.string().nullable().describe("why the store could not be read (ssh's own message when unreachable), or null"),
  complete: nonNegative.nullable().describe('complete backups in the remote store; null when it could not be read'),
  newest: z.strictObject({ name: z.string(), created: z.iso.datetime(), age: z.string(), age_seconds: z.number().int() }).nullable()
    .describe('the newest complete remote backup of the active models'),
  last_verification: z.strictObject({ backup: z.string(), at: z.iso.datetime(), age_seconds: z.number().int(), ok: z.boolean(), problems: nonNegative }).nullable()
    .describe('the most recent remote verification (backup verify --remote) of any complete remote backup'),
  free_bytes: nullableBytes.describe("free space on the remote store's disk; null when it could not be read"),
  total_bytes: nullableBytes,
}) satisfies z.ZodType<RemoteHealth>

/** How long one reading of the remote store may take: ssh's ConnectTimeout is 15 s, the scan the rest. */
const REMOTE_READ_TIMEOUT_S = 30

/** Reads BACKUP_REMOTE once; a host that cannot be reached or read gives a reading that says why, never a throw or a hang. */
export async function readRemoteHealth($: Shell, settings: Settings, r: RemoteSettings): Promise<RemoteHealth> {
  const checked = new Date()
  const timeout = AbortSignal.timeout(REMOTE_READ_TIMEOUT_S * 1000)
  const read = { store: remoteLabel(r), checked_at: checked.toISOString() }
  const unread = (reachable: boolean, error: string): RemoteHealth =>
    ({ ...read, reachable, error, complete: null, newest: null, last_verification: null, free_bytes: null, total_bytes: null })
  let store: RemoteContents
  try {
    store = await scanRemote($, r, 'read', timeout)
  } catch (err) {
    if (timeout.aborted) return unread(false, `no answer from the remote backup host within ${REMOTE_READ_TIMEOUT_S} s`)
    return unread(!(err instanceof RemoteUnreachableError), (err as Error).message)
  }
  // One dated in the future (sent while the clock was ahead) is never the newest: it would hide that none came since.
  const newest = byClock(chainOf(store, settings.modelsActive), checked).dated.at(-1)
  return remoteHealthAt({
    ...read,
    reachable: true,
    error: null,
    complete: store.complete.length,
    newest: newest ? { name: newest.name, created: newest.created.toISOString(), age: '', age_seconds: 0 } : null,
    last_verification: lastVerification(store.complete, checked),
    free_bytes: store.disk.free_bytes,
    total_bytes: store.disk.total_bytes,
  }, checked)
}

/** A reading with its ages as of `now`. */
export function remoteHealthAt(h: RemoteHealth, now: Date): RemoteHealth {
  const since = (iso: string) => now.getTime() - Date.parse(iso)
  return {
    ...h,
    newest: h.newest && { ...h.newest, age: duration(since(h.newest.created)), age_seconds: Math.floor(since(h.newest.created) / 1000) },
    last_verification: h.last_verification && { ...h.last_verification, age_seconds: Math.floor(since(h.last_verification.at) / 1000) },
  }
}

/** The warnings a reading of the remote store gives, its ages as of the report. */
export function remoteProblems(h: RemoteHealth, settings: Settings): Problem[] {
  if (h.error !== null) {
    return [h.reachable
      ? problem('warning', 'remote-unreadable', `cannot read the remote store ${h.store}: ${h.error}`)
      : problem('warning', 'remote-unreachable', `the remote backup store ${h.store} is unreachable: ${h.error}`)]
  }
  const problems: Problem[] = []
  const maxDays = settings.backup.remoteMaxAgeDays
  if (!h.newest) problems.push(problem('warning', 'remote-none', `no complete backup of ${settings.modelsActive} in the remote store ${h.store}: run citadel backup create --remote`))
  else if (h.newest.age_seconds * 1000 > maxDays * DAY_MS)
    problems.push(problem('warning', 'remote-overdue', `the newest remote backup, ${h.newest.name} in ${h.store}, is ${h.newest.age} old (more than BACKUP_REMOTE_MAX_AGE_DAYS=${maxDays} days): run citadel backup create --remote`))
  const v = h.last_verification
  if (v && !v.ok)
    problems.push(problem('warning', 'remote-verification', `the last remote verification, of ${v.backup} in ${h.store} at ${v.at}, failed: ${count(v.problems, 'problem')} (citadel backup verify --remote ${v.backup} --sample 1 names them)`))
  return problems
}

/** The remote line of `status`: the newest remote backup and the last remote verification, or why there is none. */
export function remoteLine(h: RemoteHealth): string {
  if (h.error !== null) return `${h.reachable ? 'UNREADABLE' : 'UNREACHABLE'} ${h.store}: ${h.error}`
  const newest = h.newest ? `${h.newest.name}, ${h.newest.age} old` : 'no complete backup'
  const v = h.last_verification
  const verified = v ? `last verification ${v.ok ? 'ok' : `FAILED (${count(v.problems, 'problem')})`} ${duration(v.age_seconds * 1000)} ago, of ${v.backup}` : 'never verified'
  return `${newest}; ${verified}; ${bytes(h.free_bytes ?? 0)} free`
}
