// The off-host backup store, BACKUP_REMOTE, reached with ssh and rsync. The far side needs nothing of
// citadel: a POSIX sh, rsync, GNU coreutils (sha256sum, stat, mv -T, df, du) and GNU find. Each remote
// step is a fixed sh script whose values arrive as positional parameters, single-quoted for the remote
// shell, because ssh hands the far side one command string, not an argument vector.
import path from 'node:path'
import type { Shell } from 'zx/core'
import type { RemoteSettings } from '../infra/config.ts'
import type { TaskContext } from '../core/task.ts'
import { rsyncCopy } from './rsync.ts'
import { bareName, CATALOG, DATA, checkMeta, createdOf, isPartialName, MANIFEST, metaText, VERIFY_STATE, type Backup, type BackupMeta, type BackupStore, type DataListing, type StoreContents } from './store.ts'
import { catalogSchema, parseFile } from '../infra/schemas.ts'
import { shellQuote } from '../infra/quote.ts'
import { decodeName } from '../infra/fsx.ts'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'
import { manifestBytes, parseManifest, unescapeName } from './manifest.ts'
import { shareConnectionsUnder, startMaster, viaMaster } from './ssh-connection.ts'
import { stateDir } from '../infra/layout.ts'

/** ssh's own exit status for "could not connect or authenticate"; a remote command's status is its own. */
const SSH_FAILED = 255

/** <remote dir>/models, as <backup root>/models locally. */
export const remoteStoreDir = (r: RemoteSettings) => path.posix.join(r.dir, 'models')

/** user@host, with an IPv6 address in brackets as rsync wants it. */
export const remoteHost = (r: RemoteSettings) => `${r.user ? `${r.user}@` : ''}${r.host.includes(':') ? `[${r.host}]` : r.host}`

/** How messages name the store: backup@nas:/srv/citadel-backup/models. */
export const remoteLabel = (r: RemoteSettings) => `${remoteHost(r)}:${remoteStoreDir(r)}`

// ssh expands %-tokens in file options and splits them at spaces unless quoted.
const sshFileOption = (name: string, file: string) => `${name}="${file.replaceAll('%', '%%')}"`

/** Seconds ssh waits for the host to answer. */
const CONNECT_TIMEOUT_S = 15

/** The run's shared connection to this store's host is keyed by whom it logs in as, where. */
const connectionKey = (r: RemoteSettings) => `${remoteHost(r)}:${r.port}`

/** ssh's options, through the run's shared connection once it is up (ssh-connection.ts). */
const sshOptions = (r: RemoteSettings): string[] => [...ownOptions(r), ...viaMaster(connectionKey(r))]

/** ssh's options: never a password prompt, a bounded wait for the host, a dead link noticed in a minute. */
function ownOptions(r: RemoteSettings): string[] {
  return [
    '-p', String(r.port),
    '-o', 'BatchMode=yes',
    '-o', `ConnectTimeout=${CONNECT_TIMEOUT_S}`,
    '-o', 'ServerAliveInterval=15',
    '-o', 'ServerAliveCountMax=4',
    '-o', `StrictHostKeyChecking=${r.strictHostKeyChecking}`,
    ...(r.knownHosts ? ['-o', sshFileOption('UserKnownHostsFile', r.knownHosts)] : []),
    ...(r.identity ? ['-o', sshFileOption('IdentityFile', r.identity), '-o', 'IdentitiesOnly=yes'] : []),
  ]
}

/**
 * The ssh command for rsync's --rsh, which splits it at spaces itself: each word in single quotes, a quote
 * inside doubled, as rsync's manual describes for -e.
 */
export const rsyncRsh = (r: RemoteSettings) => ['ssh', ...sshOptions(r)].map((w) => `'${w.replaceAll("'", "''")}'`).join(' ')

interface RemoteOutput { exitCode: number; stdout: string; stderr: string }

/** ssh itself could not connect or log in: monitoring tells it from a store it reached but could not read. */
export class RemoteUnreachableError extends Error {}

/**
 * Runs `script` with `sh -c` on the remote host, `args` as $1, $2, ...; throws, naming the host and ssh's
 * reason, when ssh itself fails. The script's own exit status and output are the caller's to read. Its
 * stdout holds file names, which are bytes: it is decoded as they are (decodeName), line by line for onLine.
 */
