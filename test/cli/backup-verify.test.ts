import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, mkdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { CITADEL, citadel, citadelJson, makeRoots, setUp, snapshot, type Roots } from '../helpers.ts'
import { backUp as backUpHere } from '../backup-helpers.ts'

const sha256 = (content: string | Buffer) => createHash('sha256').update(content).digest('hex')

/** Writes `files` (and relative `links`) into the active models directory. */
function writeSource(roots: Roots, files: Record<string, string | Buffer>, links: Record<string, string> = {}) {
  for (const [rel, content] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(roots.active, rel)), { recursive: true })
    writeFileSync(path.join(roots.active, rel), content)
  }
  for (const [rel, target] of Object.entries(links)) {
    mkdirSync(path.dirname(path.join(roots.active, rel)), { recursive: true })
    symlinkSync(target, path.join(roots.active, rel))
  }
}

/** Backs up the active models with the real task (in this process); returns the new backup's directory. */
const backUp = async (roots: Roots): Promise<string> => path.join(roots.backup, 'models', await backUpHere(roots))

/** Set-up roots holding one full backup of `files` and `links`. */
async function backupOf(files: Record<string, string | Buffer>, links: Record<string, string> = {}) {
  const roots = makeRoots()
  await setUp(roots)
  writeSource(roots, files, links)
  return { roots, dir: await backUp(roots) }
}

async function verify(roots: Roots, args: string[] = []) {
  const result = await citadelJson(['backup', 'verify', ...args], roots.env)
  return { code: result.code, stderr: result.stderr, task: result.doc.tasks[0] }
}

const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const problemsOf = (task: any) => task.data.verification.problems.map((p: any) => [p.path, p.kind]).sort()

/** `count` files of varied sizes, every tenth empty. */
const manyFiles = (count: number) =>
  Object.fromEntries(Array.from({ length: count }, (_, i) => [`m${i % 7}/f${i}.bin`, i % 10 === 0 ? '' : 'x'.repeat((i * 37) % 500 + 1)]))

const SOURCE = { 'a.bin': 'alpha content', 'b.bin': 'bravo content', 'c.bin': 'charlie', 'deep/d.bin': 'delta', 'empty.bin': '' }
const LINKS = { 'to-a': 'a.bin', 'deep/to-d': 'd.bin' }

