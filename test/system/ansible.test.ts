// The Ansible role in ansible/, run for real with ansible-playbook against localhost (ansible_connection=local)
// on temporary roots: install (rsync of the checkout, npm ci), the host's .env, `citadel run --json` mapped to
// Ansible's changed/failed with citadel's recap shown, --check mapped to citadel --check, and a failing run;
// then status.yml over a small fleet (inventory names that all connect locally, each with its own install
// and roots): one table of every host's health-check, failing by name on a critical, unknown or unreachable host.
// Skipped, saying why, without ansible-playbook or the ansible.posix collection (Debian: apt-get install ansible).
import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
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
  /** Per task title, per host: the msg of its result (a debug task's message, a failure's reason). */
  messages: Record<string, Record<string, unknown>>
}

function parsePlay(output: string): Pick<Play, 'recap' | 'tasks' | 'citadel' | 'messages'> {
  const recap: Play['recap'] = {}
  const tasks: Play['tasks'] = {}
  const messages: Play['messages'] = {}
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
    // A result is printed on its line ("=> {...}") or, for a debug message, indented up to a lone "}".
    if (status && task && / => \{/.test(line)) {
      const end = line.endsWith('=> {') ? lines.indexOf('}', i) : i
      ;(messages[task] ??= {})[status[2]!] = JSON.parse(lines.slice(i, end + 1).join('\n').replace(/^.*? => /, '')).msg
    }
    const counts = inRecap && /^(\S+)\s+:\s+(ok=.*)$/.exec(line)
    if (counts) recap[counts[1]!] = Object.fromEntries([...counts[2]!.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]))
  }
  return { recap, tasks, citadel: (messages['citadel : citadel recap'] ?? {}) as Play['citadel'], messages }
}

/** The status each host's `citadel run` task got (its title carries the playbook and --check). */
const runStatus = (play: Play, host = 'localhost') =>
  Object.entries(play.tasks).find(([title]) => title.startsWith('citadel : citadel run '))?.[1][host]

