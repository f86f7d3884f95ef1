// Thin wrappers around system tools (getent, findmnt) and processes that return parsed data and throw errors naming
// the command. They take the caller's `$` so every command lands in the run log.
import { readdirSync, readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Shell } from 'zx/core'

export interface Owner { uid: number; gid: number }

/** Resolves user[:group] to ids; the group defaults to the user's primary group. */
export async function resolveOwner($: Shell, owner: { user: string; group?: string }): Promise<Owner> {
  let uid: number
  let gid: number | undefined
  if (/^\d+$/.test(owner.user)) uid = Number(owner.user)
  else {
    const entry = await $({ nothrow: true })`getent passwd ${owner.user}`
    if (entry.exitCode !== 0) throw new Error(`user "${owner.user}" does not exist (getent passwd exit ${entry.exitCode})`)
    const fields = entry.stdout.trim().split(':')
    uid = Number(fields[2])
    gid = Number(fields[3])
  }
  if (owner.group !== undefined) {
    if (/^\d+$/.test(owner.group)) gid = Number(owner.group)
    else {
      const entry = await $({ nothrow: true })`getent group ${owner.group}`
      if (entry.exitCode !== 0) throw new Error(`group "${owner.group}" does not exist (getent group exit ${entry.exitCode})`)
      gid = Number(entry.stdout.trim().split(':')[2])
    }
  }
  if (gid === undefined) throw new Error(`numeric user ${uid} needs a group too, as uid:gid`)
  return { uid, gid }
}

export interface Mount { target: string; source: string; fstype: string }

/** The mount that holds `path` (findmnt --target), following the path's symlinks as the kernel does. */
export async function mountOf($: Shell, path: string): Promise<Mount> {
  const out = await $`findmnt --json --output TARGET,SOURCE,FSTYPE --target ${path}`
  const fs = (JSON.parse(out.stdout) as { filesystems: { target: string; source: string; fstype: string }[] }).filesystems[0]
  if (!fs) throw new Error(`findmnt found no mount for ${path}`)
  return { target: fs.target, source: fs.source, fstype: fs.fstype }
}

/** How long the processes of an aborted command get to end on their own before they are killed. */
const ABORT_GRACE_MS = 500

/**
 * Whether a process of the group `pgid` is still running. A zombie is not: it writes nothing, and waits only
 * for whoever reaps it, which for the orphaned forks of a command is the system's init, in its own time.
 */
function groupRunning(pgid: number): boolean {
  try {
    process.kill(-pgid, 0)
  } catch {
    return false
  }
  let pids: string[]
  try {
    pids = readdirSync('/proc').filter((name) => /^\d+$/.test(name))
  } catch {
    return true
  }
  return pids.some((pid) => {
    try {
      // After the command's name in parentheses (which may hold anything): state, ppid, pgrp, ...
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return Number(fields[2]) === pgid && fields[0] !== 'Z'
    } catch {
      return false
    }
  })
}

/**
 * Resolves once no process of the group `pgid` is left running. A long command (rsync, fio) runs detached in
 * its own group; after an abort its files are cleaned up only when nothing is left to write into them. The
 * group gets ABORT_GRACE_MS to end after the signal the abort sent, then SIGKILL: rsync's forks otherwise
 * wait about two seconds for a connection to their parent, which is gone, and Ctrl-C should not.
 */
export async function processGroupGone(pgid: number): Promise<void> {
  const killAt = Date.now() + ABORT_GRACE_MS
  while (groupRunning(pgid)) {
    if (Date.now() >= killAt) {
      try {
        process.kill(-pgid, 'SIGKILL')
      } catch {
        return
      }
    }
    await sleep(20)
  }
}
