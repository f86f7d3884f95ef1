// SMART verdicts: curated real smartctl captures (test/fixtures/smartctl, sources and licenses in its README),
// a small document for each rule, and the real smartctl on devices that are not there.
import { nvme } from '../smart-samples.ts'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { makeShell } from '../../lib/infra/shell.ts'
import { classifySmart, findDisks, readSmart, smartProblems, type SmartReport } from '../../lib/health/smart.ts'
import { PROJECT } from '../helpers.ts'

const $ = makeShell(() => {})
const FIXTURES = path.join(PROJECT, 'test', 'fixtures', 'smartctl')
const captures = new Map(readdirSync(FIXTURES).filter((f) => f.endsWith('.json'))
  .map((f) => [f, classifySmart(JSON.parse(readFileSync(path.join(FIXTURES, f), 'utf8')), f)]))

const pick = (part: string): SmartReport => {
  const hits = [...captures].filter(([f]) => f.includes(part))
  expect(hits.map(([f]) => f), part).toHaveLength(1)
  return hits[0]![1]
}

describe('classifySmart over real captures', () => {
  it('finds scans, an identify-only capture and an open failure unavailable', () => {
    const scans = [...captures].filter(([f]) => /scan/.test(f))
    expect(scans).toHaveLength(7)
    for (const [file, r] of scans) expect([file, r.verdict]).toEqual([file, 'unavailable'])
    // An identify-only (-i) capture has no health information at all.
    expect(pick('smartctl_info_nvme.json').verdict).toBe('unavailable')
    expect(pick('smart-fail.json').verdict).toBe('unavailable')
  })

  it('finds the known failing drives failing, with the numbers', () => {
    const usb = pick('smart-fail2.json')
    expect(usb).toMatchObject({ verdict: 'failing', model: 'Hitachi HDS721050DLE630', protocol: 'ATA', exit_status: 216, counts: { reallocated_sectors: 1975, pending_sectors: 8 } })
    expect(usb.reasons).toEqual(expect.arrayContaining([
      'SMART overall-health self-assessment FAILED',
      'attribute 5 Reallocated_Sector_Ct is at or below its failure threshold now (value 1, threshold 5, raw 1975)',
      '1975 reallocated sectors (100 or more means replace the disk)',
      '8 pending sectors',
    ]))
    const nvme = pick('SAMSUNG_MZWLL3T2HAJQ-00005')
    expect(nvme).toMatchObject({ verdict: 'failing', counts: { nvme_critical_warning: 16 } })
    expect(nvme.reasons).toContain('NVMe critical warning 0x10: volatile memory backup failed')
    const media = pick('smart-nvme-failed.json')
    expect(media).toMatchObject({ verdict: 'failing', model: 'Samsung SSD 970 EVO 500GB', counts: { nvme_media_errors: 7 } })
    expect(media.reasons).toEqual(['7 NVMe media and data integrity errors'])
    expect(pick('ST3500418AS_12.json').reasons).toEqual(['304 reallocated sectors (100 or more means replace the disk)'])
    expect(pick('SEAGATE_ST373453LC_26.json').reasons).toEqual(['260 grown defects on the SCSI defect list (100 or more means replace the disk)'])
  })

  it('finds known-healthy drives healthy and reads model, serial, temperature and hours', () => {
    for (const part of ['smart-ata.json', 'smart-nvme.json', 'smart-scsi2.json', 'WDC_WD20EFRX-68EUZN0_17.json', 'Samsung_SSD_970_EVO_Plus_250GB-nvme0.json'])
      expect([part, pick(part).verdict]).toEqual([part, 'healthy'])
    expect(pick('smart-ata.json')).toMatchObject({ model: 'WDC WD140EDFZ-11A0VA0', serial: expect.any(String), protocol: 'ATA', temperature_celsius: 32, power_on_hours: expect.any(Number), exit_status: 0 })
    expect(pick('smart-nvme.json')).toMatchObject({ protocol: 'NVMe', nvme_percentage_used: 0, reasons: ['SMART overall-health self-assessment passed'] })
  })

  it('judges what a RAID controller passed through (exit 4), and says the data is partial', () => {
    const r = pick('smart-megaraid1.json')
    expect(r.verdict).toBe('failing')
    expect(r.reasons).toEqual(['387 reallocated sectors (100 or more means replace the disk)', 'partial data: smartctl exit status 4 (Warning: This result is based on an Attribute check.)'])
    expect(pick('smart-megaraid0.json').verdict).toBe('healthy')
  })
})

