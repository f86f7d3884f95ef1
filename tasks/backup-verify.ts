// Ensures nothing: checks a backup (the latest, or BACKUP) against its catalog and hashes a sample against
// its manifest, and fails on any problem. The record of the run goes into the backup's metadata, failed or
// not: that is bookkeeping, not a change to the backup, so the task reports ok when nothing is wrong.
import path from 'node:path'
import { backupsDir, findBackup, scanStore } from '../lib/backups.ts'
import { bytes, count, progressLine, summarize, table } from '../lib/report.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'
import { recordVerification, verifyBackup } from '../lib/verify.ts'

const task = defineTask({
  name: 'backup-verify',
  description: 'Check a backup against its catalog (sizes, links, strays) and hash a sample against its manifest, files verified longest ago first',
  tags: ['backup', 'verify'],
  args: [
    { name: 'backup', positional: true, type: 'string', value: 'BACKUP', help: 'a backup name, or latest (the default)' },
    { name: 'sample', type: 'string', value: 'RATE', help: 'share of the bytes and of the files to hash (default: BACKUP_VERIFY_SAMPLE_RATE)',
      check: (v) => (/^(\d+\.?\d*|\.\d+)$/.test(v) && Number(v) > 0 && Number(v) <= 1 ? null : 'expected a ratio greater than 0 and at most 1, e.g. 0.1') },
    { name: 'seed', type: 'string', value: 'N', help: 'the same N hashes the same sample, whichever files were verified recently',
      check: (v) => (/^\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? null : 'expected a whole number, e.g. 7') },
  ],
  async run(ctx) {
    const wanted = typeof ctx.args.backup === 'string' ? ctx.args.backup : undefined
    const store = await scanStore(ctx.settings)
    const backup = findBackup(store, wanted)
    if (!backup) {
      if (!store.complete.length) return ctx.fail(`no complete backup in ${backupsDir(ctx.settings)}: make one with citadel backup create`)
      const damaged = store.damaged.find((d) => d.name === path.basename(wanted ?? ''))
      const available = `available: ${store.complete.map((b) => b.name).join(', ')}`
      return ctx.fail(damaged ? `${damaged.name} is damaged (${damaged.reason}); ${available}` : `no complete backup named ${wanted ?? `latest (${store.latest})`}; ${available}`)
    }

    const rate = typeof ctx.args.sample === 'string' ? Number(ctx.args.sample) : ctx.settings.backup.verifySampleRate
    const started = Date.now()
    const outcome = await verifyBackup(backup, {
      rate,
      seed: typeof ctx.args.seed === 'string' ? Number(ctx.args.seed) : null,
      signal: ctx.signal,
      onProgress: (done, total) => ctx.progress(progressLine('hashing', done, total, started)),
      warn: (message) => ctx.warn(message),
    })
    const { verification: v, sampled } = outcome
    if (!ctx.check) await recordVerification(backup, outcome)

    for (const rel of v.transient) ctx.warn(`${rel}: the first read disagreed with the manifest, a second agreed: a read error, not corruption`)
    if (v.problems.length) ctx.detail(...table([['PATH', 'PROBLEM', 'DETAIL'], ...v.problems.map((p) => [p.path, p.kind, p.detail])]))
    const share = outcome.totalBytes > 0 ? Math.round((v.bytes_hashed / outcome.totalBytes) * 100) : 100
    const head = `${backup.name}: ${count(v.files_checked, 'file')} checked, ${v.files_hashed} hashed (${bytes(v.bytes_hashed)}, ${share}% of bytes)`
    const data = { backup: backup.name, verification: v, sampled }
    if (!v.ok) return ctx.fail(`${head}: ${count(v.problems.length, 'problem')}: ${summarize(v.problems.map((p) => `${p.path}: ${p.kind}`))}`, data)
    return ctx.finish(`${head}: ok`, data)
  },
})

export default task
runWhenMain(import.meta, task)
