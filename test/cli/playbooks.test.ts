// The backup playbooks, run for real: the order of their tasks, their arguments and their conditions.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { playbooks } from '../../playbooks/index.ts'
import { parseTaskArgs } from '../../lib/core/args.ts'
import { playbookEntries } from '../../lib/core/task.ts'
import { citadel, citadelJson, makeRoots, setUp as setUpHere } from '../helpers.ts'

async function setUp(extraEnv: Record<string, string> = {}) {
  const roots = makeRoots(extraEnv)
  await setUpHere(roots)
  mkdirSync(path.join(roots.active, 'mixtral-8x7b-instruct'), { recursive: true })
  writeFileSync(path.join(roots.active, 'mixtral-8x7b-instruct', 'config.json'), '{"model_type": "mixtral"}\n')
  return roots
}

const backups = (backupRoot: string) => readdirSync(path.join(backupRoot, 'models')).filter((n) => n.startsWith('backup_')).sort()
const steps = (doc: any) => doc.tasks.map((t: any) => [t.name, t.status])

describe('playbooks', () => {
  it('give every task argument a value its task accepts', () => {
    for (const p of playbooks)
      for (const step of playbookEntries(p))
        expect(parseTaskArgs(step.task.args, step.args), `${p.name}: ${step.task.name}`).not.toHaveProperty('problem')
  })

  it('weekly makes a full backup, verifies it, drills a restore and cleans up; each week adds a full one', async () => {
    const roots = await setUp()
    // The perf step measures 1 GiB per job: test/perf.test.ts runs it for real, here it is only listed.
    const listed = await citadel(['run', 'weekly', '--list-tasks'], roots.env)
    expect(listed.stdout.split('\n').filter(Boolean).map((l) => l.split(' ')[0])).toEqual(['backup-create', 'backup-verify', 'backup-restore', 'remote-backup-create', 'remote-backup-verify', 'model-verify', 'backup-cleanup', 'remote-backup-cleanup', 'check-perf', 'health-report'])
    const first = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(first.code, first.stderr).toBe(0)
    expect(steps(first.doc)).toEqual([
      ['backup-create', 'changed'], ['backup-verify', 'ok'], ['backup-restore', 'ok'], ['remote-backup-create', 'skipped'], ['remote-backup-verify', 'skipped'], ['model-verify', 'ok'], ['backup-cleanup', 'ok'], ['remote-backup-cleanup', 'skipped'], ['health-report', 'ok'],
    ])
    expect(first.doc.tasks[2].data.record).toMatchObject({ drill: true, ok: true, what: ['mixtral-8x7b-instruct'] })
    expect(first.doc.tasks[3].msg).toBe('BACKUP_REMOTE is not set')
    expect(first.doc.tasks[1].data.verification).toMatchObject({ ok: true, rate: 0.1 })
    // The live models hashed at BACKUP_VERIFY_SAMPLE_RATE, the run kept for health-check: a sample, never hashed files first.
    expect(first.doc.tasks[5].data.models).toEqual([expect.objectContaining({ name: 'mixtral-8x7b-instruct', files: 1, hashed: 1, problems: [] })])
    const record = JSON.parse(readFileSync(path.join(roots.app, 'state', 'model-hashes', 'mixtral-8x7b-instruct.json'), 'utf8'))
    expect(record.last_run).toMatchObject({ sample: true, rate: 0.1, ok: true, problems: [] })
    const second = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(second.code, second.stderr).toBe(0)
    expect(backups(roots.backup).map((n) => n.replace(/^backup_\d{8}_\d{6}_/, ''))).toEqual(['full', 'full'])
  })

  it('daily repairs and checks, makes an incremental backup (skipped when MODEL_AUTO_BACKUP is false), and reports', async () => {
    const off = await setUp({ MODEL_AUTO_BACKUP: 'false' })
    const skipped = await citadelJson(['run', 'daily'], off.env)
    expect(skipped.code).toBe(0)
    expect(skipped.doc.tasks.find((t: any) => t.name === 'backup-create')).toMatchObject({ status: 'skipped', msg: 'MODEL_AUTO_BACKUP is false' })
    expect(backups(off.backup)).toEqual([])

    const on = await setUp()
    await citadelJson(['backup', 'create'], on.env)
    rmSync(path.join(on.app, 'staging'))
    const daily = await citadelJson(['run', 'daily'], on.env)
    expect(daily.code, daily.stderr).toBe(0)
    expect(steps(daily.doc)).toEqual([
      ['repair-symlinks', 'changed'], ['verify-symlinks', 'ok'], ['check-usage', 'ok'], ['check-smart', 'ok'], ['check-backups', 'ok'], ['backup-create', 'changed'], ['health-report', 'ok'],
    ])
    expect(daily.doc.tasks.find((t: any) => t.name === 'backup-create').data.type).toBe('incremental')
    expect(JSON.parse(readFileSync(path.join(on.app, 'state', 'health.json'), 'utf8')).backups.complete).toBe(2)
  })

  it('emergency repairs the links, makes a full backup, then reports health', async () => {
    const roots = await setUp()
    rmSync(path.join(roots.app, 'models'))
    const run = await citadelJson(['run', 'emergency'], roots.env)
    expect(run.code, run.stderr).toBe(0)
    expect(steps(run.doc)).toEqual([['repair-symlinks', 'changed'], ['backup-create', 'changed'], ['health-report', 'ok']])
    expect(run.doc.tasks[2].data.backups.newest.type).toBe('full')
    expect(backups(roots.backup)).toEqual([expect.stringMatching(/_full$/)])
  })
})
