// Verifies a backup against what was recorded when it was made. Every run compares the whole tree with
// the catalog (sizes, link targets, strays), which costs one walk; hashing everything would cost a full
// read of the slow disk, so each run hashes a sample, and without a seed the files verified longest ago
// come first, so a few runs together cover the whole backup.
import { randomInt } from 'node:crypto'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { CATALOG, DATA, listTree, MANIFEST, readCatalog, statFiles, VERIFY_STATE, writeMeta, type Backup, type Catalog, type Problem, type Verification } from './store.ts'
import { atomicWriteFile, describeEntry, lstatOrNull, readFileOrNull, showName } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { compareBytewise, parseManifestBytes } from './manifest.ts'
import { parseFile, verifyStateSchema } from '../infra/schemas.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { SETTINGS, wholeNumber } from '../infra/config.ts'
import { bytes, count, percent, summarize, table } from '../infra/format.ts'

/** The --sample and --seed arguments of the local and the remote verify. */
export const sampleArg = SETTINGS.BACKUP_VERIFY_SAMPLE_RATE.schema.optional()
  .meta({ value: 'RATE', description: 'share of the bytes and of the files to hash (default: BACKUP_VERIFY_SAMPLE_RATE)' })
export const seedArg = wholeNumber(0, '7').optional()
  .meta({ value: 'N', description: 'the same N hashes the same sample, whichever files were verified recently' })

/** When each file of a backup last hashed as the manifest says: path → ISO time. */
export type VerifyState = Record<string, string>

export interface VerifyRequest {
  rate: number
  /** null: a random seed, and the files verified longest ago first. */
  seed: number | null
  signal: AbortSignal
  onProgress: (bytesDone: number, bytesTotal: number) => void
  warn: (message: string) => void
}

export interface VerifyOutcome {
  verification: Verification
  /** The files hashed, in bytewise order. */
  sampled: string[]
  /** Bytes of all files the catalog lists. */
  totalBytes: number
  state: VerifyState
}

/**
 * Link targets, missing files and strays, from one walk of data/ by directory entries; returns the files
 * that are there, with their recorded sizes. Sizes are checked later: by the hash's read for the sample,
 * by a stat for the rest, so a full verification stats nothing twice.
 */
export async function checkTree(data: string, catalog: Catalog): Promise<{ problems: Problem[]; present: [string, number][] }> {
  const listing = listTree(data)
  const files = new Set(listing.files)
  const links = new Map(listing.symlinks.map((l) => [l.rel, l.target]))
  const problems: Problem[] = []
  const present: [string, number][] = []
  for (const [rel, size] of catalog.files) {
    if (files.has(rel)) present.push([rel, size])
    else problems.push({ kind: 'missing', path: rel, detail: `expected a file of ${size} bytes, found ${describeEntry(await lstatOrNull(path.join(data, rel)))}` })
  }
  for (const [rel, target] of catalog.symlinks) {
    const found = links.get(rel)
    if (found === target) continue
    const what = found !== undefined ? `a link to ${found}` : describeEntry(await lstatOrNull(path.join(data, rel)))
    problems.push({ kind: 'link', path: rel, detail: `expected a link to ${target}, found ${what}` })
  }
  // A path the catalog records as the other kind is already reported above.
  const recorded = new Set([...catalog.files.map(([rel]) => rel), ...catalog.symlinks.map(([rel]) => rel)])
  for (const rel of listing.files) if (!recorded.has(rel)) problems.push({ kind: 'extra', path: rel, detail: `${describeEntry(await lstatOrNull(path.join(data, rel)))} the backup did not record` })
  for (const l of listing.symlinks) if (!recorded.has(l.rel)) problems.push({ kind: 'extra', path: l.rel, detail: `a link to ${l.target} the backup did not record` })
  return { problems, present }
}

const sizeProblem = (rel: string, found: number, recorded: number): Problem => ({ kind: 'size', path: rel, detail: `${found} bytes, ${recorded} recorded` })

/** A rank from the seed and the path alone (cyrb53): the same seed orders the same files the same way. */
function rank(seed: number, rel: string): number {
  let h1 = 0xdeadbeef ^ seed
  let h2 = 0x41c6ce57 ^ seed
  for (let i = 0; i < rel.length; i++) {
    const c = rel.charCodeAt(i)
    h1 = Math.imul(h1 ^ c, 2654435761)
    h2 = Math.imul(h2 ^ c, 1597334677)
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909)
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909)
  return 4294967296 * (2097151 & h2) + (h1 >>> 0)
}