async function runRemote($: Shell, r: RemoteSettings, script: string, args: string[], opts: { input?: string | Buffer; signal?: AbortSignal; onLine?: (line: string) => void } = {}): Promise<RemoteOutput> {
  const unreachable = await startMaster(connectionKey(r), ownOptions(r), remoteHost(r), CONNECT_TIMEOUT_S)
  if (unreachable) throw new RemoteUnreachableError(`cannot reach the remote backup host ${remoteHost(r)} on port ${r.port}: ${unreachable}`)
  const command = ['sh', '-c', script, 'citadel', ...args].map(shellQuote).join(' ')
  const run = $({ input: opts.input ?? '', signal: opts.signal, nothrow: true })`${DIES_WITH_CITADEL} ssh ${sshOptions(r)} -- ${remoteHost(r)} ${command}`
  // Collected here as bytes: zx's own stdout is already decoded as UTF-8.
  const chunks: Buffer[] = []
  let pending = Buffer.alloc(0)
  const onLine = opts.onLine
  run.stdout.on('data', (chunk: Buffer) => {
    chunks.push(chunk)
    if (!onLine) return
    pending = Buffer.concat([pending, chunk])
    for (let end = pending.indexOf(0x0a); end !== -1; end = pending.indexOf(0x0a)) {
      onLine(decodeName(pending.subarray(0, end)))
      pending = pending.subarray(end + 1)
    }
  })
  const out = await run
  if (onLine && pending.length) onLine(decodeName(pending))
  if (opts.signal?.aborted) throw opts.signal.reason
  if (out.exitCode === SSH_FAILED) {
    const why = out.stderr.split('\n').map((l) => l.trim()).filter(Boolean).at(-1) ?? `ssh exited ${SSH_FAILED}`
    throw new RemoteUnreachableError(`cannot reach the remote backup host ${remoteHost(r)} on port ${r.port}: ${why}`)
  }
  return { exitCode: out.exitCode ?? 1, stdout: decodeName(Buffer.concat(chunks)), stderr: out.stderr }
}

/** The last line the remote script wrote to stderr: its own message of what was wrong. */
const remoteComplaint = (out: RemoteOutput) => out.stderr.trim().split('\n').at(-1) || `exit ${out.exitCode}`

export interface RemoteContents extends StoreContents {
  disk: { free_bytes: number; total_bytes: number }
}

// Lists every backup_* directory with its metadata, where latest points and the disk's space. Fields are
// NUL-separated: no name or JSON text holds a NUL. A missing store is an empty one; a missing remote
// directory is an error, as a missing backup disk is locally.
const SCAN = `
cd -- "$1" 2>/dev/null || { echo "no directory $1 on the remote host: create it (BACKUP_REMOTE)" >&2; exit 10; }
if [ "$2" = create ]; then
  [ -w . ] || { echo "$1 on the remote host is not writable by $(id -un)" >&2; exit 11; }
  mkdir -p models || exit 11
fi
[ -d models ] || { printf 'E\\0'; df -Pk . | tail -n 1; exit 0; }
cd models || exit 12
for e in backup_*; do
  [ -d "$e" ] && [ ! -L "$e" ] || continue
  printf 'D\\0%s\\0' "$e"
  cat -- "$e/backup.json" 2>/dev/null
  printf '\\0'
done
[ -L latest ] && printf 'L\\0%s\\0' "$(readlink latest)"
printf 'E\\0'
df -Pk . | tail -n 1
`

