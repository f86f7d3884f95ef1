// Sending a local backup to the store over ssh. It is sent as <name>.partial with rsync --link-dest to
// the newest remote backup, and renamed only once it is all there: as locally, nothing incomplete ever
// carries a backup's name.
import path from 'node:path'
import type { RemoteSettings } from '../infra/config.ts'
import type { TaskContext } from '../core/task.ts'
import { planCopy } from './build.ts'
import { rsyncCopy } from './rsync.ts'
import { publishRemote, remoteHost, remoteLabel, remoteStoreDir, removeRemote, rsyncRsh } from './ssh-store.ts'
import { DATA, META, partialName, VERIFY_STATE, type Backup } from './store.ts'

/**
 * Bytes the remote disk needs for `backup`: all of it, or with `localParent` (the local copy of the remote
 * backup it will be linked to) only the files rsync will not hard-link, plus room for metadata.
 */
export const bytesToSend = (backup: Backup, localParent: Backup | null) => planCopy(path.join(backup.dir, DATA), localParent && localParent.dir).bytesNeeded

/**
 * Sends `backup` to the remote store and publishes it; `remoteParent` is the remote backup unchanged files
 * are hard-linked to, `latest` the name remote latest points at afterwards. On failure or interrupt the
 * partial copy is removed from the remote host when it can still be reached; otherwise the next send or
 * cleanup removes it.
 */
export async function sendBackup(ctx: TaskContext, r: RemoteSettings, backup: Backup, remoteParent: Backup | null, latest: string, onBytes: (bytes: number) => void): Promise<number> {
  const partial = partialName(backup.name)
  let published = false
  let copied = 0
  try {
    const copy = await rsyncCopy(ctx.$, {
      src: backup.dir,
      dest: `${remoteHost(r)}:${path.posix.join(remoteStoreDir(r), partial)}`,
      linkDest: remoteParent && remoteParent.dir,
      rsh: rsyncRsh(r),
      bandwidthLimit: r.bandwidthLimit,
      // The remote copy has its own metadata and its own verification history.
      excludes: [`/${META}`, `/${VERIFY_STATE}`],
      signal: ctx.signal,
      onBytes: (b) => onBytes((copied = b)),
    })
    if (copy.error) throw new Error(`sending ${backup.name} to ${remoteLabel(r)} failed: ${copy.error}`)
    ctx.progress(`publishing ${backup.name} on ${remoteHost(r)}`)
    await publishRemote(ctx.$, r, partial, backup.name, latest, { ...backup.meta, parent: remoteParent?.name ?? null, verifications: [] })
    published = true
    return copied
  } finally {
    if (!published) await removeRemote(ctx.$, r, [partial]).catch((err) => ctx.warn(`could not remove ${partial} from ${remoteHost(r)}: ${(err as Error).message}; the next send or cleanup removes it`))
  }
}
