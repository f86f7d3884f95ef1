// Every playbook `citadel run NAME` knows. A new playbook file is added here.
import type { Playbook } from '../lib/task.ts'
import initialSetup from './initial-setup.ts'

export const playbooks: Playbook[] = [initialSetup]
