// Ensures nothing: judges the backup store as monitoring does. Critical with no complete backup; a warning
// when the newest is more than 8 days old, the last verification failed, or no restore drill succeeded
// within BACKUP_DRILL_MAX_AGE_DAYS. Reads metadata only.
import { backupHealth } from '../lib/backup/health.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'check-backups',
  description: 'Judge the backups: age of the newest complete one, the last verification and the last restore drill',
  tags: ['monitor', 'backup'],
  readOnly: true,
  async run(ctx) {
    const health = await backupHealth(ctx.settings)
    for (const p of health.problems) ctx.warn(`${p.severity}: ${p.message}`)
    const { newest, last_verification: last } = health
    const verified = last ? `last verification ${last.ok ? 'ok' : 'FAILED'} (${last.backup})` : 'never verified'
    const msg = newest ? `newest backup ${newest.age} old (${newest.type}), ${verified}` : 'no complete backup'
    return ctx.finish(msg, { ...health })
  },
})

export default task
runWhenMain(import.meta)
