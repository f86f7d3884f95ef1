// Removes remote backups older than DAYS and what interrupted sends left, by the local rules: whatever their
// age it keeps the newest BACKUP_KEEP_MIN, the newest whose last remote verification passed and the one
// remote latest points at. Damaged backups and anything not named like a backup are never touched.
import path from 'node:path'
import { planRetention } from '../lib/backup/status.ts'
import { remoteHost, remoteLabel, removeRemote, removeRemotePartials, scanRemote, withRemote } from '../lib/backup/remote.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import backupCleanup from './backup-cleanup.ts'
import { count } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'remote-backup-cleanup',
  description: 'Remove remote backups older than DAYS, always keeping the newest BACKUP_KEEP_MIN, the newest verified one and latest',
  tags: ['backup', 'cleanup', 'remote'],
  args: backupCleanup.args,
  async run(ctx) {
    return withRemote(ctx, async (r) => {
      const days = ctx.args.days ?? ctx.settings.backup.retentionDays
      const now = new Date()
      const store = await scanRemote(ctx.$, r)
      for (const d of store.damaged) ctx.warn(`${d.name} on ${remoteHost(r)} is damaged (${d.reason}): left alone`)
      await removeRemotePartials(ctx, r, store)
      const plan = planRetention(ctx, store.complete, store.latest, days, now)
      for (const { backup, before } of plan.doomed)
        await ctx.apply({ path: `${remoteLabel(r)}/${backup.name}`, action: 'remove backup', before, after: null }, null, () => removeRemote(ctx.$, r, [backup.name]))
      const removed = [plan.doomed.length ? count(plan.doomed.length, 'backup') : '', store.partials.length ? count(store.partials.length, 'partial backup') : ''].filter(Boolean)
      const verb = ctx.check ? 'would remove' : 'removed'
      return ctx.finish(`${removed.length ? `${verb} ${removed.join(' and ')}` : 'nothing to remove'} on ${remoteLabel(r)}, kept ${plan.backups.length - plan.doomed.length}`, {
        days,
        keep_min: ctx.settings.backup.keepMin,
        backups: plan.backups,
        removed: plan.doomed.map((d) => d.backup.name),
        partials: store.partials.map((p) => path.posix.basename(p)),
        damaged: store.damaged,
      })
    })
  },
})

export default task
runWhenMain(import.meta)
