// Ensures nothing: shows every complete backup (age, size, the bytes only it holds, its last verification),
// the space left on the backup disk and what needs attention. Warnings never fail it; an unreadable store does.
import { backupStatus, formatAge, type BackupStatus, type BackupSummary } from '../lib/backup-status.ts'
import { bytes, count, table } from '../lib/report.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'

function verified(b: BackupSummary, now: Date): string {
  const v = b.last_verification
  return v ? `${v.ok ? 'ok' : 'FAILED'} ${formatAge(now.getTime() - Date.parse(v.at))} ago` : 'never'
}

const task = defineTask({
  name: 'backup-status',
  description: 'Show each backup with its age, size, unique bytes and last verification, the space left on the backup disk, and what needs attention',
  tags: ['backup', 'status'],
  async run(ctx) {
    const now = new Date()
    let status: BackupStatus
    try {
      status = await backupStatus(ctx.settings, now)
    } catch (err) {
      return ctx.fail(`cannot read the backup store: ${(err as Error).message}`)
    }
    for (const w of status.warnings) ctx.warn(w)
    const { backups, totals, disk } = status
    if (backups.length)
      ctx.detail(...table([
        ['NAME', 'TYPE', 'AGE', 'FILES', 'SIZE', 'UNIQUE', 'VERIFIED', 'LATEST'],
        ...backups.map((b) => [b.name, b.type, b.age, String(b.files), bytes(b.bytes), bytes(b.unique_bytes), verified(b, now), b.latest ? 'yes' : '']),
      ]))
    const space = `${bytes(disk.free_bytes)} free of ${bytes(disk.total_bytes)}`
    ctx.detail(`total: ${count(totals.backups, 'backup')}, ${bytes(totals.bytes)} (${bytes(totals.bytes_on_disk)} on disk); backup disk: ${space}`)
    const newest = backups.at(-1)
    const headline = newest ? `${count(backups.length, 'backup')}, newest ${newest.age} old` : 'no complete backup'
    const warned = status.warnings.length ? `; ${count(status.warnings.length, 'warning')}` : ''
    return ctx.finish(`${headline}; backup disk: ${space}${warned}`, { ...status })
  },
})

export default task
runWhenMain(import.meta, task)
