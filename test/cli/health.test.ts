// health-check, status and the health-report task, through the real command on temporary roots.
import { readFileSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backupName } from '../../lib/backup/store.ts'
import { backUp, pointLatest, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, snapshot } from '../helpers.ts'

// No registered model: one that is not there is a warning of its own (vLLM cannot load it).
const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99', MODEL_REGISTRY: '' }

describe('citadel health-check', () => {
  it('prints one document with every section, and exits 2 while there is no backup, 0 once there is', async () => {
    const roots = await setUpServer(CALM)
    const before = snapshot(roots.base)
    const critical = await citadelJson(['health-check'], roots.env)
    expect(critical.code).toBe(2)
    expect(Object.keys(critical.doc)).toEqual(['generated_at', 'host', 'overall', 'roots', 'filesystems', 'symlinks', 'smart', 'smart_read_at', 'backups', 'backups_remote', 'perf', 'models', 'notes', 'problems'])
    expect(critical.doc.backups_remote).toBeNull()
    expect(critical.doc.overall).toBe('critical')
    expect(critical.doc.problems).toEqual([{ check: 'backups', severity: 'critical', key: 'backups:none', message: `no complete backup in ${storeOf(roots)}: run citadel backup create` }])
    expect(critical.doc.roots.map((r: any) => `${r.role} ${r.verdict}`)).toEqual(['models ok', 'backup ok'])
    expect(critical.doc.symlinks.map((l: any) => l.verdict)).toEqual(['ok', 'ok', 'ok'])
    expect(critical.doc.filesystems.length).toBeGreaterThan(0)
    expect(snapshot(roots.base)).toEqual(before)

    await backUp(roots, { 'm/a.bin': 'a' })
    const ok = await citadel(['health-check'], roots.env)
    expect(ok.code, ok.stdout).toBe(0)
    expect(ok.stdout.split('\n')[0]).toBe('CITADEL OK - all checks ok')
  })

  it('exits 1 on a warning and names it on the first line', async () => {
    const roots = await setUpServer({ ...CALM, STORAGE_MONITOR_DISK_USAGE_WARNING: '0.01' })
    await backUp(roots, { 'm/a.bin': 'a' })
    const result = await citadel(['health-check'], roots.env)
    expect(result.code, result.stdout).toBe(1)
    expect(result.stdout).toMatch(/^CITADEL WARNING - \d+ problems?\nwarning  filesystems .*at or above the warning 1%/)
  })

  it('a broken link is critical; an old backup and a failed verification are warnings', async () => {
    const roots = await setUpServer(CALM)
    const name = await backUp(roots, { 'm/a.bin': 'a' })
    const old = backupName(new Date(Date.now() - 9 * 86_400_000), 'full')
    renameSync(path.join(storeOf(roots), name), path.join(storeOf(roots), old))
    const meta = path.join(storeOf(roots), old, 'backup.json')
    const doc = JSON.parse(readFileSync(meta, 'utf8'))
    doc.name = old
    doc.verifications = [{ at: new Date().toISOString(), rate: 1, seed: 1, seeded: true, files_checked: 1, files_hashed: 1, bytes_hashed: 1, ok: false, problems: [{ kind: 'mismatch', path: 'm/a.bin', detail: 'x' }], transient: [] }]
    writeFileSync(meta, JSON.stringify(doc))
    pointLatest(roots, old)
    unlinkSync(path.join(roots.app, 'staging'))
    const result = await citadelJson(['health-check'], roots.env)
    expect(result.code).toBe(2)
    expect(result.doc.problems.map((p: any) => `${p.severity} ${p.key}`)).toEqual([
      `critical symlinks:${path.join(roots.app, 'staging')}`,
      'warning backups:overdue',
      'warning backups:verification',
    ])
    expect(result.doc.problems[1].message).toMatch(new RegExp(`^the newest backup, ${old}, is 9d 0h old \\(more than 8 days\\)$`))
    expect(result.doc.problems[2].message).toBe(`the last verification of the newest backup, ${old}, failed at ${doc.verifications[0].at}: 1 problem (citadel backup verify ${old} --sample 1 names them)`)
  })

  it('answers UNKNOWN (3) when a check cannot run: a models root that is a symlink loop', async () => {
    const roots = makeRoots(CALM)
    rmSync(roots.models, { recursive: true })
    symlinkSync(roots.models, roots.models)
    const result = await citadel(['health-check'], roots.env)
    expect(result.code).toBe(3)
    expect(result.stdout).toBe(`CITADEL UNKNOWN - the checks could not run: ELOOP: too many symbolic links encountered, stat '${roots.models}'\n`)
  })

  it('answers UNKNOWN (3) to invalid settings, naming the setting', async () => {
    const roots = makeRoots({ STORAGE_MONITOR_DISK_USAGE_WARNING: 'lots' })
    const result = await citadel(['health-check'], roots.env)
    expect(result.code).toBe(3)
    expect(result.stderr).toContain('invalid setting STORAGE_MONITOR_DISK_USAGE_WARNING="lots"')
  })
})

