// The task contract, checked for every registered task on a state where it has work to do: the first run
// does not fail, --check before it reports the same changes and changes nothing on disk, and a second run
// reports ok. Each task's state comes from the table below; a registered task without an entry fails here,
// so a new task is held to the contract before it ships.
import { createHash } from 'node:crypto'
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { tasks } from '../../tasks/index.ts'
import { backUp, setUpServer, writeFile } from '../backup-helpers.ts'
import { citadelHere, citadelJson, makeRoots, snapshot, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'
import { safetensors, writeModel } from '../model-helpers.ts'
import { systemdRunning } from '../../lib/systemd/units.ts'

interface Contract {
  /** Arranges the roots so that the task has something to do; the default is fresh, empty disk roots. */
  setup?: () => Promise<Roots>
  args?: string[]
  /**
   * What the first run reports: `changed` when the setup left it work, `ok` for a check or a bookkeeping-only
   * task, `skipped` for a task this machine gives nothing to do (it must then say so every time and change nothing).
   */
  first: 'changed' | 'ok' | 'skipped'
  /** Why its --check is skipped rather than judged, when it is. */
  checkSkipped?: string
}

/** Set-up in this process (citadelHere): what is checked below runs the command; fails saying why unless it succeeds. */
async function here(command: Parameters<typeof citadelHere>[0], roots: Roots, args: Parameters<typeof citadelHere>[2] = {}) {
  const { code, report } = await citadelHere(command, roots.env, args)
  expect(code, `${command.join(' ')}: ${JSON.stringify(report?.tasks.filter((t) => t.status === 'failed'))}`).toBe(0)
  return report!
}

/** initial-setup done, then `drift` undone so that the first run has something to put right. */
const setUpWith = (drift: (roots: Roots) => void = () => {}, env: Record<string, string> = {}) => async () => {
  const roots = await setUpServer(env)
  drift(roots)
  return roots
}

/** A set-up server with a model and `backups` backups of it, each after a new shard. */
const withBackups = (backups: number, env: Record<string, string> = {}) => async () => {
  const roots = await setUpServer(env)
  writeFile(path.join(roots.active, 'mixtral-8x7b-instruct', 'config.json'), '{"model_type": "mixtral"}\n')
  for (let i = 0; i < backups; i++) await backUp(roots, { [`mixtral-8x7b-instruct/shard-${i}.safetensors`]: `weights ${i}` })
  return roots
}

/** Backups as withBackups, and BACKUP_REMOTE a private sshd serving a directory under the test's base; `sent` of them there already. */
const withRemote = (backups: number, sent: number, env: Record<string, string> = {}) => async () => {
  const roots = await withBackups(backups, env)()
  const remoteDir = path.join(roots.base, 'remote')
  mkdirSync(remoteDir)
  Object.assign(roots.env, (await startSshd(remoteDir)).env)
  const names = ((await here(['task', 'backup-status'], roots)).tasks[0]!.data.backups as { name: string }[]).map((b) => b.name)
  // By the command: a send's ssh connection state is kept per process, which runs here would share.
  for (const name of names.slice(0, sent)) expect((await citadelJson(['backup', 'create', '--remote', name], roots.env)).code).toBe(0)
  return roots
}

/** `setup`, then the model lost from the active models, so that a restore has it to bring back. */
const modelLost = (setup: () => Promise<Roots>) => async () => {
  const roots = await setup()
  rmSync(path.join(roots.active, 'mixtral-8x7b-instruct'), { recursive: true })
  return roots
}

/** A set-up server with a correct model in the active directory of the alias mixtral. */
const withModel = async () => {
  const roots = await setUpServer()
  writeModel(path.join(roots.active, 'mixtral-8x7b-instruct'))
  return roots
}

// Cleanup removes what is older than DAYS beyond the newest BACKUP_KEEP_MIN: with DAYS 0 and one kept, two backups leave it one to remove.
const KEEP_ONE = { BACKUP_KEEP_MIN: '1' }

/** A set-up server whose env file registers chat=m-v1 (live), with `staged` versions in staging/ and `promoted` of them promoted in order. */
const withModels = (staged: string[], promoted = 0) => async () => {
  const roots = await setUpServer()
  writeFileSync(roots.env.CITADEL_ENV_FILE!, '# the chat model\nMODEL_REGISTRY=chat=m-v1\n')
  for (const dir of ['m-v1', ...staged]) writeFile(path.join(dir === 'm-v1' ? roots.active : path.join(roots.models, 'staging'), dir, 'config.json'), `{"version": "${dir}"}\n`)
  await here(['run', 'initial-setup'], roots)
  // By the command: the promote writes the registry into the env file that its process was given.
  for (const dir of staged.slice(0, promoted)) expect((await citadelJson(['task', 'model-promote', 'chat', dir], roots.env)).code).toBe(0)
  return roots
}

/** A set-up server whose Hugging Face cache holds org/tiny as `hf download` leaves it: refs/main, a snapshot of relative links to blobs. */
async function withHfModel(): Promise<Roots> {
  const roots = await setUpServer()
  const repo = path.join(roots.models, 'cache', 'huggingface', 'hub', 'models--org--tiny')
  const commit = 'c'.repeat(40)
  writeFile(path.join(repo, 'refs', 'main'), commit)
  mkdirSync(path.join(repo, 'snapshots', commit), { recursive: true })
  for (const [name, content] of [['config.json', '{"model_type": "llama"}\n'], ['model.safetensors', safetensors([{ name: 'w', dtype: 'F16', shape: [4] }])] as const]) {
    const blob = path.join(repo, 'blobs', createHash('sha256').update(content!).digest('hex'))
    writeFile(blob, content!)
    symlinkSync(path.join('..', '..', 'blobs', path.basename(blob)), path.join(repo, 'snapshots', commit, name!))
  }
  return roots
}

const CONTRACT: Record<string, Contract> = {
  'verify-prereq': { first: 'ok' },
  'mark-roots': { first: 'changed' },
  'create-dirs': { first: 'changed' },
  'create-symlinks': { setup: setUpWith((r) => rmSync(path.join(r.app, 'staging'))), first: 'changed' },
  'verify-symlinks': { setup: setUpWith(), first: 'ok' },
  'repair-symlinks': { setup: setUpWith((r) => rmSync(path.join(r.app, 'staging'))), first: 'changed' },
  'write-env-script': { setup: setUpWith((r) => rmSync(path.join(r.app, 'configs', 'storage-env.sh'))), first: 'changed' },
  'backup-create': { setup: withBackups(0), first: 'changed' },
  'backup-verify': { setup: withBackups(1), args: ['--sample', '1'], first: 'ok' },
  'backup-cleanup': { setup: withBackups(2, KEEP_ONE), args: ['0'], first: 'changed' },
  'backup-status': { setup: withBackups(1), first: 'ok' },
  'backup-restore': { setup: modelLost(withBackups(2)), first: 'changed' },
  'remote-backup-create': { setup: withRemote(1, 0), first: 'changed' },
  'remote-backup-verify': { setup: withRemote(1, 1), args: ['--sample', '1'], first: 'ok' },
  'remote-backup-cleanup': { setup: withRemote(2, 2, KEEP_ONE), args: ['0'], first: 'changed' },
  'remote-backup-status': { setup: withRemote(1, 1), first: 'ok' },
  'remote-backup-restore': { setup: modelLost(withRemote(1, 1)), first: 'changed' },
  'check-smart': { setup: setUpWith(), first: 'ok' },
  'check-usage': { setup: setUpWith(), first: 'ok' },
  'check-backups': { setup: withBackups(1), first: 'ok' },
  'health-report': { setup: withBackups(1), first: 'ok' },
  'check-perf': { setup: setUpWith(), args: ['--quick'], first: 'ok', checkSkipped: 'a measurement: check mode says what fio would run instead of running it' },
  'write-units': { first: 'changed' },
  // Run only where systemd does not run (a machine it runs would get citadel's units enabled): it says so, changes nothing.
  'enable-services': { first: 'skipped' },
  // MODEL_AUTO_BACKUP is true by default: the promote ends with a backup.
  'model-promote': { setup: withModels(['m-v2']), args: ['chat', 'm-v2'], first: 'changed' },
  'model-rollback': { setup: withModels(['m-v2'], 1), args: ['chat'], first: 'changed' },
  // Its hash records are bookkeeping: the first run records them and reports ok.
  'model-verify': { setup: withModel, first: 'ok' },
  'model-list': { setup: withModels(['m-v2'], 1), first: 'ok' },
  'model-archive': { setup: async () => { const roots = await withModels([])(); writeFile(path.join(roots.active, 'm-old', 'config.json'), '{}\n'); return roots }, args: ['m-old'], first: 'changed' },
  // m-v1 backed up and verified while live, then archived by the promote of m-v2.
  'model-remove': { setup: async () => {
    const roots = await withModels([])()
    await backUp(roots)
    await here(['task', 'backup-verify'], roots, { sample: '1' })
    writeFile(path.join(roots.models, 'staging', 'm-v2', 'config.json'), '{"version": "m-v2"}\n')
    expect((await citadelJson(['task', 'model-promote', 'chat', 'm-v2'], roots.env)).code).toBe(0)
    return roots
  }, args: ['m-v1'], first: 'changed' },
  'model-fetch': { setup: withHfModel, args: ['hf:org/tiny'], first: 'changed' },
}

const REMOTE = new Set(['remote-backup-create', 'remote-backup-verify', 'remote-backup-cleanup', 'remote-backup-status', 'remote-backup-restore'])

/** What a change list says, without the times in backup names, which differ from one run to the next. */
const shape = (changes: { path: string; action: string }[]) => changes.map((c) => `${c.action} ${c.path.replace(/backup_\d{8}_\d{6}/g, 'backup_<time>')}`)

/** Every name `citadel task` takes: each task's own, and its aliases (remote-backup-create is backup-create on the remote store). */
const NAMES = tasks.flatMap((t) => [t.name, ...Object.keys(t.aliases ?? {})])

describe('the task contract', () => {
  it('has an entry for every registered task and alias, and none for one that is gone', () => {
    expect(Object.keys(CONTRACT).sort()).toEqual(NAMES.sort())
  })

  describe.each(NAMES)('task %s', (name) => {
    const contract = CONTRACT[name]
    const task = tasks.find((t) => t.name === name || t.aliases?.[name])!
    it.skipIf((REMOTE.has(name) && sshdMissing) || (name === 'enable-services' && systemdRunning()))('does its work, --check first changes nothing, a second run reports ok', async () => {
      expect(contract, `no entry for ${name} in CONTRACT of test/contract.test.ts`).toBeDefined()
      const { setup = async () => makeRoots(), args = [], first: expected, checkSkipped } = contract!
      const roots = await setup()
      const command = ['task', name, ...args]

      const before = snapshot(roots.base)
      const check = await citadelJson([...command, '--check'], roots.env)
      expect(snapshot(roots.base)).toEqual(before)
      const checked = check.doc.tasks[0]
      if (checkSkipped) expect(checked.status, checked.msg).toBe('skipped')
      else expect(checked.status, checked.msg).toBe(expected)

      const run = await citadelJson(command, roots.env)
      const done = run.doc.tasks[0]
      expect(done.status, done.msg).toBe(expected)
      expect(run.code, run.stderr).toBe(0)
      if (expected === 'changed') expect(done.changes.length).toBeGreaterThan(0)
      // --check may say more: a real run's lock makes the app root before any task could (create-dirs).
      if (!checkSkipped) expect(shape(checked.changes)).toEqual(expect.arrayContaining(shape(done.changes)))

      if (task.idempotent === false) return
      const again = await citadelJson(command, roots.env)
      expect(again.doc.tasks[0].status, again.doc.tasks[0].msg).toBe(expected === 'skipped' ? 'skipped' : 'ok')
      expect(again.doc.tasks[0].changes).toEqual([])
    }, 120_000)
  })
})
