// What monitoring needs of the local backup store (health-check, status, the monitor), read from the
// backups' metadata alone, with no walk of their data.
import { z } from 'zod'
import type { Settings } from '../infra/config.ts'
import { problemSchema, type Problem } from '../core/problems.ts'
import { duration } from '../infra/format.ts'
import { backupsDir, scanStore, storeMissing } from './local-store.ts'
import { backupTypeSchema, drillProblem, lastRestores, lastRestoresSchema, noBackup, overdue, restoreText, verificationState, type LastRestores, type VerificationState } from './status.ts'
import { chainOf, latestDamaged, type BackupType } from './store.ts'

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

export async function backupHealth(settings: Settings, now = new Date()): Promise<BackupHealth> {
  const root = backupsDir(settings)
  const problem = (severity: Problem['severity'], what: string, message: string): Problem => ({ check: 'backups', severity, key: `backups:${what}`, message })
  const missing = await storeMissing(settings)
  if (missing) return { store: root, complete: 0, newest: null, last_verification: null, latest: null, verification: null, restores: { restore: null, drill: null }, problems: [problem('critical', 'none', missing)] }
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
  const undrilled = drillProblem(chain, now, settings.backup.drillMaxAgeDays)
  if (undrilled) problems.push(problem('warning', 'drill', undrilled))
  return {
    store: root,
    complete: store.complete.length,
    newest: newest ? { name: newest.name, type: newest.type, created: newest.created.toISOString(), age: duration(ageMs), age_seconds: Math.floor(ageMs / 1000) } : null,
    last_verification: last ? { backup: last.backup, at: last.v.at, age_seconds: Math.floor((now.getTime() - Date.parse(last.v.at)) / 1000), ok: last.v.ok, problems: last.v.problems.length } : null,
    latest: store.latest,
    verification,
    restores: lastRestores(store.complete, now),
    problems,
  }
}

