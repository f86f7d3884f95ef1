// The sha256 of every file of a model directory, recorded under the app root (never inside the model
// directory, which vLLM reads) the first time the file verifies, and compared on every later verify: bit rot
// in the live copy is found without a backup. Records are kept by directory name, so they follow a model
// from staging/ into active/ and on to archive/, which move it by rename. Like backup verify, a run may hash
// a rotating sample: the files never hashed and those hashed longest ago first. The record also keeps the
// last run's outcome, so health-check, status and the metrics can tell a live file that stopped matching
// without hashing anything themselves.
import { randomInt } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { chooseSample } from '../backup/verify.ts'
import { parseManifest } from '../backup/manifest.ts'
import type { Settings } from '../infra/config.ts'
import { atomicWriteFile, readFileOrNull } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { healthDir } from '../infra/layout.ts'
import { parseFile } from '../infra/schemas.ts'
import type { ModelProblem, ModelStructure } from './check.ts'

const fileRecordSchema = z.strictObject({
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  recorded: z.iso.datetime().describe('when this hash was first taken'),
  verified: z.iso.datetime().describe('when the file last hashed to it'),
})
const lastRunSchema = z.strictObject({
  at: z.iso.datetime().describe('when the run ended'),
  sample: z.boolean().describe('true when --sample hashed a share of the files, false when it hashed all'),
  rate: z.number().positive().max(1).describe('the share of files and bytes hashed'),
  ok: z.boolean(),
  problems: z.array(z.strictObject({ path: z.string(), detail: z.string() })).describe('each failing file and why, as model verify said it; empty when ok'),
})
export type LastRun = z.output<typeof lastRunSchema>

/** A model directory's hashes, and the last model verify of it: what health-check, status and the metrics read. */
export const hashRecordSchema = z.strictObject({
  files: z.record(z.string(), fileRecordSchema).describe('path in the model directory → its hash'),
  last_run: lastRunSchema.optional().describe('the last model verify of the directory; absent in records written before runs were kept'),
})
export type HashRecord = z.output<typeof hashRecordSchema>

export const hashRecordFile = (s: Settings, dirName: string) => path.join(healthDir(s), 'model-hashes', `${dirName}.json`)

/** The record of a model directory; none yet, or one that does not parse (said through `warn`), is empty. */
export async function readHashRecord(file: string, warn: (message: string) => void): Promise<HashRecord> {
  const text = await readFileOrNull(file)
  if (text === null) return { files: {} }
  try {
    return parseFile(hashRecordSchema, file, text)
  } catch (err) {
    warn(`${(err as Error).message}: recording every file's hash anew`)
    return { files: {} }
  }
}

export async function writeHashRecord(file: string, record: HashRecord): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true })
  await atomicWriteFile(file, JSON.stringify(record, null, 1) + '\n')
}

/** A Hugging Face cache names each blob by the SHA-256 of its content. */
const HF_BLOB = /(^|\/)blobs\/([0-9a-f]{64})$/
const SUMS = 'SHA256SUMS'

export interface HashRequest {
  /** Share of the files and of the bytes to hash: 1 hashes all. */
  rate: number
  signal: AbortSignal
  onProgress: (bytesDone: number, bytesTotal: number) => void
}

export interface HashOutcome {
  problems: ModelProblem[]
  /** The record to keep: files hashed well are recorded or marked verified; a bad one keeps what it had. */
  record: HashRecord
  hashed: number
  hashedBytes: number
  /** Files recorded for the first time. */
  recorded: number
  /** Recorded files that are gone, or whose size or hash is no longer the recorded one. */
  changed: string[]
}

const day = (iso: string) => iso.slice(0, 10)

