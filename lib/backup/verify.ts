// Verifies a backup against what was recorded when it was made, by one algorithm for every store. Each
// run compares the whole tree with the catalog (sizes, link targets, strays), which costs one listing;
// hashing everything would cost a full read of the slow disk, so each run hashes a sample, and without a
// seed the files verified longest ago come first, so a few runs together cover the whole backup. The store
// hashes on its own host: the local disk here, sha256sum -c on the far side over ssh.
import { randomInt } from 'node:crypto'
import path from 'node:path'
import { MANIFEST, META, metaText, VERIFY_STATE, type Backup, type BackupStore, type Catalog, type DataListing, type HashVerdict, type Verification, type VerifyProblem } from './store.ts'
import { compareBytewise } from './manifest.ts'
import { parseFile, verifyStateSchema } from '../infra/schemas.ts'

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
  /** The verify state to save; null when the lists could not be read, so the saved one stays as it is. */
  state: VerifyState | null
}

/**
 * Link targets, missing files and strays, from one listing of data/; returns the files that are there,
 * with their recorded sizes. Sizes are checked later: by the hash's read for the sample, by the listing
 * for the rest, so a full verification stats nothing twice.
 */
async function checkTree(listing: DataListing, catalog: Catalog): Promise<{ problems: VerifyProblem[]; present: [string, number][] }> {
  const files = new Set(listing.files)
  const problems: VerifyProblem[] = []
  const present: [string, number][] = []
  for (const [rel, size] of catalog.files) {
    if (files.has(rel)) present.push([rel, size])
    else problems.push({ kind: 'missing', path: rel, detail: `expected a file of ${size} bytes, found ${await listing.describe(rel)}` })
  }
  for (const [rel, target] of catalog.symlinks) {
    const found = listing.symlinks.get(rel)
    if (found === target) continue
    const what = found !== undefined ? `a link to ${found}` : await listing.describe(rel)
    problems.push({ kind: 'link', path: rel, detail: `expected a link to ${target}, found ${what}` })
  }
  // A path the catalog records as the other kind is already reported above.
  const recorded = new Set([...catalog.files.map(([rel]) => rel), ...catalog.symlinks.map(([rel]) => rel)])
  for (const rel of [...listing.files, ...listing.others]) if (!recorded.has(rel)) problems.push({ kind: 'extra', path: rel, detail: `${await listing.describe(rel)} the backup did not record` })
  for (const [rel, target] of listing.symlinks) if (!recorded.has(rel)) problems.push({ kind: 'extra', path: rel, detail: `a link to ${target} the backup did not record` })
  return { problems, present }
}

const sizeProblem = (rel: string, found: number, recorded: number): VerifyProblem => ({ kind: 'size', path: rel, detail: `${found} bytes, ${recorded} recorded` })

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
const HF_BLOB = /(^|\/)blobs\/[0-9a-f]{64}$/

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

/** Reads and hashes; writes nothing (see recordVerification). */
export async function verifyBackup(store: BackupStore, backup: Backup, req: VerifyRequest): Promise<VerifyOutcome> {
  const at = new Date().toISOString()
  const lists = await store.readLists(backup)
  if ('message' in lists) {
    const problem: VerifyProblem = { kind: 'list', path: lists.file, detail: lists.message }
    const verification: Verification = { at, rate: req.rate, seed: req.seed ?? 0, seeded: req.seed !== null, files_checked: 0, files_hashed: 0, bytes_hashed: 0, ok: false, problems: [problem], transient: [] }
    return { verification, sampled: [], totalBytes: 0, state: null }
  }
  const { catalog, manifest } = lists
  const state = parseVerifyState(lists.state, req.warn, lists.stateFile)
  const listing = await store.listData(backup)
  const { problems, present } = await checkTree(listing, catalog)

  const seed = req.seed ?? randomInt(2 ** 32)
  const chosen = chooseSample(present, req.rate, seed, req.seed === null ? state : null)
  const chosenNames = new Set(chosen.map(([rel]) => rel))
  // A file the manifest does not list has no hash to be checked against.
  const sample = chosen.filter(([rel]) => {
    if (manifest.has(rel)) return true
    problems.push({ kind: 'mismatch', path: rel, detail: `not in ${MANIFEST}` })
    return false
  })
  const unsampled = present.filter(([rel]) => !chosenNames.has(rel))
  ;(await listing.sizes(unsampled.map(([rel]) => rel))).forEach((size, i) => {
    if (size !== unsampled[i]![1]) problems.push(sizeProblem(unsampled[i]![0], size, unsampled[i]![1]))
  })
  const sampleBytes = sample.reduce((sum, [, size]) => sum + size, 0)
  const jobs = sample.map(([rel, size]) => ({ rel, size, sha256: manifest.get(rel)! }))
  const first = await store.hashCheck(backup, jobs, { signal: req.signal, onProgress: (done) => req.onProgress(done, sampleBytes) })
  // A store that cannot tell how much it read (sha256sum -c) has the size from its listing.
  const unknown = sample.flatMap(([rel], i) => (first[i]!.bytesRead === null ? [rel] : []))
  const listed = new Map((await listing.sizes(unknown)).map((size, j) => [unknown[j]!, size]))
  const found = (i: number, v: HashVerdict) => v.bytesRead ?? listed.get(sample[i]![0])!

  // A disagreement is read once more: a second read that agrees means the first was a read error.
  const disagreeing = sample.flatMap(([, size], i) => (first[i]!.verdict === 'differs' && found(i, first[i]!) === size ? [i] : []))
  const again = disagreeing.length ? await store.hashCheck(backup, disagreeing.map((i) => jobs[i]!), { signal: req.signal, onProgress: () => {} }) : []
  const second = new Map(again.map((v, j) => [disagreeing[j]!, v]))
  const transient: string[] = []
  const verified: string[] = []
  for (const [i, [rel, size]] of sample.entries()) {
    const outcome = second.get(i) ?? first[i]!
    if (outcome.verdict === 'unreadable') problems.push({ kind: 'unreadable', path: rel, detail: outcome.detail })
    else if (found(i, outcome) !== size) problems.push(sizeProblem(rel, found(i, outcome), size))
    else if (outcome.verdict === 'differs') problems.push({ kind: 'mismatch', path: rel, detail: outcome.detail })
    else {
      if (second.has(i)) transient.push(rel)
      const expected = jobs[i]!.sha256
      // The manifest was made from the copy, so it agrees with a blob that was already corrupt at the source.
      if (HF_BLOB.test(rel) && path.posix.basename(rel) !== expected) problems.push({ kind: 'blob-name', path: rel, detail: `content hashes to ${expected}, not to its name` })
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
    bytes_hashed: first.reduce((sum, v, i) => sum + found(i, v), 0),
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
export async function recordVerification(store: BackupStore, backup: Backup, outcome: VerifyOutcome): Promise<void> {
  await store.replaceFile(backup, META, metaText({ ...backup.meta, verifications: [...backup.meta.verifications, outcome.verification] }))
  if (outcome.state) await store.replaceFile(backup, VERIFY_STATE, JSON.stringify(outcome.state) + '\n')
}
