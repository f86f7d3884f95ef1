import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { makeRoots, PROJECT, start } from '../helpers.ts'

let copy = ''
/** Where bin/citadel.js caches the build of `checkout` for user `uid`, with no XDG_CACHE_HOME set. */
const buildOf = (checkout: string, tmp = os.tmpdir(), uid = process.getuid!()) => path.join(tmp, `citadel-${uid}`, createHash('sha1').update(checkout).digest('hex').slice(0, 12))
afterEach(() => {
  if (!copy) return
  rmSync(copy, { recursive: true, force: true })
  rmSync(buildOf(copy), { recursive: true, force: true })
})

/** A copy of the sources in a temporary checkout that shares this one's node_modules. */
function copyProject(): string {
  copy = mkdtempSync(path.join(os.tmpdir(), 'citadel-copy-'))
  chmodSync(copy, 0o755)
  for (const part of ['bin', 'lib', 'tasks', 'playbooks', 'package.json', 'tsconfig.json']) cpSync(path.join(PROJECT, part), path.join(copy, part), { recursive: true })
  symlinkSync(path.join(PROJECT, 'node_modules'), path.join(copy, 'node_modules'))
  return copy
}

describe('bin/citadel.js', () => {
  it('picks up an edited task file on the next run, with no build step', async () => {
    copyProject()
    const env = makeRoots().env
    const list = async () => (await start(['list'], env, [process.execPath, path.join(copy, 'bin', 'citadel.js')]).done).stdout

    expect(await list()).toContain('Give every expected link a verdict')
    const file = path.join(copy, 'tasks', 'verify-symlinks.ts')
    writeFileSync(file, readFileSync(file, 'utf8').replace('Give every expected link a verdict', 'Edited description'))
    const after = await list()
    expect(after).toContain('Edited description')
    expect(after).not.toContain('Give every expected link a verdict')
  })

  it('a damaged code cache is refused by V8: the command runs from the bundle and the cache is written again', async () => {
    copyProject()
    const env = makeRoots().env
    const bin = [process.execPath, path.join(copy, 'bin', 'citadel.js')]
    expect((await start(['list'], env, bin).done).code).toBe(0)
    const { dir } = JSON.parse(readFileSync(path.join(buildOf(copy), 'current.json'), 'utf8')) as { dir: string }
    const cache = path.join(buildOf(copy), dir, 'cli.code-cache')
    const garbage = randomBytes(readFileSync(cache).length)
    writeFileSync(cache, garbage)
    const again = await start(['list'], env, bin).done
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toContain('Give every expected link a verdict')
    expect(readFileSync(cache).equals(garbage)).toBe(false)
  })

  it('a syntax slip in one task file keeps health-check answering from the last good build, naming the file and line', async () => {
    copyProject()
    const roots = makeRoots({ MODEL_REGISTRY: '' })
    const bin = [process.execPath, path.join(copy, 'bin', 'citadel.js')]
    expect((await start(['run', 'initial-setup'], roots.env, bin).done).code).toBe(0)
    const file = path.join(copy, 'tasks', 'check-perf.ts')
    const good = readFileSync(file, 'utf8')
    writeFileSync(file, good.replace('async run(ctx) {', 'async run(ctx) {{'))

    const health = await start(['health-check'], roots.env, bin).done
    expect(health.stdout).toMatch(/^CITADEL (OK|WARNING|CRITICAL) - /)
    expect([0, 1, 2]).toContain(health.code)
    expect(health.stderr).toMatch(/^citadel: warning: the sources do not build \(tasks\/check-perf\.ts:\d+:\d+: .+\); running the last build that did/)
    expect((await start(['list'], roots.env, bin).done).stdout).toContain('check-perf')

    writeFileSync(file, good)
    const fixed = await start(['health-check'], roots.env, bin).done
    expect(fixed.stderr).toBe('')
  })

  it('builds into a cache of the user it runs as: a service user needs no writable checkout', async (ctx) => {
    if (process.getuid?.() !== 0) return ctx.skip('needs root to run as another user')
    copyProject()
    const nobody = Number((await start(['-u', 'nobody'], {}, ['id']).done).stdout.trim())
    const env = { PATH: process.env.PATH!, HOME: '/tmp' }
    try {
      const result = await start(['-u', 'nobody', '--', process.execPath, path.join(copy, 'bin', 'citadel.js'), 'list', '--json'], env, ['runuser']).done
      expect(result.code, result.stderr).toBe(0)
      expect(JSON.parse(result.stdout).tasks.length).toBeGreaterThan(0)
      expect(existsSync(path.join(buildOf(copy, os.tmpdir(), nobody), 'current.json'))).toBe(true)
      expect(existsSync(buildOf(copy))).toBe(false)
    } finally {
      rmSync(buildOf(copy, os.tmpdir(), nobody), { recursive: true, force: true })
    }
  })

  it('never loads a build from a cache directory others can write, and uses CACHE_DIRECTORY when systemd sets it', async () => {
    copyProject()
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'citadel-tmp-'))
    try {
      // A build planted in a world-writable cache, as another user could in a shared temp directory.
      const planted = buildOf(copy, tmp)
      mkdirSync(path.join(planted, 'build-planted'), { recursive: true })
      // In the form a build has (a CommonJS script), so that loading it would run it.
      writeFileSync(path.join(planted, 'build-planted', 'cli.js'), `require('node:fs').writeFileSync(${JSON.stringify(path.join(tmp, 'ran'))}, '')\nexports.main = async () => 0\nexports.exitWhenFlushed = (code) => process.exit(code)\n`)
      writeFileSync(path.join(planted, 'current.json'), JSON.stringify({ dir: 'build-planted', inputs: {} }))
      chmodSync(path.dirname(planted), 0o777)
      const env = { PATH: process.env.PATH!, HOME: tmp, TMPDIR: tmp }
      const bin = [process.execPath, path.join(copy, 'bin', 'citadel.js')]
      const listed = await start(['list', '--json'], env, bin).done
      expect(listed.code, listed.stderr).toBe(0)
      expect(JSON.parse(listed.stdout).tasks.length).toBeGreaterThan(0)
      expect(existsSync(path.join(tmp, 'ran'))).toBe(false)

      const unitCache = path.join(tmp, 'var-cache-citadel')
      mkdirSync(unitCache, { mode: 0o755 })
      const asUnit = await start(['list', '--json'], { ...env, CACHE_DIRECTORY: unitCache }, bin).done
      expect(asUnit.code, asUnit.stderr).toBe(0)
      expect(readdirSync(unitCache)).toEqual([path.basename(planted)])
      expect(existsSync(path.join(tmp, 'ran'))).toBe(false)
    } finally {
      rmSync(tmp, { recursive: true, force: true })
    }
  })
})

