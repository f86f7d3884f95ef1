import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { hashFiles, type HashJob } from '../../lib/infra/hashing.ts'
import { compareBytewise, formatManifest, parseManifest, type ManifestEntry } from '../../lib/backup/manifest.ts'

const MiB = 1024 * 1024
// hash-worker.js reads this much at a time; sizes around it catch off-by-one errors at the buffer's end.
const READ_BUFFER = 1 * MiB

const tempDirs: string[] = []
function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-manifest-'))
  tempDirs.push(dir)
  return dir
}
afterEach(() => {
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function run(command: string, args: string[], options: { cwd?: string; input?: string } = {}) {
  return spawnSync(command, args, { ...options, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } })
}

function writeFiles(dir: string, contents: Record<string, string | Buffer>): HashJob[] {
  return Object.entries(contents).map(([name, content]) => {
    const file = path.join(dir, name)
    mkdirSync(path.dirname(file), { recursive: true })
    writeFileSync(file, content)
    return { file, size: Buffer.byteLength(content) }
  })
}

/** Digests by the real tool, one invocation per file so no name can confuse the parsing of its output. */
function sha256sumOf(file: string): string {
  const result = run('sha256sum', ['--', path.basename(file)], { cwd: path.dirname(file) })
  expect(result.status, result.stderr).toBe(0)
  return result.stdout.replace(/^\\/, '').slice(0, 64)
}

async function manifestOf(dataDir: string, jobs: HashJob[]): Promise<ManifestEntry[]> {
  const outcomes = await hashFiles(jobs)
  return outcomes.map((o) => {
    expect(o.error).toBeNull()
    return { path: path.relative(dataDir, o.file).split(path.sep).join('/'), sha256: o.sha256! }
  })
}

const HOSTILE_NAMES = [
  'plain.bin',
  'with space.bin',
  ' leading and trailing space ',
  `it's "quoted".bin`,
  'back\\slash.bin',
  '\\starts-with-backslash',
  'new\nline.bin',
  'carriage\rreturn.bin',
  'all\\of\nthem\r',
  'tab\there\t.bin',
  '*starts-with-star',
  'modèle–ü 漢字.bin',
  'line\u2028separator',
  '-leading-dash.bin',
  'nested/deeper/dir/file.bin',
  'nested/with space/back\\slash\nnewline.bin',
]

describe('formatManifest', () => {
  it('writes each line exactly as sha256sum prints it, and sha256sum -c --strict accepts the whole', async () => {
    const base = tempDir()
    const data = path.join(base, 'data')
    const jobs = writeFiles(data, Object.fromEntries(HOSTILE_NAMES.map((name) => [name, `content of ${name}`])))
    const entries = await manifestOf(data, jobs)

    for (const entry of entries) {
      const printed = run('sha256sum', ['--', entry.path], { cwd: data })
      expect(printed.status, printed.stderr).toBe(0)
      expect(formatManifest([entry]), JSON.stringify(entry.path)).toBe(printed.stdout)
    }

    const manifest = path.join(base, 'SHA256SUMS')
    writeFileSync(manifest, formatManifest(entries))
    const check = run('sha256sum', ['-c', '--strict', manifest], { cwd: data })
    expect(check.status, check.stdout + check.stderr).toBe(0)

    const victim = path.join(data, 'modèle–ü 漢字.bin')
    const bytes = readFileSync(victim)
    bytes[0] ^= 1
    writeFileSync(victim, bytes)
    const failed = run('sha256sum', ['-c', '--strict', manifest], { cwd: data })
    expect(failed.status).toBe(1)
    expect(failed.stdout).toContain('modèle–ü 漢字.bin: FAILED')
  })

  it('sorts by UTF-8 bytes and writes nothing at all for no entries', () => {
    const sha256 = 'a'.repeat(64)
    expect(formatManifest([])).toBe('')
    expect(formatManifest([{ path: 'b', sha256 }, { path: 'B', sha256 }, { path: 'a/b', sha256 }])).toBe(`${sha256}  B\n${sha256}  a/b\n${sha256}  b\n`)
  })

  it('refuses what sha256sum could not have written', () => {
    expect(() => formatManifest([{ path: 'x', sha256: 'A'.repeat(64) }])).toThrow(/not 64 lowercase hex digits/)
    expect(() => formatManifest([{ path: '', sha256: 'a'.repeat(64) }])).toThrow(/cannot be empty/)
  })
})

describe('parseManifest', () => {
  it('reads back what formatManifest wrote, and what sha256sum -b writes', async () => {
    const data = tempDir()
    const jobs = writeFiles(data, Object.fromEntries(HOSTILE_NAMES.map((name) => [name, `content of ${name}`])))
    const entries = await manifestOf(data, jobs)
    const sorted = [...entries].sort((a, b) => compareBytewise(a.path, b.path))
    expect(parseManifest(formatManifest(entries))).toEqual(sorted)

    const binary = run('sha256sum', ['-b', '--', ...sorted.map((e) => e.path)], { cwd: data })
    expect(binary.status, binary.stderr).toBe(0)
    expect(binary.stdout).toContain(' *plain.bin\n')
    expect(parseManifest(binary.stdout)).toEqual(sorted)
  })

  it('accepts upper-case digits and CRLF line ends, as sha256sum -c does', () => {
    expect(parseManifest(`${'AB'.repeat(32)}  x y\r\n`)).toEqual([{ path: 'x y', sha256: 'ab'.repeat(32) }])
  })

  it('rejects a malformed line naming its number and what is wrong', () => {
    const good = `${'0'.repeat(64)}  good\n`
    for (const bad of [
      'not a checksum line',
      `${'0'.repeat(63)}  short-digest`,
      `${'g'.repeat(64)}  not-hex`,
      `${'0'.repeat(64)} one-space`,
      `${'0'.repeat(64)}  `,
      '',
    ]) {
      expect(() => parseManifest(`${good}${bad}\n${good}`), JSON.stringify(bad)).toThrow(/^SHA256SUMS line 2: expected "<64 hex digits>  <name>"/)
    }
    expect(() => parseManifest(`${good}${good}\\${'0'.repeat(64)}  bad\\tescape\n`)).toThrow(/^SHA256SUMS line 3: invalid escape "\\t"/)
    expect(() => parseManifest(`\\${'0'.repeat(64)}  trailing\\\n`)).toThrow(/^SHA256SUMS line 1: invalid escape "\\"/)
  })
})

describe('compareBytewise', () => {
  it('orders names as LC_ALL=C sort does, where UTF-16 order differs', () => {
    const names = ['z', 'Z', 'a', 'ab', 'a b', 'a-b', 'é', '漢字', '\uE000 private', '\uFF21 fullwidth', '\uFFFD', '😀 emoji', '\u{10000}', 'x😀', 'x\uFFEE', '']
    const sorted = run('sort', ['-z'], { input: names.join('\0') + '\0' })
    expect(sorted.status, sorted.stderr).toBe(0)
    const byteOrder = sorted.stdout.split('\0').slice(0, -1)
    expect([...names].sort(compareBytewise)).toEqual(byteOrder)
    expect([...names].sort()).not.toEqual(byteOrder)
  })
})

describe('hashFiles', () => {
  it('matches sha256sum at the read buffer boundaries and reports progress within a large file', async () => {
    const dir = tempDir()
    const jobs = writeFiles(dir, {
      empty: '',
      'one-byte': 'x',
      'buffer-minus-one': randomBytes(READ_BUFFER - 1),
      'one-buffer': randomBytes(READ_BUFFER),
      'buffer-plus-one': randomBytes(READ_BUFFER + 1),
      large: randomBytes(100 * MiB + 7),
    })
    const progress: [number, number][] = []
    const outcomes = await hashFiles(jobs, { onProgress: (bytes, files) => progress.push([bytes, files]) })

    expect(outcomes).toEqual(jobs.map((job) => ({ file: job.file, sha256: sha256sumOf(job.file), bytesRead: job.size, error: null })))
    const totalBytes = jobs.reduce((sum, job) => sum + job.size, 0)
    expect(progress.at(-1)).toEqual([totalBytes, jobs.length])
    expect(progress.map(([bytes]) => bytes)).toEqual(progress.map(([bytes]) => bytes).sort((a, b) => a - b))

    const large = jobs.at(-1)!
    const alone: [number, number][] = []
    await hashFiles([large], { onProgress: (bytes, files) => alone.push([bytes, files]) })
    expect(alone.length).toBeGreaterThan(1)
    expect(alone[0][1]).toBe(0)
    expect(alone.at(-1)).toEqual([large.size, 1])
  })

  it('reports a missing file, a symlink, a directory and a FIFO as errors without reading through them', async () => {
    const dir = tempDir()
    const [real] = writeFiles(dir, { real: 'real content' })
    symlinkSync(real.file, path.join(dir, 'link'))
    mkdirSync(path.join(dir, 'directory'))
    expect(run('mkfifo', [path.join(dir, 'fifo')]).status).toBe(0)
    const jobs = ['missing', 'link', 'directory', 'fifo', 'real'].map((name) => ({ file: path.join(dir, name), size: 12 }))

    const outcomes = await hashFiles(jobs)

    expect(outcomes.map((o) => [path.basename(o.file), o.sha256, o.error])).toEqual([
      ['missing', null, 'ENOENT'],
      ['link', null, 'a symlink (not followed)'],
      ['directory', null, 'not a regular file'],
      ['fifo', null, 'not a regular file'],
      ['real', sha256sumOf(real.file), null],
    ])
  })

  it('returns outcomes in job order for thousands of small files mixed with large ones', async () => {
    const dir = tempDir()
    const contents: Record<string, Buffer> = {}
    for (let i = 0; i < 3000; i++) contents[`small/${i}`] = Buffer.concat([Buffer.from(`file ${i}\n`), randomBytes(i % 97 * 53)])
    contents['big-a'] = randomBytes(40 * MiB)
    contents['big-b'] = randomBytes(33 * MiB)
    contents['medium'] = randomBytes(5 * MiB)
    const jobs = writeFiles(dir, contents)
    // Big files in the middle of the list, where the scheduler must move them to the front.
    jobs.splice(1500, 0, ...jobs.splice(-3))

    const outcomes = await hashFiles(jobs, { threads: 3 })

    expect(outcomes.map((o) => o.file)).toEqual(jobs.map((j) => j.file))
    const listed = run('sha256sum', ['--', ...jobs.map((j) => path.relative(dir, j.file))], { cwd: dir })
    expect(listed.status, listed.stderr).toBe(0)
    expect(outcomes.map((o) => `${o.sha256}  ${path.relative(dir, o.file)}\n`).join('')).toBe(listed.stdout)
  })

  it('resolves no jobs to no outcomes', async () => {
    expect(await hashFiles([])).toEqual([])
  })

  it('rejects with the error of a throwing progress callback', async () => {
    const jobs = writeFiles(tempDir(), { file: 'content' })
    const broken = new Error('progress display broke')
    await expect(hashFiles(jobs, { onProgress: () => { throw broken } })).rejects.toBe(broken)
  })

  it('rejects promptly with the reason when aborted and leaves no worker thread behind', async () => {
    const dir = tempDir()
    const [large] = writeFiles(dir, { large: randomBytes(100 * MiB) })
    const jobs = Array.from({ length: 40 }, () => large)
    const threadCount = () => readdirSync('/proc/self/task').length
    await hashFiles([large])
    const threadsBefore = threadCount()

    const controller = new AbortController()
    const reason = new Error('stopped by the test')
    let abortedAt = 0
    const hashing = hashFiles(jobs, {
      threads: 2,
      signal: controller.signal,
      onProgress: () => {
        abortedAt ||= performance.now()
        controller.abort(reason)
      },
    })

    await expect(hashing).rejects.toBe(reason)
    expect(performance.now() - abortedAt).toBeLessThan(1000)
    expect(threadCount()).toBe(threadsBefore)
    await expect(hashFiles(jobs, { signal: controller.signal })).rejects.toBe(reason)
  })
})
