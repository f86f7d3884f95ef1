// Ensures nothing: gives each disk under the model and backup roots (or the devices named, or a saved
// smartctl --json file) a SMART verdict with its reasons. A check reports verdicts: it fails only when it
// cannot check at all, such as an unreadable --json-input file.
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { classifySmart, readSmart, smartHealth, smartProblems, type SmartReport, type SmartVerdict } from '../lib/health/smart.ts'
import { z } from 'zod'
import { localPath } from '../lib/core/args.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { count, summarize, table } from '../lib/infra/format.ts'

/** The saved document's verdict, or the one line that says why the file cannot be read. */
async function fromFile(file: string): Promise<SmartReport | string> {
  let content: string
  try {
    content = await readFile(file, 'utf8')
  } catch (err) {
    // "ENOENT: no such file or directory, open '/x'" → "no such file or directory"
    return `cannot read --json-input ${file}: ${(err as Error).message.replace(/^\w+: /, '').replace(/, \w+ '.*'$/, '')}`
  }
  let doc: unknown
  try {
    doc = JSON.parse(content)
  } catch {
    return `--json-input ${file} is not JSON: save it with smartctl --json -a DEVICE > FILE`
  }
  const name = (doc as { device?: { name?: unknown } } | null)?.device?.name
  return classifySmart(doc, typeof name === 'string' && name ? name : path.basename(file))
}

// smartctl would read a name starting with "-" as an option.
const devicePath = z.string({ error: 'expected a device path, e.g. /dev/sda' })
  .refine((v) => path.isAbsolute(v) && !v.includes('\0'), 'expected a device path, e.g. /dev/sda')

const VERDICTS: SmartVerdict[] = ['healthy', 'warning', 'failing', 'unavailable']

const task = defineTask({
  name: 'check-smart',
  description: 'Give each disk under the model and backup roots a SMART verdict (healthy, warning, failing, unavailable) with its reasons',
  tags: ['monitor', 'smart'],
  readOnly: true,
  args: z.object({
    devices: z.array(devicePath).optional().meta({ positional: true, value: 'DEVICE', description: 'read these devices (e.g. /dev/sda) instead of the disks under the roots' }),
    'json-input': localPath.optional().meta({ value: 'FILE', description: 'classify a saved smartctl --json output instead of reading a disk' }),
  }),
  async run(ctx) {
    const file = ctx.args['json-input']
    const devices = ctx.args.devices
    let disks: SmartReport[]
    let notes: string[] = []
    if (file !== undefined) {
      if (devices !== undefined) return ctx.fail('give DEVICE names or --json-input FILE, not both')
      const report = await fromFile(file)
      if (typeof report === 'string') return ctx.fail(report)
      disks = [report]
    } else if (devices !== undefined) {
      disks = await Promise.all(devices.map((d) => readSmart(ctx.$, d, ctx.signal)))
    } else {
      ;({ disks, notes } = await smartHealth(ctx.$, ctx.settings, ctx.signal))
    }

    if (disks.length)
      ctx.detail(...table([
        ['DEVICE', 'VERDICT', 'MODEL', 'TEMP', 'HOURS', 'REASONS'],
        ...disks.map((d) => [d.device, d.verdict, d.model ?? '-', d.temperature_celsius === null ? '-' : `${d.temperature_celsius} °C`, d.power_on_hours === null ? '-' : String(d.power_on_hours), d.reasons.join('; ')]),
      ]))
    ctx.detail(...notes.map((n) => `note: ${n}`))
    for (const p of smartProblems(disks)) ctx.warn(p.severity === 'critical' ? `FAILING ${p.message}` : p.message)
    const tally = VERDICTS.map((v) => [v, disks.filter((d) => d.verdict === v).length] as const).filter(([, n]) => n > 0)
    const msg = disks.length ? `${count(disks.length, 'disk')}: ${tally.map(([v, n]) => `${n} ${v}`).join(', ')}` : `no disk to check${notes.length ? `: ${summarize(notes)}` : ''}`
    return ctx.finish(msg, { disks, notes })
  },
})

export default task
runWhenMain(import.meta)
