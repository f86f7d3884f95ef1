// The server step of model promote and rollback against a stand-in for vLLM's HTTP API: a node:http server
// in this process answers GET /health and GET /v1/models, and a small restart script plays
// `systemctl restart vllm` by recording what the "server" was started with. A promote the server does not
// take up is rolled back to the previous version everywhere, and the server is restarted on it again.
import { existsSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { setTimeout as sleep } from 'node:timers/promises'
import { citadel, citadelJson, snapshot, start, type Roots } from '../helpers.ts'

const ENV_FILE = (registry: string) => `# settings of this host\nMODEL_REGISTRY=${registry} # what vLLM serves\n\nMODEL_AUTO_BACKUP=false\n`

const link = (roots: Roots) => path.join(roots.app, 'model-links', 'chat')
/** The files the stand-in and its restart script share, in the test's base directory. */
const control = (roots: Roots, name: 'restarts' | 'serving' | 'health' | 'stuck' | 'fail-for' | 'started-with' | 'hold' | 'api-key') => path.join(roots.base, `vllm-${name}`)
const restarts = (roots: Roots) => (existsSync(control(roots, 'restarts')) ? readFileSync(control(roots, 'restarts'), 'utf8').split('\n').filter(Boolean) : [])

/**
 * The stand-in for `systemctl restart vllm`: vLLM is started with --model set to the alias's link, or (with
 * `started-with` saying "directory") to the directory the link leads to at that moment, as CITADEL_MODEL_CHAT
 * gives it. `stuck` makes the restart leave the server as it was; `fail-for` fails the start of that directory;
 * `hold` keeps it from going on while the file is there.
 */
function restartScript(roots: Roots): string {
  const script = path.join(roots.base, 'restart-vllm.sh')
  writeFileSync(script, `set -e
now=$(readlink -f ${link(roots)})
echo "$now" >> ${control(roots, 'restarts')}
echo "restarting vllm on $now"
while [ -e ${control(roots, 'hold')} ]; do sleep 0.05; done
if [ -e ${control(roots, 'fail-for')} ] && [ "$now" = "$(cat ${control(roots, 'fail-for')})" ]; then echo "vllm.service: start failed" >&2; exit 1; fi
[ -e ${control(roots, 'stuck')} ] && exit 0
if [ "$(cat ${control(roots, 'started-with')} 2>/dev/null)" = directory ]; then printf %s "$now"; else printf %s ${link(roots)}; fi > ${control(roots, 'serving')}
`)
  return `bash ${script}`
}

const servers: Server[] = []
afterEach(() => {
  for (const s of servers.splice(0)) s.close()
})

/**
 * The stand-in for vLLM's API: /health answers what `health` says (200 without it), /v1/models serves the
 * recorded --model, and, as vLLM started with --api-key, only to a request with the key `api-key` holds.
 */
async function standIn(roots: Roots): Promise<string> {
  const server = createServer((req, res) => {
    if (req.url === '/health') {
      const status = existsSync(control(roots, 'health')) ? Number(readFileSync(control(roots, 'health'), 'utf8')) : 200
      res.writeHead(status).end()
    } else if (req.url === '/v1/models' && existsSync(control(roots, 'api-key')) && req.headers.authorization !== `Bearer ${readFileSync(control(roots, 'api-key'), 'utf8')}`) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"error": "Unauthorized"}')
    } else if (req.url === '/v1/models') {
      const root = readFileSync(control(roots, 'serving'), 'utf8')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ object: 'list', data: [{ id: 'chat', object: 'model', root, parent: null, max_model_len: 4096 }] }))
    } else res.writeHead(404).end()
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A set-up host serving chat=m-v1 (the stand-in started on it), with m-v2 in staging/ and the server step set. */
async function host(): Promise<{ roots: Roots; env: Record<string, string> }> {
  const roots = await setUpServer()
  writeFileSync(roots.env.CITADEL_ENV_FILE!, ENV_FILE('chat=m-v1'))
  writeFile(path.join(roots.active, 'm-v1', 'config.json'), '{"version": "m-v1"}\n')
  writeFile(path.join(roots.models, 'staging', 'm-v2', 'config.json'), '{"version": "m-v2"}\n')
  const setup = await citadel(['run', 'initial-setup'], roots.env)
  expect(setup.code, setup.stderr).toBe(0)
  writeFileSync(control(roots, 'serving'), link(roots))
  const env = { ...roots.env, VLLM_RESTART_COMMAND: restartScript(roots), VLLM_URL: await standIn(roots), VLLM_READY_TIMEOUT: '2' }
  return { roots, env }
}

