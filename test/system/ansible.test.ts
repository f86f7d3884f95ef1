// The Ansible role in ansible/, run for real with ansible-playbook against localhost (ansible_connection=local)
// on temporary roots: install (rsync of the checkout, npm ci), the host's .env, `citadel run --json` mapped to
// Ansible's changed/failed with citadel's recap shown, --check mapped to citadel --check, and a failing run.
// Skipped, saying why, without ansible-playbook or the ansible.posix collection (Debian: apt-get install ansible).
import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parse as parseDotenv } from 'dotenv'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PROJECT, snapshot } from '../helpers.ts'

/** Why these tests cannot run here, or '' when they can; and the Python that runs Ansible. */
function probe(): { skip: string; python: string } {
  // Even --version makes Ansible's temporary directory: a throwaway one, not ~/.ansible.
  const home = mkdtempSync(path.join(os.tmpdir(), 'citadel-ansible-probe-'))
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ANSIBLE_HOME: home, ANSIBLE_LOCAL_TEMP: path.join(home, 'tmp') }
  try {
    const version = spawnSync('ansible-playbook', ['--version'], { encoding: 'utf8', env })
    if (version.error || version.status !== 0) return { skip: 'ansible-playbook not found (Debian: apt-get install ansible)', python: '' }
    const python = /python version = .*\((\/[^)]+)\)/.exec(version.stdout)?.[1] ?? 'python3'
    const doc = spawnSync('ansible-doc', ['-t', 'module', '-j', 'ansible.posix.synchronize'], { encoding: 'utf8', env })
    if (!doc.stdout?.includes('synchronize')) return { skip: 'the ansible.posix collection is missing (Debian: apt-get install ansible, or ansible-galaxy collection install ansible.posix)', python }
    if (spawnSync('rsync', ['--version']).error) return { skip: 'rsync not found (apt-get install rsync)', python }
    return { skip: '', python }
  } finally {
    rmSync(home, { recursive: true, force: true })
  }
}

const { skip, python } = probe()

/** What the role copies of the checkout; the rest (and each host's .env) never leaves the controller. */
const EXCLUDED = ['.git', 'node_modules', '.env', 'demo', 'coverage']

interface Play {
  code: number | null
  output: string
  seconds: number
  /** PLAY RECAP per host: ok, changed, unreachable, failed, skipped, rescued, ignored. */
  recap: Record<string, Record<string, number>>
  /** Per task title, per host: ok, changed, fatal, skipping. */
  tasks: Record<string, Record<string, string>>
  /** citadel's recap lines per host, as the role's "citadel recap" task printed them. */
  citadel: Record<string, string[]>
}

function parsePlay(output: string): Pick<Play, 'recap' | 'tasks' | 'citadel'> {
  const recap: Play['recap'] = {}
  const tasks: Play['tasks'] = {}
  const citadel: Play['citadel'] = {}
  const lines = output.split('\n')
  let task = ''
  let inRecap = false
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    const header = /^TASK \[(.+)\] \**$/.exec(line)
    if (header) task = header[1]!
    if (line.startsWith('PLAY RECAP')) inRecap = true
    const status = /^(ok|changed|fatal|failed|skipping): \[([^\]]+)\]/.exec(line)
    if (status && task) (tasks[task] ??= {})[status[2]!] = status[1]!
    if (status && task === 'citadel : citadel recap' && line.endsWith('=> {')) {
      const end = lines.indexOf('}', i)
      citadel[status[2]!] = JSON.parse(lines.slice(i, end + 1).join('\n').replace(/^[^{]*/, '')).msg
    }
    const counts = inRecap && /^(\S+)\s+:\s+(ok=.*)$/.exec(line)
    if (counts) recap[counts[1]!] = Object.fromEntries([...counts[2]!.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]))
  }
  return { recap, tasks, citadel }
}

/** The status each host's `citadel run` task got (its title carries the playbook and --check). */
const runStatus = (play: Play, host = 'localhost') =>
  Object.entries(play.tasks).find(([title]) => title.startsWith('citadel : citadel run '))?.[1][host]

