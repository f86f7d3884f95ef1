// processGroupGone: what an abort waits for before it cleans up the files a command wrote. A command whose
// processes ignore the abort's SIGTERM is killed after a short grace; one that ends on it is left to end.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { expect, it } from 'vitest'
import { processGroupGone } from '../../lib/infra/system.ts'

/** A group of two processes, a shell and its sleeping child, both deaf to SIGTERM when `deaf`; its shell's end. */
async function abortedGroup(deaf: boolean) {
  const child = spawn('bash', ['-c', `${deaf ? 'trap "" TERM; ' : ''}sleep 30 & wait`], { detached: true, stdio: 'ignore' })
  const ended = once(child, 'exit')
  // The shell has started its child once it waits: a signal before that could find the trap not yet set.
  await new Promise((resolve) => setTimeout(resolve, 200))
  process.kill(-child.pid!, 'SIGTERM')
  await processGroupGone(child.pid!)
  const [, signal] = await ended
  return signal
}

it('a group deaf to the SIGTERM of an abort is killed after the grace', async () => {
  expect(await abortedGroup(true)).toBe('SIGKILL')
}, 30_000)

it('a group that ends on the SIGTERM of an abort ends by it', async () => {
  expect(await abortedGroup(false)).toBe('SIGTERM')
}, 30_000)
