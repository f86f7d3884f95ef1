// citadel task check-usage on the filesystem of the temporary roots.
import { describe, expect, it } from 'vitest'
import { citadelJson, makeRoots, setUp } from '../helpers.ts'

describe('citadel task check-usage', () => {
  it('--json reports every filesystem and exits 0', async () => {
    const roots = makeRoots()
    await setUp(roots)
    const result = await citadelJson(['task', 'check-usage'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0]).toMatchObject({ name: 'check-usage', status: 'ok' })
    expect(result.doc.tasks[0].data.filesystems.length).toBeGreaterThan(0)
    expect(result.doc.tasks[0].msg).toMatch(/^3 roots on 1 filesystem: /)
  })
})
