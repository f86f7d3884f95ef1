// Emergency: put the links vLLM depends on back, take a full backup of what is there now, then see where
// things stand.
import backupCreate from '../tasks/backup-create.ts'
import healthReport from '../tasks/health-report.ts'
import repairSymlinks from '../tasks/repair-symlinks.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'emergency',
  description: 'Repair the symlinks, make a full backup of the active models, write the health report',
  // The links vLLM needs stay repaired when the backup fails (the backup disk not mounted, say).
  onFailure: 'continue',
  tasks: [repairSymlinks, { task: backupCreate, args: { type: 'full' } }, healthReport],
})
