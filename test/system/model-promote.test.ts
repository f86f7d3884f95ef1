// model promote and model rollback on real temporary roots: the version an alias serves changes with the
// link, the registry line of the env file, storage-env.sh and archive/ in step; a reader in a tight loop
// never finds the model missing; a SIGKILL at any moment heals to the old or the new version fully live.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, readlinkSync, readdirSync, statSync, truncateSync, writeFileSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, setUp, snapshot, start, type Roots } from '../helpers.ts'
import { writeModel } from '../model-helpers.ts'

const ENV_FILE = (registry: string) => `# settings of this host\nMODEL_REGISTRY=${registry} # what vLLM serves\n\nMODEL_AUTO_BACKUP=false\n`

/** A set-up server whose env file registers chat=m-v1, with m-v1 live and `staged` versions in staging/. */
async function server(staged: string[]): Promise<Roots> {
  const roots = await setUpServer()
  writeFileSync(roots.env.CITADEL_ENV_FILE!, ENV_FILE('chat=m-v1'))
  writeFile(path.join(roots.active, 'm-v1', 'config.json'), '{"version": "m-v1"}\n')
  for (const dir of staged) stage(roots, dir)
  await setUp(roots)
  return roots
}

const stage = (roots: Roots, dir: string) => writeFile(path.join(roots.models, 'staging', dir, 'config.json'), `{"version": "${dir}"}\n`)
const link = (roots: Roots) => path.join(roots.app, 'model-links', 'chat')
const envScript = (roots: Roots) => readFileSync(path.join(roots.app, 'configs', 'storage-env.sh'), 'utf8')
const state = (roots: Roots) => JSON.parse(readFileSync(path.join(roots.app, 'state', 'models.json'), 'utf8'))

/** Every place that says which version chat serves says `dir`, and nothing of an interrupted run is left. */
function expectLive(roots: Roots, dir: string) {
  const live = path.join(roots.active, dir)
  expect(readlinkSync(link(roots))).toBe(live)
  expect(readFileSync(path.join(link(roots), 'config.json'), 'utf8')).toBe(`{"version": "${dir}"}\n`)
  expect(readFileSync(roots.env.CITADEL_ENV_FILE!, 'utf8')).toBe(ENV_FILE(`chat=${dir}`))
  expect(envScript(roots)).toContain(`export CITADEL_MODEL_CHAT='${live}'\n`)
  expect(existsSync(path.join(roots.models, 'staging', dir))).toBe(false)
  expect(existsSync(path.join(roots.app, '.citadel', 'journal.jsonl'))).toBe(false)
  expect(readdirSync(roots.base).filter((n) => n.includes('.citadel-'))).toEqual([])
}

