// Two app roots sharing one backup store: one's cleanup or create must never remove the .partial the
// other is still building. The create is frozen (SIGSTOP) while its partial exists, so the test does not
// depend on how fast anything runs.
import { execFileSync, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, setUp, start, type Result } from '../helpers.ts'

/** Children a failed assertion would leave frozen or waiting for the store. */
const running: ChildProcess[] = []
const mounted: string[] = []
afterEach(() => {
  for (const child of running.splice(0)) {
    if (child.exitCode !== null || child.signalCode !== null) continue
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
  for (const dir of mounted.splice(0)) execFileSync('umount', [dir])
})

async function until<T>(what: string, probe: () => T | undefined | false, seconds = 60): Promise<T> {
  for (const end = Date.now() + seconds * 1000; Date.now() < end; await sleep(5)) {
    const found = probe()
    if (found) return found
  }
  throw new Error(`gave up waiting for ${what}`)
}

const logged = (app: string, event: string) => {
  const dir = path.join(app, 'logs')
  return existsSync(dir) && readdirSync(dir).some((f) => readFileSync(path.join(dir, f), 'utf8').includes(`"event":"${event}"`))
}

describe('a backup store shared by two app roots', () => {
  it("waits for the other's create instead of removing its partial; both end right; a bounded wait fails naming the holder", async () => {
    const one = await setUpServer()
    const two = makeRoots({ CITADEL_BACKUP_ROOT: one.backup })
    const three = makeRoots({ CITADEL_BACKUP_ROOT: one.backup })
    for (const roots of [two, three]) await setUp(roots)
    // Big enough that the copy and hash take a while, so the partial is seen before it is published.
    for (let i = 0; i < 48; i++) writeFile(path.join(one.active, `m/shard-${i}.bin`), Buffer.alloc(2 << 20, i))
    writeFile(path.join(three.active, 'n/a.bin'), 'model of app three')

    const a = start(['backup', 'create'], one.env)
    let aDone: Result | undefined
    void a.done.then((r) => (aDone = r))
    const partial = await until('the partial of the first create', () => aDone ? `done first: ${aDone.stderr}` : readdirSync(storeOf(one)).find((n) => n.endsWith('.partial')))
    expect(partial).toMatch(/\.partial$/)
    running.push(a.child)
    a.child.kill('SIGSTOP')

    const impatient = await citadelJson(['backup', 'create'], { ...three.env, BACKUP_STORE_LOCK_WAIT: '0' })
    expect(impatient.code).toBe(2)
    expect(impatient.doc.tasks[0].msg).toMatch(new RegExp(`^the backup store ${storeOf(one)} is still in use by pid ${a.child.pid} \\(citadel backup-create of ${one.app}\\), started \\S+ after waiting 0s \\(BACKUP_STORE_LOCK_WAIT\\): let that run finish and rerun, or raise the wait$`))
    expect(existsSync(path.join(storeOf(one), partial))).toBe(true)

    const cleanup = start(['backup', 'cleanup', '--json'], two.env)
    running.push(cleanup.child)
    let cleanupDone: Result | undefined
    void cleanup.done.then((r) => (cleanupDone = r))
    await until('the cleanup to wait for the store or end', () => cleanupDone || logged(two.app, 'store-lock-wait'))
    expect(existsSync(path.join(storeOf(one), partial)), 'the partial the other app root is building').toBe(true)
    const create = start(['backup', 'create', '--json'], three.env)
    running.push(create.child)
    let createDone: Result | undefined
    void create.done.then((r) => (createDone = r))
    await until('the create of a third app root to wait for the store', () => createDone || logged(three.app, 'store-lock-wait'))

    a.child.kill('SIGCONT')
    const [first, cleaned, second] = await Promise.all([a.done, cleanup.done, create.done])
    expect(first.code, first.stderr).toBe(0)
    expect(cleaned.code, cleaned.stderr).toBe(0)
    expect(JSON.parse(cleaned.stdout).tasks[0].data.partials).toEqual([])
    expect(second.code, second.stderr).toBe(0)
    const names = readdirSync(storeOf(one)).filter((n) => n.startsWith('backup_')).sort()
    expect(names).toEqual([partial.replace(/\.partial$/, ''), JSON.parse(second.stdout).tasks[0].data.backup].sort())
    expect(readdirSync(storeOf(one))).not.toContain('.citadel-store.lock')
  })
})

describe.skipIf(process.getuid?.() !== 0)('a full backup disk (root: mounts a 4 MiB tmpfs)', () => {
  it('cleanup, which frees it, still runs when even the store lock does not fit, and leaves no lock file', async () => {
    const roots = makeRoots({ BACKUP_KEEP_MIN: '1' })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0755', 'tmpfs', roots.backup])
    mounted.push(roots.backup)
    await setUp(roots)
    writeFile(path.join(roots.active, 'm/a.bin'), 'alpha')
    const first = await citadel(['backup', 'create'], roots.env)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    writeFile(path.join(roots.active, 'm/a.bin'), 'alpha, changed')
    const second = await citadel(['backup', 'create'], roots.env)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    try {
      for (let i = 0; ; i++) writeFileSync(path.join(roots.backup, `filler-${i}`), Buffer.alloc(4096, 1))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    }
    const cleanup = await citadelJson(['backup', 'cleanup', '0'], roots.env)
    expect(cleanup.code, cleanup.stderr).toBe(0)
    expect(cleanup.doc.tasks[0].data.removed).toHaveLength(1)
    expect(cleanup.doc.tasks[0].warnings).toEqual(['the backup disk has no room for the store lock (ENOSPC): working without it'])
    expect(readdirSync(storeOf(roots))).not.toContain('.citadel-store.lock')
  })
})
