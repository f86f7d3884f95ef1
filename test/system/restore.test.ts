// Restores, for real: backups made with the real command, restored with rsync into real directories, the
// result compared byte for byte, mode for mode, time for time with what was backed up.
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { canExchange } from '../../lib/infra/exchange.ts'
import { citadel, citadelJson, makeRoots, snapshot, start, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

const REGISTRY = { MODEL_REGISTRY: 'llama=llama-3-8b,qwen=qwen2-7b' }
const sha256 = (content: string | Buffer) => createHash('sha256').update(content).digest('hex')
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const backupDir = (roots: Roots, name: string) => path.join(storeOf(roots), name)
const staging = (roots: Roots) => path.join(roots.models, 'staging')
const archive = (roots: Roots) => path.join(roots.models, 'archive')
const partials = (roots: Roots) => readdirSync(staging(roots)).filter((n) => n.startsWith('.restore-'))

async function restore(roots: Roots, ...args: string[]) {
  const result = await citadelJson(['backup', 'restore', ...args], roots.env)
  return { ...result, task: result.doc.tasks[0] }
}

/**
 * Every entry below `dir` with what a restore must give back: kind, mode, mtime (files and links), content
 * hash, link text, and which names of a file share its inode (by the first name of the group).
 */
function exactTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  const firstName = new Map<number, string>()
  const walk = (rel: string) => {
    const p = path.join(dir, rel)
    const st = lstatSync(p)
    const mode = (st.mode & 0o7777).toString(8)
    if (st.isSymbolicLink()) out[rel] = `link -> ${readlinkSync(p)}`
    else if (st.isFile()) {
      if (!firstName.has(st.ino)) firstName.set(st.ino, rel)
      out[rel] = `file ${mode} mtime=${st.mtimeMs} ${sha256(readFileSync(p))} inode-of=${firstName.get(st.ino)}`
    } else if (st.isDirectory()) {
      out[rel || '.'] = `dir ${mode}`
      for (const name of readdirSync(p).sort()) walk(rel ? `${rel}/${name}` : name)
    } else out[rel] = 'other'
  }
  walk('')
  return out
}

/** What a model directory holds, as one hash: names, kinds, modes, bytes, link targets; not times. */
function treeHash(dir: string): string | null {
  if (!existsSync(dir)) return null
  const lines: string[] = []
  const walk = (rel: string) => {
    const p = path.join(dir, rel)
    const st = lstatSync(p)
    if (st.isSymbolicLink()) lines.push(`${rel} link ${readlinkSync(p)}`)
    else if (st.isFile()) lines.push(`${rel} file ${(st.mode & 0o7777).toString(8)} ${sha256(readFileSync(p))}`)
    else if (st.isDirectory()) for (const name of readdirSync(p).sort()) walk(rel ? `${rel}/${name}` : name)
  }
  walk('')
  return sha256(lines.join('\n'))
}

/** One byte of `file` flipped in place: same size, same mode, same mtime, so only a hash can tell. */
function flipByte(file: string, at = 7) {
  const st = statSync(file)
  const times = `${file}.times`
  execFileSync('touch', ['-r', file, times])
  chmodSync(file, 0o644)
  const content = readFileSync(file)
  content[at] ^= 0x01
  writeFileSync(file, content)
  chmodSync(file, st.mode & 0o7777)
  execFileSync('touch', ['-r', times, file])
  rmSync(times)
}

const MTIME = new Date('2025-03-04T05:06:07.250Z')

