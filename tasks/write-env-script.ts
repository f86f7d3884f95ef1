// Ensures <app root>/configs/storage-env.sh exports the storage paths vLLM needs (lib/links/env-script.ts):
// every value single-quoted, checked to be inert (comments and quoted exports only), published by rename, rewritten only when it changes.
import { ensureEnvScript } from '../lib/links/env-script.ts'
import { defineTask, isInternalError, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'write-env-script',
  description: 'Write configs/storage-env.sh with the model paths, HF_HOME, HF_HUB_CACHE and VLLM_CACHE_ROOT',
  tags: ['setup', 'config'],
  async run(ctx) {
    try {
      return ctx.finish(await ensureEnvScript(ctx))
    } catch (err) {
      if (isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
