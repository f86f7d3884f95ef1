// A private sshd on a loopback port, with its own generated host and client keys, for the remote backup
// tests: nothing of the system's ssh configuration is read or changed.
import { spawn, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterEach } from 'vitest'

const SSHD = '/usr/sbin/sshd'

/** Why the ssh tests cannot run here, or null. sshd must run as root to log a user in. */
export const sshdMissing: string | null =
  !existsSync(SSHD) ? `skipped: ${SSHD} is missing (apt-get install openssh-server)`
  : process.getuid?.() !== 0 ? 'skipped: needs root, to run a private sshd that logs in as root'
  : null

export interface Sshd {
  port: number
  /** How many times a client has logged in so far. */
  logins(): number
  /** The settings that reach this sshd; BACKUP_REMOTE points at `remoteDir`. */
  env: Record<string, string>
}

const running: (() => void)[] = []
afterEach(() => {
  for (const stop of running.splice(0)) stop()
})

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

export async function startSshd(remoteDir: string): Promise<Sshd> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-sshd-'))
  const key = (name: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', path.join(dir, name)])
  key('host_key')
  key('client_key')
  writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(path.join(dir, 'client_key.pub')))
  const port = await freePort()
  writeFileSync(path.join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${readFileSync(path.join(dir, 'host_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ')}\n`)
  writeFileSync(path.join(dir, 'sshd_config'), [
    `Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${dir}/host_key`, `AuthorizedKeysFile ${dir}/authorized_keys`, `PidFile ${dir}/sshd.pid`,
    'PermitRootLogin prohibit-password', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no', 'UsePAM no', 'StrictModes no',
    // bash started by sshd sources ~/.bashrc unless SHLVL says it is nested; a developer's .bashrc (pyenv,
    // nvm) can cost a second per command, which is not what these tests measure.
    'SetEnv SHLVL=1', '',
  ].join('\n'))
  // sshd insists on its privilege separation directory, which the package's boot-time setup makes.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 })
  const sshd = spawn(SSHD, ['-D', '-e', '-f', path.join(dir, 'sshd_config')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let log = ''
  await new Promise<void>((resolve, reject) => {
    sshd.stderr!.on('data', (chunk: Buffer) => {
      log += chunk.toString()
      if (log.includes('Server listening')) resolve()
    })
    sshd.on('exit', (code) => reject(new Error(`sshd exited ${code}: ${log}`)))
  })
  running.push(() => {
    sshd.kill()
    rmSync(dir, { recursive: true, force: true })
  })
  return {
    port,
    logins: () => log.split('\n').filter((line) => line.includes('Accepted publickey')).length,
    env: {
      BACKUP_REMOTE: `root@127.0.0.1:${remoteDir}`,
      BACKUP_SSH_PORT: String(port),
      BACKUP_SSH_IDENTITY: path.join(dir, 'client_key'),
      BACKUP_SSH_KNOWN_HOSTS: path.join(dir, 'known_hosts'),
      BACKUP_SSH_STRICT_HOST_KEY_CHECKING: 'yes',
    },
  }
}
