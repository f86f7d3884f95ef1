// How each playbook fails, for real: a maintenance playbook keeps what its finished steps repaired and goes
// on to the health report; the first setup stays all or nothing; a step that needs a failed one says so.
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, start } from '../helpers.ts'

const steps = (doc: any) => doc.tasks.map((t: any) => [t.name, t.status])
const taskOf = (doc: any, name: string) => doc.tasks.find((t: any) => t.name === name)

/** The backup disk as it looks when it did not mount: its store is not there. */
const unmountBackupDisk = (backupRoot: string) => renameSync(path.join(backupRoot, 'models'), path.join(backupRoot, 'models.elsewhere'))

describe('a maintenance playbook keeps what it repaired when a later step fails', () => {
  it('emergency with the app link deleted and the backup disk gone: the link stays repaired, the backup fails, the health report runs, exit 2', async () => {
    const roots = await setUpServer()
    const link = path.join(roots.app, 'models')
    rmSync(link)
    unmountBackupDisk(roots.backup)

    const run = await citadelJson(['run', 'emergency'], roots.env)
    expect(run.code, run.stderr).toBe(2)
    expect(readlinkSync(link)).toBe(roots.active)
    expect(steps(run.doc)).toEqual([['repair-symlinks', 'changed'], ['backup-create', 'failed'], ['health-report', 'ok']])
    expect(run.doc).toMatchObject({ playbook: 'emergency', on_failure: 'continue', failed: ['backup-create'], rolled_back: [] })
    expect(run.doc.tasks.map((t: any) => t.ran)).toEqual([true, true, true])
    expect(taskOf(run.doc, 'backup-create').msg).toContain(path.join(roots.backup, 'models'))
    expect(existsSync(path.join(roots.app, 'state', 'health.json'))).toBe(true)
    expect(existsSync(path.join(roots.app, '.citadel', 'journal.jsonl'))).toBe(false)

    const human = await citadel(['run', 'emergency'], roots.env)
    expect(human.code).toBe(2)
    expect(human.stdout).toContain('\nFAILED (1): backup-create; the other steps ran and keep their changes\n')
    // Once while running, once in the report: never echoed a third time.
    expect(human.stdout.split(taskOf(run.doc, 'backup-create').msg).length - 1).toBe(2)
  })

  it('daily: a link that cannot be repaired fails two steps, the other repairs stay, every later step runs', async () => {
    const roots = await setUpServer({ MODEL_REGISTRY: 'mixtral=mixtral-8x7b,yi=yi-34b' })
    for (const dir of ['mixtral-8x7b', 'yi-34b']) mkdirSync(path.join(roots.active, dir), { recursive: true })
    writeFileSync(path.join(roots.active, 'yi-34b', 'config.json'), '{}\n')
    expect((await citadel(['task', 'create-symlinks'], roots.env)).code).toBe(0)
    const inTheWay = path.join(roots.app, 'model-links', 'mixtral')
    unlinkSync(inTheWay)
    mkdirSync(inTheWay)
    writeFileSync(path.join(inTheWay, 'notes.txt'), 'the operator\'s')
    unlinkSync(path.join(roots.app, 'staging'))

    const run = await citadelJson(['run', 'daily'], roots.env)
    expect(run.code, run.stderr).toBe(2)
    expect(steps(run.doc)).toEqual([
      ['repair-symlinks', 'failed'], ['verify-symlinks', 'failed'], ['check-usage', 'ok'], ['check-smart', 'ok'], ['check-backups', 'ok'], ['backup-create', 'changed'], ['health-report', 'ok'],
    ])
    expect(run.doc.failed).toEqual(['repair-symlinks', 'verify-symlinks'])
    expect(taskOf(run.doc, 'repair-symlinks')).toMatchObject({ kept_changes: true, data: { repairs: [{ path: path.join(roots.app, 'staging'), was: 'missing' }] } })
    expect(taskOf(run.doc, 'repair-symlinks').msg).toContain(`1 repaired; cannot repair 1: ${inTheWay} is a directory with 1 entries`)
    expect(readlinkSync(path.join(roots.app, 'staging'))).toBe(path.join(roots.models, 'staging'))
    expect(readFileSync(path.join(inTheWay, 'notes.txt'), 'utf8')).toBe('the operator\'s')
    expect(run.doc.rolled_back).toEqual([])
  })

  it('repair-symlinks alone: the missing link is repaired and stays, the one blocked by a file is a failure', async () => {
    const roots = await setUpServer()
    const blocked = path.join(roots.app, 'downloads')
    unlinkSync(blocked)
    writeFileSync(blocked, 'a file where a link belongs')
    unlinkSync(path.join(roots.app, 'models'))

    const run = await citadelJson(['task', 'repair-symlinks'], roots.env)
    expect(run.code).toBe(2)
    expect(run.doc).toMatchObject({ playbook: null, on_failure: 'continue', failed: ['repair-symlinks'], rolled_back: [] })
    expect(run.doc.tasks[0].changes).toEqual([{ path: path.join(roots.app, 'models'), action: 'create link', before: null, after: roots.active }])
    expect(readlinkSync(path.join(roots.app, 'models'))).toBe(roots.active)
    expect(readFileSync(blocked, 'utf8')).toBe('a file where a link belongs')
  })

  it('weekly: the steps that need a failed backup say so and do not run; cleanup and the health report still run', async () => {
    const roots = await setUpServer()
    unmountBackupDisk(roots.backup)
    const run = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(run.code, run.stderr).toBe(2)
    expect(steps(run.doc)).toEqual([
      ['backup-create', 'failed'], ['backup-verify', 'skipped'], ['backup-restore', 'skipped'], ['remote-backup-create', 'skipped'], ['remote-backup-verify', 'skipped'],
      ['model-verify', 'skipped'], ['backup-cleanup', 'failed'], ['remote-backup-cleanup', 'skipped'], ['health-report', 'ok'],
    ])
    expect(taskOf(run.doc, 'backup-verify')).toMatchObject({ ran: false, blocked_by: 'backup-create', msg: 'not run: it needs backup-create, which failed' })
    expect(taskOf(run.doc, 'backup-restore')).toMatchObject({ ran: false, blocked_by: 'backup-create' })
    expect(taskOf(run.doc, 'remote-backup-create')).toMatchObject({ ran: false, msg: 'BACKUP_REMOTE is not set' })
    expect(taskOf(run.doc, 'remote-backup-create').blocked_by).toBeUndefined()
    expect(run.doc.failed).toEqual(['backup-create', 'backup-cleanup'])
  })

  it('weekly with BACKUP_REMOTE set: a step needing a step that did not run names the failure at the root', async () => {
    const roots = await setUpServer({ BACKUP_REMOTE: 'backup@192.0.2.1:/srv/citadel' })
    unmountBackupDisk(roots.backup)
    const run = await citadelJson(['run', 'weekly', '--skip-tags', 'perf,cleanup'], roots.env)
    expect(run.code, run.stderr).toBe(2)
    expect(taskOf(run.doc, 'remote-backup-create')).toMatchObject({ ran: false, blocked_by: 'backup-create', msg: 'not run: it needs backup-verify, which did not run because backup-create failed' })
    expect(taskOf(run.doc, 'remote-backup-verify')).toMatchObject({ ran: false, blocked_by: 'backup-create' })
    expect(run.doc.failed).toEqual(['backup-create'])
  })
})

