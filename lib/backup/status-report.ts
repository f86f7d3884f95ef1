// How backup status is reported: the warnings, a table of the backups, the totals and the space left, the
// last restore and drill, and the status itself as the task's data. The same for every store.
import type { TaskContext, TaskResult } from '../core/task.ts'
import { bytes, count, duration, table } from '../infra/format.ts'
import { restoreText, type BackupStatus, type BackupSummary } from './status.ts'

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
  ctx.detail(`last restore: ${restoreText(status.restores.restore, false)}`, `last drill: ${restoreText(status.restores.drill, true)}`)
  const newest = backups.at(-1)
  const headline = newest ? `${count(backups.length, 'backup')}, newest ${newest.age} old` : 'no complete backup'
  const warned = status.warnings.length ? `; ${count(status.warnings.length, 'warning')}` : ''
  return ctx.finish(`${headline}; ${diskName}: ${space}${warned}`, { ...status })
}

