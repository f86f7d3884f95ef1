// citadel model verify, run as an operator runs it, on models written by their specifications into a set-up
// server's model disk: a correct model passes and its hashes are recorded under the app root, each kind
// of damage fails naming the file, a byte changed later is found on the next verify, --check records nothing.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, snapshot, type Roots } from '../helpers.ts'
import { GGUF_TENSORS, gguf, safetensors, SHARDS, writeModel } from '../model-helpers.ts'

const MIXTRAL = 'mixtral-8x7b-instruct'
const SHARD2 = 'model-00002-of-00002.safetensors'
const recordOf = (roots: Roots, dir: string) => path.join(roots.app, 'state', 'model-hashes', `${dir}.json`)
const readRecord = (roots: Roots, dir: string) => JSON.parse(readFileSync(recordOf(roots, dir), 'utf8')).files as Record<string, { sha256: string; verified: string }>
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

async function withMixtral(): Promise<Roots> {
  const roots = await setUpServer()
  writeModel(path.join(roots.active, MIXTRAL))
  writeFile(path.join(roots.active, MIXTRAL, 'gguf', 'model-q8_0.gguf'), gguf(GGUF_TENSORS))
  return roots
}

describe('citadel model verify', () => {
  it('passes a correct model, records every file\'s hash outside it, and says which aliases are not fetched yet', async () => {
    const roots = await withMixtral()
    const before = snapshot(roots.active)
    const check = await citadelJson(['model', 'verify', '--check'], roots.env)
    expect(check.code, check.stderr).toBe(0)
    expect(existsSync(recordOf(roots, MIXTRAL))).toBe(false)

    const run = await citadelJson(['model', 'verify'], roots.env)
    expect(run.code, run.stderr).toBe(0)
    const t = run.doc.tasks[0]
    expect(t.status, t.msg).toBe('ok')
    expect(t.changes).toEqual([])
    expect(t.msg).toBe('1 model verified: 8 files, 8 hashed; yi34b not fetched yet (not a failure)')
    expect(t.data.models).toEqual([expect.objectContaining({ name: MIXTRAL, alias: 'mixtral', place: 'active', files: 8, hashed: 8, recorded: 8, problems: [] })])
    const record = readRecord(roots, MIXTRAL)
    expect(Object.keys(record).sort()).toContain('gguf/model-q8_0.gguf')
    expect(record[SHARD2]!.sha256).toBe(sha256(readFileSync(path.join(roots.active, MIXTRAL, SHARD2))))
    expect(snapshot(roots.active)).toEqual(before)

    const again = await citadelJson(['model', 'verify', 'mixtral'], roots.env)
    expect(again.doc.tasks[0].data.models[0]).toEqual(expect.objectContaining({ hashed: 8, recorded: 0, problems: [] }))
  }, 60_000)

  it('finds a byte changed in a recorded file on the next verify, names it, and keeps finding it', async () => {
    const roots = await withMixtral()
    expect((await citadelJson(['model', 'verify'], roots.env)).code).toBe(0)
    const shard = path.join(roots.active, MIXTRAL, SHARD2)
    const bytes = readFileSync(shard)
    bytes[bytes.length - 5] ^= 0x01
    writeFileSync(shard, bytes)

    for (let run = 0; run < 2; run++) {
      const verify = await citadelJson(['model', 'verify', 'mixtral', '--sample', '1'], roots.env)
      expect(verify.code).toBe(2)
      const t = verify.doc.tasks[0]
      expect(t.status).toBe('failed')
      expect(t.msg).toMatch(new RegExp(`^1 problem: ${MIXTRAL}/${SHARD2}: sha256 ${sha256(bytes)} differs from the one recorded on \\d{4}-\\d\\d-\\d\\d: damaged or changed since$`))
      expect(t.data.models[0].changed).toEqual([SHARD2])
    }
    rmSync(path.join(roots.active, MIXTRAL, 'generation_config.json'))
    const gone = await citadelJson(['model', 'verify', '--sample', '0.1'], roots.env)
    expect(gone.doc.tasks[0].data.models[0].problems).toEqual(expect.arrayContaining([{ path: 'generation_config.json', detail: expect.stringMatching(/^recorded on \d{4}-\d\d-\d\d, missing now$/) }]))
    const shown = await citadel(['model', 'verify'], roots.env)
    expect(shown.code).toBe(2)
    expect(shown.stdout).toContain(`${MIXTRAL}: 2 files no longer as recorded in ${recordOf(roots, MIXTRAL)}: restore them from a backup (citadel backup restore --path ${MIXTRAL}/generation_config.json), or, if the change was meant, remove that record and verify again to record the files anew`)
  }, 60_000)

  it('hashes a rotating sample: files verified longest ago first, so two half runs cover every file', async () => {
    const roots = await withMixtral()
    expect((await citadelJson(['model', 'verify'], roots.env)).code).toBe(0)
    const first = readRecord(roots, MIXTRAL)
    const hashed: number[] = []
    for (let run = 0; run < 2; run++) {
      const verify = await citadelJson(['model', 'verify', '--sample', '0.5'], roots.env)
      expect(verify.code, verify.stdout).toBe(0)
      hashed.push(verify.doc.tasks[0].data.models[0].hashed)
    }
    expect(hashed.every((n) => n >= 4 && n < 8)).toBe(true)
    const after = readRecord(roots, MIXTRAL)
    for (const [rel, r] of Object.entries(after)) expect(r.verified > first[rel]!.verified, rel).toBe(true)
  }, 60_000)

  it('fails each damaged model in staging/, downloads/ and archive/, naming the file and what is wrong, and records none of the bad files', async () => {
    const roots = await setUpServer()
    const staging = path.join(roots.models, 'staging')
    // A download cut short.
    writeModel(path.join(staging, 'cut'))
    truncateSync(path.join(staging, 'cut', SHARD2), 1000)
    // A Hugging Face cache whose blob is not what its name says, and a SHA256SUMS that disagrees.
    const hf = path.join(roots.models, 'downloads', 'hf')
    const shard = safetensors(SHARDS['model-00001-of-00002.safetensors']!)
    const wrongName = sha256(Buffer.from('something else'))
    writeFile(path.join(hf, 'blobs', wrongName), shard)
    mkdirSync(path.join(hf, 'snapshots', 'abc'), { recursive: true })
    symlinkSync(`../../blobs/${wrongName}`, path.join(hf, 'snapshots', 'abc', 'model.safetensors'))
    writeFile(path.join(hf, 'config.json'), '{"a": 1}')
    writeFile(path.join(hf, 'SHA256SUMS'), `${sha256(Buffer.from('{"a": 2}'))}  config.json\n`)
    // Broken JSON and a GGUF whose tensor table runs past the file.
    const old = path.join(roots.models, 'archive', 'old')
    writeFile(path.join(old, 'config.json'), '{"model_type": ')
    writeFile(path.join(old, 'model.gguf'), gguf(GGUF_TENSORS, { cut: 40 }))

    const verify = await citadelJson(['model', 'verify', 'cut', 'hf', 'old'], roots.env)
    expect(verify.code).toBe(2)
    const t = verify.doc.tasks[0]
    expect(t.status).toBe('failed')
    const problems = Object.fromEntries(t.data.models.map((m: { name: string; place: string; problems: { path: string; detail: string }[] }) => [`${m.place}/${m.name}`, m.problems.map((p) => `${p.path}: ${p.detail}`)]))
    expect(problems['staging/cut']).toEqual([expect.stringMatching(new RegExp(`^${SHARD2}: cut short: 1000 bytes, its header describes \\d+ \\(\\d+ bytes missing\\)$`))])
    expect(problems['downloads/hf']).toEqual([
      `blobs/${wrongName}: content hashes to ${sha256(shard)}, not to its name`,
      `config.json: sha256 ${sha256(Buffer.from('{"a": 1}'))} differs from the ${sha256(Buffer.from('{"a": 2}'))} SHA256SUMS lists`,
    ])
    expect(problems['archive/old']).toHaveLength(2)
    expect(problems['archive/old']![0]).toMatch(/^config\.json: not valid JSON/)
    expect(problems['archive/old']![1]).toMatch(/^model\.gguf: tensor output\.weight: bytes \d+\.\.\d+ of the data, which holds \d+: cut short$/)
    expect(t.msg).toMatch(/^5 problems: /)

    expect(Object.keys(readRecord(roots, 'cut'))).not.toContain(SHARD2)
    expect(Object.keys(readRecord(roots, 'hf'))).toEqual(['SHA256SUMS'])
    expect(existsSync(recordOf(roots, 'old'))).toBe(false)
  }, 60_000)

  it('refuses bad names with one line: an unknown alias or directory (exit 2), a path (exit 4), an unknown action (exit 4)', async () => {
    const roots = await setUpServer()
    const unknown = await citadelJson(['model', 'verify', 'nosuch'], roots.env)
    expect(unknown.code).toBe(2)
    expect(unknown.doc.tasks[0].msg).toBe(`"nosuch" is neither an alias in MODEL_REGISTRY (mixtral, yi34b) nor a directory in active/, staging/, archive/ or downloads/ of ${roots.models}`)
    const pending = await citadelJson(['model', 'verify', 'yi34b'], roots.env)
    expect(pending.code).toBe(2)
    expect(pending.doc.tasks[0].msg).toBe(`alias yi34b: its directory ${path.join(roots.active, 'yi-34b-chat')} does not exist (not fetched or promoted yet)`)
    // A directory reached through a link could be anything, anywhere: refused, not followed.
    symlinkSync(roots.base, path.join(roots.active, 'yi-34b-chat'))
    const linked = await citadelJson(['model', 'verify'], roots.env)
    expect(linked.code).toBe(2)
    expect(linked.doc.tasks[0].msg).toBe(`alias yi34b: ${path.join(roots.active, 'yi-34b-chat')} is a symlink, not a directory: only a model directory citadel can see whole is verified`)
    for (const bad of ['../x', 'a/b', '..']) {
      const run = await citadel(['model', 'verify', bad], roots.env)
      expect(run.code, bad).toBe(4)
      expect(run.stderr).toBe(`citadel: ALIAS|DIR ${JSON.stringify(bad)} is not valid: expected an alias from MODEL_REGISTRY or the name of a directory in active/, staging/, archive/ or downloads/ (one name, no / and not . or ..)\n`)
    }
    const sample = await citadel(['model', 'verify', '--sample', '2'], roots.env)
    expect(sample.code).toBe(4)
    expect(sample.stderr).toBe('citadel: --sample "2" is not valid: expected a ratio greater than 0 and at most 1, e.g. 0.1\n')
    for (const args of [['model', '--help'], ['help', 'model-verify'], ['model', 'verify', '--help']]) {
      const help = await citadel(args, roots.env)
      expect(help.code, args.join(' ')).toBe(0)
      expect(help.stdout, args.join(' ')).toMatch(/^Usage: citadel (model verify|task model-verify) /)
    }
    const action = await citadel(['model', 'frobnicate'], roots.env)
    expect(action.code).toBe(4)
    expect(action.stderr).toBe('citadel: unknown model action "frobnicate"; expected verify, promote, rollback, list, archive, remove, fetch\n')
  }, 60_000)
})
