import { mkdirSync, readlinkSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { describe, expect, it } from 'vitest'
import { atomicSymlink } from '../../lib/infra/fsx.ts'
import { citadelJson, makeRoots, PROJECT, setUp, start } from '../helpers.ts'

/** A set-up tree where each expected link has a different verdict. */
async function treeWithEveryVerdict() {
  const roots = makeRoots({ MODEL_REGISTRY: 'mixtral=mixtral-8x7b-instruct,yi34b=yi-34b-chat,later=not-downloaded' })
  mkdirSync(path.join(roots.active, 'mixtral-8x7b-instruct'), { recursive: true })
  mkdirSync(path.join(roots.active, 'yi-34b-chat'), { recursive: true })
  await setUp(roots)
  const link = (name: string) => path.join(roots.app, name)
  unlinkSync(link('downloads'))
  symlinkSync('/somewhere/else', link('downloads')) // wrong-target
  rmSync(path.join(roots.models, 'staging'), { recursive: true }) // staging: broken
  unlinkSync(link('model-links/mixtral'))
  mkdirSync(link('model-links/mixtral')) // not-a-link
  writeFileSync(path.join(link('model-links/mixtral'), 'notes.txt'), 'mine')
  unlinkSync(link('model-links/yi34b')) // missing
  return roots
}

describe('verify-symlinks', () => {
  it('gives each link its verdict and fails on the real problems only', async () => {
    const roots = await treeWithEveryVerdict()
    const result = await citadelJson(['task', 'verify-symlinks'], roots.env)
    expect(result.code).toBe(2)
    expect(result.doc.playbook).toBeNull()
    const task = result.doc.tasks[0]
    expect(task.status).toBe('failed')
    const verdicts = Object.fromEntries(task.data.links.map((l: any) => [path.relative(roots.app, l.path), [l.verdict, l.failing]]))
    expect(verdicts).toEqual({
      models: ['ok', false],
      downloads: ['wrong-target', true],
      staging: ['broken', true],
      'model-links/mixtral': ['not-a-link', true],
      'model-links/yi34b': ['missing', true],
      'model-links/later': ['missing', false],
    })
    expect(task.data.links.find((l: any) => l.verdict === 'wrong-target').actual).toBe('/somewhere/else')
  })

  it('runs the same from its own file with tsx', async () => {
    const roots = await treeWithEveryVerdict()
    const viaCli = await citadelJson(['task', 'verify-symlinks'], roots.env)
    const tsx = path.join(PROJECT, 'node_modules', '.bin', 'tsx')
    const own = await start(['--json'], roots.env, [tsx, path.join(PROJECT, 'tasks', 'verify-symlinks.ts')]).done
    expect(own.code).toBe(2)
    const doc = JSON.parse(own.stdout)
    expect(doc.tasks[0].data).toEqual(viaCli.doc.tasks[0].data)
    expect(doc.tasks[0].msg).toBe(viaCli.doc.tasks[0].msg)
  })
})

describe('repair-symlinks', () => {
  it('fixes missing, wrong and broken links and keeps them; the directory in the way needs --force and is moved aside', async () => {
    const roots = await treeWithEveryVerdict()
    const refused = await citadelJson(['task', 'repair-symlinks'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.doc.tasks[0].msg).toContain(`${path.join(roots.app, 'model-links', 'mixtral')} is a directory with 1 entries`)
    expect(refused.doc.tasks[0].data.repairs.map((r: any) => [path.basename(r.path), r.was])).toEqual([
      ['staging', 'missing target'], ['downloads', 'wrong-target'], ['yi34b', 'missing'],
    ])
    expect(readlinkSync(path.join(roots.app, 'downloads'))).toBe(path.join(roots.models, 'downloads'))

    const repaired = await citadelJson(['task', 'repair-symlinks', '--force', '--diff'], roots.env)
    expect(repaired.code, repaired.stderr).toBe(0)
    expect(repaired.doc.tasks[0].data.repairs.map((r: any) => [path.basename(r.path), r.was])).toEqual([['mixtral', 'not-a-link']])
    const verified = await citadelJson(['task', 'verify-symlinks'], roots.env)
    expect(verified.code).toBe(0)
    expect((await citadelJson(['task', 'repair-symlinks'], roots.env)).doc.stats.changed).toBe(0)
  })
})

describe('atomic link replacement', () => {
  // A reader in another thread resolves the link as fast as it can while the main thread flips it.
  async function flipWhileReading(flip: (target: string, link: string) => Promise<void>) {
    const roots = makeRoots()
    const [a, b] = [path.join(roots.base, 'a'), path.join(roots.base, 'b')]
    mkdirSync(a)
    mkdirSync(b)
    const link = path.join(roots.base, 'current')
    symlinkSync(a, link)
    const shared = new Int32Array(new SharedArrayBuffer(12)) // [stop, reads, misses]
    const reader = new Worker(
      `const { readlinkSync } = require('node:fs'); const { workerData: { link, shared } } = require('node:worker_threads')
       while (Atomics.load(shared, 0) === 0) { try { readlinkSync(link) } catch { Atomics.add(shared, 2, 1) } Atomics.add(shared, 1, 1) }`,
      { eval: true, workerData: { link, shared } },
    )
    while (Atomics.load(shared, 1) === 0) await new Promise((r) => setTimeout(r, 1))
    for (let i = 0; i < 1000; i++) await flip(i % 2 ? a : b, link)
    Atomics.store(shared, 0, 1)
    await reader.terminate()
    return { reads: Atomics.load(shared, 1), misses: Atomics.load(shared, 2) }
  }

  it('a reader never sees the link missing while it is flipped 1,000 times', async () => {
    const { reads, misses } = await flipWhileReading(atomicSymlink)
    expect(reads).toBeGreaterThan(1000)
    expect(misses).toBe(0)
  })

  it('the same reader does catch a naive unlink-then-symlink flip (the test can fail)', async () => {
    const { misses } = await flipWhileReading(async (target, link) => {
      unlinkSync(link)
      await new Promise((r) => setImmediate(r))
      symlinkSync(target, link)
    })
    expect(misses).toBeGreaterThan(0)
  })
})
