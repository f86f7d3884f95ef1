// model fetch for real: from a local directory, from a private sshd, from a Hugging Face cache laid out as
// `hf download` leaves it (relative snapshot links to blobs), hard-linked on the same filesystem and copied
// from another; a copy killed with SIGKILL or stopped by MODEL_DOWNLOAD_TIMEOUT is continued by the next
// fetch; a disk too small is refused before anything is written.
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, snapshot, start, tree, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'
import { safetensors } from '../model-helpers.ts'

/** A real safetensors file of about `bytes` random bytes: the fetched model must pass model verify's structure checks. */
const tensorFile = (bytes: number) => safetensors([{ name: 'w', dtype: 'U8', shape: [bytes] }])

const asRoot = process.getuid?.() === 0

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})
function mountTmpfs(dir: string, size: string) {
  mkdirSync(dir, { recursive: true })
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir])
  mounted.push(dir)
}

/** A model directory with these files (relative path → content). */
function writeModel(dir: string, files: Record<string, Buffer | string>) {
  for (const [rel, content] of Object.entries(files)) writeFile(path.join(dir, rel), content)
}

const MODEL = () => ({ 'config.json': '{"model_type": "llama"}\n', 'tokenizer.json': '{}\n', 'weights/model-00001-of-00002.safetensors': tensorFile(300_000), 'weights/model-00002-of-00002.safetensors': tensorFile(200_000) })

/** What a directory holds, file by file: path and sha256. */
function contents(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(dir, rel))) {
      const r = rel ? `${rel}/${name}` : name
      const st = lstatSync(path.join(dir, r))
      if (st.isDirectory()) walk(r)
      else out[r] = st.isFile() ? createHash('sha256').update(readFileSync(path.join(dir, r))).digest('hex') : 'not a file'
    }
  }
  walk('')
  return out
}

const sha256 = (content: Buffer | string) => createHash('sha256').update(content).digest('hex')

/** The name git gives a file's blob: what the Hugging Face cache names a file not stored with LFS. */
const gitBlobName = (content: Buffer | string) => createHash('sha1').update(`blob ${Buffer.byteLength(content)}\0`).update(content).digest('hex')

/**
 * An `hf download` of ORG/NAME into the hub cache `hub`: the weights' blobs named by their sha256 (LFS), the
 * JSON files' by their git sha1, refs/main naming the commit, and the snapshot a tree of relative links
 * into ../../blobs.
 */
function hfCache(hub: string, org: string, name: string, files: Record<string, Buffer | string>, commit = 'a'.repeat(40)): string {
  const repo = path.join(hub, `models--${org}--${name}`)
  mkdirSync(path.join(repo, 'blobs'), { recursive: true })
  mkdirSync(path.join(repo, 'refs'), { recursive: true })
  writeFileSync(path.join(repo, 'refs', 'main'), commit)
  for (const [rel, content] of Object.entries(files)) {
    const blob = path.join(repo, 'blobs', rel.endsWith('.json') ? gitBlobName(content) : sha256(content))
    writeFileSync(blob, content)
    const link = path.join(repo, 'snapshots', commit, rel)
    mkdirSync(path.dirname(link), { recursive: true })
    symlinkSync(path.relative(path.dirname(link), blob), link)
  }
  return repo
}

const staging = (roots: Roots, name: string) => path.join(roots.models, 'staging', name)
const partialOf = (roots: Roots, name: string) => path.join(roots.models, 'downloads', `${name}.partial`)