/** Reads the remote store; `mode` create also makes <dir>/models; `signal` stops ssh. */
export async function scanRemote($: Shell, r: RemoteSettings, mode: 'read' | 'create' = 'read', signal?: AbortSignal): Promise<RemoteContents> {
  const out = await runRemote($, r, SCAN, [r.dir, mode], { signal })
  if (out.exitCode !== 0) throw new Error(`cannot read the remote store ${remoteLabel(r)}: ${remoteComplaint(out)}`)
  const dir = remoteStoreDir(r)
  const store: RemoteContents = { complete: [], damaged: [], partials: [], latest: null, disk: { free_bytes: 0, total_bytes: 0 } }
  const fields = out.stdout.split('\0')
  for (let i = 0; i < fields.length; ) {
    const kind = fields[i++]
    if (kind === 'D') {
      const name = fields[i++]!
      const metaText = fields[i++]!
      if (isPartialName(name)) store.partials.push(path.posix.join(dir, name))
      const created = createdOf(name)
      if (!created) continue
      try {
        const meta = checkMeta(JSON.parse(metaText) as BackupMeta)
        store.complete.push({ name, dir: path.posix.join(dir, name), type: meta.type, created, meta })
      } catch (err) {
        store.damaged.push({ name, reason: metaText === '' ? 'backup.json missing' : `backup.json unreadable: ${(err as Error).message}` })
      }
    } else if (kind === 'L') {
      const target = fields[i++]!
      store.latest = target.includes('/') ? null : target
    } else if (kind === 'E') {
      // df -Pk: filesystem, 1024-blocks, used, available, capacity, mount point
      const df = (fields[i++] ?? '').trim().split(/\s+/)
      store.disk = { free_bytes: Number(df[3]) * 1024, total_bytes: Number(df[1]) * 1024 }
      break
    } else throw new Error(`cannot read the remote store ${remoteLabel(r)}: unexpected output ${JSON.stringify(kind)}`)
  }
  store.complete.sort((a, b) => a.name.localeCompare(b.name))
  return store
}

// Deletes backups and partial backups by name. A complete one is renamed to .partial first, as locally,
// so a delete cut short never leaves a complete-looking backup with files missing. rm never follows links.
const REMOVE = `
cd -- "$1" || exit 10
shift
for name do
  case $name in backup_*) ;; *) echo "refusing to delete $name: not a backup" >&2; exit 13 ;; esac
  [ -d "$name" ] && [ ! -L "$name" ] || continue
  doomed=$name
  case $name in
    *.partial) ;;
    *) doomed=$name.partial; mv -T -- "$name" "$doomed" || exit 14 ;;
  esac
  rm -rf -- "$doomed" || exit 15
done
`

/** Removes these backups (names, with or without .partial) from the remote store. */
export async function removeRemote($: Shell, r: RemoteSettings, names: string[]): Promise<void> {
  if (!names.length) return
  const bad = names.find((n) => bareName(n) === null)
  if (bad) throw new Error(`refusing to delete ${bad} on ${remoteHost(r)}: not a backup directory name`)
  const out = await runRemote($, r, REMOVE, [remoteStoreDir(r), ...names])
  if (out.exitCode !== 0) throw new Error(`cannot delete on ${remoteLabel(r)}: ${remoteComplaint(out)}`)
}

// Swaps latest ($4) with a temporary link and mv -T, the rename that replaces a link, in the store ($1).
const SWAP_LATEST = `
rm -f .latest.citadel-link
ln -s -- "$4" .latest.citadel-link
mv -T -- .latest.citadel-link latest
sync -f . 2>/dev/null || sync
`

// Publishes a backup sent as <name>.partial ($2): its metadata from stdin, everything synced, renamed to
// its name ($3), then latest swapped.
const PUBLISH = `
set -e
cd -- "$1"
[ -d "$2" ] && [ ! -L "$2" ] || { echo "$2 is missing on the remote host" >&2; exit 12; }
if [ -e "$3" ] || [ -L "$3" ]; then echo "$3 already exists on the remote host" >&2; exit 13; fi
cat > "$2/backup.json"
sync -f "$2" 2>/dev/null || sync
mv -T -- "$2" "$3"
${SWAP_LATEST}`

export async function publishRemote($: Shell, r: RemoteSettings, partial: string, name: string, latest: string, meta: BackupMeta): Promise<void> {
  const out = await runRemote($, r, PUBLISH, [remoteStoreDir(r), partial, name, latest], { input: metaText(meta) })
  if (out.exitCode !== 0) throw new Error(`cannot publish ${name} on ${remoteLabel(r)}: ${remoteComplaint(out)}`)
}

async function pointRemoteLatest($: Shell, r: RemoteSettings, name: string): Promise<void> {
  const out = await runRemote($, r, `set -e\ncd -- "$1"\n${SWAP_LATEST}`, [remoteStoreDir(r), '', '', name])
  if (out.exitCode !== 0) throw new Error(`cannot point latest at ${name} on ${remoteLabel(r)}: ${remoteComplaint(out)}`)
}

// Replaces one file of a backup ($2) with stdin, by a temporary file and a rename.
const REPLACE_FILE = `
set -e
cd -- "$1"
cat > ".$2.citadel-write"
mv -f -- ".$2.citadel-write" "$2"
`

