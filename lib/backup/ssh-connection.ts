// One ssh connection per run and host: a run that scans, sends, publishes and verifies on BACKUP_REMOTE would
// otherwise log in a dozen times. The first remote command starts a master (ssh -M) as a child of citadel
// that dies with it, its socket in a directory of this process's own under the app root's state; every later
// ssh and rsync of the run goes through it. The master ends with the process, however it ends: at exit it
// is stopped and its directory removed; after a SIGKILL the kernel kills it (pdeathsig), and the next run
// removes the directory a dead process left.
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'

interface Master { socket: string; child: ChildProcess; ready: Promise<string | null> }

const masters = new Map<string, Master>()
let socketDir: string | null = null
/** A Unix socket's path holds at most 107 bytes; ssh adds a random suffix while it binds. */
const SOCKET_PATH_MAX = 90

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/**
 * Where this process keeps its masters' sockets: `<state>/ssh-<pid>`, private to it. Directories of
 * processes that are gone are removed first: a socket left there would only refuse connections.
 */
export function shareConnectionsUnder(stateDir: string): void {
  if (socketDir) return
  for (const name of readdirSync(stateDir).filter((n) => /^ssh-\d+$/.test(n))) {
    if (!alive(Number(name.slice(4)))) rmSync(path.join(stateDir, name), { recursive: true, force: true })
  }
  const dir = path.join(stateDir, `ssh-${process.pid}`)
  if (path.join(dir, 'x'.repeat(40)).length > SOCKET_PATH_MAX) return
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  socketDir = dir
  process.once('exit', closeAll)
}

function closeAll(): void {
  for (const m of masters.values()) m.child.kill('SIGTERM')
  masters.clear()
  if (socketDir) rmSync(socketDir, { recursive: true, force: true })
  socketDir = null
}

/** The options that send an ssh through the master for `key`, once it is up; none otherwise. */
export function viaMaster(key: string): string[] {
  const m = masters.get(key)
  return m && m.child.exitCode === null && m.child.signalCode === null && statSync(m.socket, { throwIfNoEntry: false })?.isSocket()
    ? ['-o', `ControlPath=${m.socket.replaceAll('%', '%%')}`, '-o', 'ControlMaster=no']
    : []
}

/**
 * Starts the master for `key` (user@host:port) with these ssh options, unless one is up; resolves once its
 * socket is there, with null, or with ssh's last line of complaint when it could not connect. Without a
 * socket directory (shareConnectionsUnder not called, or its path too long) it does nothing.
 */
export function startMaster(key: string, options: string[], host: string, connectTimeoutS: number): Promise<string | null> {
  const running = masters.get(key)
  if (running && running.child.exitCode === null && running.child.signalCode === null) return running.ready
  if (!socketDir) return Promise.resolve(null)
  const socket = path.join(socketDir, `${masters.size}-${key.replace(/[^A-Za-z0-9.@-]/g, '_')}`.slice(0, 40))
  rmSync(socket, { force: true })
  // Its complaints go to a file, not a pipe: a pipe would keep this process from exiting while the master lives.
  const log = `${socket}.log`
  const fd = openSync(log, 'w', 0o600)
  const child = spawn('setpriv', [...DIES_WITH_CITADEL.slice(2), 'ssh', ...options, '-M', '-N', '-o', 'ControlPersist=no', '-o', `ControlPath=${socket.replaceAll('%', '%%')}`, '--', host], { stdio: ['ignore', 'ignore', fd] })
  closeSync(fd)
  child.unref()
  const exited = new Promise<string>((resolve) => child.once('exit', (code) => resolve(readFileSync(log, 'utf8').trim().split('\n').at(-1) || `ssh exited ${code}`)))
  const ready = (async () => {
    const deadline = Date.now() + (connectTimeoutS + 5) * 1000
    while (Date.now() < deadline) {
      if (statSync(socket, { throwIfNoEntry: false })?.isSocket()) return null
      const why = await Promise.race([exited, sleep(25).then(() => null)])
      if (why !== null) return why
    }
    child.kill('SIGTERM')
    return `no connection within ${connectTimeoutS + 5}s`
  })()
  masters.set(key, { socket, child, ready })
  child.once('exit', () => {
    if (masters.get(key)?.child === child) masters.delete(key)
  })
  return ready
}
