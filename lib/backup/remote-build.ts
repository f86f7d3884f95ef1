// Sending a local backup to the remote store, and verifying a remote backup with the far side's own
// sha256sum. A backup is sent as <name>.partial with rsync --link-dest to the newest remote backup, and
// renamed only once it is all there: as locally, nothing incomplete ever carries a backup's name.
import { randomInt } from 'node:crypto'
import path from 'node:path'
import { planCopy } from './build.ts'
import { CATALOG, DATA, MANIFEST, META, metaText, partialName, VERIFY_STATE, type Backup, type Catalog, type Problem, type Verification } from './store.ts'
import type { RemoteSettings } from '../infra/config.ts'
import { compareBytewise, manifestBytes, parseManifest, unescapeName } from './manifest.ts'
import { publishRemote, remoteComplaint, remoteHost, remoteLabel, remoteStoreDir, removeRemote, replaceRemoteFile, rsyncRsh, runRemote } from './remote.ts'
import { rsyncCopy } from './rsync.ts'
import { catalogSchema, parseFile } from '../infra/schemas.ts'
import type { TaskContext } from '../core/task.ts'
import { chooseSample, HF_BLOB, parseVerifyState, type VerifyState } from './verify.ts'

/**
 * Bytes the remote disk needs for `backup`: all of it, or with `localParent` (the local copy of the remote
 * backup it will be linked to) only the files rsync will not hard-link, plus room for metadata.
 */
export const bytesToSend = (backup: Backup, localParent: Backup | null) => planCopy(path.join(backup.dir, DATA), localParent && localParent.dir).bytesNeeded

/**
 * Sends `backup` to the remote store and publishes it; `remoteParent` is the remote backup unchanged files
 * are hard-linked to, `latest` the name remote latest points at afterwards. On failure or interrupt the
 * partial copy is removed from the remote host when it can still be reached; otherwise the next send or
 * cleanup removes it.
 */
export async function sendBackup(ctx: TaskContext, r: RemoteSettings, backup: Backup, remoteParent: Backup | null, latest: string, onBytes: (bytes: number) => void): Promise<number> {
  const partial = partialName(backup.name)
  let published = false
  let copied = 0
  try {
    const copy = await rsyncCopy(ctx.$, {
      src: backup.dir,
      dest: `${remoteHost(r)}:${path.posix.join(remoteStoreDir(r), partial)}`,
      linkDest: remoteParent && remoteParent.dir,
      rsh: rsyncRsh(r),
      bandwidthLimit: r.bandwidthLimit,
      // The remote copy has its own metadata and its own verification history.
      excludes: [`/${META}`, `/${VERIFY_STATE}`],
      signal: ctx.signal,
      onBytes: (b) => onBytes((copied = b)),
    })
    if (copy.error) throw new Error(`sending ${backup.name} to ${remoteLabel(r)} failed: ${copy.error}`)
    ctx.progress(`publishing ${backup.name} on ${remoteHost(r)}`)
    await publishRemote(ctx.$, r, partial, backup.name, latest, { ...backup.meta, parent: remoteParent?.name ?? null, verifications: [] })
    published = true
    return copied
  } finally {
    if (!published) await removeRemote(ctx.$, r, [partial]).catch((err) => ctx.warn(`could not remove ${partial} from ${remoteHost(r)}: ${(err as Error).message}; the next send or cleanup removes it`))
  }
}

// The manifest, catalog and verify state of a backup, then every file (size) and link (target) under data/,
// NUL-separated. stat and readlink are GNU coreutils; readlink's newline ends each target.
const LISTS = String.raw`
cd -- "$1" 2>/dev/null || { echo "no backup $1 on the remote host" >&2; exit 10; }
cat SHA256SUMS && printf '\0' && cat files.json && printf '\0' || exit 11
cat verify-state.json 2>/dev/null; printf '\0'
cd data || exit 12
find . -mindepth 1 \( -type f -exec stat --printf 'f\0%s\0%n\0' {} + \) -o \( -type l -exec sh -c 'for l do printf "l\0"; readlink -- "$l"; printf "\0%s\0" "$l"; done' sh {} + \) -o \( ! -type d -exec stat --printf 'o\0%F\0%n\0' {} + \)
`

