// Ensures the remote store (BACKUP_REMOTE) holds a local backup, the latest or BACKUP: sent over ssh with
// rsync as <name>.partial, hard-linked to the newest remote backup where files are unchanged, renamed once
// complete, and remote latest swapped to the newest. A backup already there is left alone, so a second run
// changes nothing. `citadel backup create --remote` runs this task.
import { scanStore, findBackup, noSuchBackup, backupsDir } from '../lib/backup/store.ts'
import { pointRemoteLatest, remoteLabel, removeRemotePartials, scanRemote, withRemote } from '../lib/backup/remote.ts'
import { bytesToSend, sendBackup } from '../lib/backup/remote-build.ts'
import { z } from 'zod'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { bytes, count, progressLine } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'remote-backup-create',
  description: 'Send a local backup (latest, or BACKUP) to BACKUP_REMOTE over ssh, hard-linked to the newest remote backup',
  tags: ['backup', 'remote'],
  roots: ['backup'],
  args: z.object({
    backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'the local backup to send, or latest (the default)' }),
  }),
  async run(ctx) {
    return withRemote(ctx, async (r) => {
      const wanted = ctx.args.backup
      const local = await scanStore(ctx.settings)
      const backup = findBackup(local, wanted, ctx.settings.modelsActive)
      if (!backup) return ctx.fail(noSuchBackup(local, wanted, backupsDir(ctx.settings)))
      const remote = await scanRemote(ctx.$, r, ctx.check ? 'read' : 'create')
      await removeRemotePartials(ctx, r, remote)
      const newest = [...remote.complete.map((b) => b.name), backup.name].sort().at(-1)!
      const target = `${remoteLabel(r)}/${backup.name}`
      if (remote.complete.some((b) => b.name === backup.name)) {
        if (remote.latest !== newest)
          await ctx.apply({ path: `${remoteLabel(r)}/latest`, action: 'point latest', before: remote.latest, after: newest }, null, () => pointRemoteLatest(ctx.$, r, newest))
        return ctx.finish(`${backup.name} is on ${remoteLabel(r)}`, { backup: backup.name, remote: remoteLabel(r), sent: false })
      }
      const parent = remote.complete.at(-1) ?? null
      const needed = bytesToSend(backup, local.complete.find((b) => b.name === parent?.name) ?? null)
      if (needed > remote.disk.free_bytes)
        return ctx.fail(`not enough space on ${remoteLabel(r)}: sending ${backup.name} needs about ${bytes(needed)}, ${bytes(remote.disk.free_bytes)} are free`)
      const summary = `${backup.type} backup, ${count(backup.meta.files, 'file')}, ${bytes(backup.meta.bytes)}; linked to ${parent?.name ?? 'nothing (first remote backup)'}`
      const started = Date.now()
      let copied = 0
      await ctx.apply({ path: target, action: 'send backup', before: null, after: summary }, null, async () => {
        copied = await sendBackup(ctx, r, backup, parent, newest, (done) => ctx.progress(progressLine('sending', done, needed, started)))
      })
      const verb = ctx.check ? 'would send' : 'sent'
      return ctx.finish(`${verb} ${backup.name} to ${remoteLabel(r)} (${summary})`, { backup: backup.name, remote: remoteLabel(r), sent: true, parent: parent?.name ?? null, copied_bytes: copied })
    })
  },
})

export default task
runWhenMain(import.meta)