/** Two models as they come from the hub: an HF-cache style snapshot link into blobs, a hard link, modes and old times. */
function writeModels(roots: Roots) {
  const llama = path.join(roots.active, 'llama-3-8b')
  const blob = randomBytes(40_000)
  const blobSha = sha256(blob)
  writeFile(path.join(llama, 'blobs', blobSha), blob)
  mkdirSync(path.join(llama, 'snapshots', 'main'), { recursive: true })
  symlinkSync(`../../blobs/${blobSha}`, path.join(llama, 'snapshots', 'main', 'model.safetensors'))
  writeFile(path.join(llama, 'config.json'), '{"model_type": "llama"}\n')
  writeFile(path.join(llama, 'model-00001-of-00002.safetensors'), randomBytes(30_000))
  writeFile(path.join(llama, 'model-00002-of-00002.safetensors'), randomBytes(20_000))
  writeFile(path.join(llama, 'run.sh'), '#!/bin/sh\necho serve\n')
  chmodSync(path.join(llama, 'run.sh'), 0o750)
  chmodSync(path.join(llama, 'config.json'), 0o600)
  const qwen = path.join(roots.active, 'qwen2-7b')
  writeFile(path.join(qwen, 'weights.bin'), randomBytes(25_000))
  linkSync(path.join(qwen, 'weights.bin'), path.join(qwen, 'weights-alias.bin'))
  writeFile(path.join(qwen, 'tokenizer', 'vocab.txt'), 'a\nb\nc\n')
  for (const file of ['llama-3-8b/config.json', 'llama-3-8b/model-00001-of-00002.safetensors', 'llama-3-8b/model-00002-of-00002.safetensors', 'llama-3-8b/run.sh', `llama-3-8b/blobs/${blobSha}`, 'qwen2-7b/weights.bin', 'qwen2-7b/tokenizer/vocab.txt'])
    utimesSync(path.join(roots.active, file), MTIME, MTIME)
}

async function serverWithModels(extraEnv: Record<string, string> = {}) {
  const roots = await setUpServer({ ...REGISTRY, ...extraEnv })
  writeModels(roots)
  const name = await backUp(roots)
  return { roots, name }
}

describe('a full restore', () => {
  it('gives back byte-identical trees with modes, times, links and hard links; a second restore copies nothing', async () => {
    const { roots, name } = await serverWithModels()
    const before = exactTree(roots.active)
    for (const entry of readdirSync(roots.active)) rmSync(path.join(roots.active, entry), { recursive: true })

    const first = await restore(roots)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(first.task.status).toBe('changed')
    expect(first.task.data.units.map((u: any) => [u.name, u.state])).toEqual([['llama-3-8b', 'absent'], ['qwen2-7b', 'absent']])
    expect(exactTree(roots.active)).toEqual(before)
    const qwen = path.join(roots.active, 'qwen2-7b')
    expect(statSync(path.join(qwen, 'weights.bin')).ino).toBe(statSync(path.join(qwen, 'weights-alias.bin')).ino)
    const sums = spawnSync('sha256sum', ['-c', '--strict', '--quiet', path.join(backupDir(roots, name), 'SHA256SUMS')], { cwd: roots.active, encoding: 'utf8' })
    expect(sums.status, sums.stdout + sums.stderr).toBe(0)
    expect(partials(roots)).toEqual([])
    expect(readJson(path.join(backupDir(roots, name), 'backup.json')).restores).toEqual([expect.objectContaining({ ok: true, drill: false, what: ['llama-3-8b', 'qwen2-7b'], from_elsewhere: {} })])

    const second = await restore(roots)
    expect(second.code).toBe(0)
    expect(second.doc.stats.changed).toBe(0)
    expect(second.task.data.units.map((u: any) => [u.name, u.state, u.bytes_to_copy, u.files_to_copy])).toEqual([['llama-3-8b', 'same', 0, 0], ['qwen2-7b', 'same', 0, 0]])
    expect(exactTree(roots.active)).toEqual(before)
  })
})

