import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { citadelJson, makeRoots, snapshot, tree } from '../helpers.ts'

describe('initial-setup', () => {
  it('on empty roots creates exactly the tree and links, and a second run changes nothing', async () => {
    const roots = makeRoots()
    const first = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(first.code, first.stderr).toBe(0)
    expect(first.doc.playbook).toBe('initial-setup')
    expect(first.doc.tasks.map((t: any) => [t.name, t.status])).toEqual([
      ['verify-prereq', 'ok'], ['mark-roots', 'changed'], ['create-dirs', 'changed'], ['create-symlinks', 'changed'], ['verify-symlinks', 'ok'], ['write-env-script', 'changed'], ['health-report', 'ok'],
    ])
    // Nothing was broken on a fresh server: its links are created, not fixed.
    expect(first.doc.tasks[3].msg).toBe('3 created, 0 right, 2 waiting for their model')
    const log = `storage_${new Date().toISOString().slice(0, 10)}.log`
    expect(tree(roots.base)).toEqual([
      '. (dir)',
      'app (dir)',
      'app/.citadel (dir)',
      'app/.citadel/roots.json (file)',
      'app/configs (dir)',
      'app/configs/storage-env.sh (file)',
      `app/downloads -> ${roots.models}/downloads`,
      'app/logs (dir)',
      `app/logs/${log} (file)`,
      'app/metrics (dir)',
      'app/model-links (dir)',
      `app/models -> ${roots.active}`,
      `app/staging -> ${roots.models}/staging`,
      'app/state (dir)',
      'app/state/health.json (file)',
      'backup (dir)',
      'backup/.citadel-root.json (file)',
      'backup/models (dir)',
      'backup/system (dir)',
      'models (dir)',
      'models/.citadel-root.json (file)',
      'models/active (dir)',
      'models/archive (dir)',
      'models/cache (dir)',
      'models/cache/huggingface (dir)',
      'models/cache/vllm (dir)',
      'models/downloads (dir)',
      'models/staging (dir)',
      'test.env (file)',
    ])
    // Models not downloaded yet get no link and are no failure.
    expect(first.doc.tasks[4].data.links.filter((l: any) => l.model).map((l: any) => [l.model, l.verdict, l.failing])).toEqual([['mixtral', 'missing', false], ['yi34b', 'missing', false]])

    const second = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(second.code).toBe(0)
    expect(second.doc.stats).toEqual({ ok: 7, changed: 0, failed: 0, skipped: 0 })

    mkdirSync(path.join(roots.active, 'mixtral-8x7b-instruct'))
    const third = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(third.doc.stats.changed).toBe(1)
    expect(readlinkSync(path.join(roots.app, 'model-links', 'mixtral'))).toBe(path.join(roots.active, 'mixtral-8x7b-instruct'))
    expect((await citadelJson(['run', 'initial-setup'], roots.env)).doc.stats.changed).toBe(0)
  })

  it('--check on empty roots reports the changes and leaves every byte as it was', async () => {
    const roots = makeRoots()
    const before = snapshot(roots.base)
    const result = await citadelJson(['run', 'initial-setup', '--check'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.check).toBe(true)
    const changes = result.doc.tasks.flatMap((t: any) => t.changes)
    expect(changes.filter((c: any) => c.action === 'create directory')).toHaveLength(15)
    expect(changes.filter((c: any) => c.action === 'create link').map((c: any) => path.basename(c.path))).toEqual(['models', 'downloads', 'staging'])
    expect(changes.find((c: any) => c.action === 'create file').after).toContain('export HF_HOME=')
    expect(snapshot(roots.base)).toEqual(before)
  })

  it('--check on a set-up tree reports a drifted link without fixing it', async () => {
    const roots = makeRoots()
    await citadelJson(['run', 'initial-setup'], roots.env)
    rmSync(path.join(roots.app, 'staging'))
    const before = snapshot(roots.base)
    const result = await citadelJson(['task', 'create-symlinks', '--check'], roots.env)
    expect(result.doc.tasks[0].changes).toEqual([{ path: path.join(roots.app, 'staging'), action: 'create link', before: null, after: path.join(roots.models, 'staging') }])
    expect(snapshot(roots.base)).toEqual(before)
  })

  it('never deletes a real directory at app/models: fails without --force, moves it aside with it', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.app, 'models'), { recursive: true })
    writeFileSync(path.join(roots.app, 'models', 'weights.bin'), 'precious')

    const refused = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(refused.code).toBe(2)
    const failed = refused.doc.tasks.find((t: any) => t.status === 'failed')
    expect(failed.name).toBe('create-symlinks')
    expect(failed.msg).toContain(`${path.join(roots.app, 'models')} is a directory with 1 entries`)
    expect(failed.msg).toContain('--force')
    expect(readFileSync(path.join(roots.app, 'models', 'weights.bin'), 'utf8')).toBe('precious')
    // The run was rolled back: what create-dirs made is gone again.
    expect(existsSync(path.join(roots.models, 'archive'))).toBe(false)
    expect(refused.doc.rolled_back.length).toBeGreaterThan(0)

    const forced = await citadelJson(['run', 'initial-setup', '--force'], roots.env)
    expect(forced.code, forced.stderr).toBe(0)
    expect(readlinkSync(path.join(roots.app, 'models'))).toBe(roots.active)
    const aside = readdirSync(roots.app).filter((n) => n.startsWith('models.citadel-aside-'))
    expect(aside).toHaveLength(1)
    expect(readFileSync(path.join(roots.app, aside[0]!, 'weights.bin'), 'utf8')).toBe('precious')
    expect(forced.doc.tasks.find((t: any) => t.name === 'create-symlinks').warnings[0]).toContain('moved a directory')
  })

  it('a rollback moves what --force moved aside back into place', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.app, 'models'), { recursive: true })
    writeFileSync(path.join(roots.app, 'models', 'weights.bin'), 'precious')
    const envScript = path.join(roots.app, 'configs', 'storage-env.sh')
    mkdirSync(envScript, { recursive: true }) // makes write-env-script, the last task, fail
    writeFileSync(path.join(envScript, 'keep'), 'x')
    const result = await citadelJson(['run', 'initial-setup', '--force'], roots.env)
    expect(result.code).toBe(2)
    expect(result.doc.rolled_back.map((s: any) => s.msg)).toContain(`move ${result.doc.tasks[3].changes[0].after} back to ${path.join(roots.app, 'models')}`)
    expect(readFileSync(path.join(roots.app, 'models', 'weights.bin'), 'utf8')).toBe('precious')
    expect(readdirSync(roots.app).filter((n) => n.includes('aside'))).toEqual([])
  })

  it('SYMLINK_FORCE_RECREATE=true acts as --force, and an empty directory is simply replaced', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.app, 'staging'), { recursive: true })
    const result = await citadelJson(['run', 'initial-setup'], { ...roots.env, SYMLINK_FORCE_RECREATE: 'true' })
    expect(result.code, result.stderr).toBe(0)
    expect(readlinkSync(path.join(roots.app, 'staging'))).toBe(path.join(roots.models, 'staging'))
    expect(readdirSync(roots.app).filter((n) => n.includes('aside'))).toEqual([])
  })

  it('a failure after links were changed rolls them back to their previous targets', async () => {
    const roots = makeRoots()
    mkdirSync(path.join(roots.active, 'mixtral-8x7b-instruct'), { recursive: true })
    expect((await citadelJson(['run', 'initial-setup'], roots.env)).code).toBe(0)
    const linksBefore = ['models', 'downloads', 'staging', 'model-links/mixtral'].map((l) => readlinkSync(path.join(roots.app, l)))

    // Point the app at another active directory, and put a real directory where storage-env.sh goes:
    // create-symlinks retargets the links, then write-env-script fails.
    const envScript = path.join(roots.app, 'configs', 'storage-env.sh')
    rmSync(envScript)
    mkdirSync(envScript)
    writeFileSync(path.join(envScript, 'keep'), 'x')
    const active2 = path.join(roots.models, 'active2')
    mkdirSync(path.join(active2, 'mixtral-8x7b-instruct'), { recursive: true })
    const result = await citadelJson(['run', 'initial-setup'], { ...roots.env, CITADEL_MODELS_ACTIVE: active2 })
    expect(result.code).toBe(2)
    expect(result.doc.tasks.at(-1)).toMatchObject({ name: 'write-env-script', status: 'failed' })
    const retargeted = result.doc.tasks.find((t: any) => t.name === 'create-symlinks').changes
    expect(retargeted.map((c: any) => path.basename(c.path))).toEqual(['models', 'mixtral'])
    expect(result.doc.rolled_back.map((s: any) => s.msg)).toEqual([
      `point ${path.join(roots.app, 'model-links', 'mixtral')} back to ${linksBefore[3]}`,
      `point ${path.join(roots.app, 'models')} back to ${linksBefore[0]}`,
    ])
    expect(['models', 'downloads', 'staging', 'model-links/mixtral'].map((l) => readlinkSync(path.join(roots.app, l)))).toEqual(linksBefore)
    expect(readFileSync(path.join(envScript, 'keep'), 'utf8')).toBe('x')
  })
})
