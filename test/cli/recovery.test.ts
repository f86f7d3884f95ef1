import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { decodeName, fsPath, tempSibling } from '../../lib/infra/fsx.ts'
import { canExchange, exchange } from '../../lib/infra/exchange.ts'
import { Journal } from '../../lib/core/journal.ts'
import { citadel, citadelJson, makeRoots, start } from '../helpers.ts'

/** Roots with `count` downloaded models, so that create-symlinks has that many links to make. */
function rootsWithModels(count: number) {
  const names = Array.from({ length: count }, (_, i) => `m${i}`)
  const roots = makeRoots({ MODEL_REGISTRY: names.map((n) => `${n}=${n}`).join(',') })
  for (const n of names) mkdirSync(path.join(roots.active, n), { recursive: true })
  return roots
}

// renameat2's exchange needs x86-64 or arm64 Linux and a filesystem that has it (ext4, xfs, btrfs, tmpfs).
const exchangeHere = await canExchange(os.tmpdir())
if (!exchangeHere) console.warn(`skipping the exchange test: ${os.tmpdir()} cannot exchange two directories in one step (renameat2 RENAME_EXCHANGE)`)

const journalOf = (app: string) => path.join(app, '.citadel', 'journal.jsonl')
const journalLines = (app: string) => (existsSync(journalOf(app)) ? readFileSync(journalOf(app), 'utf8').split('\n').filter(Boolean).length : 0)
const modelLinks = (app: string) => (existsSync(path.join(app, 'model-links')) ? readdirSync(path.join(app, 'model-links')).length : 0)

