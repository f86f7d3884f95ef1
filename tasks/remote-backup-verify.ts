// Ensures nothing: checks a remote backup (latest, or BACKUP) against its catalog and has the remote host
// hash a sample with its own `sha256sum -c`, so citadel need not be installed there. Fails on any problem.
// The record goes into the remote backup's metadata, as locally: bookkeeping, so the task reports ok.
import { findBackup, noSuchBackup } from '../lib/backup/store.ts'
import { remoteHost, remoteLabel, scanRemote, withRemote } from '../lib/backup/remote.ts'
import { recordRemoteVerification, verifyRemote } from '../lib/backup/remote-build.ts'
import { z } from 'zod'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { sampleArg, seedArg, showVerification } from '../lib/backup/verify.ts'
import { progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'remote-backup-verify',
  description: 'Check a remote backup against its catalog and hash a sample with sha256sum -c on the remote host',
  tags: ['backup', 'verify', 'remote'],
  args: z.object({
    backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'a remote backup name, or latest (the default)' }),
    sample: sampleArg,
    seed: seedArg,
  }),
  async run(ctx) {
    return withRemote(ctx, async (r) => {
      const wanted = ctx.args.backup
      const store = await scanRemote(ctx.$, r)
      const backup = findBackup(store, wanted, ctx.settings.modelsActive)
      if (!backup) return ctx.fail(noSuchBackup(store, wanted, remoteLabel(r)))
      const rate = ctx.args.sample ?? ctx.settings.backup.verifySampleRate
      const seed = ctx.args.seed ?? null
      const started = Date.now()
      const outcome = await verifyRemote(ctx, r, backup, rate, seed, (done, total) => ctx.progress(progressLine(`hashing on ${remoteHost(r)}`, done, total, started)))
      await ctx.bookkeep(`verification of ${remoteHost(r)}:${backup.name}`, () => recordRemoteVerification(ctx, r, backup, outcome))
      return showVerification(ctx, `${remoteHost(r)}:${backup.name}`, outcome)
    })
  },
})

export default task
runWhenMain(import.meta)
