// One citadel run at a time per app root. The lock file names its holder; a lock whose process is gone
// (or whose pid now belongs to another process) is stale and taken over.
import { promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'

export interface LockHolder { pid: number; command: string; started: string; procStart: string | null }

export class LockHeldError extends Error {
  constructor(readonly holder: LockHolder, readonly file: string) {
    super(`another citadel run holds ${file}: pid ${holder.pid} (${holder.command}), started ${holder.started}`)
  }
}

/** The kernel's start time of a process, which tells a live holder from a recycled pid. */
function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

/** The live process holding the lock `file`, or null when it is free or its holder is gone. */
export function liveHolder(file: string): LockHolder | null {
  try {
    const holder = JSON.parse(readFileSync(file, 'utf8')) as LockHolder
    return holder.pid && isAlive(holder) ? holder : null
  } catch {
    return null
  }
}

function isAlive(holder: LockHolder): boolean {
  try {
    process.kill(holder.pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  const start = processStart(holder.pid)
  return holder.procStart === null || start === null || start === holder.procStart
}

export class Lock {
  private constructor(readonly file: string, private readonly content: string) {}

  /** Takes the lock or throws LockHeldError; `onStale` hears about a dead holder it replaced. */
  static async acquire(dir: string, command: string, onStale: (holder: LockHolder) => void, name = 'lock'): Promise<Lock> {
    const file = path.join(dir, name)
    const me: LockHolder = { pid: process.pid, command, started: new Date().toISOString(), procStart: processStart(process.pid) }
    const content = JSON.stringify(me) + '\n'
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await fs.writeFile(file, content, { flag: 'wx', mode: 0o644 })
        return new Lock(file, content)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
      const seen = await fs.readFile(file, 'utf8').catch(() => null)
      if (seen === null) continue
      let holder: LockHolder
      try {
        holder = JSON.parse(seen) as LockHolder
      } catch {
        holder = { pid: 0, command: 'unreadable lock file', started: 'unknown', procStart: null }
      }
      if (holder.pid && isAlive(holder)) throw new LockHeldError(holder, file)
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
      onStale(holder)
    }
    throw new Error(`could not take the lock ${file}: it keeps changing hands`)
  }

  async release(): Promise<void> {
    const current = await fs.readFile(this.file, 'utf8').catch(() => null)
    if (current === this.content) await fs.rm(this.file, { force: true })
  }
}
