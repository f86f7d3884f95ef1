// What is damaged is reported as damaged, and bad bytes do not spread: damaged lists, a full backup disk,
// backups from the future, files that change while copied, and files a verification found bad.
import { chmodSync, readFileSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf } from './backup-helpers.ts'
import { citadelJson, type Roots } from './helpers.ts'

const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99' }
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const backupDir = (roots: Roots, name: string) => path.join(storeOf(roots), name)

describe('damaged lists are reported as damaged', () => {
  it('a truncated backup.json of latest fails verify, naming the backup and the file, and is critical in health-check', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'alpha' })
    const newest = await backUp(roots, { 'm/b.bin': 'bravo' })
    const meta = path.join(backupDir(roots, newest), 'backup.json')
    chmodSync(meta, 0o644)
    truncateSync(meta, 50)

    const verify = await citadelJson(['backup', 'verify'], roots.env)
    expect(verify.code).toBe(2)
    expect(verify.doc.tasks[0].status).toBe('failed')
    expect(verify.doc.tasks[0].msg).toContain(`latest points at ${newest}, which is damaged`)
    expect(verify.doc.tasks[0].msg).toContain(`${meta} is not valid JSON`)

    const health = await citadelJson(['health-check'], roots.env)
    expect(health.code).toBe(2)
    expect(health.doc.problems).toContainEqual(expect.objectContaining({ severity: 'critical', key: 'backups:latest', message: expect.stringContaining(`latest points at ${newest}, which is damaged`) }))
  })

  it('a backup.json of the wrong shape is one line naming the file and the field, never counted', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'a.bin': 'alpha' })
    const meta = path.join(backupDir(roots, name), 'backup.json')
    const doc = readJson(meta)
    chmodSync(meta, 0o644)
    writeFileSync(meta, JSON.stringify({ ...doc, files: '1' }))
    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].data.damaged).toEqual([{ name, reason: `backup.json unreadable: ${meta} is not what citadel wrote at files: Invalid input: expected number, received string` }])
  })

  it('a truncated files.json fails verify naming the file, and the failed verification is recorded', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'm/a.bin': 'alpha', 'm/b.bin': 'bravo' })
    const catalog = path.join(backupDir(roots, name), 'files.json')
    chmodSync(catalog, 0o644)
    truncateSync(catalog, 50)

    const verify = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verify.code).toBe(2)
    expect(verify.doc.tasks[0].msg).toMatch(new RegExp(`^${name} cannot be verified: ${catalog} is not valid JSON \\(.+\\): it was cut short or edited$`))
    const records = readJson(path.join(backupDir(roots, name), 'backup.json')).verifications
    expect(records).toHaveLength(1)
    expect(records[0]).toMatchObject({ ok: false, problems: [{ kind: 'list', path: 'files.json' }] })
  })

  it('a verify-state.json of the wrong shape is a warning naming the file, and the verify goes on', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'a.bin': 'alpha' })
    const state = path.join(backupDir(roots, name), 'verify-state.json')
    writeFileSync(state, JSON.stringify({ 'a.bin': 42 }))
    const verify = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verify.code).toBe(0)
    expect(verify.doc.tasks[0].warnings).toEqual([expect.stringMatching(new RegExp(`^${state} is not what citadel wrote at a\\.bin: .*: starting over as if no file had been verified$`))])
    expect(readJson(state)).toEqual({ 'a.bin': expect.any(String) })
  })
})
