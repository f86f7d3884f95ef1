// Exchanging two directory entries in one step, for activations that must never leave a name empty.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { fsPath, fsyncDir } from './fsx.ts'
import { makeShell } from './shell.ts'

// renameat2(2)'s number on the architectures citadel runs on; elsewhere exchange() says it cannot.
const RENAMEAT2: Partial<Record<string, number>> = { x64: 316, arm64: 276 }
// Node has no binding for renameat2; perl, essential on Debian and Ubuntu, makes the raw system call. The
// paths travel as hex so that names that are not UTF-8 arrive as the bytes they are. Exit 3: cannot here.
const EXCHANGE = 'my ($a, $b) = map { pack "H*", $_ } @ARGV[1, 2]; exit 0 if syscall($ARGV[0] + 0, -100, $a, -100, $b, 2) == 0; print STDERR "$!\n"; exit(($!{EINVAL} || $!{ENOSYS} || $!{EOPNOTSUPP}) ? 3 : 1)'

/**
 * Swaps two entries of one filesystem in one step (renameat2 with RENAME_EXCHANGE), so neither name is
 * missing at any instant, even to a kill between two renames. Returns false, changing nothing, where the
 * machine, the kernel or the filesystem cannot; throws for anything else.
 */
export async function exchange(a: string, b: string): Promise<boolean> {
  const nr = RENAMEAT2[process.arch]
  if (nr === undefined) return false
  const hex = (p: string) => Buffer.from(fsPath(p)).toString('hex')
  // Also run by a journal's rollback, which has no run log to write the command to.
  const swap = await makeShell(() => {})({ nothrow: true })`perl -e ${EXCHANGE} ${nr} ${hex(a)} ${hex(b)}`
  if (swap.exitCode === 3 || swap.exitCode === 127) return false
  if (swap.exitCode !== 0) throw new Error(`cannot exchange ${a} and ${b}: ${swap.stderr.trim() || `perl exited ${swap.exitCode}`}`)
  await fsyncDir(path.dirname(a))
  if (path.dirname(b) !== path.dirname(a)) await fsyncDir(path.dirname(b))
  return true
}

/** Whether exchange() works in `dir`: tried on two empty directories of its own there, removed after. */
export async function canExchange(dir: string): Promise<boolean> {
  const probe = await fs.mkdtemp(path.join(dir, '.citadel-exchange-'))
  try {
    await fs.mkdir(path.join(probe, 'a'))
    await fs.mkdir(path.join(probe, 'b'))
    return await exchange(path.join(probe, 'a'), path.join(probe, 'b'))
  } finally {
    await fs.rm(probe, { recursive: true, force: true })
  }
}