/** Everything that says which version chat serves: the link, the registry line, storage-env.sh, the model disk. */
const served = (roots: Roots) => ({
  link: readlinkSync(link(roots)),
  env: readFileSync(roots.env.CITADEL_ENV_FILE!, 'utf8'),
  script: readFileSync(path.join(roots.app, 'configs', 'storage-env.sh'), 'utf8'),
  // Moving a directory in and out again leaves its parent's mtime changed, nothing else.
  models: Object.fromEntries(Object.entries(snapshot(roots.models)).map(([rel, entry]) => [rel, entry.replace(/ mtime=\S+/, '')])),
  archived: existsSync(path.join(roots.app, 'state', 'models.json')),
  journal: existsSync(path.join(roots.app, '.citadel', 'journal.jsonl')),
})

describe('the vLLM server step of model promote and rollback', () => {
  it('restarts vLLM once and checks it serves the new path; rollback does the same; a second run restarts nothing', async () => {
    const { roots, env } = await host()
    const promote = await citadelJson(['model', 'promote', 'chat', 'm-v2'], env)
    expect(promote.code, promote.stdout + promote.stderr).toBe(0)
    expect(restarts(roots)).toEqual([path.join(roots.active, 'm-v2')])
    expect(readlinkSync(link(roots))).toBe(path.join(roots.active, 'm-v2'))
    const human = await citadel(['model', 'promote', 'chat', 'm-v2'], env)
    expect(human.code).toBe(0)
    expect(restarts(roots)).toHaveLength(1)

    // vLLM started with the directory itself (CITADEL_MODEL_CHAT) reports that as its root: accepted too.
    writeFileSync(control(roots, 'started-with'), 'directory')
    const back = await citadel(['model', 'rollback', 'chat'], env)
    expect(back.code, back.stdout + back.stderr).toBe(0)
    expect(back.stdout).toMatch(new RegExp(`vLLM answered GET http://127.0.0.1:\\d+/health after \\d+ s and serves ${path.join(roots.active, 'm-v1')}`))
    expect(restarts(roots)).toEqual([path.join(roots.active, 'm-v2'), path.join(roots.active, 'm-v1')])
    expect(readFileSync(control(roots, 'serving'), 'utf8')).toBe(path.join(roots.active, 'm-v1'))
  }, 120_000)

  const failures: [string, (roots: Roots) => void, RegExp][] = [
    ['/health never answers 200', (roots) => writeFileSync(control(roots, 'health'), '503'),
      /^vLLM was not ready: GET http:\/\/127\.0\.0\.1:\d+\/health did not answer 200 within VLLM_READY_TIMEOUT=2 s \(last: HTTP 503\); chat goes back to m-v1 and vLLM is restarted/],
    ['/v1/models lists the old root', (roots) => {
      writeFileSync(control(roots, 'serving'), path.join(roots.active, 'm-v1'))
      writeFileSync(control(roots, 'stuck'), '')
    }, /^vLLM does not serve the new version of chat: GET http:\/\/127\.0\.0\.1:\d+\/v1\/models lists root .*\/models\/active\/m-v1, expected .*\/model-links\/chat or .*\/models\/active\/m-v2; chat goes back to m-v1/],
    ['the restart command exits 1', (roots) => writeFileSync(control(roots, 'fail-for'), path.join(roots.active, 'm-v2')),
      /^the restart failed: VLLM_RESTART_COMMAND ended with exit 1 \(vllm\.service: start failed\); chat goes back to m-v1/],
  ]
  for (const [what, arrange, message] of failures) {
    it(`rolls back and restarts on the previous version when ${what}`, async () => {
      const { roots, env } = await host()
      arrange(roots)
      const before = served(roots)
      const promote = await citadelJson(['model', 'promote', 'chat', 'm-v2'], env)
      expect(promote.code, promote.stdout + promote.stderr).toBe(2)
      expect(promote.doc.tasks[0].msg, JSON.stringify(promote.doc.tasks[0].msg)).toMatch(message)
      // Link, registry line, storage-env.sh, staging/ and active/ exactly as before; m-v1 served again.
      expect(served(roots)).toEqual(before)
      expect(restarts(roots)).toEqual([path.join(roots.active, 'm-v2'), path.join(roots.active, 'm-v1')])
      const again = promote.doc.rolled_back.at(-1)
      if (what.startsWith('/health')) expect(again).toMatchObject({ done: false, msg: expect.stringMatching(/^VLLM_RESTART_COMMAND again, for the previous version failed: vLLM was not ready/) })
      else expect(again).toMatchObject({ done: true, msg: expect.stringMatching(/^ran VLLM_RESTART_COMMAND again: vLLM answered GET http:\/\/127\.0\.0\.1:\d+\/health after \d+ s$/) })
      if (what.startsWith('the restart command')) {
        // The report counts the undone changes; the restart that followed them is a line of its own.
        const text = await citadel(['model', 'promote', 'chat', 'm-v2'], env)
        const changes = promote.doc.rolled_back.length - 1
        expect(text.stdout).toContain(`ROLLBACK (${changes}/${changes} undone, the failed steps' own changes, newest first)`)
        expect(text.stdout).toMatch(/^ {4}then ran VLLM_RESTART_COMMAND again: vLLM answered/m)
      }
    }, 120_000)
  }

  it('SIGINT while waiting for vLLM stops the wait, rolls back and restarts on the previous version', async () => {
    const { roots, env } = await host()
    writeFileSync(control(roots, 'health'), '503')
    const before = served(roots)
    const promote = start(['model', 'promote', 'chat', 'm-v2', '--json'], { ...env, VLLM_READY_TIMEOUT: '600' })
    while (restarts(roots).length === 0) await sleep(50)
    await sleep(300)
    promote.child.kill('SIGINT')
    // The previous version comes up soon after its restart.
    await sleep(200)
    rmSync(control(roots, 'health'))
    const result = await promote.done
    expect(result.code, result.stdout + result.stderr).toBe(99)
    const doc = JSON.parse(result.stdout)
    expect(doc.tasks[0].msg).toBe('interrupted by signal')
    expect(doc.rolled_back.at(-1)).toEqual({ task: 'model-promote', done: true, after_undo: true, msg: expect.stringMatching(/^ran VLLM_RESTART_COMMAND again: vLLM answered/) })
    expect(doc.rolled_back.slice(0, -1).every((s: { after_undo?: boolean }) => s.after_undo === undefined)).toBe(true)
    expect(served(roots)).toEqual(before)
    expect(restarts(roots)).toEqual([path.join(roots.active, 'm-v2'), path.join(roots.active, 'm-v1')])
  }, 120_000)

  it('SIGKILL during the restart: the next run undoes the switch, then restarts vLLM on the previous version', async () => {
    const { roots, env } = await host()
    const before = served(roots)
    writeFileSync(control(roots, 'hold'), '')
    const promote = start(['model', 'promote', 'chat', 'm-v2'], env)
    while (restarts(roots).length === 0) await sleep(50)
    promote.child.kill('SIGKILL')
    expect((await promote.done).signal).toBe('SIGKILL')
    rmSync(control(roots, 'hold'))
    // Any run that may change something takes the lock and first rolls back what a killed run left.
    const next = await citadel(['task', 'create-symlinks'], env)
    expect(next.code, next.stdout + next.stderr).toBe(0)
    expect(next.stderr, next.stdout + next.stderr).toMatch(/^citadel: {3}then ran VLLM_RESTART_COMMAND again: vLLM answered GET \S+\/health after \d+ s$/m)
    // The run itself went on with the settings the rollback put back: the link it checked leads to m-v1.
    expect(next.stdout).toMatch(/create-symlinks: 4 right/)
    expect(served(roots)).toEqual(before)
    expect(restarts(roots)).toEqual([path.join(roots.active, 'm-v2'), path.join(roots.active, 'm-v1')])
  }, 120_000)

  it('a vLLM started with --api-key: without VLLM_API_KEY the promote is rolled back saying so; with it, it goes through', async () => {
    const { roots, env } = await host()
    writeFileSync(control(roots, 'api-key'), 'sk-citadel-test-0123')
    const before = served(roots)
    const refused = await citadel(['model', 'promote', 'chat', 'm-v2'], env)
    expect(refused.code, refused.stdout + refused.stderr).toBe(2)
    expect(refused.stdout).toMatch(/GET http:\/\/127\.0\.0\.1:\d+\/v1\/models answered HTTP 401: vLLM wants its --api-key; set VLLM_API_KEY to it/)
    expect(served(roots)).toEqual(before)
    const wrong = await citadel(['model', 'promote', 'chat', 'm-v2'], { ...env, VLLM_API_KEY: 'sk-not-it' })
    expect(wrong.code).toBe(2)
    expect(wrong.stdout).toContain('answered HTTP 401: VLLM_API_KEY is not the key vLLM was started with')
    expect(wrong.stdout + wrong.stderr).not.toContain('sk-not-it')
    const promote = await citadel(['model', 'promote', 'chat', 'm-v2'], { ...env, VLLM_API_KEY: 'sk-citadel-test-0123' })
    expect(promote.code, promote.stdout + promote.stderr).toBe(0)
    expect(readlinkSync(link(roots))).toBe(path.join(roots.active, 'm-v2'))
    expect(promote.stdout + promote.stderr).not.toContain('sk-citadel-test-0123')
  }, 120_000)

  it('a failed server step of a rollback puts the version it replaced back', async () => {
    const { roots, env } = await host()
    expect((await citadel(['model', 'promote', 'chat', 'm-v2'], env)).code).toBe(0)
    writeFileSync(control(roots, 'fail-for'), path.join(roots.active, 'm-v1'))
    const before = served(roots)
    const back = await citadelJson(['model', 'rollback', 'chat'], env)
    expect(back.code).toBe(2)
    expect(back.doc.tasks[0].msg).toMatch(/^the restart failed: VLLM_RESTART_COMMAND ended with exit 1 \(vllm\.service: start failed\); chat goes back to m-v2/)
    expect(served(roots)).toEqual(before)
    expect(restarts(roots).slice(1)).toEqual([path.join(roots.active, 'm-v1'), path.join(roots.active, 'm-v2')])
  }, 120_000)

  it('--check says what the server step would run and runs nothing', async () => {
    const { roots, env } = await host()
    const before = snapshot(roots.base)
    const check = await citadel(['model', 'promote', 'chat', 'm-v2', '--check'], env)
    expect(check.code, check.stdout + check.stderr).toBe(0)
    expect(check.stdout).toContain(`would run VLLM_RESTART_COMMAND: ${env.VLLM_RESTART_COMMAND}`)
    expect(check.stdout).toMatch(/would wait up to 2 s for GET http:\/\/127\.0\.0\.1:\d+\/health to answer 200/)
    expect(snapshot(roots.base)).toEqual(before)
    expect(restarts(roots)).toEqual([])
  }, 120_000)

  it('a restart command without VLLM_URL restarts without a check; bad values are one line and exit 4', async () => {
    const { roots, env } = await host()
    const { VLLM_URL: _url, ...noUrl } = env
    const promote = await citadel(['model', 'promote', 'chat', 'm-v2'], noUrl)
    expect(promote.code, promote.stdout + promote.stderr).toBe(0)
    expect(promote.stdout).toContain('its readiness was not checked (VLLM_URL is not set)')
    expect(restarts(roots)).toHaveLength(1)

    const bad: [Record<string, string>, RegExp][] = [
      [{ VLLM_URL: 'ftp://127.0.0.1:8000' }, /invalid setting VLLM_URL="ftp:\/\/127\.0\.0\.1:8000".*: expected an http:\/\/ or https:\/\/ base URL/],
      [{ VLLM_URL: '127.0.0.1:8000' }, /invalid setting VLLM_URL=.*: expected an http:\/\/ or https:\/\/ base URL/],
      [{ VLLM_URL: 'http://127.0.0.1:8000/?x=1' }, /invalid setting VLLM_URL=.*without query/],
      [{ VLLM_RESTART_COMMAND: '', VLLM_URL: 'http://127.0.0.1:8000' }, /invalid setting VLLM_URL=.*: expected VLLM_RESTART_COMMAND as well/],
      [{ VLLM_RESTART_COMMAND: '   ' }, /invalid setting VLLM_RESTART_COMMAND=.*: expected a shell command \(not blank/],
      [{ VLLM_READY_TIMEOUT: '0' }, /invalid setting VLLM_READY_TIMEOUT="0".*: expected a whole number of at least 1/],
      [{ VLLM_READY_TIMEOUT: '5m' }, /invalid setting VLLM_READY_TIMEOUT="5m"/],
      // A key is never repeated in a message: it would land in logs and monitoring.
      [{ VLLM_API_KEY: 'two words' }, /^citadel: invalid setting VLLM_API_KEY=\(not shown\) \(from environment\): expected a token of printable characters without spaces/],
    ]
    for (const [values, message] of bad) {
      const result = await citadel(['model', 'rollback', 'chat'], { ...env, ...values })
      expect(result.code, JSON.stringify(values)).toBe(4)
      expect(result.stderr.trim().split('\n'), JSON.stringify(values)).toHaveLength(1)
      expect(result.stderr, JSON.stringify(values)).toMatch(message)
    }
    expect(restarts(roots)).toHaveLength(1)
    expect(readlinkSync(link(roots))).toBe(path.join(roots.active, 'm-v2'))
  }, 120_000)
})