const attr = (id: number, name: string, raw: number) => ({ id, name, value: 100, worst: 100, thresh: 10, when_failed: '', flags: { prefailure: id === 5 }, raw: { value: raw, string: String(raw) } })

/** A minimal healthy SATA disk as smartctl 7.3 prints it, changed by `edit`. */
function ata(edit: (doc: any) => void = () => {}): any {
  const doc = {
    smartctl: { version: [7, 3], exit_status: 0 },
    device: { name: '/dev/sda', type: 'sat', protocol: 'ATA' },
    model_name: 'WDC WD140EDFZ-11A0VA0',
    serial_number: 'X1',
    smart_support: { available: true, enabled: true },
    smart_status: { passed: true },
    ata_smart_attributes: { table: [[1, 'Raw_Read_Error_Rate'], [5, 'Reallocated_Sector_Ct'], [187, 'Reported_Uncorrect'], [188, 'Command_Timeout'], [197, 'Current_Pending_Sector'], [198, 'Offline_Uncorrectable'], [199, 'UDMA_CRC_Error_Count']].map(([id, name]) => attr(id as number, name as string, 0)) },
    power_on_time: { hours: 20000 },
    temperature: { current: 35 },
  }
  edit(doc)
  return doc
}
const attribute = (doc: any, id: number) => doc.ata_smart_attributes.table.find((a: any) => a.id === id)


function scsi(edit: (doc: any) => void = () => {}): any {
  const doc = { smartctl: { exit_status: 0 }, device: { name: '/dev/sdb', type: 'scsi', protocol: 'SCSI' }, scsi_model_name: 'SEAGATE ST4000NM0043', smart_status: { passed: true }, scsi_grown_defect_list: 0, temperature: { current: 30, drive_trip: 68 } }
  edit(doc)
  return doc
}

const verdict = (doc: unknown) => classifySmart(doc, '/dev/test')

