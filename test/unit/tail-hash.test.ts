// Hashing a restore's big files while the real rsync writes them (earlyHasher): the hash is of the very
// file that ends up in place, a temporary file left by an earlier copy is never taken for it, and a copy
// that dies mid-file leaves no hash behind.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { earlyHasher } from '../../lib/backup/restore.ts'
import { rsyncCopy } from '../../lib/backup/rsync.ts'
import { makeShell } from '../../lib/infra/shell.ts'

let base = ''
afterEach(() => rmSync(base, { recursive: true, force: true }))

const sha256sum = (file: string) => execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0]

/** A source with two shards and a small file, and an empty destination with the shards' directory. */
function source() {
  base = mkdtempSync(path.join(os.tmpdir(), 'citadel-tail-'))
  const src = path.join(base, 'src')
  mkdirSync(path.join(src, 'model'), { recursive: true })
  writeFileSync(path.join(src, 'model', 'a.safetensors'), randomBytes(12 << 20))
  writeFileSync(path.join(src, 'model', 'b.safetensors'), randomBytes(10 << 20))
  writeFileSync(path.join(src, 'model', 'config.json'), '{}')
  const dest = path.join(base, 'partial')
  mkdirSync(path.join(dest, 'model'), { recursive: true })
  const files = ['model/a.safetensors', 'model/b.safetensors', 'model/config.json'].map((rel) => ({ rel, size: rel.endsWith('json') ? 2 : rel.startsWith('model/a') ? 12 << 20 : 10 << 20 }))
  return { src, dest, files }
}

/** Copies the files as a restore does, rate-limited so the copy of each shard takes about a second. */
function copy(src: string, dest: string, early: ReturnType<typeof earlyHasher>, signal: AbortSignal, rels: string[]) {
  const ended = early.copying(rels)
  return rsyncCopy(makeShell(() => {}), { src, dest, linkDest: null, excludes: [], only: rels, bandwidthLimit: 12 * 1024, signal, onBytes: () => {}, onFileDone: early.onFileDone }).finally(ended)
}

it('hashes each big file while rsync writes it, to the bytes that end up in place; a temporary file left by an earlier copy is not taken for it', async () => {
  const { src, dest, files } = source()
  // What a copy killed in an earlier run leaves beside the final name: other bytes, the same pattern of name.
  writeFileSync(path.join(dest, 'model', '.a.safetensors.Xq3ZkP'), randomBytes(1 << 20))
  const signal = new AbortController().signal
  const early = earlyHasher(dest, files, signal)
  const result = await copy(src, dest, early, signal, files.map((f) => f.rel))
  expect(result.error).toBeNull()
  for (const rel of ['model/a.safetensors', 'model/b.safetensors']) {
    const hashed = await early.hashes.get(rel)
    expect(hashed, rel).toMatchObject({ sha256: sha256sum(path.join(src, rel)), whileCopied: true })
  }
  // Small files are left to the check after the copy.
  expect(early.hashes.has('model/config.json')).toBe(false)
  await early.writebacks()
})

it('a copy that dies in the middle of a file leaves no hash of it', async () => {
  const { src, dest, files } = source()
  const abort = new AbortController()
  const early = earlyHasher(dest, files, abort.signal)
  setTimeout(() => abort.abort(new Error('stopped by the test')), 400)
  await expect(copy(src, dest, early, abort.signal, ['model/a.safetensors'])).rejects.toThrow('stopped by the test')
  expect(early.hashes.has('model/a.safetensors')).toBe(false)
})
