// Ensures nothing: checks a backup (the latest, or BACKUP) against its catalog and hashes a sample against
// its manifest, and fails on any problem; with --remote a backup on BACKUP_REMOTE, hashed there by its own
// `sha256sum -c`, so citadel need not be installed there. The record of the run goes into the backup's
// metadata, failed or not: that is bookkeeping, not a change to the backup, so the task reports ok when
// nothing is wrong.
import { findBackup, latestDamaged, noSuchBackup, shownName } from '../lib/backup/store.ts'
import { z } from 'zod'
import { onStore, remoteArg, rootsOf } from '../lib/backup/store-tasks.ts'
import { recordVerification, verifyBackup } from '../lib/backup/verify.ts'
import { showVerification } from '../lib/backup/verify-report.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { SETTINGS, wholeNumber } from '../lib/infra/config.ts'
import { progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first',
  tags: ['backup', 'verify'],
  roots: rootsOf(['backup']),
  args: z.object({
    backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'a backup name, or latest (the default)' }),
    sample: SETTINGS.BACKUP_VERIFY_SAMPLE_RATE.schema.optional()
      .meta({ value: 'RATE', description: 'share of the bytes and of the files to hash (default: BACKUP_VERIFY_SAMPLE_RATE)' }),
    seed: wholeNumber(0, '7').optional().meta({ value: 'N', description: 'the same N hashes the same sample, whichever files were verified recently' }),
    remote: remoteArg,
  }),
  aliases: { 'remote-backup-verify': { remote: true } },
  async run(ctx) {
    return onStore(ctx, async (store) => {
      const wanted = ctx.args.backup
      const contents = await store.scan()
      // Verifying the newest good backup instead would pass while the one `latest` names is unreadable.
      const broken = wanted === undefined || wanted === 'latest' ? latestDamaged(contents) : null
      if (broken) return ctx.fail(`latest points at ${broken.name}${store.host ? ` on ${store.host}` : ''}, which is damaged (${broken.reason}); restore that file, or verify another backup by name`)
      const backup = findBackup(contents, wanted, ctx.settings.modelsActive)
      if (!backup) return ctx.fail(noSuchBackup(contents, wanted, store.label))

      const started = Date.now()
      const outcome = await verifyBackup(store, backup, {
        rate: ctx.args.sample ?? ctx.settings.backup.verifySampleRate,
        seed: ctx.args.seed ?? null,
        signal: ctx.signal,
        onProgress: (done, total) => ctx.progress(progressLine(store.host ? `hashing on ${store.host}` : 'hashing', done, total, started)),
        warn: (message) => ctx.warn(message),
      })
      // The hashing is done: a record that cannot be written (a full backup disk) must not hide its result.
      const shown = shownName(store, backup.name)
      const unrecorded = await ctx.bookkeep(`verification of ${shown}`, () => recordVerification(store, backup, outcome)).then(() => null, (err: NodeJS.ErrnoException) => err)
      const result = showVerification(ctx, shown, outcome)
      if (!unrecorded) return result
      const full = unrecorded.code === 'ENOSPC' ? `the backup disk ${ctx.settings.backupRoot} is full; free space there and verify again` : 'verify again once it can be written'
      return ctx.fail(`${result.msg}; this result was not recorded in ${backup.name}: ${unrecorded.message}; ${full}`, result.data)
    })
  },
})

export default task
runWhenMain(import.meta)