describe('classifySmart rules', () => {
  it('starts from healthy ATA, NVMe and SCSI documents', () => {
    expect(verdict(ata())).toMatchObject({ verdict: 'healthy', reasons: ['SMART overall-health self-assessment passed'], model: 'WDC WD140EDFZ-11A0VA0', serial: 'X1', temperature_celsius: 35, power_on_hours: 20000 })
    expect(verdict(ata()).counts).toEqual({ reallocated_sectors: 0, reported_uncorrect: 0, command_timeout: 0, pending_sectors: 0, offline_uncorrectable: 0, udma_crc_errors: 0 })
    expect(verdict(nvme())).toMatchObject({ verdict: 'healthy', nvme_percentage_used: 3, counts: { nvme_critical_warning: 0, nvme_media_errors: 0, nvme_available_spare: 100, nvme_available_spare_threshold: 10 } })
    expect(verdict(scsi())).toMatchObject({ verdict: 'healthy', model: 'SEAGATE ST4000NM0043', counts: { scsi_grown_defects: 0 } })
  })

  it.each([
    ['overall health failed', ata((d) => (d.smart_status.passed = false)), 'SMART overall-health self-assessment FAILED'],
    ['exit bit 3 (disk failing)', ata((d) => (d.smartctl.exit_status = 8)), 'smartctl exit status 8: SMART status check returned "disk failing"'],
    ['exit bit 3 in a capture trimmed to its smartctl block', { smartctl: { exit_status: 8 } }, 'smartctl exit status 8: SMART status check returned "disk failing"'],
    ['exit bit 4 (pre-fail attribute at threshold)', ata((d) => (d.smartctl.exit_status = 16)), 'smartctl exit status 16: a pre-fail attribute is at or below its threshold'],
    ['an attribute failing now', ata((d) => Object.assign(attribute(d, 1), { value: 5, thresh: 6, when_failed: 'now' })), 'attribute 1 Raw_Read_Error_Rate is at or below its failure threshold now (value 5, threshold 6, raw 0)'],
    ['100 reallocated sectors', ata((d) => (attribute(d, 5).raw = { value: 100, string: '100' })), '100 reallocated sectors (100 or more means replace the disk)'],
    ['150 pending sectors', ata((d) => (attribute(d, 197).raw = { value: 150, string: '150' })), '150 pending sectors (100 or more means replace the disk)'],
    ['100 offline uncorrectable sectors', ata((d) => (attribute(d, 198).raw = { value: 100, string: '100' })), '100 offline uncorrectable sectors (100 or more means replace the disk)'],
    ['NVMe spare warning bit', nvme((l) => (l.critical_warning = 1)), 'NVMe critical warning 0x01: available spare below threshold'],
    ['NVMe temperature bit', nvme((l) => (l.critical_warning = 2)), 'NVMe critical warning 0x02: temperature outside its thresholds'],
    ['NVMe reliability bit', nvme((l) => (l.critical_warning = 4)), 'NVMe critical warning 0x04: reliability degraded'],
    ['NVMe read-only bit', nvme((l) => (l.critical_warning = 8)), 'NVMe critical warning 0x08: media in read-only mode'],
    ['NVMe volatile backup bit', nvme((l) => (l.critical_warning = 16)), 'NVMe critical warning 0x10: volatile memory backup failed'],
    ['NVMe several bits', nvme((l) => (l.critical_warning = 12)), 'NVMe critical warning 0x0c: reliability degraded, media in read-only mode'],
    ['NVMe spare below threshold', nvme((l) => (l.available_spare = 5)), 'NVMe available spare 5% is below its threshold of 10%'],
    ['NVMe endurance used up', nvme((l) => (l.percentage_used = 100)), 'NVMe endurance used up: percentage used 100%'],
    ['NVMe media errors', nvme((l) => (l.media_errors = 3)), '3 NVMe media and data integrity errors'],
    ['SCSI grown defects', scsi((d) => (d.scsi_grown_defect_list = 120)), '120 grown defects on the SCSI defect list (100 or more means replace the disk)'],
  ])('failing: %s', (_, doc, reason) => {
    const r = verdict(doc)
    expect(r.verdict).toBe('failing')
    expect(r.reasons).toContain(reason)
  })

  it.each([
    ['1 reallocated sector', ata((d) => (attribute(d, 5).raw = { value: 1, string: '1' })), '1 reallocated sector'],
    ['99 reallocated sectors, one short of failing', ata((d) => (attribute(d, 5).raw = { value: 99, string: '99' })), '99 reallocated sectors'],
    ['reported uncorrectable (187)', ata((d) => (attribute(d, 187).raw = { value: 2, string: '2' })), '2 reported uncorrectable errors'],
    ['command timeouts (188)', ata((d) => (attribute(d, 188).raw = { value: 3, string: '3' })), '3 command timeouts'],
    ['Seagate packed command timeouts (188)', ata((d) => (attribute(d, 188).raw = { value: 17180131332, string: '17180131332' })), '4 command timeouts'],
    ['pending sectors (197)', ata((d) => (attribute(d, 197).raw = { value: 4, string: '4' })), '4 pending sectors'],
    ['offline uncorrectable (198)', ata((d) => (attribute(d, 198).raw = { value: 5, string: '5' })), '5 offline uncorrectable sectors'],
    ['exit bit 5', ata((d) => (d.smartctl.exit_status = 32)), 'smartctl exit status 32: some attributes were at or below their threshold in the past'],
    ['exit bit 6', ata((d) => (d.smartctl.exit_status = 64)), 'smartctl exit status 64: the device error log has errors'],
    ['exit bit 7', ata((d) => (d.smartctl.exit_status = 128)), 'smartctl exit status 128: the self-test log has errors'],
    ['an attribute failed in the past', ata((d) => Object.assign(attribute(d, 1), { value: 50, thresh: 6, when_failed: 'past' })), 'attribute 1 Raw_Read_Error_Rate was at or below its threshold in the past (value 50, threshold 6)'],
    ['NVMe 80% used', nvme((l) => (l.percentage_used = 80)), 'NVMe endurance 80% used (80% or more: plan its replacement)'],
    ['ATA at its SCT temperature limit', ata((d) => (d.temperature = { current: 60, op_limit_max: 60 })), "temperature 60 °C is at or above the drive's limit of 60 °C"],
    ['NVMe above its warning temperature', nvme((_, d) => (d.temperature = { current: 84, op_limit_max: 82, critical_limit_max: 85 })), "temperature 84 °C is at or above the drive's limit of 82 °C"],
    ['SCSI at its trip temperature', scsi((d) => (d.temperature = { current: 70, drive_trip: 68 })), "temperature 70 °C is at or above the drive's limit of 68 °C"],
    ['SCSI grown defects', scsi((d) => (d.scsi_grown_defect_list = 56)), '56 grown defects on the SCSI defect list'],
  ])('warning: %s', (_, doc, reason) => {
    const r = verdict(doc)
    expect(r.verdict).toBe('warning')
    expect(r.reasons).toContain(reason)
  })

  it.each([
    ['NVMe 79% used', nvme((l) => (l.percentage_used = 79))],
    ['ATA one degree under its limit', ata((d) => (d.temperature = { current: 59, op_limit_max: 60 }))],
    ['UDMA CRC errors (the cable, not the disk)', ata((d) => (attribute(d, 199).raw = { value: 644, string: '644' }))],
  ])('healthy: %s', (_, doc) => {
    expect(verdict(doc).verdict).toBe('healthy')
  })

  const standbyMessage = { string: 'Device is in STANDBY mode, exit(2)', severity: 'information' }
  it.each([
    ['standby (smartctl -n standby)', { smartctl: { exit_status: 2, messages: [standbyMessage] } }, 'Device is in STANDBY mode: not woken up to read SMART'],
    ['standby seen by the OS', { smartctl: { exit_status: 2, messages: [{ string: '/dev/sdb: Device is in STANDBY (OS) mode, exit(2)', severity: 'information' }] } }, '/dev/sdb: Device is in STANDBY (OS) mode: not woken up to read SMART'],
    ['standby, power_mode only', { smartctl: { exit_status: 2 }, power_mode: { ata_value: 0, name: 'STANDBY' } }, 'device is in STANDBY mode: not woken up to read SMART'],
    ['standby with device details', { ...ata((d) => { delete d.smart_status; delete d.ata_smart_attributes }), smartctl: { exit_status: 2, messages: [standbyMessage] } }, 'Device is in STANDBY mode: not woken up to read SMART'],
    ['open failure', { smartctl: { exit_status: 2, messages: [{ string: 'Smartctl open device: /dev/sdz failed: No such device', severity: 'error' }] } }, 'Smartctl open device: /dev/sdz failed: No such device (smartctl exit status 2)'],
    ['unknown device type', { smartctl: { exit_status: 1, messages: [{ string: '/dev/vda: Unable to detect device type', severity: 'error' }] } }, '/dev/vda: Unable to detect device type (smartctl exit status 1)'],
    ['SMART unsupported', { smartctl: { exit_status: 4 }, device: { protocol: 'SCSI' }, scsi_model_name: 'QEMU QEMU HARDDISK', smart_support: { available: false } }, 'SMART is not supported by this device (virtual disks and some USB bridges have none)'],
    ['SMART disabled', { smartctl: { exit_status: 4 }, smart_support: { available: true, enabled: false } }, 'SMART is disabled on this device (smartctl -s on /dev/test enables it)'],
    ['a --scan output', { smartctl: { exit_status: 0 }, devices: [{ name: '/dev/sda', type: 'sat' }] }, "no SMART health information in smartctl's output"],
  ])('unavailable: %s', (_, doc, reason) => {
    expect(verdict(doc)).toMatchObject({ verdict: 'unavailable', reasons: [reason] })
  })

  it('unavailable is never failing: a standby or open failure with exit bits 0-2 never reads as a failing disk', () => {
    expect(verdict({ smartctl: { exit_status: 2, messages: [standbyMessage] }, smart_status: { passed: false } }).verdict).toBe('unavailable')
    expect(verdict({ smartctl: { exit_status: 7 } }).verdict).toBe('unavailable')
  })

  it('takes the exit status given over the one in the document', () => {
    expect(classifySmart(ata(), '/dev/sda', 8).verdict).toBe('failing')
    expect(classifySmart(ata((d) => (d.smartctl.exit_status = 8)), '/dev/sda', 0).verdict).toBe('healthy')
    expect(classifySmart(ata(), '/dev/sda', null).exit_status).toBeNull()
  })

  it('never throws, whatever the input', () => {
    const wrong = [null, undefined, 'x', 42, true, [], {}, [1, 2], { a: 1 }, -1, Number.NaN]
    for (const doc of wrong) expect(verdict(doc).verdict).toBe('unavailable')
    // Every field of real-shaped documents replaced by every wrong type, one at a time, two levels deep.
    for (const base of [ata((d) => (d.smartctl.exit_status = 216)), nvme((l) => (l.critical_warning = 16)), scsi()]) {
      const paths = Object.entries(base).flatMap(([k, v]) => [[k], ...(v && typeof v === 'object' ? Object.keys(v).map((k2) => [k, k2]) : [])])
      for (const p of paths)
        for (const w of wrong) {
          const doc = structuredClone(base)
          if (p.length === 1) doc[p[0]!] = w
          else doc[p[0]!][p[1]!] = w
          const r = verdict(doc)
          expect(['healthy', 'warning', 'failing', 'unavailable']).toContain(r.verdict)
          expect(r.reasons.length).toBeGreaterThan(0)
        }
    }
    expect(verdict(ata((d) => (d.ata_smart_attributes.table = [null, 7, 'x', { id: '5', raw: null }, { id: 5, raw: 'x' }, { id: 197, raw: { string: null, value: {} } }]))).verdict).toBe('healthy')
  })
})

