// model list, archive and remove on real temporary roots, with real backups and a real process that holds
// one model file open and maps another (through libc's mmap, its descriptor closed, as vLLM leaves its
// safetensors): list tells each directory's place, alias, backup and users; archive moves only what no alias
// serves; remove deletes only what is unused and held by a verified backup, never through a link.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { backUp, setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, citadelHere, citadelJson, setUp, snapshot, type Roots } from '../helpers.ts'

const ENV_FILE = (registry: string) => `MODEL_REGISTRY=${registry}\nMODEL_AUTO_BACKUP=false\n`
const SHARD = 'x'.repeat(64 * 1024)

const staging = (roots: Roots, ...rest: string[]) => path.join(roots.models, 'staging', ...rest)
const archive = (roots: Roots, ...rest: string[]) => path.join(roots.models, 'archive', ...rest)
const model = (version: string) => ({ 'config.json': `{"version": "${version}"}\n`, 'weights.bin': SHARD + version })
const put = (dir: string, files: Record<string, string>) => Object.entries(files).forEach(([rel, content]) => writeFile(path.join(dir, rel), content))

/**
 * chat=m-v1 backed up and verified, then m-v2 promoted (m-v1 to archive/); staging/m-v3 never backed up,
 * downloads/m-v4.partial unfinished, active/unused served by no alias.
 */
async function server(env: Record<string, string> = {}): Promise<Roots> {
  const roots = await setUpServer(env)
  writeFileSync(roots.env.CITADEL_ENV_FILE!, ENV_FILE('chat=m-v1'))
  put(path.join(roots.active, 'm-v1'), model('m-v1'))
  // Set-up in this process; the promote by the command, as it writes the registry into its env file.
  await setUp(roots)
  await backUp(roots)
  const verified = await citadelHere(['task', 'backup-verify'], roots.env, { sample: '1' })
  expect(verified.code, JSON.stringify(verified.report?.tasks)).toBe(0)
  put(staging(roots, 'm-v2'), model('m-v2'))
  const promote = await citadel(['task', 'model-promote', 'chat', 'm-v2'], roots.env)
  expect(promote.code, promote.stdout).toBe(0)
  put(staging(roots, 'm-v3'), model('m-v3'))
  put(path.join(roots.models, 'downloads', 'm-v4.partial'), { 'config.json': '{}' })
  put(path.join(roots.active, 'unused'), model('unused'))
  return roots
}

const holders: ChildProcess[] = []
afterEach(() => {
  for (const child of holders.splice(0)) child.kill('SIGKILL')
})

/** A python3 process that keeps `open` open and `mapped` mapped (its descriptor closed), until killed. */
async function hold(open: string, mapped: string): Promise<ChildProcess> {
  const script = `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(sys.argv[2], os.O_RDONLY)
addr = libc.mmap(None, os.fstat(fd).st_size, 1, 1, fd, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)
kept = os.open(sys.argv[1], os.O_RDONLY)
print('ready', flush=True)
time.sleep(600)
`
  const child = spawn('python3', ['-c', script, open, mapped], { stdio: ['ignore', 'pipe', 'inherit'] })
  holders.push(child)
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve())
    child.once('exit', (code) => reject(new Error(`the holder exited with ${code}`)))
  })
  return child
}

const row = (doc: any, place: string, name: string) => doc.tasks[0].data.models.find((m: any) => m.place === place && m.name === name)

