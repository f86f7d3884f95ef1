// Reading back a JSON file citadel wrote earlier: through a schema, so a damaged or foreign file is one
// line naming the file and what is wrong in it, never a cast that fails later somewhere else.
import type { z } from 'zod'

export function parseOwnJson<T>(file: string, text: string, schema: z.ZodType<T>, what: string): T {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (err) {
    throw new Error(`${file} is not ${what}: ${(err as Error).message}`)
  }
  return checkOwn(file, doc, schema, what)
}

/** A value already parsed from `file` (one line of a JSON lines file, say), checked against its schema. */
export function checkOwn<T>(file: string, doc: unknown, schema: z.ZodType<T>, what: string): T {
  const parsed = schema.safeParse(doc)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    throw new Error(`${file} is not ${what}: ${issue.path.join('.') || 'the document'}: ${issue.message}`)
  }
  return parsed.data
}
