// The run log: JSON lines appended to <app root>/logs/storage_<UTC date>.log. Events that happen before
// the logs directory exists (the first setup creates it) are held and written once it does.
import { appendFileSync, lstatSync } from 'node:fs'
import path from 'node:path'

export type LogFields = Record<string, unknown>

export class RunLog {
  private pending: string[] = []

  constructor(private readonly dir: string, readonly run: string, private readonly enabled: boolean) {}

  event(event: string, fields: LogFields = {}): void {
    if (!this.enabled) return
    this.pending.push(JSON.stringify({ ts: new Date().toISOString(), run: this.run, event, ...fields }) + '\n')
    this.flush()
  }

  private flush(): void {
    try {
      if (!lstatSync(this.dir).isDirectory()) return
    } catch {
      return
    }
    const file = path.join(this.dir, `storage_${new Date().toISOString().slice(0, 10)}.log`)
    appendFileSync(file, this.pending.join(''), { mode: 0o640 })
    this.pending = []
  }
}