describe('a restore of a model with one bad byte', () => {
  it('--model copies only that file and archives the old directory as it was', async () => {
    const { roots } = await serverWithModels()
    const shard = path.join(roots.active, 'llama-3-8b', 'model-00001-of-00002.safetensors')
    const good = readFileSync(shard)
    flipByte(shard, 12_345)
    const flipped = readFileSync(shard)
    const old = exactTree(path.join(roots.active, 'llama-3-8b'))

    const result = await restore(roots, '--model', 'llama')
    expect(result.code, result.stdout + result.stderr).toBe(0)
    expect(result.task.data.units).toEqual([expect.objectContaining({ name: 'llama-3-8b', state: 'differs', files_to_copy: 1, bytes_to_copy: good.length })])
    expect(result.task.data.record).toMatchObject({ bytes_copied: good.length, ok: true })
    expect(readFileSync(shard)).toEqual(good)
    const archived = readdirSync(archive(roots)).filter((n) => n.startsWith('llama-3-8b.replaced-'))
    expect(archived).toHaveLength(1)
    const aside = path.join(archive(roots), archived[0]!)
    expect(readFileSync(path.join(aside, 'model-00001-of-00002.safetensors'))).toEqual(flipped)
    expect(exactTree(aside)).toEqual(old)
    expect(result.task.changes.filter((c: any) => c.path.startsWith(roots.models)).map((c: any) => `${c.action} ${c.path}`)).toEqual([`restore model ${path.join(roots.active, 'llama-3-8b')}`, `archive replaced model ${path.join(roots.active, 'llama-3-8b')}`])
  })
})

describe('a bad copy in the backup', () => {
  it('fails naming it and changes nothing, unless another backup holds a good copy of the same bytes', async () => {
    const { roots, name: bad } = await serverWithModels()
    const rel = 'qwen2-7b/tokenizer/vocab.txt'
    flipByte(path.join(backupDir(roots, bad), 'data', rel), 2)
    const active = path.join(roots.active, rel)
    const good = readFileSync(active)
    // The active copy lost, so the restore must take the backup's.
    rmSync(active)
    const before = snapshot(roots.active)
    const archived = snapshot(archive(roots))

    const failed = await restore(roots, bad)
    expect(failed.code).toBe(2)
    expect(failed.task.status).toBe('failed')
    expect(failed.task.msg).toContain(`1 file of ${bad} cannot be restored as its manifest says, and no other backup holds good copies: ${rel} (hashes to `)
    expect(snapshot(roots.active)).toEqual(before)
    expect(snapshot(archive(roots))).toEqual(archived)
    expect(partials(roots)).toEqual([])

    // A second full backup: its own copy, not a hard link to the bad one.
    writeFile(active, good)
    utimesSync(active, MTIME, MTIME)
    const second = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(second.code, second.stdout).toBe(0)
    const other = second.doc.tasks[0].data.backup
    expect(statSync(path.join(backupDir(roots, other), 'data', rel)).ino).not.toBe(statSync(path.join(backupDir(roots, bad), 'data', rel)).ino)
    rmSync(active)

    const healed = await restore(roots, bad)
    expect(healed.code, healed.stdout + healed.stderr).toBe(0)
    expect(healed.task.warnings).toContain(`${rel}: the copy in ${bad} is bad; restored from ${other}, which holds the same bytes`)
    expect(readFileSync(active)).toEqual(good)
    expect(statSync(active).mtime).toEqual(MTIME)
    const records = readJson(path.join(backupDir(roots, bad), 'backup.json')).restores
    expect(records.at(-1)).toMatchObject({ ok: true, from_elsewhere: { [rel]: other } })
    expect(records[0]).toMatchObject({ ok: false, error: expect.stringContaining(rel) })
    expect(partials(roots)).toEqual([])
  })
})

