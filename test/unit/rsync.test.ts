// The rsync wrapper on its own, with the real rsync: progress parsed from --info=progress2, exclusions.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, expect, it } from 'vitest'
import { rsyncCopy } from '../../lib/backup/rsync.ts'
import { makeShell } from '../../lib/infra/shell.ts'

let base = ''
afterEach(() => rmSync(base, { recursive: true, force: true }))

it('reports the bytes rsync copied, never going back, ending at the total; leaves out what is never a model (downloads in progress, locks, FIFOs)', async () => {
  base = mkdtempSync(path.join(os.tmpdir(), 'citadel-rsync-'))
  const src = path.join(base, 'src')
  mkdirSync(path.join(src, '.locks'), { recursive: true })
  writeFileSync(path.join(src, 'shard.safetensors'), randomBytes(48 << 20))
  writeFileSync(path.join(src, 'next.safetensors.incomplete'), 'half a download')
  writeFileSync(path.join(src, '.locks', 'x.lock'), '')
  execFileSync('mkfifo', [path.join(src, 'a-fifo')])
  const seen: number[] = []
  const result = await rsyncCopy(makeShell(() => {}), { src, dest: path.join(base, 'dest'), linkDest: null, signal: new AbortController().signal, onBytes: (b) => seen.push(b) })
  expect(result).toEqual({ exitCode: 0, warnings: [], error: null })
  expect(seen.at(-1)).toBe(48 << 20)
  expect(seen).toEqual([...seen].sort((a, b) => a - b))
  expect(existsSync(path.join(base, 'dest', 'shard.safetensors'))).toBe(true)
  expect(existsSync(path.join(base, 'dest', 'next.safetensors.incomplete'))).toBe(false)
  expect(existsSync(path.join(base, 'dest', '.locks'))).toBe(false)
  expect(existsSync(path.join(base, 'dest', 'a-fifo'))).toBe(false)
})

it('names the exit code, its meaning and rsync\'s own error when it fails', async () => {
  base = mkdtempSync(path.join(os.tmpdir(), 'citadel-rsync-'))
  const result = await rsyncCopy(makeShell(() => {}), { src: path.join(base, 'missing'), dest: path.join(base, 'dest'), linkDest: null, signal: new AbortController().signal, onBytes: () => {} })
  expect(result.exitCode).toBe(23)
  expect(result.error).toMatch(/^rsync exit 23 \(partial transfer due to error\): .*missing.*No such file or directory/)
})

it('copies only the listed entries, a directory without what it holds, and leaves out a listed one that is gone', async () => {
  base = mkdtempSync(path.join(os.tmpdir(), 'citadel-rsync-'))
  const src = path.join(base, 'src')
  mkdirSync(path.join(src, 'm', 'sub'), { recursive: true })
  writeFileSync(path.join(src, 'm', 'listed.bin'), 'listed')
  writeFileSync(path.join(src, 'm', 'unlisted.bin'), 'unlisted')
  writeFileSync(path.join(src, 'm', 'sub', 'inside.bin'), 'inside')
  const only = ['.', 'm', 'm/sub', 'm/listed.bin', 'm/deleted-since.bin']
  const result = await rsyncCopy(makeShell(() => {}), { src, dest: path.join(base, 'dest'), linkDest: null, only, signal: new AbortController().signal, onBytes: () => {} })
  expect(result).toEqual({ exitCode: 0, warnings: [], error: null })
  expect(existsSync(path.join(base, 'dest', 'm', 'listed.bin'))).toBe(true)
  expect(existsSync(path.join(base, 'dest', 'm', 'sub'))).toBe(true)
  expect(existsSync(path.join(base, 'dest', 'm', 'sub', 'inside.bin'))).toBe(false)
  expect(existsSync(path.join(base, 'dest', 'm', 'unlisted.bin'))).toBe(false)
})
