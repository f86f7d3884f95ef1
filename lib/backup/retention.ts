// Which backups cleanup removes: of each source the newest few and the newest verified one stay, and the
// one latest points at, and everything younger than the retention; the rest go. One rule for every store.
import { bytes, count, DAY_MS, duration, table } from '../infra/format.ts'
import type { TaskContext } from '../core/task.ts'
import { isEmptyBackup, type Backup } from './store.ts'

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
