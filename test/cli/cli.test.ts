import { chownSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { globby } from 'globby'
import { tasks } from '../../tasks/index.ts'
import { citadel, citadelJson, makeRoots, PROJECT } from '../helpers.ts'

describe('command line', () => {
  it('registers every task file and lists playbooks with their tasks', async () => {
    const files = (await globby('tasks/*.ts', { cwd: PROJECT })).filter((f) => !f.endsWith('index.ts'))
    expect(tasks.map((t) => `tasks/${t.name}.ts`).sort()).toEqual(files.sort())
    const listed = await citadel(['list', '--json'], makeRoots().env)
    const doc = JSON.parse(listed.stdout)
    expect(doc.playbooks.find((p: any) => p.name === 'initial-setup').tasks).toEqual(['verify-prereq', 'mark-roots', 'create-dirs', 'create-symlinks', 'verify-symlinks', 'write-env-script', 'health-report'])
    expect(doc.tasks.map((t: any) => t.name)).toEqual(tasks.map((t) => t.name))
    expect(doc.playbooks.map((p: any) => [p.name, p.on_failure])).toEqual([
      ['initial-setup', 'rollback'], ['daily', 'continue'], ['weekly', 'continue'], ['emergency', 'continue'], ['recover', 'continue'], ['install-services', 'rollback'],
    ])
    const text = await citadel(['list'], makeRoots().env)
    for (const t of tasks) expect(text.stdout).toContain(`${t.name}  `)
  })

  it.each([
    [['run', 'nope'], 'unknown playbook "nope"'],
    [['task', 'nope'], 'unknown task "nope"'],
    [['run', 'initial-setup', '--bogus'], "Unknown option '--bogus'"],
    [['task', 'create-dirs', 'extra'], 'takes no arguments'],
    [['run', 'initial-setup', '--start-at-task', 'nope'], '--start-at-task: "nope" is not a task of this run'],
    [['frobnicate'], 'unknown command "frobnicate"'],
    [[], 'Usage:'],
  ])('%j exits 4 with one clear line', async (args, message) => {
    const roots = makeRoots()
    const result = await citadel(args, roots.env)
    expect(result.code).toBe(4)
    expect(result.stderr + result.stdout).toContain(message)
  })

  it('an app root that cannot be created is one line naming CITADEL_APP_ROOT, exit 2', async () => {
    const roots = makeRoots()
    const blocker = path.join(roots.base, 'a-file')
    writeFileSync(blocker, '')
    const result = await citadel(['run', 'initial-setup'], { ...roots.env, CITADEL_APP_ROOT: path.join(blocker, 'app') })
    expect(result.code).toBe(2)
    expect(result.stderr.trim().split('\n')).toEqual([`citadel: cannot create ${path.join(blocker, 'app', '.citadel')} (CITADEL_APP_ROOT) for the run's lock and journal: ENOTDIR`])
  })

  it('--help works everywhere', async () => {
    const env = makeRoots().env
    for (const args of [['--help'], ['run', '--help'], ['task', '--help'], ['task', 'create-symlinks', '--help'], ['list', '--help'], ['help', 'run']]) {
      const result = await citadel(args, env)
      expect(result.code, args.join(' ')).toBe(0)
      expect(result.stdout).toMatch(/Usage:\s+citadel/)
    }
  })

  it('--tags, --skip-tags, --start-at-task and --list-tasks choose the tasks', async () => {
    const roots = makeRoots()
    const names = async (...args: string[]) => (await citadel(['run', 'initial-setup', '--list-tasks', ...args], roots.env)).stdout.split('\n').filter(Boolean).map((l) => l.split(' ')[0])
    expect(await names('--tags', 'links')).toEqual(['create-symlinks', 'verify-symlinks'])
    expect(await names('--skip-tags', 'verify')).toEqual(['mark-roots', 'create-dirs', 'create-symlinks', 'write-env-script', 'health-report'])
    expect(await names('--start-at-task', 'verify-symlinks')).toEqual(['verify-symlinks', 'write-env-script', 'health-report'])
    const run = await citadelJson(['run', 'initial-setup', '--tags', 'dirs'], roots.env)
    expect(run.doc.tasks.map((t: any) => t.name)).toEqual(['mark-roots', 'create-dirs'])
  })

  it('prints progress and an Ansible-style recap, with diffs on --diff', async () => {
    const roots = makeRoots()
    const result = await citadel(['run', 'initial-setup', '--diff'], roots.env)
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/\nRECAP {2}ok=3 changed=4 failed=0 skipped=0 elapsed=\d+\.\ds\n$/)
    expect(result.stdout).toContain(`create link ${path.join(roots.app, 'models')}\n      - (absent)\n      + ${roots.active}`)
    expect(result.stdout).toContain("      + export HF_HOME='")
  })

  it('logs the run, each task and each command with its exit code as JSON lines', async () => {
    const roots = makeRoots()
    await citadel(['run', 'initial-setup'], roots.env)
    mkdirSync(path.join(roots.active, 'm'))
    writeFileSync(path.join(roots.active, 'm', 'weights.bin'), 'w')
    const backup = await citadel(['backup', 'create'], roots.env)
    expect(backup.code, backup.stdout).toBe(0)
    const logDir = path.join(roots.app, 'logs')
    const [file] = readdirSync(logDir)
    expect(file).toBe(`storage_${new Date().toISOString().slice(0, 10)}.log`)
    const events = readFileSync(path.join(logDir, file!), 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    const setup = events.slice(0, events.findIndex((e) => e.event === 'run-end') + 1)
    expect(setup[0]).toMatchObject({ event: 'run-start', playbook: 'initial-setup' })
    expect(setup.at(-1)).toMatchObject({ event: 'run-end', exit: 0 })
    expect(setup.filter((e) => e.event === 'task').map((e) => e.task)).toHaveLength(7)
    expect(events.find((e) => e.event === 'command' && / rsync /.test(e.cmd))).toMatchObject({ exitCode: 0, ms: expect.any(Number) })
  })

  it('applies CITADEL_OWNER to the directories it creates and fixes (root only)', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip('needs root to chown')
    const roots = makeRoots({ CITADEL_OWNER: 'nobody:nogroup', CITADEL_DIR_MODE: '0750' })
    const result = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    const nobody = statSync(path.join(roots.models, 'archive'))
    expect(nobody.uid).not.toBe(0)
    expect(nobody.mode & 0o7777).toBe(0o750)
    chownSync(path.join(roots.models, 'archive'), 0, 0)
    const fixed = await citadelJson(['task', 'create-dirs'], roots.env)
    expect(fixed.doc.tasks[0].changes).toEqual([{ path: path.join(roots.models, 'archive'), action: 'fix owner', before: '0:0', after: `${nobody.uid}:${nobody.gid}` }])
    const bad = await citadelJson(['task', 'verify-prereq'], { ...roots.env, CITADEL_OWNER: 'no-such-user-here' })
    expect(bad.code).toBe(2)
    expect(bad.doc.tasks[0].msg).toContain('user "no-such-user-here" does not exist')
  })
})
