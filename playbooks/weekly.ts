// Weekly: a full backup of the active models, a verification of a sample of it that heals what rotted on
// the backup disk, a restore drill of one model (the one drilled longest ago, so drills rotate through the
// models: it proves the backup comes back, not only that its bytes hash right), the verified backup sent off
// the host when BACKUP_REMOTE is set (and a sample of the remote copy verified there), old backups gone on
// both sides, a rotating sample of the live model files hashed against the hashes recorded when they first
// verified (bit rot in what vLLM reads, found without a backup), the model disk's I/O measured so a slowing
// disk shows up week over week, and a fresh health report.
import backupCleanup from '../tasks/backup-cleanup.ts'
import backupCreate from '../tasks/backup-create.ts'
import backupRestore from '../tasks/backup-restore.ts'
import backupVerify from '../tasks/backup-verify.ts'
import checkPerf from '../tasks/check-perf.ts'
import healthReport from '../tasks/health-report.ts'
import modelVerify from '../tasks/model-verify.ts'
import { definePlaybook, type When } from '../lib/core/task.ts'

const remoteSet: When = { test: (s) => s.backup.remote !== undefined, otherwise: 'BACKUP_REMOTE is not set' }

export default definePlaybook({
  name: 'weekly',
  description: 'Full backup of the active models, verify a sample and heal what rotted, drill a restore of one model, send it to BACKUP_REMOTE and verify there, hash a sample of the live model files, remove backups past retention, measure disk I/O, write the health report',
  // A failed backup stops only what builds on it: cleanup and the I/O measure still run.
  onFailure: 'continue',
  tasks: [
    { task: backupCreate, args: { type: 'full' } },
    // Heals what rotted on the backup disk before the backup is sent on.
    { task: backupVerify, args: { repair: true }, needs: [backupCreate] },
    { task: backupRestore, args: { drill: true }, needs: [backupVerify] },
    { task: backupCreate, name: 'remote-backup-create', when: remoteSet, tags: ['remote'], needs: [backupVerify] },
    { task: backupVerify, name: 'remote-backup-verify', when: remoteSet, tags: ['remote'], needs: ['remote-backup-create'] },
    // At BACKUP_VERIFY_SAMPLE_RATE (rotating preset): the live files come round at the pace of their backups'.
    { task: modelVerify, args: { rotating: true } },
    backupCleanup,
    { task: backupCleanup, name: 'remote-backup-cleanup', when: remoteSet, tags: ['remote'] },
    checkPerf,
    healthReport,
  ],
})
