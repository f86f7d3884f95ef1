// citadel perf refusing what it cannot measure, and its check mode: no fio runs.
import { existsSync, mkdirSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { citadelJson, makeRoots } from '../helpers.ts'

describe('citadel perf without measuring', () => {
  it('fails with one clear line on a missing path or a file', async () => {
    const roots = makeRoots()
    const missing = path.join(roots.base, 'nope')
    const gone = await citadelJson(['perf', missing, '--quick'], roots.env)
    expect(gone.code).toBe(2)
    expect(gone.doc.tasks[0].msg).toBe(`${missing} does not exist: nothing to measure`)
    const file = path.join(roots.base, 'test.env')
    const notDir = await citadelJson(['perf', file], roots.env)
    expect(notDir.code).toBe(2)
    expect(notDir.doc.tasks[0].msg).toBe(`${file} is not a directory: give the directory to measure`)
  })

  it('in check mode says what it would run and writes nothing', async () => {
    const roots = makeRoots()
    const dir = path.join(roots.base, 'disk')
    mkdirSync(dir)
    const result = await citadelJson(['perf', dir, '--quick', '--check'], roots.env)
    expect(result.code).toBe(0)
    expect(result.doc.tasks[0]).toMatchObject({ status: 'skipped', msg: `would run fio in ${dir} (3 jobs of at most 64.0 MiB and 2 s each; needs 128 MiB free)` })
    expect(readdirSync(dir)).toEqual([])
    expect(existsSync(roots.app)).toBe(false)
  })
})
