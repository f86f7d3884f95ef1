// Ensures nothing: checks a backup (the latest, or BACKUP) against its catalog and hashes a sample against
// its manifest, and fails on any problem. The record of the run goes into the backup's metadata, failed or
// not: that is bookkeeping, not a change to the backup, so the task reports ok when nothing is wrong.
import { backupsDir, findBackup, noSuchBackup, scanStore } from '../lib/backups.ts'
import { progressLine } from '../lib/report.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'
import { recordVerification, SAMPLE_ARG, SEED_ARG, showVerification, verifyBackup } from '../lib/verify.ts'

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first',
  tags: ['backup', 'verify'],
  roots: ['backup'],
  args: [
    { name: 'backup', positional: true, type: 'string', value: 'BACKUP', help: 'a backup name, or latest (the default)' },
    SAMPLE_ARG,
    SEED_ARG,
  ],
  async run(ctx) {
    const wanted = typeof ctx.args.backup === 'string' ? ctx.args.backup : undefined
    const store = await scanStore(ctx.settings)
    const backup = findBackup(store, wanted)
    if (!backup) return ctx.fail(noSuchBackup(store, wanted, backupsDir(ctx.settings)))

    const rate = typeof ctx.args.sample === 'string' ? Number(ctx.args.sample) : ctx.settings.backup.verifySampleRate
    const started = Date.now()
    const outcome = await verifyBackup(backup, {
      rate,
      seed: typeof ctx.args.seed === 'string' ? Number(ctx.args.seed) : null,
      signal: ctx.signal,
      onProgress: (done, total) => ctx.progress(progressLine('hashing', done, total, started)),
      warn: (message) => ctx.warn(message),
    })
    if (!ctx.check) await recordVerification(backup, outcome)

    return showVerification(ctx, backup.name, outcome)
  },
})

export default task
runWhenMain(import.meta, task)
