// The program a task file starts when it is run as a script (`tsx tasks/NAME.ts [options]`, see runWhenMain):
// it loads that file and runs its task as `citadel task NAME [options]` would, unregistered copies included.
import { pathToFileURL } from 'node:url'
import { EXIT } from '../core/exit.ts'
import type { Task } from '../core/task.ts'
import { exitWhenFlushed, main } from './main.ts'

const [file, ...argv] = process.argv.slice(2)
const { default: task } = (await import(pathToFileURL(file!).href)) as { default?: Task }
if (typeof task?.run !== 'function') {
  process.stderr.write(`citadel: ${file} has no task as its default export: end it with \`export default task\`\n`)
  exitWhenFlushed(EXIT.invalid)
} else {
  exitWhenFlushed(await main(argv, task))
}