/**
 * The files to hash: in order of last verification (never first; ignored when `history` is null), ties by
 * rank, taken until they hold at least `rate` of the bytes and of the files, so that empty and small files
 * get their turn too.
 */
export function chooseSample(files: [string, number][], rate: number, seed: number, history: VerifyState | null): [string, number][] {
  // The result keeps the order of `files` (the catalog's, bytewise).
  // 0, before any real time, for a file never verified (or a time that does not parse).
  const lastVerified = (rel: string) => Date.parse(history?.[rel] ?? '') || 0
  const order = files.map(([rel, size]) => ({ rel, size, at: lastVerified(rel), rank: rank(seed, rel) }))
  order.sort((a, b) => a.at - b.at || a.rank - b.rank || compareBytewise(a.rel, b.rel))
  const totalBytes = files.reduce((sum, [, size]) => sum + size, 0)
  const wantedFiles = Math.ceil(rate * files.length)
  const chosen = new Set<string>()
  let bytes = 0
  for (const f of order) {
    if (chosen.size >= wantedFiles && bytes >= rate * totalBytes) break
    chosen.add(f.rel)
    bytes += f.size
  }
  return files.filter(([rel]) => chosen.has(rel))
}

/** A Hugging Face cache names each blob by the SHA-256 of its content. */
export const HF_BLOB = /(^|\/)blobs\/[0-9a-f]{64}$/

/** The verify state from `file`'s text ('' or null: none yet); anything but an object of times starts over. */
export function parseVerifyState(text: string | null, warn: (message: string) => void, file = VERIFY_STATE): VerifyState {
  if (text === null || text === '') return {}
  try {
    return parseFile(verifyStateSchema, file, text)
  } catch (err) {
    warn(`${(err as Error).message}: starting over as if no file had been verified`)
    return {}
  }
}

/** The catalog and the manifest by path, or the problem that one of them cannot be read. */
async function readLists(dir: string): Promise<{ catalog: Catalog; manifest: Map<string, string> } | Problem> {
  let file = path.join(dir, CATALOG)
  try {
    const catalog = await readCatalog(dir)
    file = path.join(dir, MANIFEST)
    const manifest = new Map(parseManifestBytes(await fs.readFile(file)).map((e) => [e.path, e.sha256]))
    return { catalog, manifest }
  } catch (err) {
    const message = (err as Error).message
    return { kind: 'list', path: path.basename(file), detail: message.includes(file) ? message : `${file}: ${message}` }
  }
}