/** `sums`: the SHA256SUMS beside the model, as path → hash; a problem when it does not parse. */
function readSums(text: string | null, links: Map<string, string>): { sums: Map<string, string>; problem: string | null } {
  const sums = new Map<string, string>()
  if (text === null) return { sums, problem: null }
  try {
    for (const entry of parseManifest(text)) {
      const rel = path.posix.normalize(entry.path)
      sums.set(links.get(rel) ?? rel, entry.sha256)
    }
    return { sums, problem: null }
  } catch (err) {
    return { sums, problem: (err as Error).message }
  }
}

/**
 * Hashes the files of the model directory `root` (all, or a sample) on the worker pool and compares each with
 * its record, with the name of a Hugging Face blob and with SHA256SUMS; a recorded file that is gone or whose
 * size changed is found without hashing. Files with a structure problem are not recorded: a re-downloaded
 * good copy must not then look like a changed one.
 */
export async function checkHashes(root: string, structure: ModelStructure, old: HashRecord, req: HashRequest): Promise<HashOutcome> {
  const at = new Date().toISOString()
  const problems: ModelProblem[] = []
  const changed: string[] = []
  const record: HashRecord = { files: { ...old.files } }
  const bySize = new Map(structure.files.map((f) => [f.rel, f.size]))
  for (const [rel, r] of Object.entries(old.files)) {
    const size = bySize.get(rel)
    if (size === undefined) problems.push({ path: rel, detail: `recorded on ${day(r.recorded)}, missing now` })
    else if (size !== r.size) problems.push({ path: rel, detail: `${size} bytes, ${r.size} when recorded on ${day(r.recorded)}: changed since` })
    else continue
    changed.push(rel)
  }
  const candidates: [string, number][] = structure.files.filter((f) => (old.files[f.rel]?.size ?? f.size) === f.size).map((f) => [f.rel, f.size])
  const verified = Object.fromEntries(Object.entries(old.files).map(([rel, r]) => [rel, r.verified]))
  const sample = req.rate >= 1 ? candidates : chooseSample(candidates, req.rate, randomInt(2 ** 32), verified)
  const total = sample.reduce((sum, [, size]) => sum + size, 0)
  const outcomes = await hashFiles(sample.map(([rel, size]) => ({ file: path.join(root, rel), size })), { signal: req.signal, onProgress: (done) => req.onProgress(done, total) })

  const sumsFile = bySize.has(SUMS) ? await readFileOrNull(path.join(root, SUMS)) : null
  const { sums, problem: sumsProblem } = readSums(sumsFile, structure.links)
  if (sumsProblem) problems.push({ path: SUMS, detail: sumsProblem })
  for (const rel of sums.keys()) if (!bySize.has(rel)) problems.push({ path: SUMS, detail: `lists ${rel}, which is missing` })

  const structural = new Set(structure.problems.map((p) => p.path))
  let recorded = 0
  let hashedBytes = 0
  sample.forEach(([rel, size], i) => {
    const { sha256, bytesRead, error } = outcomes[i]!
    hashedBytes += bytesRead
    const found: string[] = []
    if (sha256 === null) found.push(`unreadable: ${error}`)
    else if (bytesRead !== size) found.push(`${bytesRead} bytes read, ${size} listed a moment before: it changed while being verified`)
    else {
      const known = old.files[rel]
      if (known && known.sha256 !== sha256) {
        found.push(`sha256 ${sha256} differs from the one recorded on ${day(known.recorded)}: damaged or changed since`)
        changed.push(rel)
      }
      const blob = HF_BLOB.exec(rel)?.[2]
      if (blob && blob !== sha256) found.push(`content hashes to ${sha256}, not to its name`)
      const listed = sums.get(rel)
      if (listed && listed !== sha256) found.push(`sha256 ${sha256} differs from the ${listed} ${SUMS} lists`)
    }
    problems.push(...found.map((detail) => ({ path: rel, detail })))
    if (found.length || structural.has(rel) || sha256 === null) return
    const known = old.files[rel]
    if (!known) recorded++
    record.files[rel] = { size, sha256, recorded: known?.recorded ?? at, verified: at }
  })
  return { problems, record, hashed: sample.length, hashedBytes, recorded, changed: changed.sort() }
}