describe('restore options', () => {
  it('--to DIR restores into DIR and leaves the active models as they are', async () => {
    const { roots } = await serverWithModels()
    const before = snapshot(roots.active)
    const expected = exactTree(roots.active)
    const to = path.join(roots.base, 'elsewhere')
    const result = await restore(roots, '--to', to)
    expect(result.code, result.stdout + result.stderr).toBe(0)
    expect(result.task.data.to).toBe(to)
    expect(exactTree(to)).toEqual(expected)
    expect(snapshot(roots.active)).toEqual(before)
    expect(readdirSync(archive(roots))).toEqual([])
  })

  it('--path of one file copies only it; --path of a directory only that directory; the rest of the model stays', async () => {
    const { roots } = await serverWithModels()
    const llama = path.join(roots.active, 'llama-3-8b')
    const shard = 'llama-3-8b/model-00002-of-00002.safetensors'
    const good = readFileSync(path.join(roots.active, shard))
    flipByte(path.join(roots.active, shard))
    // Drift elsewhere in the model that a --path restore of one file must not undo.
    writeFile(path.join(llama, 'notes.txt'), 'local notes')
    flipByte(path.join(llama, 'model-00001-of-00002.safetensors'))
    const untouched = (t: Record<string, string>) => Object.fromEntries(Object.entries(t).filter(([rel]) => rel !== 'model-00002-of-00002.safetensors'))
    const rest = untouched(exactTree(llama))

    const one = await restore(roots, '--path', shard)
    expect(one.code, one.stdout + one.stderr).toBe(0)
    expect(one.task.data.units).toEqual([expect.objectContaining({ name: 'llama-3-8b', paths: [shard], files_to_copy: 1, bytes_to_copy: good.length })])
    expect(readFileSync(path.join(roots.active, shard))).toEqual(good)
    expect(untouched(exactTree(llama))).toEqual(rest)

    const tokenizer = path.join(roots.active, 'qwen2-7b', 'tokenizer')
    rmSync(tokenizer, { recursive: true })
    const qwenWeights = snapshot(path.join(roots.active, 'qwen2-7b', 'weights.bin'))
    const dir = await restore(roots, '--path', 'qwen2-7b/tokenizer')
    expect(dir.code, dir.stdout + dir.stderr).toBe(0)
    expect(dir.task.data.units).toEqual([expect.objectContaining({ name: 'qwen2-7b', paths: ['qwen2-7b/tokenizer'], files_to_copy: 1 })])
    expect(readFileSync(path.join(tokenizer, 'vocab.txt'), 'utf8')).toBe('a\nb\nc\n')
    expect(snapshot(path.join(roots.active, 'qwen2-7b', 'weights.bin'))).toEqual(qwenWeights)
  })

  it('--check changes nothing anywhere and says what it would do', async () => {
    const { roots } = await serverWithModels()
    rmSync(path.join(roots.active, 'qwen2-7b'), { recursive: true })
    flipByte(path.join(roots.active, 'llama-3-8b', 'config.json'), 3)
    writeFile(path.join(staging(roots), 'download.part'), 'half')
    writeFile(path.join(archive(roots), 'old-model', 'w.bin'), 'old')
    const before = snapshot(roots.base)
    const result = await restore(roots, '--check')
    expect(result.code, result.stdout + result.stderr).toBe(0)
    expect(snapshot(roots.base)).toEqual(before)
    expect(result.task.status).toBe('changed')
    expect(result.task.msg).toMatch(new RegExp(`^would restore llama-3-8b; qwen2-7b from backup_\\S+ into ${roots.active}: .* to copy, .* already good$`))
    expect(result.task.data.units.map((u: any) => [u.name, u.state, u.files_to_copy])).toEqual([['llama-3-8b', 'differs', 1], ['qwen2-7b', 'absent', 3]])
  })

  it('--drill restores into scratch, records it, removes it, and drills the other model next time', async () => {
    const { roots, name } = await serverWithModels()
    const before = snapshot(roots.active)
    const meta = path.join(backupDir(roots, name), 'backup.json')
    const first = await restore(roots, '--drill')
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(first.task.msg).toMatch(/^drill from backup_\S+: llama-3-8b: 5 files, .* restored and verified in .*; scratch copy removed$/)
    expect(readJson(meta).restores).toEqual([expect.objectContaining({ drill: true, ok: true, what: ['llama-3-8b'] })])
    expect(partials(roots)).toEqual([])
    expect(snapshot(roots.active)).toEqual(before)

    const second = await restore(roots, '--drill')
    expect(second.code).toBe(0)
    expect(readJson(meta).restores.map((r: any) => [r.drill, r.what])).toEqual([[true, ['llama-3-8b']], [true, ['qwen2-7b']]])
    expect(partials(roots)).toEqual([])
    expect(snapshot(roots.active)).toEqual(before)
  })

  it('refuses bad input with one line and its exit code, changing nothing', async () => {
    const { roots, name } = await serverWithModels()
    const full = path.join(roots.base, 'full')
    writeFile(path.join(full, 'keep.txt'), 'mine')
    // The run log and the store lock come and go; the model disk and the backup's records stay as they are.
    const state = () => ({ models: snapshot(roots.models), full: snapshot(full), meta: readFileSync(path.join(backupDir(roots, name), 'backup.json'), 'utf8') })
    const before = state()
    const cases: [string[], number, RegExp][] = [
      [['--model', 'mistral'], 2, /^--model mistral is not in MODEL_REGISTRY \(llama, qwen\); give a registered alias, or --path DIR$/],
      [['backup_20200101_000000_full'], 2, new RegExp(`no complete backup named backup_20200101_000000_full; available: ${name}`)],
      [['--to', full], 2, new RegExp(`^--to ${full} is not empty \\(it holds keep\\.txt\\): give an empty directory, or one that does not exist yet$`)],
      [[`${name}.partial`], 2, new RegExp(`^${name}\\.partial is a partial backup \\(an interrupted copy\\), never restored from`)],
      [['--path', '../x'], 4, /^citadel: --path "\.\.\/x" is not valid: expected a path relative to the backup's data\//],
      [['--drill', '--to', path.join(roots.base, 'drill')], 4, /^citadel: --to ".*" is not valid: not with --drill/],
    ]
    for (const [args, code, message] of cases) {
      // A task's failure is its one-line message; bad arguments are one line on stderr before any task runs.
      const json = code === 2 ? await citadelJson(['backup', 'restore', ...args], roots.env) : null
      const result = json ?? await citadel(['backup', 'restore', ...args], roots.env)
      expect(result.code, `${args.join(' ')}: ${result.stdout} ${result.stderr}`).toBe(code)
      const said: string = json ? json.doc.tasks[0].msg : result.stderr.trim()
      expect(said.split('\n'), args.join(' ')).toHaveLength(1)
      expect(said, args.join(' ')).toMatch(message)
      expect(state(), args.join(' ')).toEqual(before)
    }
  })
})

describe.skipIf(sshdMissing)(`a restore from the remote store${sshdMissing ? ` (${sshdMissing})` : ''}`, () => {
  it('--remote restores what was sent, verified', async () => {
    const { roots, name } = await serverWithModels()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    expect((await citadel(['backup', 'create', '--remote'], roots.env)).code).toBe(0)
    const expected = exactTree(roots.active)
    for (const entry of readdirSync(roots.active)) rmSync(path.join(roots.active, entry), { recursive: true })
    // The local backup gone too: only the remote one can give the models back.
    rmSync(storeOf(roots), { recursive: true })
    mkdirSync(storeOf(roots))

    const result = await restore(roots, '--remote')
    expect(result.code, result.stdout + result.stderr).toBe(0)
    expect(result.task.data).toMatchObject({ backup: name, record: { ok: true } })
    expect(exactTree(roots.active)).toEqual(expected)
    expect(readJson(path.join(remoteDir, 'models', name, 'backup.json')).restores).toEqual([expect.objectContaining({ ok: true })])
  }, 60_000)
})

describe('the recover playbook', () => {
  it('on an empty model disk brings every model back verified, with links and env script; a second run changes nothing', async () => {
    const { roots } = await serverWithModels()
    const expected = exactTree(roots.active)
    for (const entry of readdirSync(roots.active)) rmSync(path.join(roots.active, entry), { recursive: true })
    const first = await citadelJson(['run', 'recover'], roots.env)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    const restoreTask = first.doc.tasks.find((t: any) => t.name === 'backup-restore')
    expect(restoreTask.status).toBe('changed')
    expect(restoreTask.data.record).toMatchObject({ ok: true, files_verified: 8 })
    expect(exactTree(roots.active)).toEqual(expected)
    expect(readlinkSync(path.join(roots.app, 'model-links', 'llama'))).toBe(path.join(roots.active, 'llama-3-8b'))
    expect(existsSync(path.join(roots.app, 'configs', 'storage-env.sh'))).toBe(true)

    const second = await citadelJson(['run', 'recover'], roots.env)
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(second.doc.stats.changed).toBe(0)
    expect(second.doc.stats.failed).toBe(0)
    expect(exactTree(roots.active)).toEqual(expected)
  })
})

describe('a killed restore', () => {
  it('SIGKILLed at random moments, each followed at once by a rerun: every model directory is the old or the new one, and the rerun finishes it', async () => {
    const roots = await setUpServer()
    // Many small model directories, so that activation (two journaled renames each) takes a while to hit.
    const DIRS = Array.from({ length: 12 }, (_, i) => `model-${String(i).padStart(2, '0')}`)
    for (const dir of DIRS) {
      writeFile(path.join(roots.active, dir, 'w0.bin'), randomBytes(4096))
      writeFile(path.join(roots.active, dir, 'w1.bin'), randomBytes(4096))
      writeFile(path.join(roots.active, dir, 'sub', 'config.json'), `{"name": "${dir}"}\n`)
    }
    await backUp(roots)
    const hashes = () => Object.fromEntries(DIRS.map((d) => [d, treeHash(path.join(roots.active, d))]))
    const fresh = hashes()
    // Every directory differs from the backup, so every run has all of them to build and activate.
    const drift = () => {
      for (const dir of DIRS) writeFileSync(path.join(roots.active, dir, 'w0.bin'), randomBytes(4096))
    }
    const archived = () => readdirSync(archive(roots)).length
    const swaps = await canExchange(roots.active)

    // The shorter of two runs: the first may also build the launcher's bundle or its code cache.
    const t0 = Date.now()
    let duration = Infinity
    for (let i = 0; i < 2; i++) {
      drift()
      const started = Date.now()
      const timing = await citadel(['backup', 'restore'], roots.env)
      expect(timing.code, timing.stdout + timing.stderr).toBe(0)
      duration = Math.min(duration, Date.now() - started)
    }

    const TRIALS = 20
    const problems: string[] = []
    let killed = 0
    let midActivation = 0
    let missingAfterKill = 0
    for (let trial = 0; trial < TRIALS; trial++) {
      drift()
      const old = hashes()
      const archivedBefore = archived()
      const victim = start(['backup', 'restore'], roots.env)
      if (trial % 2 === 0) await sleep(Math.random() * duration)
      else {
        // Into the activation phase: once the first model directory moved aside, a random moment more, short
        // beside the whole run (activation is its last part).
        for (const until = Date.now() + duration * 2; archived() === archivedBefore && Date.now() < until; ) await sleep(2)
        await sleep(Math.random() * Math.min(500, duration / 4))
      }
      victim.child.kill('SIGKILL')
      const ended = await victim.done
      if (ended.signal === 'SIGKILL') killed++
      const now = hashes()
      // An empty directory is the placeholder moveNoReplace claims the name with just before its rename: the
      // same moment as a missing one, which the next run's rollback undoes (checked after the rerun below).
      const placeholder = (d: string) => { try { return readdirSync(path.join(roots.active, d)).length === 0 } catch { return false } }
      const states = DIRS.map((d) => (now[d] === old[d] ? 'old' : now[d] === fresh[d] ? 'new' : now[d] === null || (!swaps && placeholder(d)) ? 'missing' : 'mixed'))
      if (states.includes('old') && states.includes('new')) midActivation++
      for (const [i, state] of states.entries()) {
        const dir = DIRS[i]!
        if (state === 'mixed') problems.push(`trial ${trial}: after the kill ${dir} is neither the old nor the new tree`)
        if (state !== 'missing') continue
        // Where the filesystem exchanges directories in one step, no moment leaves the name empty.
        if (swaps) problems.push(`trial ${trial}: after the kill ${dir} is missing, though the filesystem exchanges directories in one step`)
        // Killed between moving the old one aside and the new one in: the old one is whole in archive/, and
        // the journal of the killed run moves it back before the rerun does anything.
        missingAfterKill++
        const aside = readdirSync(archive(roots)).filter((n) => n.startsWith(`${dir}.replaced-`)).map((n) => treeHash(path.join(archive(roots), n)))
        if (!aside.includes(old[dir]!)) problems.push(`trial ${trial}: after the kill ${dir} is missing and its old tree is not in archive/`)
      }
      const rerun = await citadel(['backup', 'restore'], roots.env)
      if (rerun.code !== 0) problems.push(`trial ${trial}: the rerun exited ${rerun.code}: ${rerun.stdout} ${rerun.stderr}`)
      const after = hashes()
      for (const dir of DIRS) if (after[dir] !== fresh[dir]) problems.push(`trial ${trial}: after the rerun ${dir} is ${after[dir] === null ? 'missing' : after[dir] === old[dir] ? 'the old tree' : 'neither tree'}`)
      if (partials(roots).length) problems.push(`trial ${trial}: left in staging after the rerun: ${partials(roots).join(', ')}`)
    }
    console.log(`restore kills: ${TRIALS} trials, ${killed} killed before the end, ${midActivation} in the middle of activation, ${missingAfterKill} directories between their two renames; one restore took ${duration} ms, the test ${Date.now() - t0} ms`)
    expect(problems).toEqual([])
    // The kills must have hit runs at work, and some of them activation itself, or the test proves nothing.
    expect(killed).toBeGreaterThan(TRIALS / 2)
    expect(midActivation).toBeGreaterThan(2)
    // About a minute on an idle machine; a citadel start alone takes seconds on a heavily loaded one.
  }, 600_000)
})

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})
const asRoot = process.getuid?.() === 0
if (!asRoot) console.warn('restore: the test on a small model disk needs root to mount a tmpfs; skipped')

