// Ensures nothing: shows every backup in the remote store (age, size, last verification), the space left
// on the remote disk and what needs attention, by the same rules as the local backup-status.
import { summarizeStore, showStatus } from '../lib/backup/status.ts'
import { remoteLabel, scanRemote, withRemote } from '../lib/backup/remote.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'remote-backup-status',
  description: 'Show each backup in BACKUP_REMOTE with its age, size and last verification, the space left there, and what needs attention',
  tags: ['backup', 'status', 'remote'],
  readOnly: true,
  async run(ctx) {
    return withRemote(ctx, async (r) => {
      const now = new Date()
      const store = await scanRemote(ctx.$, r, 'du')
      const status = summarizeStore(remoteLabel(r), store, now, store.disk, null, store.bytes_on_disk ?? 0, ctx.settings.modelsActive)
      return showStatus(ctx, status, now, 'remote disk')
    })
  },
})

export default task
runWhenMain(import.meta)
