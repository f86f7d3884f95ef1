// Ensures every directory of the storage tree exists with CITADEL_DIR_MODE (and CITADEL_OWNER when run as
// root). Creates what is missing, fixes mode and owner of what is there, never creates the disk roots.
// Under the recover playbook (--recovering) the models root must carry its mark, and the backup root's
// directories are laid out only when it carries its own: a dead backup disk's empty mount point stays empty.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { inspectRoots } from '../lib/core/marks.ts'
import { describeEntry, isInside, lstatOrNull } from '../lib/infra/fsx.ts'
import { expectedDirs, logsDir } from '../lib/infra/layout.ts'
import { resolveOwner, type Owner } from '../lib/infra/system.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'create-dirs',
  description: 'Create the models, backup and app directory tree with the configured mode and owner',
  tags: ['setup', 'dirs'],
  args: z.object({
    recovering: z.boolean().optional().meta({ preset: true, description: 'set by the recover playbook: refused unless the models root carries its mark; the backup root is laid out only when it carries its own (a dead backup disk is left alone: the restore falls back to BACKUP_REMOTE)' }),
  }),
  // Only under recover: initial-setup runs it right after mark-roots, and in check mode before any mark exists.
  roots: (args) => (args.recovering ? ['models'] : []),
  async run(ctx) {
    const { settings } = ctx
    const mode = settings.dirMode
    const owner: Owner | null = settings.owner && process.getuid?.() === 0 ? await resolveOwner(ctx.$, settings.owner) : null
    const [backupState] = ctx.args.recovering ? await inspectRoots(ctx.$, settings, ['backup']) : []
    const skipBackup = backupState !== undefined && backupState.verdict !== 'ok'
    if (skipBackup) ctx.warn(`backup directories not laid out: ${backupState.reason}`)
    const diskRoots = skipBackup ? [settings.modelsRoot] : [settings.modelsRoot, settings.backupRoot]
    const problems: string[] = []
    const wanted: string[] = []
    for (const dir of expectedDirs(settings).filter((d) => !skipBackup || !isInside(settings.backupRoot, d))) {
      // Directories above the app root are created too; the disk roots are mount points and never are.
      const missingAbove: string[] = []
      for (let up = path.dirname(dir); !diskRoots.includes(up) && !wanted.includes(up) && up !== path.dirname(up) && !(await lstatOrNull(up)); up = path.dirname(up)) missingAbove.unshift(up)
      wanted.push(...missingAbove, dir)
    }
    for (const root of diskRoots) {
      const st = await lstatOrNull(root)
      if (!st?.isDirectory()) problems.push(`${root} is ${describeEntry(st)}, expected the mounted disk's directory`)
    }
    const plan: string[] = []
    for (const dir of wanted) {
      const st = await lstatOrNull(dir)
      if (st && st.isSymbolicLink() && !(await fs.stat(dir).catch(() => null))?.isDirectory()) problems.push(`${dir} is a symlink that does not lead to a directory`)
      else if (st && !st.isSymbolicLink() && !st.isDirectory()) problems.push(`${dir} is ${describeEntry(st)}, expected a directory; move it away first`)
      else plan.push(dir)
    }
    if (problems.length) return ctx.fail(problems.join('; '))

    // A rollback keeps the app root and logs: the run's own lock and log live there.
    const keptOnRollback = [settings.appRoot, logsDir(settings)]
    const done = { created: 0, fixed: 0, ok: 0 }
    // An operator's link to a directory elsewhere is theirs to manage: ensureDir leaves it alone.
    for (const dir of plan) done[await ctx.ensureDir(dir, { mode, owner, keepOnRollback: keptOnRollback.includes(dir) })]++
    const { created, fixed } = done
    const would = ctx.check ? 'would be ' : ''
    const msg = created + fixed === 0 ? `${plan.length} directories in place` : `${created} ${would}created, ${fixed} ${would}fixed, ${plan.length - created - fixed} in place`
    return ctx.finish(msg, { directories: plan })
  },
})

export default task
runWhenMain(import.meta)