describe.skipIf(!asRoot)('on a small model disk (root: mounts a tmpfs)', () => {
  it('a restore that does not fit is refused before anything is copied, with both figures on one line', async () => {
    const roots = makeRoots(REGISTRY)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', roots.models])
    mounted.push(roots.models)
    expect((await citadel(['run', 'initial-setup'], roots.env)).code).toBe(0)
    writeFile(path.join(roots.active, 'llama-3-8b', 'weights.bin'), randomBytes(5 << 20))
    await backUp(roots)
    rmSync(path.join(roots.active, 'llama-3-8b'), { recursive: true })
    // Something else took the space meanwhile: less is free than the model alone needs.
    writeFile(path.join(roots.models, 'downloads', 'other.bin'), Buffer.alloc(4 << 20, 1))
    const before = snapshot(roots.models)

    const result = await restore(roots)
    expect(result.code).toBe(2)
    const pattern = new RegExp(`^not enough space on the model disk ${roots.models} \\(${staging(roots)}\\): the restore copies [\\d.]+ MiB \\((\\d+) bytes; (\\d+) with a margin\\), (\\d+) bytes are free; free space there or restore less \\(--model, --path\\)$`)
    expect(result.task.msg).toMatch(pattern)
    const [needed, , free] = pattern.exec(result.task.msg)!.slice(1).map(Number)
    expect(needed).toBeGreaterThanOrEqual(5 << 20)
    expect(needed).toBeGreaterThan(free!)
    expect(snapshot(roots.models)).toEqual(before)
  })
})
