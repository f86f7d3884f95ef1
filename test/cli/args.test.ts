// Task arguments: one zod schema per task converts, defaults and checks them, and the command line's usage,
// help and one-line errors come from it, for a command line and a playbook step alike.
import { afterEach, describe, expect, it, vi } from 'vitest'
import { argFields, parseTaskArgs } from '../../lib/core/args.ts'
import { definePlaybook } from '../../lib/core/task.ts'
import { main } from '../../lib/cli/main.ts'
import { playbooks } from '../../playbooks/index.ts'
import { tasks } from '../../tasks/index.ts'
import backupCleanup from '../../tasks/backup-cleanup.ts'
import backupCreate from '../../tasks/backup-create.ts'
import checkPerf from '../../tasks/check-perf.ts'
import checkSmart from '../../tasks/check-smart.ts'
import { citadel, makeRoots } from '../helpers.ts'

const find = (name: string) => tasks.find((t) => t.name === name)!

describe('task arguments', () => {
  it('every task describes each argument for the command line', () => {
    for (const task of tasks) for (const f of argFields(task.args)) expect(f.help, `${task.name} ${f.name}`).not.toBe('')
  })

  it('arrive converted and defaulted', () => {
    expect(parseTaskArgs(backupCleanup.args, { days: '30' })).toEqual({ args: { days: 30 } })
    expect(parseTaskArgs(backupCleanup.args, {})).toEqual({ args: {} })
    expect(parseTaskArgs(checkPerf.args, { path: 'rel' })).toEqual({ args: { path: `${process.cwd()}/rel`, quick: false } })
    expect(parseTaskArgs(find('backup-verify').args, { sample: '.5', seed: '7' })).toEqual({ args: { sample: 0.5, seed: 7 } })
    expect(parseTaskArgs(checkSmart.args, { devices: ['/dev/sda', '/dev/sdb'] })).toEqual({ args: { devices: ['/dev/sda', '/dev/sdb'] } })
  })

  it('a bad value is one line naming the argument, what it was and what is expected', () => {
    expect(parseTaskArgs(backupCleanup.args, { days: '-3' })).toEqual({ problem: 'DAYS "-3" is not valid: expected a whole number of days, e.g. 30' })
    expect(parseTaskArgs(backupCreate.args, { type: 'weekly' })).toEqual({ problem: '--type "weekly" is not valid: expected full or incremental' })
    expect(parseTaskArgs(checkSmart.args, { devices: ['/dev/sda', '-d'] })).toEqual({ problem: 'DEVICE "-d" is not valid: expected a device path, e.g. /dev/sda' })
    expect(parseTaskArgs(checkPerf.args, { quick: 'yes' })).toEqual({ problem: '--quick "yes" is not valid: expected true or false' })
    expect(parseTaskArgs(backupCreate.args, { kind: 'full' })).toEqual({ problem: 'unknown argument "kind"; expected src, type' })
    expect(parseTaskArgs(find('create-dirs').args, { force: true })).toEqual({ problem: 'unknown argument "force"; it takes no arguments' })
    expect(parseTaskArgs(backupCreate.args, { remote: true, type: 'full' })).toEqual({ problem: '--type "full" is not valid: not with --remote: a send copies a backup as it was made; give its name (or none, for latest)' })
  })

  it('--type with --remote is refused before anything runs, exit 4, as before the stores were one', async () => {
    const roots = makeRoots()
    const refused = await citadel(['backup', 'create', '--remote', '--type', 'full'], roots.env)
    expect(refused.code).toBe(4)
    expect(refused.stderr).toBe('citadel: --type "full" is not valid: not with --remote: a send copies a backup as it was made; give its name (or none, for latest)\n')
  })

  it('usage and help come from the schema', async () => {
    const help = await citadel(['backup', 'create', '--help'], makeRoots().env)
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage: citadel task backup-create [SRC] [--type full|incremental] [options]\nAlso: citadel backup create [SRC] [--type full|incremental] [options]')
    expect(help.stdout).toContain('  --type full|incremental  default: incremental when a complete backup exists, else full\n')
    const smart = await citadel(['help', 'check-smart'], makeRoots().env)
    expect(smart.stdout).toContain('[DEVICE ...] [--json-input FILE]')
  })
})

describe('a playbook step', () => {
  const written: string[] = []
  afterEach(() => {
    vi.restoreAllMocks()
    written.length = 0
  })

  it('with arguments its task refuses stops the run before anything runs: exit 4, one line', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
      written.push(String(chunk))
      return true
    })
    const broken = definePlaybook({ name: 'broken', description: 'a step with a bad argument after a good one', onFailure: 'rollback', tasks: [checkPerf, { task: backupCreate, args: { type: 'weekly' } }] })
    playbooks.push(broken)
    try {
      expect(await main(['run', 'broken', '--skip-tags', 'backup'])).toBe(4)
    } finally {
      playbooks.splice(playbooks.indexOf(broken), 1)
    }
    expect(written).toEqual(['citadel: playbook broken, step backup-create: --type "weekly" is not valid: expected full or incremental\n'])
  })
})
