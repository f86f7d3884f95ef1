// The one way citadel runs external commands: zx, quiet, with every command and its exit status in the
// run log. Arguments are always interpolated (zx quotes them); nothing builds a command string by hand.
import { $, type Shell } from 'zx/core'

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