describe('model promote and rollback', () => {
  it('promotes, archives the previous version, rolls back to the newest good one and honours the bad mark', async () => {
    const roots = await server(['m-v2', 'm-v3'])

    const v2 = await citadelJson(['task', 'model-promote', 'chat', 'm-v2'], roots.env)
    expect(v2.code, v2.stdout + v2.stderr).toBe(0)
    expect(v2.doc.tasks[0].changes.map((c: { action: string }) => c.action)).toEqual(['promote model', 'retarget link', 'update file', 'update file', 'archive model', 'create file'])
    expectLive(roots, 'm-v2')
    expect(readFileSync(path.join(roots.models, 'archive', 'm-v1', 'config.json'), 'utf8')).toContain('m-v1')
    const again = await citadelJson(['task', 'model-promote', 'chat', 'm-v2'], roots.env)
    expect([again.code, again.doc.tasks[0].status, again.doc.tasks[0].changes]).toEqual([0, 'ok', []])

    expect((await citadel(['task', 'model-promote', 'chat', 'm-v3'], roots.env)).code).toBe(0)
    expectLive(roots, 'm-v3')
    expect(state(roots).aliases.chat.archived.map((v: { dir: string; bad: boolean }) => [v.dir, v.bad])).toEqual([['m-v1', false], ['m-v2', false]])

    const back = await citadelJson(['task', 'model-rollback', 'chat'], roots.env)
    expect(back.code, back.stdout).toBe(0)
    expectLive(roots, 'm-v2')
    expect(state(roots).aliases.chat.archived.map((v: { dir: string; bad: boolean }) => [v.dir, v.bad])).toEqual([['m-v1', false], ['m-v3', true]])

    // m-v3 is the newest archived version, but bad: the next rollback takes m-v1.
    expect((await citadel(['task', 'model-rollback', 'chat'], roots.env)).code).toBe(0)
    expectLive(roots, 'm-v1')
    const none = await citadel(['task', 'model-rollback', 'chat'], roots.env)
    expect(none.code).toBe(2)
    expect(none.stdout).toMatch(/nothing to roll chat back to: .*archive holds no earlier version of it that is not marked bad \(2 are\); it stays on m-v1/)
    expectLive(roots, 'm-v1')
    // Nothing was ever deleted.
    expect(readdirSync(path.join(roots.models, 'archive')).sort()).toEqual(['m-v2', 'm-v3'])
  }, 120_000)

  it('refuses a version that fails model verify, and with MODEL_VERIFICATION_ENABLED=false only warns', async () => {
    const roots = await server([])
    const staged = path.join(roots.models, 'staging', 'm-v2')
    writeModel(staged)
    // A shard cut short, as a download that stopped would leave it.
    const shard = path.join(staged, readdirSync(staged).find((n) => n.endsWith('.safetensors'))!)
    truncateSync(shard, statSync(shard).size - 3)
    const before = { models: snapshot(roots.models), env: readFileSync(roots.env.CITADEL_ENV_FILE!, 'utf8'), links: snapshot(path.join(roots.app, 'model-links')) }
    const refused = await citadelJson(['model', 'promote', 'chat', 'm-v2'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.doc.tasks[0].msg).toMatch(/fails model verify: .*safetensors.*cut short/)
    expect(refused.doc.tasks[0].msg).toContain('MODEL_VERIFICATION_ENABLED=true')
    expect({ models: snapshot(roots.models), env: readFileSync(roots.env.CITADEL_ENV_FILE!, 'utf8'), links: snapshot(path.join(roots.app, 'model-links')) }).toEqual(before)
    const anyway = await citadelJson(['model', 'promote', 'chat', 'm-v2'], { ...roots.env, MODEL_VERIFICATION_ENABLED: 'false' })
    expect(anyway.code, anyway.stdout).toBe(0)
    expect(anyway.doc.tasks[0].warnings.join('\n')).toContain('made live anyway, as MODEL_VERIFICATION_ENABLED=false')
    expect(readlinkSync(link(roots))).toBe(path.join(roots.active, 'm-v2'))
  }, 120_000)

  it('--check changes nothing', async () => {
    const roots = await server(['m-v2'])
    const before = snapshot(roots.base)
    const check = await citadelJson(['task', 'model-promote', 'chat', 'm-v2', '--check'], roots.env)
    expect(check.doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(before)
    expect((await citadel(['task', 'model-promote', 'chat', 'm-v2'], roots.env)).code).toBe(0)
    const after = snapshot(roots.base)
    const rollback = await citadelJson(['task', 'model-rollback', 'chat', '--check'], roots.env)
    expect(rollback.doc.tasks[0].status).toBe('changed')
    expect(snapshot(roots.base)).toEqual(after)
  }, 120_000)

  it('refuses bad input with one line', async () => {
    const roots = await server(['m-v2'])
    const before = snapshot(roots.base)
    const cases: [string[], Record<string, string>, number, RegExp][] = [
      [['model-promote', 'chat', '../m-v2'], {}, 4, /DIR.*expected the name of a directory in staging\/ \(one path component/],
      [['model-promote', 'chat', 'a/b'], {}, 4, /DIR.*one path component/],
      [['model-promote', 'Chat!', 'm-v2'], {}, 4, /ALIAS.*expected a model alias/],
      [['model-promote', 'chat', 'm-v9'], {}, 2, /staging\/m-v9 is nothing, expected a model directory to promote/],
      [['model-promote', 'code', 'm-v2'], {}, 2, /code is not in MODEL_REGISTRY \(chat\); give a registered alias, or --new to add it/],
      [['model-rollback', 'code'], {}, 2, /code is not in MODEL_REGISTRY \(chat\)/],
      [['model-promote', 'chat', 'm-v2'], { MODEL_REGISTRY: 'chat=m-v1' }, 2, /MODEL_REGISTRY is set in the environment of this run, which overrides .*test.env/],
    ]
    for (const [args, env, code, message] of cases) {
      const result = await citadel(['task', ...args], { ...roots.env, ...env })
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(code)
      expect(result.stdout + result.stderr, args.join(' ')).toMatch(message)
    }
    mkdirSync(roots.env.CITADEL_SYSTEMD_DIR!)
    writeFileSync(path.join(roots.env.CITADEL_SYSTEMD_DIR!, 'citadel-monitor.service'), '[Service]\nEnvironment="MODEL_REGISTRY=chat=m-v1"\n')
    const units = await citadel(['task', 'model-promote', 'chat', 'm-v2'], roots.env)
    expect(units.code).toBe(2)
    expect(units.stdout).toMatch(/MODEL_REGISTRY is installed in the systemd unit citadel-monitor.service/)
    // The run log and lock are the only traces of the refused runs.
    const kept = (snap: Record<string, string>) => Object.entries(snap).filter(([rel]) => !/^(\.$|systemd|app$|app\/logs|app\/\.citadel)/.test(rel))
    expect(kept(snapshot(roots.base))).toEqual(kept(before))
  }, 120_000)

  it('a reader in a tight loop never finds the model missing during promote and rollback', async () => {
    const roots = await server(['m-v2'])
    const stop = path.join(roots.base, 'stop-reading')
    // Synchronous on purpose: nothing between two reads but the reads; it looks for the stop file now and then.
    const reader = spawn(process.execPath, ['-e', `
      const fs = require('node:fs')
      let reads = 0, misses = 0
      for (let i = 1; i % 2000 !== 0 || !fs.existsSync(${JSON.stringify(stop)}); i++) {
        try { fs.readlinkSync(${JSON.stringify(link(roots))}); fs.statSync(${JSON.stringify(path.join(link(roots), 'config.json'))}); reads++ } catch { misses++ }
      }
      process.stdout.write(JSON.stringify({ reads, misses }))`], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    reader.stdout.on('data', (d) => (out += d))
    const ended = new Promise((resolve) => reader.on('exit', resolve))
    await sleep(300)
    expect((await citadel(['task', 'model-promote', 'chat', 'm-v2'], roots.env)).code).toBe(0)
    expect((await citadel(['task', 'model-rollback', 'chat'], roots.env)).code).toBe(0)
    writeFileSync(stop, '')
    await ended
    const { reads, misses } = JSON.parse(out)
    expect(misses).toBe(0)
    expect(reads).toBeGreaterThan(10_000)
  }, 120_000)

  it('a SIGKILL at any moment of a promote or rollback heals to the old or the new version fully live', async () => {
    const roots = await server([])
    const versions = ['m-v1']
    for (let trial = 1; trial <= 24; trial++) {
      // Every fourth trial a rollback (to the version before), else a promote of a new one.
      const rollback = trial % 4 === 0
      const old = versions.at(-1)!
      const next = rollback ? versions.at(-2)! : `m-t${trial}`
      if (!rollback) stage(roots, next)
      const args = rollback ? ['task', 'model-rollback', 'chat'] : ['task', 'model-promote', 'chat', next]
      const victim = start(args, roots.env)
      // Node's start takes most of a run: the moments that matter are in its last part.
      await sleep(250 + Math.random() * 900)
      victim.child.kill('SIGKILL')
      await victim.done
      const target = readlinkSync(link(roots))
      expect([path.join(roots.active, old), path.join(roots.active, next)], `trial ${trial}`).toContain(target)
      expect(readFileSync(path.join(link(roots), 'config.json'), 'utf8')).toMatch(/"version"/)
      // The rerun rolls back what the killed run left, then does the whole change.
      const rerun = await citadel(args, roots.env)
      if (rollback && rerun.code === 2) {
        // The killed rollback had finished: the rerun found nothing left to go back to.
        expect(rerun.stdout).toMatch(/nothing to roll chat back to/)
      } else expect(rerun.code, `trial ${trial}: ${rerun.stdout}${rerun.stderr}`).toBe(0)
      if (rollback) {
        versions.pop()
        // A rollback killed after it finished was rolled back again by the rerun: to the one before.
        if (!readlinkSync(link(roots)).endsWith(`/${next}`)) versions.pop()
      } else versions.push(next)
      expectLive(roots, versions.at(-1)!)
    }
  }, 600_000)
})