describe('citadel check', () => {
  it('passes on the sources as they are, and names the file and line of a type error, a syntax slip and an unregistered task', async () => {
    copyProject()
    const env = makeRoots().env
    const check = () => start(['check'], env, [process.execPath, path.join(copy, 'bin', 'citadel.js')]).done
    const clean = await check()
    expect(clean.code, clean.stdout + clean.stderr).toBe(0)
    expect(clean.stdout).toMatch(/^ {2}load {3}\d+ tasks and \d+ playbooks load$/m)
    expect(clean.stdout).toMatch(/^ {2}types {2}ok$/m)

    // A type error and an unregistered task in one run (each tsc run costs seconds); a syntax slip stops
    // the load (and tsc's type pass), so it gets a run of its own.
    const file = path.join(copy, 'tasks', 'check-perf.ts')
    const good = readFileSync(file, 'utf8')
    const lines = good.split('\n').length
    writeFileSync(file, good + "export const slip: number = 'text'\n")
    const extra = path.join(copy, 'tasks', 'extra-task.ts')
    writeFileSync(extra, readFileSync(path.join(copy, 'tasks', 'verify-symlinks.ts'), 'utf8').replace("name: 'verify-symlinks'", "name: 'extra-task'"))
    const typed = await check()
    expect(typed.code).toBe(2)
    expect(typed.stdout).toMatch(/^ {2}types {2}1 error$/m)
    expect(typed.stdout).toContain(`tasks/check-perf.ts:${lines}:14: Type 'string' is not assignable to type 'number'. (TS2322)`)
    expect(typed.stdout).toMatch(/^ {2}load {3}1 problem\n {4}tasks\/extra-task\.ts: not registered in tasks\/index\.ts/m)

    rmSync(extra)
    writeFileSync(file, good.replace('async run(ctx) {', 'async run(ctx) {{'))
    const slipped = await check()
    expect(slipped.code).toBe(2)
    expect(slipped.stdout).toMatch(/^ {2}build {2}1 error\n {4}tasks\/check-perf\.ts:\d+:\d+: /m)
  })
})

describe('npx citadel', () => {
  it('runs the command from the checkout, as the README says', async () => {
    const env = makeRoots().env
    const result = await start(['--no-install', 'citadel', 'list', '--json'], env, ['npx']).done
    expect(result.code, result.stderr).toBe(0)
    expect(JSON.parse(result.stdout).playbooks[0].name).toBe('initial-setup')
  })
})

describe('npm run demo', () => {
  it('sets up a demo server without root or real disks, and a second run changes nothing', async () => {
    const roots = makeRoots()
    const env = { PATH: roots.env.PATH, HOME: roots.env.HOME, CITADEL_DEMO_DIR: path.join(roots.base, 'demo') }
    const first = await start([], env, [process.execPath, path.join(PROJECT, 'bin', 'demo.js')]).done
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toMatch(/RECAP {2}ok=3 changed=4 failed=0/)
    expect(first.stdout).toMatch(/\$ citadel status\ncitadel on .+: overall /)
    expect(first.stdout).toContain('$ citadel health-check --json\n{\n  "generated_at"')
    expect(first.stdout).toContain('state/health.json')
    expect(first.stdout).toContain('Where to look')
    // The deleted model comes back through the restore, byte for byte (the demo compares every file's sha256).
    const restored = /\$ citadel backup restore --model yi34b\n[\s\S]*restored yi-34b-chat from backup_\S+_incremental[\s\S]*yi-34b-chat is back: every file has the sha256 it had before/
    expect(first.stdout).toMatch(restored)
    const second = await start([], env, [process.execPath, path.join(PROJECT, 'bin', 'demo.js')]).done
    expect(second.code, second.stderr).toBe(0)
    expect(second.stdout).toMatch(/RECAP {2}ok=7 changed=0 failed=0/)
    expect(second.stdout).toMatch(restored)
  })
})
