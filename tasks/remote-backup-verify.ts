// Ensures nothing: checks a remote backup (latest, or BACKUP) against its catalog and has the remote host
// hash a sample with its own `sha256sum -c`, so citadel need not be installed there. Fails on any problem.
// The record goes into the remote backup's metadata, as locally: bookkeeping, so the task reports ok.
import { findBackup, noSuchBackup } from '../lib/backup/store.ts'
import { remoteHost, remoteLabel, scanRemote, withRemote } from '../lib/backup/remote.ts'
import { recordRemoteVerification, verifyRemote } from '../lib/backup/remote-build.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { SAMPLE_ARG, SEED_ARG, showVerification } from '../lib/backup/verify.ts'
import { progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'remote-backup-verify',
  description: 'Check a remote backup against its catalog and hash a sample with sha256sum -c on the remote host',
  tags: ['backup', 'verify', 'remote'],
  args: [{ name: 'backup', positional: true, type: 'string', value: 'BACKUP', help: 'a remote backup name, or latest (the default)' }, SAMPLE_ARG, SEED_ARG],
  async run(ctx) {
    return withRemote(ctx, async (r) => {
      const wanted = typeof ctx.args.backup === 'string' ? ctx.args.backup : undefined
      const store = await scanRemote(ctx.$, r)
      const backup = findBackup(store, wanted, ctx.settings.modelsActive)
      if (!backup) return ctx.fail(noSuchBackup(store, wanted, remoteLabel(r)))
      const rate = typeof ctx.args.sample === 'string' ? Number(ctx.args.sample) : ctx.settings.backup.verifySampleRate
      const seed = typeof ctx.args.seed === 'string' ? Number(ctx.args.seed) : null
      const started = Date.now()
      const outcome = await verifyRemote(ctx, r, backup, rate, seed, (done, total) => ctx.progress(progressLine(`hashing on ${remoteHost(r)}`, done, total, started)))
      if (!ctx.check) await recordRemoteVerification(ctx, r, backup, outcome)
      return showVerification(ctx, `${remoteHost(r)}:${backup.name}`, outcome)
    })
  },
})

export default task
runWhenMain(import.meta)
