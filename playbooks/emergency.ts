// Emergency: put the links vLLM depends on back, then take a full backup of what is there now.
import backupCreate from '../tasks/backup-create.ts'
import repairSymlinks from '../tasks/repair-symlinks.ts'
import { definePlaybook } from '../lib/task.ts'

export default definePlaybook({
  name: 'emergency',
  description: 'Repair the symlinks, then make a full backup of the active models',
  tasks: [repairSymlinks, { task: backupCreate, args: { type: 'full' } }],
})
