// Moves of model directories across filesystems, for real: archive/ becomes a small tmpfs mount (root only).
// model archive then copies, checks the copy against the source file by file, and only then removes the
// source; a copy that cannot be made leaves the source as it was and nothing in archive/. promote, whose
// undo must be one rename, leaves the previous version in the active models and says how to archive it.
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { describe, expect, it, type TestContext } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadelJson, snapshot, type Roots } from '../helpers.ts'

const ENV_FILE = 'MODEL_REGISTRY=chat=m-v1\nMODEL_AUTO_BACKUP=false\n'

/** A set-up server serving chat=m-v1, with archive/ a tmpfs of `mib` MiB; unmounted when `body` ends. */
async function withArchiveMount(ctx: TestContext, mib: number, body: (roots: Roots, archive: string) => Promise<void>) {
  if (process.getuid?.() !== 0) return ctx.skip('needs root to mount a tmpfs on archive/ (a filesystem of its own)')
  const roots = await setUpServer()
  writeFileSync(roots.env.CITADEL_ENV_FILE!, ENV_FILE)
  writeFile(path.join(roots.active, 'm-v1', 'config.json'), '{"version": "m-v1"}\n')
  const setup = await citadelJson(['run', 'initial-setup'], roots.env)
  expect(setup.code, setup.stdout).toBe(0)
  const archive = path.join(roots.models, 'archive')
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m,mode=0755`, 'tmpfs', archive])
  try {
    await body(roots, archive)
  } finally {
    execFileSync('umount', [archive])
  }
}

/** A model directory with what a copy can get wrong: a nested directory, a symlink, a file of its own mode, a file of several read buffers. */
function writeOldModel(dir: string, bigBytes: number) {
  writeFile(path.join(dir, 'config.json'), '{"version": "m-old"}\n')
  writeFile(path.join(dir, 'model.safetensors'), randomBytes(bigBytes))
  mkdirSync(path.join(dir, 'tokenizer'))
  writeFile(path.join(dir, 'tokenizer', 'vocab.json'), '{"a": 1}\n')
  chmodSync(path.join(dir, 'tokenizer', 'vocab.json'), 0o640)
  symlinkSync('tokenizer/vocab.json', path.join(dir, 'vocab.json'))
}

/** A tree by content, kind, mode, owner and link text; a copy's directories carry new times. */
const content = (dir: string) => Object.fromEntries(Object.entries(snapshot(dir)).map(([rel, v]) => [rel, v.replace(/ mtime=\S+$/, '')]))

describe('model moves across filesystems', () => {
  it('model archive copies into archive/ on another filesystem, checks the copy, then removes the source', async (ctx) => {
    await withArchiveMount(ctx, 64, async (roots, archive) => {
      const old = path.join(roots.active, 'm-old')
      writeOldModel(old, 5 * 1024 * 1024 + 3)
      const before = content(old)

      const run = await citadelJson(['model', 'archive', 'm-old'], roots.env)
      expect(run.code, run.stdout).toBe(0)
      expect(run.doc.tasks[0].changes.map((c: { action: string }) => c.action)).toEqual(['archive model'])
      expect(content(path.join(archive, 'm-old'))).toEqual(before)
      expect(readdirSync(roots.active).sort()).toEqual(['m-v1'])
      expect(readdirSync(archive)).toEqual(['m-old'])
      const again = await citadelJson(['model', 'archive', 'm-old'], roots.env)
      expect([again.code, again.doc.tasks[0].status]).toEqual([0, 'ok'])
    })
  }, 120_000)

  it('a copy that does not fit leaves the source as it was and nothing in archive/', async (ctx) => {
    await withArchiveMount(ctx, 1, async (roots, archive) => {
      const old = path.join(roots.active, 'm-old')
      writeOldModel(old, 3 * 1024 * 1024)
      const before = snapshot(old)

      const run = await citadelJson(['model', 'archive', 'm-old'], roots.env)
      expect(run.code).toBe(2)
      expect(run.doc.tasks[0].msg).toMatch(/ENOSPC/)
      expect(snapshot(old)).toEqual(before)
      expect(readdirSync(archive)).toEqual([])
      expect(readdirSync(roots.active).sort()).toEqual(['m-old', 'm-v1'])
    })
  }, 120_000)

  it('promote leaves the previous version in the active models when archive/ is on another filesystem, and says so', async (ctx) => {
    await withArchiveMount(ctx, 8, async (roots, archive) => {
      writeFile(path.join(roots.models, 'staging', 'm-v2', 'config.json'), '{"version": "m-v2"}\n')
      const run = await citadelJson(['model', 'promote', 'chat', 'm-v2'], roots.env)
      expect(run.code, run.stdout).toBe(0)
      expect(run.doc.tasks[0].warnings.join('\n')).toMatch(/m-v1 stays in .*, where model rollback takes it back from: .*archive is on another filesystem.*citadel model archive m-v1/)
      expect(readdirSync(roots.active).sort()).toEqual(['m-v1', 'm-v2'])
      expect(readdirSync(archive)).toEqual([])
      const archived = await citadelJson(['model', 'archive', 'm-v1'], roots.env)
      expect(archived.code, archived.stdout).toBe(0)
      expect(readdirSync(archive)).toEqual(['m-v1'])
    })
  }, 120_000)

  it('rollback takes back the version promote left in the active models, and leaves the one it replaces there, marked bad', async (ctx) => {
    await withArchiveMount(ctx, 8, async (roots, archive) => {
      writeFile(path.join(roots.models, 'staging', 'm-v2', 'config.json'), '{"version": "m-v2"}\n')
      const promote = await citadelJson(['model', 'promote', 'chat', 'm-v2'], roots.env)
      expect(promote.code, promote.stdout).toBe(0)
      const listed = await citadelJson(['model', 'list'], roots.env)
      expect(listed.doc.tasks[0].data.models.find((m: { name: string; place: string }) => m.name === 'm-v1' && m.place === 'active')).toMatchObject({ aliases: [], archived: { alias: 'chat', dir: 'm-v1', bad: false } })

      const back = await citadelJson(['model', 'rollback', 'chat'], roots.env)
      expect(back.code, back.stdout).toBe(0)
      expect(back.doc.tasks[0].msg).toMatch(/^chat serves m-v1 again .*; m-v2 is marked bad$/)
      expect(readlinkSync(path.join(roots.app, 'model-links', 'chat'))).toBe(path.join(roots.active, 'm-v1'))
      expect(readFileSync(roots.env.CITADEL_ENV_FILE!, 'utf8')).toContain('MODEL_REGISTRY=chat=m-v1\n')
      expect(readdirSync(roots.active).sort()).toEqual(['m-v1', 'm-v2'])
      expect(readdirSync(archive)).toEqual([])
      // The version it replaced is marked bad: no rollback takes it.
      const again = await citadelJson(['model', 'rollback', 'chat'], roots.env)
      expect(again.code).toBe(2)
      expect(again.doc.tasks[0].msg).toMatch(/^nothing to roll chat back to: .* that is not marked bad \(1 is\); it stays on m-v1$/)
    })
  }, 120_000)
})