async function replaceRemoteFile($: Shell, r: RemoteSettings, backup: Backup, file: string, content: string): Promise<void> {
  const out = await runRemote($, r, REPLACE_FILE, [backup.dir, file], { input: content })
  if (out.exitCode !== 0) throw new Error(`cannot write ${file} of ${backup.name} on ${remoteHost(r)}: ${remoteComplaint(out)}`)
}


// The disk's space and what the store ($1/models, made by the first send) takes on it, shared files once.
const SPACE = `
cd -- "$1" 2>/dev/null || { echo "no directory $1 on the remote host: create it (BACKUP_REMOTE)" >&2; exit 10; }
df -Pk . | tail -n 1
if [ -d models ]; then du -sk models | cut -f1; else echo 0; fi
`

// The catalog, the manifest and the verify state of a backup, each as F, its content and a NUL, or as M
// (missing or unreadable) and a NUL.
const LISTS = String.raw`
cd -- "$1" 2>/dev/null || { echo "no backup $1 on the remote host" >&2; exit 10; }
for f in files.json SHA256SUMS verify-state.json; do
  if [ -f "$f" ] && [ -r "$f" ]; then printf F; cat -- "$f" || exit 11; else printf M; fi
  printf '\0'
done
`

// Every entry under data/, NUL-separated: its kind, a value (a file's size, a link's target, another's
// type) and its path. stat and readlink are GNU coreutils; readlink's newline ends each target.
const DATA_LISTING = String.raw`
cd -- "$1/data" 2>/dev/null || { echo "no directory $1/data on the remote host" >&2; exit 10; }
find . -mindepth 1 \( -type d -printf 'd\0\0%p\0' \) -o \( -type f -exec stat --printf 'f\0%s\0%n\0' {} + \) -o \( -type l -exec sh -c 'for l do printf "l\0"; readlink -- "$l"; printf "\0%s\0" "$l"; done' sh {} + \) -o \( -exec stat --printf 'o\0%F\0%n\0' {} + \)
`

// coreutils' sha256sum -c, on the files of the manifest lines given on stdin, from the backup's data/.
const SHA256SUM_CHECK = String.raw`cd -- "$1/data" || exit 10
exec sha256sum -c --strict -`

