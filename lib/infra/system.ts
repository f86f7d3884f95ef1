// Thin wrappers around system tools (getent, findmnt) and processes that return parsed data and throw errors naming
// the command. They take the caller's `$` so every command lands in the run log.
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

/**
 * Resolves once no process of the group `pgid` is left. A long command (rsync, fio) runs detached in its
 * own group; after an abort its files are cleaned up only when nothing is left to write into them.
 */
export async function processGroupGone(pgid: number): Promise<void> {
  for (;;) {
    try {
      process.kill(-pgid, 0)
    } catch {
      return
    }
    await sleep(20)
  }
}
