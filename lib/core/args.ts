// A task's arguments are one zod object schema: it converts and defaults the values the command line or a
// playbook step gives, and its fields' metadata (zod's .meta()) is all the command line needs to build the
// usage line, the help and the one-line error for a bad value.
import path from 'node:path'
import { z } from 'zod'

declare module 'zod' {
  interface GlobalMeta {
    /**
     * Taken by position (citadel backup cleanup 30) rather than as --name; an array field takes the rest.
     * An array field that is not positional is an option given once per value (--model a --model b).
     */
    positional?: true
    /** The value's name in usage and errors: DAYS, RATE, full|incremental. */
    value?: string
    /**
     * Set only by an alias of the task (citadel task remote-backup-create presets remote) or a playbook step,
     * never typed on the task's own command line: usage, help and errors leave it out.
     */
    preset?: true
  }
}

// Any shape: argFields() judges the fields when the command line reads them.
export type ArgsSchema = z.ZodObject<z.ZodRawShape>

/** A task without arguments. */
export const NO_ARGS = z.object({})

/** A path on this machine, as typed: relative to the working directory, resolved here. */
export const localPath = z.string({ error: 'expected a path' })
  .refine((v) => v !== '' && !v.includes('\0'), 'expected a path')
  .transform((v) => path.resolve(v))

/** What a value looks like on the command line and in a playbook step. */
export type RawArgs = Readonly<Record<string, string | boolean | readonly string[] | undefined>>

export interface ArgField {
  name: string
  positional: boolean
  /** An array: a positional that takes every remaining value, or an option given once per value. */
  list: boolean
  /** A boolean: --name alone, no value. */
  flag: boolean
  /** DAYS for a positional, --days DAYS for an option; --quick for a flag. */
  label: string
  help: string
}

const WRAPPERS = new Set(['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch'])

/** The metadata of a field (outer wrappers win) and the kind of value it takes underneath its wrappers. */
function inspect(field: z.ZodType): { meta: z.GlobalMeta; kind: string } {
  let meta: z.GlobalMeta = {}
  let at: z.ZodType = field
  for (;;) {
    meta = { ...at.meta(), ...meta }
    const def = at._zod.def as { type: string; innerType?: z.ZodType; in?: z.ZodType }
    if (WRAPPERS.has(def.type) && def.innerType) at = def.innerType
    else if (def.type === 'pipe' && def.in) at = def.in
    else return { meta, kind: def.type }
  }
}

/** The fields of a task's arguments an operator types, positionals first in their order, then options as declared. */
export function argFields(schema: ArgsSchema): ArgField[] {
  const typed = Object.entries(schema.shape).filter(([, field]) => inspect(field as z.ZodType).meta.preset !== true)
  const fields = typed.map(([name, field]): ArgField => {
    const { meta, kind } = inspect(field as z.ZodType)
    if (!meta.description) throw new TypeError(`argument ${name} has no help: give it .meta({ description })`)
    const positional = meta.positional === true
    const flag = kind === 'boolean'
    const list = kind === 'array'
    if (flag && positional) throw new TypeError(`argument ${name} is a boolean and positional: a flag is --${name}`)
    const value = meta.value ?? name.toUpperCase()
    return { name, positional, list, flag, label: positional ? value : flag ? `--${name}` : `--${name} ${value}`, help: meta.description }
  })
  const positionals = fields.filter((f) => f.positional)
  if (positionals.slice(0, -1).some((f) => f.list)) throw new TypeError('only the last positional argument may take many values')
  return [...positionals, ...fields.filter((f) => !f.positional)]
}

/** How the one-line error names an argument: its value name when positional, --name otherwise. */
const nameOf = (f: ArgField) => (f.positional ? f.label : `--${f.name}`)

const EXPECTED_KIND: Record<string, string> = { boolean: 'expected true or false', array: 'expected a list of values' }

/**
 * The task's arguments converted and defaulted, or the one line that says which argument was wrong, what it
 * was and what is expected. `raw` is what the command line or a playbook step gave.
 */
export function parseTaskArgs<S extends ArgsSchema>(schema: S, raw: RawArgs): { args: z.output<S> } | { problem: string } {
  const fields = argFields(schema)
  const unknown = Object.keys(raw).filter((k) => raw[k] !== undefined && !(k in schema.shape))
  if (unknown.length) {
    const expected = fields.length ? `expected ${fields.map((f) => f.name).join(', ')}` : 'it takes no arguments'
    return { problem: `unknown argument ${unknown.map((k) => `"${k}"`).join(', ')}; ${expected}` }
  }
  const parsed = schema.safeParse(raw)
  if (parsed.success) return { args: parsed.data }
  const issue = parsed.error.issues[0]!
  const name = String(issue.path[0])
  const field = fields.find((f) => f.name === name)
  const given = raw[name]
  const value = Array.isArray(given) && typeof issue.path[1] === 'number' ? given[issue.path[1]] : given
  const expected = issue.code === 'invalid_type' ? (EXPECTED_KIND[inspect(schema.shape[name] as z.ZodType).kind] ?? 'expected text') : issue.message
  // A preset field is no option of the command line: named as the playbook step gives it.
  const shown = field ? nameOf(field) : name
  if (value === undefined) return { problem: `${shown} is missing: ${expected}` }
  // A flag that is set has no value worth quoting: what is wrong is that it is there.
  if (field?.flag && value === true) return { problem: `${shown} is not valid here: ${expected}` }
  return { problem: `${shown} ${JSON.stringify(value)} is not valid: ${expected}` }
}
