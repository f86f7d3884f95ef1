// Getting a model onto the model disk for model fetch: from a local directory, from another host with rsync
// over ssh (the off-host backups' ssh settings), or from the Hugging Face cache, whose snapshot is a tree
// of relative links to content-addressed blobs. Everything lands in downloads/<name>.partial first, which
// only citadel writes: an interrupted copy is continued there by the next fetch, and nothing reaches
// staging/ before it has been checked against the source.
import { promises as fs, type Stats } from 'node:fs'
import path from 'node:path'
import { globby } from 'globby'
import { z } from 'zod'
import type { Shell } from 'zx/core'
import type { RemoteSettings, Settings } from '../infra/config.ts'
import { bytes, count, summarize } from '../infra/format.ts'
import { isInside, lstatOrNull } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { hfHome } from '../infra/layout.ts'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'
import { excluded, excludeOptions } from '../backup/rsync.ts'
import { remoteHost, rsyncRsh } from '../backup/ssh-store.ts'
import { checkModelStructure } from './check.ts'

export type Source =
  | { kind: 'local'; dir: string; label: string }
  | { kind: 'remote'; user?: string; host: string; dir: string; label: string }
  | { kind: 'hf'; org: string; repo: string; revision: string | null; label: string }

// Hugging Face repository ids and revisions: letters, digits, '.', '_' and '-'; never a path of their own.
const HF_WORD = '[A-Za-z0-9][A-Za-z0-9._-]*'
const HF_SOURCE = new RegExp(`^hf:(${HF_WORD})/(${HF_WORD})(?:@(${HF_WORD}))?$`)
// [user@]host:/absolute/path, as rsync takes it; a host starting with "-" would be read as an option.
const REMOTE_SOURCE = /^(?:([a-z_][a-z0-9_.-]*)@)?([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(\/.*)$/
const SOURCE_FORMS = 'a local directory, [user@]host:/path or hf:ORG/NAME[@REVISION]'

/** SOURCE as typed: which kind of source it is, checked for form only (whether it exists is the task's to find). */
export const sourceArg = z.string({ error: `expected ${SOURCE_FORMS}` }).transform((v, ctx): Source => {
  if (v === '' || v.includes('\0') || /[\n\r]/.test(v)) {
    ctx.addIssue({ code: 'custom', message: `expected ${SOURCE_FORMS}` })
    return z.NEVER
  }
  if (v.startsWith('hf:')) {
    const m = HF_SOURCE.exec(v)
    if (!m) {
      ctx.addIssue({ code: 'custom', message: 'expected hf:ORG/NAME[@REVISION] (letters, digits, ".", "_", "-"), e.g. hf:Qwen/Qwen2.5-7B-Instruct@main' })
      return z.NEVER
    }
    return { kind: 'hf', org: m[1]!, repo: m[2]!, revision: m[3] ?? null, label: v }
  }
  const remote = REMOTE_SOURCE.exec(v)
  if (remote) {
    const dir = path.posix.resolve(remote[3]!)
    if (dir === '/') {
      ctx.addIssue({ code: 'custom', message: 'expected a model directory on the remote host, not / itself' })
      return z.NEVER
    }
    return { kind: 'remote', user: remote[1], host: remote[2]!.replace(/^\[|\]$/g, ''), dir, label: v }
  }
  return { kind: 'local', dir: path.resolve(v), label: v }
})

/** The directory name a fetch gives the model unless --name says otherwise: the source's basename, NAME[@REVISION] for hf. */
export function defaultName(source: Source): string {
  if (source.kind === 'hf') return source.revision ? `${source.repo}@${source.revision}` : source.repo
  return source.kind === 'local' ? path.basename(source.dir) : path.posix.basename(source.dir)
}

/** The ssh settings of the off-host backups, aimed at the host of a remote source. */
export const remoteOf = (s: Settings, source: Extract<Source, { kind: 'remote' }>): RemoteSettings => ({ user: source.user, host: source.host, dir: source.dir, ...s.backup.ssh, bandwidthLimit: 0 })

/** One file of the model as the source holds it. */
export interface SourceFile {
  /** Its path inside the model directory. */
  rel: string
  size: number
  /** For hf: the blob the snapshot links to, its device, and the sha256 its name is (null for a file git stores, named by its sha1). */
  blob?: { path: string; dev: number; ino: number; sha256: string | null }
}

export interface Listing {
  files: SourceFile[]
  bytes: number
  /** Where rsync copies from: a local directory, host:/path, or the hf snapshot directory. */
  copyFrom: string
  /** The ssh command line rsync uses for a remote source. */
  rsh?: string
}

const sum = (files: SourceFile[]) => files.reduce((n, f) => n + f.size, 0)

/** Paths of the regular files under `dir`, following links as rsync --copy-links does, without what is never a model. */
async function filesUnder(dir: string): Promise<string[]> {
  const found = await globby('**', { cwd: dir, dot: true, onlyFiles: true, followSymbolicLinks: true })
  return found.filter((rel) => !rel.split('/').some((part, i, parts) => excluded(part, i < parts.length - 1))).sort()
}

async function listLocal(dir: string): Promise<Listing> {
  const st = await lstatOrNull(dir)
  const real = st?.isSymbolicLink() ? await fs.stat(dir).catch(() => null) : st
  if (!real) throw new Error(`${dir} does not exist: expected ${SOURCE_FORMS}`)
  if (!real.isDirectory()) throw new Error(`${dir} is not a directory: expected a model directory to fetch`)
  const files = await Promise.all((await filesUnder(dir)).map(async (rel) => ({ rel, size: (await fs.stat(path.join(dir, rel))).size })))
  return { files, bytes: sum(files), copyFrom: dir }
}

// rsync --list-only: mode, size, date, time, name; a name's unprintable bytes come as \#ooo.
const LIST_LINE = /^(.)[rwxsStT-]{9}\s+(\d+) \d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d (.*)$/
const unescapeListed = (name: string) => name.replace(/\\#([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

async function listRemote($: Shell, r: RemoteSettings, label: string, signal: AbortSignal): Promise<Listing> {
  const rsh = rsyncRsh(r)
  const from = `${remoteHost(r)}:${r.dir}`
  const out = await $({ signal, nothrow: true })`${DIES_WITH_CITADEL} rsync --list-only --recursive --copy-links --no-h --protect-args --rsh ${rsh} ${excludeOptions()} -- ${from + '/'}`
  if (out.exitCode !== 0) {
    const lines = out.stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/^rsync error:/.test(l))
    // The sender's complaint about the path comes first; what follows is the pipe it then broke.
    const missing = lines.find((l) => /No such file or directory/.test(l))
    if (missing) throw new Error(`${label} does not exist (${missing}): expected a model directory on that host`)
    throw new Error(`cannot list ${label} on port ${r.port}: ${lines.at(-1) ?? `rsync exit ${out.exitCode}`}`)
  }
  const files: SourceFile[] = []
  for (const line of out.stdout.split('\n')) {
    const m = LIST_LINE.exec(line)
    if (m && m[1] === '-') files.push({ rel: unescapeListed(m[3]!), size: Number(m[2]) })
  }
  return { files, bytes: sum(files), copyFrom: from, rsh }
}

/** HF_HUB_CACHE as Hugging Face's own tools read it, else where storage-env.sh points it. */
export const hfHubCache = (s: Settings) => process.env.HF_HUB_CACHE || path.join(hfHome(s), 'hub')

/**
 * The files of an hf:ORG/NAME[@REVISION] snapshot in the cache: the revision read from refs/ (a commit
 * hash may be given directly), each snapshot link resolved to its blob, which must lie inside the repo's
 * own cache directory.
 */
async function listHf(s: Settings, source: Extract<Source, { kind: 'hf' }>): Promise<Listing> {
  const cache = hfHubCache(s)
  const repoDir = path.join(cache, `models--${source.org}--${source.repo}`)
  const fetchHint = `download it first (hf download ${source.org}/${source.repo}${source.revision ? ` --revision ${source.revision}` : ''})`
  if (!(await lstatOrNull(repoDir))?.isDirectory()) throw new Error(`the Hugging Face cache ${cache} holds no ${source.org}/${source.repo} (no ${path.basename(repoDir)}): ${fetchHint}, or set HF_HUB_CACHE`)
  const ref = source.revision ?? 'main'
  let commit = /^[0-9a-f]{40}$/.test(ref) && (await lstatOrNull(path.join(repoDir, 'snapshots', ref)))?.isDirectory() ? ref : null
  if (!commit) {
    const refFile = path.join(repoDir, 'refs', ref)
    const text = (await fs.readFile(refFile, 'utf8').catch(() => null))?.trim() ?? null
    if (text === null) throw new Error(`${source.label}: the cache has no revision ${ref} of ${source.org}/${source.repo} (no ${refFile}): ${fetchHint}`)
    if (!/^[0-9a-f]{40}$/.test(text)) throw new Error(`${refFile} holds ${JSON.stringify(text.slice(0, 60))}, expected a 40-digit commit hash: the cache is damaged; ${fetchHint}`)
    commit = text
  }
  const snapshot = path.join(repoDir, 'snapshots', commit)
  if (!(await lstatOrNull(snapshot))?.isDirectory()) throw new Error(`${source.label}: revision ${ref} is commit ${commit}, but ${snapshot} is missing: ${fetchHint}`)
  const blobs = path.join(repoDir, 'blobs')
  const files: SourceFile[] = []
  for (const rel of await filesUnder(snapshot)) {
    const real = await fs.realpath(path.join(snapshot, rel))
    if (!isInside(repoDir, real)) throw new Error(`${path.join(snapshot, rel)} leads to ${real}, outside ${repoDir}: refusing to fetch from a snapshot that escapes its repository`)
    const st: Stats = await fs.stat(real)
    const name = path.basename(real)
    const sha256 = path.dirname(real) === blobs && /^[0-9a-f]{64}$/.test(name) ? name : null
    files.push({ rel, size: st.size, blob: { path: real, dev: st.dev, ino: st.ino, sha256 } })
  }
  return { files, bytes: sum(files), copyFrom: snapshot }
}

export async function listSource($: Shell, s: Settings, source: Source, signal: AbortSignal): Promise<Listing> {
  switch (source.kind) {
    case 'local': return listLocal(source.dir)
    case 'remote': return listRemote($, remoteOf(s, source), source.label, signal)
    case 'hf': return listHf(s, source)
  }
}

/** Whether every file of an hf listing can be hard-linked into `dir`: on the same filesystem. */
export async function linkable(listing: Listing, dir: string): Promise<boolean> {
  const dev = (await fs.stat(dir)).dev
  return listing.files.length > 0 && listing.files.every((f) => f.blob?.dev === dev)
}

/** Sizes of the regular files under `dir` by path; empty when it is not there. */
export async function sizesUnder(dir: string): Promise<Map<string, number>> {
  if (!(await lstatOrNull(dir))?.isDirectory()) return new Map()
  const found = await globby('**', { cwd: dir, dot: true, onlyFiles: true, followSymbolicLinks: false, stats: true })
  return new Map(found.map((e) => [e.path, e.stats!.size]))
}

/** The bytes a partial copy already holds of the source's files, and the bytes still to copy. */
export function progressOf(listing: Listing, present: Map<string, number>): { held: number; missing: number } {
  let held = 0
  for (const f of listing.files) held += Math.min(present.get(f.rel) ?? 0, f.size)
  return { held, missing: listing.bytes - held }
}

const BLOCK = 4096

/**
 * Why the copy does not fit on the model disk (one line with both figures), or null. The disk vLLM serves
 * from must never be filled by a download: a margin of 1% (at least 16 MiB) stays free.
 */
export async function spaceShortfall(listing: Listing, present: Map<string, number>, downloads: string): Promise<string | null> {
  const blocks = listing.files.reduce((n, f) => n + Math.ceil(Math.max(0, f.size - (present.get(f.rel) ?? 0)) / BLOCK) * BLOCK, 0)
  if (blocks === 0) return null
  const withMargin = blocks + Math.max(16 << 20, Math.ceil(blocks * 0.01))
  const { bavail, bsize } = await fs.statfs(downloads)
  const free = bavail * bsize
  return withMargin > free
    ? `not enough space on the model disk: the fetch needs ${bytes(blocks)} (${blocks} bytes; ${withMargin} with a margin) in ${downloads}, ${bytes(free)} (${free} bytes) are free; free space first (model remove, archive/) rather than fill the disk vLLM runs from`
    : null
}

/**
 * Hard-links each blob into `partial` under its snapshot path: the model costs no space and no copy. A
 * file of the partial that is already the blob's inode is left as it is; anything else at its path (what a
 * copy from another filesystem left) is replaced, inside the partial citadel made.
 */
export async function linkBlobs(listing: Listing, partial: string, signal: AbortSignal): Promise<number> {
  let linked = 0
  for (const f of listing.files) {
    if (signal.aborted) throw signal.reason
    const to = path.join(partial, f.rel)
    const st = await lstatOrNull(to)
    if (st && st.ino === f.blob!.ino && st.dev === f.blob!.dev) continue
    if (st?.isDirectory()) throw new Error(`${to} is a directory where the model has a file: move ${partial} away and fetch again`)
    await fs.mkdir(path.dirname(to), { recursive: true, mode: 0o755 })
    if (st) await fs.unlink(to)
    await fs.link(f.blob!.path, to)
    linked++
  }
  return linked
}

/**
 * What is wrong with `dir` as a copy of `listing`: a file missing or of another size, a file the source does
 * not hold, or a structure model verify refuses (a safetensors header that does not fit its file, a shard
 * missing from its index, JSON that does not parse). The bytes themselves rsync checked as it copied them
 * (its whole-file checksum, also of a file it appended to); a Hugging Face blob's are checked against its name
 * by checkBlobs.
 */
export async function verifyFetched(dir: string, listing: Listing): Promise<string[]> {
  const problems: string[] = checkModelStructure(dir).problems.map((p) => `${p.path}: ${p.detail}`)
  const present = await sizesUnder(dir)
  const wanted = new Set(listing.files.map((f) => f.rel))
  for (const f of listing.files) {
    const size = present.get(f.rel)
    if (size === undefined) problems.push(`${f.rel} is missing`)
    else if (size !== f.size) problems.push(`${f.rel} has ${size} bytes, the source ${f.size}`)
  }
  const extra = [...present.keys()].filter((rel) => !wanted.has(rel)).sort()
  if (extra.length) problems.push(`${count(extra.length, 'file')} the source does not hold (${summarize(extra)})`)
  return problems
}

/**
 * The Hugging Face blobs named by a sha256 whose bytes hash otherwise. Run while the copy runs: a blob is
 * the very inode a hard-linked model file is, and what rsync copies from, so the copy is not read again.
 */
export async function checkBlobs(listing: Listing, opts: { signal: AbortSignal; threads?: number; onHash: (done: number, total: number) => void }): Promise<string[]> {
  const named = listing.files.filter((f) => f.blob?.sha256)
  const total = sum(named)
  const outcomes = await hashFiles(named.map((f) => ({ file: f.blob!.path, size: f.size })), { signal: opts.signal, threads: opts.threads, onProgress: (done) => opts.onHash(done, total) })
  const problems: string[] = []
  outcomes.forEach((o, i) => {
    const f = named[i]!
    if (o.sha256 === null) problems.push(`${f.rel} is unreadable in the Hugging Face cache: ${o.error}`)
    else if (o.sha256 !== f.blob!.sha256) problems.push(`${f.rel} hashes to ${o.sha256}, but its blob is named ${f.blob!.sha256}: the Hugging Face cache copy is damaged, download it again`)
  })
  return problems
}
