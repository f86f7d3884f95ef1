// Disk discovery through real loop and device-mapper devices (root only): from a root's mount to the disk
// whose SMART data counts.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { makeShell } from '../../lib/infra/shell.ts'
import { findDisks } from '../../lib/health/smart.ts'

const $ = makeShell(() => {})

describe('findDisks on block devices', () => {
  const have = async (tool: string) => (await $({ nothrow: true })`which ${tool}`).exitCode === 0
  const blockSkip = async (tools: string[]): Promise<string | null> => {
    if (process.getuid?.() !== 0) return 'needs root to set up loop devices'
    for (const tool of tools) if (!(await have(tool))) return `${tool} is missing${tool === 'sfdisk' ? ' (apt-get install fdisk)' : ''}`
    return null
  }

  /** A 64 MiB image with one partition on a loop device; the partition's device node is returned too. */
  async function partitionedLoop(dir: string): Promise<{ loop: string; part: string }> {
    const image = path.join(dir, 'disk.img')
    writeFileSync(image, '')
    await $`truncate -s 64M ${image}`
    await $({ input: 'start=2048, type=83\n' })`sfdisk --quiet ${image}`
    const loop = (await $`losetup --find --show --partscan ${image}`).stdout.trim()
    const part = `${loop}p1`
    // A kernel built without the MBR parser scans nothing: tell it about the partition directly.
    if (!existsSync(part)) await $({ nothrow: true })`partx --add ${loop}`
    for (let i = 0; i < 50 && !existsSync(part); i++) await new Promise((r) => setTimeout(r, 100))
    return { loop, part }
  }

  it('follows a partition on a loop device to the loop device, each disk once with all its roots', async (ctx) => {
    const skip = await blockSkip(['losetup', 'sfdisk', 'partx', 'mkfs.ext4'])
    if (skip) return ctx.skip(skip)
    const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-smart-'))
    const mnt = path.join(dir, 'mnt')
    mkdirSync(mnt)
    let loop: string | undefined
    try {
      const dev = await partitionedLoop(dir)
      loop = dev.loop
      await $`mkfs.ext4 -q ${dev.part}`
      await $`mount ${dev.part} ${mnt}`
      mkdirSync(path.join(mnt, 'models'))
      mkdirSync(path.join(mnt, 'backup'))
      expect(await findDisks($, [{ name: 'models', path: path.join(mnt, 'models') }, { name: 'backup', path: path.join(mnt, 'backup') }])).toEqual({
        disks: [{ device: loop, roots: ['models', 'backup'] }],
        notes: [],
      })
    } finally {
      await $({ nothrow: true })`umount ${mnt}`
      if (loop) await $({ nothrow: true })`losetup -d ${loop}`
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('follows a device-mapper device (as LVM and dm-crypt make) down to the loop device', async (ctx) => {
    const skip = (await blockSkip(['losetup', 'sfdisk', 'partx', 'mkfs.ext4', 'dmsetup', 'blockdev'])) ??
      ((await $({ nothrow: true })`dmsetup version`).exitCode !== 0 ? 'the kernel has no device-mapper driver (dmsetup version fails)' : null)
    if (skip) return ctx.skip(skip)
    const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-smart-'))
    const mnt = path.join(dir, 'mnt')
    mkdirSync(mnt)
    const name = `citadel-test-${process.pid}`
    let loop: string | undefined
    let mapped = false
    try {
      const dev = await partitionedLoop(dir)
      loop = dev.loop
      const sectors = (await $`blockdev --getsz ${dev.part}`).stdout.trim()
      await $`dmsetup create ${name} --table ${`0 ${sectors} linear ${dev.part} 0`}`
      mapped = true
      await $`mkfs.ext4 -q ${`/dev/mapper/${name}`}`
      await $`mount ${`/dev/mapper/${name}`} ${mnt}`
      expect(await findDisks($, [{ name: 'models', path: mnt }])).toEqual({ disks: [{ device: loop, roots: ['models'] }], notes: [] })
    } finally {
      await $({ nothrow: true })`umount ${mnt}`
      if (mapped) await $({ nothrow: true })`dmsetup remove ${name}`
      if (loop) await $({ nothrow: true })`losetup -d ${loop}`
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

