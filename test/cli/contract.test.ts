// The task contract, checked for every registered task, so a new task is held to it without new tests:
// --check changes nothing, and a second run in a row reports nothing changed (except for an action that
// declares it makes something new each time, such as a backup).
import { chmodSync, rmSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { tasks } from '../../tasks/index.ts'
import { citadelJson, makeRoots, snapshot } from '../helpers.ts'

/** Arguments that keep a task's real run short: perf measures 64 MiB instead of 1 GiB. */
const SHORT_RUN: Record<string, string[]> = { 'check-perf': ['--quick'] }

describe.each(tasks.map((t) => t.name))('task %s', (name) => {
  it('in check mode changes nothing on disk', async () => {
    const roots = makeRoots()
    const before = snapshot(roots.base)
    const result = await citadelJson(['task', name, '--check'], roots.env)
    expect([0, 2]).toContain(result.code)
    expect(snapshot(roots.base)).toEqual(before)
  })

  it.runIf(tasks.find((t) => t.name === name)!.idempotent !== false)('run twice in a row reports no change the second time', async () => {
    const roots = makeRoots()
    await citadelJson(['run', 'initial-setup'], roots.env)
    // Drift that some task repairs, so that the first run has something to change.
    rmSync(path.join(roots.app, 'staging'))
    chmodSync(path.join(roots.models, 'archive'), 0o700)
    rmSync(path.join(roots.app, 'configs', 'storage-env.sh'))
    const args = ['task', name, ...(SHORT_RUN[name] ?? [])]
    await citadelJson(args, roots.env)
    const second = await citadelJson(args, roots.env)
    expect(second.doc.tasks[0].status).not.toBe('changed')
    expect(second.doc.tasks[0].changes).toEqual([])
  })
})