async function waitFor(condition: () => boolean, what: string, ms = 30_000) {
  const until = Date.now() + ms
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

describe('interrupted runs', () => {
  it('a run killed with SIGKILL mid-playbook is rolled back by the next run', async () => {
    const roots = rootsWithModels(1500)
    const { child, done } = start(['run', 'initial-setup'], roots.env)
    await waitFor(() => modelLinks(roots.app) >= 20, 'the first model links')
    child.kill('SIGKILL')
    const killed = await done
    expect(killed.signal).toBe('SIGKILL')
    const made = modelLinks(roots.app)
    expect(made, 'the kill came before the run finished').toBeLessThan(1500)
    expect(journalLines(roots.app)).toBeGreaterThan(made)

    // write-env-script takes the lock, rolls the journal back, then fails: configs/ went with the rollback.
    const next = await citadel(['task', 'write-env-script'], roots.env)
    expect(next.stderr).toContain('took over a stale lock')
    expect(next.stderr).toMatch(/rolled back \d+ of \d+ changes left by an interrupted run/)
    expect(next.stderr).not.toMatch(/citadel: {3}FAILED/)
    expect(existsSync(path.join(roots.app, 'model-links')), next.stderr).toBe(false)
    expect(existsSync(path.join(roots.app, 'models'))).toBe(false)
    expect(existsSync(path.join(roots.models, 'archive'))).toBe(false)
    expect(existsSync(journalOf(roots.app))).toBe(false)
    // The logs of the killed run are kept.
    expect(readdirSync(path.join(roots.app, 'logs')).length).toBe(1)
    expect(next.code).toBe(2)
  })

  it('SIGTERM stops after the current step, rolls back and exits 99', async () => {
    const roots = rootsWithModels(1500)
    const { child, done } = start(['run', 'initial-setup', '--json'], roots.env)
    await waitFor(() => modelLinks(roots.app) >= 20, 'the first model links')
    child.kill('SIGTERM')
    const result = await done
    expect(result.code).toBe(99)
    const doc = JSON.parse(result.stdout)
    expect(doc.interrupted).toBe(true)
    expect(doc.tasks.find((t: any) => t.name === 'create-symlinks')).toMatchObject({ status: 'failed', msg: 'interrupted by signal' })
    expect(doc.rolled_back.every((s: any) => s.done)).toBe(true)
    expect(modelLinks(roots.app)).toBe(0)
    expect(existsSync(path.join(roots.app, 'model-links'))).toBe(false)
    expect(existsSync(journalOf(roots.app))).toBe(false)
    expect(existsSync(path.join(roots.app, '.citadel', 'lock'))).toBe(false)
  })
})

describe('the journal', () => {
  it('rolls back a change whose temporary link a kill left behind, so the directory can go too', async () => {
    const roots = makeRoots()
    const dir = path.join(roots.base, 'model-links')
    const link = path.join(dir, 'm1')
    const journal = new Journal(path.join(roots.base, 'journal.jsonl'), 'run')
    await journal.record('create-dirs', { op: 'rmdir', path: dir })
    mkdirSync(dir)
    await journal.record('create-symlinks', { op: 'remove-link', path: link })
    symlinkSync(roots.active, tempSibling(link, 'link')) // killed before the rename
    writeFileSync(path.join(roots.base, 'not-ours'), '')
    const steps = await journal.rollback()
    expect(steps.map((s) => [s.done, s.msg])).toEqual([[true, `remove link ${link}`], [true, `remove directory ${dir}`]])
    expect(existsSync(dir)).toBe(false)
    expect(existsSync(path.join(roots.base, 'not-ours'))).toBe(true)
  })

  it.skipIf(!exchangeHere)('exchanges two directories in one step, and undoes the exchange only when it happened', async () => {
    const roots = makeRoots()
    const live = path.join(roots.active, 'model')
    // A name that is not UTF-8 travels to the system call as the bytes it is.
    const built = path.join(roots.base, `new-${decodeName(Buffer.from([0xff, 0xfe]))}`)
    mkdirSync(live, { recursive: true })
    writeFileSync(path.join(live, 'version'), 'old')
    mkdirSync(fsPath(built))
    writeFileSync(Buffer.concat([fsPath(built) as Buffer, Buffer.from('/version')]), 'new')
    const ino = lstatSync(fsPath(built)).ino
    const journal = new Journal(path.join(roots.base, 'journal.jsonl'), 'run')
    // Killed before the exchange: nothing to undo.
    await journal.record('backup-restore', { op: 'exchange-back', path: live, other: built, ino })
    expect((await journal.rollback()).map((s) => [s.done, s.msg])).toEqual([[true, `exchange ${live} and ${built} back`]])
    expect(readFileSync(path.join(live, 'version'), 'utf8')).toBe('old')
    // Killed after it: both back where they were.
    await journal.record('backup-restore', { op: 'exchange-back', path: live, other: built, ino })
    expect(await exchange(live, built)).toBe(true)
    expect(readFileSync(path.join(live, 'version'), 'utf8')).toBe('new')
    expect(readFileSync(Buffer.concat([fsPath(built) as Buffer, Buffer.from('/version')]), 'utf8')).toBe('old')
    expect((await journal.rollback()).every((s) => s.done)).toBe(true)
    expect(readFileSync(path.join(live, 'version'), 'utf8')).toBe('old')
    expect(lstatSync(fsPath(built)).ino).toBe(ino)
  })

  it('never removes a directory that is not empty, and says so', async () => {
    const roots = makeRoots()
    const dir = path.join(roots.base, 'configs')
    const journal = new Journal(path.join(roots.base, 'journal.jsonl'), 'run')
    await journal.record('create-dirs', { op: 'rmdir', path: dir })
    mkdirSync(dir)
    writeFileSync(path.join(dir, 'operator.conf'), 'mine')
    const [step] = await journal.rollback()
    expect(step!.done).toBe(false)
    expect(step!.msg).toContain(`remove directory ${dir} failed`)
    expect(readFileSync(path.join(dir, 'operator.conf'), 'utf8')).toBe('mine')
  })
})

describe('the lock', () => {
  it('a second concurrent run exits 3 naming the first', async () => {
    const roots = rootsWithModels(1500)
    const first = start(['run', 'initial-setup'], roots.env)
    await waitFor(() => existsSync(path.join(roots.app, '.citadel', 'lock')), 'the lock')
    const second = await citadel(['task', 'create-dirs'], roots.env)
    const firstResult = await first.done
    expect(second.code).toBe(3)
    expect(second.stderr).toContain(`pid ${first.child.pid} (citadel run initial-setup)`)
    expect(second.stderr).toMatch(/started \d{4}-\d\d-\d\dT/)
    expect(firstResult.code, firstResult.stderr).toBe(0)
  })

  it('a lock whose process is gone is taken over with a warning', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.app, '.citadel'), { recursive: true })
    // A pid that cannot be alive: above the kernel's pid_max.
    writeFileSync(path.join(roots.app, '.citadel', 'lock'), JSON.stringify({ pid: 4194305, command: 'citadel run daily', started: '2026-01-01T00:00:00.000Z', procStart: '1' }))
    const result = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(result.code).toBe(0)
    expect(result.stderr).toContain('took over a stale lock of pid 4194305 (citadel run daily')
  })

  it('check mode neither takes the lock nor writes a log', async () => {
    const roots = makeRoots()
    await citadelJson(['run', 'initial-setup'], roots.env)
    const logs = readdirSync(path.join(roots.app, 'logs')).map((f) => readFileSync(path.join(roots.app, 'logs', f), 'utf8')).join('')
    const result = await citadelJson(['run', 'initial-setup', '--check'], roots.env)
    expect(result.code).toBe(0)
    expect(readdirSync(path.join(roots.app, 'logs')).map((f) => readFileSync(path.join(roots.app, 'logs', f), 'utf8')).join('')).toBe(logs)
  })
})
