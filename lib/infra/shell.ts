// The one way citadel runs external commands: zx, quiet, with every command and its exit status in the
// run log. Arguments are always interpolated (zx quotes them); nothing builds a command string by hand.
import { $, type Shell } from 'zx/core'

/**
 * Put first in a long-running command (rsync, fio, ssh): the kernel kills it with SIGKILL when citadel dies,
 * even by SIGKILL, so nothing is left writing into what the next run cleans up (PR_SET_PDEATHSIG through
 * setpriv of util-linux). `exec` makes it citadel's own child instead of the shell's: the signal follows the
 * death of the parent, and a shell would outlive citadel. A citadel that died before setpriv set the signal
 * would leave it unset: the command then runs only if its parent is still this process. Its own forks do
 * not inherit the signal: rsync's receiver and generator exit when their pipe to it closes; fio runs its
 * jobs as threads.
 */
export const DIES_WITH_CITADEL = ['exec', 'setpriv', '--pdeathsig', 'KILL', 'bash', '-c', '[ "$PPID" = "$0" ] && exec "$@"', String(process.pid)]

export type CommandLog = (fields: { cmd: string; exitCode: number | null; signal: string | null; ms: number }) => void

export function makeShell(record: CommandLog): Shell {
  const started = new Map<string, string>()
  return $({
    quiet: true,
    verbose: false,
    // zx runs commands through bash, and Debian's bash sources ~/.bashrc when its stdin is a socket
    // (libuv's pipes are) and SHLVL is below 2: SHLVL=1 keeps an operator's shell setup out of every
    // command. LC_ALL=C keeps tool output parseable.
    env: { ...process.env, LC_ALL: 'C', SHLVL: '1' },
    log: (entry) => {
      if (entry.kind === 'cmd') started.set(entry.id, entry.cmd)
      else if (entry.kind === 'end') {
        record({ cmd: started.get(entry.id) ?? '?', exitCode: entry.exitCode, signal: entry.signal, ms: Math.round(entry.duration) })
        started.delete(entry.id)
      }
    },
  })
}
