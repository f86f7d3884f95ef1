// Daily: links right, disks and backups judged, an incremental backup (when enabled), a fresh health report.
// A failed step keeps what the others did; the health report always comes last.
import backupCreate from '../tasks/backup-create.ts'
import checkBackups from '../tasks/check-backups.ts'
import checkSmart from '../tasks/check-smart.ts'
import checkUsage from '../tasks/check-usage.ts'
import healthReport from '../tasks/health-report.ts'
import repairSymlinks from '../tasks/repair-symlinks.ts'
import verifySymlinks from '../tasks/verify-symlinks.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'daily',
  description: 'Repair and verify the links, check usage, SMART and backups, incremental backup, write the health report',
  // A repaired link stays repaired when the backup after it fails.
  onFailure: 'continue',
  tasks: [
    repairSymlinks,
    verifySymlinks,
    checkUsage,
    checkSmart,
    checkBackups,
    { task: backupCreate, args: { type: 'incremental' }, when: { test: (s) => s.modelAutoBackup, otherwise: 'MODEL_AUTO_BACKUP is false' } },
    healthReport,
  ],
})