interface RemoteLists { manifest: Map<string, string>; catalog: Catalog; state: VerifyState; files: Map<string, number>; links: Map<string, string>; others: Map<string, string> }

async function readLists(ctx: TaskContext, r: RemoteSettings, backup: Backup): Promise<RemoteLists> {
  const out = await runRemote(ctx.$, r, LISTS, [backup.dir], { signal: ctx.signal })
  if (out.exitCode !== 0) throw new Error(`cannot read ${backup.name} on ${remoteHost(r)}: ${remoteComplaint(out)}`)
  const [manifestText = '', catalogText = '', stateText = '', ...entries] = out.stdout.split('\0')
  const lists: RemoteLists = {
    manifest: new Map(parseManifest(manifestText).map((e) => [e.path, e.sha256])),
    catalog: parseFile(catalogSchema, `${remoteHost(r)}:${backup.dir}/${CATALOG}`, catalogText),
    state: parseVerifyState(stateText, (message) => ctx.warn(`on ${remoteHost(r)}: ${message}`), `${backup.dir}/${VERIFY_STATE}`),
    files: new Map(),
    links: new Map(),
    others: new Map(),
  }
  const rel = (p: string) => p.replace(/^\.\//, '')
  for (let i = 0; i + 2 < entries.length; i += 3) {
    const [kind, value, name] = [entries[i], entries[i + 1]!, rel(entries[i + 2]!)]
    if (kind === 'f') lists.files.set(name, Number(value))
    else if (kind === 'l') lists.links.set(name, value.replace(/\n$/, ''))
    else lists.others.set(name, value)
  }
  return lists
}

/** Missing, resized, relinked and stray entries, as the local verify reports them; and the files present. */
function compareWithCatalog(l: RemoteLists): { problems: Problem[]; present: [string, number][] } {
  const problems: Problem[] = []
  const present: [string, number][] = []
  const found = (rel: string) => (l.links.has(rel) ? `a link to ${l.links.get(rel)}` : l.others.has(rel) ? l.others.get(rel)! : l.files.has(rel) ? 'a file' : 'nothing')
  for (const [rel, size] of l.catalog.files) {
    const actual = l.files.get(rel)
    if (actual === undefined) problems.push({ kind: 'missing', path: rel, detail: `expected a file of ${size} bytes, found ${found(rel)}` })
    else if (actual !== size) problems.push({ kind: 'size', path: rel, detail: `${actual} bytes, ${size} recorded` })
    else present.push([rel, size])
  }
  for (const [rel, target] of l.catalog.symlinks)
    if (l.links.get(rel) !== target) problems.push({ kind: 'link', path: rel, detail: `expected a link to ${target}, found ${found(rel)}` })
  const recorded = new Set([...l.catalog.files.map(([rel]) => rel), ...l.catalog.symlinks.map(([rel]) => rel)])
  for (const rel of [...l.files.keys(), ...l.links.keys(), ...l.others.keys()])
    if (!recorded.has(rel)) problems.push({ kind: 'extra', path: rel, detail: `${found(rel)} the backup did not record` })
  return { problems, present }
}

// coreutils' sha256sum -c, on the files of the manifest lines given on stdin, from the backup's data/.
const SHA256SUM_CHECK = String.raw`cd -- "$1/data" || exit 10
exec sha256sum -c --strict -`

/** Runs sha256sum -c remotely on `files`; returns each file's answer (OK, FAILED, FAILED open or read). */
async function remoteSha256Check(ctx: TaskContext, r: RemoteSettings, backup: Backup, manifest: Map<string, string>, files: [string, number][], onDone: (bytes: number) => void) {
  const sizes = new Map(files)
  const answers = new Map<string, string>()
  let done = 0
  const input = manifestBytes(files.map(([rel]) => ({ path: rel, sha256: manifest.get(rel)! })))
  const read = (line: string) => {
    const m = /^(\\?)(.*): (OK|FAILED|FAILED open or read)$/s.exec(line)
    if (!m) return
    const name = m[1] ? unescapeName(m[2]!, `sha256sum -c on ${remoteHost(r)}`) : m[2]!
    answers.set(name, m[3]!)
    onDone((done += sizes.get(name) ?? 0))
  }
  const out = await runRemote(ctx.$, r, SHA256SUM_CHECK, [backup.dir], {
    input,
    signal: ctx.signal,
    onLine: read,
  })
  // 1 is sha256sum's "some files failed"; anything else means it did not check.
  if (out.exitCode > 1 || (out.exitCode === 1 && answers.size === 0)) throw new Error(`sha256sum -c on ${remoteHost(r)} did not run: ${remoteComplaint(out)}`)
  const errors = new Map<string, string>()
  for (const line of out.stderr.split('\n')) {
    const m = /^sha256sum: (.*): ([^:]+)$/.exec(line)
    if (m) errors.set(m[1]!, m[2]!)
  }
  return { answers, errors }
}

export interface RemoteVerifyOutcome { verification: Verification; sampled: string[]; totalBytes: number; state: VerifyState }

/** Checks a remote backup against its catalog and has the remote host hash a sample. Writes nothing. */
export async function verifyRemote(ctx: TaskContext, r: RemoteSettings, backup: Backup, rate: number, seedArg: number | null, onProgress: (done: number, total: number) => void): Promise<RemoteVerifyOutcome> {
  const at = new Date().toISOString()
  const lists = await readLists(ctx, r, backup)
  const { problems, present } = compareWithCatalog(lists)
  const seed = seedArg ?? randomInt(2 ** 32)
  const sample = chooseSample(present, rate, seed, seedArg === null ? lists.state : null).filter(([rel]) => {
    if (lists.manifest.has(rel)) return true
    problems.push({ kind: 'mismatch', path: rel, detail: `not in ${MANIFEST}` })
    return false
  })
  const sampleBytes = sample.reduce((sum, [, size]) => sum + size, 0)
  const first = await remoteSha256Check(ctx, r, backup, lists.manifest, sample, (done) => onProgress(done, sampleBytes))
  // A disagreement is read once more: a second read that agrees means the first was a read error.
  const disagreeing = sample.filter(([rel]) => first.answers.get(rel) === 'FAILED')
  const second = disagreeing.length ? await remoteSha256Check(ctx, r, backup, lists.manifest, disagreeing, () => {}) : null
  const transient: string[] = []
  const verified: string[] = []
  for (const [rel] of sample) {
    const answer = second?.answers.get(rel) ?? first.answers.get(rel)
    const expected = lists.manifest.get(rel)!
    if (answer === 'OK') {
      if (second?.answers.has(rel)) transient.push(rel)
      if (HF_BLOB.test(rel) && path.basename(rel) !== expected) problems.push({ kind: 'blob-name', path: rel, detail: `content hashes to ${expected}, not to its name` })
      else verified.push(rel)
    } else if (answer === 'FAILED') problems.push({ kind: 'mismatch', path: rel, detail: `sha256sum -c on ${remoteHost(r)}: the content does not hash to ${expected}` })
    else problems.push({ kind: 'unreadable', path: rel, detail: `sha256sum -c on ${remoteHost(r)}: ${first.errors.get(rel) ?? answer ?? 'no answer'}` })
  }
  problems.sort((a, b) => compareBytewise(a.path, b.path))
  for (const rel of verified) lists.state[rel] = at
  const verification: Verification = {
    at, rate, seed, seeded: seedArg !== null, files_checked: lists.catalog.files.length, files_hashed: sample.length, bytes_hashed: sampleBytes,
    ok: problems.length === 0, problems, transient,
  }
  return { verification, sampled: sample.map(([rel]) => rel), totalBytes: lists.catalog.files.reduce((sum, [, size]) => sum + size, 0), state: lists.state }
}

/** Appends the record to the remote backup's metadata and saves when each file was verified. */
export async function recordRemoteVerification(ctx: TaskContext, r: RemoteSettings, backup: Backup, outcome: RemoteVerifyOutcome): Promise<void> {
  await replaceRemoteFile(ctx.$, r, backup, META, metaText({ ...backup.meta, verifications: [...backup.meta.verifications, outcome.verification] }))
  await replaceRemoteFile(ctx.$, r, backup, VERIFY_STATE, JSON.stringify(outcome.state) + '\n')
}