describe(`the Ansible role (ansible/)${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let base = ''
  let source = ''
  let install = ''
  const roots = { app: '', models: '', backup: '' }
  const timings: string[] = []

  beforeAll(() => {
    if (skip) return
    base = mkdtempSync(path.join(os.tmpdir(), 'citadel-ansible-'))
    // A still copy of the checkout: the role copies from it (its default citadel_source_dir, the checkout
    // holding the role), so edits made to the working tree while the tests run cannot change a second run.
    source = path.join(base, 'source')
    cpSync(PROJECT, source, { recursive: true, filter: (src) => !EXCLUDED.includes(path.relative(PROJECT, src)) })
    // Things that must never reach a host.
    writeFileSync(path.join(source, '.env'), 'CITADEL_APP_ROOT=/controller/only\n')
    mkdirSync(path.join(source, 'node_modules', 'from-the-controller'), { recursive: true })
    mkdirSync(path.join(source, '.git'))
    install = path.join(base, 'install')
    for (const name of ['app', 'models', 'backup'] as const) roots[name] = path.join(base, 'roots', name)
    mkdirSync(roots.models, { recursive: true })
    mkdirSync(roots.backup, { recursive: true })
    for (const dir of ['ansible', 'bin', 'npm-logs']) mkdirSync(path.join(base, dir))
  })

  afterAll(() => {
    if (timings.length) console.log(`ansible-playbook runs:\n  ${timings.join('\n  ')}`)
    if (base) rmSync(base, { recursive: true, force: true })
  })

  const settingsOf = (extra: Record<string, unknown> = {}) => ({
    CITADEL_APP_ROOT: roots.app,
    CITADEL_MODELS_ROOT: roots.models,
    CITADEL_BACKUP_ROOT: roots.backup,
    // Quotes of every kind, a comment sign and a $: written so that dotenv reads exactly this back.
    STORAGE_MONITOR_ALERT_COMMAND: `jq -r '.message' | mail -s "citadel alert on $(hostname)" ops@example.com # not a comment`,
    MODEL_AUTO_BACKUP: false,
    ...extra,
  })

  /** Runs ansible/site.yml of the copy against localhost with these host variables. */
  async function play(label: string, hostVars: Record<string, unknown>, args: string[] = []): Promise<Play> {
    const inventory = path.join(base, 'inventory.json')
    const localhost = {
      ansible_connection: 'local',
      ansible_python_interpreter: '{{ ansible_playbook_python }}',
      ansible_become: false,
      citadel_install_dir: install,
      citadel_bin_link: path.join(base, 'bin', 'citadel'),
      ...hostVars,
    }
    writeFileSync(inventory, JSON.stringify({ citadel: { hosts: { localhost } } }, null, 2))
    const tmp = path.join(base, 'ansible')
    const env = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? base, // npm's cache: npm ci installs from it when it can
      LANG: 'C.UTF-8',
      ANSIBLE_NOCOLOR: '1',
      ANSIBLE_FORCE_COLOR: '0',
      ANSIBLE_LOCALHOST_WARNING: 'False',
      ANSIBLE_INVENTORY_UNPARSED_WARNING: 'False',
      ANSIBLE_RETRY_FILES_ENABLED: 'False',
      ANSIBLE_HOME: path.join(tmp, 'home'),
      ANSIBLE_LOCAL_TEMP: path.join(tmp, 'local'),
      ANSIBLE_REMOTE_TEMP: path.join(tmp, 'remote'),
      npm_config_logs_dir: path.join(base, 'npm-logs'),
      npm_config_update_notifier: 'false',
    }
    const started = Date.now()
    const child = spawn('ansible-playbook', ['-i', inventory, path.join(source, 'ansible', 'site.yml'), ...args], { cwd: base, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d) => (output += d))
    child.stderr.on('data', (d) => (output += d))
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
    const seconds = (Date.now() - started) / 1000
    const parsed = parsePlay(output)
    const recapLines = output.slice(output.lastIndexOf('PLAY RECAP')).split('\n').slice(1).filter((l) => / : ok=/.test(l))
    timings.push(`${label}: ${seconds.toFixed(1)} s, exit ${code}\n    ${recapLines.map((l) => l.trimEnd()).join('\n    ')}`)
    return { code, output, seconds, ...parsed }
  }

  it('quotes every setting so that dotenv, as citadel reads .env, gets it back unchanged', (ctx) => {
    if (skip) return ctx.skip(skip)
    const values = ['plain', '', ' padded ', "it's", 'say "hi"', "it's `x`", 'it\'s "x"', 'two\nlines', 'ends with \\', 'a \\n b', '$HOME #x', "'", '`', '"', '=', 'é ü']
    const refused = ['\'`"', 'a\rb', 'nul\0']
    const script = `
import json, sys
sys.path.insert(0, sys.argv[1])
from citadel import dotenv_quote
from ansible.errors import AnsibleFilterError
out = []
for v in json.load(sys.stdin):
    try:
        out.append({'ok': dotenv_quote(v, 'X')})
    except AnsibleFilterError as e:
        out.append({'error': str(e)})
print(json.dumps(out))`
    const run = spawnSync(python, ['-c', script, path.join(PROJECT, 'ansible', 'roles', 'citadel', 'filter_plugins')], {
      input: JSON.stringify([...values, ...refused]),
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONDONTWRITEBYTECODE: '1', ANSIBLE_HOME: path.join(base, 'ansible', 'home'), ANSIBLE_LOCAL_TEMP: path.join(base, 'ansible', 'local') },
    })
    expect(run.status, run.stderr).toBe(0)
    const quoted: { ok?: string; error?: string }[] = JSON.parse(run.stdout)
    const file = values.map((_, i) => `V${i}=${quoted[i]!.ok}`).join('\n') + '\n'
    expect(parseDotenv(file)).toEqual(Object.fromEntries(values.map((v, i) => [`V${i}`, v])))
    expect(quoted.slice(values.length).map((q) => q.error)).toEqual([expect.stringContaining('cannot be written'), expect.stringContaining('carriage return'), expect.stringContaining('NUL')])
  })

  it('installs citadel, writes .env and runs initial-setup (changed); a second run changes nothing', async (ctx) => {
    if (skip) return ctx.skip(skip)
    const first = await play('first run (initial-setup, with npm ci)', { citadel_playbook: 'initial-setup', citadel_settings: settingsOf() })
    expect(first.code, first.output).toBe(0)
    expect(first.recap.localhost).toMatchObject({ failed: 0, unreachable: 0 })
    expect(first.recap.localhost!.changed).toBeGreaterThanOrEqual(1)
    expect(runStatus(first)).toBe('changed')
    const recap = first.citadel.localhost!
    expect(recap).toContainEqual(expect.stringMatching(/^changed  create-dirs: /))
    expect(recap).toContainEqual(expect.stringMatching(/^changed  create-symlinks: /))
    expect(recap.at(-1)).toMatch(/^RECAP  ok=\d+ changed=[1-9]\d* failed=0 skipped=0$/)

    // What the host got: the code without what is excluded, its own node_modules from npm ci --omit=dev
    // (esbuild, tsx, zx: runtime dependencies), a link on PATH, and its .env, readable by root only.
    expect(existsSync(path.join(install, 'bin', 'citadel.js'))).toBe(true)
    expect(existsSync(path.join(install, '.git'))).toBe(false)
    for (const dep of ['esbuild', 'tsx', 'zx', 'dotenv']) expect(existsSync(path.join(install, 'node_modules', dep)), dep).toBe(true)
    expect(existsSync(path.join(install, 'node_modules', 'vitest'))).toBe(false)
    expect(existsSync(path.join(install, 'node_modules', 'from-the-controller'))).toBe(false)
    expect(readdirSync(path.join(install, 'node_modules')).filter((n) => n.startsWith('.citadel-npm-ci-'))).toHaveLength(1)
    expect(readlinkSync(path.join(base, 'bin', 'citadel'))).toBe(path.join(install, 'bin', 'citadel.js'))
    const envFile = path.join(install, '.env')
    expect(statSync(envFile).mode & 0o777).toBe(0o600)
    expect(parseDotenv(readFileSync(envFile))).toEqual({ ...settingsOf(), MODEL_AUTO_BACKUP: 'false' })
    // citadel ran with that .env: the tree is where the settings say.
    expect(readlinkSync(path.join(roots.app, 'models'))).toBe(path.join(roots.models, 'active'))

    const second = await play('second run (initial-setup)', { citadel_playbook: 'initial-setup', citadel_settings: settingsOf() })
    expect(second.code, second.output).toBe(0)
    expect(second.recap.localhost).toMatchObject({ changed: 0, failed: 0, unreachable: 0 })
    expect(runStatus(second)).toBe('ok')
    expect(second.citadel.localhost!.at(-1)).toMatch(/^RECAP  ok=\d+ changed=0 failed=0 skipped=0$/)
  }, 180_000)

  it('--check runs citadel --check with the settings the run would write: reports changed, changes nothing', async (ctx) => {
    if (skip) return ctx.skip(skip)
    if (!existsSync(path.join(roots.app, 'models'))) return ctx.skip('needs the installed tree of the previous test')
    // One change on disk (a link gone) and one in the inventory (a new directory mode).
    rmSync(path.join(roots.app, 'staging'))
    const before = { tree: snapshot(path.join(base, 'roots')), install: snapshot(install), env: readFileSync(path.join(install, '.env'), 'utf8') }
    const check = await play('check run (--check, a setting changed, a link removed)', { citadel_playbook: 'initial-setup', citadel_settings: settingsOf({ CITADEL_DIR_MODE: '0750' }) }, ['--check'])
    expect(check.code, check.output).toBe(0)
    expect(check.recap.localhost).toMatchObject({ failed: 0 })
    expect(check.tasks['citadel : citadel run initial-setup --check']).toEqual({ localhost: 'changed' })
    const recap = check.citadel.localhost!
    expect(recap).toContainEqual(expect.stringMatching(/^changed  create-dirs: 0 would be created, \d+ would be fixed/)) // the new mode, from the inventory
    expect(recap).toContainEqual(expect.stringMatching(/^changed  create-symlinks: /))
    expect(recap).toContainEqual(`    create link ${path.join(roots.app, 'staging')}`)
    expect(recap).toContain('check mode: nothing was changed')
    expect({ tree: snapshot(path.join(base, 'roots')), install: snapshot(install), env: readFileSync(path.join(install, '.env'), 'utf8') }).toEqual(before)
  }, 120_000)

  it('a failing citadel run fails its host and the play, and shows why', async (ctx) => {
    if (skip) return ctx.skip(skip)
    if (!existsSync(path.join(install, 'bin', 'citadel.js'))) return ctx.skip('needs the install of the previous tests')
    // Invalid settings: citadel exits 4 before touching anything, with no JSON on stdout.
    const invalid = await play('failing run (invalid setting; --tags citadel_env,citadel_run)', { citadel_playbook: 'daily', citadel_settings: settingsOf({ STORAGE_MONITOR_DISK_USAGE_WARNING: '0.95' }) }, ['--tags', 'citadel_env,citadel_run'])
    expect(invalid.code).not.toBe(0)
    expect(invalid.recap.localhost).toMatchObject({ failed: 1 })
    expect(runStatus(invalid)).toBe('fatal')
    expect(invalid.citadel.localhost).toEqual([
      'citadel exited 4: invalid settings or arguments; nothing on disk was changed; no JSON report on stdout',
      expect.stringMatching(/^stderr: citadel: invalid setting STORAGE_MONITOR_DISK_USAGE_WARNING="0.95".*expected less than STORAGE_MONITOR_DISK_USAGE_CRITICAL/),
    ])

    // A models root that does not exist: citadel reports the failed task in its JSON, exits 2.
    const missing = path.join(base, 'roots', 'not-mounted')
    const failed = await play('failing run (models root missing; --tags citadel_env,citadel_run)', { citadel_playbook: 'initial-setup', citadel_settings: settingsOf({ CITADEL_MODELS_ROOT: missing }) }, ['--tags', 'citadel_env,citadel_run'])
    expect(failed.code).not.toBe(0)
    expect(failed.recap.localhost).toMatchObject({ failed: 1 })
    expect(runStatus(failed)).toBe('fatal')
    const recap = failed.citadel.localhost!
    expect(recap[0]).toMatch(new RegExp(`^failed   verify-prereq: models root: ${missing} does not exist`))
    expect(recap).toContainEqual(expect.stringMatching(/^RECAP  ok=0 changed=0 failed=1 skipped=0$/))
    expect(recap.at(-1)).toMatch(/^citadel exited 2: a task failed/)
    expect(lstatSync(missing, { throwIfNoEntry: false })).toBeUndefined()
  }, 120_000)
})
