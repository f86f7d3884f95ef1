// Ensures nothing, unless --repair: checks a backup (the latest, or BACKUP) against its catalog and hashes a
// sample against its manifest, and fails on any problem; with --remote a backup on BACKUP_REMOTE, hashed
// there by its own `sha256sum -c`, so citadel need not be installed there. The record of the run goes into
// the backup's metadata, failed or not: that is bookkeeping, not a change to the backup, so the task reports
// ok when nothing is wrong. With --repair (local store only, under the store lock) each file found rotten,
// cut short, unreadable or missing is healed from a copy that hashes as its manifest says, in every backup
// that shares its inode (lib/backup/heal.ts): those are changes, and the record says what was healed.
import path from 'node:path'
import { healBackup, removeLeftovers, type Repair } from '../lib/backup/heal.ts'
import { DATA, findBackup, latestDamaged, noSuchBackup, shownName, type Backup, type BackupStore, type StoreContents } from '../lib/backup/store.ts'
import { z } from 'zod'
import { onStore, remoteArg, rootsOf } from '../lib/backup/store-tasks.ts'
import { recordVerification, verifyBackup, type VerifyOutcome } from '../lib/backup/verify.ts'
import { showVerification } from '../lib/backup/verify-report.ts'
import { defineTask, runWhenMain, type TaskContext } from '../lib/core/task.ts'
import { SETTINGS, wholeNumber, type RemoteSettings } from '../lib/infra/config.ts'
import { progressLine } from '../lib/infra/format.ts'

const args = z.object({
  backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'a backup name, or latest (the default)' }),
  sample: SETTINGS.BACKUP_VERIFY_SAMPLE_RATE.schema.optional()
    .meta({ value: 'RATE', description: 'share of the bytes and of the files to hash (default: BACKUP_VERIFY_SAMPLE_RATE)' }),
  seed: wholeNumber(0, '7').optional().meta({ value: 'N', description: 'the same N hashes the same sample, whichever files were verified recently' }),
  repair: z.boolean().optional().meta({ description: 'heal each file found rotten, cut short, unreadable or missing from a copy that hashes as the manifest says (the active models, another backup, BACKUP_REMOTE), in every backup sharing its inode' }),
  remote: remoteArg,
}).refine((a) => !(a.remote && a.repair), { path: ['repair'], message: 'not with --remote: only a backup on the backup disk can be healed; verify it with --remote, heal the local one' })

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first; with --repair heal the bad files from a good copy',
  tags: ['backup', 'verify'],
  roots: rootsOf(['backup']),
  args,
  aliases: { 'remote-backup-verify': { remote: true } },
  async run(ctx) {
    return onStore(ctx, async (store) => {
      const work = async () => {
        const wanted = ctx.args.backup
        const contents = await store.scan()
        // Verifying the newest good backup instead would pass while the one `latest` names is unreadable.
        const broken = wanted === undefined || wanted === 'latest' ? latestDamaged(contents) : null
        if (broken) return ctx.fail(`latest points at ${broken.name}${store.host ? ` on ${store.host}` : ''}, which is damaged (${broken.reason}); restore that file, or verify another backup by name`)
        const backup = findBackup(contents, wanted, ctx.settings.modelsActive)
        if (!backup) return ctx.fail(noSuchBackup(contents, wanted, store.label))
        return verify(ctx, store, contents, backup, ctx.args.repair ? { remote: ctx.settings.backup.remote ?? null } : null)
      }
      // A repair writes into the backups: no create or cleanup may run meanwhile.
      return ctx.args.repair ? store.exclusive(ctx, work) : work()
    })
  },
})

/** Verifies `backup`; with `repair` heals what it can (from BACKUP_REMOTE too, when set), then records the run. */
async function verify(ctx: TaskContext<z.output<typeof args>>, store: BackupStore, contents: StoreContents, backup: Backup, repair: { remote: RemoteSettings | null } | null) {
  // What a killed repair left would count as strays of the backup.
  const leftovers = repair ? await removeLeftovers(ctx, path.join(backup.dir, DATA)) : []
  const started = Date.now()
  let outcome = await verifyBackup(store, backup, {
    rate: ctx.args.sample ?? ctx.settings.backup.verifySampleRate,
    seed: ctx.args.seed ?? null,
    signal: ctx.signal,
    onProgress: (done, total) => ctx.progress(progressLine(store.host ? `hashing on ${store.host}` : 'hashing', done, total, started)),
    warn: (message) => ctx.warn(message),
  })
  let repaired: Repair | null = null
  if (repair && outcome.state !== null) {
    const lists = await store.readLists(backup)
    if (!('message' in lists)) {
      repaired = await healBackup(ctx, { store, backup, contents, lists, problems: outcome.verification.problems, remote: repair.remote })
      repaired.leftovers.unshift(...leftovers)
      outcome = withHealed(outcome, repaired)
    }
  }
  // The hashing is done: a record that cannot be written (a full backup disk) must not hide its result.
  const shown = shownName(store, backup.name)
  const unrecorded = await ctx.bookkeep(`verification of ${shown}`, () => recordVerification(store, backup, outcome)).then(() => null, (err: NodeJS.ErrnoException) => err)
  const result = showVerification(ctx, shown, outcome, repaired)
  if (!unrecorded) return result
  const full = unrecorded.code === 'ENOSPC' ? `the backup disk ${ctx.settings.backupRoot} is full; free space there and verify again` : 'verify again once it can be written'
  return ctx.fail(`${result.msg}; this result was not recorded in ${backup.name}: ${unrecorded.message}; ${full}`, result.data)
}

/**
 * The record of a verification whose healed files now hash as the manifest says: the problems found stay,
 * `healed` names which were mended and from where, it is ok when nothing else is wrong, and the healed files
 * count as verified now (their copies were hashed once written).
 */
function withHealed(outcome: VerifyOutcome, repair: Repair): VerifyOutcome {
  if (!repair.healed.length) return outcome
  const v = outcome.verification
  const healed = new Set(repair.healed.map((h) => h.path))
  const now = new Date().toISOString()
  const state = outcome.state && { ...outcome.state, ...Object.fromEntries([...healed].map((rel) => [rel, now])) }
  return {
    ...outcome,
    state,
    verification: { ...v, ok: v.problems.every((p) => healed.has(p.path)), healed: repair.healed.map((h) => ({ path: h.path, from: h.from })) },
  }
}

export default task
runWhenMain(import.meta)