describe('model list', () => {
  it('shows every place with its alias, backup, verification and the processes holding files', async () => {
    const roots = await server()
    // Verified as it is; unused verified, then grown: its record no longer covers it.
    for (const dir of ['m-v2', 'unused']) expect((await citadel(['model', 'verify', dir], roots.env)).code).toBe(0)
    writeFileSync(path.join(roots.active, 'unused', 'config.json'), '{"version": "unused", "grown": true}\n')
    // m-v3 verified, then one file's bytes changed at the same size: its last verification failed.
    writeFileSync(staging(roots, 'm-v3', 'extra.bin'), 'aaaa')
    expect((await citadel(['model', 'verify', 'm-v3'], roots.env)).code).toBe(0)
    writeFileSync(staging(roots, 'm-v3', 'extra.bin'), 'aaab')
    expect((await citadel(['model', 'verify', 'm-v3'], roots.env)).code).toBe(2)
    const child = await hold(staging(roots, 'm-v3', 'config.json'), archive(roots, 'm-v1', 'weights.bin'))

    const list = await citadelJson(['model', 'list'], roots.env)
    expect(list.code, list.stderr).toBe(0)
    expect(list.doc.tasks[0].data.models.map((m: any) => `${m.place}/${m.name}`)).toEqual(['active/m-v2', 'active/unused', 'staging/m-v3', 'archive/m-v1', 'downloads/m-v4.partial'])
    expect(row(list.doc, 'active', 'm-v2')).toMatchObject({ aliases: ['chat'], files: 2, bytes: SHARD.length + 4 + 20, backup: null, holders: [], last_verification: { ok: true, detail: 'all 2 files as recorded' } })
    expect(row(list.doc, 'active', 'unused')).toMatchObject({ aliases: [], last_verification: { ok: false, detail: '1 file unrecorded or resized since: run citadel model verify' } })
    expect(row(list.doc, 'archive', 'm-v1')).toMatchObject({ aliases: [], archived: { alias: 'chat', dir: 'm-v1', bad: false }, backup: { verified: true }, last_verification: null })
    expect(row(list.doc, 'archive', 'm-v1').holders).toEqual([{ pid: child.pid, how: 'mapped', file: 'weights.bin', command: expect.stringContaining('python3') }])
    expect(row(list.doc, 'staging', 'm-v3').holders).toEqual([{ pid: child.pid, how: 'open', file: 'config.json', command: expect.stringContaining('python3') }])
    expect(row(list.doc, 'staging', 'm-v3').backup).toBeNull()
    expect(row(list.doc, 'staging', 'm-v3').last_verification).toMatchObject({ ok: false, detail: expect.stringMatching(/^failed: extra\.bin: /) })
    expect(row(list.doc, 'downloads', 'm-v4.partial')).toMatchObject({ partial: true, files: 1 })

    const human = await citadel(['task', 'model-list'], roots.env)
    expect(human.code).toBe(0)
    expect(human.stdout).toMatch(/DIR\s+WHERE\s+ALIAS\s+SIZE\s+FILES\s+VERIFIED\s+BACKUP\s+IN USE/)
    expect(human.stdout).toMatch(/m-v2\s+active\s+chat\s+64\.0 KiB\s+2\s+ok \d{4}-\d\d-\d\d \d\d:\d\d\s+-\s+-/)
    expect(human.stdout).toMatch(new RegExp(`m-v1\\s+archive\\s+\\(chat\\)\\s+.*backup_\\d{8}_\\d{6}_full\\s+pid ${child.pid}`))
    expect(human.stdout).toMatch(/m-v4\.partial\s+downloads \(partial\)/)
    expect(human.stdout).toMatch(new RegExp(`archive/m-v1: pid ${child.pid} \\(\\S*python3 -c import ctypes, os, sys, time libc = .*\\.\\.\\.\\) has weights\\.bin mapped\n`))
  }, 120_000)

  it('offers the removal of archived versions beyond MODEL_ARCHIVE_KEEP, and deletes what a killed remove left', async () => {
    const roots = await server({ MODEL_ARCHIVE_KEEP: '1' })
    expect((await citadel(['task', 'model-promote', 'chat', 'm-v3'], roots.env)).code).toBe(0)
    // A leftover of a removal whose process is gone.
    const dead = spawnSync('true').pid
    const leftover = archive(roots, `.m-v0.citadel-removing-${dead}-0123abcd`)
    put(leftover, model('m-v0'))

    const before = snapshot(roots.base)
    const checked = await citadelJson(['task', 'model-list', '--check'], roots.env)
    expect(checked.code).toBe(0)
    expect(snapshot(roots.base)).toEqual(before)

    const list = await citadelJson(['task', 'model-list'], roots.env)
    expect(list.doc.tasks[0].data.surplus).toEqual([expect.objectContaining({ alias: 'chat', archive: 'm-v1', bad: false })])
    expect(list.doc.tasks[0].warnings).toEqual([
      `removed ${leftover}, left by an interrupted model remove`,
      expect.stringMatching(/^archive\/ holds more than MODEL_ARCHIVE_KEEP=1 versions of chat: `citadel model remove m-v1` would free 64\.0 KiB/),
    ])
    expect(existsSync(leftover)).toBe(false)
    // Offered, never done.
    expect(readdirSync(archive(roots)).sort()).toEqual(['m-v1', 'm-v2'])
  }, 120_000)
})