/** The table status.yml prints, by host: each cell under its header (columns are at least two spaces apart). */
function fleetTable(lines: string[]): Record<string, Record<string, string>> {
  const at = lines.findIndex((l) => l.startsWith('HOST '))
  const columns = [...lines[at]!.matchAll(/\S+(?: \S+)*/g)].map((m) => ({ name: m[0], start: m.index }))
  const rows: Record<string, Record<string, string>> = {}
  for (const line of lines.slice(at + 1)) {
    if (!line) break
    const cells = Object.fromEntries(columns.map((c, i) => [c.name, line.slice(c.start, columns[i + 1]?.start).trim()]))
    rows[cells.HOST!] = cells
  }
  return rows
}

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
  const play = (label: string, hostVars: Record<string, unknown>, args: string[] = []) =>
    runPlaybook(label, 'site.yml', { localhost: { citadel_install_dir: install, citadel_bin_link: path.join(base, 'bin', 'citadel'), ...hostVars } }, args)

  /** Runs a playbook of the copy's ansible/ on these inventory hosts of the group citadel, each connecting locally unless its variables say otherwise. */
  async function runPlaybook(label: string, playbook: string, hosts: Record<string, Record<string, unknown>>, args: string[] = []): Promise<Play> {
    const inventory = path.join(base, 'inventory.json')
    const local = { ansible_connection: 'local', ansible_python_interpreter: '{{ ansible_playbook_python }}', ansible_become: false }
    writeFileSync(inventory, JSON.stringify({ citadel: { hosts: Object.fromEntries(Object.entries(hosts).map(([name, vars]) => [name, { ...local, ...vars }])) } }, null, 2))
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
      // Cost, not behaviour: a module runs without its temporary-file round trip, and localhost's facts are
      // gathered by the first play and read from this test's cache by the next ones.
      ANSIBLE_PIPELINING: 'True',
      ANSIBLE_GATHERING: 'smart',
      ANSIBLE_CACHE_PLUGIN: 'jsonfile',
      ANSIBLE_CACHE_PLUGIN_CONNECTION: path.join(tmp, 'facts'),
      ANSIBLE_HOME: path.join(tmp, 'home'),
      ANSIBLE_LOCAL_TEMP: path.join(tmp, 'local'),
      ANSIBLE_REMOTE_TEMP: path.join(tmp, 'remote'),
      npm_config_logs_dir: path.join(base, 'npm-logs'),
      npm_config_update_notifier: 'false',
    }
    const started = Date.now()
    const child = spawn('ansible-playbook', ['-i', inventory, path.join(source, 'ansible', playbook), ...args], { cwd: base, env, stdio: ['ignore', 'pipe', 'pipe'] })
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
  }, 300_000)

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

  // status.yml over a fleet of two hosts, each with its own install (so its own .env) and its own roots.
  const fleetDir = (host: string, ...parts: string[]) => path.join(base, 'fleet', host, ...parts)
  const fleetHost = (host: string) => ({ citadel_install_dir: fleetDir(host, 'install') })
  /** citadel as installed on a host of the fleet, reading that host's .env. */
  const citadelOn = (host: string, ...args: string[]) =>
    spawnSync(process.execPath, [fleetDir(host, 'install', 'bin', 'citadel.js'), ...args], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CITADEL_ENV_FILE: fleetDir(host, 'install', '.env') } })
  const fleetRoots = (hosts: string[]) => Object.fromEntries(hosts.flatMap((h) => ['app', 'models', 'backup'].map((r) => [`${h}/${r}`, snapshot(fleetDir(h, r))])))

  it('status.yml: one table of the fleet; the play fails naming the critical, unknown and unreachable hosts; it changes nothing', async (ctx) => {
    if (skip) return ctx.skip(skip)
    const hosts = ['gpu-a', 'gpu-b']
    // Each host installed as site.yml leaves it (the tests above show that), without its slow Ansible run:
    // the still copy of the checkout with this checkout's node_modules, a .env, initial-setup, a verified backup.
    for (const host of hosts) {
      cpSync(source, fleetDir(host, 'install'), { recursive: true, filter: (src) => !['.git', 'node_modules', '.env'].includes(path.relative(source, src)) })
      symlinkSync(path.join(PROJECT, 'node_modules'), fleetDir(host, 'install', 'node_modules'))
      const roots = { CITADEL_APP_ROOT: fleetDir(host, 'app'), CITADEL_MODELS_ROOT: fleetDir(host, 'models'), CITADEL_BACKUP_ROOT: fleetDir(host, 'backup') }
      writeFileSync(fleetDir(host, 'install', '.env'), Object.entries({ ...roots, MODEL_REGISTRY: 'tiny=tiny-model', MODEL_AUTO_BACKUP: 'false' }).map(([k, v]) => `${k}=${v}\n`).join(''))
      mkdirSync(fleetDir(host, 'models', 'active', 'tiny-model'), { recursive: true })
      writeFileSync(fleetDir(host, 'models', 'active', 'tiny-model', 'config.json'), `{"host": "${host}"}\n`)
      mkdirSync(fleetDir(host, 'backup'))
      for (const args of [['run', 'initial-setup'], ['backup', 'create'], ['backup', 'verify', '--sample', '1']]) {
        const run = citadelOn(host, ...args)
        expect(run.status, `${host}: citadel ${args.join(' ')}\n${run.stdout}${run.stderr}`).toBe(0)
      }
    }
    // gpu-c has citadel but an invalid setting: health-check cannot judge it (exit 3, no report).
    cpSync(fleetDir('gpu-a', 'install'), fleetDir('gpu-c', 'install'), { recursive: true, verbatimSymlinks: true })
    writeFileSync(fleetDir('gpu-c', 'install', '.env'), `CITADEL_APP_ROOT=${fleetDir('gpu-c', 'app')}\nSTORAGE_MONITOR_DISK_USAGE_WARNING=0.95\n`)
    const newest = (host: string) => path.basename(readlinkSync(fleetDir(host, 'backup', 'models', 'latest')))
    // gpu-b's models link now points nowhere: vLLM there would find no models, a critical problem.
    const modelsLink = fleetDir('gpu-b', 'app', 'models')
    const target = readlinkSync(modelsLink)
    rmSync(modelsLink)
    symlinkSync(fleetDir('gpu-b', 'models', 'gone'), modelsLink)
    const before = fleetRoots(hosts)

    const failing = await runPlaybook('status.yml (gpu-b critical, gpu-c invalid settings, gpu-new without citadel, gpu-gone unreachable)', 'status.yml', {
      'gpu-a': fleetHost('gpu-a'),
      'gpu-b': fleetHost('gpu-b'),
      'gpu-c': fleetHost('gpu-c'),
      'gpu-new': { citadel_install_dir: fleetDir('gpu-new', 'install') },
      // Nothing listens on port 1: ssh is refused at once.
      'gpu-gone': { ansible_connection: 'ssh', ansible_host: '127.0.0.1', ansible_port: 1 },
    })
    expect(failing.code).not.toBe(0)
    const lines = Object.values(failing.messages['citadel : citadel fleet status'] ?? {})[0] as string[]
    expect(lines[0]).toBe('citadel on 5 hosts: 1 ok, 1 critical, 2 unknown, 1 unreachable')
    const table = fleetTable(lines)
    expect(Object.keys(table)).toEqual(['gpu-a', 'gpu-b', 'gpu-c', 'gpu-new', 'gpu-gone'])
    expect(table['gpu-a']).toEqual({
      HOST: 'gpu-a', OVERALL: 'OK', PROBLEMS: '-',
      'NEWEST LOCAL BACKUP': `${newest('gpu-a')}, 0m ago`, 'NEWEST REMOTE BACKUP': '-', 'LAST VERIFICATION': 'ok, 0m ago',
    })
    expect(table['gpu-b']).toMatchObject({ OVERALL: 'CRITICAL', PROBLEMS: expect.stringMatching(/^symlinks: /), 'NEWEST LOCAL BACKUP': `${newest('gpu-b')}, 0m ago`, 'LAST VERIFICATION': 'ok, 0m ago' })
    expect(table['gpu-c']).toMatchObject({ OVERALL: 'UNKNOWN', PROBLEMS: expect.stringMatching(/^citadel: invalid setting /), 'NEWEST LOCAL BACKUP': '-' })
    expect(table['gpu-new']).toMatchObject({ OVERALL: 'UNKNOWN', 'NEWEST LOCAL BACKUP': '-' })
    expect(table['gpu-gone']).toMatchObject({ OVERALL: 'UNREACHABLE', 'NEWEST LOCAL BACKUP': '-' })
    // Each problem in full under the table, then the hosts that fail the play.
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^gpu-b\\s+critical\\s+symlinks: ${modelsLink}: `)))
    expect(lines).toContainEqual(expect.stringMatching(/^gpu-c\s+unknown\s+citadel: invalid setting STORAGE_MONITOR_DISK_USAGE_WARNING="0.95"/))
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^gpu-new\\s+unknown\\s+.*${fleetDir('gpu-new', 'install')}`)))
    // ssh's own "Connection refused", or, when ansible's pipelining wrote to ssh before reading why it ended, a broken pipe.
    expect(lines).toContainEqual(expect.stringMatching(/^gpu-gone\s+unreachable\s+.*(Connection refused|Broken pipe)/))
    expect(lines.at(-1)).toBe('FAILED: gpu-b (critical), gpu-c (unknown), gpu-new (unknown), gpu-gone (unreachable)')
    expect(failing.tasks['citadel : citadel verdict']).toEqual({ 'gpu-a': 'ok', 'gpu-b': 'fatal', 'gpu-c': 'fatal', 'gpu-new': 'fatal' })
    expect(failing.messages['citadel : citadel verdict']?.['gpu-b']).toMatch(new RegExp(`^gpu-b is CRITICAL: symlinks: ${modelsLink}: `))
    expect(failing.recap).toMatchObject({
      'gpu-a': { changed: 0, failed: 0, unreachable: 0 },
      'gpu-b': { changed: 0, failed: 1 },
      'gpu-c': { changed: 0, failed: 1 },
      'gpu-new': { changed: 0, failed: 1 },
      'gpu-gone': { unreachable: 1 },
    })
    expect(fleetRoots(hosts)).toEqual(before)

    // Repaired, both hosts pass; under --check too, as the play only reads.
    rmSync(modelsLink)
    symlinkSync(target, modelsLink)
    const repaired = fleetRoots(hosts)
    const passing = await runPlaybook('status.yml --check (both hosts ok)', 'status.yml', Object.fromEntries(hosts.map((h) => [h, fleetHost(h)])), ['--check'])
    expect(passing.code, passing.output).toBe(0)
    const passed = Object.values(passing.messages['citadel : citadel fleet status'] ?? {})[0] as string[]
    expect(passed[0]).toBe('citadel on 2 hosts: 2 ok')
    expect(Object.values(fleetTable(passed)).map((row) => row.OVERALL)).toEqual(['OK', 'OK'])
    expect(passed.some((l) => l.startsWith('FAILED'))).toBe(false)
    expect(passing.recap).toEqual({ 'gpu-a': expect.objectContaining({ changed: 0, failed: 0 }), 'gpu-b': expect.objectContaining({ changed: 0, failed: 0 }) })
    expect(fleetRoots(hosts)).toEqual(repaired)
  }, 300_000)

  it("status.yml reads a report's verdict, and shows backups_remote.newest, '-' where it is absent or null", (ctx) => {
    if (skip) return ctx.skip(skip)
    if (!existsSync(fleetDir('gpu-a', 'install', '.env'))) return ctx.skip('needs the fleet of the previous test')
    const check = citadelOn('gpu-a', 'health-check', '--json')
    expect(check.status, check.stderr).toBe(0)
    const report = JSON.parse(check.stdout)
    const remote = { name: 'backup_20261201_020000_full', created: '2026-12-01T02:00:00.000Z', age: '1d 3h', age_seconds: 97_200 }
    const problem = (severity: string) => ({ check: 'backups', severity, key: 'backups:overdue', message: `a ${severity} problem` })
    // [health-check's exit status, what it printed]
    const answers: [number, string][] = [
      [0, JSON.stringify(report)],
      [0, JSON.stringify({ ...report, backups_remote: null })],
      [0, JSON.stringify({ ...report, backups_remote: { newest: null } })],
      [0, JSON.stringify({ ...report, backups_remote: { newest: remote } })],
      [1, JSON.stringify({ ...report, overall: 'warning', problems: [problem('warning')] })],
      [2, JSON.stringify({ ...report, overall: 'critical', problems: [problem('critical')] })],
      [3, 'CITADEL UNKNOWN - the checks could not run: no such thing\n'],
    ]
    const script = `
import json, sys
sys.path.insert(0, sys.argv[1])
from citadel import citadel_health
print(json.dumps([citadel_health({'rc': rc, 'stdout': out, 'stderr': ''}, 'gpu-a') for rc, out in json.load(sys.stdin)]))`
    const run = spawnSync(python, ['-c', script, path.join(PROJECT, 'ansible', 'roles', 'citadel', 'filter_plugins')], {
      input: JSON.stringify(answers),
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONDONTWRITEBYTECODE: '1', ANSIBLE_HOME: path.join(base, 'ansible', 'home'), ANSIBLE_LOCAL_TEMP: path.join(base, 'ansible', 'local') },
    })
    expect(run.status, run.stderr).toBe(0)
    const rows: { overall: string; failing: boolean; problems: { severity: string; text: string }[]; local: string; remote: string }[] = JSON.parse(run.stdout)
    expect(rows.map((r) => r.remote)).toEqual(['-', '-', '-', 'backup_20261201_020000_full, 1d 3h ago', '-', '-', '-'])
    expect(rows.map((r) => [r.overall, r.failing])).toEqual([['ok', false], ['ok', false], ['ok', false], ['ok', false], ['warning', false], ['critical', true], ['unknown', true]])
    expect(rows[0]!.local).toBe(`${report.backups.newest.name}, ${report.backups.newest.age} ago`)
    expect(rows[5]!.problems).toEqual([{ severity: 'critical', text: 'backups: a critical problem' }])
    expect(rows[6]!.problems).toEqual([{ severity: 'unknown', text: 'CITADEL UNKNOWN - the checks could not run: no such thing' }])
  })
})