describe('smartProblems', () => {
  it('makes failing critical and warning a warning, naming the disk, its model and serial', () => {
    const failing = { ...verdict(ata((d) => (attribute(d, 5).raw = { value: 120, string: '120' }))), device: '/dev/sda' }
    const warning = { ...verdict(ata((d) => (attribute(d, 5).raw = { value: 8, string: '8' }))), device: '/dev/sdb' }
    const quiet = [{ ...verdict(ata()), device: '/dev/sdc' }, { ...verdict(null), device: '/dev/sdd' }]
    expect(smartProblems([failing, warning, ...quiet])).toEqual([
      { check: 'smart', severity: 'critical', key: 'smart:/dev/sda', message: '/dev/sda (WDC WD140EDFZ-11A0VA0, serial X1): 120 reallocated sectors (100 or more means replace the disk)' },
      { check: 'smart', severity: 'warning', key: 'smart:/dev/sdb', message: '/dev/sdb (WDC WD140EDFZ-11A0VA0, serial X1): 8 reallocated sectors' },
    ])
  })
})

describe('readSmart with the real smartctl', () => {
  it('reports a device that does not exist as unavailable', async () => {
    const r = await readSmart($, '/dev/nonexistent-disk')
    expect(r).toMatchObject({ device: '/dev/nonexistent-disk', verdict: 'unavailable', roots: [] })
    expect(r.reasons[0]).toMatch(/nonexistent-disk/)
  })

  it('says how to install smartctl when it is not on the PATH', async () => {
    const empty = mkdtempSync(path.join(os.tmpdir(), 'citadel-nopath-'))
    try {
      const r = await readSmart($({ env: { ...process.env, PATH: empty } }), '/dev/sda')
      expect(r).toMatchObject({ verdict: 'unavailable', reasons: ['smartctl is not installed (apt-get install smartmontools)'] })
    } finally {
      rmSync(empty, { recursive: true })
    }
  })
})

describe('findDisks', () => {
  it('notes a root that is missing or not on a block device', async () => {
    expect(await findDisks($, [{ name: 'models', path: '/nonexistent/models' }, { name: 'backup', path: '/proc' }])).toEqual({
      disks: [],
      notes: ['models root /nonexistent/models does not exist', 'backup root /proc is on proc (proc), not a block device: no SMART data'],
    })
  })
})
