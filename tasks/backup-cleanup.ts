// Removes complete backups older than DAYS and what interrupted creates and sends left, on the backup disk
// or, with --remote, on BACKUP_REMOTE, by one rule. Whatever their age it keeps, of each source, the newest
// BACKUP_KEEP_MIN and the newest one whose last verification passed (a copy known to be good; an empty
// backup never counts as one), and the one `latest` points at. It works under the store lock, so a partial
// that another app root sharing the store is still building is never taken for a leftover. Damaged backups
// and anything not named like a backup are never touched. A removed backup cannot be journaled, so a failed
// run does not bring it back.
import path from 'node:path'
import { planRetention } from '../lib/backup/retention.ts'
import { z } from 'zod'
import { onStore, remoteArg, removePartials, rootsOf } from '../lib/backup/store-tasks.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { SETTINGS } from '../lib/infra/config.ts'
import { bytes, count } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'backup-cleanup',
  description: 'Remove backups older than DAYS, always keeping of each source the newest BACKUP_KEEP_MIN and the newest verified one, and latest',
  tags: ['backup', 'cleanup'],
  roots: rootsOf(['backup']),
  args: z.object({
    days: SETTINGS.BACKUP_RETENTION_DAYS.schema.optional().meta({ positional: true, value: 'DAYS', description: 'remove backups older than this many days (default: BACKUP_RETENTION_DAYS)' }),
    remote: remoteArg,
  }),
  aliases: { 'remote-backup-cleanup': { remote: true } },
  async run(ctx) {
    const { settings } = ctx
    return onStore(ctx, async (store) => {
      const missing = await store.missing()
      if (missing) return ctx.fail(missing)
      return store.exclusive(ctx, async () => {
        const days = ctx.args.days ?? settings.backup.retentionDays
        const on = store.host ? ` on ${store.host}` : ''
        const contents = await store.scan()

        for (const d of contents.damaged) ctx.warn(`${d.name}${on} is damaged (${d.reason}): left alone`)
        await removePartials(ctx, store, contents)

        const plan = planRetention(ctx, contents.complete, contents.latest, days, new Date())
        // Files an incremental shares with a removed backup stay on disk: only what no kept backup holds is freed.
        const freed = plan.doomed.length ? store.heldOnlyBy(contents.complete)?.(plan.doomed.map((d) => d.backup.name)) ?? null : 0
        for (const { backup, before } of plan.doomed)
          await ctx.apply({ path: store.pathOf(backup.name), action: 'remove backup', before, after: null }, null, () => store.remove(backup.name))

        const removed = [plan.doomed.length ? `${count(plan.doomed.length, 'backup')}${freed === null ? '' : ` (${bytes(freed)})`}` : '', contents.partials.length ? count(contents.partials.length, 'partial backup') : ''].filter(Boolean)
        const verb = ctx.check ? 'would remove' : 'removed'
        return ctx.finish(`${removed.length ? `${verb} ${removed.join(' and ')}` : 'nothing to remove'}${on}, kept ${plan.backups.length - plan.doomed.length}`, {
          days,
          keep_min: settings.backup.keepMin,
          backups: plan.backups,
          removed: plan.doomed.map((d) => d.backup.name),
          freed_bytes: freed,
          partials: contents.partials.map((p) => path.posix.basename(p)),
          damaged: contents.damaged,
        })
      })
    })
  },
})

export default task
runWhenMain(import.meta)
