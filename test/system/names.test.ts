// Names are bytes on Linux. A name that is not UTF-8 (a Latin-1 é, a stray 0xFF), a newline in a name or an
// emoji must neither stop a backup nor change on the way: copied, hashed, recorded and verified as the bytes
// they are, so that coreutils' sha256sum agrees with the manifest.
import { execFileSync } from 'node:child_process'
import { mkdirSync, openSync, readdirSync, readSync, symlinkSync, writeFileSync, writeSync, closeSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { decodeName, encodeName, showName } from '../../lib/infra/fsx.ts'
import { setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

/** A path from parts, each a string (UTF-8) or raw bytes. */
const bytesPath = (...parts: (string | Buffer)[]) => Buffer.concat(parts.flatMap((p, i) => [...(i ? [Buffer.from('/')] : []), Buffer.isBuffer(p) ? p : Buffer.from(p)]))

const BAD = Buffer.from('bad-\xff.bin', 'latin1') // 0xFF is never UTF-8
const CAFE = Buffer.from('caf\xe9', 'latin1') // Latin-1 é: 0xE9 alone
const BAD_REL = 'm/bad-\udcff.bin' // how citadel's JSON names it
const manifestCheck = (backupDir: string) =>
  execFileSync('sha256sum', ['-c', '--strict', '../SHA256SUMS'], { cwd: path.join(backupDir, 'data'), encoding: 'latin1' })

describe('names that are bytes', () => {
  it('bytes round-trip through the string form; UTF-8 names stay plain strings', () => {
    for (const raw of [BAD, CAFE, Buffer.from('emoji-😀💩'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xf0, 0x9f, 0x98]), Buffer.from([0xc0, 0xaf, 0x0a, 0xe2, 0x82])]) {
      expect(encodeName(decodeName(raw)).equals(raw)).toBe(true)
    }
    expect(decodeName(Buffer.from('emoji-😀💩'))).toBe('emoji-😀💩')
    expect(decodeName(BAD)).toBe('bad-\udcff.bin')
    expect(showName(decodeName(Buffer.concat([CAFE, Buffer.from('/'), BAD])))).toBe('caf\\xe9/bad-\\xff.bin')
  })

  it('full and incremental backups of odd names pass sha256sum -c and verify, and a flipped byte is named', async () => {
    const roots = await setUpServer()
    const active = roots.active
    mkdirSync(bytesPath(active, 'm'), { recursive: true })
    writeFileSync(bytesPath(active, 'm', BAD), 'not utf-8 in the name\n')
    mkdirSync(bytesPath(active, CAFE))
    writeFileSync(bytesPath(active, CAFE, 'weights.bin'), 'in a Latin-1 directory\n')
    mkdirSync(bytesPath(active, 'emoji-😀💩'))
    writeFileSync(bytesPath(active, 'emoji-😀💩', 'w.bin'), 'emoji\n')
    writeFileSync(bytesPath(active, 'line\nbreak.bin'), 'newline in the name\n')
    symlinkSync(BAD, bytesPath(active, 'm', Buffer.from('link-\xfe', 'latin1')))

    const full = await citadelJson(['backup', 'create'], roots.env)
    expect(full.code, full.stdout + full.stderr).toBe(0)
    const fullDir = path.join(storeOf(roots), full.doc.tasks[0].data.backup)
    expect(manifestCheck(fullDir)).toContain('bad-\xff.bin: OK')
    // The copy holds the very bytes, not a replacement character.
    expect(readdirSync(bytesPath(fullDir, 'data', 'm'), { encoding: 'buffer' }).some((n) => n.equals(BAD))).toBe(true)

    writeFileSync(bytesPath(active, CAFE, Buffer.from('\xe0-new.bin', 'latin1')), 'added later\n')
    const incremental = await citadelJson(['backup', 'create'], roots.env)
    expect(incremental.code, incremental.stdout + incremental.stderr).toBe(0)
    const incDir = path.join(storeOf(roots), incremental.doc.tasks[0].data.backup)
    expect(incDir).toMatch(/_incremental$/)
    expect(manifestCheck(incDir)).toContain('caf\xe9/\xe0-new.bin: OK')

    const verified = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verified.code, verified.stdout + verified.stderr).toBe(0)
    expect(verified.doc.tasks[0].data.verification.files_hashed).toBe(5)

    // One byte of the file with the non-UTF-8 name flipped, in place.
    const fd = openSync(bytesPath(incDir, 'data', 'm', BAD), 'r+')
    const first = Buffer.alloc(1)
    readSync(fd, first, 0, 1, 0)
    writeSync(fd, Buffer.of(first[0]! ^ 0x01), 0, 1, 0)
    closeSync(fd)
    const bad = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(bad.code).toBe(2)
    expect(bad.doc.tasks[0].data.verification.problems.map((p: any) => [p.path, p.kind])).toEqual([[BAD_REL, 'mismatch']])
    // On the terminal, as bash's $'...' would take it back.
    const shown = await citadel(['backup', 'verify', '--sample', '1'], roots.env)
    expect(shown.stdout + shown.stderr).toContain('m/bad-\\xff.bin: mismatch')
  }, 60_000)

  it.skipIf(sshdMissing)('the remote store: sent, verified there with sha256sum, and a flipped byte is named', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    mkdirSync(bytesPath(roots.active, 'm'), { recursive: true })
    writeFileSync(bytesPath(roots.active, 'm', BAD), 'not utf-8 in the name\n')
    mkdirSync(bytesPath(roots.active, CAFE))
    writeFileSync(bytesPath(roots.active, CAFE, 'weights.bin'), 'in a Latin-1 directory\n')
    const local = await citadelJson(['backup', 'create'], roots.env)
    expect(local.code, local.stdout + local.stderr).toBe(0)
    const sent = await citadelJson(['backup', 'create', '--remote'], roots.env)
    expect(sent.code, sent.stdout + sent.stderr).toBe(0)
    const ok = await citadelJson(['backup', 'verify', '--remote', '--sample', '1'], roots.env)
    expect(ok.code, ok.stdout + ok.stderr).toBe(0)
    expect(ok.doc.tasks[0].data.verification.files_hashed).toBe(2)

    writeFileSync(bytesPath(remoteDir, 'models', local.doc.tasks[0].data.backup, 'data', 'm', BAD), 'NOT utf-8 in the name\n')
    const bad = await citadelJson(['backup', 'verify', '--remote', '--sample', '1'], roots.env)
    expect(bad.code).toBe(2)
    expect(bad.doc.tasks[0].data.verification.problems.map((p: any) => [p.path, p.kind])).toEqual([[BAD_REL, 'mismatch']])
  }, 60_000)
})
