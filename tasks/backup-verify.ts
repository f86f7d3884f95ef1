// Ensures nothing: checks a backup (the latest, or BACKUP) against its catalog and hashes a sample against
// its manifest, and fails on any problem; with --remote a backup on BACKUP_REMOTE, hashed there by its own
// `sha256sum -c`, so citadel need not be installed there. The record of the run goes into the backup's
// metadata, failed or not: that is bookkeeping, not a change to the backup, so the task reports ok when
// nothing is wrong.
import { findBackup, latestDamaged, noSuchBackup, shownName } from '../lib/backup/store.ts'
import { onStore, REMOTE_ARG, rootsOf } from '../lib/backup/store-tasks.ts'
import { recordVerification, verifyBackup } from '../lib/backup/verify.ts'
import { showVerification } from '../lib/backup/verify-report.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first',
  tags: ['backup', 'verify'],
  roots: rootsOf(['backup']),
  args: [
    { name: 'backup', positional: true, type: 'string', value: 'BACKUP', help: 'a backup name, or latest (the default)' },
    {
      name: 'sample', type: 'string', value: 'RATE', help: 'share of the bytes and of the files to hash (default: BACKUP_VERIFY_SAMPLE_RATE)',
      check: (v) => (/^(\d+\.?\d*|\.\d+)$/.test(v) && Number(v) > 0 && Number(v) <= 1 ? null : 'expected a ratio greater than 0 and at most 1, e.g. 0.1'),
    },
    {
      name: 'seed', type: 'string', value: 'N', help: 'the same N hashes the same sample, whichever files were verified recently',
      check: (v) => (/^\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? null : 'expected a whole number, e.g. 7'),
    },
    REMOTE_ARG,
  ],
  aliases: { 'remote-backup-verify': { remote: true } },
  async run(ctx) {
    return onStore(ctx, async (store) => {
      const wanted = typeof ctx.args.backup === 'string' ? ctx.args.backup : undefined
      const contents = await store.scan()
      // Verifying the newest good backup instead would pass while the one `latest` names is unreadable.
      const broken = wanted === undefined || wanted === 'latest' ? latestDamaged(contents) : null
      if (broken) return ctx.fail(`latest points at ${broken.name}${store.host ? ` on ${store.host}` : ''}, which is damaged (${broken.reason}); restore that file, or verify another backup by name`)
      const backup = findBackup(contents, wanted, ctx.settings.modelsActive)
      if (!backup) return ctx.fail(noSuchBackup(contents, wanted, store.label))

      const started = Date.now()
      const outcome = await verifyBackup(store, backup, {
        rate: typeof ctx.args.sample === 'string' ? Number(ctx.args.sample) : ctx.settings.backup.verifySampleRate,
        seed: typeof ctx.args.seed === 'string' ? Number(ctx.args.seed) : null,
        signal: ctx.signal,
        onProgress: (done, total) => ctx.progress(progressLine(store.host ? `hashing on ${store.host}` : 'hashing', done, total, started)),
        warn: (message) => ctx.warn(message),
      })
      // The hashing is done: a record that cannot be written (a full backup disk) must not hide its result.
      const unrecorded = ctx.check ? null : await recordVerification(store, backup, outcome).then(() => null, (err: NodeJS.ErrnoException) => err)
      const result = showVerification(ctx, shownName(store, backup.name), outcome)
      if (!unrecorded) return result
      const full = unrecorded.code === 'ENOSPC' ? `the backup disk ${ctx.settings.backupRoot} is full; free space there and verify again` : 'verify again once it can be written'
      return ctx.fail(`${result.msg}; this result was not recorded in ${backup.name}: ${unrecorded.message}; ${full}`, result.data)
    })
  },
})

export default task
runWhenMain(import.meta)
