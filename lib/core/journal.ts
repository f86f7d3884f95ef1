// The rollback journal: before a task changes anything it appends (and fsyncs) how to undo it, so a
// failed, interrupted or killed run can be put back the way it was, newest change first.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { atomicSymlink, atomicWriteFile, lstatOrNull, octal, removeTempSiblings } from '../infra/fsx.ts'
import { exchange } from '../infra/exchange.ts'

export type Undo =
  | { op: 'remove-link'; path: string }
  | { op: 'relink'; path: string; target: string }
  | { op: 'rmdir'; path: string }
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'move-back'; from: string; to: string }
  /** Exchanged `path` and `other` when `path` holds the inode `ino` (that of `other` before the exchange). */
  | { op: 'exchange-back'; path: string; other: string; ino: number }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'chown'; path: string; uid: number; gid: number }
  | { op: 'restore-file'; path: string; content: string | null; mode: number }
  /**
   * Not a change: a step to run once the changes before it are undone (TaskContext.afterUndo with a recovery
   * hook), kept here so that the run after a kill runs it too. The journal itself undoes nothing for it.
   */
  | { op: 'after-undo'; hook: string; what: string }

const mode = z.number().int().min(0).max(0o7777)
const undoSchema = z.discriminatedUnion('op', [
  z.object({ op: z.literal('remove-link'), path: z.string() }),
  z.object({ op: z.literal('relink'), path: z.string(), target: z.string() }),
  z.object({ op: z.literal('rmdir'), path: z.string() }),
  z.object({ op: z.literal('mkdir'), path: z.string(), mode }),
  z.object({ op: z.literal('move-back'), from: z.string(), to: z.string() }),
  z.object({ op: z.literal('exchange-back'), path: z.string(), other: z.string(), ino: z.number().int().min(0) }),
  z.object({ op: z.literal('chmod'), path: z.string(), mode }),
  z.object({ op: z.literal('chown'), path: z.string(), uid: z.number().int().min(0), gid: z.number().int().min(0) }),
  z.object({ op: z.literal('restore-file'), path: z.string(), content: z.string().nullable(), mode }),
  z.object({ op: z.literal('after-undo'), hook: z.string(), what: z.string() }),
]) satisfies z.ZodType<Undo>

export interface JournalEntry { run: string; task: string; undo: Undo }
/** Written when a change failed before it took effect: its undo must not run. */
interface Cancel { run: string; task: string; cancel: true }

const entrySchema = z.object({ run: z.string(), task: z.string(), undo: undoSchema })
const cancelSchema = z.object({ run: z.string(), task: z.string(), cancel: z.literal(true) })

/** A journal this citadel cannot read: undoing part of it, or none of it silently, could do harm. */
export class JournalError extends Error {
  constructor(readonly file: string, line: number, why: string) {
    super(`cannot roll back ${file}: line ${line} ${why}; nothing was undone and nothing else runs. Undo what it describes by hand where needed, then move the file away`)
  }
}
/** `undo` is absent for a step a task asked to follow the undo (TaskContext.afterUndo). */
export interface RollbackStep { undo?: Undo; task: string; done: boolean; msg: string }

export function describeUndo(u: Undo): string {
  switch (u.op) {
    case 'remove-link': return `remove link ${u.path}`
    case 'relink': return `point ${u.path} back to ${u.target}`
    case 'rmdir': return `remove directory ${u.path}`
    case 'mkdir': return `recreate empty directory ${u.path}`
    case 'move-back': return `move ${u.from} back to ${u.to}`
    case 'exchange-back': return `exchange ${u.path} and ${u.other} back`
    case 'chmod': return `restore mode ${octal(u.mode)} on ${u.path}`
    case 'chown': return `restore owner ${u.uid}:${u.gid} on ${u.path}`
    case 'restore-file': return u.content === null ? `remove ${u.path}` : `restore previous ${u.path}`
    case 'after-undo': return `then ${u.what}`
  }
}

