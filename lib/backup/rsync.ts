// Copies a tree with rsync for a backup: archive mode with hard links, symlinks copied as symlinks,
// unchanged files hard-linked to the previous backup, and progress parsed from --info=progress2.
import type { Shell } from 'zx/core'
import { encodeName } from '../infra/fsx.ts'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'
import { processGroupGone } from '../infra/system.ts'

/**
 * What is never a model, one rule for rsync and one for citadel's own walk of the source, so the space
 * check and the copy agree: interrupted Hugging Face downloads and citadel's temporary siblings.
 */
const EXCLUDES: { pattern: string; matches: (name: string, isDir: boolean) => boolean }[] = [
  { pattern: '*.incomplete', matches: (name) => name.endsWith('.incomplete') },
  { pattern: '.locks/', matches: (name, isDir) => isDir && name === '.locks' },
  { pattern: '.*.citadel-*', matches: (name) => name.startsWith('.') && name.includes('.citadel-') },
]

export const excluded = (name: string, isDir: boolean) => EXCLUDES.some((e) => e.matches(name, isDir))

/** rsync's --exclude options for what is never a model, for an rsync run outside rsyncCopy (a listing). */
export const excludeOptions = () => EXCLUDES.map((e) => `--exclude=${e.pattern}`)

/** Exit 24: some source files vanished during the copy. The rest is a complete copy. */
export const RSYNC_VANISHED = 24

const EXIT_MEANING: Record<number, string> = {
  1: 'syntax or usage error', 2: 'protocol incompatibility', 3: 'errors selecting input/output files or directories',
  10: 'error in socket I/O', 11: 'error in file I/O', 12: 'error in rsync protocol data stream', 13: 'errors with program diagnostics',
  20: 'received SIGUSR1 or SIGINT', 23: 'partial transfer due to error', 30: 'timeout in data send/receive', 35: 'timeout waiting for daemon connection',
}

export interface CopyResult { exitCode: number; warnings: string[]; error: string | null }

export interface CopyRequest {
  src: string
  /** A local path, or host:path with `rsh` set. */
  dest: string
  /** Absolute path of the previous backup's data/, for incrementals (on the destination's host). */
  linkDest: string | null
  /** The ssh command line for rsync's -e, to copy to a remote host. */
  rsh?: string
  /** KiB/s, for a copy over a network link that others share. */
  bandwidthLimit?: number
  /** Patterns to leave out instead of what is never a model (a backup sent on keeps its own rules). */
  excludes?: string[]
  /**
   * Copies only these entries (paths relative to src; a directory without what it holds), each whole and
   * afresh, even one that looks up to date. One gone since the list was made is left out, as it would be
   * from a walk of the tree begun now.
   */
  only?: string[]
  /**
   * Continues what an interrupted copy left: a file cut short is appended to in place, then checked whole
   * against the source's checksum (--append-verify), so a kill, even SIGKILL, loses nothing already written.
   */
  resume?: true
  /** Copies what symlinks point at instead of the links: a tree of plain files (a Hugging Face snapshot). */
  copyLinks?: true
  signal: AbortSignal
  onBytes: (bytes: number) => void
  /**
   * Called with each regular file (its path as rsync names it, relative to dest) once it is in place under
   * its final name, while the copy goes on: for work that can overlap the copy, such as hashing it.
   */
  onFileDone?: (rel: string) => void
}

/** The line --out-format writes per file: with %b in it rsync writes it once the file's data is received. */
const DONE = 'citadel-done '

/** Runs rsync SRC/ DEST/; resolves with its exit status, the vanished-file warnings, or the error. */
export async function rsyncCopy($: Shell, req: CopyRequest): Promise<CopyResult> {
  const linkDest = req.linkDest === null ? [] : [`--link-dest=${req.linkDest}`]
  const excludes = req.excludes ? req.excludes.map((pattern) => `--exclude=${pattern}`) : excludeOptions()
  // --protect-args keeps the remote shell from splitting or expanding the paths and options sent over.
  const remote = req.rsh === undefined ? [] : ['--protect-args', '--rsh', req.rsh]
  const limit = req.bandwidthLimit ? [`--bwlimit=${req.bandwidthLimit}`] : []
  const only = req.only ? ['--ignore-times', '--whole-file', '--ignore-missing-args', '--from0', '--files-from=-'] : []
  const announce = req.onFileDone ? [`--out-format=${DONE}%b %n`] : []
  const resume = req.resume ? ['--partial', '--append-verify'] : []
  const copyLinks = req.copyLinks ? ['--copy-links'] : []
  // --no-h prints plain digits; LC_ALL=C (set for every command) keeps the number format fixed. Device
  // nodes, FIFOs and sockets are never model files: the backup holds files, directories and links only,
  // all of which its catalog records and verify checks.
  // Its own process group, so an abort stops rsync and the processes it forks; and it dies with citadel.
  const copy = $({ signal: req.signal, nothrow: true, detached: true, input: req.only && encodeName(req.only.join('\0')) })`${DIES_WITH_CITADEL} rsync --archive --no-devices --no-specials --hard-links --numeric-ids --info=progress2 --no-h --no-inc-recursive ${remote} ${limit} ${linkDest} ${excludes} ${only} ${announce} ${resume} ${copyLinks} -- ${req.src + '/'} ${req.dest + '/'}`
  let pending = ''
  // rsync's receiver logs a file before it renames it into place, and takes the files one at a time: a file
  // is final once the next one is logged, or once rsync is done.
  let received: string | null = null
  copy.stdout.on('data', (chunk: Buffer) => {
    const lines = (pending + chunk.toString()).split(/[\r\n]/)
    pending = lines.pop() ?? ''
    for (const line of lines) {
      const m = /^\s*(\d+)\s+\d+%/.exec(line)
      if (m) req.onBytes(Number(m[1]))
      const done = line.startsWith(DONE) ? /^(\d+) (.*[^/])$/.exec(line.slice(DONE.length)) : null
      if (!done || done[1] === '0') continue
      if (received !== null) req.onFileDone?.(received)
      received = done[2]!
    }
  })
  const out = await copy
  if (received !== null && out.exitCode === 0 && !req.signal.aborted) req.onFileDone?.(received)
  if (req.signal.aborted) {
    // The caller deletes what rsync wrote next: only once nothing of rsync is left to write into it.
    if (copy.child?.pid) await processGroupGone(copy.child.pid)
    throw req.signal.reason
  }
  const stderr = out.stderr.split('\n').filter(Boolean)
  const exitCode = out.exitCode ?? 1
  if (exitCode === 0 || exitCode === RSYNC_VANISHED) return { exitCode, warnings: stderr.filter((l) => l.startsWith('file has vanished: ')), error: null }
  const cause = stderr.filter((l) => !/^rsync error:/.test(l)).slice(-2).join('; ') || stderr.at(-1) || 'no message'
  return { exitCode, warnings: [], error: `rsync exit ${exitCode} (${EXIT_MEANING[exitCode] ?? 'see man rsync'}): ${cause}` }
}

