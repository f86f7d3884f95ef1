// Ensures nothing: shows every complete backup (age, size, the bytes only it holds, its last verification),
// the space left on the backup disk and what needs attention. Warnings never fail it; an unreadable store does.
import { backupStatus, showStatus, type BackupStatus } from '../lib/backup/status.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'backup-status',
  description: 'Show each backup with its age, size, unique bytes and last verification, the space left on the backup disk, and what needs attention',
  tags: ['backup', 'status'],
  // Only reads: it answers while another run holds the lock.
  readOnly: true,
  roots: ['backup'],
  async run(ctx) {
    const now = new Date()
    let status: BackupStatus
    try {
      status = await backupStatus(ctx.settings, now)
    } catch (err) {
      return ctx.fail(`cannot read the backup store: ${(err as Error).message}`)
    }
    return showStatus(ctx, status, now, 'backup disk')
  },
})

export default task
runWhenMain(import.meta)
