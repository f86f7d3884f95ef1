// The writes tasks make most, each as "ensure this state": it looks, changes only what differs through
// ctx.apply with the undo that puts the old state back, and so honours check mode and the journal without
// the task building undo records by hand.
import { promises as fs } from 'node:fs'
import { atomicSymlink, atomicWriteFile, describeEntry, lstatOrNull, octal, readFileOrNull } from '../infra/fsx.ts'
import type { DirOptions, Outcome, TaskContext } from './task.ts'

type Applier = Pick<TaskContext, 'apply'>

/** Ensures `dir` is a directory with `mode` (and owner). A symlink to a directory is the operator's and left alone. */
export async function ensureDir(ctx: Applier, dir: string, { mode, owner = null, keepOnRollback = false }: DirOptions): Promise<Outcome> {
  const st = await lstatOrNull(dir)
  if (!st) {
    await ctx.apply({ path: dir, action: 'create directory', before: null, after: octal(mode) }, keepOnRollback ? null : { op: 'rmdir', path: dir }, async () => {
      await fs.mkdir(dir, { mode })
      await fs.chmod(dir, mode)
    })
    // Undone with the directory itself.
    if (owner) await ctx.apply({ path: dir, action: 'set owner', before: null, after: `${owner.uid}:${owner.gid}` }, null, () => fs.chown(dir, owner.uid, owner.gid))
    return 'created'
  }
  if (st.isSymbolicLink()) {
    if ((await fs.stat(dir).catch(() => null))?.isDirectory()) return 'ok'
    throw new Error(`${dir} is a symlink that does not lead to a directory`)
  }
  if (!st.isDirectory()) throw new Error(`${dir} is ${describeEntry(st)}, expected a directory; move it away first`)
  const wrongMode = (st.mode & 0o7777) !== mode
  const wrongOwner = owner !== null && (st.uid !== owner.uid || st.gid !== owner.gid)
  if (wrongMode) await ctx.apply({ path: dir, action: 'fix mode', before: octal(st.mode), after: octal(mode) }, { op: 'chmod', path: dir, mode: st.mode & 0o7777 }, () => fs.chmod(dir, mode))
  if (owner && wrongOwner) await ctx.apply({ path: dir, action: 'fix owner', before: `${st.uid}:${st.gid}`, after: `${owner.uid}:${owner.gid}` }, { op: 'chown', path: dir, uid: st.uid, gid: st.gid }, () => fs.chown(dir, owner.uid, owner.gid))
  return wrongMode || wrongOwner ? 'fixed' : 'ok'
}

/** Ensures `link` is a symlink to `target`, replaced atomically. Anything but a symlink in its place is refused. */
export async function ensureLink(ctx: Applier, link: string, target: string): Promise<Outcome> {
  const st = await lstatOrNull(link)
  if (!st) {
    await ctx.apply({ path: link, action: 'create link', before: null, after: target }, { op: 'remove-link', path: link }, () => atomicSymlink(target, link))
    return 'created'
  }
  if (!st.isSymbolicLink()) throw new Error(`${link} is ${describeEntry(st)}, not a link to ${target}`)
  const actual = await fs.readlink(link)
  if (actual === target) return 'ok'
  await ctx.apply({ path: link, action: 'retarget link', before: actual, after: target }, { op: 'relink', path: link, target: actual }, () => atomicSymlink(target, link))
  return 'fixed'
}

/**
 * Ensures `file` holds `content` with `mode`: written whole by rename when the content differs, its mode
 * fixed when only that does. A rollback puts the previous content and mode back, or removes a new file.
 */
export async function ensureFile(ctx: Applier, file: string, content: string, mode: number): Promise<Outcome> {
  const st = await lstatOrNull(file)
  if (st && !st.isFile()) throw new Error(`${file} is ${describeEntry(st)}, expected a file: move it away and rerun`)
  const current = st ? await readFileOrNull(file) : null
  const was = st ? st.mode & 0o7777 : mode
  if (current !== content) {
    await ctx.apply({ path: file, action: current === null ? 'create file' : 'update file', before: current, after: content }, { op: 'restore-file', path: file, content: current, mode: was }, () =>
      atomicWriteFile(file, content, mode))
    return current === null ? 'created' : 'fixed'
  }
  if (was === mode) return 'ok'
  await ctx.apply({ path: file, action: 'fix mode', before: octal(was), after: octal(mode) }, { op: 'chmod', path: file, mode: was }, () => fs.chmod(file, mode))
  return 'fixed'
}