describe('model archive', () => {
  it('moves a directory no alias serves into archive/, refuses an alias\'s one, and --check changes nothing', async () => {
    const roots = await server()
    const refused = await citadel(['task', 'model-archive', 'm-v2'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.stdout).toMatch(/active\/m-v2 is what chat serves \(MODEL_REGISTRY\): promote another version/)
    expect(existsSync(path.join(roots.active, 'm-v2'))).toBe(true)

    const before = snapshot(roots.base)
    const check = await citadelJson(['task', 'model-archive', 'unused', '--check'], roots.env)
    expect(check.doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(before)

    const done = await citadelJson(['task', 'model-archive', 'unused'], roots.env)
    expect(done.code, done.stdout).toBe(0)
    expect(done.doc.tasks[0].changes).toEqual([{ path: path.join(roots.active, 'unused'), action: 'archive model', before: 'served by no alias', after: archive(roots, 'unused') }])
    expect(readFileSync(archive(roots, 'unused', 'config.json'), 'utf8')).toContain('unused')
    expect(existsSync(path.join(roots.active, 'unused'))).toBe(false)
    const again = await citadelJson(['task', 'model-archive', 'unused'], roots.env)
    expect([again.code, again.doc.tasks[0].status]).toEqual([0, 'ok'])
  }, 120_000)
})

describe('model remove', () => {
  it('refuses an alias\'s directory, an open or mapped one, one no verified backup holds, one that differs, and a link', async () => {
    const roots = await server()
    const before = snapshot(roots.base)
    const refuses = async (dir: string, message: RegExp, env: Record<string, string> = {}) => {
      const result = await citadel(['task', 'model-remove', dir], { ...roots.env, ...env })
      expect(result.code, `${dir}: ${result.stdout}${result.stderr}`).toBe(2)
      expect(result.stdout, dir).toMatch(message)
    }

    const child = await hold(staging(roots, 'm-v3', 'config.json'), archive(roots, 'm-v1', 'weights.bin'))
    await refuses('m-v1', new RegExp(`refusing to delete .*archive/m-v1: pid ${child.pid} \\(\\S*python3 .*\\) has weights\\.bin mapped; stop it first`))
    await refuses('m-v3', new RegExp(`refusing to delete .*staging/m-v3: pid ${child.pid} \\(\\S*python3 .*\\) has config\\.json open`))
    child.kill('SIGKILL')
    await new Promise((resolve) => child.once('exit', resolve))

    await refuses('m-v3', /refusing to delete .*staging\/m-v3: no complete backup of .*active holds m-v3\/ with the same files and sizes; back it up first, or --force/)
    // A link in archive/ to the live directory: never followed, whatever it points at.
    symlinkSync(path.join(roots.active, 'm-v2'), archive(roots, 'linked'))
    await refuses('linked', /refusing to delete .*archive\/linked: it is a symlink, not a directory; a link is never followed/)
    expect(readdirSync(path.join(roots.active, 'm-v2')).sort()).toEqual(['config.json', 'weights.bin'])
    // The alias's link pointed by hand at an archived directory: that directory is in use.
    const chat = path.join(roots.app, 'model-links', 'chat')
    const served = readlinkSync(chat)
    symlinkSync(archive(roots, 'm-v1'), chat + '.tmp')
    spawnSync('mv', ['-T', chat + '.tmp', chat])
    await refuses('m-v1', /refusing to delete .*archive\/m-v1: chat uses it/)
    spawnSync('ln', ['-sfnT', served, chat])
    // Same size, other bytes: the backup's manifest does not vouch for it.
    const shard = archive(roots, 'm-v1', 'weights.bin')
    const good = readFileSync(shard)
    writeFileSync(shard, Buffer.from(good.toString().replace('m-v1', 'm-v9')))
    await refuses('m-v1', /refusing to delete .*archive\/m-v1: weights\.bin differs from the manifest of backup_\d{8}_\d{6}_full; --force/)
    writeFileSync(shard, good)
    // In the active models: archive first.
    await refuses('unused', /active\/unused is in active\/: model remove deletes only from archive\/ or staging\/ \(model archive moves an unused one there\)/)
    const kept = (snap: Record<string, string>) => Object.entries(snap).filter(([rel]) => !/^(\.$|app$|app\/logs|app\/\.citadel|models\/archive(\/linked)?$|models\/archive\/m-v1\/weights.bin|app\/model-links)/.test(rel))
    expect(kept(snapshot(roots.base))).toEqual(kept(before))
  }, 120_000)

  it('deletes a verified backup\'s model, and with --force one without a backup, reporting the bytes freed', async () => {
    const roots = await server()
    const before = snapshot(roots.base)
    const check = await citadelJson(['task', 'model-remove', 'm-v1', '--check'], roots.env)
    expect(check.doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(before)

    const removed = await citadelJson(['task', 'model-remove', 'm-v1'], roots.env)
    expect(removed.code, removed.stdout).toBe(0)
    const bytes = SHARD.length + 4 + 20
    expect(removed.doc.tasks[0]).toMatchObject({ status: 'changed', msg: 'deleted archive/m-v1, freed 64.0 KiB', data: { freed_bytes: bytes, files: 2 } })
    expect(removed.doc.tasks[0].changes.map((c: any) => c.action)).toEqual(['remove model', 'update file'])
    expect(existsSync(archive(roots, 'm-v1'))).toBe(false)
    expect(readdirSync(archive(roots))).toEqual([])
    // Rollback's record forgets the version that is gone.
    expect(JSON.parse(readFileSync(path.join(roots.app, 'state', 'models.json'), 'utf8'))).toEqual({ aliases: { chat: { archived: [] } } })
    const again = await citadelJson(['task', 'model-remove', 'm-v1'], roots.env)
    expect([again.code, again.doc.tasks[0].status, again.doc.tasks[0].msg]).toEqual([0, 'ok', expect.stringMatching(/m-v1 is in neither .*archive nor .*staging: nothing to remove/)])

    // A file hard-linked from elsewhere frees nothing.
    mkdirSync(path.join(roots.base, 'elsewhere'))
    spawnSync('ln', [staging(roots, 'm-v3', 'weights.bin'), path.join(roots.base, 'elsewhere', 'shard')])
    const forced = await citadelJson(['task', 'model-remove', 'm-v3', '--force'], roots.env)
    expect(forced.code, forced.stdout).toBe(0)
    expect(forced.doc.tasks[0].msg).toBe('deleted staging/m-v3, freed 20 B')
    expect(forced.doc.tasks[0].warnings).toEqual([expect.stringMatching(/--force: .*staging\/m-v3 is deleted without checking that a backup holds it/)])
    expect(existsSync(staging(roots, 'm-v3'))).toBe(false)
    expect(readFileSync(path.join(roots.base, 'elsewhere', 'shard'), 'utf8')).toBe(SHARD + 'm-v3')
  }, 120_000)

  it('refuses bad input with one line', async () => {
    const roots = await server()
    const cases: [string[], number, RegExp][] = [
      [['model-remove', '../m-v1'], 4, /DIR.*expected the name of a directory in archive\/ or staging\/ \(one path component/],
      [['model-remove', 'a/b'], 4, /DIR.*one path component/],
      [['model-archive', '..'], 4, /DIR.*expected the name of a directory in the active models/],
      [['model-archive', 'm-v9'], 2, /active\/m-v9 is nothing, expected a model directory to archive/],
      [['model-remove', 'm-v4.partial'], 2, /downloads\/m-v4\.partial is in downloads\/: model remove deletes only from archive\/ or staging\//],
    ]
    for (const [args, code, message] of cases) {
      const result = await citadel(['task', ...args], roots.env)
      expect(result.code, `${args.join(' ')}: ${result.stdout}${result.stderr}`).toBe(code)
      expect(result.stdout + result.stderr, args.join(' ')).toMatch(message)
    }
  }, 120_000)
})
