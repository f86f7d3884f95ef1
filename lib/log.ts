// The run log: JSON lines appended to <app root>/logs/storage_<UTC date>.log. Events that happen before
// the logs directory exists (the first setup creates it) are held and written once it does.
import { appendFileSync, lstatSync } from 'node:fs'
import path from 'node:path'

export type LogFields = Record<string, unknown>

export class RunLog {
  private pending: string[] = []
  private broken = false

  constructor(private readonly dir: string, readonly run: string, private readonly enabled: boolean) {}

  event(event: string, fields: LogFields = {}): void {
    if (!this.enabled || this.broken) return
    this.pending.push(JSON.stringify({ ts: new Date().toISOString(), run: this.run, event, ...fields }) + '\n')
    this.flush()
  }

  /** Where events go now, or null when this run writes no log (check mode) or cannot. */
  get file(): string | null {
    return this.enabled && !this.broken ? path.join(this.dir, `storage_${new Date().toISOString().slice(0, 10)}.log`) : null
  }

  private flush(): void {
    try {
      if (!lstatSync(this.dir).isDirectory()) return
    } catch {
      return
    }
    const file = this.file!
    try {
      appendFileSync(file, this.pending.join(''), { mode: 0o640 })
    } catch (err) {
      // A full or read-only log disk must not stop a run that is repairing things.
      this.broken = true
      process.stderr.write(`citadel: warning: cannot append to ${file} (${(err as NodeJS.ErrnoException).code}); going on without the log\n`)
    }
    this.pending = []
  }
}
