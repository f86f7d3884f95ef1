// One citadel run at a time per app root. The lock file names its holder; a lock whose process is gone
// (exited, a zombie nobody reaped, or whose pid now belongs to another process) is stale and taken over.
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { tempSibling } from '../infra/fsx.ts'

const holderSchema = z.object({ pid: z.number().int().positive(), command: z.string(), started: z.string(), procStart: z.string().nullable() })
export type LockHolder = z.infer<typeof holderSchema>

/** A lock file that is not one citadel wrote: no run can tell whether its holder lives. */
export class LockUnreadableError extends Error {
  constructor(readonly file: string, why: string) {
    super(`the lock file ${file} is not a citadel lock (${why}): if no citadel runs on this app root, move it away and rerun`)
  }
}

/**
 * The holder a lock file names; null for an empty file, which an older citadel killed (or stopped by a full
 * disk) between creating the file and writing it left: its creator never ran a step.
 */
function parseHolder(file: string, text: string): LockHolder | null {
  if (text === '') return null
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new LockUnreadableError(file, 'not JSON')
  }
  const parsed = holderSchema.safeParse(json)
  if (!parsed.success) throw new LockUnreadableError(file, `expected pid, command, started and procStart: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'the whole'}: ${i.message}`).join('; ')}`)
  return parsed.data
}

export class LockHeldError extends Error {
  constructor(readonly holder: LockHolder, readonly file: string) {
    super(`another citadel run holds ${file}: pid ${holder.pid} (${holder.command}), started ${holder.started}`)
  }
}

/** The fields of /proc/PID/stat after the command name: [0] is the state, [19] the start time. */
function procStat(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return null
  }
}

/** The kernel's start time of a process, which tells a live holder from a recycled pid. */
const processStart = (pid: number): string | null => procStat(pid)?.[19] ?? null

/**
 * Whether `pid` names a running process. A zombie (exited, not yet reaped by its parent) still answers
 * kill(pid, 0) but will never do anything again.
 */
export function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  const state = procStat(pid)?.[0]
  return state !== 'Z' && state !== 'X'
}

/** The live process holding the lock `file`, or null when it is free, its holder is gone, or it is unreadable. */
export function liveHolder(file: string): LockHolder | null {
  try {
    const holder = parseHolder(file, readFileSync(file, 'utf8'))
    return holder && isAlive(holder) ? holder : null
  } catch {
    return null
  }
}

function isAlive(holder: LockHolder): boolean {
  if (!processRuns(holder.pid)) return false
  const start = processStart(holder.pid)
  return holder.procStart === null || start === null || start === holder.procStart
}

export class Lock {
  private constructor(readonly file: string, private readonly content: string) {}

  /**
   * Takes the lock or throws LockHeldError (or LockUnreadableError); `onStale` hears about a dead holder it
   * replaced. An empty lock file is replaced without a word: whoever created it never ran a step.
   */
  static async acquire(dir: string, command: string, onStale: (holder: LockHolder) => void, name = 'lock'): Promise<Lock> {
    const file = path.join(dir, name)
    const me: LockHolder = { pid: process.pid, command, started: new Date().toISOString(), procStart: processStart(process.pid) }
    const content = JSON.stringify(me) + '\n'
    // Written whole first, then linked into place: the lock is never seen empty or half written, and a
    // full disk fails here with nothing left behind.
    const tmp = tempSibling(file, 'write')
    try {
      await fs.writeFile(tmp, content, { flag: 'wx', mode: 0o644 })
      return await Lock.take(file, tmp, content, onStale)
    } finally {
      await fs.rm(tmp, { force: true })
    }
  }

  private static async take(file: string, tmp: string, content: string, onStale: (holder: LockHolder) => void): Promise<Lock> {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await fs.link(tmp, file)
        return new Lock(file, content)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
      const seen = await fs.readFile(file, 'utf8').catch(() => null)
      if (seen === null) continue
      const holder = parseHolder(file, seen)
      if (holder && isAlive(holder)) throw new LockHeldError(holder, file)
      // Move the stale lock out of the way and confirm it is the one judged stale: a racing run may
      // have replaced it already, and then that lock goes back.
      const aside = `${file}.stale-${process.pid}`
      await fs.rename(file, aside).catch(() => {})
      const moved = await fs.readFile(aside, 'utf8').catch(() => null)
      if (moved !== null && moved !== seen) {
        await fs.link(aside, file).catch(() => {})
        await fs.rm(aside, { force: true })
        continue
      }
      await fs.rm(aside, { force: true })
      if (holder) onStale(holder)
    }
    throw new Error(`could not take the lock ${file}: it keeps changing hands`)
  }

  async release(): Promise<void> {
    const current = await fs.readFile(this.file, 'utf8').catch(() => null)
    if (current === this.content) await fs.rm(this.file, { force: true })
  }
}
