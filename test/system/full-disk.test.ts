// A full disk, for real: a small tmpfs mounted where citadel writes. Needs root to mount.
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { citadelJson, makeRoots, setUp } from '../helpers.ts'

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})

function mountFullTmpfs(dir: string) {
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', dir])
  mounted.push(dir)
}

function fill(dir: string) {
  try {
    for (let i = 0; ; i++) writeFileSync(path.join(dir, `filler-${i}`), Buffer.alloc(4096, 1))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
  }
}

const asRoot = process.getuid?.() === 0

describe.skipIf(!asRoot)('on a full disk (root: mounts a 64 KiB tmpfs)', () => {
  it('storage-env.sh keeps its old content, no temporary file is left, and the run rolls back', async () => {
    const roots = makeRoots()
    await setUp(roots)
    const configs = path.join(roots.app, 'configs')
    mountFullTmpfs(configs)
    expect((await citadelJson(['task', 'write-env-script'], roots.env)).code).toBe(0)
    const script = path.join(configs, 'storage-env.sh')
    const before = readFileSync(script, 'utf8')
    fill(configs)
    execFileSync('rm', [path.join(roots.app, 'staging')])

    const registry = Array.from({ length: 50 }, (_, i) => `model${i}=model-directory-${i}`).join(',')
    const result = await citadelJson(['run', 'initial-setup'], { ...roots.env, MODEL_REGISTRY: registry })
    expect(result.code).toBe(2)
    expect(result.doc.tasks.at(-1)).toMatchObject({ name: 'write-env-script', status: 'failed' })
    expect(result.doc.tasks.at(-1).msg).toContain('ENOSPC')
    expect(readFileSync(script, 'utf8')).toBe(before)
    expect(readdirSync(configs).filter((n) => n.includes('citadel-write'))).toEqual([])
    expect(result.doc.rolled_back.map((s: any) => s.msg)).toEqual([`remove link ${path.join(roots.app, 'staging')}`])
    expect(readdirSync(roots.app)).not.toContain('staging')
  })

  it('a log disk that is full warns once and the run still does its work', async () => {
    const roots = makeRoots()
    await setUp(roots)
    mountFullTmpfs(path.join(roots.app, 'logs'))
    fill(path.join(roots.app, 'logs'))
    execFileSync('rm', [path.join(roots.app, 'staging')])
    const result = await citadelJson(['task', 'repair-symlinks'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.stats.changed).toBe(1)
    expect(result.stderr.match(/cannot append to .*ENOSPC/g)).toHaveLength(1)
  })
})
