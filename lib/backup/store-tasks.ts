// What the backup tasks share around a store: the store a task works on (the backup disk, or BACKUP_REMOTE
// with --remote), and the leftovers of interrupted creates, sends and deletes (<name>.partial directories)
// that create and cleanup remove, under the store's lock, so a partial another run still writes is never one.
import path from 'node:path'
import type { RemoteSettings } from '../infra/config.ts'
import { z } from 'zod'
import { isInternalError, type TaskArgs, type TaskContext, type TaskResult } from '../core/task.ts'
import type { RootRole } from '../core/marks.ts'
import { localStore } from './local-store.ts'
import { sshStore } from './ssh-store.ts'
import type { BackupStore, StoreContents } from './store.ts'

/** Set by `citadel backup ACTION --remote` and by the aliases remote-backup-ACTION: the store is BACKUP_REMOTE. */
export const remoteArg = z.boolean().optional().meta({ preset: true, description: 'work on BACKUP_REMOTE over ssh instead of the backup disk' })

/** The disk roots a backup task uses: `local` on the backup disk, none on BACKUP_REMOTE but what `remote` says. */
export const rootsOf = (local: RootRole[], remote: RootRole[] = []) => (args: TaskArgs) => (args.remote === true ? remote : local)

/**
 * Runs a backup task's `work` on the store its arguments name. With --remote that is BACKUP_REMOTE over ssh,
 * and the task fails with one clear line when it is not set or cannot be reached; an interrupt goes on to
 * the runner, which reports it. Otherwise it is the store on the backup disk.
 */
export async function onStore(ctx: TaskContext, work: (store: BackupStore, remote: RemoteSettings | null) => Promise<TaskResult>): Promise<TaskResult> {
  if (ctx.args.remote !== true) return work(localStore(ctx.settings, ctx.$), null)
  const r = ctx.settings.backup.remote
  if (!r) return ctx.fail('BACKUP_REMOTE is not set: set it to [user@]host:/absolute/path to keep backups off this host')
  try {
    return await work(sshStore(ctx, r), r)
  } catch (err) {
    // A bug is reported as one (exit 1, its stack in the log), not as a remote host that failed.
    if (ctx.signal.aborted || isInternalError(err)) throw err
    return ctx.fail((err as Error).message)
  }
}

/**
 * Removes one leftover partial copy (`what` says whose, `where` is its path) with `remove`, and says so only
 * once it is gone; a removal that fails fails the task, naming it.
 */
async function removeLeftover(ctx: TaskContext, what: string, where: string, remove: () => Promise<unknown>): Promise<void> {
  try {
    await ctx.apply({ path: where, action: 'remove interrupted backup', before: 'partial copy', after: null }, null, remove)
  } catch (err) {
    throw new Error(`${what} and could not be removed: ${(err as Error).message}; remove it by hand if nothing writes into it any more`, { cause: err })
  }
  ctx.warn(`${what}: ${ctx.check ? 'would remove' : 'removed'} it`)
}

/** Removes the partial backups a scan of `store` found, saying so once each is gone. */
export async function removePartials(ctx: TaskContext, store: BackupStore, contents: StoreContents): Promise<void> {
  for (const dir of contents.partials) {
    const name = path.posix.basename(dir)
    const what = store.host ? `${name} on ${store.host} was left by an interrupted send or cleanup` : `${name} was left by an interrupted backup or cleanup`
    await removeLeftover(ctx, what, store.pathOf(name), () => store.remove(name))
  }
}
