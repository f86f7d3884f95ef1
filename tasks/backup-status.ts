// Ensures nothing: shows every complete backup (age, size, the bytes only it holds, its last verification),
// the space left on the store's disk and what needs attention; with --remote, of the store on BACKUP_REMOTE.
// Warnings never fail it; an unreadable store does.
import { storeStatus, type BackupStatus } from '../lib/backup/status.ts'
import { showStatus } from '../lib/backup/status-report.ts'
import { z } from 'zod'
import { onStore, remoteArg, rootsOf } from '../lib/backup/store-tasks.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'backup-status',
  description: 'Show each backup with its age, size, unique bytes and last verification, the space left on the backup disk (or BACKUP_REMOTE), and what needs attention',
  tags: ['backup', 'status'],
  // Only reads: it answers while another run holds the lock.
  readOnly: true,
  roots: rootsOf(['backup']),
  args: z.object({ remote: remoteArg }),
  aliases: { 'remote-backup-status': { remote: true } },
  async run(ctx) {
    return onStore(ctx, async (store) => {
      const now = new Date()
      let status: BackupStatus
      try {
        status = await storeStatus(store, now, ctx.settings.modelsActive)
      } catch (err) {
        // Over ssh the message names the host already, and what went wrong reaching it.
        if (store.host) throw err
        return ctx.fail(`cannot read the backup store: ${(err as Error).message}`)
      }
      return showStatus(ctx, status, now, store.host ? 'remote disk' : 'backup disk')
    })
  },
})

export default task
runWhenMain(import.meta)