/** Reads and hashes; writes nothing (see recordVerification). */
export async function verifyBackup(backup: Backup, req: VerifyRequest): Promise<VerifyOutcome> {
  const at = new Date().toISOString()
  const data = path.join(backup.dir, DATA)
  const stateFile = path.join(backup.dir, VERIFY_STATE)
  const state = parseVerifyState(await readFileOrNull(stateFile), req.warn, stateFile)
  const lists = await readLists(backup.dir)
  if ('kind' in lists) {
    const verification: Verification = { at, rate: req.rate, seed: req.seed ?? 0, seeded: req.seed !== null, files_checked: 0, files_hashed: 0, bytes_hashed: 0, ok: false, problems: [lists], transient: [] }
    return { verification, sampled: [], totalBytes: 0, state }
  }
  const { catalog, manifest } = lists

  const { problems, present } = await checkTree(data, catalog)
  const seed = req.seed ?? randomInt(2 ** 32)
  const sample = chooseSample(present, req.rate, seed, req.seed === null ? state : null)
  const sampled = new Set(sample.map(([rel]) => rel))
  const unsampled = present.filter(([rel]) => !sampled.has(rel))
  statFiles(data, unsampled.map(([rel]) => rel)).forEach((f, i) => {
    if (f.size !== unsampled[i]![1]) problems.push(sizeProblem(f.rel, f.size, unsampled[i]![1]))
  })
  const sampleBytes = sample.reduce((sum, [, size]) => sum + size, 0)
  const jobs = sample.map(([rel, size]) => ({ file: path.join(data, rel), size }))
  const first = await hashFiles(jobs, { signal: req.signal, onProgress: (done) => req.onProgress(done, sampleBytes) })

  // A disagreement is read once more: a second read that agrees means the first was a read error.
  const disagreeing = sample.flatMap(([rel, size], i) => (first[i]!.sha256 !== null && first[i]!.bytesRead === size && first[i]!.sha256 !== manifest.get(rel) ? [i] : []))
  const second = new Map((await hashFiles(disagreeing.map((i) => jobs[i]!), { signal: req.signal })).map((o, j) => [disagreeing[j]!, o]))
  const transient: string[] = []
  const verified: string[] = []
  for (const [i, [rel, size]] of sample.entries()) {
    const expected = manifest.get(rel)
    const outcome = second.get(i) ?? first[i]!
    if (outcome.sha256 === null) problems.push({ kind: 'unreadable', path: rel, detail: outcome.error ?? 'read failed' })
    else if (outcome.bytesRead !== size) problems.push(sizeProblem(rel, outcome.bytesRead, size))
    else if (expected === undefined) problems.push({ kind: 'mismatch', path: rel, detail: `not in ${MANIFEST}; hashes to ${outcome.sha256}` })
    else if (outcome.sha256 !== expected) problems.push({ kind: 'mismatch', path: rel, detail: `hashes to ${outcome.sha256}, ${MANIFEST} says ${expected}` })
    else {
      if (second.has(i)) transient.push(rel)
      // The manifest was made from the copy, so it agrees with a blob that was already corrupt at the source.
      if (HF_BLOB.test(rel) && path.basename(rel) !== expected) problems.push({ kind: 'blob-name', path: rel, detail: `content hashes to ${expected}, not to its name` })
      else verified.push(rel)
    }
  }

  problems.sort((a, b) => compareBytewise(a.path, b.path))
  const verification: Verification = {
    at,
    rate: req.rate,
    seed,
    seeded: req.seed !== null,
    files_checked: catalog.files.length,
    files_hashed: sample.length,
    bytes_hashed: first.reduce((sum, o) => sum + o.bytesRead, 0),
    ok: problems.length === 0,
    problems,
    transient,
  }
  // Only files that proved good move to the back of the queue: a bad one is hashed again next run.
  for (const rel of verified) state[rel] = at
  const totalBytes = catalog.files.reduce((sum, [, size]) => sum + size, 0)
  return { verification, sampled: sample.map(([rel]) => rel), totalBytes, state }
}

/** Appends the record to the backup's metadata and saves when each file was verified. */
export async function recordVerification(backup: Backup, outcome: VerifyOutcome): Promise<void> {
  await writeMeta(backup.dir, { ...backup.meta, verifications: [...backup.meta.verifications, outcome.verification] })
  await atomicWriteFile(path.join(backup.dir, VERIFY_STATE), JSON.stringify(outcome.state) + '\n')
}

/** The backup-verify report of one verification, local or remote: failed on any problem. */
export function showVerification(ctx: TaskContext, name: string, outcome: { verification: Verification; sampled: string[]; totalBytes: number }): TaskResult {
  const { verification: v, sampled } = outcome
  for (const rel of v.transient) ctx.warn(`${rel}: the first read disagreed with the manifest, a second agreed: a read error, not corruption`)
  if (v.problems.length) ctx.detail(...table([['PATH', 'PROBLEM', 'DETAIL'], ...v.problems.map((p) => [showName(p.path), p.kind, p.detail])]))
  const lists = v.problems.filter((p) => p.kind === 'list')
  if (lists.length) return ctx.fail(`${name} cannot be verified: ${lists.map((p) => p.detail).join('; ')}`, { backup: name, verification: v, sampled })
  const share = percent(outcome.totalBytes > 0 ? v.bytes_hashed / outcome.totalBytes : 1, 0)
  const head = `${name}: ${count(v.files_checked, 'file')} checked, ${v.files_hashed} hashed (${bytes(v.bytes_hashed)}, ${share} of bytes)`
  const data = { backup: name, verification: v, sampled }
  if (!v.ok) return ctx.fail(`${head}: ${count(v.problems.length, 'problem')}: ${summarize(v.problems.map((p) => `${showName(p.path)}: ${p.kind}`))}`, data)
  return ctx.finish(`${head}: ok`, data)
}
