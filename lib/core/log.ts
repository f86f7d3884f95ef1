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

  /** The file events were written to, or null when they were not: check mode, no logs directory yet, a failed disk. */
  get file(): string | null {
    return this.enabled && !this.broken && this.pending.length === 0 && this.dirExists() ? this.today() : null
  }

  private today(): string {
    return path.join(this.dir, `storage_${new Date().toISOString().slice(0, 10)}.log`)
  }

  private dirExists(): boolean {
    try {
      return lstatSync(this.dir).isDirectory()
    } catch {
      return false
    }
  }

  private flush(): void {
    if (!this.dirExists()) return
    const file = this.today()
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