/** Applies one undo step without ever deleting something that is not what the step created. */
async function applyUndo(u: Undo): Promise<void> {
  if (u.op === 'after-undo') return
  // A kill between writing a temporary sibling and renaming it leaves the sibling behind.
  if (u.op === 'remove-link' || u.op === 'relink') await removeTempSiblings(u.path, 'link')
  if (u.op === 'restore-file') await removeTempSiblings(u.path, 'write')
  const st = await lstatOrNull(u.op === 'move-back' ? u.to : u.path)
  switch (u.op) {
    case 'remove-link':
      if (st?.isSymbolicLink()) await fs.unlink(u.path)
      else if (st) throw new Error(`${u.path} is no longer a symlink; left as it is`)
      return
    case 'relink':
      if (st && !st.isSymbolicLink()) throw new Error(`${u.path} is no longer a symlink; left as it is`)
      return atomicSymlink(u.target, u.path)
    case 'rmdir':
      if (st?.isDirectory()) await fs.rmdir(u.path)
      return
    case 'mkdir':
      if (st?.isSymbolicLink()) await fs.unlink(u.path)
      else if (st) throw new Error(`${u.path} exists and is not a link; left as it is`)
      await fs.mkdir(u.path, { mode: u.mode })
      return fs.chmod(u.path, u.mode)
    case 'move-back': {
      const at = await lstatOrNull(u.to)
      const from = await lstatOrNull(u.from)
      // Killed between journaling the move and making it: nothing moved, nothing to move back.
      if (!from) {
        if (at) return
        throw new Error(`neither ${u.from} nor ${u.to} is there`)
      }
      // Killed between moveNoReplace claiming the name and the rename: the empty placeholder is all that moved.
      if (at?.isDirectory() && from.isDirectory() && (await fs.readdir(u.from)).length === 0) return fs.rmdir(u.from)
      // A restore's partial directory is gone once its last model moved out of it: made again to move back into.
      await fs.mkdir(path.dirname(u.to), { recursive: true })
      if (at?.isSymbolicLink()) await fs.unlink(u.to)
      else if (at) throw new Error(`${u.to} is occupied; ${u.from} left where it is`)
      return fs.rename(u.from, u.to)
    }
    case 'exchange-back':
      // Killed before the exchange: `path` still holds what it held, nothing to undo.
      if (st?.ino !== u.ino) return
      if (!(await lstatOrNull(u.other))) throw new Error(`${u.other} is gone; ${u.path} left as it is`)
      if (!(await exchange(u.path, u.other))) throw new Error(`${u.path} and ${u.other} cannot be exchanged back here; left as they are`)
      return
    case 'chmod':
      if (st && !st.isSymbolicLink()) await fs.chmod(u.path, u.mode)
      return
    case 'chown':
      if (st) await fs.lchown(u.path, u.uid, u.gid)
      return
    case 'restore-file':
      if (u.content !== null) return atomicWriteFile(u.path, u.content, u.mode)
      if (st?.isFile()) await fs.unlink(u.path)
      return
  }
}

export class Journal {
  constructor(readonly file: string, readonly run: string) {}

  async record(task: string, undo: Undo): Promise<void> {
    await this.append({ run: this.run, task, undo })
  }

  async cancelLast(task: string): Promise<void> {
    await this.append({ run: this.run, task, cancel: true })
  }

  private async append(entry: JournalEntry | Cancel): Promise<void> {
    const handle = await fs.open(this.file, 'a', 0o600)
    try {
      await handle.write(JSON.stringify(entry) + '\n')
      await handle.sync()
    } finally {
      await handle.close()
    }
  }

  async entries(): Promise<JournalEntry[]> {
    let text: string
    try {
      text = await fs.readFile(this.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
      throw err
    }
    // A kill can cut the last line short; that change had not started, so it has nothing to undo. Any
    // other line that does not read is an error, never skipped.
    const entries: JournalEntry[] = []
    const lines = text.split('\n')
    for (const [i, line] of lines.entries()) {
      if (line === '' && i === lines.length - 1) break
      let json: unknown
      try {
        json = JSON.parse(line)
      } catch {
        if (i === lines.length - 1) break
        throw new JournalError(this.file, i + 1, 'is not JSON')
      }
      // Judged as the kind it claims to be, so the message names the field that is wrong.
      const isCancel = typeof json === 'object' && json !== null && 'cancel' in json
      const parsed = (isCancel ? cancelSchema : entrySchema).safeParse(json)
      if (!parsed.success) throw new JournalError(this.file, i + 1, `is not a change citadel knows how to undo (${parsed.error.issues.map((x) => `${x.path.join('.') || 'the entry'}: ${x.message}`).join('; ')})`)
      if ('cancel' in parsed.data) entries.pop()
      else entries.push(parsed.data)
    }
    return entries
  }

  /** Undoes every recorded change, newest first, then clears the journal. */
  async rollback(onStep?: (step: RollbackStep) => void): Promise<RollbackStep[]> {
    const steps: RollbackStep[] = []
    for (const entry of (await this.entries()).reverse()) {
      let step: RollbackStep
      try {
        await applyUndo(entry.undo)
        step = { undo: entry.undo, task: entry.task, done: true, msg: describeUndo(entry.undo) }
      } catch (err) {
        step = { undo: entry.undo, task: entry.task, done: false, msg: `${describeUndo(entry.undo)} failed: ${(err as Error).message}` }
      }
      steps.push(step)
      onStep?.(step)
    }
    await this.clear()
    return steps
  }

  async clear(): Promise<void> {
    await fs.rm(this.file, { force: true })
  }
}

export const journalFile = (stateDir: string) => path.join(stateDir, 'journal.jsonl')
