// Removes complete backups older than DAYS and what interrupted creates left. Whatever their age it keeps,
// of each source, the newest BACKUP_KEEP_MIN and the newest one whose last verification passed (a copy known
// to be good; an empty backup never counts as one), and the one `latest` points at. It works under the store
// lock, so a partial that another app root sharing the store is still building is never taken for a leftover. Damaged backups and anything not named like a backup are never touched.
// A removed backup cannot be journaled, so a failed run does not bring it back.
import path from 'node:path'
import { bytesHeldOnlyBy, planRetention, sharing } from '../lib/backup/status.ts'
import { removeBackupDir, removePartials, scanStore, storeMissing, withStoreLock } from '../lib/backup/store.ts'
import { z } from 'zod'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { SETTINGS } from '../lib/infra/config.ts'
import { bytes, count } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'backup-cleanup',
  description: 'Remove backups older than DAYS, always keeping of each source the newest BACKUP_KEEP_MIN and the newest verified one, and latest',
  tags: ['backup', 'cleanup'],
  roots: ['backup'],
  args: z.object({
    days: SETTINGS.BACKUP_RETENTION_DAYS.schema.optional().meta({ positional: true, value: 'DAYS', description: 'remove backups older than this many days (default: BACKUP_RETENTION_DAYS)' }),
  }),
  async run(ctx) {
    const { settings } = ctx
    const missing = await storeMissing(settings)
    if (missing) return ctx.fail(missing)
    return withStoreLock(ctx, async () => {
      const days = ctx.args.days ?? settings.backup.retentionDays
      const now = new Date()
      const verb = ctx.check ? 'would remove' : 'removed'
      const store = await scanStore(settings)

      for (const d of store.damaged) ctx.warn(`${d.name} is damaged (${d.reason}): left alone`)
      await removePartials(ctx, store)

      const plan = planRetention(ctx, store.complete, store.latest, days, now)
      // Files an incremental shares with a removed backup stay on disk: only what no kept backup holds is freed.
      const freed = plan.doomed.length ? bytesHeldOnlyBy(sharing(store.complete), plan.doomed.map((d) => d.backup.name)) : 0
      for (const { backup, before } of plan.doomed)
        await ctx.apply({ path: backup.dir, action: 'remove backup', before, after: null }, null, () => removeBackupDir(settings, backup.dir))

      const removed = [plan.doomed.length ? `${count(plan.doomed.length, 'backup')} (${bytes(freed)})` : '', store.partials.length ? count(store.partials.length, 'partial backup') : ''].filter(Boolean)
      return ctx.finish(`${removed.length ? `${verb} ${removed.join(' and ')}` : 'nothing to remove'}, kept ${plan.backups.length - plan.doomed.length}`, {
        days,
        keep_min: settings.backup.keepMin,
        backups: plan.backups,
        removed: plan.doomed.map((d) => d.backup.name),
        freed_bytes: freed,
        partials: store.partials.map((p) => path.basename(p)),
        damaged: store.damaged,
      })
    })
  },
})

export default task
runWhenMain(import.meta)
