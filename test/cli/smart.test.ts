// citadel smart as operators run it: a saved capture, a missing or garbled file, this machine's own disks.
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import type { SmartReport } from '../../lib/health/smart.ts'
import { citadelJson, makeRoots } from '../helpers.ts'
import { nvme } from '../smart-samples.ts'

/** An NVMe drive with 3 media errors. */
const failingNvme = nvme((log) => { log.media_errors = 3 })

describe('citadel smart', () => {
  it('classifies a saved smartctl --json file and exits 0 even for a failing disk', async () => {
    const roots = makeRoots()
    const file = path.join(roots.base, 'nvme.json')
    writeFileSync(file, JSON.stringify(failingNvme))
    const { code, doc, stderr } = await citadelJson(['smart', '--json-input', file], roots.env)
    expect(code, stderr).toBe(0)
    const task = doc.tasks[0]
    expect(task).toMatchObject({ name: 'check-smart', status: 'ok', msg: '1 disk: 1 failing', data: { notes: [] } })
    expect(task.data.disks[0]).toMatchObject({ device: '/dev/nvme0', verdict: 'failing', reasons: ['3 NVMe media and data integrity errors'], roots: [] })
    expect(task.warnings).toEqual(['FAILING /dev/nvme0 (Samsung SSD 990 PRO 2TB, serial S7): 3 NVMe media and data integrity errors'])

    const unnamed = path.join(roots.base, 'saved.json')
    writeFileSync(unnamed, JSON.stringify({ smart_status: { passed: true } }))
    expect((await citadelJson(['smart', '--json-input', unnamed], roots.env)).doc.tasks[0].data.disks[0]).toMatchObject({ device: 'saved.json', verdict: 'healthy' })
  })

  it('fails with one clear line for a missing or non-JSON file', async () => {
    const roots = makeRoots()
    const missing = path.join(roots.base, 'missing.json')
    const absent = await citadelJson(['smart', '--json-input', missing], roots.env)
    expect(absent.code).toBe(2)
    expect(absent.doc.tasks[0]).toMatchObject({ status: 'failed', msg: `cannot read --json-input ${missing}: no such file or directory` })
    const garbage = path.join(roots.base, 'garbage.json')
    writeFileSync(garbage, 'smartctl 7.3 2022-02-28 r5338\n')
    const notJson = await citadelJson(['smart', '--json-input', garbage], roots.env)
    expect(notJson.code).toBe(2)
    expect(notJson.doc.tasks[0].msg).toBe(`--json-input ${garbage} is not JSON: save it with smartctl --json -a DEVICE > FILE`)
  })

  it('accounts for both roots on this machine, as a disk or a note, without failing', async () => {
    const roots = makeRoots()
    const { code, doc, stderr } = await citadelJson(['smart'], roots.env)
    expect(code, stderr).toBe(0)
    const { disks, notes } = doc.tasks[0].data
    expect(doc.tasks[0].status).toBe('ok')
    for (const root of ['models', 'backup'])
      expect(disks.some((d: SmartReport) => d.roots.includes(root)) || notes.some((n: string) => n.startsWith(`${root} root `)), root).toBe(true)
  })

  it('reads a named device that does not exist as unavailable', async () => {
    const { code, doc } = await citadelJson(['smart', '/dev/nonexistent-disk'], makeRoots().env)
    expect(code).toBe(0)
    expect(doc.tasks[0].data.disks).toEqual([expect.objectContaining({ device: '/dev/nonexistent-disk', verdict: 'unavailable', roots: [] })])
  })
})
