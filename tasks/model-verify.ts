// Ensures nothing: the offline gate a model directory must pass before it goes live, and the check that
// finds bit rot in a live one. Structure from header bytes only (safetensors and GGUF headers against their
// file sizes, the shard index, the JSON files), then the sha256 of every file (or --sample of them) against
// the hashes recorded the first time each verified, a Hugging Face blob's name and a SHA256SUMS beside the
// model. The records live under the app root's state/ and are bookkeeping, so a clean run reports ok.
import { z } from 'zod'
import { checkModelStructure } from '../lib/models/check.ts'
import { checkHashes, hashRecordFile, readHashRecord, writeHashRecord } from '../lib/models/hashes.ts'
import { findModelDirs, modelName, type ModelDir } from '../lib/models/places.ts'
import { defineTask, runWhenMain, type TaskContext } from '../lib/core/task.ts'
import { ratio } from '../lib/infra/config.ts'
import { bytes, count, progressLine, summarize, table } from '../lib/infra/format.ts'

const args = z.object({
  models: z.array(modelName).optional()
    .meta({ positional: true, value: 'ALIAS|DIR', description: 'an alias from MODEL_REGISTRY, or a directory name in active/, staging/, archive/ or downloads/ (default: every alias)' }),
  sample: ratio('0.1').optional()
    .meta({ value: 'RATE', description: 'share of the files and bytes to hash, never hashed and longest ago first (default: all)' }),
  rotating: z.boolean().optional()
    .meta({ preset: true, description: 'set by the weekly playbook: without --sample, hash the share BACKUP_VERIFY_SAMPLE_RATE says, so the live models are covered at the pace of their backups' }),
})

type Ctx = TaskContext<z.output<typeof args>>

interface Verified {
  model: ModelDir
  files: number
  bytes: number
  hashed: number
  hashed_bytes: number
  recorded: number
  /** Recorded files that are gone or differ from their record. */
  changed: string[]
  problems: { path: string; detail: string }[]
}

const task = defineTask({
  name: 'model-verify',
  description: 'Check model directories offline: safetensors and GGUF headers against their sizes, the shard index, the JSON files, and every file\'s sha256 against the hash recorded when it first verified',
  tags: ['models', 'verify'],
  roots: ['models'],
  args,
  async run(ctx) {
    const found = await findModelDirs(ctx.settings, ctx.args.models ?? [])
    if ('problem' in found) return ctx.fail(found.problem)
    const pending = found.pending.length ? `${summarize(found.pending)} not fetched yet (not a failure)` : ''
    if (found.dirs.length === 0) return ctx.skip(`no model directory to verify${pending ? `: ${pending}` : ''}`)
    const results: Verified[] = []
    for (const model of found.dirs) results.push(await verify(ctx, model))

    ctx.detail(...table([
      ['MODEL', 'WHERE', 'FILES', 'SIZE', 'HASHED', 'PROBLEMS'],
      ...results.map((r) => [r.model.alias ? `${r.model.alias} (${r.model.name})` : r.model.name, `${r.model.place}/`, String(r.files), bytes(r.bytes), `${r.hashed} (${bytes(r.hashed_bytes)})`, String(r.problems.length)]),
    ]))
    const data = {
      models: results.map((r) => ({ name: r.model.name, alias: r.model.alias, place: r.model.place, path: r.model.path, files: r.files, bytes: r.bytes, hashed: r.hashed, hashed_bytes: r.hashed_bytes, recorded: r.recorded, changed: r.changed, problems: r.problems })),
      pending: found.pending,
    }
    const problems = results.flatMap((r) => r.problems.map((p) => `${r.model.name}/${p.path}: ${p.detail}`))
    if (problems.length) return ctx.fail(`${count(problems.length, 'problem')}: ${summarize(problems)}`, data)
    const hashed = results.reduce((sum, r) => sum + r.hashed, 0)
    const files = results.reduce((sum, r) => sum + r.files, 0)
    return ctx.finish(`${count(results.length, 'model')} verified: ${count(files, 'file')}, ${hashed} hashed${pending ? `; ${pending}` : ''}`, data)
  },
})

async function verify(ctx: Ctx, model: ModelDir): Promise<Verified> {
  ctx.progress(`checking the structure of ${model.name}`)
  const structure = checkModelStructure(model.path)
  const recordFile = hashRecordFile(ctx.settings, model.name)
  const old = await readHashRecord(recordFile, (message) => ctx.warn(message))
  const started = Date.now()
  const rate = ctx.args.sample ?? (ctx.args.rotating ? ctx.settings.backup.verifySampleRate : 1)
  const hashes = await checkHashes(model.path, structure, old, {
    rate,
    signal: ctx.signal,
    onProgress: (done, total) => ctx.progress(progressLine(`hashing ${model.name}`, done, total, started)),
  })
  if (hashes.changed.length) {
    const fix = model.place === 'active' ? `restore ${hashes.changed.length === 1 ? 'it' : 'them'} from a backup (citadel backup restore --path ${model.name}/${hashes.changed[0]}), or, ` : ''
    ctx.detail(`${model.name}: ${count(hashes.changed.length, 'file')} no longer as recorded in ${recordFile}: ${fix}if the change was meant, remove that record and verify again to record the files anew`)
  }
  const problems = [...structure.problems, ...hashes.problems].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  // The run is kept beside the hashes so health-check can name a live file that stopped matching. A run that
  // hashed nothing well has nothing to record: no file appears for a directory that holds only damage.
  if (Object.keys(hashes.record.files).length || Object.keys(old.files).length) {
    const record = { ...hashes.record, last_run: { at: new Date().toISOString(), sample: rate < 1, rate, ok: problems.length === 0, problems } }
    await ctx.bookkeep(`hashes of ${model.name}`, () => writeHashRecord(recordFile, record))
  }
  return {
    model,
    files: structure.files.length,
    bytes: structure.files.reduce((sum, f) => sum + f.size, 0),
    hashed: hashes.hashed,
    hashed_bytes: hashes.hashedBytes,
    recorded: hashes.recorded,
    changed: hashes.changed,
    problems,
  }
}

export default task
runWhenMain(import.meta)
