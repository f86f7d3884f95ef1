// The recover playbook for real: on a healthy server it changes nothing; on a new model disk while the backup
// disk is dead it restores from BACKUP_REMOTE (a private sshd on loopback) and lays nothing out on the dead
// disk's empty mount point.
import { mkdirSync, readdirSync, rmSync, symlinkSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer } from '../backup-helpers.ts'
import { citadel, citadelJson, snapshot, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

const REGISTRY = { MODEL_REGISTRY: 'm1=model-one,m2=model-two' }
const FILES = {
  'model-one/config.json': '{"a":1}',
  'model-one/model-00001-of-00002.safetensors': 'A'.repeat(40_000),
  'model-one/model-00002-of-00002.safetensors': 'B'.repeat(30_000),
  'model-two/weights.bin': 'C'.repeat(20_000),
}

/** Every file and link below `dir` with mode, owner and content hash: what a restore must give back. */
const contents = (dir: string) => Object.fromEntries(Object.entries(snapshot(dir)).filter(([, desc]) => !desc.startsWith('dir ')))

/** A disk that died: its mount point is left, empty, as an unmounted disk leaves it. */
function emptyMountPoint(root: string) {
  for (const name of readdirSync(root)) rmSync(path.join(root, name), { recursive: true, force: true })
}

const stepOf = (doc: any, name: string) => doc.tasks.find((t: any) => t.name === name)

async function recover(roots: Roots) {
  const run = await citadelJson(['run', 'recover'], roots.env)
  return { ...run, step: (name: string) => stepOf(run.doc, name) }
}

describe('the recover playbook', () => {
  it('changes nothing on a healthy server', async () => {
    const roots = await setUpServer(REGISTRY)
    await backUp(roots, FILES)
    // The models came after initial-setup: a healthy server has their links too.
    expect((await citadel(['task', 'create-symlinks'], roots.env)).code).toBe(0)
    const before = { models: snapshot(roots.models), backup: contents(roots.backup) }
    const run = await recover(roots)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.doc.stats.changed, JSON.stringify(run.doc.tasks.filter((t: any) => t.status === 'changed'))).toBe(0)
    expect(run.step('backup-restore').status).toBe('ok')
    expect(snapshot(roots.models)).toEqual(before.models)
    // The store's directory sees its lock come and go; every file in it stays as it was.
    expect(contents(roots.backup)).toEqual(before.backup)
  }, 60_000)

  it('gives a replaced model disk every model back from the backup disk once it is marked', async () => {
    const roots = await setUpServer(REGISTRY)
    await backUp(roots, FILES)
    const models = contents(roots.active)
    const backups = contents(roots.backup)
    emptyMountPoint(roots.models)

    const marked = await citadelJson(['task', 'mark-roots', '--new-disk'], roots.env)
    expect(marked.code, marked.stdout + marked.stderr).toBe(0)
    expect(marked.doc.tasks[0].changes.map((c: any) => c.path)).not.toContain(path.join(roots.backup, '.citadel-root.json'))
    const run = await recover(roots)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.step('backup-restore')).toMatchObject({ status: 'changed', warnings: [], data: { store: path.join(roots.backup, 'models') } })
    expect(contents(roots.active)).toEqual(models)
    expect(readdirSync(path.join(roots.app, 'model-links')).sort()).toEqual(['m1', 'm2'])
    // The store gains only the restore's record (backup.json) and the files it verified (verify-state.json).
    const after = contents(roots.backup)
    expect(Object.keys(after).filter((rel) => after[rel] !== backups[rel]).map((rel) => path.basename(rel)).sort()).toEqual(['backup.json', 'verify-state.json'])

    const again = await recover(roots)
    expect(again.doc.stats.changed).toBe(0)
  }, 90_000)

  it.skipIf(sshdMissing)('restores a new model disk from BACKUP_REMOTE when the backup disk is dead, and leaves its mount point empty', async () => {
    const roots = await setUpServer(REGISTRY)
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    mkdirSync(path.join(roots.active, 'model-one', 'snapshots'), { recursive: true })
    symlinkSync('../config.json', path.join(roots.active, 'model-one', 'snapshots', 'config.json'))
    await backUp(roots, FILES)
    const sent = await citadel(['backup', 'create', '--remote'], roots.env)
    expect(sent.code, sent.stdout + sent.stderr).toBe(0)
    const models = contents(roots.active)

    emptyMountPoint(roots.models)
    emptyMountPoint(roots.backup)

    // The new model disk is not marked yet: nothing may be laid out on it, nor on the dead backup disk.
    const refused = await recover(roots)
    expect(refused.code).toBe(2)
    expect(refused.step('create-dirs')).toMatchObject({ status: 'failed', msg: expect.stringContaining('mark-roots --new-disk') })
    expect(refused.step('backup-restore').status).not.toBe('changed')
    expect(readdirSync(roots.models)).toEqual([])
    expect(readdirSync(roots.backup)).toEqual([])

    const marked = await citadelJson(['task', 'mark-roots', '--new-disk', '--root', 'models'], roots.env)
    expect(marked.code, marked.stdout + marked.stderr).toBe(0)
    expect(readdirSync(roots.models)).toEqual(['.citadel-root.json'])
    expect(readdirSync(roots.backup)).toEqual([])

    const run = await recover(roots)
    expect(run.step('create-dirs')).toMatchObject({ status: 'changed', warnings: [expect.stringContaining('backup directories not laid out')] })
    const restore = run.step('backup-restore')
    expect(restore.status, JSON.stringify(restore)).toBe('changed')
    expect(restore.warnings).toEqual(expect.arrayContaining([expect.stringContaining('restoring from BACKUP_REMOTE')]))
    expect(restore.data.units.map((u: any) => u.name).sort()).toEqual(['model-one', 'model-two'])
    expect(contents(roots.active)).toEqual(models)
    expect(readdirSync(roots.backup)).toEqual([])
    for (const step of ['create-symlinks', 'verify-symlinks', 'write-env-script']) expect(run.step(step).status, step).not.toBe('failed')
    // Only the health report may fail the run: the backup disk is still dead, which is critical.
    expect(run.doc.tasks.filter((t: any) => t.status === 'failed').map((t: any) => t.name)).toEqual([])

    const again = await recover(roots)
    expect(again.doc.stats.changed, JSON.stringify(again.doc.tasks.filter((t: any) => t.status === 'changed'))).toBe(0)
    expect(again.step('backup-restore').status).toBe('ok')
    expect(readdirSync(roots.backup)).toEqual([])
  }, 120_000)
})
