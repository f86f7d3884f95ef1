// The off-host backup store, BACKUP_REMOTE, reached with ssh and rsync. The far side needs nothing of
// citadel: a POSIX sh, rsync and GNU coreutils (sha256sum, stat, mv -T, df, du). Each remote step is a
// fixed sh script whose values arrive as positional parameters, single-quoted for the remote shell,
// because ssh hands the far side one command string, not an argument vector.
import path from 'node:path'
import type { Shell } from 'zx/core'
import type { RemoteSettings } from '../infra/config.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { checkMeta, createdOf, isPartialName, metaText, removeLeftover, type Backup, type BackupMeta, type Store } from './store.ts'
import { shellQuote } from '../infra/quote.ts'
import { decodeName } from '../infra/fsx.ts'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'

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

/** ssh's options: never a password prompt, a bounded wait for the host, a dead link noticed in a minute. */
export function sshOptions(r: RemoteSettings): string[] {
  return [
    '-p', String(r.port),
    '-o', 'BatchMode=yes',
    '-o', 'ConnectTimeout=15',
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

export interface RemoteOutput { exitCode: number; stdout: string; stderr: string }

/**
 * Runs `script` with `sh -c` on the remote host, `args` as $1, $2, ...; throws, naming the host and ssh's
 * reason, when ssh itself fails. The script's own exit status and output are the caller's to read. Its
 * stdout holds file names, which are bytes: it is decoded as they are (decodeName), line by line for onLine.
 */
export async function runRemote($: Shell, r: RemoteSettings, script: string, args: string[], opts: { input?: string | Buffer; signal?: AbortSignal; onLine?: (line: string) => void } = {}): Promise<RemoteOutput> {
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
    throw new Error(`cannot reach the remote backup host ${remoteHost(r)} on port ${r.port}: ${why}`)
  }
  return { exitCode: out.exitCode ?? 1, stdout: decodeName(Buffer.concat(chunks)), stderr: out.stderr }
}

/** The last line the remote script wrote to stderr: its own message of what was wrong. */
export const remoteComplaint = (out: RemoteOutput) => out.stderr.trim().split('\n').at(-1) || `exit ${out.exitCode}`

export interface RemoteStore extends Store {
  disk: { free_bytes: number; total_bytes: number }
  /** What all backups take on the remote disk, shared files once (du); only when asked for. */
  bytes_on_disk: number | null
}

// Lists every backup_* directory with its metadata, where latest points and the disk's space; with $2 = du
// also the store's size. Fields are NUL-separated: no name or JSON text holds a NUL. A missing store is
// an empty one; a missing remote directory is an error, as a missing backup disk is locally.
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
[ "$2" = du ] && printf 'U\\0%s\\0' "$(du -sk . | cut -f1)"
printf 'E\\0'
df -Pk . | tail -n 1
`

/** Reads the remote store; `mode` create also makes <dir>/models, du also sums the store's size. */
export async function scanRemote($: Shell, r: RemoteSettings, mode: 'read' | 'create' | 'du' = 'read'): Promise<RemoteStore> {
  const out = await runRemote($, r, SCAN, [r.dir, mode])
  if (out.exitCode !== 0) throw new Error(`cannot read the remote store ${remoteLabel(r)}: ${remoteComplaint(out)}`)
  const dir = remoteStoreDir(r)
  const store: RemoteStore = { complete: [], damaged: [], partials: [], latest: null, disk: { free_bytes: 0, total_bytes: 0 }, bytes_on_disk: null }
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
    } else if (kind === 'U') store.bytes_on_disk = Number(fields[i++]) * 1024
    else if (kind === 'E') {
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
  const bad = names.find((n) => !isPartialName(n) && !createdOf(n))
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

export async function pointRemoteLatest($: Shell, r: RemoteSettings, name: string): Promise<void> {
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

export async function replaceRemoteFile($: Shell, r: RemoteSettings, backup: Backup, file: string, content: string): Promise<void> {
  const out = await runRemote($, r, REPLACE_FILE, [backup.dir, file], { input: content })
  if (out.exitCode !== 0) throw new Error(`cannot write ${file} of ${backup.name} on ${remoteHost(r)}: ${remoteComplaint(out)}`)
}

/**
 * Runs a remote task's work with BACKUP_REMOTE, failing with one clear line when it is not set or the host
 * cannot be reached; an interrupt goes on to the runner, which reports it.
 */
export async function withRemote(ctx: TaskContext, work: (r: RemoteSettings) => Promise<TaskResult>): Promise<TaskResult> {
  const r = ctx.settings.backup.remote
  if (!r) return ctx.fail('BACKUP_REMOTE is not set: set it to [user@]host:/absolute/path to keep backups off this host')
  try {
    return await work(r)
  } catch (err) {
    if (ctx.signal.aborted) throw err
    return ctx.fail((err as Error).message)
  }
}

/** Removes what interrupted sends and deletes left in the remote store, saying so once done. */
export async function removeRemotePartials(ctx: TaskContext, r: RemoteSettings, store: Store): Promise<void> {
  for (const dir of store.partials) {
    const name = path.posix.basename(dir)
    await removeLeftover(ctx, `${name} on ${remoteHost(r)} was left by an interrupted send or cleanup`, `${remoteHost(r)}:${dir}`, () => removeRemote(ctx.$, r, [name]))
  }
}
