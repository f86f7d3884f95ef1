// Ensures nothing: checks a backup (the latest, or BACKUP) against its catalog and hashes a sample against
// its manifest, and fails on any problem. The record of the run goes into the backup's metadata, failed or
// not: that is bookkeeping, not a change to the backup, so the task reports ok when nothing is wrong.
import { backupsDir, findBackup, latestDamaged, noSuchBackup, scanStore } from '../lib/backup/store.ts'
import { z } from 'zod'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { recordVerification, sampleArg, seedArg, showVerification, verifyBackup } from '../lib/backup/verify.ts'
import { progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first',
  tags: ['backup', 'verify'],
  roots: ['backup'],
  args: z.object({
    backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'a backup name, or latest (the default)' }),
    sample: sampleArg,
    seed: seedArg,
  }),
  async run(ctx) {
    const wanted = ctx.args.backup
    const store = await scanStore(ctx.settings)
    // Verifying the newest good backup instead would pass while the one `latest` names is unreadable.
    const broken = wanted === undefined || wanted === 'latest' ? latestDamaged(store) : null
    if (broken) return ctx.fail(`latest points at ${broken.name}, which is damaged (${broken.reason}); restore that file, or verify another backup by name`)
    const backup = findBackup(store, wanted, ctx.settings.modelsActive)
    if (!backup) return ctx.fail(noSuchBackup(store, wanted, backupsDir(ctx.settings)))

    const rate = ctx.args.sample ?? ctx.settings.backup.verifySampleRate
    const started = Date.now()
    const outcome = await verifyBackup(backup, {
      rate,
      seed: ctx.args.seed ?? null,
      signal: ctx.signal,
      onProgress: (done, total) => ctx.progress(progressLine('hashing', done, total, started)),
      warn: (message) => ctx.warn(message),
    })
    // The hashing is done: a record that cannot be written (a full backup disk) must not hide its result.
    const unrecorded = await ctx.bookkeep(`verification of ${backup.name}`, () => recordVerification(backup, outcome)).then(() => null, (err: NodeJS.ErrnoException) => err)
    const result = showVerification(ctx, backup.name, outcome)
    if (!unrecorded) return result
    const full = unrecorded.code === 'ENOSPC' ? `the backup disk ${ctx.settings.backupRoot} is full; free space there and verify again` : 'verify again once it can be written'
    return ctx.fail(`${result.msg}; this result was not recorded in ${backup.name}: ${unrecorded.message}; ${full}`, result.data)
  },
})

export default task
runWhenMain(import.meta)
