// A bug in citadel is not a failure of the world: a task that throws a TypeError exits 1 with its stack in
// the run log; a system error (a full disk, a directory where a file belongs) is one line and exit 2; the
// monitoring-plugin commands answer UNKNOWN (3) whatever happens.
import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { citadel, makeRoots, PROJECT, start, type Roots } from '../helpers.ts'

/**
 * Runs a task file of the test's own, as `tsx tasks/NAME.ts` runs a real one: the same command line,
 * runner, log and report as `citadel task`, with a body that does what no real task should.
 */
function runOwnTask(roots: Roots, name: string, body: string) {
  const file = path.join(roots.base, `${name}.ts`)
  writeFileSync(file, [
    `import { promises as fs } from 'node:fs'`,
    `import { defineTask, runWhenMain } from ${JSON.stringify(path.join(PROJECT, 'lib', 'core', 'task.ts'))}`,
    `const task = defineTask({ name: ${JSON.stringify(name)}, description: 'test', tags: [], async run(ctx) { ${body} } })`,
    `export default task`,
    `runWhenMain(import.meta)`,
  ].join('\n'))
  // --json: one document on stdout, and no progress lines on stderr.
  return start(['--json'], roots.env, [path.join(PROJECT, 'node_modules', '.bin', 'tsx'), file]).done
}

const runLog = (app: string) => readdirSync(path.join(app, 'logs')).map((f) => readFileSync(path.join(app, 'logs', f), 'utf8')).join('')

describe('a task that throws', () => {
  it('a bug (TypeError): one line naming the task and where the stack is, the stack in the run log, exit 1', async () => {
    const roots = makeRoots()
    expect((await citadel(['task', 'create-dirs'], roots.env)).code).toBe(0)
    const result = await runOwnTask(roots, 'buggy', `const settings: any = undefined; return ctx.finish(settings.appRoot)`)
    expect(result.code, result.stderr).toBe(1)
    const lines = result.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    const [, logFile] = /^citadel: internal error in task buggy \(a bug in citadel, please report it\): Cannot read properties of undefined \(reading 'appRoot'\); the stack trace is in (\S+)$/.exec(lines[0]!) ?? []
    expect(logFile, result.stderr).toBeDefined()
    expect(path.dirname(logFile!)).toBe(path.join(roots.app, 'logs'))
    const event = runLog(roots.app).split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((e) => e.event === 'internal-error')
    expect(event).toMatchObject({ task: 'buggy' })
    expect(event.stack).toMatch(/^TypeError: Cannot read properties of undefined[^]*\n {4}at .*buggy\.ts/)
    expect(JSON.parse(result.stdout).tasks[0]).toMatchObject({ status: 'failed', internal: true, msg: "internal error: Cannot read properties of undefined (reading 'appRoot')" })
  })

  it('a failure of the world (a system error) stays one line in the report and exit 2', async () => {
    const roots = makeRoots()
    expect((await citadel(['task', 'create-dirs'], roots.env)).code).toBe(0)
    const result = await runOwnTask(roots, 'unlucky', `await fs.readFile(${JSON.stringify(path.join(roots.base, 'absent'))}); return ctx.finish('read')`)
    expect(result.code, result.stderr).toBe(2)
    expect(result.stderr).toBe('')
    expect(JSON.parse(result.stdout).tasks[0]).toMatchObject({ status: 'failed', msg: `error: ENOENT: no such file or directory, open '${path.join(roots.base, 'absent')}'` })
    expect(JSON.parse(result.stdout).tasks[0].internal).toBeUndefined()
    expect(runLog(roots.app)).not.toContain('internal-error')
  })
})

describe('when citadel itself fails before any task', () => {
  it('health-check and monitor --once answer UNKNOWN (3), never 1; other commands give one line and exit 2', async () => {
    const roots = makeRoots()
    // The settings file is a directory: reading it fails with EISDIR outside any task.
    const envDir = path.join(roots.base, 'env-dir')
    mkdirSync(envDir)
    const env = { ...roots.env, CITADEL_ENV_FILE: envDir }

    const health = await citadel(['health-check'], env)
    expect(health.code).toBe(3)
    expect(health.stdout).toMatch(/^CITADEL UNKNOWN - citadel itself failed: EISDIR/)
    const once = await citadel(['monitor', '--once'], env)
    expect(once.code).toBe(3)
    expect(once.stdout).toMatch(/^CITADEL UNKNOWN - citadel itself failed: EISDIR/)

    const task = await citadel(['task', 'create-dirs'], env)
    expect(task.code).toBe(2)
    expect(task.stderr.trim().split('\n')).toEqual(['citadel: EISDIR: illegal operation on a directory, read'])
  })
})

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})

describe.skipIf(process.getuid?.() !== 0)('a full app-root disk (root: mounts a 64 KiB tmpfs)', () => {
  it('is one line naming where and what to do, exit 2, no stack', async () => {
    const roots = makeRoots()
    mkdirSync(roots.app)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', roots.app])
    mounted.push(roots.app)
    try {
      for (let i = 0; ; i++) writeFileSync(path.join(roots.app, `filler-${i}`), Buffer.alloc(4096, 1))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    }

    const result = await citadel(['run', 'initial-setup'], roots.env)
    expect(result.code, result.stderr).toBe(2)
    expect(result.stderr.trim().split('\n')).toEqual([
      `citadel: cannot take the run's lock in ${path.join(roots.app, '.citadel')} (CITADEL_APP_ROOT): ENOSPC (the disk of ${roots.app} is full: free space there and rerun); nothing was changed`,
    ])
    expect(readdirSync(path.join(roots.app, '.citadel'))).toEqual([])
  })
})
