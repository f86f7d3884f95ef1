// Every task citadel knows, in the order `citadel list` shows them. A new task file is added here.
import type { Task } from '../lib/task.ts'
import backupCleanup from './backup-cleanup.ts'
import backupCreate from './backup-create.ts'
import backupStatus from './backup-status.ts'
import backupVerify from './backup-verify.ts'
import checkBackups from './check-backups.ts'
import checkPerf from './check-perf.ts'
import checkSmart from './check-smart.ts'
import checkUsage from './check-usage.ts'
import createDirs from './create-dirs.ts'
import createSymlinks from './create-symlinks.ts'
import healthReport from './health-report.ts'
import repairSymlinks from './repair-symlinks.ts'
import verifyPrereq from './verify-prereq.ts'
import verifySymlinks from './verify-symlinks.ts'
import writeEnvScript from './write-env-script.ts'

export const tasks: Task[] = [verifyPrereq, createDirs, createSymlinks, verifySymlinks, repairSymlinks, writeEnvScript, backupCreate, backupVerify, backupCleanup, backupStatus, checkSmart, checkUsage, checkBackups, healthReport, checkPerf]
