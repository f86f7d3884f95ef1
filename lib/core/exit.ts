// Every exit code citadel gives, in one place: scripts, timers and monitoring systems read them.

/** How a run or a command ends. */
export const EXIT = { ok: 0, internal: 1, failed: 2, locked: 3, invalid: 4, interrupted: 99 } as const

/** health-check and monitor --once answer as monitoring plugins (Nagios, Icinga): 3 is UNKNOWN, whatever kept them from judging. */
export const PLUGIN_EXIT = { ok: 0, warning: 1, critical: 2, unknown: 3 } as const

/** start-monitor: 5 tells a script that nothing was started and the operator must run the monitor by hand. */
export const START_EXIT = { started: 0, failed: 2, otherMonitor: 3, notStarted: 5 } as const