describe('backup verify', () => {
  it('passes a clean backup at --sample 1, hashing every file, and records the run', async () => {
    const { roots, dir } = await backupOf(SOURCE, LINKS)
    const { code, stderr, task } = await verify(roots, ['--sample', '1'])
    expect(code, stderr + JSON.stringify(task)).toBe(0)
    expect(task.status).toBe('ok')
    expect(task.changes).toEqual([])
    expect(task.msg).toMatch(new RegExp(`^${path.basename(dir)}: 5 files checked, 5 hashed \\(.*, 100% of bytes\\): ok$`))
    expect(task.data.sampled).toEqual(['a.bin', 'b.bin', 'c.bin', 'deep/d.bin', 'empty.bin'])
    const records = readJson(path.join(dir, 'backup.json')).verifications
    expect(records).toHaveLength(1)
    expect(records[0]).toMatchObject({ rate: 1, seeded: false, files_checked: 5, files_hashed: 5, bytes_hashed: 38, ok: true, problems: [], transient: [] })
    expect(Object.keys(readJson(path.join(dir, 'verify-state.json'))).sort()).toEqual(task.data.sampled)
    expect(Object.values(readJson(path.join(dir, 'verify-state.json')))).toEqual(Array(5).fill(records[0].at))
  })

  it('reports a flipped byte, a truncated, a deleted and an added file and a retargeted link, and still records the run', async () => {
    const { roots, dir } = await backupOf(SOURCE, LINKS)
    const data = path.join(dir, 'data')
    chmodSync(path.join(data, 'a.bin'), 0o644)
    writeFileSync(path.join(data, 'a.bin'), 'alphA content')
    truncateSync(path.join(data, 'b.bin'), 3)
    rmSync(path.join(data, 'c.bin'))
    writeFileSync(path.join(data, 'deep', 'stray.bin'), 'not backed up')
    rmSync(path.join(data, 'to-a'))
    symlinkSync('b.bin', path.join(data, 'to-a'))

    const { code, task } = await verify(roots, ['--sample', '1'])
    expect(code).toBe(2)
    expect(task.status).toBe('failed')
    expect(problemsOf(task)).toEqual([['a.bin', 'mismatch'], ['b.bin', 'size'], ['c.bin', 'missing'], ['deep/stray.bin', 'extra'], ['to-a', 'link']])
    expect(task.msg).toContain('5 problems: ')
    expect(task.data.verification.problems.find((p: any) => p.path === 'to-a').detail).toBe('expected a link to a.bin, found a link to b.bin')
    // Every file that is there is read (the read tells its size); the bad ones stay first in line for the next run.
    expect(task.data.sampled).toEqual(['a.bin', 'b.bin', 'deep/d.bin', 'empty.bin'])
    expect(task.data.verification.problems.find((p: any) => p.path === 'b.bin').detail).toBe('3 bytes, 13 recorded')
    expect(Object.keys(readJson(path.join(dir, 'verify-state.json'))).sort()).toEqual(['deep/d.bin', 'empty.bin'])
    const records = readJson(path.join(dir, 'backup.json')).verifications
    expect(records).toHaveLength(1)
    expect(records[0].ok).toBe(false)
    expect(records[0].problems).toEqual(task.data.verification.problems)

    const human = await citadel(['backup', 'verify', '--sample', '1'], roots.env)
    expect(human.code).toBe(2)
    expect(human.stdout).toMatch(/a\.bin\s+mismatch\s+hashes to [0-9a-f]{64}, SHA256SUMS says [0-9a-f]{64}/)
    expect(human.stdout).toMatch(/b\.bin\s+size\s+3 bytes, 13 recorded/)
  })

  it('--seed N hashes the same sample every time, another seed another one', async () => {
    const { roots } = await backupOf(manyFiles(200))
    const first = await verify(roots, ['--sample', '0.1', '--seed', '7'])
    const again = await verify(roots, ['--sample', '0.1', '--seed', '7'])
    const other = await verify(roots, ['--sample', '0.1', '--seed', '8'])
    for (const run of [first, again, other]) expect(run.code).toBe(0)
    expect(first.task.data.verification).toMatchObject({ seed: 7, seeded: true, files_checked: 200 })
    expect(first.task.data.sampled.length).toBeGreaterThanOrEqual(20)
    expect(again.task.data.sampled).toEqual(first.task.data.sampled)
    expect(other.task.data.sampled).not.toEqual(first.task.data.sampled)
  })

  it('ten runs at --sample 0.1 without a seed hash every file, empty ones included', async () => {
    const files = manyFiles(100)
    const { roots, dir } = await backupOf(files)
    const covered = new Set<string>()
    const seeds = new Set<number>()
    for (let run = 0; run < 10; run++) {
      const { code, task } = await verify(roots, ['--sample', '0.1'])
      expect(code).toBe(0)
      const v = task.data.verification
      expect(v.seeded).toBe(false)
      const bytesTotal = Object.values(files).reduce((sum, c) => sum + c.length, 0)
      expect(v.files_hashed).toBeGreaterThanOrEqual(10)
      expect(v.bytes_hashed).toBeGreaterThanOrEqual(0.1 * bytesTotal)
      for (const rel of task.data.sampled) covered.add(rel)
      seeds.add(v.seed)
    }
    expect([...covered].sort()).toEqual(Object.keys(files).sort())
    expect(seeds.size).toBeGreaterThan(1)
    expect(readJson(path.join(dir, 'backup.json')).verifications).toHaveLength(10)
  })

  it('its --json document arrives whole through a pipe, even to a reader that is slow to start', async () => {
    const { roots } = await backupOf(manyFiles(4000))
    // 4,000 sampled paths make a document bigger than a pipe's 64 KiB buffer; the reader only starts once
    // citadel is done, so the rest is still waiting to be written when citadel finishes.
    const piped = spawnSync('bash', ['-c', '"$@" | (sleep 2; cat)', 'bash', process.execPath, CITADEL, 'backup', 'verify', '--sample', '1', '--json'], { env: roots.env, encoding: 'utf8', maxBuffer: 1 << 26 })
    expect(piped.stdout.length).toBeGreaterThan(65536)
    expect(JSON.parse(piped.stdout).tasks[0].data.sampled).toHaveLength(4000)
  })

  it('checks Hugging Face blobs against their names', async () => {
    const config = '{"model_type": "llama"}'
    const weights = 'weights '.repeat(100)
    const model = 'models--org--name'
    const { roots } = await backupOf(
      { [`${model}/blobs/${sha256(config)}`]: config, [`${model}/blobs/${sha256(weights)}`]: weights, [`${model}/refs/main`]: 'abc123' },
      { [`${model}/snapshots/abc123/config.json`]: `../../blobs/${sha256(config)}`, [`${model}/snapshots/abc123/model.safetensors`]: `../../blobs/${sha256(weights)}` },
    )
    const clean = await verify(roots, ['--sample', '1'])
    expect(clean.code, JSON.stringify(clean.task)).toBe(0)
    expect(clean.task.data.verification.files_hashed).toBe(3)

    // Corrupt before it was ever backed up: the manifest agrees with the copy, only the name tells.
    const bad = 'models--org--other/blobs/' + sha256('what the file should hold')
    writeSource(roots, { [bad]: 'what it holds instead' })
    await backUp(roots)
    const { code, task } = await verify(roots, ['--sample', '1'])
    expect(code).toBe(2)
    expect(problemsOf(task)).toEqual([[bad, 'blob-name']])
    expect(task.data.verification.problems[0].detail).toBe(`content hashes to ${sha256('what it holds instead')}, not to its name`)
  })

  it('--check reads and hashes everything but writes nothing', async () => {
    const { roots, dir } = await backupOf(SOURCE, LINKS)
    expect((await verify(roots, ['--sample', '0.5'])).code).toBe(0)
    const before = snapshot(roots.backup)
    const clean = await verify(roots, ['--sample', '1', '--check'])
    expect(clean.code).toBe(0)
    expect(clean.task.data.verification.files_hashed).toBe(5)
    expect(snapshot(roots.backup)).toEqual(before)

    chmodSync(path.join(dir, 'data', 'c.bin'), 0o644)
    writeFileSync(path.join(dir, 'data', 'c.bin'), 'Charlie')
    const damaged = snapshot(roots.backup)
    const failed = await verify(roots, ['--sample', '1', '--check'])
    expect(failed.code).toBe(2)
    expect(problemsOf(failed.task)).toEqual([['c.bin', 'mismatch']])
    expect(snapshot(roots.backup)).toEqual(damaged)
  })

  it('refuses bad arguments with exit 4 and one line, and names the backups there are', async () => {
    const { roots, dir } = await backupOf({ 'a.bin': 'alpha' })
    const before = snapshot(roots.backup)
    for (const [args, named] of [[['--sample', '2'], '--sample'], [['--sample', 'abc'], '--sample'], [['--sample', '0'], '--sample'], [['--seed', '-1'], '--seed'], [['--seed=-1'], '--seed'], [['--seed', '1.5'], '--seed']] as const) {
      const result = await citadel(['backup', 'verify', ...args], roots.env)
      expect(result.code, args.join(' ')).toBe(4)
      expect(result.stdout).toBe('')
      expect(result.stderr.trim().split('\n')).toHaveLength(1)
      expect(result.stderr).toContain(named)
    }
    expect(snapshot(roots.backup)).toEqual(before)

    const unknown = await verify(roots, ['backup_20000101_000000_full'])
    expect(unknown.code).toBe(2)
    expect(unknown.task.msg).toBe(`no complete backup named backup_20000101_000000_full; available: ${path.basename(dir)}`)
    expect(snapshot(roots.backup)).toEqual(before)
  })

  it('fails clearly when there is no backup', async () => {
    const roots = makeRoots()
    await setUp(roots)
    const { code, task } = await verify(roots)
    expect(code).toBe(2)
    expect(task.msg).toBe(`no complete backup in ${path.join(roots.backup, 'models')}: make one with citadel backup create`)
  })
})