describe('a setup playbook stays all or nothing', () => {
  it('initial-setup rolls the whole run back when a late step fails, and stops there', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.app, 'configs', 'storage-env.sh'), { recursive: true })
    const run = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(run.code).toBe(2)
    expect(run.doc).toMatchObject({ on_failure: 'rollback', failed: ['write-env-script'] })
    expect(steps(run.doc)).toEqual([['verify-prereq', 'ok'], ['mark-roots', 'changed'], ['create-dirs', 'changed'], ['create-symlinks', 'changed'], ['verify-symlinks', 'ok'], ['write-env-script', 'failed']])
    expect(run.doc.rolled_back.length).toBeGreaterThan(0)
    expect(run.doc.rolled_back.every((s: any) => s.done)).toBe(true)
    expect(existsSync(path.join(roots.app, 'models'))).toBe(false)
    expect(existsSync(path.join(roots.models, 'archive'))).toBe(false)
    expect(existsSync(path.join(roots.models, '.citadel-root.json'))).toBe(false)
  })
})

/** A set-up server with the staging link gone and enough files that daily's backup takes a moment. */
async function dailyWithWork() {
  const roots = await setUpServer()
  const dir = path.join(roots.active, 'many-small-files')
  mkdirSync(dir, { recursive: true })
  for (let i = 0; i < 3000; i++) writeFileSync(path.join(dir, `shard-${i}.bin`), `weights ${i}\n`.repeat(64))
  unlinkSync(path.join(roots.app, 'staging'))
  return roots
}

async function waitForPartial(roots: { backup: string }) {
  for (let i = 0; i < 6000; i++) {
    if (readdirSync(storeOf(roots as any)).some((n) => n.endsWith('.partial'))) return
    await sleep(5)
  }
  throw new Error('timed out waiting for the backup to start')
}

describe('a signal or a kill in a maintenance playbook', () => {
  it('SIGTERM during the backup undoes only that step: the repaired link stays, exit 99', async () => {
    const roots = await dailyWithWork()
    const { child, done } = start(['run', 'daily', '--json'], roots.env)
    await waitForPartial(roots)
    child.kill('SIGTERM')
    const result = await done
    expect(result.code, result.stderr).toBe(99)
    const doc = JSON.parse(result.stdout)
    expect(doc.interrupted).toBe(true)
    expect(taskOf(doc, 'repair-symlinks').status).toBe('changed')
    expect(taskOf(doc, 'backup-create').status).toBe('failed')
    expect(taskOf(doc, 'health-report')).toMatchObject({ status: 'skipped', ran: false, msg: 'not started: interrupted by signal' })
    expect(readlinkSync(path.join(roots.app, 'staging'))).toBe(path.join(roots.models, 'staging'))
    expect(existsSync(path.join(roots.app, '.citadel', 'journal.jsonl'))).toBe(false)
  })

  it('SIGKILL during the backup: the next run rolls back nothing a finished step did', async () => {
    const roots = await dailyWithWork()
    const { child, done } = start(['run', 'daily'], roots.env)
    await waitForPartial(roots)
    child.kill('SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    // Until children die with citadel, the killed run's rsync may still be copying: let it end before
    // the next run and the cleanup of the tree.
    const busy = () => readdirSync('/proc').filter((n) => /^\d+$/.test(n)).some((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(roots.backup)
      } catch {
        return false
      }
    })
    for (let i = 0; busy() && i < 6000; i++) await sleep(5)

    const next = await citadel(['task', 'create-dirs'], roots.env)
    expect(next.code, next.stderr).toBe(0)
    expect(next.stderr).toContain('took over a stale lock')
    expect(next.stderr).not.toContain('rolled back')
    expect(readlinkSync(path.join(roots.app, 'staging'))).toBe(path.join(roots.models, 'staging'))
  })
})