/** The store BACKUP_REMOTE names, over ssh; `ctx` gives the shell and the signal that stops a long step. */
export function sshStore(ctx: TaskContext, r: RemoteSettings): BackupStore {
  const { $, signal } = ctx
  try {
    // Check mode writes nothing, not even the socket's directory: each command then connects on its own.
    if (!ctx.check) shareConnectionsUnder(stateDir(ctx.settings))
  } catch {
    // Without a place for the socket each command connects on its own, as it would without sharing.
  }
  const host = remoteHost(r)
  const label = remoteLabel(r)
  const run = async (script: string, args: string[], what: string, opts: Parameters<typeof runRemote>[4] = {}) => {
    const out = await runRemote($, r, script, args, { signal, ...opts })
    if (out.exitCode !== 0) throw new Error(`${what} on ${host}: ${remoteComplaint(out)}`)
    return out
  }
  return {
    label,
    host,
    pathOf: (name) => `${label}/${name}`,
    // The scan says so when BACKUP_REMOTE's directory is missing, and a send makes <dir>/models.
    missing: async () => null,
    scan: () => scanRemote($, r),
    async space() {
      const [df = '', du = ''] = (await run(SPACE, [r.dir], `cannot read the space of ${r.dir}`)).stdout.trim().split('\n')
      // df -Pk: filesystem, 1024-blocks, used, available, capacity, mount point
      const fields = df.trim().split(/\s+/)
      return { free_bytes: Number(fields[3]) * 1024, total_bytes: Number(fields[1]) * 1024, used_bytes: Number(du) * 1024 }
    },
    heldOnlyBy: () => null,
    async readLists(backup) {
      const out = await run(LISTS, [backup.dir], `cannot read ${backup.name}`)
      const [catalog, manifest, state] = out.stdout.split('\0').map((f) => (f.startsWith('F') ? f.slice(1) : null))
      const where = (file: string) => `${host}:${backup.dir}/${file}`
      const unreadable = (file: string, why: string) => ({ file, message: `${where(file)}: ${why}` })
      if (catalog == null) return unreadable(CATALOG, 'missing or unreadable')
      if (manifest == null) return unreadable(MANIFEST, 'missing or unreadable')
      try {
        return {
          catalog: parseFile(catalogSchema, where(CATALOG), catalog),
          manifest: new Map(parseManifest(manifest).map((e) => [e.path, e.sha256])),
          state: state ?? null,
          stateFile: where(VERIFY_STATE),
        }
      } catch (err) {
        const message = (err as Error).message
        return message.includes(where(CATALOG)) ? { file: CATALOG, message } : unreadable(MANIFEST, message)
      }
    },
    async listData(backup) {
      const out = await run(DATA_LISTING, [backup.dir], `cannot list ${backup.name}`)
      const entries = out.stdout.split('\0')
      const files = new Map<string, number>()
      const symlinks = new Map<string, string>()
      const kinds = new Map<string, string>()
      for (let i = 0; i + 2 < entries.length; i += 3) {
        const [kind, value, name] = [entries[i]!, entries[i + 1]!, entries[i + 2]!.replace(/^\.\//, '')]
        if (kind === 'f') files.set(name, Number(value))
        else if (kind === 'l') symlinks.set(name, value.replace(/\n$/, ''))
        kinds.set(name, kind)
      }
      const listing: DataListing = {
        files: [...files.keys()],
        dirs: [...kinds].filter(([, kind]) => kind === 'd').map(([rel]) => rel),
        symlinks,
        others: [...kinds].filter(([, kind]) => kind === 'o').map(([rel]) => rel),
        // In the words of the local store's describeEntry.
        describe: async (rel) => {
          const kind = kinds.get(rel)
          return kind === 'f' ? `a file of ${files.get(rel)} bytes` : kind === 'l' ? 'a symlink' : kind === 'd' ? 'a directory' : kind === 'o' ? 'a special file' : 'nothing'
        },
        sizes: async (rels) => rels.map((rel) => files.get(rel)!),
      }
      return listing
    },
    async hashCheck(backup, files, opts) {
      const sizes = new Map(files.map((f) => [f.rel, f.size]))
      const answers = new Map<string, string>()
      let done = 0
      const read = (line: string) => {
        const m = /^(\\?)(.*): (OK|FAILED|FAILED open or read)$/s.exec(line)
        if (!m) return
        const name = m[1] ? unescapeName(m[2]!, `sha256sum -c on ${host}`) : m[2]!
        answers.set(name, m[3]!)
        opts.onProgress((done += sizes.get(name) ?? 0))
      }
      const out = await runRemote($, r, SHA256SUM_CHECK, [backup.dir], { input: manifestBytes(files.map((f) => ({ path: f.rel, sha256: f.sha256 }))), signal: opts.signal, onLine: read })
      // 1 is sha256sum's "some files failed"; anything else means it did not check.
      if (out.exitCode > 1 || (out.exitCode === 1 && answers.size === 0)) throw new Error(`sha256sum -c on ${host} did not run: ${remoteComplaint(out)}`)
      const errors = new Map<string, string>()
      for (const line of out.stderr.split('\n')) {
        const m = /^sha256sum: (.*): ([^:]+)$/.exec(line)
        if (m) errors.set(m[1]!, m[2]!)
      }
      return files.map((f) => {
        const answer = answers.get(f.rel)
        if (answer === 'OK') return { verdict: 'match', detail: '', bytesRead: null }
        if (answer === 'FAILED') return { verdict: 'differs', detail: `sha256sum -c on ${host}: the content does not hash to ${f.sha256}`, bytesRead: null }
        return { verdict: 'unreadable', detail: `sha256sum -c on ${host}: ${errors.get(f.rel) ?? answer ?? 'no answer'}`, bytesRead: null }
      })
    },
    fetch: (backup, rels, dest, { signal: stop, onBytes, onFileDone }) =>
      rsyncCopy($, { src: `${host}:${path.posix.join(backup.dir, DATA)}`, dest, linkDest: null, rsh: rsyncRsh(r), bandwidthLimit: r.bandwidthLimit, excludes: [], only: rels, signal: stop, onBytes, onFileDone }),
    replaceFile: (backup, file, content) => replaceRemoteFile($, r, backup, file, content),
    remove: (name) => removeRemote($, r, [name]),
    pointLatest: (name) => pointRemoteLatest($, r, name),
    // The far side has no citadel to share a lock with: a second run there is the operator's to avoid.
    exclusive: (_ctx, work) => work(),
  }
}
