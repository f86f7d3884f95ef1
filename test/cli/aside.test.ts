// --force moves what stands where a link belongs aside; a move never replaces anything, however many
// moves fall into the same second.
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { asideName, fileStamp, moveNoReplace } from '../../lib/infra/fsx.ts'
import { setUpServer } from '../backup-helpers.ts'
import { citadelJson, makeRoots } from '../helpers.ts'

const asides = (dir: string, name: string) => readdirSync(dir).filter((n) => n.startsWith(`${name}.citadel-aside-`)).sort()

describe('moving aside', () => {
  it('20 forced repairs in a tight loop keep 20 files, each with its own content', async () => {
    const roots = await setUpServer()
    const staging = path.join(roots.app, 'staging')
    for (let i = 1; i <= 20; i++) {
      rmSync(staging)
      writeFileSync(staging, `content ${i}`)
      const result = await citadelJson(['task', 'repair-symlinks', '--force'], roots.env)
      expect(result.code, result.stdout + result.stderr).toBe(0)
      expect(result.doc.tasks[0].warnings[0]).toMatch(/^moved a file of \d+ bytes at .* aside to /)
    }
    const names = asides(roots.app, 'staging')
    expect(names).toHaveLength(20)
    expect(names.map((n) => readFileSync(path.join(roots.app, n), 'utf8')).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `content ${i + 1}`).sort())
    // Twenty citadel runs: on two shared cores a minute was too short; a timeout only ends a hung test.
  }, 180_000)

  it('within one second the names get -2, -3, ...; a file or directory already there is never replaced', async () => {
    const roots = makeRoots()
    const p = path.join(roots.base, 'thing')
    const when = new Date('2026-12-01T03:00:00.500Z')
    for (let i = 1; i <= 20; i++) {
      if (i % 2) writeFileSync(p, `file ${i}`)
      else {
        mkdirSync(p)
        writeFileSync(path.join(p, 'inside'), `dir ${i}`)
      }
      await moveNoReplace(p, await asideName(p, when))
    }
    const names = asides(roots.base, 'thing')
    expect(names).toEqual(['thing.citadel-aside-20261201T030000Z', ...Array.from({ length: 19 }, (_, i) => `thing.citadel-aside-20261201T030000Z-${i + 2}`)].sort())
    const contents = names.map((n) => {
      const at = path.join(roots.base, n)
      return readdirSync(roots.base, { withFileTypes: true }).find((e) => e.name === n)!.isDirectory() ? readFileSync(path.join(at, 'inside'), 'utf8') : readFileSync(at, 'utf8')
    })
    expect(contents.sort()).toEqual(Array.from({ length: 20 }, (_, i) => `${i % 2 ? 'dir' : 'file'} ${i + 1}`).sort())

    // rename(2) would replace the empty directory and the file silently; the move refuses instead.
    const emptyDir = path.join(roots.base, 'empty')
    mkdirSync(emptyDir)
    mkdirSync(p)
    await expect(moveNoReplace(p, emptyDir)).rejects.toMatchObject({ code: 'EEXIST' })
    writeFileSync(path.join(roots.base, 'kept'), 'kept')
    writeFileSync(path.join(roots.base, 'mover'), 'mover')
    await expect(moveNoReplace(path.join(roots.base, 'mover'), path.join(roots.base, 'kept'))).rejects.toMatchObject({ code: 'EEXIST' })
    expect(readFileSync(path.join(roots.base, 'kept'), 'utf8')).toBe('kept')
    expect(readFileSync(path.join(roots.base, 'mover'), 'utf8')).toBe('mover')
  })

  it('an aside name already taken is left alone, and a rollback moves the thing back from the name used', async () => {
    const roots = makeRoots()
    const models = path.join(roots.app, 'models')
    mkdirSync(models, { recursive: true })
    writeFileSync(path.join(models, 'weights.bin'), 'precious')
    // Every name this run could pick for the coming seconds, taken: by an empty directory, which rename(2) would replace.
    const taken = Array.from({ length: 30 }, (_, i) => `${models}.citadel-aside-${fileStamp(new Date(Date.now() + i * 1000))}`)
    for (const name of taken) mkdirSync(name)
    const envScript = path.join(roots.app, 'configs', 'storage-env.sh')
    mkdirSync(envScript, { recursive: true }) // makes write-env-script, the last task, fail
    writeFileSync(path.join(envScript, 'keep'), 'x')
    const result = await citadelJson(['run', 'initial-setup', '--force'], roots.env)
    expect(result.code).toBe(2)
    const moved = result.doc.tasks.find((t: any) => t.name === 'create-symlinks').changes.find((c: any) => c.action === 'move aside').after
    expect(moved).toMatch(/\.citadel-aside-\d{8}T\d{6}Z-2$/)
    expect(result.doc.rolled_back.map((s: any) => s.msg)).toContain(`move ${moved} back to ${models}`)
    expect(readFileSync(path.join(models, 'weights.bin'), 'utf8')).toBe('precious')
    for (const name of taken) expect(readdirSync(name)).toEqual([])
  }, 30_000)

  it('check mode says it would move, and moves nothing', async () => {
    const roots = await setUpServer()
    const staging = path.join(roots.app, 'staging')
    rmSync(staging)
    writeFileSync(staging, 'keep me')
    const result = await citadelJson(['task', 'repair-symlinks', '--force', '--check'], roots.env)
    expect(result.doc.tasks[0].warnings[0]).toMatch(/^would move a file of 7 bytes at /)
    expect(readFileSync(staging, 'utf8')).toBe('keep me')
    expect(asides(roots.app, 'staging')).toEqual([])
  })
})
