// Every model directory in active/, staging/, archive/ and downloads/ (unfinished downloads marked), with
// its alias, size, last verification, the backup that holds it and the processes that have it open or
// mapped: what to know before archiving or removing one. Only looks, so it runs beside a promote or a
// backup; the one thing it deletes is what a killed `model remove` left (its process gone), as remove would.
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { bytes, summarize, table } from '../lib/infra/format.ts'
import { archiveSurplus, inventory, modelDirs, removalLeftovers, removeModelDir, surplusOffer, type ModelInfo } from '../lib/models/list.ts'
import { readModelsState } from '../lib/models/promote.ts'
import { describeHolders, holdersOf } from '../lib/models/usage.ts'

const verificationText = (m: ModelInfo) => (m.last_verification ? `${m.last_verification.ok ? 'ok' : 'FAILED'} ${m.last_verification.at.slice(0, 16).replace('T', ' ') || '?'}` : '-')
const aliasText = (m: ModelInfo) => m.aliases.join(',') || (m.archived ? `(${m.archived.alias}${m.archived.bad ? ', bad' : ''})` : '-')
const backupText = (m: ModelInfo) => (m.backup ? `${m.backup.name}${m.backup.verified ? '' : ' (unverified)'}` : '-')
const inUseText = (m: ModelInfo) => {
  const pids = [...new Set(m.holders.map((h) => h.pid))]
  return pids.length ? `pid ${pids.join(',')}` : '-'
}

const task = defineTask({
  name: 'model-list',
  description: 'List every model directory (active, staging, archive, downloads): alias, size, last verification, backup, processes using it',
  tags: ['models'],
  readOnly: true,
  roots: ['models'],
  async run(ctx) {
    const { settings: s } = ctx
    for (const leftover of await removalLeftovers(s)) {
      ctx.progress(`removing ${leftover}, left by an interrupted model remove`)
      if (await ctx.bookkeep(`remove ${leftover}`, () => removeModelDir(leftover)) !== null) ctx.warn(`removed ${leftover}, left by an interrupted model remove`)
      else ctx.warn(`${leftover} was left by an interrupted model remove: the next model list or remove deletes it`)
    }
    ctx.progress('reading the model directories and /proc')
    const found = await modelDirs(s)
    const holders = await holdersOf(found.map((d) => d.path))
    const models = await inventory(s, holders, found)
    const surplus = await archiveSurplus(s, await readModelsState(s))
    for (const v of surplus) ctx.warn(await surplusOffer(s, v))
    for (const m of models) for (const line of describeHolders(m.holders)) ctx.detail(`${m.place}/${m.name}: ${line}`)
    ctx.detail(...table([
      ['DIR', 'WHERE', 'ALIAS', 'SIZE', 'FILES', 'VERIFIED', 'BACKUP', 'IN USE'],
      ...models.map((m) => [m.name, m.place + (m.partial ? ' (partial)' : ''), aliasText(m), bytes(m.bytes), String(m.files), verificationText(m), backupText(m), inUseText(m)]),
    ]))
    const byPlace = ['active', 'staging', 'archive', 'downloads'].map((p) => [p, models.filter((m) => m.place === p).length] as const).filter(([, n]) => n)
    const msg = models.length ? `${models.length} model ${models.length === 1 ? 'directory' : 'directories'}: ${summarize(byPlace.map(([p, n]) => `${n} in ${p}`), 4)}` : 'no model directories'
    return ctx.finish(msg, { models, surplus })
  },
})

export default task
runWhenMain(import.meta)