describe('read-only checks', () => {
  it('run while another citadel run holds the lock; a task that changes things does not', async () => {
    const roots = await setUpServer(CALM)
    const lock = path.join(roots.app, '.citadel', 'lock')
    writeFileSync(lock, JSON.stringify({ pid: process.pid, command: 'citadel backup create (the test)', started: new Date().toISOString(), procStart: null }))
    for (const task of ['check-usage', 'check-smart', 'check-backups', 'health-report']) {
      const result = await citadel(['task', task], roots.env)
      expect(result.code, `${task}: ${result.stderr}`).toBe(0)
    }
    const changing = await citadel(['task', 'create-dirs'], roots.env)
    expect(changing.code).toBe(3)
    expect(changing.stderr).toContain(`pid ${process.pid} (citadel backup create (the test))`)
    expect(JSON.parse(readFileSync(lock, 'utf8')).pid).toBe(process.pid)
  })

  it('citadel smart reads every device it is given', async () => {
    const roots = makeRoots()
    const result = await citadelJson(['smart', '/dev/citadel-missing-a', '/dev/citadel-missing-b'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0].data.disks.map((d: any) => [d.device, d.verdict])).toEqual([['/dev/citadel-missing-a', 'unavailable'], ['/dev/citadel-missing-b', 'unavailable']])
  })
})

describe('citadel status', () => {
  it('gives the morning glance with a bar per filesystem, and the same data with --json', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'a' })
    const before = snapshot(roots.base)
    const human = await citadel(['status'], roots.env)
    expect(human.code, human.stderr).toBe(0)
    expect(human.stdout).toMatch(/^citadel on .+: overall OK\n/)
    expect(human.stdout).toMatch(/\[[#.]{20}\] +\d+(\.\d)?%/)
    expect(human.stdout).toContain('roots    models marked, backup marked\nlinks    3 ok\n')
    expect(human.stdout).toMatch(/^backup   backup_\S+_full, \d+m old; not verified yet$/m)
    expect(human.stdout).toContain('monitor  not running')
    const json = await citadelJson(['status'], roots.env)
    expect(json.doc.monitor).toEqual({ running: false, pid: null, last_cycle_at: null })
    expect(json.doc.backups.complete).toBe(1)
    expect(snapshot(roots.base)).toEqual(before)
  })
})

describe('health-report task', () => {
  it('writes state/health.json, reports problems as warnings, and writes nothing in check mode', async () => {
    const roots = await setUpServer(CALM)
    const file = path.join(roots.app, 'state', 'health.json')
    unlinkSync(file)
    const check = await citadelJson(['task', 'health-report', '--check'], roots.env)
    expect(check.code).toBe(0)
    expect(() => readFileSync(file)).toThrow()
    const result = await citadelJson(['task', 'health-report'], roots.env)
    expect(result.code).toBe(0)
    const task = result.doc.tasks[0]
    expect(task.status).toBe('ok')
    expect(task.msg).toBe(`overall critical, 1 problem; written to ${file}`)
    expect(task.warnings).toEqual([`critical: no complete backup in ${storeOf(roots)}: run citadel backup create`])
    expect(JSON.parse(readFileSync(file, 'utf8')).overall).toBe('critical')
  })
})