describe('model fetch', () => {
  it('from a local directory: --check changes nothing, the copy lands in staging/ checked, a second run is ok', async () => {
    const roots = await setUpServer()
    const source = path.join(roots.base, 'incoming', 'llama-3-8b')
    const files = MODEL()
    writeModel(source, files)
    writeFile(path.join(source, 'weights', 'model-00003.safetensors.incomplete'), 'an interrupted download')

    const before = snapshot(roots.base)
    const check = await citadelJson(['task', 'model-fetch', source, '--check'], roots.env)
    expect(check.doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(before)

    const run = await citadelJson(['task', 'model-fetch', source], roots.env)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    const task = run.doc.tasks[0]
    expect(task.changes.map((c: { action: string; path: string }) => `${c.action} ${c.path}`)).toEqual([`fetch model ${partialOf(roots, 'llama-3-8b')}`, `stage model ${staging(roots, 'llama-3-8b')}`])
    expect(task.data).toMatchObject({ name: 'llama-3-8b', files: 4, hard_linked: false, resumed_bytes: 0 })
    const want = Object.fromEntries(Object.entries(files).map(([rel, c]) => [rel, sha256(c)]))
    expect(contents(staging(roots, 'llama-3-8b'))).toEqual(want)
    expect(readdirSync(path.join(roots.models, 'downloads'))).toEqual([])

    const again = await citadelJson(['task', 'model-fetch', source], roots.env)
    expect([again.code, again.doc.tasks[0].status, again.doc.tasks[0].changes]).toEqual([0, 'ok', []])
    // Another source under the same name is refused, not mixed in.
    writeFile(path.join(source, 'config.json'), '{"model_type": "changed"}\n')
    const differs = await citadel(['task', 'model-fetch', source], roots.env)
    expect(differs.code).toBe(2)
    expect(differs.stdout).toMatch(/staging\/llama-3-8b is a directory already and differs from .*llama-3-8b: promote or remove it, or give another --name/)
    expect(contents(staging(roots, 'llama-3-8b'))).toEqual(want)
  }, 120_000)

  it.skipIf(!!sshdMissing)('from [user@]host:/path over ssh with the BACKUP_SSH_* settings', async () => {
    const roots = await setUpServer()
    const remote = path.join(roots.base, 'far', 'models', 'qwen-7b')
    const files = MODEL()
    writeModel(remote, files)
    const sshd = await startSshd(path.join(roots.base, 'far'))
    const env = { ...roots.env, ...sshd.env }
    const run = await citadelJson(['task', 'model-fetch', `root@127.0.0.1:${remote}`], env)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.doc.tasks[0].data).toMatchObject({ name: 'qwen-7b', files: 4, bytes: Object.values(files).reduce((sum, c) => sum + Buffer.byteLength(c), 0) })
    expect(contents(staging(roots, 'qwen-7b'))).toEqual(Object.fromEntries(Object.entries(files).map(([rel, c]) => [rel, sha256(c)])))

    const missing = await citadel(['task', 'model-fetch', `root@127.0.0.1:${remote}-nope`, '--name', 'x'], env)
    expect(missing.code).toBe(2)
    expect(missing.stdout).toMatch(/qwen-7b-nope does not exist .*expected a model directory on that host/)
  }, 120_000)

  it('from the Hugging Face cache: snapshot links resolved into plain files, hard-linked to the blobs on the same filesystem', async () => {
    const roots = await setUpServer()
    const hub = path.join(roots.models, 'cache', 'huggingface', 'hub')
    const files = MODEL()
    const repo = hfCache(hub, 'meta', 'Llama-3-8B', files)

    const before = snapshot(roots.base)
    expect((await citadelJson(['task', 'model-fetch', 'hf:meta/Llama-3-8B@main', '--check'], roots.env)).doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(before)

    const run = await citadelJson(['task', 'model-fetch', 'hf:meta/Llama-3-8B@main'], roots.env)
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.doc.tasks[0].data).toMatchObject({ name: 'Llama-3-8B@main', hard_linked: true, copied_bytes: 0 })
    const dir = staging(roots, 'Llama-3-8B@main')
    for (const [rel, content] of Object.entries(files)) {
      const st = lstatSync(path.join(dir, rel))
      expect(st.isFile(), rel).toBe(true)
      expect(st.ino, rel).toBe(statSync(path.join(repo, 'blobs', rel.endsWith('.json') ? gitBlobName(content) : sha256(content))).ino)
    }
    expect((await citadelJson(['task', 'model-fetch', 'hf:meta/Llama-3-8B@main'], roots.env)).doc.tasks[0].status).toBe('ok')

    // A blob whose bytes are not what its name says is caught, and nothing is staged.
    const shard = tensorFile(1000)
    const bad = hfCache(hub, 'meta', 'Broken', { 'config.json': '{}\n', 'model.safetensors': shard })
    writeFileSync(path.join(bad, 'blobs', sha256(shard)), randomBytes(shard.length))
    const broken = await citadel(['task', 'model-fetch', 'hf:meta/Broken'], roots.env)
    expect(broken.code).toBe(2)
    expect(broken.stdout).toMatch(/model.safetensors hashes to [0-9a-f]{64}, but its blob is named [0-9a-f]{64}: the Hugging Face cache copy is damaged/)
    expect(existsSync(staging(roots, 'Broken'))).toBe(false)

    const unknown = await citadel(['task', 'model-fetch', 'hf:meta/Llama-3-8B@v2'], roots.env)
    expect(unknown.code).toBe(2)
    expect(unknown.stdout).toMatch(/hf:meta\/Llama-3-8B@v2: the cache has no revision v2 of meta\/Llama-3-8B .*hf download meta\/Llama-3-8B --revision v2/)
  }, 120_000)

  it.skipIf(!asRoot)('from a Hugging Face cache on another filesystem (root: a tmpfs as HF_HUB_CACHE): copied, links resolved', async () => {
    const roots = await setUpServer()
    const hub = path.join(roots.base, 'hub')
    mountTmpfs(hub, '16m')
    const files = MODEL()
    const repo = hfCache(hub, 'qwen', 'Qwen2-7B', files)
    const run = await citadelJson(['task', 'model-fetch', 'hf:qwen/Qwen2-7B'], { ...roots.env, HF_HUB_CACHE: hub })
    expect(run.code, run.stdout + run.stderr).toBe(0)
    expect(run.doc.tasks[0].data).toMatchObject({ name: 'Qwen2-7B', hard_linked: false })
    const dir = staging(roots, 'Qwen2-7B')
    expect(tree(dir).filter((l) => l.includes('->'))).toEqual([])
    expect(contents(dir)).toEqual(Object.fromEntries(Object.entries(files).map(([rel, c]) => [rel, sha256(c)])))
    expect(lstatSync(path.join(dir, 'config.json')).ino).not.toBe(statSync(path.join(repo, 'blobs', gitBlobName(files['config.json']))).ino)

    // The blobs are hashed while they are copied: a damaged one is caught all the same.
    const weights = tensorFile(50_000)
    const bad = hfCache(hub, 'qwen', 'Broken', { 'config.json': '{}\n', 'model.safetensors': weights })
    writeFileSync(path.join(bad, 'blobs', sha256(weights)), randomBytes(50_000))
    const broken = await citadel(['task', 'model-fetch', 'hf:qwen/Broken'], { ...roots.env, HF_HUB_CACHE: hub })
    expect(broken.code).toBe(2)
    expect(broken.stdout).toMatch(/model.safetensors hashes to [0-9a-f]{64}, but its blob is named [0-9a-f]{64}: the Hugging Face cache copy is damaged/)
    expect(existsSync(staging(roots, 'Broken'))).toBe(false)
  }, 120_000)

  it('a fetch killed with SIGKILL mid-copy is continued by the next one, which copies only the rest', async () => {
    const roots = await setUpServer()
    const source = path.join(roots.base, 'incoming', 'big')
    const weights = tensorFile(6 << 20)
    writeModel(source, { 'config.json': '{}\n', 'model.safetensors': weights })
    const shard = path.join(partialOf(roots, 'big'), 'model.safetensors')
    const { child, done } = start(['task', 'model-fetch', source, '--bwlimit', '2000'], roots.env)
    const deadline = Date.now() + 30_000
    while (!(existsSync(shard) && statSync(shard).size > 512 * 1024) && Date.now() < deadline) await sleep(50)
    child.kill('SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    // rsync's own processes end once their parent is gone: wait until nothing writes any more.
    let size = -1
    while (statSync(shard).size !== size) (size = statSync(shard).size, await sleep(300))
    expect(size).toBeGreaterThan(0)
    expect(size).toBeLessThan(weights.length)
    const inode = statSync(shard).ino

    const resumed = await citadelJson(['task', 'model-fetch', source], roots.env)
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0)
    const data = resumed.doc.tasks[0].data
    expect(data.resumed_bytes).toBeGreaterThanOrEqual(size)
    expect(data.copied_bytes).toBe(weights.length + 3 - data.resumed_bytes)
    expect(resumed.doc.tasks[0].changes[0].before).toMatch(/^partial copy: .* of 6\.00 MiB$/)
    const staged = path.join(staging(roots, 'big'), 'model.safetensors')
    // Appended to in place, not copied afresh.
    expect(statSync(staged).ino).toBe(inode)
    expect(sha256(readFileSync(staged))).toBe(sha256(weights))
    expect(existsSync(partialOf(roots, 'big'))).toBe(false)
  }, 120_000)

  it('stops a copy that outlasts MODEL_DOWNLOAD_TIMEOUT, keeps the partial, and the next fetch continues it', async () => {
    const roots = await setUpServer()
    const source = path.join(roots.base, 'incoming', 'slow')
    const weights = tensorFile(4 << 20)
    writeModel(source, { 'config.json': '{}\n', 'model.safetensors': weights })
    const slow = await citadelJson(['task', 'model-fetch', source, '--bwlimit', '1000'], { ...roots.env, MODEL_DOWNLOAD_TIMEOUT: '1' })
    expect(slow.code).toBe(2)
    expect(slow.doc.tasks[0].msg).toMatch(/^the copy from .*slow ran longer than MODEL_DOWNLOAD_TIMEOUT=1 seconds and was stopped; .* of 4\.00 MiB are kept in .*downloads\/slow\.partial: the next fetch continues from there/)
    const kept = statSync(path.join(partialOf(roots, 'slow'), 'model.safetensors')).size
    expect(kept).toBeGreaterThan(0)
    expect(existsSync(staging(roots, 'slow'))).toBe(false)

    const next = await citadelJson(['task', 'model-fetch', source], { ...roots.env, MODEL_DOWNLOAD_TIMEOUT: '60' })
    expect(next.code, next.stdout).toBe(0)
    expect(next.doc.tasks[0].data.resumed_bytes).toBeGreaterThanOrEqual(kept)
    expect(sha256(readFileSync(path.join(staging(roots, 'slow'), 'model.safetensors')))).toBe(sha256(weights))
  }, 120_000)

  it.skipIf(!asRoot)('refuses, with both figures, a model that does not fit on the model disk (root: a small tmpfs as the models root)', async () => {
    const roots = makeRoots()
    mountTmpfs(roots.models, '24m')
    expect((await citadel(['run', 'initial-setup'], roots.env)).code).toBe(0)
    const source = path.join(roots.base, 'incoming', 'huge')
    writeModel(source, { 'config.json': '{}\n', 'model.safetensors': tensorFile(12 << 20) })
    const before = snapshot(roots.models)
    const refused = await citadel(['task', 'model-fetch', source], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.stdout).toMatch(/not enough space on the model disk: the fetch needs 12\.0 MiB \(\d+ bytes; \d+ with a margin\) in .*downloads, [\d.]+ MiB \(\d+ bytes\) are free/)
    expect(snapshot(roots.models)).toEqual(before)
  }, 120_000)

  it('does not stage a model that fails model verify: a shard cut short at the source', async () => {
    const roots = await setUpServer()
    const source = path.join(roots.base, 'incoming', 'cut')
    const shard = tensorFile(100_000)
    writeModel(source, { 'config.json': '{}\n', 'model.safetensors': shard.subarray(0, shard.length - 10) })
    const run = await citadelJson(['task', 'model-fetch', source], roots.env)
    expect(run.code, run.stdout).toBe(2)
    expect(run.doc.tasks[0].msg).toMatch(/model\.safetensors: .*cut short/)
    expect(existsSync(path.join(roots.models, 'staging', 'cut'))).toBe(false)
  }, 120_000)

  it('refuses bad input with one line', async () => {
    const roots = await setUpServer()
    const source = path.join(roots.base, 'incoming', 'm')
    writeModel(source, { 'config.json': '{}\n' })
    writeFile(path.join(roots.active, 'live-one', 'config.json'), '{}\n')
    const cases: [string[], number, RegExp][] = [
      [[path.join(roots.base, 'nowhere')], 2, /nowhere does not exist: expected a local directory, \[user@\]host:\/path or hf:ORG\/NAME\[@REVISION\]/],
      [[source, '--name', 'a/b'], 4, /--name "a\/b" is not valid: expected the name of a directory in staging\/ \(one path component/],
      [[source, '--name', '..'], 4, /--name "\.\." is not valid/],
      [['hf:just-a-name'], 4, /SOURCE "hf:just-a-name" is not valid: expected hf:ORG\/NAME\[@REVISION\]/],
      [['hf:org/../x'], 4, /SOURCE .* is not valid: expected hf:ORG\/NAME/],
      [[source, '--name', 'live-one'], 2, /active\/live-one is a directory already: a model of that name is active; give another --name/],
      [[path.join(roots.models, 'staging', 'x', 'inner'), '--name', 'x'], 2, /staging\/x\/inner overlaps .*staging\/x, where this fetch writes/],
      [[source, '--bwlimit', '0'], 4, /--bwlimit "0" is not valid: expected a whole number of KiB per second of at least 1/],
    ]
    const before = snapshot(roots.models)
    for (const [args, code, message] of cases) {
      const result = await citadel(['task', 'model-fetch', ...args], roots.env)
      expect(result.code, `${args.join(' ')}: ${result.stdout}${result.stderr}`).toBe(code)
      const said = (result.stdout + result.stderr).split('\n').filter((l) => message.test(l))
      expect(said.length, `${args.join(' ')}: ${result.stdout}${result.stderr}`).toBeGreaterThan(0)
    }
    expect(snapshot(roots.models)).toEqual(before)
  }, 120_000)
})
